use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::principal_from_cert;
use crate::test_support::pem_file_to_der;

const FED: &str = "crossflow.test";

fn partners() -> Vec<String> {
    vec!["mombaby-live".into(), "gadget-hub".into()]
}

/// Whether `cert_der` carries a valid signature by the key in `ca_der`.
fn signed_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    let (_, cert) = X509Certificate::from_der(cert_der).unwrap();
    let (_, ca) = X509Certificate::from_der(ca_der).unwrap();
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        ca.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .is_ok()
}

#[test]
fn writes_the_whole_dev_pki() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pki");
    let pki = generate_dev(&out, FED, &partners(), &["alice".into()]).unwrap();

    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ca.crt",
            "ca.key",
            "gadget-hub.crt",
            "gadget-hub.key",
            "gateway.crt",
            "gateway.key",
            "mombaby-live.crt",
            "mombaby-live.key",
            "operator-alice.crt",
            "operator-alice.key",
        ]
    );
    assert_eq!(pki.partners["gadget-hub"].cert, out.join("gadget-hub.crt"));
    assert_eq!(pki.operators["alice"].key, out.join("operator-alice.key"));

    let ca = pem_file_to_der(&pki.ca.cert);
    for files in pki
        .partners
        .values()
        .chain(pki.operators.values())
        .chain([&pki.gateway])
    {
        let der = pem_file_to_der(&files.cert);
        assert!(signed_by(&der, &ca), "{}", files.cert.display());
        let key = std::fs::read_to_string(&files.key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    }

    #[cfg(unix)]
    {
        use crate::test_support::mode;
        for name in names {
            let expected = if name.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode(&out.join(&name)), expected, "{name}");
        }
    }
}

#[test]
fn gateway_cert_is_a_localhost_server_cert() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = generate_dev(tmp.path(), FED, &[], &[]).unwrap();
    let der = pem_file_to_der(&pki.gateway.cert);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names = &san.value.general_names;
    assert!(names.contains(&GeneralName::DNSName("localhost")));
    assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && !eku.value.client_auth);
}

#[test]
fn client_certs_are_spiffe_client_certs() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = generate_dev(tmp.path(), FED, &partners(), &["alice".into()]).unwrap();
    let der = pem_file_to_der(&pki.partners["mombaby-live"].cert);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(
            "spiffe://crossflow.test/partner/mombaby-live"
        )]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.client_auth && !eku.value.server_auth);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
}

#[test]
fn foreign_client_looks_right_but_is_not_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = generate_dev(tmp.path(), FED, &partners(), &[]).unwrap();
    let foreign = generate_foreign_client(tmp.path(), FED, "mombaby-live").unwrap();
    assert_eq!(foreign.cert, tmp.path().join("foreign-mombaby-live.crt"));
    assert_eq!(foreign.key, tmp.path().join("foreign-mombaby-live.key"));
    assert_eq!(foreign.ca_cert, tmp.path().join("foreign-ca.crt"));

    let der = pem_file_to_der(&foreign.cert);
    assert_eq!(
        principal_from_cert(&der, FED).unwrap(),
        Principal::Partner("mombaby-live".into())
    );
    assert!(signed_by(&der, &pem_file_to_der(&foreign.ca_cert)));
    assert!(!signed_by(&der, &pem_file_to_der(&pki.ca.cert)));
    // Generating it did not disturb the real PKI.
    let ours = pem_file_to_der(&pki.partners["mombaby-live"].cert);
    assert!(signed_by(&ours, &pem_file_to_der(&pki.ca.cert)));
}

#[test]
fn rejects_bad_ids_before_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pki");
    let cases: [(&[String], &[String], &str); 5] = [
        (&["Bad".into()], &[], "invalid partner id \"Bad\""),
        (&[], &["-x".into()], "invalid operator name \"-x\""),
        (&["gateway".into()], &[], "gateway.crt"),
        (&["a".into(), "a".into()], &[], "a.crt"),
        (
            &["operator-bob".into()],
            &["bob".into()],
            "operator-bob.crt",
        ),
    ];
    for (partners, operators, needle) in cases {
        let err = generate_dev(&out, FED, partners, operators).unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert!(!out.exists(), "{needle}: wrote files before failing");
    }
    let err = generate_dev(&out, "Not A Domain", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("federation"), "{err}");
    assert!(generate_foreign_client(&out, FED, "UPPER").is_err());
}
