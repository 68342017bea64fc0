//! Published checkpoints: `runledger checkpoint` computes the Merkle root
//! over every record hash up to the head (see `audit::merkle`) and records
//! `(seq, head hash, root)` in the store's `published` tree, for a tenant
//! or an auditor to keep; `runledger verify` recomputes every recorded one
//! in its single pass over the chain. A checkpoint is a projection like
//! any other: it is checked against the chain, never trusted over it.

use super::merkle::Accumulator;
use crate::log::store::{ChainBreak, PublishedCheckpoint, Store, WalkError};
use crate::log::verify::{VerifyReport, verify_observing};

/// Computes the checkpoint at the head (reading the whole chain, every
/// hash checked), records it and syncs it to disk.
pub fn publish(store: &Store) -> Result<PublishedCheckpoint, PublishError> {
    let mut tree = Accumulator::default();
    let head = store.read_chain(
        |raw| Ok(raw.hash),
        |frames| frames.iter().flatten().for_each(|hash| tree.push(hash)),
    )?;
    if head.seq == 0 {
        return Err(PublishError::Empty);
    }
    let checkpoint = PublishedCheckpoint {
        seq: head.seq,
        head: *head.hash.as_bytes(),
        root: *tree.root().as_bytes(),
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
/// checkpoint: the head hash at its seq and the Merkle root recomputed
/// over records `1..=seq`. Returns the number of published checkpoints
/// checked beside the report.
pub fn verify_with_published(
    store: &Store,
) -> Result<Result<(VerifyReport, usize), ChainBreak>, sled::Error> {
    let published = match store.published() {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let last_wanted = published.last().map_or(0, |p| p.seq);
    let mut tree = Accumulator::default();
    // (seq, head, root) as the chain gives them at each published seq.
    let mut found: Vec<(u64, blake3::Hash, blake3::Hash)> = Vec::new();
    let mut wanted = published.iter().map(|p| p.seq).peekable();
    let report = verify_observing(store, |seq, hash| {
        if seq > last_wanted {
            return;
        }
        tree.push(hash);
        while wanted.peek().is_some_and(|&w| w < seq) {
            wanted.next();
        }
        if wanted.peek() == Some(&seq) {
            found.push((seq, *hash, tree.root()));
        }
    })?;
    let report = match report {
        Ok(report) => report,
        Err(b) => return Ok(Err(b)),
    };
    for checkpoint in &published {
        let Some((_, head, root)) = found.iter().find(|f| f.0 == checkpoint.seq) else {
            return Ok(Err(ChainBreak {
                seq: report.head.seq + 1,
                what: format!(
                    "the ledger was truncated: published checkpoint {} is past its end at {}",
                    checkpoint.seq, report.head.seq
                ),
            }));
        };
        if head.as_bytes() != &checkpoint.head {
            return Ok(Err(ChainBreak {
                seq: checkpoint.seq,
                what:
                    "the head hash of the published checkpoint at this seq does not match the chain"
                        .to_owned(),
            }));
        }
        if root.as_bytes() != &checkpoint.root {
            return Ok(Err(ChainBreak {
                seq: checkpoint.seq,
                what: "the Merkle root of the published checkpoint at this seq does not match the chain".to_owned(),
            }));
        }
    }
    Ok(Ok((report, published.len())))
}
