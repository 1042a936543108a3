//! Shared request field checks. A handler runs every check on its request and
//! then calls [`Checks::finish`], so one answer lists every bad field.

use crate::{Problem, Violation};

/// Longest subject (a partner's own user id), in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;
/// Longest request id, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Collects violations.
#[derive(Debug, Default)]
pub struct Checks(Vec<Violation>);

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    pub fn violation(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(Violation {
            field: field.to_owned(),
            description: description.into(),
        });
    }

    /// A partner's own user id: 1-256 bytes of UTF-8 without control
    /// characters. Never echoed back: it may be personal data.
    pub fn subject(&mut self, field: &str, v: &str) {
        if v.is_empty() {
            self.violation(field, "must not be empty");
        } else if v.len() > MAX_SUBJECT_BYTES {
            self.violation(
                field,
                format!("must be at most {MAX_SUBJECT_BYTES} bytes, got {}", v.len()),
            );
        } else if v.chars().any(char::is_control) {
            self.violation(field, "must not contain control characters");
        } else if v.trim().is_empty() {
            self.violation(field, "must not be only white space");
        }
    }

    /// A partner or agreement id (see `crossflow_settings::is_valid_slug`).
    pub fn slug(&mut self, field: &str, v: &str) {
        let b = v.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_lowercase()
            && b[b.len() - 1] != b'-'
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if v.is_empty() {
            self.violation(field, "must not be empty");
        } else if !ok {
            self.violation(
                field,
                format!(
                    "must be a partner id (1-63 of a-z, 0-9, '-'), got {:?}",
                    truncate(v)
                ),
            );
        }
    }

    /// Printable ASCII text of 1..=max bytes.
    pub fn printable(&mut self, field: &str, v: &str, max: usize) {
        if v.is_empty() {
            self.violation(field, "must not be empty");
        } else if v.len() > max {
            self.violation(
                field,
                format!("must be at most {max} bytes, got {}", v.len()),
            );
        } else if !v.bytes().all(|c| (0x20..0x7f).contains(&c)) {
            self.violation(field, "must be printable ASCII");
        }
    }

    /// An optional idempotency key: empty, or 1-128 of `[A-Za-z0-9._:-]`.
    pub fn request_id(&mut self, field: &str, v: &str) {
        if v.is_empty() {
            return;
        }
        if v.len() > MAX_REQUEST_ID_BYTES {
            self.violation(
                field,
                format!(
                    "must be at most {MAX_REQUEST_ID_BYTES} bytes, got {}",
                    v.len()
                ),
            );
        } else if !v
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
        {
            self.violation(field, "must use only A-Z, a-z, 0-9, '.', '_', ':' and '-'");
        }
    }

    /// A referral id: 32 lowercase hex characters.
    pub fn referral_id(&mut self, field: &str, v: &str) -> Option<[u8; 16]> {
        let parsed = parse_hex16(v);
        if parsed.is_none() {
            if v.is_empty() {
                self.violation(field, "must not be empty");
            } else {
                self.violation(
                    field,
                    format!("must be 32 lowercase hex characters, got {:?}", truncate(v)),
                );
            }
        }
        parsed
    }

    /// Like [`Checks::referral_id`], but empty means absent.
    pub fn optional_referral_id(&mut self, field: &str, v: &str) -> Option<[u8; 16]> {
        if v.is_empty() {
            None
        } else {
            self.referral_id(field, v)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` if nothing was wrong, else `INVALID_ARGUMENT` listing every field.
    pub fn finish(self) -> Result<(), Problem> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Problem::invalid(self.0))
        }
    }
}

fn parse_hex16(v: &str) -> Option<[u8; 16]> {
    let b = v.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Echoes at most 64 characters of a bad value back.
fn truncate(v: &str) -> String {
    if v.chars().count() <= 64 {
        v.to_owned()
    } else {
        let head: String = v.chars().take(64).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_violation() {
        let mut c = Checks::new();
        c.subject("subject", "");
        c.slug("to_partner", "Bad_Slug");
        c.request_id("request_id", "no spaces");
        c.referral_id("referral_id", "XYZ");
        c.printable("target", "ok", 10);
        let p = c.finish().unwrap_err();
        let fields: Vec<_> = p.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["subject", "to_partner", "request_id", "referral_id"]
        );
        assert_eq!(p.reason, "INVALID_FIELD");
    }

    #[test]
    fn subject_rules() {
        for bad in ["", " ", "a\nb", &"x".repeat(257)] {
            let mut c = Checks::new();
            c.subject("s", bad);
            assert!(!c.is_empty(), "{bad:?} accepted");
        }
        let mut c = Checks::new();
        c.subject("s", "用户-42");
        assert!(c.is_empty());
    }

    #[test]
    fn referral_id_parses_lowercase_hex_only() {
        let mut c = Checks::new();
        assert_eq!(
            c.referral_id("r", "000102030405060708090a0b0c0d0e0f"),
            Some([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
        );
        assert_eq!(c.referral_id("r", "000102030405060708090A0B0C0D0E0F"), None);
        assert_eq!(c.referral_id("r", "0001"), None);
        assert_eq!(c.0.len(), 2);
    }
}
