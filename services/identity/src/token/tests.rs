use proptest::prelude::*;

use super::*;
use crate::test_support::ring;

fn direct(ring: &KeyRing) -> ReferralClaims {
    ReferralClaims {
        referral_id: ReferralId([7; 16]),
        from: "mombaby-live".to_owned(),
        to: "gadget-hub".to_owned(),
        chain: vec!["mombaby-live".to_owned()],
        parent: None,
        hop: 1,
        origin: "mombaby-live".to_owned(),
        origin_uid: ring.uid("mombaby-live", "user-1"),
        issued_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_600_000,
        tag_access: true,
        target: "room/nursery-makeover".to_owned(),
    }
}

fn extended(ring: &KeyRing) -> ReferralClaims {
    ReferralClaims {
        referral_id: ReferralId([9; 16]),
        from: "gadget-hub".to_owned(),
        to: "book-stream".to_owned(),
        chain: vec!["mombaby-live".to_owned(), "gadget-hub".to_owned()],
        parent: Some(ReferralId([7; 16])),
        hop: 2,
        tag_access: false,
        target: "room/new-mom-skincare".to_owned(),
        ..direct(ring)
    }
}

fn raw_of(token: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(token.strip_prefix(TOKEN_PREFIX).unwrap())
        .unwrap()
}

fn token_of(raw: &[u8]) -> String {
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

#[test]
fn seal_open_roundtrip() {
    let (_tmp, ring) = ring();
    for claims in [direct(&ring), extended(&ring)] {
        let token = ring.seal(&claims).unwrap();
        assert!(token.starts_with("cf1."), "{token}");
        assert!(token.len() <= MAX_TOKEN_LEN);
        let (opened, key_id) = ring.open(&token).unwrap();
        assert_eq!(opened, claims);
        assert_eq!(key_id, 1);
    }
}

#[test]
fn tokens_leak_nothing_and_never_repeat() {
    let (_tmp, ring) = ring();
    let claims = direct(&ring);
    let a = ring.seal(&claims).unwrap();
    let b = ring.seal(&claims).unwrap();
    assert_ne!(a, b, "nonces must be fresh");
    let raw = raw_of(&a);
    assert!(
        !raw.windows(claims.from.len())
            .any(|w| w == claims.from.as_bytes()),
        "plaintext slug visible in the token"
    );
}

#[test]
fn largest_claims_fit_the_cap() {
    let (_tmp, ring) = ring();
    let slug = |i: usize| format!("p{i:02}{}", "x".repeat(60));
    let chain: Vec<String> = (0..MAX_CHAIN_LEN).map(slug).collect();
    let claims = ReferralClaims {
        from: chain[MAX_CHAIN_LEN - 1].clone(),
        to: slug(99),
        origin: chain[0].clone(),
        hop: u32::try_from(MAX_CHAIN_LEN).unwrap(),
        parent: Some(ReferralId([1; 16])),
        chain,
        target: "t".repeat(MAX_TARGET_LEN),
        ..direct(&ring)
    };
    let token = ring.seal(&claims).unwrap();
    assert!(token.len() <= MAX_TOKEN_LEN, "{}", token.len());
    assert_eq!(ring.open(&token).unwrap().0, claims);
}

#[test]
fn flipping_any_byte_is_detected() {
    let (_tmp, ring) = ring();
    let token = ring.seal(&extended(&ring)).unwrap();
    let raw = raw_of(&token);
    for i in 0..raw.len() {
        for bit in [0x01, 0x80] {
            let mut bad = raw.clone();
            bad[i] ^= bit;
            let err = ring.open(&token_of(&bad)).unwrap_err();
            match i {
                0 => assert_eq!(err, TokenError::Malformed, "version byte"),
                1..=4 => assert!(
                    matches!(err, TokenError::UnknownKey(_) | TokenError::Tampered),
                    "key id byte {i}: {err:?}"
                ),
                _ => assert_eq!(err, TokenError::Tampered, "byte {i}"),
            }
        }
    }
}

#[test]
fn changing_any_character_is_detected() {
    let (_tmp, ring) = ring();
    let token = ring.seal(&direct(&ring)).unwrap();
    for i in 0..token.len() {
        for replacement in ['A', '_', '=', '.', 'é'] {
            let mut bad: String = token.chars().take(i).collect();
            bad.push(replacement);
            bad.extend(token.chars().skip(i + 1));
            if bad == token {
                continue;
            }
            let err = ring.open(&bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    TokenError::Malformed | TokenError::Tampered | TokenError::UnknownKey(_)
                ),
                "position {i} -> {replacement:?}: {err:?}"
            );
        }
    }
}

