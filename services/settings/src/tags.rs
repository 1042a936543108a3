//! The validated `[tags]` table: which namespaces exist, which values each
//! takes, how long tags live, and what is never disclosed.
//!
//! Whether an `iab-audience` id exists in the taxonomy is checked by the
//! tags service, which ships the taxonomy; here a taxonomy value only has to
//! look like an id.

use std::collections::{BTreeMap, BTreeSet};

use crate::{ConfigError, raw};

/// The taxonomy a `taxonomy = "..."` namespace may name.
pub const IAB_AUDIENCE_1_1: &str = "iab-audience-1.1";
/// Longest `max_ttl_secs`: one year.
const MAX_TTL_LIMIT_SECS: u64 = 365 * 86_400;
/// Longest `pseudonym_overlap_days`: ten years.
const MAX_OVERLAP_DAYS: u32 = 3650;
/// Longest tag value, in bytes.
pub const MAX_VALUE_BYTES: usize = 128;

/// `[tags]`, validated.
#[derive(Debug, Clone)]
pub struct TagSettings {
    /// Longest TTL of a published tag, in seconds.
    pub max_ttl_secs: u64,
    /// How long, in days, pseudonyms of an epoch still resolve after the
    /// epoch stopped being current.
    pub pseudonym_overlap_days: u32,
    /// Allowed namespaces and their values.
    pub namespaces: BTreeMap<String, TagValues>,
    /// Namespaces never disclosed.
    pub sensitive_namespaces: BTreeSet<String>,
    /// `(namespace, value)` never disclosed; in a taxonomy namespace the
    /// value's whole subtree.
    pub sensitive_values: BTreeSet<(String, String)>,
}

/// The values one namespace allows.
#[derive(Debug, Clone)]
pub enum TagValues {
    Listed(BTreeSet<String>),
    /// Anchored: the whole value must match.
    Pattern(regex::Regex),
    /// Ids of a built-in taxonomy (its name, e.g. `iab-audience-1.1`).
    Taxonomy(String),
}

// === impl TagSettings ===

impl TagSettings {
    /// Whether `value` is shaped like an allowed value of the namespace.
    /// Taxonomy values are only checked to be decimal ids here.
    pub fn allows(&self, namespace: &str, value: &str) -> Option<bool> {
        self.namespaces.get(namespace).map(|v| v.allows(value))
    }
}

impl Default for TagSettings {
    fn default() -> TagSettings {
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            "iab-audience".to_owned(),
            TagValues::Taxonomy(IAB_AUDIENCE_1_1.to_owned()),
        );
        TagSettings {
            max_ttl_secs: 30 * 86_400,
            pseudonym_overlap_days: 90,
            namespaces,
            sensitive_namespaces: BTreeSet::new(),
            sensitive_values: BTreeSet::new(),
        }
    }
}

// === impl TagValues ===

impl TagValues {
    pub fn allows(&self, value: &str) -> bool {
        match self {
            TagValues::Listed(set) => set.contains(value),
            TagValues::Pattern(re) => valid_value(value) && re.is_match(value),
            TagValues::Taxonomy(_) => is_decimal_id(value),
        }
    }
}

/// A decimal id without leading zeros, as taxonomy ids are written.
pub fn is_decimal_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0')
}

/// A tag value: 1-128 bytes of printable ASCII.
pub fn valid_value(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_VALUE_BYTES && v.bytes().all(|c| (0x20..0x7f).contains(&c))
}

