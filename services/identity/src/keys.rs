//! The key directory and the derivations built on it.
//!
//! # Layout
//!
//! ```text
//! <dir>/                      mode 0700
//!   keys.toml                 manifest: ids, epochs, created_at, which is current
//!   store.key                 32 bytes, K_store (never rotates)
//!   token-<id>.key            32 bytes, AES-256-GCM key for referral tokens
//!   epoch-<n>.key             32 bytes, K_epoch for pseudonyms
//!   ledger-ed25519.pk8        Ed25519 PKCS#8 (v2) document for checkpoints
//! ```
//!
//! Every file is written atomically (temp file, fsync, rename, fsync of the
//! directory) with mode 0600, and secret files are refused on load if group
//! or others can access them. The manifest is always written last, so it is
//! the commit point: a crash mid-rotation leaves unreferenced key files that
//! the next rotation overwrites, never a manifest naming a missing key.
//!
//! # Derivations
//!
//! - `uid = HMAC-SHA256(K_store, partner ‖ 0x00 ‖ subject)`. Partner slugs
//!   never contain 0x00 (see [`crate::is_valid_slug`]), so the first 0x00
//!   ends the partner and the encoding is injective.
//! - `pseudonym = HMAC-SHA256(K_epoch, viewer ‖ 0x00 ‖ origin ‖ 0x00 ‖ uid)`,
//!   with `uid` its 32 raw bytes, rendered `ps1.<epoch>.<base64url-nopad(mac)>`
//!   (epoch in decimal, 43 base64 characters), e.g.
//!   `ps1.3.q2Vb…`. It differs per viewer, so two partners cannot join what
//!   they see, and per epoch, so rotation unlinks old and new views.
//!
//! Rotation ([`KeyRing::rotate`]) adds a token key and a pseudonym epoch and
//! makes them current; older ones stay so that tokens sealed before the
//! rotation still open and old pseudonyms can still be computed during the
//! overlap. The store key and the ledger signing key never rotate.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::KeyPair as _;
use ring::{aead, hmac, signature};
use serde::{Deserialize, Serialize};

use crate::IdentityError;
use crate::fsutil::{self, SECRET_DIR_MODE, SECRET_MODE};

#[cfg(test)]
mod tests;

/// The manifest's file name inside a key directory.
pub const MANIFEST_FILE: &str = "keys.toml";
/// Key name of the ledger signing key written by [`KeyRing::generate`]
/// (the name that appears in signed notes; editable in `keys.toml`).
pub const DEFAULT_LEDGER_KEY_NAME: &str = "crossflow-ledger";

const STORE_FILE: &str = "store.key";
const LEDGER_FILE: &str = "ledger-ed25519.pk8";
const MANIFEST_FORMAT: u32 = 1;
const TOKEN_ALGORITHM: &str = "AES-256-GCM";
const LEDGER_ALGORITHM: &str = "Ed25519";
const SYMMETRIC_KEY_LEN: usize = 32;
const PSEUDONYM_PREFIX: &str = "ps1";

const MANIFEST_HEADER: &str = "\
# crossflow identity keys: the manifest of this directory.
# Secrets live beside it: store.key, token-<id>.key, epoch-<n>.key and
# ledger-ed25519.pk8 (all mode 0600). Rotate with the crossflow CLI rather than
# by hand; the store key and the ledger key never rotate.
# Times are unix milliseconds (UTC).

";

// === types ===

/// The loaded key directory: everything the gateway needs to derive ids,
/// seal and open referral tokens, and hand the ledger its signing key.
pub struct KeyRing {
    store: hmac::Key,
    token_keys: BTreeMap<u32, aead::LessSafeKey>,
    current_token_key_id: u32,
    epochs: Vec<EpochInfo>,
    epoch_keys: BTreeMap<u32, hmac::Key>,
    current_epoch: u32,
    current_epoch_key: hmac::Key,
    ledger_key_name: String,
    ledger_pkcs8: Vec<u8>,
    ledger_public_key: Vec<u8>,
}

/// A user id inside the federation: `HMAC-SHA256(K_store, partner ‖ 0x00 ‖ subject)`.
///
/// Stable for as long as the key directory lives; displayed as 64 lowercase
/// hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uid(pub [u8; 32]);

/// What a viewing partner is shown for a user that came from elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pseudonym {
    /// The pseudonym epoch whose key produced `value`.
    pub epoch: u32,
    /// `ps1.<epoch>.<base64url-nopad of the 32-byte HMAC>`.
    pub value: String,
}