#[test]
fn truncated_or_extended_tokens_fail() {
    let (_tmp, ring) = ring();
    let token = ring.seal(&direct(&ring)).unwrap();
    for len in 0..token.len() {
        assert!(ring.open(&token[..len]).is_err(), "prefix of length {len}");
    }
    assert!(ring.open(&format!("{token}A")).is_err());
    assert!(ring.open(&format!("{token}AAAA")).is_err());
}

#[test]
fn malformed_inputs() {
    let (_tmp, ring) = ring();
    let token = ring.seal(&direct(&ring)).unwrap();
    let body = token.strip_prefix(TOKEN_PREFIX).unwrap();
    for bad in [
        String::new(),
        "cf1.".to_owned(),
        "cf1.!!!!".to_owned(),
        format!("cf2.{body}"),
        format!("CF1.{body}"),
        body.to_owned(),
        format!("{token}="),
        format!("cf1.{}", "A".repeat(MAX_TOKEN_LEN)),
        token_of(&[1, 0, 0, 0, 1]),
        token_of(&[1; HEADER_LEN + NONCE_LEN + TAG_LEN - 1]),
    ] {
        assert_eq!(ring.open(&bad), Err(TokenError::Malformed), "{bad:?}");
    }
}

#[test]
fn unknown_key_id_is_reported() {
    let (_tmp, ring) = ring();
    let mut raw = raw_of(&ring.seal(&direct(&ring)).unwrap());
    raw[1..5].copy_from_slice(&77u32.to_be_bytes());
    assert_eq!(ring.open(&token_of(&raw)), Err(TokenError::UnknownKey(77)));
}

#[test]
fn token_from_another_federation_is_tampered() {
    let (_tmp_a, a) = ring();
    let (_tmp_b, b) = ring();
    let token = a.seal(&direct(&a)).unwrap();
    assert_eq!(b.open(&token), Err(TokenError::Tampered));
}

#[test]
fn rotation_keeps_old_tokens_opening() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    KeyRing::generate(&dir).unwrap();
    let before = KeyRing::load(&dir).unwrap();
    let old = before.seal(&direct(&before)).unwrap();

    KeyRing::rotate(&dir, 1_000).unwrap();
    let after = KeyRing::load(&dir).unwrap();
    let (claims, key_id) = after.open(&old).unwrap();
    assert_eq!((claims, key_id), (direct(&before), 1));

    let new = after.seal(&direct(&after)).unwrap();
    assert_eq!(after.open(&new).unwrap().1, 2);
    // A gateway that has not reloaded yet cannot open new tokens.
    assert_eq!(before.open(&new), Err(TokenError::UnknownKey(2)));
}

#[test]
fn seal_rejects_inconsistent_claims() {
    let (_tmp, ring) = ring();
    let base = extended(&ring);
    let cases: Vec<(&str, ReferralClaims)> = vec![
        (
            "from",
            ReferralClaims {
                from: "Gadget".into(),
                ..base.clone()
            },
        ),
        (
            "to",
            ReferralClaims {
                to: String::new(),
                ..base.clone()
            },
        ),
        (
            "chain[1]",
            ReferralClaims {
                chain: vec!["mombaby-live".into(), "gadget-hub-".into()],
                ..base.clone()
            },
        ),
        (
            "chain[0]",
            ReferralClaims {
                origin: "other".into(),
                ..base.clone()
            },
        ),
        (
            "ends with",
            ReferralClaims {
                from: "other".into(),
                ..base.clone()
            },
        ),
        (
            "hop",
            ReferralClaims {
                hop: 3,
                ..base.clone()
            },
        ),
        (
            "parent",
            ReferralClaims {
                parent: None,
                ..base.clone()
            },
        ),
        (
            "chain has 0",
            ReferralClaims {
                chain: vec![],
                ..base.clone()
            },
        ),
        (
            "expires_at_ms",
            ReferralClaims {
                expires_at_ms: base.issued_at_ms,
                ..base.clone()
            },
        ),
        (
            "chain has 9",
            ReferralClaims {
                chain: vec!["a".into(); MAX_CHAIN_LEN + 1],
                ..base.clone()
            },
        ),
        (
            "target must be",
            ReferralClaims {
                target: String::new(),
                ..base.clone()
            },
        ),
        (
            "target must be",
            ReferralClaims {
                target: "room/\u{7f}".into(),
                ..base.clone()
            },
        ),
    ];
    for (needle, claims) in cases {
        match ring.seal(&claims) {
            Err(TokenError::InvalidClaims(msg)) => assert!(msg.contains(needle), "{needle}: {msg}"),
            other => panic!("{needle}: expected InvalidClaims, got {other:?}"),
        }
    }
}

