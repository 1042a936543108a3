//! The IAB Tech Lab Audience Taxonomy 1.1 (CC BY 3.0, IAB Tech Lab), shipped
//! as `data/iab-audience-taxonomy-1.1.tsv` and parsed once, at first use.

use std::{collections::HashMap, sync::LazyLock};

const IAB_AUDIENCE_1_1_TSV: &str = include_str!("../data/iab-audience-taxonomy-1.1.tsv");

/// Deepest chain of parents in the taxonomy is 6 tiers; anything longer is a
/// cycle.
const MAX_DEPTH: usize = 16;

/// A taxonomy: ids and their parents.
#[derive(Debug)]
pub struct Taxonomy {
    parents: HashMap<u32, Option<u32>>,
    names: HashMap<u32, String>,
}

static IAB_AUDIENCE: LazyLock<Taxonomy> = LazyLock::new(|| Taxonomy::parse(IAB_AUDIENCE_1_1_TSV));

/// The IAB Audience Taxonomy 1.1.
pub fn iab_audience() -> &'static Taxonomy {
    &IAB_AUDIENCE
}

// === impl Taxonomy ===

impl Taxonomy {
    /// Parses the IAB TSV layout: an empty first column, then `Unique ID`,
    /// `Parent ID`, `Condensed Name`. The header and lines without a numeric
    /// id are skipped (a test pins the count).
    pub fn parse(tsv: &str) -> Taxonomy {
        let mut parents = HashMap::new();
        let mut names = HashMap::new();
        for line in tsv.lines() {
            let mut cols = line.trim_end_matches('\r').split('\t').skip(1);
            let (Some(id), Some(parent), name) = (cols.next(), cols.next(), cols.next()) else {
                continue;
            };
            let Ok(id) = id.trim().parse::<u32>() else {
                continue;
            };
            parents.insert(id, parent.trim().parse::<u32>().ok());
            let name = name.unwrap_or_default().trim().trim_end_matches('|').trim();
            names.insert(id, name.to_owned());
        }
        Taxonomy { parents, names }
    }

    pub fn len(&self) -> usize {
        self.parents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    /// Whether `id` (decimal, as in a tag value) is a node.
    pub fn contains(&self, id: &str) -> bool {
        parse_id(id).is_some_and(|id| self.parents.contains_key(&id))
    }

    /// The condensed name, e.g. `Interest | Home & Garden`.
    pub fn name(&self, id: &str) -> Option<&str> {
        self.names.get(&parse_id(id)?).map(String::as_str)
    }

    /// `id` and its ancestors, nearest first.
    pub fn lineage(&self, id: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = parse_id(id).filter(|i| self.parents.contains_key(i));
        while let Some(i) = cur {
            if out.len() >= MAX_DEPTH {
                break;
            }
            out.push(i);
            cur = self.parents.get(&i).copied().flatten();
        }
        out
    }
}

fn parse_id(id: &str) -> Option<u32> {
    if id.starts_with('0') || id.starts_with('+') {
        return None;
    }
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ships_all_1558_nodes() {
        let t = iab_audience();
        assert_eq!(t.len(), 1558);
        assert!(t.contains("1") && t.contains("354") && t.contains("1679"));
        assert!(!t.contains("0") && !t.contains("1680") && !t.contains("0354"));
        assert!(!t.contains("x") && !t.contains(""));
        assert_eq!(t.name("457"), Some("Interest | Home & Garden"));
    }

    #[test]
    fn lineage_walks_to_the_root() {
        let t = iab_audience();
        // Parenting Babies and Toddlers < Parenting < Family and
        // Relationships < Interest.
        assert_eq!(t.lineage("354"), [354, 350, 348, 206]);
        assert_eq!(t.lineage("1"), [1]);
        assert!(t.lineage("99999").is_empty());
    }
}
