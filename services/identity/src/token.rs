//! Referral tokens: a referral hop sealed with AEAD so the token leaks
//! nothing and minting one needs no write.
//!
//! # Format
//!
//! ```text
//! token  = "cf1." base64url-nopad(header ‖ nonce ‖ ciphertext ‖ tag)
//! header = version (1 byte, = 1) ‖ key_id (u32 big-endian)     -- the AEAD's AAD
//! nonce  = 12 random bytes
//! AEAD   = AES-256-GCM under the token key `key_id`
//! ```
//!
//! The plaintext is a compact binary encoding of [`ReferralClaims`]
//! (integers big-endian, strings as `len u8 ‖ bytes`: slugs, and the target
//! of 1-255 printable ASCII bytes):
//!
//! ```text
//! referral_id [16] ‖ issued_at_ms i64 ‖ expires_at_ms i64 ‖ hop u32
//! ‖ flags u8 (bit 0 tag_access, bit 1 parent present, others zero)
//! ‖ [parent [16] if bit 1] ‖ origin_uid [32]
//! ‖ from ‖ to ‖ origin ‖ chain_len u8 ‖ chain_len × slug ‖ target
//! ```
//!
//! Every valid claim set seals to at most [`MAX_TOKEN_LEN`] characters, and
//! [`KeyRing::open`] rejects anything longer before decoding. Decoding is
//! bounds-checked throughout and never panics.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{self, Aad, Nonce};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::keys::tag_to_array;
use crate::spiffe::is_valid_slug;
use crate::{IdentityError, KeyRing, Uid};

#[cfg(test)]
mod tests;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "cf1.";
/// Longest token [`KeyRing::open`] looks at, in bytes.
pub const MAX_TOKEN_LEN: usize = 2048;
/// Most entries a claim's `chain` may have (so at most this many hops).
pub const MAX_CHAIN_LEN: usize = 8;
/// Longest target, in bytes.
pub const MAX_TARGET_LEN: usize = 255;

const TOKEN_VERSION: u8 = 1;
const HEADER_LEN: usize = 5;
const NONCE_LEN: usize = aead::NONCE_LEN;
const TAG_LEN: usize = 16;
const FLAG_TAG_ACCESS: u8 = 0b01;
const FLAG_PARENT: u8 = 0b10;
/// Domain separation for [`ReferralId::derive`]: starts with 0x01, which no
/// slug starts with, so it can never equal a uid input under the same key.
const REFERRAL_ID_DOMAIN: &[u8] = b"\x01crossflow referral-id v1\x00";

// === types ===

/// A referral hop's id: 16 bytes, displayed as 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReferralId(pub [u8; 16]);

/// What a referral token carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferralClaims {
    pub referral_id: ReferralId,
    /// The partner that minted this hop (the referrer).
    pub from: String,
    /// The partner the viewer is sent to; only it may redeem the token.
    pub to: String,
    /// Partner slugs from the origin up to and including `from`.
    pub chain: Vec<String>,
    /// The hop this one extends; `None` for a direct hop.
    pub parent: Option<ReferralId>,
    /// 1 for a direct hop; always `chain.len()`.
    pub hop: u32,
    /// The partner the user originally belongs to (`chain[0]`).
    pub origin: String,
    /// The user's uid at the origin.
    pub origin_uid: Uid,
    pub issued_at_ms: i64,
    /// The caller checks expiry; `open` does not look at the clock.
    pub expires_at_ms: i64,
    /// Whether the destination may read the user's tags after landing.
    pub tag_access: bool,
    /// Where the viewer is sent at the destination (1-255 printable ASCII).
    pub target: String,
}

/// Why a token could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "referral token is malformed: not cf1.<base64url>, of an impossible length (max {MAX_TOKEN_LEN} bytes) or an unknown version"
    )]
    Malformed,
    #[error("referral token was sealed with token key {0}, which this gateway does not hold")]
    UnknownKey(u32),
    #[error(
        "referral token failed authentication: it was altered or not issued by this federation"
    )]
    Tampered,
    #[error("referral claims cannot be sealed: {0}")]
    InvalidClaims(String),
    #[error("the system random number generator failed")]
    Random,
}

// === impl KeyRing (tokens) ===

