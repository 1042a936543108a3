//! `crossflow audit disclosures`: every tag disclosure about one owner's
//! users, as RFC 4180 CSV, so its data protection officer can answer "who
//! did we share this user's tags with".

use std::{fmt::Write as _, path::Path};

use crossflow_identity::{KeyRing, ReferralId};
use crossflow_settings::Settings;
use crossflow_store::tags::{Disclosure, DisclosureQuery, read_disclosures};

/// The CSV header; one row per disclosure follows.
pub const HEADER: &str =
    "disclosed_at,owner,reader,uid,agreement_id,referral_id,namespaces,tag_count,pseudonym_epoch";

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The owning platform (whose users' tags were disclosed).
    pub partner: String,
    /// RFC 3339 time, or a date (midnight in the gateway's time zone).
    pub since: String,
    /// Only disclosures to this reader.
    pub reader: Option<String>,
    /// Only disclosures about this user of `partner` (its own user id); it
    /// is turned into the uid with the gateway's keys and never printed.
    pub subject: Option<String>,
}

/// Reads the config, the store (read only, works while the gateway runs)
/// and, for `subject`, the key directory; returns the CSV.
pub fn run(config: &Path, req: &Request) -> Result<String, String> {
    let settings = Settings::load(config).map_err(|e| e.to_string())?;
    if settings.partner(&req.partner).is_none() {
        return Err(format!(
            "--partner {:?} is not a partner in {}",
            req.partner,
            config.display()
        ));
    }
    let since_ms = parse_since(&req.since, &settings.gateway.timezone)?;
    let uid = match &req.subject {
        None => None,
        Some(s) => {
            let keys = KeyRing::load(&settings.gateway.key_dir).map_err(|e| e.to_string())?;
            Some(keys.uid(&req.partner, s).0)
        }
    };
    let q = DisclosureQuery {
        owner: req.partner.clone(),
        reader: req.reader.clone(),
        uid,
        since_ms,
    };
    let rows = read_disclosures(&settings.gateway.data_dir, &q).map_err(|e| e.to_string())?;
    Ok(csv(&rows))
}

/// `T` as RFC 3339 (`2026-11-01T00:00:00+08:00`), or a date (`2026-11-01`)
/// meaning its midnight in `timezone`; milliseconds since the Unix epoch.
pub fn parse_since(since: &str, timezone: &str) -> Result<i64, String> {
    if let Ok(t) = since.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let date: jiff::civil::Date = since.parse().map_err(|_| {
        format!("--since must be an RFC 3339 time like 2026-11-01T00:00:00+08:00 or a date like 2026-11-01, got {since:?}")
    })?;
    let zoned = date
        .in_tz(timezone)
        .map_err(|e| format!("--since {since:?} in {timezone}: {e}"))?;
    Ok(zoned.timestamp().as_millisecond())
}

/// RFC 4180: CRLF line ends, a header, fields quoted when they hold a comma,
/// quote, CR or LF (quotes doubled).
pub fn csv(rows: &[Disclosure]) -> String {
    let mut out = String::with_capacity(64 * (rows.len() + 1));
    out.push_str(HEADER);
    out.push_str("\r\n");
    for d in rows {
        let at = jiff::Timestamp::from_millisecond(d.disclosed_at_ms)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| d.disclosed_at_ms.to_string());
        let fields = [
            at,
            d.owner.clone(),
            d.reader.clone(),
            hex::encode(d.uid),
            d.agreement_id.clone(),
            ReferralId(d.referral_id).to_string(),
            d.namespaces.join(" "),
            d.tag_count.to_string(),
            d.pseudonym_epoch.to_string(),
        ];
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            field(&mut out, f);
        }
        out.push_str("\r\n");
    }
    out
}

fn field(out: &mut String, f: &str) {
    if f.contains([',', '"', '\r', '\n']) {
        let _ = write!(out, "\"{}\"", f.replace('"', "\"\""));
    } else {
        out.push_str(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_is_rfc_4180() {
        let d = Disclosure {
            disclosed_at_ms: 1_763_777_734_123,
            owner: "a".into(),
            reader: "b".into(),
            uid: [0xab; 32],
            agreement_id: "a,b\"x".into(),
            referral_id: [1; 16],
            namespaces: vec!["iab-audience".into(), "life-stage".into()],
            tag_count: 3,
            pseudonym_epoch: 2,
        };
        let text = csv(&[d]);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.len(), 3, "{text:?}");
        assert_eq!(lines[0], HEADER);
        assert_eq!(
            lines[1],
            format!(
                "2025-11-22T02:15:34.123Z,a,b,{},\"a,b\"\"x\",{},iab-audience life-stage,3,2",
                "ab".repeat(32),
                "01".repeat(16)
            )
        );
        assert_eq!(lines[2], "");
    }

    #[test]
    fn since_takes_a_time_or_a_local_date() {
        assert_eq!(parse_since("1970-01-01T00:00:01Z", "UTC"), Ok(1000));
        // Midnight in Shanghai is 16:00 UTC the day before.
        assert_eq!(
            parse_since("1970-01-02", "Asia/Shanghai"),
            Ok((24 - 8) * 3_600_000)
        );
        assert!(
            parse_since("yesterday", "UTC")
                .unwrap_err()
                .contains("--since")
        );
    }
}
