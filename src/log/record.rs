//! A ledger record and its place in the hash chain.
//!
//! `hash = blake3("runledger.record.v1\0" ‖ seq ‖ recorded_at ‖ prev_hash ‖
//! canonical event bytes)` with `seq` and `recorded_at` as 8 little-endian
//! bytes. The first record's `prev_hash` is all zeros.

use crate::domain::{Event, Timestamp};

pub const ZERO_HASH: blake3::Hash = blake3::Hash::from_bytes([0; 32]);

const DOMAIN_TAG: &[u8] = b"runledger.record.v1\0";

pub fn record_hash(
    seq: u64,
    recorded_at: Timestamp,
    prev_hash: &blake3::Hash,
    event_bytes: &[u8],
) -> blake3::Hash {
    // One contiguous input hashes markedly faster than five small updates.
    const HEAD: usize = DOMAIN_TAG.len() + 8 + 8 + 32;
    let mut buf = [0u8; HEAD + 192];
    if event_bytes.len() > buf.len() - HEAD {
        let mut hasher = blake3::Hasher::new();
        hasher.update(DOMAIN_TAG);
        hasher.update(&seq.to_le_bytes());
        hasher.update(&recorded_at.as_micros().to_le_bytes());
        hasher.update(prev_hash.as_bytes());
        hasher.update(event_bytes);
        return hasher.finalize();
    }
    let (head, tail) = buf.split_at_mut(HEAD);
    head[..DOMAIN_TAG.len()].copy_from_slice(DOMAIN_TAG);
    head[DOMAIN_TAG.len()..DOMAIN_TAG.len() + 8].copy_from_slice(&seq.to_le_bytes());
    head[DOMAIN_TAG.len() + 8..DOMAIN_TAG.len() + 16]
        .copy_from_slice(&recorded_at.as_micros().to_le_bytes());
    head[DOMAIN_TAG.len() + 16..].copy_from_slice(prev_hash.as_bytes());
    tail[..event_bytes.len()].copy_from_slice(event_bytes);
    blake3::hash(&buf[..HEAD + event_bytes.len()])
}

/// A decoded record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    pub seq: u64,
    pub recorded_at: Timestamp,
    pub prev_hash: blake3::Hash,
    pub hash: blake3::Hash,
    pub event: Event,
}

/// A record whose event is still in canonical bytes, borrowed from a frame.
#[derive(Clone, Copy, Debug)]
pub struct RawRecord<'a> {
    pub seq: u64,
    /// First seq of the frame that holds the record.
    pub frame_seq: u64,
    pub recorded_at: Timestamp,
    pub prev_hash: blake3::Hash,
    pub hash: blake3::Hash,
    pub event_bytes: &'a [u8],
}
