//! RFC 6962 / RFC 9162 Merkle trees over stored complete subtrees.
//!
//! A stored node `(level, index)` is the hash of the complete subtree of
//! `2^level` leaves starting at leaf `index << level`. Such a node never changes
//! once written, which is what lets storage stay append-only: the ragged right
//! edge of a tree whose size is not a power of two is always recomputed from
//! complete subtrees, never stored.

use std::collections::HashMap;
use std::ops::Range;

use ring::digest::{SHA256, digest};

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// `(level, index)` of a complete subtree.
pub type NodeId = (u8, u64);

/// RFC 6962 leaf hash: SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut ctx = ring::digest::Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(entry);
    to_hash(ctx.finish().as_ref())
}

/// RFC 6962 interior node hash: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    // One contiguous buffer hashes faster than three incremental updates.
    let mut buf = [0u8; 65];
    buf[0] = 0x01;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    to_hash(digest(&SHA256, &buf).as_ref())
}

/// Root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    to_hash(digest(&SHA256, &[]).as_ref())
}

fn to_hash(bytes: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(bytes);
    out
}

/// Read access to stored complete-subtree hashes.
pub trait NodeReader {
    type Error;

    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;

    /// Hashes for `ids`, in the same order. Every proof routine calls this
    /// exactly once, so a store that overrides it answers a proof in one query.
    fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, Self::Error> {
        ids.iter()
            .map(|&(level, index)| self.node(level, index))
            .collect()
    }
}

/// A node the in-memory reader was asked for but does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tree node (level {}, index {}) is not stored", .0.0, .0.1)]
pub struct MissingNode(pub NodeId);

/// Lets storage prefetch `ProofNodes::ids` into a map and serve from it, and
/// gives tests a reference store.
impl<S: std::hash::BuildHasher> NodeReader for HashMap<NodeId, Hash, S> {
    type Error = MissingNode;

    fn node(&self, level: u8, index: u64) -> Result<Hash, MissingNode> {
        self.get(&(level, index))
            .copied()
            .ok_or(MissingNode((level, index)))
    }
}

/// Why a proof could not be produced or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {size2} is smaller than earlier size {size1}")]
    SizesReversed { size1: u64, size2: u64 },
    #[error("consistency with the empty tree proves nothing; size1 must be at least 1")]
    EmptyFirstTree,
    #[error("proof has more hashes than a tree of this size needs")]
    ProofTooLong,
    #[error("proof has fewer hashes than a tree of this size needs")]
    ProofTooShort,
    #[error("{what} is {len} bytes, a SHA-256 hash is 32")]
    HashLength { what: &'static str, len: usize },
    #[error("recomputed root does not match the expected root")]
    RootMismatch,
    #[error("recomputed root of the first tree does not match root1")]
    FirstRootMismatch,
    #[error("leaf indexes of a multi-proof must ascend without repeats")]
    LeavesNotAscending,
    #[error("node store returned {got} hashes for {want} requested nodes")]
    NodeCount { want: usize, got: usize },
}

/// A proof routine failed: either the request or the store is at fault.
#[derive(Debug, thiserror::Error)]
pub enum TreeError<E> {
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error(transparent)]
    Store(E),
}

/// The stored nodes a proof needs, and how to turn their hashes into the proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofNodes {
    ids: Vec<NodeId>,
    /// `ids[ephemeral]` are the complete subtrees (left to right) under the one
    /// incomplete right-edge sibling; they fold into a single proof hash.
    ephemeral: Range<usize>,
}

impl ProofNodes {
    /// Every node to fetch, in the order `rehash` expects their hashes.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// Builds the proof from the hashes of `ids()`, in that order.
    pub fn rehash(&self, hashes: &[Hash]) -> Result<Vec<Hash>, ProofError> {
        if hashes.len() != self.ids.len() {
            return Err(ProofError::NodeCount {
                want: self.ids.len(),
                got: hashes.len(),
            });
        }
        let eph = self.ephemeral.clone();
        let mut proof = Vec::with_capacity(hashes.len());
        proof.extend_from_slice(&hashes[..eph.start]);
        proof.extend(fold_right(&hashes[eph.clone()]));
        proof.extend_from_slice(&hashes[eph.end..]);
        Ok(proof)
    }
}

/// Nodes for the inclusion proof of leaf `index` in the tree of `size` leaves.
pub fn inclusion_nodes(index: u64, size: u64) -> Result<ProofNodes, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    Ok(path_nodes(0, index, size, Vec::with_capacity(2 * 64)))
}

