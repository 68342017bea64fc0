//! Published checkpoints: `runledger checkpoint` computes, over every
//! record up to the head, the Merkle root of the record hashes (see
//! `audit::merkle`), the tenants root over every tenant's export rows (see
//! `audit::tenants`) and the checkpoint root combining them, and records
//! `(seq, head hash, records root, tenants root, root)` in the store's
//! `published` tree, for a tenant or an auditor to keep; `runledger
//! verify` recomputes all three for every recorded one in its single pass
//! over the chain. A checkpoint is a projection like any other: it is
//! checked against the chain, never trusted over it.

use super::merkle::{Accumulator, checkpoint_root};
use super::tenants::{Commitments, Owned};
use crate::log::codec::decode_event;
use crate::log::store::{ChainBreak, PublishedCheckpoint, Store, WalkError};
use crate::log::verify::{VerifyReport, verify_mapping};

/// The three roots of a checkpoint, grown record by record.
struct Roots {
    records: Accumulator,
    tenants: Commitments,
}

impl Roots {
    fn new() -> Roots {
        Roots {
            records: Accumulator::default(),
            tenants: Commitments::default(),
        }
    }

    fn push(&mut self, hash: &blake3::Hash, owned: Owned) {
        self.records.push(hash);
        self.tenants.push(owned);
    }

    /// `(records root, tenants root, checkpoint root)`.
    fn roots(&self) -> (blake3::Hash, blake3::Hash, blake3::Hash) {
        let records = self.records.root();
        let tenants = self.tenants.root();
        (records, tenants, checkpoint_root(&records, &tenants))
    }
}

/// Computes the checkpoint at the head (reading the whole chain, every
/// hash checked, every event decoded), records it and syncs it to disk.
pub fn publish(store: &Store) -> Result<PublishedCheckpoint, PublishError> {
    let ledger_id = store.ledger_id();
    let mut roots = Roots::new();
    let head = store.read_chain(
        |raw| {
            let event = decode_event(raw.event_bytes)
                .map_err(|what| format!("event cannot be decoded: {what}"))?;
            let at = raw.recorded_at.as_micros();
            let owned = Owned::of(&ledger_id, raw.seq, at, &raw.hash, &event);
            Ok((raw.hash, owned))
        },
        |frames| {
            for (hash, owned) in frames.into_iter().flatten() {
                roots.push(&hash, owned);
            }
        },
    )?;
    if head.seq == 0 {
        return Err(PublishError::Empty);
    }
    let (records_root, tenants_root, root) = roots.roots();
    let checkpoint = PublishedCheckpoint {
        seq: head.seq,
        head: *head.hash.as_bytes(),
        records_root: *records_root.as_bytes(),
        tenants_root: *tenants_root.as_bytes(),
        root: *root.as_bytes(),
    };
    store
        .write_published(checkpoint)
        .map_err(|e| PublishError::Walk(e.into()))?;
    store.flush(true)?;
    Ok(checkpoint)
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error(transparent)]
    Store(#[from] crate::log::StoreError),
    #[error("the ledger is empty: there is nothing to checkpoint")]
    Empty,
}

/// The chain verification of `log::verify`, plus every published
/// checkpoint: the head hash at its seq and the three roots recomputed
/// over records `1..=seq`. Returns the number of published checkpoints
/// checked beside the report.
pub fn verify_with_published(
    store: &Store,
) -> Result<Result<(VerifyReport, usize), ChainBreak>, sled::Error> {
    verify_with_published_mapping(store, |_, _| (), |_, ()| {})
}

/// [`verify_with_published`], where `map` also runs on the worker that
/// decoded each event and its result reaches `observe` with the record's
/// seq, in seq order on the calling thread (for checks that need every
/// event, such as the indices').
pub fn verify_with_published_mapping<U: Send>(
    store: &Store,
    map: impl Fn(&crate::log::record::RawRecord<'_>, &crate::domain::Event) -> U + Sync,
    mut observe: impl FnMut(u64, U),
) -> Result<Result<(VerifyReport, usize), ChainBreak>, sled::Error> {
    let published = match store.published() {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let last_wanted = published.last().map_or(0, |p| p.seq);
    let ledger_id = store.ledger_id();
    let mut roots = Roots::new();
    // (seq, head, roots) as the chain gives them at each published seq.
    type Found = (
        u64,
        blake3::Hash,
        (blake3::Hash, blake3::Hash, blake3::Hash),
    );
    let mut found: Vec<Found> = Vec::new();
    let mut wanted = published.iter().map(|p| p.seq).peekable();
    let report = verify_mapping(
        store,
        |raw, event| {
            let mapped = map(raw, event);
            if raw.seq > last_wanted {
                return (Owned::Nobody, mapped);
            }
            let at = raw.recorded_at.as_micros();
            (Owned::of(&ledger_id, raw.seq, at, &raw.hash, event), mapped)
        },
        |seq, hash, (owned, mapped)| {
            observe(seq, mapped);
            if seq > last_wanted {
                return;
            }
            roots.push(hash, owned);
            while wanted.peek().is_some_and(|&w| w < seq) {
                wanted.next();
            }
            if wanted.peek() == Some(&seq) {
                found.push((seq, *hash, roots.roots()));
            }
        },
    )?;
    let report = match report {
        Ok(report) => report,
        Err(b) => return Ok(Err(b)),
    };
    for checkpoint in &published {
        let Some((_, head, (records_root, tenants_root, root))) =
            found.iter().find(|f| f.0 == checkpoint.seq)
        else {
            return Ok(Err(ChainBreak {
                seq: report.head.seq + 1,
                what: format!(
                    "the ledger was truncated: published checkpoint {} is past its end at {}",
                    checkpoint.seq, report.head.seq
                ),
            }));
        };
        let checks = [
            ("head hash", head, &checkpoint.head),
            ("records root", records_root, &checkpoint.records_root),
            ("tenants root", tenants_root, &checkpoint.tenants_root),
            ("checkpoint root", root, &checkpoint.root),
        ];
        for (what, computed, stored) in checks {
            if computed.as_bytes() != stored {
                return Ok(Err(ChainBreak {
                    seq: checkpoint.seq,
                    what: format!(
                        "the {what} of the published checkpoint at this seq does not match the chain (it gives {})",
                        computed.to_hex()
                    ),
                }));
            }
        }
    }
    Ok(Ok((report, published.len())))
}
