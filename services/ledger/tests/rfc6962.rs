//! Every public RFC 6962 vector in testdata/rfc6962 (from transparency-dev/merkle).
// Helpers here run only under test, but clippy's allow-unwrap-in-tests covers
// only #[test] functions, not the free functions they call.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::HashMap;

use crossflow_ledger::merkle::{
    Frontier, Hash, NodeId, consistency_proof, inclusion_proof, leaf_hash, root,
    verify_consistency, verify_inclusion,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Inclusion {
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    want_err: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Consistency {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    want_err: bool,
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

fn vectors<T: for<'de> Deserialize<'de>>(kind: &str) -> Vec<(PathBuf, T)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/rfc6962")
        .join(kind);
    let mut files = Vec::new();
    json_files(&dir, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let v = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
            (f, v)
        })
        .collect()
}

fn bytes(b64: &str) -> Vec<u8> {
    B64.decode(b64).unwrap()
}

/// Our proofs are typed `[Hash]`; a vector element of another length cannot be
/// represented (a receipt parser rejects it), so such a vector must expect an error.
fn proof(p: &Option<Vec<String>>) -> Option<Vec<Hash>> {
    let p = p.as_deref().unwrap_or_default();
    p.iter().map(|h| bytes(h).try_into().ok()).collect()
}

#[test]
fn all_rfc6962_vectors() {
    let inclusion = vectors::<Inclusion>("inclusion");
    let consistency = vectors::<Consistency>("consistency");
    let mut checked = 0;
    for (file, v) in &inclusion {
        let got = match proof(&v.proof) {
            Some(p) => verify_inclusion(
                v.leaf_idx,
                v.tree_size,
                &bytes(&v.leaf_hash),
                &p,
                &bytes(&v.root),
            ),
            None => Err(crossflow_ledger::ProofError::ProofTooLong),
        };
        assert_eq!(got.is_err(), v.want_err, "{}: {got:?}", file.display());
        checked += 1;
    }
    for (file, v) in &consistency {
        let got = match proof(&v.proof) {
            Some(p) => verify_consistency(v.size1, v.size2, &p, &bytes(&v.root1), &bytes(&v.root2)),
            None => Err(crossflow_ledger::ProofError::ProofTooLong),
        };
        assert_eq!(got.is_err(), v.want_err, "{}: {got:?}", file.display());
        checked += 1;
    }
    println!(
        "checked {checked} vectors ({} inclusion, {} consistency)",
        inclusion.len(),
        consistency.len()
    );
    assert!(inclusion.len() > 40 && consistency.len() > 40);
    assert!(checked > 100, "only {checked} vectors found");
}

/// The vectors' passing cases come from the RFC 6962 reference tree; the proofs
/// we generate for it must be exactly the ones in the vectors.
#[test]
fn generated_proofs_match_vectors() {
    let leaves = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    let mut frontier = Frontier::new();
    let mut nodes: HashMap<NodeId, Hash> = HashMap::new();
    let mut ours = Vec::new();
    for hex in leaves {
        let entry: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        ours.push(leaf_hash(&entry).to_vec());
        nodes.extend(
            frontier
                .append(leaf_hash(&entry))
                .into_iter()
                .map(|(l, i, h)| ((l, i), h)),
        );
    }
    let hashes = |p: &Option<Vec<String>>| proof(p).unwrap();
    let mut compared = 0;
    for (file, v) in vectors::<Inclusion>("inclusion") {
        // Some single-leaf vectors use a leaf outside the reference tree.
        let in_tree = ours.get(v.leaf_idx as usize) == Some(&bytes(&v.leaf_hash));
        if !v.want_err && v.tree_size <= 8 && in_tree {
            let got = inclusion_proof(v.leaf_idx, v.tree_size, &nodes).unwrap();
            assert_eq!(got, hashes(&v.proof), "{}", file.display());
            assert_eq!(root(v.tree_size, &nodes).unwrap().to_vec(), bytes(&v.root));
            compared += 1;
        }
    }
    for (file, v) in vectors::<Consistency>("consistency") {
        // Equal-size vectors use made-up roots; only their empty proof is ours.
        if !v.want_err && v.size1 < v.size2 && v.size2 <= 8 {
            let got = consistency_proof(v.size1, v.size2, &nodes).unwrap();
            assert_eq!(got, hashes(&v.proof), "{}", file.display());
            assert_eq!(root(v.size1, &nodes).unwrap().to_vec(), bytes(&v.root1));
            assert_eq!(root(v.size2, &nodes).unwrap().to_vec(), bytes(&v.root2));
            compared += 1;
        }
    }
    assert!(compared >= 5, "only {compared} passing vectors compared");
}
