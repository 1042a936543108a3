use proptest::prelude::*;
use rcgen::{CertificateParams, KeyPair, SanType};

use super::*;
use crate::test_support::pem_file_to_der;

const FED: &str = "crossflow.test";

/// A self-signed leaf carrying `uris` as URI SANs.
fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn slug_rule() {
    for good in ["a", "mombaby-live", "shop42", "a-b-c", &"a".repeat(63)] {
        assert!(is_valid_slug(good), "{good:?}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        "1shop",
        "Shop",
        "shop_a",
        "shop.a",
        "shop/a",
        "shöp",
        "a\0b",
        " a",
        &"a".repeat(64),
    ] {
        assert!(!is_valid_slug(bad), "{bad:?}");
    }
}

#[test]
fn parses_partner_and_operator_ids() {
    assert_eq!(
        parse_spiffe_id("spiffe://crossflow.test/partner/mombaby-live", FED).unwrap(),
        Principal::Partner("mombaby-live".into())
    );
    assert_eq!(
        parse_spiffe_id("spiffe://crossflow.test/operator/alice", FED).unwrap(),
        Principal::Operator("alice".into())
    );
}

#[test]
fn rejects_bad_spiffe_ids() {
    for (uri, needle) in [
        ("https://crossflow.test/partner/a", "scheme"),
        (
            "spiffe://other.test/partner/a",
            "trust domain \"other.test\"",
        ),
        ("spiffe://crossflow.test.evil/partner/a", "trust domain"),
        ("spiffe://crossflow.test", "no path"),
        ("spiffe://crossflow.test/partner", "path must be"),
        ("spiffe://crossflow.test/admin/a", "neither"),
        (
            "spiffe://crossflow.test/partner/A",
            "not a valid partner name",
        ),
        (
            "spiffe://crossflow.test/partner/a/b",
            "not a valid partner name",
        ),
        (
            "spiffe://crossflow.test/partner/a?x=1",
            "not a valid partner name",
        ),
        ("spiffe://crossflow.test/partner/", "must not be empty"),
        ("spiffe://crossflow.test/operator/al-", "not end with"),
    ] {
        let err = parse_spiffe_id(uri, FED).unwrap_err();
        assert!(
            matches!(err, IdentityError::BadSpiffeId { .. }),
            "{uri}: {err}"
        );
        assert!(err.to_string().contains(needle), "{uri}: {err}");
    }
}

#[test]
fn principal_from_generated_certs() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = crate::generate_dev(
        tmp.path(),
        FED,
        &["mombaby-live".into(), "gadget-hub".into()],
        &["alice".into()],
    )
    .unwrap();
    for (slug, files) in &pki.partners {
        let der = pem_file_to_der(&files.cert);
        assert_eq!(
            principal_from_cert(&der, FED).unwrap(),
            Principal::Partner(slug.clone())
        );
    }
    let der = pem_file_to_der(&pki.operators["alice"].cert);
    assert_eq!(
        principal_from_cert(&der, FED).unwrap(),
        Principal::Operator("alice".into())
    );

    // The same certificate under another federation's name is refused.
    let der = pem_file_to_der(&pki.partners["gadget-hub"].cert);
    let err = principal_from_cert(&der, "other.test").unwrap_err();
    assert!(matches!(err, IdentityError::BadSpiffeId { .. }), "{err}");

    // Server and CA certificates are not client identities.
    let err = principal_from_cert(&pem_file_to_der(&pki.gateway.cert), FED).unwrap_err();
    assert!(matches!(err, IdentityError::NoSpiffeId { .. }), "{err}");
    let err = principal_from_cert(&pem_file_to_der(&pki.ca.cert), FED).unwrap_err();
    assert!(matches!(err, IdentityError::CaCertificate), "{err}");
}

#[test]
fn exactly_one_uri_san() {
    let der = cert_with_uris(&[
        "spiffe://crossflow.test/partner/a",
        "spiffe://crossflow.test/partner/b",
    ]);
    let err = principal_from_cert(&der, FED).unwrap_err();
    assert!(
        matches!(err, IdentityError::MultipleUris { count: 2, .. }),
        "{err}"
    );

    let der = cert_with_uris(&["spiffe://crossflow.test/partner/a", "https://example.com/"]);
    assert!(principal_from_cert(&der, FED).is_err());

    let der = cert_with_uris(&[]);
    let err = principal_from_cert(&der, FED).unwrap_err();
    assert!(matches!(err, IdentityError::NoSpiffeId { .. }), "{err}");

    let der = cert_with_uris(&["spiffe://crossflow.test/partner/Bad_Slug"]);
    let err = principal_from_cert(&der, FED).unwrap_err();
    assert!(matches!(err, IdentityError::BadSpiffeId { .. }), "{err}");

    let der = cert_with_uris(&["spiffe://crossflow.test/partner/ok"]);
    assert_eq!(
        principal_from_cert(&der, FED).unwrap(),
        Principal::Partner("ok".into())
    );
}

#[test]
fn garbage_is_not_a_certificate() {
    let der = cert_with_uris(&["spiffe://crossflow.test/partner/ok"]);
    let mut trailing = der.clone();
    trailing.push(0);
    for bad in [
        &[][..],
        &[0x30, 0x03, 1, 2, 3][..],
        &der[..der.len() - 1],
        &trailing[..],
    ] {
        let err = principal_from_cert(bad, FED).unwrap_err();
        assert!(matches!(err, IdentityError::Certificate { .. }), "{err}");
    }
}

#[test]
fn principal_text_forms() {
    let p = Principal::Partner("shop-a".into());
    assert_eq!(p.to_string(), "partner/shop-a");
    assert_eq!(p.spiffe_id(FED), "spiffe://crossflow.test/partner/shop-a");
    assert_eq!(p.name(), "shop-a");
    assert_eq!(parse_spiffe_id(&p.spiffe_id(FED), FED).unwrap(), p);
}

proptest! {
    #[test]
    fn arbitrary_der_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = principal_from_cert(&bytes, FED);
    }

    #[test]
    fn arbitrary_uri_never_panics(uri in "spiffe://.{0,40}|.{0,40}") {
        let _ = parse_spiffe_id(&uri, FED);
    }

    #[test]
    fn valid_slugs_roundtrip(slug in "[a-z]([a-z0-9-]{0,61}[a-z0-9])?") {
        prop_assert!(is_valid_slug(&slug));
        let p = Principal::Partner(slug);
        prop_assert_eq!(parse_spiffe_id(&p.spiffe_id(FED), FED).unwrap(), p);
    }
}
