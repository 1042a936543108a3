//! Signed notes (c2sp.org/signed-note) with Ed25519 keys, and checkpoints
//! (c2sp.org/tlog-checkpoint), the note bodies a log signs.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::digest::{Context, SHA256};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::merkle::Hash;

const ALG_ED25519: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";
/// The spec requires accepting at least 16; a cap bounds work on hostile input.
const MAX_SIGNATURES: usize = 100;
const PRIVATE_KEY_PREFIX: &str = "PRIVATE+KEY+";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error(
        "note contains control character U+{code:04X} at byte {offset}; only newline is allowed"
    )]
    ControlCharacter { offset: usize, code: u32 },
    #[error("note text must be non-empty and end with a newline")]
    TextNotTerminated,
    #[error("note has no blank line separating its text from signatures")]
    NoSignatureBlock,
    #[error("note signature block is empty or does not end with a newline")]
    SignatureBlockNotTerminated,
    #[error("signature line {line}: {reason}")]
    MalformedSignature { line: usize, reason: &'static str },
    #[error("note has more than {max} signatures", max = MAX_SIGNATURES)]
    TooManySignatures,
    #[error("signature by known key {name}+{key_id} does not verify")]
    InvalidSignature { name: String, key_id: String },
    #[error("note is not signed by any known key")]
    NoKnownSignature,
    #[error(
        "invalid key name {0:?}: it must be non-empty, without spaces, '+' or control characters"
    )]
    InvalidKeyName(String),
    #[error("malformed verifier key: {0}")]
    MalformedVerifierKey(&'static str),
    #[error("malformed private key: {0}")]
    MalformedPrivateKey(&'static str),
    #[error("key for {name} states key ID {stated} but its public key gives {computed}")]
    KeyIdMismatch {
        name: String,
        stated: String,
        computed: String,
    },
    #[error("unsupported signature type 0x{0:02x}; only Ed25519 (0x01) is supported")]
    UnsupportedAlgorithm(u8),
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
}

/// A log's signed tree head body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Opaque lines after the root hash, without their newlines.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Self {
        Self {
            origin: origin.into(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The note text: origin, decimal size, base64 root, then any extensions,
    /// each line ending in `\n`. Fails rather than emit a body that would parse
    /// back differently.
    pub fn to_body(&self) -> Result<String, NoteError> {
        if !is_text_line(&self.origin) {
            return Err(NoteError::MalformedCheckpoint(
                "origin must be a non-empty line without control characters",
            ));
        }
        if !self.extensions.iter().all(|l| is_text_line(l)) {
            return Err(NoteError::MalformedCheckpoint(
                "extension lines must be non-empty lines without control characters",
            ));
        }
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for line in &self.extensions {
            body.push_str(line);
            body.push('\n');
        }
        Ok(body)
    }

    pub fn parse_body(body: &str) -> Result<Self, NoteError> {
        use NoteError::MalformedCheckpoint as Bad;
        let text = body
            .strip_suffix('\n')
            .ok_or(Bad("body must end with a newline"))?;
        if text.chars().any(is_control) {
            return Err(Bad("body contains a control character"));
        }
        let mut lines = text.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(Bad("origin line is empty"));
        }
        let size = lines.next().ok_or(Bad("tree size line is missing"))?;
        let size = parse_decimal(size).ok_or(Bad(
            "tree size must be a decimal u64 without sign or leading zeros",
        ))?;
        let root = lines.next().ok_or(Bad("root hash line is missing"))?;
        let root = decode_hash(root).ok_or(Bad("root hash must be base64 of 32 bytes"))?;
        let extensions = lines
            .map(|l| match l.is_empty() {
                true => Err(Bad("extension lines must be non-empty")),
                false => Ok(l.to_owned()),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

/// Signs notes with an Ed25519 key under a key name.
#[derive(Debug)]
pub struct Signer {
    name: String,
    key_id: [u8; 4],
    key_pair: Ed25519KeyPair,
}

impl Signer {
    pub fn new(name: &str, key_pair: Ed25519KeyPair) -> Result<Self, NoteError> {
        check_name(name)?;
        let key_id = key_id(name, &typed_key(key_pair.public_key().as_ref()));
        Ok(Self {
            name: name.to_owned(),
            key_id,
            key_pair,
        })
    }

    /// From the 32-byte RFC 8032 private key (seed).
    pub fn from_seed(name: &str, seed: &[u8]) -> Result<Self, NoteError> {
        let key_pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| NoteError::MalformedPrivateKey("Ed25519 seed must be 32 bytes"))?;
        Self::new(name, key_pair)
    }

    /// From `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 ‖ seed)>`, the format
    /// of golang.org/x/mod/sumdb/note, so keys move between Go tools and us.
    pub fn from_private_key(text: &str) -> Result<Self, NoteError> {
        use NoteError::MalformedPrivateKey as Bad;
        let rest = text
            .trim()
            .strip_prefix(PRIVATE_KEY_PREFIX)
            .ok_or(Bad("must start with PRIVATE+KEY+"))?;
        let (name, stated, key) =
            split_key(rest).ok_or(Bad("expected PRIVATE+KEY+<name>+<key ID>+<key>"))?;
        let stated = parse_key_id(stated).ok_or(Bad("key ID must be 8 hex digits"))?;
        let key = B64
            .decode(key)
            .map_err(|_| Bad("key is not valid base64"))?;
        let seed = ed25519_key(&key).map_err(|e| e.unwrap_or(Bad("key is empty")))?;
        let signer = Self::from_seed(name, seed)?;
        check_key_id(name, stated, signer.key_id)?;
        Ok(signer)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    pub fn verifier(&self) -> Verifier {
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(self.key_pair.public_key().as_ref());
        Verifier {
            name: self.name.clone(),
            key_id: self.key_id,
            public_key,
        }
    }

    /// The verifier key text `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        self.verifier().to_string()
    }

    /// The signed note: `body`, a blank line, and this key's signature line.
    pub fn sign(&self, body: &str) -> Result<String, NoteError> {
        check_text(body)?;
        if !body.ends_with('\n') {
            return Err(NoteError::TextNotTerminated);
        }
        let mut blob = Vec::with_capacity(4 + 64);
        blob.extend_from_slice(&self.key_id);
        blob.extend_from_slice(self.key_pair.sign(body.as_bytes()).as_ref());
        Ok(format!(
            "{body}\n{SIG_PREFIX}{} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
}

/// The private key text [`Signer::from_private_key`] reads.
pub fn encode_private_key(name: &str, seed: &[u8; 32]) -> Result<String, NoteError> {
    let signer = Signer::from_seed(name, seed)?;
    let key = typed_key(seed);
    Ok(format!(
        "{PRIVATE_KEY_PREFIX}{name}+{}+{}",
        hex(&signer.key_id),
        B64.encode(key)
    ))
}

/// A trusted Ed25519 note key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: [u8; 4],
    public_key: [u8; 32],
}

impl Verifier {
    /// Parses `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        use NoteError::MalformedVerifierKey as Bad;
        let (name, stated, key) = split_key(text).ok_or(Bad("expected <name>+<key ID>+<key>"))?;
        check_name(name)?;
        let stated = parse_key_id(stated).ok_or(Bad("key ID must be 8 hex digits"))?;
        let key = B64
            .decode(key)
            .map_err(|_| Bad("key is not valid base64"))?;
        let public_key = ed25519_key(&key)
            .map_err(|e| e.unwrap_or(Bad("key is empty")))?
            .try_into()
            .map_err(|_| Bad("Ed25519 public key must be 32 bytes"))?;
        check_key_id(name, stated, key_id(name, &key))?;
        Ok(Self {
            name: name.to_owned(),
            key_id: stated,
            public_key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// The note's text, if this key signed it; see [`verify_note`].
    pub fn verify_note<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        verify_note(note, std::slice::from_ref(self))
    }

    fn verifies(&self, text: &str, signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(text.as_bytes(), signature)
            .is_ok()
    }
}

impl FromStr for Verifier {
    type Err = NoteError;
    fn from_str(s: &str) -> Result<Self, NoteError> {
        Self::parse(s)
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = typed_key(&self.public_key);
        write!(f, "{}+{}+{}", self.name, hex(&self.key_id), B64.encode(key))
    }
}

/// The text of a signed note without checking its signatures (for notes the
/// log itself stored); `None` if it has no signature block. Splits where
/// [`verify_note`] does.
pub(crate) fn unverified_text(note: &str) -> Option<&str> {
    note.rfind("\n\n").map(|split| &note[..=split])
}

/// Opens a signed note and returns its text (including the final newline).
///
/// Signatures by keys not in `verifiers` are ignored, as the spec requires, so
/// witnesses can cosign; but a signature claiming a known key that does not
/// verify rejects the whole note, and so does a note no known key signed.
pub fn verify_note<'a>(note: &'a str, verifiers: &[Verifier]) -> Result<&'a str, NoteError> {
    check_text(note)?;
    let split = note.rfind("\n\n").ok_or(NoteError::NoSignatureBlock)?;
    let (text, sigs) = (&note[..=split], &note[split + 2..]);
    let sigs = sigs
        .strip_suffix('\n')
        .filter(|s| !s.is_empty())
        .ok_or(NoteError::SignatureBlockNotTerminated)?;
    let mut verified = false;
    for (n, line) in sigs.split('\n').enumerate() {
        if n == MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures);
        }
        let (name, id, signature) =
            parse_signature_line(line).map_err(|reason| NoteError::MalformedSignature {
                line: n + 1,
                reason,
            })?;
        let mut known = verifiers
            .iter()
            .filter(|v| v.name == name && v.key_id == id)
            .peekable();
        if known.peek().is_none() {
            continue;
        }
        // Several configured keys may share a name and ID; any one suffices.
        if !known.any(|v| v.verifies(text, &signature[4..])) {
            return Err(NoteError::InvalidSignature {
                name: name.to_owned(),
                key_id: hex(&id),
            });
        }
        verified = true;
    }
    match verified {
        true => Ok(text),
        false => Err(NoteError::NoKnownSignature),
    }
}

/// `(key name, key ID, key ID ‖ signature)` of `— <name> <base64>`.
fn parse_signature_line(line: &str) -> Result<(&str, [u8; 4], Vec<u8>), &'static str> {
    let rest = line
        .strip_prefix(SIG_PREFIX)
        .ok_or("must start with an em dash (U+2014) and a space")?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or("needs a space between key name and signature")?;
    if check_name(name).is_err() {
        return Err("key name is empty or contains '+' or spaces");
    }
    let blob = B64
        .decode(b64)
        .map_err(|_| "signature is not valid base64")?;
    if blob.len() < 5 {
        return Err("signature is shorter than a key ID and one byte");
    }
    Ok((name, [blob[0], blob[1], blob[2], blob[3]], blob))
}

/// The key bytes after an Ed25519 type byte; `Err(None)` if there is no byte.
fn ed25519_key(typed: &[u8]) -> Result<&[u8], Option<NoteError>> {
    match typed.split_first() {
        Some((&ALG_ED25519, key)) => Ok(key),
        Some((&alg, _)) => Err(Some(NoteError::UnsupportedAlgorithm(alg))),
        None => Err(None),
    }
}

fn typed_key(public_key: &[u8]) -> Vec<u8> {
    [&[ALG_ED25519][..], public_key].concat()
}

/// SHA-256(name ‖ 0x0A ‖ type byte ‖ public key)[:4].
fn key_id(name: &str, typed_key: &[u8]) -> [u8; 4] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(typed_key);
    let mut id = [0u8; 4];
    id.copy_from_slice(&ctx.finish().as_ref()[..4]);
    id
}

fn check_key_id(name: &str, stated: [u8; 4], computed: [u8; 4]) -> Result<(), NoteError> {
    if stated != computed {
        return Err(NoteError::KeyIdMismatch {
            name: name.to_owned(),
            stated: hex(&stated),
            computed: hex(&computed),
        });
    }
    Ok(())
}

/// Splits `<name>+<id>+<key>`; only the key (base64) may contain '+'.
fn split_key(text: &str) -> Option<(&str, &str, &str)> {
    let (name, rest) = text.split_once('+')?;
    let (id, key) = rest.split_once('+')?;
    Some((name, id, key))
}

fn parse_key_id(hex: &str) -> Option<[u8; 4]> {
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().map(u32::to_be_bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_name(name: &str) -> Result<(), NoteError> {
    let bad = |c: char| c == '+' || c.is_whitespace() || c.is_control();
    if name.is_empty() || name.contains(bad) {
        return Err(NoteError::InvalidKeyName(name.to_owned()));
    }
    Ok(())
}

fn is_control(c: char) -> bool {
    c < ' ' && c != '\n'
}

fn check_text(text: &str) -> Result<(), NoteError> {
    match text.char_indices().find(|&(_, c)| is_control(c)) {
        Some((offset, c)) => Err(NoteError::ControlCharacter {
            offset,
            code: u32::from(c),
        }),
        None => Ok(()),
    }
}

fn is_text_line(line: &str) -> bool {
    !line.is_empty() && !line.contains(|c: char| c < ' ')
}

/// ASCII decimal without sign or leading zeros, as both checkpoints and
/// receipts require (`u64::from_str` would accept `+7` and `007`).
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

pub(crate) fn decode_hash(b64: &str) -> Option<Hash> {
    B64.decode(b64).ok()?.try_into().ok()
}

// === proof texts ===
//
// The two proof files of a period export (docs/LEDGER.md, "Exports"). Both
// are plain lines of base64 hashes under a versioned header, so a verifier
// needs nothing but base64 and SHA-256.

const CONSISTENCY_HEADER: &str = "crossflow-consistency@v1";
const MULTIPROOF_HEADER: &str = "crossflow-multiproof@v1";

/// A proof text that does not parse: 1-based line and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ProofTextError {
    pub line: usize,
    pub reason: String,
}

fn text_error(line: usize, reason: impl Into<String>) -> ProofTextError {
    ProofTextError {
        line,
        reason: reason.into(),
    }
}

/// `consistency.txt`: the RFC 9162 consistency proof from the previous
/// anchor (`old`) to this one (`new`), with the previous anchor's signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyText {
    pub old: u64,
    pub new: u64,
    pub proof: Vec<Hash>,
    /// The previous anchor's signed checkpoint note; `None` when `old` is 0.
    pub old_note: Option<String>,
}

/// Line number of the first proof hash in `consistency.txt`.
pub const CONSISTENCY_FIRST_HASH_LINE: usize = 4;

impl ConsistencyText {
    pub fn to_text(&self) -> String {
        let mut out = format!("{CONSISTENCY_HEADER}\nold {}\nnew {}\n", self.old, self.new);
        if let Some(note) = &self.old_note {
            for h in &self.proof {
                out.push_str(&B64.encode(h));
                out.push('\n');
            }
            out.push('\n');
            out.push_str(note);
        }
        out
    }

    pub fn parse(text: &str) -> Result<Self, ProofTextError> {
        let (old, new, rest) = header_sizes(text, CONSISTENCY_HEADER, ["old", "new"])?;
        if old == 0 {
            if !rest.is_empty() {
                return Err(text_error(
                    4,
                    "nothing may follow the new line when old is 0",
                ));
            }
            return Ok(Self {
                old,
                new,
                proof: Vec::new(),
                old_note: None,
            });
        }
        let mut proof = Vec::new();
        let mut line = CONSISTENCY_FIRST_HASH_LINE;
        let mut rest = rest;
        loop {
            let Some((l, tail)) = rest.split_once('\n') else {
                return Err(text_error(
                    line,
                    "missing the blank line before the previous anchor's note",
                ));
            };
            rest = tail;
            if l.is_empty() {
                break;
            }
            proof.push(decode_hash(l).ok_or_else(|| {
                text_error(line, "a proof line must be the base64 of a 32-byte hash")
            })?);
            line += 1;
        }
        if rest.is_empty() {
            return Err(text_error(
                line + 1,
                "the previous anchor's note is missing",
            ));
        }
        Ok(Self {
            old,
            new,
            proof,
            old_note: Some(rest.to_owned()),
        })
    }
}

/// `proof.txt`: one multi-proof (merkle::multiproof) of every exported leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiProofText {
    pub size: u64,
    pub proof: Vec<Hash>,
}