/// A namespace name: 1-64 of a-z, 0-9 and '-', starting with a letter.
pub fn valid_namespace(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn push(errors: &mut Vec<ConfigError>, key: impl Into<String>, message: impl Into<String>) {
    errors.push(ConfigError {
        key: key.into(),
        message: message.into(),
    });
}

/// Validates `[tags]` and that every flow's `tag_scopes` names a declared
/// namespace. Errors are appended; the result is meaningful only without
/// errors.
pub(crate) fn validate(raw: &raw::Config, errors: &mut Vec<ConfigError>) -> TagSettings {
    let t = &raw.tags;
    if t.max_ttl_secs == 0 || t.max_ttl_secs > MAX_TTL_LIMIT_SECS {
        push(
            errors,
            "tags.max_ttl_secs",
            format!(
                "must be 1-{MAX_TTL_LIMIT_SECS} seconds, got {}",
                t.max_ttl_secs
            ),
        );
    }
    if t.pseudonym_overlap_days > MAX_OVERLAP_DAYS {
        push(
            errors,
            "tags.pseudonym_overlap_days",
            format!(
                "must be 0-{MAX_OVERLAP_DAYS} days, got {}",
                t.pseudonym_overlap_days
            ),
        );
    }
    let mut namespaces = BTreeMap::new();
    for (i, n) in t.namespaces.iter().enumerate() {
        let key = format!("tags.namespaces[{i}]");
        if !valid_namespace(&n.name) {
            push(
                errors,
                format!("{key}.name"),
                format!(
                    "must be 1-64 lowercase letters, digits or '-', starting with a letter, got {:?}",
                    n.name
                ),
            );
        }
        let kinds = usize::from(!n.values.is_empty())
            + usize::from(n.pattern.is_some())
            + usize::from(n.taxonomy.is_some());
        if kinds != 1 {
            push(
                errors,
                key.clone(),
                format!("must set exactly one of values, pattern or taxonomy, got {kinds}"),
            );
        }
        // After an error the namespace still counts as declared, so that
        // what names it is not reported again.
        let values = if kinds != 1 {
            TagValues::Listed(BTreeSet::new())
        } else if let Some(p) = &n.pattern {
            match regex::Regex::new(&format!("^(?:{p})$")) {
                Ok(re) => TagValues::Pattern(re),
                Err(e) => {
                    let first = e.to_string().lines().last().unwrap_or_default().to_owned();
                    push(
                        errors,
                        format!("{key}.pattern"),
                        format!("is not a valid regular expression ({first}), got {p:?}"),
                    );
                    TagValues::Listed(BTreeSet::new())
                }
            }
        } else if let Some(tax) = &n.taxonomy {
            if tax != IAB_AUDIENCE_1_1 {
                push(
                    errors,
                    format!("{key}.taxonomy"),
                    format!("must be {IAB_AUDIENCE_1_1:?}, got {tax:?}"),
                );
            }
            TagValues::Taxonomy(tax.clone())
        } else {
            let mut set = BTreeSet::new();
            for (j, v) in n.values.iter().enumerate() {
                if !valid_value(v) {
                    push(
                        errors,
                        format!("{key}.values[{j}]"),
                        format!(
                            "must be 1-{MAX_VALUE_BYTES} printable ASCII characters, got {v:?}"
                        ),
                    );
                }
                if !set.insert(v.clone()) {
                    push(
                        errors,
                        format!("{key}.values[{j}]"),
                        format!("repeats {v:?}"),
                    );
                }
            }
            TagValues::Listed(set)
        };
        if namespaces.insert(n.name.clone(), values).is_some() {
            push(
                errors,
                format!("{key}.name"),
                format!("duplicates an earlier namespace {:?}", n.name),
            );
        }
    }

    let mut sensitive_namespaces = BTreeSet::new();
    let mut sensitive_values = BTreeSet::new();
    for (i, s) in t.sensitive.iter().enumerate() {
        let key = format!("tags.sensitive[{i}]");
        let (ns, value) = match s.split_once('/') {
            Some((ns, v)) => (ns, Some(v)),
            None => (s.as_str(), None),
        };
        let Some(values) = namespaces.get(ns) else {
            push(
                errors,
                key,
                format!("names a namespace not declared in tags.namespaces, got {s:?}"),
            );
            continue;
        };
        match value {
            None => {
                sensitive_namespaces.insert(ns.to_owned());
            }
            Some(v) if values.allows(v) => {
                sensitive_values.insert((ns.to_owned(), v.to_owned()));
            }
            Some(_) => push(
                errors,
                key,
                format!("names a value namespace {ns:?} does not allow, got {s:?}"),
            ),
        }
    }

    for (i, a) in raw.agreements.iter().enumerate() {
        for (j, f) in a.flows.iter().enumerate() {
            for (k, scope) in f.tag_scopes.iter().enumerate() {
                // A malformed scope already has its own error.
                let well_formed = valid_namespace(scope.split('/').next().unwrap_or_default());
                if well_formed && !namespaces.contains_key(scope) {
                    push(
                        errors,
                        format!("agreements[{i}].flows[{j}].tag_scopes[{k}]"),
                        format!("names a namespace not declared in tags.namespaces, got {scope:?}"),
                    );
                }
            }
        }
    }

    TagSettings {
        max_ttl_secs: t.max_ttl_secs,
        pseudonym_overlap_days: t.pseudonym_overlap_days,
        namespaces,
        sensitive_namespaces,
        sensitive_values,
    }
}

#[cfg(test)]
mod tests;