/// One pseudonym epoch as listed in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochInfo {
    pub epoch: u32,
    pub created_at_ms: i64,
}

/// What [`KeyRing::rotate`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationReport {
    pub previous_token_key_id: u32,
    pub token_key_id: u32,
    pub previous_epoch: u32,
    pub epoch: u32,
    pub rotated_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    store: StoreSection,
    tokens: TokensSection,
    pseudonyms: PseudonymsSection,
    ledger: LedgerSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensSection {
    algorithm: String,
    current: u32,
    keys: Vec<TokenKeyEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenKeyEntry {
    id: u32,
    created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PseudonymsSection {
    current_epoch: u32,
    epochs: Vec<EpochEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochEntry {
    epoch: u32,
    created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerSection {
    key_name: String,
    algorithm: String,
    created_at_ms: i64,
}

// === impl KeyRing ===

impl KeyRing {
    /// Creates a fresh key directory at `dir` (created with mode 0700 if
    /// missing): store key, token key 1, pseudonym epoch 1 and the ledger
    /// signing key named [`DEFAULT_LEDGER_KEY_NAME`].
    ///
    /// Refuses if `dir` already holds a manifest, a store key or a ledger
    /// key: overwriting the store key would change every uid for good.
    pub fn generate(dir: &Path) -> Result<(), IdentityError> {
        for name in [MANIFEST_FILE, STORE_FILE, LEDGER_FILE] {
            let path = dir.join(name);
            if path.symlink_metadata().is_ok() {
                return Err(IdentityError::AlreadyInitialised {
                    dir: dir.to_path_buf(),
                    found: path,
                });
            }
        }
        fsutil::create_dir(dir, SECRET_DIR_MODE)?;

        let rng = SystemRandom::new();
        let now_ms = now_unix_ms();
        fsutil::write_atomic(&dir.join(STORE_FILE), &random_key(&rng)?, SECRET_MODE)?;
        fsutil::write_atomic(&dir.join(token_file(1)), &random_key(&rng)?, SECRET_MODE)?;
        fsutil::write_atomic(&dir.join(epoch_file(1)), &random_key(&rng)?, SECRET_MODE)?;
        let pkcs8 =
            signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| IdentityError::Random)?;
        fsutil::write_atomic(&dir.join(LEDGER_FILE), pkcs8.as_ref(), SECRET_MODE)?;

        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            store: StoreSection {
                created_at_ms: now_ms,
            },
            tokens: TokensSection {
                algorithm: TOKEN_ALGORITHM.to_owned(),
                current: 1,
                keys: vec![TokenKeyEntry {
                    id: 1,
                    created_at_ms: now_ms,
                }],
            },
            pseudonyms: PseudonymsSection {
                current_epoch: 1,
                epochs: vec![EpochEntry {
                    epoch: 1,
                    created_at_ms: now_ms,
                }],
            },
            ledger: LedgerSection {
                key_name: DEFAULT_LEDGER_KEY_NAME.to_owned(),
                algorithm: LEDGER_ALGORITHM.to_owned(),
                created_at_ms: now_ms,
            },
        };
        write_manifest(dir, &manifest)
    }

    /// Loads and checks a key directory: manifest syntax and consistency,
    /// every referenced key file present, private (no group/other access)
    /// and of the right size or format.
    pub fn load(dir: &Path) -> Result<KeyRing, IdentityError> {
        load_parts(dir).map(|(_, ring)| ring)
    }

    /// Adds a new token key and a new pseudonym epoch, both created at
    /// `now_unix_ms`, and makes them current. Older ones are kept: tokens
    /// they sealed still open, and old-epoch pseudonyms stay computable.
    ///
    /// A running gateway picks the new keys up when it next loads the
    /// directory. Run one rotation at a time per directory.
    pub fn rotate(dir: &Path, now_unix_ms: i64) -> Result<RotationReport, IdentityError> {
        let (mut manifest, ring) = load_parts(dir)?;

        let token_key_id = next_id(ring.token_keys.keys().copied(), "token key id")?;
        let epoch = next_id(ring.epoch_keys.keys().copied(), "pseudonym epoch")?;

        let rng = SystemRandom::new();
        // Key files first, manifest last: the manifest is the commit point.
        fsutil::write_atomic(
            &dir.join(token_file(token_key_id)),
            &random_key(&rng)?,
            SECRET_MODE,
        )?;
        fsutil::write_atomic(
            &dir.join(epoch_file(epoch)),
            &random_key(&rng)?,
            SECRET_MODE,
        )?;

        manifest.tokens.keys.push(TokenKeyEntry {
            id: token_key_id,
            created_at_ms: now_unix_ms,
        });
        manifest.tokens.current = token_key_id;
        manifest.pseudonyms.epochs.push(EpochEntry {
            epoch,
            created_at_ms: now_unix_ms,
        });
        manifest.pseudonyms.current_epoch = epoch;
        write_manifest(dir, &manifest)?;

        Ok(RotationReport {
            previous_token_key_id: ring.current_token_key_id,
            token_key_id,
            previous_epoch: ring.current_epoch,
            epoch,
            rotated_at_ms: now_unix_ms,
        })
    }

    /// `HMAC-SHA256(K_store, partner ‖ 0x00 ‖ subject)`.
    ///
    /// `partner` must be a valid slug (it comes from the authenticated
    /// [`crate::Principal`]); `subject` is the partner's own user id, any bytes.
    pub fn uid(&self, partner: &str, subject: &str) -> Uid {
        let mut ctx = hmac::Context::with_key(&self.store);
        ctx.update(partner.as_bytes());
        ctx.update(&[0]);
        ctx.update(subject.as_bytes());
        Uid(tag_to_array(ctx.sign()))
    }

    /// The pseudonym `viewer` is shown for the user `uid` that came from
    /// `origin`, under the current epoch.
    pub fn pseudonym(&self, viewer: &str, origin: &str, uid: &Uid) -> Pseudonym {
        derive_pseudonym(
            &self.current_epoch_key,
            self.current_epoch,
            viewer,
            origin,
            uid,
        )
    }

    /// Like [`KeyRing::pseudonym`] under a given epoch; `None` if this key
    /// directory has no such epoch.
    pub fn pseudonym_in_epoch(
        &self,
        viewer: &str,
        origin: &str,
        uid: &Uid,
        epoch: u32,
    ) -> Option<Pseudonym> {
        self.epoch_keys
            .get(&epoch)
            .map(|key| derive_pseudonym(key, epoch, viewer, origin, uid))
    }

    /// Every pseudonym epoch, oldest first.
    pub fn epochs(&self) -> &[EpochInfo] {
        &self.epochs
    }

    /// The epoch [`KeyRing::pseudonym`] uses.
    pub fn current_epoch(&self) -> u32 {
        self.current_epoch
    }

    /// The id of the key [`KeyRing::seal`] uses.
    pub fn current_token_key_id(&self) -> u32 {
        self.current_token_key_id
    }

    /// Ids of every token key that can still open tokens, ascending.
    pub fn token_key_ids(&self) -> Vec<u32> {
        self.token_keys.keys().copied().collect()
    }

    /// The ledger's Ed25519 signing key as a PKCS#8 document, for
    /// `ring::signature::Ed25519KeyPair::from_pkcs8`.
    pub fn ledger_signing_key_pkcs8(&self) -> &[u8] {
        &self.ledger_pkcs8
    }

    /// The ledger signing key's name in signed notes.
    pub fn ledger_key_name(&self) -> &str {
        &self.ledger_key_name
    }

    /// The ledger signing key's 32-byte Ed25519 public key.
    pub fn ledger_public_key(&self) -> &[u8] {
        &self.ledger_public_key
    }

    pub(crate) fn store_key(&self) -> &hmac::Key {
        &self.store
    }

    pub(crate) fn token_key(&self, id: u32) -> Option<&aead::LessSafeKey> {
        self.token_keys.get(&id)
    }
}

impl fmt::Debug for KeyRing {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("token_key_ids", &self.token_keys.keys().collect::<Vec<_>>())
            .field("current_token_key_id", &self.current_token_key_id)
            .field("epochs", &self.epochs)
            .field("current_epoch", &self.current_epoch)
            .field("ledger_key_name", &self.ledger_key_name)
            .finish_non_exhaustive()
    }
}

// === impl Uid ===

impl Uid {
    /// Parses 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Result<Uid, IdentityError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| IdentityError::InvalidId {
            kind: "uid",
            value: s.chars().take(80).collect(),
            reason: format!("expected 64 hex characters: {e}"),
        })?;
        Ok(Uid(out))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({self})")
    }
}

