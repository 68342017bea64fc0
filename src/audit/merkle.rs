//! The Merkle tree over record hashes that ties an export (or a published
//! checkpoint) to the ledger's head without revealing other records.
//!
//! Shape of RFC 6962 / 9162 (certificate transparency), hashed with blake3
//! under a domain tag:
//!
//! ```text
//! H(x)           = blake3("runledger.merkle.v1\0" ‖ x)
//! leaf(record)   = H(0x00 ‖ record_hash)              record seq s is leaf s-1
//! node(l, r)     = H(0x01 ‖ l ‖ r)
//! MTH(leaves[n]) = node(MTH(first k), MTH(rest))      k = largest power of 2 < n
//! MTH(one leaf)  = that leaf;  MTH(none) = H("")
//! ```
//!
//! A [`MultiProof`] proves a set of leaves at once: its nodes are the roots
//! of the maximal subtrees that hold none of the proven leaves, in left to
//! right order, each labelled with the seqs it covers. Proven leaves and
//! nodes together partition `1..=n`, so the labels alone say which seqs
//! the proof vouches for: a dropped, added or reordered row is named
//! before any hash is compared.
//!
//! The same shape serves three trees, told apart by the tag of every hash
//! ([`Domain`]): the records tree above, a tenant's subtree and the
//! tenants tree (see `audit::tenants`); [`checkpoint_root`] combines the
//! records root and the tenants root into the root a holder keeps. In
//! those trees labels are leaf positions (1-based) rather than seqs.
//!
//! This module is pure: hashes in, hashes out; no store, no files.
//!
//! ```
//! use runledger::audit::merkle::{Accumulator, Tree, leaf_hash};
//!
//! let records: Vec<blake3::Hash> = (0u8..5).map(|i| blake3::hash(&[i])).collect();
//! let tree = Tree::new(&records);
//! let mut acc = Accumulator::default();
//! records.iter().for_each(|r| acc.push(r));
//! assert_eq!(tree.root(), acc.root());
//!
//! let proof = tree.prove(&[2, 5]);
//! let leaves = [(2, leaf_hash(&records[1])), (5, leaf_hash(&records[4]))];
//! assert_eq!(proof.root(5, &leaves), Ok(tree.root()));
//! ```

use rayon::prelude::*;

/// Domain tag of every hash in the tree over record hashes.
pub const MERKLE_TAG: &[u8] = b"runledger.merkle.v1\0";
/// The scheme's name as files state it.
pub const SCHEME: &str = "runledger.merkle.v1";

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;
/// Prefix of the combined checkpoint root (records root ‖ tenants root).
const CHECKPOINT_PREFIX: u8 = 0x02;

/// Leaves hashed per parallel task when a level is built.
const PAR_CHUNK_LEAVES: usize = 1 << 14;

/// Which tree a hash belongs to: every tree of the scheme has the same
/// shape and differs only in the tag in front of every hash, so a node of
/// one tree can never pass for a node of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Domain(&'static [u8]);

impl Domain {
    /// The tree over every record hash, leaf = H(0x00 ‖ record_hash).
    pub const RECORDS: Domain = Domain(MERKLE_TAG);
    /// A tenant's subtree over its export rows (see `audit::tenants`).
    pub const TENANT: Domain = Domain(b"runledger.tenant.v1\0");
    /// The tree over the tenants, sorted by tag (see `audit::tenants`).
    pub const TENANTS: Domain = Domain(b"runledger.tenants.v1\0");

    pub fn tag(self) -> &'static [u8] {
        self.0
    }

    /// `blake3(tag ‖ prefix ‖ parts…)`, hashed from one buffer (markedly
    /// faster than several small updates for the short inputs here).
    fn hash(self, prefix: u8, parts: &[&[u8]]) -> blake3::Hash {
        let mut buf = [0u8; 160];
        let len = self.0.len() + 1 + parts.iter().map(|p| p.len()).sum::<usize>();
        if len > buf.len() {
            let mut hasher = blake3::Hasher::new();
            hasher.update(self.0);
            hasher.update(&[prefix]);
            parts.iter().for_each(|p| {
                hasher.update(p);
            });
            return hasher.finalize();
        }
        buf[..self.0.len()].copy_from_slice(self.0);
        buf[self.0.len()] = prefix;
        let mut at = self.0.len() + 1;
        for part in parts {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        blake3::hash(&buf[..at])
    }

    /// `H(0x00 ‖ parts…)`.
    pub fn leaf(self, parts: &[&[u8]]) -> blake3::Hash {
        self.hash(LEAF_PREFIX, parts)
    }

    /// `H(0x01 ‖ left ‖ right)`.
    pub fn node(self, left: &blake3::Hash, right: &blake3::Hash) -> blake3::Hash {
        self.hash(NODE_PREFIX, &[left.as_bytes(), right.as_bytes()])
    }

    /// The root of a tree without leaves: `H("")`.
    pub fn empty(self) -> blake3::Hash {
        blake3::hash(self.0)
    }
}