/// Nodes for the consistency proof from tree size `size1` to `size2`.
pub fn consistency_nodes(size1: u64, size2: u64) -> Result<ProofNodes, ProofError> {
    if size2 < size1 {
        return Err(ProofError::SizesReversed { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofError::EmptyFirstTree);
    }
    if size1 == size2 {
        return Ok(ProofNodes {
            ids: Vec::new(),
            ephemeral: 0..0,
        });
    }
    let mut ids = Vec::with_capacity(2 * 64);
    // The largest complete subtree ending at size1 is the seed; the rest of the
    // proof is its inclusion path in the size2 tree.
    let level = size1.trailing_zeros();
    let index = (size1 - 1) >> level;
    // For a power-of-two size1 the seed is root1 itself, which the verifier has.
    if index != 0 {
        ids.push((level as u8, index));
    }
    Ok(path_nodes(level, index, size2, ids))
}

/// Complete subtrees covering leaves `[0, size)`, left to right; their hashes
/// folded from the right give the root, and they are the frontier of `size`.
pub fn root_nodes(size: u64) -> Vec<NodeId> {
    let mut ids = Vec::with_capacity(size.count_ones() as usize);
    range_nodes(0, size, &mut ids);
    ids
}

/// Appends to `ids` the siblings on the path from node `(level, index)` up to
/// the root of a tree of `size >= 1` leaves, leaf end first.
fn path_nodes(mut level: u32, mut index: u64, size: u64, mut ids: Vec<NodeId>) -> ProofNodes {
    let mut ephemeral = 0..0;
    let size_wide = u128::from(size);
    while !(index == 0 && (level >= 64 || (size - 1) >> level == 0)) {
        let sibling = index ^ 1;
        let start = u128::from(sibling) << level;
        if start + (1u128 << level) <= size_wide {
            ids.push((level as u8, sibling));
        } else if start < size_wide {
            // The sibling is the incomplete right edge: not stored, so it is
            // rebuilt from the complete subtrees that cover it.
            let from = ids.len();
            range_nodes(start as u64, size, &mut ids);
            ephemeral = from..ids.len();
        }
        // A sibling starting past the end does not exist: RFC 6962 promotes
        // the lone child, so that level contributes nothing.
        index >>= 1;
        level += 1;
    }
    ProofNodes { ids, ephemeral }
}

/// Complete subtrees covering `[start, end)` left to right, largest first.
/// `start` must be aligned to a power of two larger than `end - start`.
fn range_nodes(start: u64, end: u64, ids: &mut Vec<NodeId>) {
    let len = end - start;
    let mut pos = start;
    for level in (0..64u32).rev() {
        if (len >> level) & 1 == 1 {
            ids.push((level as u8, pos >> level));
            pos += 1 << level;
        }
    }
}

/// MTH of adjacent complete subtrees given left to right, largest first.
fn fold_right(hashes: &[Hash]) -> Option<Hash> {
    hashes
        .iter()
        .rev()
        .copied()
        .reduce(|right, left| node_hash(&left, &right))
}

/// `reader.nodes`, never called with no ids (a SQL `IN ()` is an error).
fn fetch<R: NodeReader + ?Sized>(
    reader: &R,
    ids: &[NodeId],
) -> Result<Vec<Hash>, TreeError<R::Error>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let hashes = reader.nodes(ids).map_err(TreeError::Store)?;
    if hashes.len() != ids.len() {
        return Err(ProofError::NodeCount {
            want: ids.len(),
            got: hashes.len(),
        }
        .into());
    }
    Ok(hashes)
}

/// Root of the tree of `size` leaves, from at most 64 stored nodes.
pub fn root<R: NodeReader + ?Sized>(size: u64, reader: &R) -> Result<Hash, TreeError<R::Error>> {
    let hashes = fetch(reader, &root_nodes(size))?;
    Ok(fold_right(&hashes).unwrap_or_else(empty_root))
}

/// Inclusion proof (leaf's sibling first) for leaf `index` in the tree of `size`.
pub fn inclusion_proof<R: NodeReader + ?Sized>(
    index: u64,
    size: u64,
    reader: &R,
) -> Result<Vec<Hash>, TreeError<R::Error>> {
    let plan = inclusion_nodes(index, size)?;
    Ok(plan.rehash(&fetch(reader, plan.ids())?)?)
}

