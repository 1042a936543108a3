use std::cell::Cell;
use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 6962 §2.1 MTH, straight from the definition.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

struct Tree {
    leaves: Vec<Hash>,
    nodes: HashMap<NodeId, Hash>,
}

fn build(n: u64) -> Tree {
    let mut frontier = Frontier::new();
    let mut tree = Tree {
        leaves: Vec::new(),
        nodes: HashMap::new(),
    };
    for i in 0..n {
        let leaf = leaf_hash(&i.to_be_bytes());
        tree.leaves.push(leaf);
        for (level, index, hash) in frontier.append(leaf) {
            assert!(tree.nodes.insert((level, index), hash).is_none());
        }
        assert_eq!(
            frontier.root(),
            mth(&tree.leaves),
            "frontier root at size {}",
            i + 1
        );
    }
    tree
}

#[test]
fn known_hashes() {
    assert_eq!(
        hex(&empty_root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    // RFC 6962 reference implementation: hash of the empty leaf.
    assert_eq!(
        hex(&leaf_hash(b"")),
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    );
    assert_eq!(Frontier::new().root(), empty_root());
}

#[test]
fn append_emits_every_complete_subtree() {
    let tree = build(64);
    // A tree of 64 leaves has 64 + 32 + ... + 1 complete subtrees.
    assert_eq!(tree.nodes.len(), 127);
    for (&(level, index), hash) in &tree.nodes {
        let start = (index << level) as usize;
        assert_eq!(*hash, mth(&tree.leaves[start..start + (1 << level)]));
    }
}

#[test]
fn frontier_round_trips_through_storage() {
    let tree = build(100);
    let mut f = Frontier::new();
    for size in 0..=100u64 {
        let loaded = Frontier::from_reader(size, &tree.nodes).unwrap();
        assert_eq!(loaded, f);
        assert_eq!(Frontier::from_hashes(size, f.hashes().to_vec()).unwrap(), f);
        assert_eq!(root(size, &tree.nodes).unwrap(), f.root());
        if size < 100 {
            f.append(tree.leaves[size as usize]);
        }
    }
    assert_eq!(
        Frontier::from_hashes(3, vec![[0; 32]]),
        Err(ProofError::NodeCount { want: 2, got: 1 })
    );
}

#[test]
fn bad_requests_and_missing_nodes_are_errors() {
    let tree = build(5);
    assert!(matches!(
        inclusion_proof(5, 5, &tree.nodes),
        Err(TreeError::Proof(ProofError::IndexOutOfRange {
            index: 5,
            size: 5
        }))
    ));
    assert!(matches!(
        consistency_proof(4, 3, &tree.nodes),
        Err(TreeError::Proof(ProofError::SizesReversed { .. }))
    ));
    assert!(matches!(
        consistency_proof(0, 3, &tree.nodes),
        Err(TreeError::Proof(ProofError::EmptyFirstTree))
    ));
    assert_eq!(
        consistency_proof(3, 3, &tree.nodes).unwrap(),
        Vec::<Hash>::new()
    );
    assert!(matches!(
        inclusion_proof(0, 6, &tree.nodes),
        Err(TreeError::Store(MissingNode((1, 2))))
    ));
    let plan = inclusion_nodes(2, 5).unwrap();
    assert_eq!(
        plan.rehash(&[]),
        Err(ProofError::NodeCount {
            want: plan.ids().len(),
            got: 0
        })
    );
}

/// Serves a made-up hash for any node, checking it is complete in `size`.
struct CountingReader {
    size: u64,
    reads: Cell<usize>,
}

impl NodeReader for CountingReader {
    type Error = MissingNode;
    fn node(&self, level: u8, index: u64) -> Result<Hash, MissingNode> {
        self.reads.set(self.reads.get() + 1);
        let end = (u128::from(index) + 1) << level;
        if end > u128::from(self.size) {
            return Err(MissingNode((level, index)));
        }
        Ok(leaf_hash(&[&[level][..], &index.to_be_bytes()].concat()))
    }
}

#[test]
fn reads_are_logarithmic_and_only_complete_subtrees() {
    for size in [
        1,
        2,
        3,
        7,
        8,
        9,
        1000,
        10_000_000,
        (1 << 40) + 12345,
        u64::MAX,
    ] {
        let reader = CountingReader {
            size,
            reads: Cell::new(0),
        };
        let log2 = 64 - (size - 1).leading_zeros() as usize;
        let bound = 2 * log2 + 1;
        let check = |what: &str, reads: usize| {
            assert!(
                reads <= bound,
                "{what} at size {size}: {reads} reads > {bound}"
            );
            reader.reads.set(0);
        };
        root(size, &reader).unwrap();
        check("root", reader.reads.get());
        Frontier::from_reader(size, &reader).unwrap();
        check("frontier", reader.reads.get());
        for index in [0, size / 3, size / 2, size - 1] {
            inclusion_proof(index, size, &reader).unwrap();
            check("inclusion", reader.reads.get());
        }
        for size1 in [1, size / 3, size / 2 + 1, size - 1, size] {
            if size1 >= 1 {
                consistency_proof(size1, size, &reader).unwrap();
                check("consistency", reader.reads.get());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Every inclusion and consistency proof within a random tree verifies,
    /// and roots agree with the RFC 6962 definition.
    #[test]
    fn all_proofs_verify(n in 1u64..=300) {
        let tree = build(n);
        for size in 1..=n {
            let r = root(size, &tree.nodes).unwrap();
            prop_assert_eq!(r, mth(&tree.leaves[..size as usize]));
            for index in 0..size {
                let proof = inclusion_proof(index, size, &tree.nodes).unwrap();
                prop_assert_eq!(
                    verify_inclusion(index, size, &tree.leaves[index as usize], &proof, &r),
                    Ok(())
                );
            }
            for size1 in 1..=size {
                let r1 = mth(&tree.leaves[..size1 as usize]);
                let proof = consistency_proof(size1, size, &tree.nodes).unwrap();
                prop_assert_eq!(verify_consistency(size1, size, &proof, &r1, &r), Ok(()));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tampered_inclusion_fails(
        n in 2u64..=300, i in any::<u64>(), pick in any::<usize>(), bit in 0usize..256,
    ) {
        let tree = build(n);
        let index = i % n;
        let r = root(n, &tree.nodes).unwrap();
        let leaf = tree.leaves[index as usize];
        let mut proof = inclusion_proof(index, n, &tree.nodes).unwrap();
        prop_assert!(verify_inclusion((index + 1) % n, n, &leaf, &proof, &r).is_err());
        if !proof.is_empty() {
            let k = pick % proof.len();
            proof[k][bit / 8] ^= 1 << (bit % 8);
            prop_assert!(verify_inclusion(index, n, &leaf, &proof, &r).is_err());
        }
    }

    #[test]
    fn tampered_consistency_fails(
        n in 2u64..=300, s in any::<u64>(), pick in any::<usize>(), bit in 0usize..256,
    ) {
        let tree = build(n);
        let size1 = 1 + s % (n - 1);
        let r1 = mth(&tree.leaves[..size1 as usize]);
        let r2 = mth(&tree.leaves);
        let mut proof = consistency_proof(size1, n, &tree.nodes).unwrap();
        prop_assert!(verify_consistency(size1, n, &proof, &r2, &r1).is_err());
        let k = pick % proof.len();
        proof[k][bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify_consistency(size1, n, &proof, &r1, &r2).is_err());
    }
}

// === multi-proofs ===

/// The spec's recursion over a naive tree: the hashes a multi-proof of
/// `chosen` must hold, straight from the definition in docs/LEDGER.md.
fn naive_multiproof(leaves: &[Hash], lo: usize, chosen: &[usize], out: &mut Vec<Hash>) -> Hash {
    let hi = lo + leaves.len();
    if !chosen.iter().any(|&i| (lo..hi).contains(&i)) {
        out.push(mth(leaves));
        return mth(leaves);
    }
    if leaves.len() == 1 {
        return leaves[0];
    }
    let n = leaves.len();
    let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
    let l = naive_multiproof(&leaves[..k], lo, chosen, out);
    let r = naive_multiproof(&leaves[k..], lo + k, chosen, out);
    node_hash(&l, &r)
}

#[test]
fn multiproof_every_subset_of_small_trees() {
    for n in 1u64..=10 {
        let tree = build(n);
        let root = mth(&tree.leaves);
        for mask in 0u32..(1 << n) {
            let chosen: Vec<u64> = (0..n).filter(|i| mask >> i & 1 == 1).collect();
            let proof = multiproof(&chosen, n, &tree.nodes).unwrap();
            let mut want = Vec::new();
            let chosen_usize: Vec<usize> = chosen.iter().map(|&i| i as usize).collect();
            naive_multiproof(&tree.leaves, 0, &chosen_usize, &mut want);
            assert_eq!(proof, want, "size {n}, leaves {chosen:?}");
            let with_hashes: Vec<(u64, Hash)> = chosen
                .iter()
                .map(|&i| (i, tree.leaves[i as usize]))
                .collect();
            verify_multiproof(&with_hashes, n, &proof, &root).unwrap();
            // Every proof hash and every leaf matters.
            for j in 0..proof.len() {
                let mut bad = proof.clone();
                bad[j][0] ^= 1;
                assert_eq!(
                    verify_multiproof(&with_hashes, n, &bad, &root),
                    Err(ProofError::RootMismatch)
                );
            }
            for j in 0..with_hashes.len() {
                let mut bad = with_hashes.clone();
                bad[j].1[31] ^= 0x80;
                assert!(verify_multiproof(&bad, n, &proof, &root).is_err());
            }
            let mut long = proof.clone();
            long.push(root);
            assert_eq!(
                verify_multiproof(&with_hashes, n, &long, &root),
                Err(ProofError::ProofTooLong)
            );
            if !proof.is_empty() {
                assert_eq!(
                    verify_multiproof(&with_hashes, n, &proof[1..], &root),
                    Err(ProofError::ProofTooShort)
                );
            }
        }
    }
}

#[test]
fn multiproof_bad_requests() {
    let tree = build(5);
    assert_eq!(
        multiproof_nodes(&[1, 5], 5),
        Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
    );
    assert_eq!(
        multiproof_nodes(&[2, 2], 5),
        Err(ProofError::LeavesNotAscending)
    );
    assert!(multiproof_nodes(&[], 0).unwrap().ids().is_empty());
    verify_multiproof(&[], 0, &[], &empty_root()).unwrap();
    // No leaves: the proof is the root itself.
    let p = multiproof(&[], 5, &tree.nodes).unwrap();
    assert_eq!(p, vec![mth(&tree.leaves)]);
}

proptest! {
    #[test]
    fn multiproof_random_subsets_of_larger_trees(n in 1u64..=200, seed in any::<u64>()) {
        let tree = build(n);
        let chosen: Vec<u64> = (0..n)
            .filter(|i| (seed.rotate_left((*i % 64) as u32) ^ i) % 7 == 0)
            .collect();
        let proof = multiproof(&chosen, n, &tree.nodes).unwrap();
        let with_hashes: Vec<(u64, Hash)> =
            chosen.iter().map(|&i| (i, tree.leaves[i as usize])).collect();
        prop_assert!(verify_multiproof(&with_hashes, n, &proof, &mth(&tree.leaves)).is_ok());
    }
}