impl FromStr for Uid {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uid::from_hex(s)
    }
}

impl Serialize for Uid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Uid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Uid::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

// === impl Pseudonym ===

impl Pseudonym {
    /// Parses a rendered pseudonym (`ps1.<epoch>.<43 base64url chars>`),
    /// e.g. one a partner sent back. Only the shape is checked.
    pub fn parse(s: &str) -> Result<Pseudonym, IdentityError> {
        let bad = |reason: &str| IdentityError::InvalidId {
            kind: "pseudonym",
            value: s.chars().take(80).collect(),
            reason: reason.to_owned(),
        };
        let mut parts = s.split('.');
        let (Some(prefix), Some(epoch), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected ps1.<epoch>.<base64url>"));
        };
        if prefix != PSEUDONYM_PREFIX {
            return Err(bad("expected the prefix ps1"));
        }
        if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) || epoch.starts_with('0')
        {
            return Err(bad(
                "the epoch must be a decimal number without leading zeros",
            ));
        }
        let epoch: u32 = epoch
            .parse()
            .map_err(|_| bad("the epoch does not fit in a u32"))?;
        let mut out = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(mac, &mut out) {
            Ok(32) => {}
            _ => return Err(bad("the value must be 43 base64url characters (32 bytes)")),
        }
        Ok(Pseudonym {
            epoch,
            value: s.to_owned(),
        })
    }
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl FromStr for Pseudonym {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pseudonym::parse(s)
    }
}