pub fn leaf_hash(record_hash: &blake3::Hash) -> blake3::Hash {
    Domain::RECORDS.leaf(&[record_hash.as_bytes()])
}

pub fn node_hash(left: &blake3::Hash, right: &blake3::Hash) -> blake3::Hash {
    Domain::RECORDS.node(left, right)
}

pub fn empty_root() -> blake3::Hash {
    Domain::RECORDS.empty()
}

/// The checkpoint root a tenant or auditor keeps:
/// `H_records(0x02 ‖ records_root ‖ tenants_root)`.
pub fn checkpoint_root(records_root: &blake3::Hash, tenants_root: &blake3::Hash) -> blake3::Hash {
    Domain::RECORDS.hash(
        CHECKPOINT_PREFIX,
        &[records_root.as_bytes(), tenants_root.as_bytes()],
    )
}

/// The largest power of two strictly below `n` (`n` ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The level of the node covering `size` leaves: ⌈log2 size⌉.
fn level_of(size: u64) -> usize {
    if size <= 1 {
        0
    } else {
        64 - (size - 1).leading_zeros() as usize
    }
}

/// The root of a growing tree in O(log n) memory: the roots of its perfect
/// subtrees, largest first (the binary digits of n).
#[derive(Clone, Debug)]
pub struct Accumulator {
    domain: Domain,
    /// `(leaf count, hash)` of each perfect subtree, sizes strictly falling.
    peaks: Vec<(u64, blake3::Hash)>,
    size: u64,
}

impl Default for Accumulator {
    /// The accumulator of the tree over record hashes.
    fn default() -> Self {
        Accumulator::new(Domain::RECORDS)
    }
}

impl Accumulator {
    pub fn new(domain: Domain) -> Accumulator {
        Accumulator {
            domain,
            peaks: Vec::new(),
            size: 0,
        }
    }

    /// Appends the leaf of the next record (a tree over record hashes).
    pub fn push(&mut self, record_hash: &blake3::Hash) {
        debug_assert_eq!(self.domain, Domain::RECORDS);
        self.push_leaf(leaf_hash(record_hash));
    }

    /// Appends a leaf already hashed (`domain.leaf(…)`).
    pub fn push_leaf(&mut self, leaf: blake3::Hash) {
        let mut carry = (1u64, leaf);
        while let Some(&(size, hash)) = self.peaks.last() {
            if size != carry.0 {
                break;
            }
            self.peaks.pop();
            carry = (size * 2, self.domain.node(&hash, &carry.1));
        }
        self.peaks.push(carry);
        self.size += 1;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root over the leaves so far: the peaks folded from the right,
    /// which is exactly RFC 6962's split at the largest power of two.
    pub fn root(&self) -> blake3::Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(&(_, mut hash)) = peaks.next() else {
            return self.domain.empty();
        };
        for (_, left) in peaks {
            hash = self.domain.node(left, &hash);
        }
        hash
    }
}

/// A whole tree in memory, level by level: level 0 holds the leaves, level
/// ℓ+1 pairs level ℓ and carries an odd last node up unchanged (the same
/// tree as RFC 6962's recursive split). The node covering leaves
/// `[lo, hi)` of any subtree of that split is `levels[⌈log2(hi-lo)⌉][lo >> ℓ]`.
pub struct Tree {
    domain: Domain,
    levels: Vec<Vec<blake3::Hash>>,
}

impl Tree {
    /// Builds the tree over `record_hashes` (record seq s at index s-1),
    /// hashing each level on all cores.
    pub fn new(record_hashes: &[blake3::Hash]) -> Tree {
        let leaves: Vec<blake3::Hash> = record_hashes
            .par_iter()
            .with_min_len(PAR_CHUNK_LEAVES)
            .map(leaf_hash)
            .collect();
        Tree::from_leaves(Domain::RECORDS, leaves)
    }