/// Consistency proof from tree size `size1` to `size2` (RFC 9162 §2.1.4.1).
pub fn consistency_proof<R: NodeReader + ?Sized>(
    size1: u64,
    size2: u64,
    reader: &R,
) -> Result<Vec<Hash>, TreeError<R::Error>> {
    let plan = consistency_nodes(size1, size2)?;
    Ok(plan.rehash(&fetch(reader, plan.ids())?)?)
}

fn as_hash(what: &'static str, bytes: &[u8]) -> Result<Hash, ProofError> {
    bytes.try_into().map_err(|_| ProofError::HashLength {
        what,
        len: bytes.len(),
    })
}

/// RFC 9162 §2.1.3.2. Roots are byte slices so a root of the wrong length is
/// simply a mismatch, as in transparency-dev/merkle.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf_hash: &[u8],
    proof: &[Hash],
    root: &[u8],
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut r = as_hash("leaf hash", leaf_hash)?;
    let (mut fnode, mut snode) = (index, size - 1);
    for p in proof {
        if snode == 0 {
            return Err(ProofError::ProofTooLong);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::ProofTooShort);
    }
    if r[..] != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2, plus the cases it leaves to the caller: equal sizes need
/// an empty proof and equal roots, and size1 = 0 is rejected.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), ProofError> {
    if size2 < size1 {
        return Err(ProofError::SizesReversed { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofError::EmptyFirstTree);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::ProofTooLong);
        }
        if root1 != root2 {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    let (seed, rest) = match proof.split_first() {
        None => return Err(ProofError::ProofTooShort),
        // The verifier already holds the seed of a power-of-two size1: root1.
        Some(_) if size1.is_power_of_two() => (as_hash("root1", root1)?, proof),
        Some((first, rest)) => (*first, rest),
    };
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::ProofTooLong);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::ProofTooShort);
    }
    if fr[..] != *root1 {
        return Err(ProofError::FirstRootMismatch);
    }
    if sr[..] != *root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The right edge of a tree: one complete-subtree hash per set bit of the size,
/// left to right. It is all an appender needs, so memory stays O(log n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads the frontier of the tree of `size` leaves from `root_nodes(size)`.
    pub fn from_reader<R: NodeReader + ?Sized>(
        size: u64,
        reader: &R,
    ) -> Result<Self, TreeError<R::Error>> {
        let hashes = fetch(reader, &root_nodes(size))?;
        Ok(Self { size, hashes })
    }

    /// Rebuilds a frontier persisted as `(size, hashes())`.
    pub fn from_hashes(size: u64, hashes: Vec<Hash>) -> Result<Self, ProofError> {
        let want = size.count_ones() as usize;
        if hashes.len() != want {
            return Err(ProofError::NodeCount {
                want,
                got: hashes.len(),
            });
        }
        Ok(Self { size, hashes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The hashes of `root_nodes(self.size())`, in that order.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    pub fn root(&self) -> Hash {
        fold_right(&self.hashes).unwrap_or_else(empty_root)
    }

    /// Appends a leaf hash and returns every complete subtree it completes,
    /// starting with the leaf itself at level 0, for storage to persist.
    pub fn append(&mut self, leaf: Hash) -> Vec<(u8, u64, Hash)> {
        let mut created = Vec::with_capacity(1 + self.size.trailing_ones() as usize);
        let (mut level, mut index, mut hash) = (0u8, self.size, leaf);
        created.push((level, index, hash));
        // Each trailing one bit of the old size is a left sibling waiting for
        // exactly this right neighbour.
        while index & 1 == 1 {
            let Some(left) = self.hashes.pop() else { break };
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            created.push((level, index, hash));
        }
        self.hashes.push(hash);
        self.size += 1;
        created
    }
}

// === multi-proofs ===
//
// One proof for a set of leaves (docs/LEDGER.md, "proof.txt"): the hashes of
// every maximal subtree of the RFC 6962 tree that holds none of the leaves,
// in the order a left-to-right recursion meets them.

/// The stored nodes a multi-proof needs: `ids()` to fetch, and `groups`
/// saying how many consecutive fetched hashes fold into each proof hash (a
/// subtree on the ragged right edge is not stored; it is rebuilt from the
/// complete subtrees covering it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiProofNodes {
    ids: Vec<NodeId>,
    groups: Vec<usize>,
}

impl MultiProofNodes {
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// The proof from the hashes of `ids()`, in that order.
    pub fn rehash(&self, hashes: &[Hash]) -> Result<Vec<Hash>, ProofError> {
        if hashes.len() != self.ids.len() {
            return Err(ProofError::NodeCount {
                want: self.ids.len(),
                got: hashes.len(),
            });
        }
        let mut at = 0;
        let mut proof = Vec::with_capacity(self.groups.len());
        for &n in &self.groups {
            proof.extend(fold_right(&hashes[at..at + n]));
            at += n;
        }
        Ok(proof)
    }
}

/// Why a set of leaves cannot be multi-proved.
fn check_leaves(leaves: &[u64], size: u64) -> Result<(), ProofError> {
    if let Some(&last) = leaves.last()
        && last >= size
    {
        return Err(ProofError::IndexOutOfRange { index: last, size });
    }
    if leaves.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ProofError::LeavesNotAscending);
    }
    Ok(())
}

