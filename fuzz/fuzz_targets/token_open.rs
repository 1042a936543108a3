//! Referral token opening (`KeyRing::open`). Two modes, by the first byte:
//! the rest as a token string as a partner would send it, or the rest as
//! claim plaintext sealed under the fixture's real token key, so the fuzzer
//! also reaches the claim decoder and validator behind AES-GCM.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use crossflow_fuzz::{current_token_key, fixture};
use libfuzzer_sys::fuzz_target;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

fn key() -> &'static LessSafeKey {
    static K: OnceLock<LessSafeKey> = OnceLock::new();
    K.get_or_init(|| {
        let raw = current_token_key();
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).unwrap_or_else(|_| panic!("aes key")))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ring = &fixture().keys;
    if mode & 1 == 0 {
        if let Ok(s) = std::str::from_utf8(rest)
            && let Ok((claims, _)) = ring.open(s)
        {
            // Whatever opens must seal again and open to the same claims.
            let again = ring.seal(&claims).unwrap_or_else(|e| panic!("reseal: {e}"));
            assert_eq!(ring.open(&again).map(|(c, _)| c).ok(), Some(claims));
        }
        return;
    }
    // Header: version 1, then the key id (big-endian); AAD is the header.
    let id = ring.current_token_key_id();
    let mut header = [1u8, 0, 0, 0, 0];
    header[1..].copy_from_slice(&id.to_be_bytes());
    let nonce = [7u8; 12];
    let mut sealed = rest.to_vec();
    if key()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut sealed,
        )
        .is_err()
    {
        return;
    }
    let mut raw = header.to_vec();
    raw.extend_from_slice(&nonce);
    raw.extend_from_slice(&sealed);
    let token = format!("cf1.{}", URL_SAFE_NO_PAD.encode(raw));
    if let Ok((claims, got)) = ring.open(&token) {
        assert_eq!(got, id);
        let again = ring.seal(&claims).unwrap_or_else(|e| panic!("reseal: {e}"));
        assert_eq!(ring.open(&again).map(|(c, _)| c).ok(), Some(claims));
    }
});