    /// Builds the tree of `domain` over leaves already hashed (position p
    /// at index p-1).
    pub fn from_leaves(domain: Domain, leaves: Vec<blake3::Hash>) -> Tree {
        let mut levels = vec![leaves];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let above: Vec<blake3::Hash> = below
                .par_chunks(2)
                .with_min_len(PAR_CHUNK_LEAVES / 2)
                .map(|pair| match pair {
                    [left, right] => domain.node(left, right),
                    [single] => *single,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(above);
        }
        Tree { domain, levels }
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn root(&self) -> blake3::Hash {
        match self.levels.last() {
            Some(top) if !top.is_empty() => top[0],
            _ => self.domain.empty(),
        }
    }

    fn node(&self, lo: u64, hi: u64) -> blake3::Hash {
        let level = level_of(hi - lo);
        self.levels[level][(lo >> level) as usize]
    }

    /// The multi-proof of the leaves of `seqs` (strictly increasing, each
    /// in `1..=size`).
    pub fn prove(&self, seqs: &[u64]) -> MultiProof {
        debug_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        let targets: Vec<u64> = seqs.iter().map(|s| s - 1).collect();
        let mut nodes = Vec::new();
        if self.size() > 0 {
            self.prove_range(0, self.size(), &targets, &mut nodes);
        }
        MultiProof { nodes }
    }

    fn prove_range(&self, lo: u64, hi: u64, targets: &[u64], nodes: &mut Vec<ProofNode>) {
        if targets.is_empty() {
            nodes.push(ProofNode {
                first_seq: lo + 1,
                last_seq: hi,
                hash: self.node(lo, hi),
            });
            return;
        }
        if hi - lo == 1 {
            return;
        }
        let mid = lo + split(hi - lo);
        let cut = targets.partition_point(|&t| t < mid);
        self.prove_range(lo, mid, &targets[..cut], nodes);
        self.prove_range(mid, hi, &targets[cut..], nodes);
    }
}

/// The root of a subtree that holds no proven leaf, labelled with the seqs
/// it covers (`first_seq..=last_seq`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProofNode {
    pub first_seq: u64,
    pub last_seq: u64,
    pub hash: blake3::Hash,
}

/// Proof nodes in left-to-right order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MultiProof {
    pub nodes: Vec<ProofNode>,
}

/// Why a proof does not hold together (before any root is compared).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("proof node {index} covers seqs {first}..={last}, outside the tree of {size} records")]
    OutOfTree {
        index: usize,
        first: u64,
        last: u64,
        size: u64,
    },
    #[error(
        "proof node {index} covers seqs {first}..={last}, which does not follow the node before it"
    )]
    Unordered { index: usize, first: u64, last: u64 },
    #[error(
        "proof node {index} covers seqs {first}..={last} where the tree has a subtree of seqs {want_first}..={want_last}"
    )]
    Misshapen {
        index: usize,
        first: u64,
        last: u64,
        want_first: u64,
        want_last: u64,
    },
    #[error("the proof needs a node for seqs {first}..={last} and has none left")]
    MissingNode { first: u64, last: u64 },
    #[error("the proof has {0} nodes more than the tree needs")]
    ExtraNodes(usize),
    #[error("the proof leaves more than {max} seqs uncovered: it does not fit the rows")]
    TooManyProven { max: usize },
}

impl MultiProof {
    /// The seqs in `1..=size` that no node covers — the leaves this proof
    /// must be given, at most `max` of them (the size comes from an
    /// untrusted file). Checks that the nodes are ordered, disjoint and
    /// inside the tree.
    pub fn proven_seqs(&self, size: u64, max: usize) -> Result<Vec<u64>, ProofError> {
        let mut seqs = Vec::new();
        let mut next = 1u64;
        let take = |range: std::ops::Range<u64>, seqs: &mut Vec<u64>| {
            let room = max.saturating_sub(seqs.len()) as u64;
            if range.end.saturating_sub(range.start) > room {
                return Err(ProofError::TooManyProven { max });
            }
            seqs.extend(range);
            Ok(())
        };
        for (index, node) in self.nodes.iter().enumerate() {
            let (first, last) = (node.first_seq, node.last_seq);
            if first == 0 || first > last || last > size {
                return Err(ProofError::OutOfTree {
                    index,
                    first,
                    last,
                    size,
                });
            }
            if first < next {
                return Err(ProofError::Unordered { index, first, last });
            }
            take(next..first, &mut seqs)?;
            next = last + 1;
        }
        take(next..size.saturating_add(1), &mut seqs)?;
        Ok(seqs)
    }

    /// The root the proof gives for a tree of `size` leaves with `leaves`
    /// (`(seq, leaf hash)`, strictly increasing seqs, exactly the
    /// [`proven_seqs`](Self::proven_seqs)).
    pub fn root(
        &self,
        size: u64,
        leaves: &[(u64, blake3::Hash)],
    ) -> Result<blake3::Hash, ProofError> {
        self.root_in(Domain::RECORDS, size, leaves)
    }