/// Largest power of two strictly below `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Complete subtrees covering any `[lo, hi)`, left to right.
fn cover(mut lo: u64, hi: u64, ids: &mut Vec<NodeId>) {
    while lo < hi {
        let mut level = if lo == 0 { 63 } else { lo.trailing_zeros() };
        while level > 0 && (hi - lo) >> level == 0 {
            level -= 1;
        }
        ids.push((level as u8, lo >> level));
        lo += 1 << level;
    }
}

/// Nodes for the multi-proof of `leaves` (ascending, distinct, each
/// `< size`) in the tree of `size` leaves.
pub fn multiproof_nodes(leaves: &[u64], size: u64) -> Result<MultiProofNodes, ProofError> {
    check_leaves(leaves, size)?;
    let mut plan = MultiProofNodes {
        ids: Vec::new(),
        groups: Vec::new(),
    };
    if size > 0 {
        plan_walk(0, size, leaves, &mut plan);
    }
    Ok(plan)
}

/// `leaves` are exactly the requested leaves inside `[lo, hi)`.
fn plan_walk(lo: u64, hi: u64, leaves: &[u64], plan: &mut MultiProofNodes) {
    if leaves.is_empty() {
        let before = plan.ids.len();
        cover(lo, hi, &mut plan.ids);
        plan.groups.push(plan.ids.len() - before);
        return;
    }
    if hi - lo == 1 {
        return;
    }
    let mid = lo + split_point(hi - lo);
    let cut = leaves.partition_point(|&i| i < mid);
    plan_walk(lo, mid, &leaves[..cut], plan);
    plan_walk(mid, hi, &leaves[cut..], plan);
}

/// Multi-proof of `leaves` in the tree of `size` leaves.
pub fn multiproof<R: NodeReader + ?Sized>(
    leaves: &[u64],
    size: u64,
    reader: &R,
) -> Result<Vec<Hash>, TreeError<R::Error>> {
    let plan = multiproof_nodes(leaves, size)?;
    Ok(plan.rehash(&fetch(reader, plan.ids())?)?)
}

/// Checks a multi-proof: `leaves` are `(index, leaf hash)`, ascending. Every
/// proof hash must be used, and the recomputed root must equal `root`.
pub fn verify_multiproof(
    leaves: &[(u64, Hash)],
    size: u64,
    proof: &[Hash],
    root: &[u8],
) -> Result<(), ProofError> {
    let indexes: Vec<u64> = leaves.iter().map(|(i, _)| *i).collect();
    check_leaves(&indexes, size)?;
    let got = if size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::ProofTooLong);
        }
        empty_root()
    } else {
        let mut next = proof.iter();
        let r = verify_walk(0, size, leaves, &mut next)?;
        if next.next().is_some() {
            return Err(ProofError::ProofTooLong);
        }
        r
    };
    if got[..] != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

fn verify_walk(
    lo: u64,
    hi: u64,
    leaves: &[(u64, Hash)],
    proof: &mut std::slice::Iter<'_, Hash>,
) -> Result<Hash, ProofError> {
    match leaves {
        [] => proof.next().copied().ok_or(ProofError::ProofTooShort),
        [(_, leaf)] if hi - lo == 1 => Ok(*leaf),
        _ => {
            let mid = lo + split_point(hi - lo);
            let cut = leaves.partition_point(|(i, _)| *i < mid);
            let left = verify_walk(lo, mid, &leaves[..cut], proof)?;
            let right = verify_walk(mid, hi, &leaves[cut..], proof)?;
            Ok(node_hash(&left, &right))
        }
    }
}

#[cfg(test)]
mod tests;