impl MultiProofText {
    pub fn to_text(&self) -> String {
        let mut out = format!("{MULTIPROOF_HEADER}\nsize {}\n", self.size);
        for h in &self.proof {
            out.push_str(&B64.encode(h));
            out.push('\n');
        }
        out
    }

    pub fn parse(text: &str) -> Result<Self, ProofTextError> {
        let (size, _, rest) = header_sizes(text, MULTIPROOF_HEADER, ["size", ""])?;
        let mut proof = Vec::new();
        for (n, l) in rest.split_terminator('\n').enumerate() {
            proof.push(decode_hash(l).ok_or_else(|| {
                text_error(n + 3, "a proof line must be the base64 of a 32-byte hash")
            })?);
        }
        if !rest.is_empty() && !rest.ends_with('\n') {
            return Err(text_error(
                proof.len() + 2,
                "the last line must end with a newline",
            ));
        }
        Ok(Self { size, proof })
    }
}

/// Parses `header\n<k0> N\n[<k1> M\n]` and returns the sizes and the text
/// after them (`k1` empty: only one size line).
fn header_sizes<'a>(
    text: &'a str,
    header: &str,
    keys: [&str; 2],
) -> Result<(u64, u64, &'a str), ProofTextError> {
    let mut rest = text;
    let mut take = |n: usize| -> Result<&'a str, ProofTextError> {
        let (l, tail) = rest
            .split_once('\n')
            .ok_or_else(|| text_error(n, "line is missing or does not end with a newline"))?;
        rest = tail;
        Ok(l)
    };
    if take(1)? != header {
        return Err(text_error(1, format!("first line must be {header}")));
    }
    let size = |n: usize, l: &str, key: &str| {
        l.strip_prefix(key)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(parse_decimal)
            .ok_or_else(|| text_error(n, format!("expected \"{key} <decimal size>\"")))
    };
    let first = size(2, take(2)?, keys[0])?;
    let second = if keys[1].is_empty() {
        0
    } else {
        size(3, take(3)?, keys[1])?
    };
    Ok((first, second, rest))
}

#[cfg(test)]
mod tests;
