//! A throwaway PKI for development and tests: one CA, a gateway server
//! certificate and SPIFFE client certificates for partners and operators.
//!
//! Files written into `out` (PEM; keys PKCS#8, mode 0600, certs 0644):
//!
//! ```text
//! ca.crt, ca.key                      the federation's dev CA
//! gateway.crt, gateway.key            server: IP 127.0.0.1 and ::1, DNS localhost; serverAuth
//! <slug>.crt, <slug>.key              per partner: URI spiffe://<federation>/partner/<slug>; clientAuth
//! operator-<name>.crt, .key           per operator: URI spiffe://<federation>/operator/<name>; clientAuth
//! ```
//!
//! All keys are ECDSA P-256. Never use these for production: the CA key
//! sits next to the certificates it signed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType, SigningKey,
};

use crate::IdentityError;
use crate::fsutil::{self, PUBLIC_MODE, SECRET_MODE};
use crate::spiffe::{Principal, check_slug};

#[cfg(test)]
mod tests;

// === types ===

/// A certificate and its private key on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What [`generate_dev`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevPki {
    pub dir: PathBuf,
    pub federation: String,
    /// `ca.crt` / `ca.key`: the trust anchor for both server and clients.
    pub ca: CertFiles,
    /// `gateway.crt` / `gateway.key`.
    pub gateway: CertFiles,
    /// `<slug>.crt` / `<slug>.key` by partner slug.
    pub partners: BTreeMap<String, CertFiles>,
    /// `operator-<name>.crt` / `operator-<name>.key` by operator name.
    pub operators: BTreeMap<String, CertFiles>,
}

/// What [`generate_foreign_client`] wrote: a client certificate with a
/// well-formed SPIFFE id, issued by a CA the federation does not trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignClient {
    /// `foreign-ca.crt`.
    pub ca_cert: PathBuf,
    /// `foreign-<slug>.crt`.
    pub cert: PathBuf,
    /// `foreign-<slug>.key`.
    pub key: PathBuf,
}

// === functions ===

/// Writes a dev PKI for `federation` into `out` (created if missing;
/// existing files of the same names are replaced).
pub fn generate_dev(
    out: &Path,
    federation: &str,
    partners: &[String],
    operators: &[String],
) -> Result<DevPki, IdentityError> {
    check_trust_domain(federation)?;
    // Validate everything before writing anything.
    let mut stems: BTreeSet<String> = ["ca", "gateway"].map(str::to_owned).into();
    for slug in partners {
        check_slug("partner id", slug)?;
        claim_stem(&mut stems, slug.clone(), &format!("partner {slug:?}"))?;
    }
    for name in operators {
        check_slug("operator name", name)?;
        claim_stem(
            &mut stems,
            format!("operator-{name}"),
            &format!("operator {name:?}"),
        )?;
    }
    ensure_dir(out)?;

    let ca = new_ca(&format!("crossflow dev CA ({federation})"))?;
    let ca_files = CertFiles {
        cert: out.join("ca.crt"),
        key: out.join("ca.key"),
    };
    write_pair(&ca_files, &ca.pem(), &ca.key().serialize_pem())?;

    let mut gateway = leaf_params("crossflow gateway", ExtendedKeyUsagePurpose::ServerAuth);
    gateway.subject_alt_names = vec![
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        SanType::DnsName(ia5("localhost", "gateway DNS name")?),
    ];
    let gateway_files = issue(out, "gateway", &gateway, &ca, "gateway certificate")?;

    let mut partner_files = BTreeMap::new();
    for slug in partners {
        let principal = Principal::Partner(slug.clone());
        let params = client_params(&principal, federation)?;
        let files = issue(
            out,
            slug,
            &params,
            &ca,
            &format!("partner {slug} certificate"),
        )?;
        partner_files.insert(slug.clone(), files);
    }
    let mut operator_files = BTreeMap::new();
    for name in operators {
        let principal = Principal::Operator(name.clone());
        let params = client_params(&principal, federation)?;
        let stem = format!("operator-{name}");
        let files = issue(
            out,
            &stem,
            &params,
            &ca,
            &format!("operator {name} certificate"),
        )?;
        operator_files.insert(name.clone(), files);
    }

    Ok(DevPki {
        dir: out.to_path_buf(),
        federation: federation.to_owned(),
        ca: ca_files,
        gateway: gateway_files,
        partners: partner_files,
        operators: operator_files,
    })
}

