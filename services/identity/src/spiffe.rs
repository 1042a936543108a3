//! Who is calling: the SPIFFE id in an mTLS client certificate.
//!
//! Only the URI SAN counts (never the subject CN), and, as the X509-SVID
//! spec requires, a certificate carries exactly one URI SAN:
//! `spiffe://<federation>/partner/<slug>` or
//! `spiffe://<federation>/operator/<name>`. Chain validation is the TLS
//! stack's job; this only reads the already-verified leaf.

use std::fmt;

use x509_parser::extensions::GeneralName;

use crate::IdentityError;

#[cfg(test)]
mod tests;

/// Longest slug, the DNS label limit: slugs end up in file names, SPIFFE
/// ids and metric labels.
pub const MAX_SLUG_LEN: usize = 63;

// === types ===

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// A partner platform, by slug.
    Partner(String),
    /// An operator (ops tooling), by name; names follow the slug rule.
    Operator(String),
}

// === impl Principal ===

impl Principal {
    /// The slug or operator name.
    pub fn name(&self) -> &str {
        match self {
            Principal::Partner(s) | Principal::Operator(s) => s,
        }
    }

    /// The SPIFFE id a certificate for this principal carries.
    pub fn spiffe_id(&self, federation: &str) -> String {
        format!("spiffe://{federation}/{self}")
    }
}

impl fmt::Display for Principal {
    /// `partner/<slug>` or `operator/<name>`, the SPIFFE id's path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Partner(s) => write!(f, "partner/{s}"),
            Principal::Operator(s) => write!(f, "operator/{s}"),
        }
    }
}

// === functions ===

/// The slug rule for partner ids and operator names: 1–63 characters of
/// lowercase ASCII letters, digits and `-`, starting with a letter and not
/// ending with `-`.
pub fn is_valid_slug(s: &str) -> bool {
    slug_problem(s).is_none()
}

/// Why `s` is not a slug, if it is not.
pub(crate) fn slug_problem(s: &str) -> Option<&'static str> {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (None, _) | (_, None) => Some("a slug must not be empty"),
        _ if bytes.len() > MAX_SLUG_LEN => Some("a slug has at most 63 characters"),
        (Some(first), _) if !first.is_ascii_lowercase() => {
            Some("a slug must start with a lowercase letter a-z")
        }
        (_, Some(b'-')) => Some("a slug must not end with '-'"),
        _ if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-') =>
        {
            Some("a slug may only contain lowercase letters a-z, digits 0-9 and '-'")
        }
        _ => None,
    }
}

/// Checks `s` with [`is_valid_slug`], naming `what` in the error.
pub(crate) fn check_slug(what: &'static str, s: &str) -> Result<(), IdentityError> {
    match slug_problem(s) {
        None => Ok(()),
        Some(reason) => Err(IdentityError::InvalidSlug {
            what,
            value: s.to_owned(),
            reason,
        }),
    }
}

/// The principal named by the leaf certificate `der` (DER, as the TLS stack
/// hands it over) in `federation`'s trust domain.
///
/// Errors if the bytes are not one X.509 certificate, if it is a CA
/// certificate, if it has no or more than one URI SAN, or if that URI is
/// not `spiffe://<federation>/partner/<slug>` or
/// `spiffe://<federation>/operator/<name>`.
pub fn principal_from_cert(der: &[u8], federation: &str) -> Result<Principal, IdentityError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Certificate {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(IdentityError::Certificate {
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        });
    }
    let bad_ext = |e: x509_parser::error::X509Error| IdentityError::Certificate {
        reason: e.to_string(),
    };
    if let Some(bc) = cert.basic_constraints().map_err(bad_ext)?
        && bc.value.ca
    {
        return Err(IdentityError::CaCertificate);
    }
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .map_err(bad_ext)?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err(IdentityError::NoSpiffeId {
            federation: federation.to_owned(),
        }),
        [uri] => parse_spiffe_id(uri, federation),
        many => Err(IdentityError::MultipleUris {
            count: many.len(),
            uris: many.join(", "),
        }),
    }
}

/// Parses `spiffe://<federation>/partner/<slug>` or
/// `spiffe://<federation>/operator/<name>`.
pub fn parse_spiffe_id(uri: &str, federation: &str) -> Result<Principal, IdentityError> {
    let bad = |reason: String| IdentityError::BadSpiffeId {
        uri: uri.to_owned(),
        federation: federation.to_owned(),
        reason,
    };
    let rest = uri
        .strip_prefix("spiffe://")
        .ok_or_else(|| bad("the scheme must be spiffe://".to_owned()))?;
    let (trust_domain, path) = rest
        .split_once('/')
        .ok_or_else(|| bad("it has no path".to_owned()))?;
    if trust_domain != federation {
        return Err(bad(format!(
            "trust domain {trust_domain:?} is not this federation"
        )));
    }
    let (kind, name) = path
        .split_once('/')
        .ok_or_else(|| bad("the path must be /partner/<slug> or /operator/<name>".to_owned()))?;
    let principal = match kind {
        "partner" => Principal::Partner(name.to_owned()),
        "operator" => Principal::Operator(name.to_owned()),
        _ => {
            return Err(bad(format!(
                "path kind {kind:?} is neither \"partner\" nor \"operator\""
            )));
        }
    };
    if let Some(reason) = slug_problem(name) {
        return Err(bad(format!(
            "{name:?} is not a valid {kind} name: {reason}"
        )));
    }
    Ok(principal)
}