impl KeyRing {
    /// Seals `claims` under the current token key with a fresh random nonce.
    ///
    /// Fails only on claims that break the invariants documented on
    /// [`ReferralClaims`] (slugs, chain shape, bounds) or if the system RNG
    /// fails.
    pub fn seal(&self, claims: &ReferralClaims) -> Result<String, TokenError> {
        validate(claims).map_err(TokenError::InvalidClaims)?;
        let key_id = self.current_token_key_id();
        let key = self
            .token_key(key_id)
            .ok_or(TokenError::UnknownKey(key_id))?;

        let [k0, k1, k2, k3] = key_id.to_be_bytes();
        let header: [u8; HEADER_LEN] = [TOKEN_VERSION, k0, k1, k2, k3];
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| TokenError::Random)?;

        let mut in_out = encode(claims);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut in_out,
        )
        .map_err(|_| TokenError::InvalidClaims("claims too large for the AEAD".to_owned()))?;

        let mut raw = Vec::with_capacity(HEADER_LEN + NONCE_LEN + in_out.len());
        raw.extend_from_slice(&header);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&in_out);
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw));
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::InvalidClaims(format!(
                "sealed token would be {} bytes, over the {MAX_TOKEN_LEN}-byte limit",
                token.len()
            )));
        }
        Ok(token)
    }

    /// Opens a token sealed by any token key this ring holds and returns the
    /// claims with the id of the key that sealed them. Expiry is the
    /// caller's to check.
    pub fn open(&self, token: &str) -> Result<(ReferralClaims, u32), TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let body = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let (header, rest) = raw
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(TokenError::Malformed)?;
        let (nonce, sealed) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(TokenError::Malformed)?;
        let [version, k0, k1, k2, k3] = *header;
        if version != TOKEN_VERSION || sealed.len() < TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let key_id = u32::from_be_bytes([k0, k1, k2, k3]);
        let key = self
            .token_key(key_id)
            .ok_or(TokenError::UnknownKey(key_id))?;

        let mut in_out = sealed.to_vec();
        let plaintext = key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(*header),
                &mut in_out,
            )
            .map_err(|_| TokenError::Tampered)?;
        // Authenticated but undecodable means a bug or a leaked key, not
        // line noise; either way the token is unusable.
        let claims = decode(plaintext).ok_or(TokenError::Malformed)?;
        validate(&claims).map_err(|_| TokenError::Malformed)?;
        Ok((claims, key_id))
    }
}

// === impl ReferralId ===

impl ReferralId {
    /// A fresh random id (for requests without a request id).
    pub fn random() -> Result<ReferralId, IdentityError> {
        let mut id = [0u8; 16];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| IdentityError::Random)?;
        Ok(ReferralId(id))
    }

    /// The id for `from`'s request `request_id`, so retrying a
    /// CreateReferral yields the same id:
    /// `HMAC-SHA256(K_store, 0x01 ‖ "crossflow referral-id v1" ‖ 0x00 ‖ from ‖ 0x00 ‖ request_id)[..16]`.
    pub fn derive(ring: &KeyRing, from: &str, request_id: &str) -> ReferralId {
        let mut ctx = hmac::Context::with_key(ring.store_key());
        ctx.update(REFERRAL_ID_DOMAIN);
        ctx.update(from.as_bytes());
        ctx.update(&[0]);
        ctx.update(request_id.as_bytes());
        let mac = tag_to_array(ctx.sign());
        let mut id = [0u8; 16];
        for (o, m) in id.iter_mut().zip(mac) {
            *o = m;
        }
        ReferralId(id)
    }

    /// Parses 32 hex characters (either case).
    pub fn from_hex(s: &str) -> Result<ReferralId, IdentityError> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).map_err(|e| IdentityError::InvalidId {
            kind: "referral id",
            value: s.chars().take(80).collect(),
            reason: format!("expected 32 hex characters: {e}"),
        })?;
        Ok(ReferralId(out))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for ReferralId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ReferralId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReferralId({self})")
    }
}

impl FromStr for ReferralId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReferralId::from_hex(s)
    }
}

impl Serialize for ReferralId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ReferralId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        ReferralId::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

// === codec ===