/// Writes into `out` a second, unrelated CA (`foreign-ca.crt`) and a client
/// certificate it issued for `partner` with a correct-looking SPIFFE id
/// (`foreign-<partner>.crt` / `.key`): the gateway must reject it.
pub fn generate_foreign_client(
    out: &Path,
    federation: &str,
    partner: &str,
) -> Result<ForeignClient, IdentityError> {
    check_trust_domain(federation)?;
    check_slug("partner id", partner)?;
    ensure_dir(out)?;

    let ca = new_ca(&format!("foreign CA impersonating {federation}"))?;
    let ca_cert = out.join("foreign-ca.crt");
    fsutil::write_atomic(&ca_cert, ca.pem().as_bytes(), PUBLIC_MODE)?;

    let params = client_params(&Principal::Partner(partner.to_owned()), federation)?;
    let files = issue(
        out,
        &format!("foreign-{partner}"),
        &params,
        &ca,
        &format!("foreign certificate for {partner}"),
    )?;
    Ok(ForeignClient {
        ca_cert,
        cert: files.cert,
        key: files.key,
    })
}

// === helpers ===

fn claim_stem(stems: &mut BTreeSet<String>, stem: String, what: &str) -> Result<(), IdentityError> {
    if stems.contains(&stem) {
        return Err(IdentityError::PkiNameClash {
            what: what.to_owned(),
            file: format!("{stem}.crt"),
        });
    }
    stems.insert(stem);
    Ok(())
}

/// A SPIFFE trust domain: lowercase letters, digits, '.', '-' and '_'.
fn check_trust_domain(federation: &str) -> Result<(), IdentityError> {
    let ok = !federation.is_empty()
        && federation.len() <= 255
        && federation
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidSlug {
            what: "federation",
            value: federation.to_owned(),
            reason: "a SPIFFE trust domain is 1-255 characters of a-z, 0-9, '.', '-' and '_'",
        })
    }
}

fn ensure_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(|e| IdentityError::io("create directory", dir, e))
}

fn new_key(what: &str) -> Result<KeyPair, IdentityError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| gen_err(what, source))
}

fn new_ca(common_name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, IdentityError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    let key = new_key(common_name)?;
    CertifiedIssuer::self_signed(params, key).map_err(|source| gen_err(common_name, source))
}

fn leaf_params(common_name: &str, eku: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    params
}

fn client_params(
    principal: &Principal,
    federation: &str,
) -> Result<CertificateParams, IdentityError> {
    let mut params = leaf_params(principal.name(), ExtendedKeyUsagePurpose::ClientAuth);
    let id = principal.spiffe_id(federation);
    params.subject_alt_names = vec![SanType::URI(ia5(&id, "SPIFFE id")?)];
    Ok(params)
}

fn issue(
    out: &Path,
    stem: &str,
    params: &CertificateParams,
    ca: &Issuer<'_, impl SigningKey>,
    what: &str,
) -> Result<CertFiles, IdentityError> {
    let key = new_key(what)?;
    let cert = params
        .signed_by(&key, ca)
        .map_err(|source| gen_err(what, source))?;
    let files = CertFiles {
        cert: out.join(format!("{stem}.crt")),
        key: out.join(format!("{stem}.key")),
    };
    write_pair(&files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

fn write_pair(files: &CertFiles, cert_pem: &str, key_pem: &str) -> Result<(), IdentityError> {
    // Key first: a cert without its key is useless, a key without its cert harmless.
    fsutil::write_atomic(&files.key, key_pem.as_bytes(), SECRET_MODE)?;
    fsutil::write_atomic(&files.cert, cert_pem.as_bytes(), PUBLIC_MODE)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "crossflow dev");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams) {
    // Fixed and generous: dev certificates must not expire under a test
    // suite, and a fixed start avoids clock-skew surprises in CI.
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
}

fn ia5(value: &str, what: &str) -> Result<rcgen::string::Ia5String, IdentityError> {
    rcgen::string::Ia5String::try_from(value).map_err(|source| gen_err(what, source))
}

fn gen_err(what: &str, source: rcgen::Error) -> IdentityError {
    IdentityError::CertGeneration {
        what: what.to_owned(),
        source,
    }
}