    /// [`root`](Self::root) for a tree of `domain` (labels are then leaf
    /// positions `1..=size` rather than seqs).
    pub fn root_in(
        &self,
        domain: Domain,
        size: u64,
        leaves: &[(u64, blake3::Hash)],
    ) -> Result<blake3::Hash, ProofError> {
        if size == 0 {
            return match self.nodes.len() {
                0 => Ok(domain.empty()),
                n => Err(ProofError::ExtraNodes(n)),
            };
        }
        let mut next_node = 0usize;
        let root = self.fold(domain, 0, size, leaves, &mut next_node)?;
        if next_node < self.nodes.len() {
            return Err(ProofError::ExtraNodes(self.nodes.len() - next_node));
        }
        Ok(root)
    }

    fn fold(
        &self,
        domain: Domain,
        lo: u64,
        hi: u64,
        leaves: &[(u64, blake3::Hash)],
        next_node: &mut usize,
    ) -> Result<blake3::Hash, ProofError> {
        if leaves.is_empty() {
            let Some(node) = self.nodes.get(*next_node) else {
                return Err(ProofError::MissingNode {
                    first: lo + 1,
                    last: hi,
                });
            };
            if (node.first_seq, node.last_seq) != (lo + 1, hi) {
                return Err(ProofError::Misshapen {
                    index: *next_node,
                    first: node.first_seq,
                    last: node.last_seq,
                    want_first: lo + 1,
                    want_last: hi,
                });
            }
            *next_node += 1;
            return Ok(node.hash);
        }
        if hi - lo == 1 {
            return Ok(leaves[0].1);
        }
        let mid = lo + split(hi - lo);
        let cut = leaves.partition_point(|&(seq, _)| seq <= mid);
        let left = self.fold(domain, lo, mid, &leaves[..cut], next_node)?;
        let right = self.fold(domain, mid, hi, &leaves[cut..], next_node)?;
        Ok(domain.node(&left, &right))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962's recursive definition, straight from the text.
    fn reference_root(records: &[blake3::Hash]) -> blake3::Hash {
        match records.len() {
            0 => empty_root(),
            1 => leaf_hash(&records[0]),
            n => {
                let k = split(n as u64) as usize;
                node_hash(
                    &reference_root(&records[..k]),
                    &reference_root(&records[k..]),
                )
            }
        }
    }

    fn records(n: u8) -> Vec<blake3::Hash> {
        (0..n).map(|i| blake3::hash(&[i])).collect()
    }

    #[test]
    fn merkle_roots_agree_with_the_recursive_definition() {
        for n in 0..70u8 {
            let records = records(n);
            let mut acc = Accumulator::default();
            records.iter().for_each(|r| acc.push(r));
            let want = reference_root(&records);
            assert_eq!(Tree::new(&records).root(), want, "tree of {n}");
            assert_eq!(acc.root(), want, "accumulator of {n}");
        }
    }

    #[test]
    fn merkle_multiproof_verifies_every_subset_of_small_trees() {
        for n in 1..12u8 {
            let records = records(n);
            let tree = Tree::new(&records);
            for mask in 1u32..(1 << n) {
                let seqs: Vec<u64> = (1..=u64::from(n))
                    .filter(|s| mask & (1 << (s - 1)) != 0)
                    .collect();
                let proof = tree.prove(&seqs);
                assert_eq!(proof.proven_seqs(u64::from(n), seqs.len()).unwrap(), seqs);
                if seqs.len() > 1 {
                    assert!(proof.proven_seqs(u64::from(n), seqs.len() - 1).is_err());
                }
                let leaves: Vec<_> = seqs
                    .iter()
                    .map(|&s| (s, leaf_hash(&records[s as usize - 1])))
                    .collect();
                assert_eq!(proof.root(u64::from(n), &leaves), Ok(tree.root()));
            }
        }
    }

    #[test]
    fn merkle_multiproof_rejects_a_missing_leaf_and_an_edited_node() {
        let records = records(9);
        let tree = Tree::new(&records);
        let proof = tree.prove(&[3, 4, 9]);
        let leaf = |s: u64| (s, leaf_hash(&records[s as usize - 1]));
        let err = proof.root(9, &[leaf(3), leaf(9)]).unwrap_err();
        assert!(matches!(err, ProofError::Misshapen { .. }), "{err}");
        let mut edited = proof.clone();
        edited.nodes[0].hash = blake3::hash(b"forged");
        assert_ne!(
            edited.root(9, &[leaf(3), leaf(4), leaf(9)]).unwrap(),
            tree.root()
        );
        let mut overlapping = proof;
        overlapping.nodes[1].first_seq = 1;
        assert!(matches!(
            overlapping.proven_seqs(9, 9),
            Err(ProofError::Unordered { index: 1, .. })
        ));
    }
}