/// The invariants every sealed claim set satisfies; the message names the
/// field at fault.
fn validate(c: &ReferralClaims) -> Result<(), String> {
    for (field, value) in [("from", &c.from), ("to", &c.to), ("origin", &c.origin)] {
        if !is_valid_slug(value) {
            return Err(format!("{field} = {value:?} is not a valid partner slug"));
        }
    }
    if c.chain.is_empty() || c.chain.len() > MAX_CHAIN_LEN {
        return Err(format!(
            "chain has {} entries; it must have 1 to {MAX_CHAIN_LEN}",
            c.chain.len()
        ));
    }
    for (i, slug) in c.chain.iter().enumerate() {
        if !is_valid_slug(slug) {
            return Err(format!("chain[{i}] = {slug:?} is not a valid partner slug"));
        }
    }
    if c.chain.first() != Some(&c.origin) {
        return Err(format!(
            "chain[0] = {:?} must be the origin {:?}",
            c.chain.first(),
            c.origin
        ));
    }
    if c.chain.last() != Some(&c.from) {
        return Err(format!(
            "chain must end with from = {:?}, ends with {:?}",
            c.from,
            c.chain.last()
        ));
    }
    if usize::try_from(c.hop).ok() != Some(c.chain.len()) {
        return Err(format!(
            "hop = {} must equal the chain length {}",
            c.hop,
            c.chain.len()
        ));
    }
    if (c.hop == 1) != c.parent.is_none() {
        return Err(format!(
            "hop = {} with parent {}: a direct hop (1) has no parent, a later hop has one",
            c.hop,
            if c.parent.is_some() { "set" } else { "unset" }
        ));
    }
    if c.target.is_empty()
        || c.target.len() > MAX_TARGET_LEN
        || !c.target.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return Err(format!(
            "target must be 1-{MAX_TARGET_LEN} printable ASCII bytes, got {} bytes",
            c.target.len()
        ));
    }
    if c.expires_at_ms <= c.issued_at_ms {
        return Err(format!(
            "expires_at_ms = {} must be after issued_at_ms = {}",
            c.expires_at_ms, c.issued_at_ms
        ));
    }
    Ok(())
}

/// Encodes claims that passed [`validate`] (so every string fits a u8 length).
fn encode(c: &ReferralClaims) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + 64 * c.chain.len());
    out.extend_from_slice(&c.referral_id.0);
    out.extend_from_slice(&c.issued_at_ms.to_be_bytes());
    out.extend_from_slice(&c.expires_at_ms.to_be_bytes());
    out.extend_from_slice(&c.hop.to_be_bytes());
    let mut flags = 0;
    if c.tag_access {
        flags |= FLAG_TAG_ACCESS;
    }
    if c.parent.is_some() {
        flags |= FLAG_PARENT;
    }
    out.push(flags);
    if let Some(parent) = &c.parent {
        out.extend_from_slice(&parent.0);
    }
    out.extend_from_slice(&c.origin_uid.0);
    for s in [&c.from, &c.to, &c.origin] {
        put_str(&mut out, s);
    }
    out.push(u8::try_from(c.chain.len()).unwrap_or(u8::MAX));
    for s in &c.chain {
        put_str(&mut out, s);
    }
    put_str(&mut out, &c.target);
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Slugs are at most 63 bytes; validate() ran before us.
    let bytes = s.as_bytes();
    let len = bytes.len().min(usize::from(u8::MAX));
    out.push(u8::try_from(len).unwrap_or(u8::MAX));
    out.extend_from_slice(&bytes[..len]);
}

/// Decodes claims; `None` on any structural problem, never a panic.
fn decode(bytes: &[u8]) -> Option<ReferralClaims> {
    let mut r = Reader(bytes);
    let referral_id = ReferralId(r.array()?);
    let issued_at_ms = i64::from_be_bytes(r.array()?);
    let expires_at_ms = i64::from_be_bytes(r.array()?);
    let hop = u32::from_be_bytes(r.array()?);
    let [flags] = r.array()?;
    if flags & !(FLAG_TAG_ACCESS | FLAG_PARENT) != 0 {
        return None;
    }
    let parent = if flags & FLAG_PARENT != 0 {
        Some(ReferralId(r.array()?))
    } else {
        None
    };
    let origin_uid = Uid(r.array()?);
    let from = r.string()?;
    let to = r.string()?;
    let origin = r.string()?;
    let [chain_len] = r.array()?;
    if usize::from(chain_len) > MAX_CHAIN_LEN {
        return None;
    }
    let chain = (0..chain_len)
        .map(|_| r.string())
        .collect::<Option<Vec<_>>>()?;
    let target = r.string()?;
    if !r.0.is_empty() {
        return None;
    }
    Some(ReferralClaims {
        referral_id,
        from,
        to,
        chain,
        parent,
        hop,
        origin,
        origin_uid,
        issued_at_ms,
        expires_at_ms,
        tag_access: flags & FLAG_TAG_ACCESS != 0,
        target,
    })
}

/// A cursor over untrusted bytes.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn string(&mut self) -> Option<String> {
        let [len] = self.array::<1>()?;
        let len = usize::from(len);
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(head.to_vec()).ok()
    }
}