// === helpers ===

fn load_parts(dir: &Path) -> Result<(Manifest, KeyRing), IdentityError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(IdentityError::NotInitialised {
                dir: dir.to_path_buf(),
                manifest: manifest_path,
            });
        }
        Err(e) => return Err(IdentityError::io("read", &manifest_path, e)),
    };
    let manifest: Manifest = toml::from_str(&text).map_err(|e| IdentityError::Manifest {
        path: manifest_path.clone(),
        message: e.to_string(),
    })?;
    validate_manifest(&manifest).map_err(|message| IdentityError::Manifest {
        path: manifest_path.clone(),
        message,
    })?;

    let store_bytes = read_symmetric(&dir.join(STORE_FILE))?;
    let store = hmac::Key::new(hmac::HMAC_SHA256, &store_bytes);

    let mut token_keys = BTreeMap::new();
    for entry in &manifest.tokens.keys {
        let path = dir.join(token_file(entry.id));
        let bytes = read_symmetric(&path)?;
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, &bytes).map_err(|_| {
            IdentityError::KeyFile {
                path: path.clone(),
                reason: "not a valid AES-256-GCM key".to_owned(),
            }
        })?;
        token_keys.insert(entry.id, aead::LessSafeKey::new(key));
    }

    let mut epoch_keys = BTreeMap::new();
    let mut epochs = Vec::with_capacity(manifest.pseudonyms.epochs.len());
    for entry in &manifest.pseudonyms.epochs {
        let bytes = read_symmetric(&dir.join(epoch_file(entry.epoch)))?;
        epoch_keys.insert(entry.epoch, hmac::Key::new(hmac::HMAC_SHA256, &bytes));
        epochs.push(EpochInfo {
            epoch: entry.epoch,
            created_at_ms: entry.created_at_ms,
        });
    }
    epochs.sort_by_key(|e| e.epoch);

    let current_epoch = manifest.pseudonyms.current_epoch;
    let current_epoch_key =
        epoch_keys
            .get(&current_epoch)
            .cloned()
            .ok_or_else(|| IdentityError::Manifest {
                path: manifest_path.clone(),
                message: format!("pseudonyms.current_epoch = {current_epoch} has no key"),
            })?;

    let ledger_path = dir.join(LEDGER_FILE);
    let ledger_pkcs8 = fsutil::read_secret(&ledger_path)?;
    let pair = signature::Ed25519KeyPair::from_pkcs8(&ledger_pkcs8).map_err(|e| {
        IdentityError::KeyFile {
            path: ledger_path.clone(),
            reason: format!("not an Ed25519 PKCS#8 v2 document: {e}"),
        }
    })?;
    let ledger_public_key = pair.public_key().as_ref().to_vec();

    let ring = KeyRing {
        store,
        token_keys,
        current_token_key_id: manifest.tokens.current,
        epochs,
        epoch_keys,
        current_epoch,
        current_epoch_key,
        ledger_key_name: manifest.ledger.key_name.clone(),
        ledger_pkcs8,
        ledger_public_key,
    };
    Ok((manifest, ring))
}