#[test]
fn referral_id_derivation_is_idempotent_and_scoped() {
    let (_tmp, ring) = ring();
    let a = ReferralId::derive(&ring, "shop-a", "req-1");
    assert_eq!(a, ReferralId::derive(&ring, "shop-a", "req-1"));
    assert_ne!(a, ReferralId::derive(&ring, "shop-b", "req-1"));
    assert_ne!(a, ReferralId::derive(&ring, "shop-a", "req-2"));
    assert_ne!(
        ReferralId::derive(&ring, "ab", "c"),
        ReferralId::derive(&ring, "a", "bc")
    );
    let (_tmp2, other) = crate::test_support::ring();
    assert_ne!(a, ReferralId::derive(&other, "shop-a", "req-1"));
    // Domain separation: not a prefix of the uid for the same strings.
    assert_ne!(a.0[..], ring.uid("shop-a", "req-1").0[..16]);
}

#[test]
fn referral_id_text_forms() {
    let id = ReferralId::random().unwrap();
    assert_ne!(id, ReferralId::random().unwrap());
    let hex = id.to_string();
    assert_eq!(hex.len(), 32);
    assert_eq!(hex.parse::<ReferralId>().unwrap(), id);
    assert_eq!(format!("{id:?}"), format!("ReferralId({hex})"));
    assert!(ReferralId::from_hex("abc").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn codec_roundtrips(
        chain in proptest::collection::vec("[a-z][a-z0-9-]{0,20}[a-z0-9]", 1..=MAX_CHAIN_LEN),
        to in "[a-z][a-z0-9]{0,62}",
        id in any::<[u8; 16]>(),
        uid in any::<[u8; 32]>(),
        issued in any::<i64>(),
        tag_access in any::<bool>(),
        target in "[ -~]{1,255}",
    ) {
        let hop = u32::try_from(chain.len()).unwrap();
        let claims = ReferralClaims {
            referral_id: ReferralId(id),
            from: chain[chain.len() - 1].clone(),
            to,
            origin: chain[0].clone(),
            parent: (hop > 1).then_some(ReferralId([3; 16])),
            hop,
            chain,
            origin_uid: Uid(uid),
            issued_at_ms: issued,
            expires_at_ms: issued.saturating_add(1),
            tag_access,
            target,
        };
        prop_assume!(validate(&claims).is_ok());
        prop_assert_eq!(decode(&encode(&claims)), Some(claims));
    }
}

#[test]
fn open_never_panics_on_arbitrary_input() {
    let (_tmp, ring) = ring();
    let config = ProptestConfig::with_cases(2000);
    proptest!(config, |(s in ".{0,64}|cf1\\.[A-Za-z0-9_-]{0,300}|cf1\\..{0,3000}")| {
        prop_assert!(ring.open(&s).is_err());
    });
    proptest!(config, |(raw in proptest::collection::vec(any::<u8>(), 0..1600))| {
        prop_assert!(ring.open(&token_of(&raw)).is_err());
    });
    let raw = raw_of(&ring.seal(&direct(&ring)).unwrap());
    proptest!(config, |(i in 0..raw.len(), mask in 1u8..=255)| {
        let mut bad = raw.clone();
        bad[i] ^= mask;
        prop_assert!(ring.open(&token_of(&bad)).is_err());
    });
}
