//! The disclosure policy: what a reader may see of a referred user's tags.
//!
//! For a landing whose chain is `P0 (origin), P1, …, Pn-1` and whose
//! destination (the reader) is `Pn`:
//!
//! 1. the flow `origin -> reader` must exist; its `tag_scopes` are the most
//!    the reader may see (no flow: nothing at all, [`Grant`] is `None`);
//! 2. for an onward hop, those are intersected with the `tag_scopes` of every
//!    hop `Pi -> Pi+1` of the chain (a hop whose flow is gone allows none);
//! 3. sensitive namespaces are removed, and sensitive values (with their
//!    taxonomy subtrees) are withheld tag by tag ([`is_sensitive`]).
//!
//! Evaluated per read against the running settings.

use std::collections::BTreeSet;

use crossflow_settings::{Settings, TagSettings, TagValues};
use crossflow_store::Landing;

use crate::taxonomy;

/// What a reader may read about one landing's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The agreement between origin and reader that allows the disclosure.
    pub agreement_id: String,
    /// Namespaces the reader may see, sorted.
    pub scopes: BTreeSet<String>,
}

/// The grant for `landing`'s reader, or `None` where the origin has no flow
/// to the reader.
pub fn grant(settings: &Settings, landing: &Landing) -> Option<Grant> {
    let reader = landing.to.as_str();
    let direct = settings.flow(&landing.origin, reader)?;
    let mut scopes: BTreeSet<String> = direct.flow.tag_scopes.iter().cloned().collect();
    let path: Vec<&str> = landing
        .chain
        .iter()
        .map(String::as_str)
        .chain([reader])
        .collect();
    for hop in path.windows(2) {
        match settings.flow(hop[0], hop[1]) {
            Some(f) => scopes.retain(|s| f.flow.tag_scopes.contains(s)),
            None => scopes.clear(),
        }
    }
    let tags = &settings.tags;
    scopes.retain(|s| tags.namespaces.contains_key(s) && !tags.sensitive_namespaces.contains(s));
    Some(Grant {
        agreement_id: direct.agreement.id.clone(),
        scopes,
    })
}

/// Whether a tag may never be disclosed: its namespace or value is marked
/// sensitive, or, in a taxonomy namespace, any ancestor of the value is.
pub fn is_sensitive(tags: &TagSettings, namespace: &str, value: &str) -> bool {
    if tags.sensitive_namespaces.contains(namespace) {
        return true;
    }
    if tags.sensitive_values.is_empty() {
        return false;
    }
    match tags.namespaces.get(namespace) {
        Some(TagValues::Taxonomy(_)) => taxonomy::iab_audience().lineage(value).iter().any(|id| {
            tags.sensitive_values
                .contains(&(namespace.to_owned(), id.to_string()))
        }),
        _ => tags
            .sensitive_values
            .contains(&(namespace.to_owned(), value.to_owned())),
    }
}

/// Configuration problems only the tags service can see: sensitive entries
/// naming ids that are not in the taxonomy. Each names its key.
pub fn check_settings(settings: &Settings) -> Vec<String> {
    let tags = &settings.tags;
    let mut out = Vec::new();
    for (ns, value) in &tags.sensitive_values {
        if matches!(tags.namespaces.get(ns), Some(TagValues::Taxonomy(_)))
            && !taxonomy::iab_audience().contains(value)
        {
            out.push(format!(
                "tags.sensitive names an id that is not in the IAB Audience Taxonomy 1.1, got \"{ns}/{value}\""
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