/// Consistency checks that serde cannot express; the message names the key.
fn validate_manifest(m: &Manifest) -> Result<(), String> {
    if m.format != MANIFEST_FORMAT {
        return Err(format!(
            "format = {} is not supported (expected {MANIFEST_FORMAT})",
            m.format
        ));
    }
    if m.tokens.algorithm != TOKEN_ALGORITHM {
        return Err(format!(
            "tokens.algorithm = {:?} is not supported (expected {TOKEN_ALGORITHM:?})",
            m.tokens.algorithm
        ));
    }
    check_ids(
        m.tokens.keys.iter().map(|k| k.id),
        "tokens.keys",
        "id",
        "tokens.current",
        m.tokens.current,
    )?;
    check_ids(
        m.pseudonyms.epochs.iter().map(|e| e.epoch),
        "pseudonyms.epochs",
        "epoch",
        "pseudonyms.current_epoch",
        m.pseudonyms.current_epoch,
    )?;
    if m.ledger.algorithm != LEDGER_ALGORITHM {
        return Err(format!(
            "ledger.algorithm = {:?} is not supported (expected {LEDGER_ALGORITHM:?})",
            m.ledger.algorithm
        ));
    }
    let name = &m.ledger.key_name;
    // c2sp.org/signed-note: a key name is non-empty, without spaces or '+'.
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(format!(
            "ledger.key_name = {name:?} is not a valid signed-note key name (non-empty, no whitespace, no '+')"
        ));
    }
    Ok(())
}

fn check_ids(
    ids: impl Iterator<Item = u32>,
    list: &str,
    field: &str,
    current_key: &str,
    current: u32,
) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, id) in ids.enumerate() {
        if id == 0 {
            return Err(format!("{list}[{i}].{field} = 0; ids start at 1"));
        }
        if !seen.insert(id) {
            return Err(format!("{list}[{i}].{field} = {id} is listed twice"));
        }
    }
    if seen.is_empty() {
        return Err(format!("{list} is empty; at least one entry is required"));
    }
    if !seen.contains(&current) {
        return Err(format!(
            "{current_key} = {current} names no entry of {list}"
        ));
    }
    Ok(())
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), IdentityError> {
    let path = dir.join(MANIFEST_FILE);
    let body = toml::to_string(manifest).map_err(|e| IdentityError::Manifest {
        path: path.clone(),
        message: format!("cannot serialise: {e}"),
    })?;
    let text = format!("{MANIFEST_HEADER}{body}");
    fsutil::write_atomic(&path, text.as_bytes(), SECRET_MODE)
}

fn read_symmetric(path: &Path) -> Result<[u8; SYMMETRIC_KEY_LEN], IdentityError> {
    let bytes = fsutil::read_secret(path)?;
    <[u8; SYMMETRIC_KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| IdentityError::KeyFile {
        path: path.to_path_buf(),
        reason: format!(
            "expected exactly {SYMMETRIC_KEY_LEN} bytes, found {}",
            bytes.len()
        ),
    })
}

fn random_key(rng: &SystemRandom) -> Result<[u8; SYMMETRIC_KEY_LEN], IdentityError> {
    let mut key = [0u8; SYMMETRIC_KEY_LEN];
    rng.fill(&mut key).map_err(|_| IdentityError::Random)?;
    Ok(key)
}

fn next_id(ids: impl Iterator<Item = u32>, what: &'static str) -> Result<u32, IdentityError> {
    let current = ids.max().unwrap_or(0);
    current
        .checked_add(1)
        .ok_or(IdentityError::Exhausted { what, current })
}

fn derive_pseudonym(
    key: &hmac::Key,
    epoch: u32,
    viewer: &str,
    origin: &str,
    uid: &Uid,
) -> Pseudonym {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(viewer.as_bytes());
    ctx.update(&[0]);
    ctx.update(origin.as_bytes());
    ctx.update(&[0]);
    ctx.update(&uid.0);
    let mac = ctx.sign();
    Pseudonym {
        epoch,
        value: format!(
            "{PSEUDONYM_PREFIX}.{epoch}.{}",
            URL_SAFE_NO_PAD.encode(mac.as_ref())
        ),
    }
}

pub(crate) fn tag_to_array(tag: hmac::Tag) -> [u8; 32] {
    // HMAC-SHA256 tags are always 32 bytes; zip keeps this free of panics.
    let mut out = [0u8; 32];
    for (o, t) in out.iter_mut().zip(tag.as_ref()) {
        *o = *t;
    }
    out
}

fn token_file(id: u32) -> String {
    format!("token-{id}.key")
}

fn epoch_file(epoch: u32) -> String {
    format!("epoch-{epoch}.key")
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
