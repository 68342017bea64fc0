//! Chain verification: walk every frame from seq 1, recompute every hash,
//! decode every event, and check every checkpoint against the chain.

use super::codec::decode_event;
use super::store::{ChainBreak, Head, ReadBack, Store, WalkError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub head: Head,
    pub checkpoints: usize,
}

/// `Ok(Ok(report))` when the chain holds, `Ok(Err(break))` naming the first
/// bad seq when it does not, `Err` when the store cannot be read at all.
pub fn verify(store: &Store) -> Result<Result<VerifyReport, ChainBreak>, sled::Error> {
    verify_observing(store, |_, _| {})
}

/// [`verify`], handing `observe` every record's seq and hash in seq order
/// on the calling thread (for checks built on the chain, such as the
/// Merkle roots of published checkpoints).
pub fn verify_observing(
    store: &Store,
    mut observe: impl FnMut(u64, &blake3::Hash),
) -> Result<Result<VerifyReport, ChainBreak>, sled::Error> {
    verify_mapping(store, |_, _| (), |seq, hash, ()| observe(seq, hash))
}

/// [`verify_observing`], where `map` also runs on the worker that decoded
/// each event (on all cores) and its result reaches `observe`.
pub fn verify_mapping<T: Send>(
    store: &Store,
    map: impl Fn(&super::record::RawRecord<'_>, &crate::domain::Event) -> T + Sync,
    mut observe: impl FnMut(u64, &blake3::Hash, T),
) -> Result<Result<VerifyReport, ChainBreak>, sled::Error> {
    let checkpoints = match store.checkpoints() {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let mut records = 0u64;
    let mut checkpoint_hashes = Vec::new();
    let mut wanted = checkpoints.iter().map(|c| c.seq).peekable();
    // Workers decode every event (and drop it there); seq, hash and what
    // `map` made of it come back.
    let check = |raw: super::record::RawRecord<'_>| match decode_event(raw.event_bytes) {
        Ok(event) => Ok((raw.seq, raw.hash, map(&raw, &event))),
        Err(what) => Err(format!("event cannot be decoded: {what}")),
    };
    let mut read_back = ReadBack::default();
    let walked = store.read_chain(check, |frames| {
        for frame in frames {
            records += frame.len() as u64;
            for (seq, hash, mapped) in frame {
                read_back.next(seq, &hash);
                observe(seq, &hash, mapped);
                while wanted.peek().is_some_and(|&w| w < seq) {
                    wanted.next();
                }
                if wanted.peek() == Some(&seq) {
                    checkpoint_hashes.push((seq, hash));
                }
            }
        }
    });
    let head = match walked {
        Ok(head) => head,
        Err(WalkError::Break(b)) => return Ok(Err(b)),
        // Reading the chain uses no index.
        Err(WalkError::Index(b)) => {
            return Ok(Err(ChainBreak {
                seq: 0,
                what: b.to_string(),
            }));
        }
        Err(WalkError::Storage(e)) => return Err(e),
    };
    read_back.finish(&head);
    for checkpoint in &checkpoints {
        if checkpoint.seq > head.seq {
            return Ok(Err(ChainBreak {
                seq: head.seq + 1,
                what: format!(
                    "the ledger was truncated: a checkpoint vouches for seq {} but the log ends at {}",
                    checkpoint.seq, head.seq
                ),
            }));
        }
        if checkpoint.seq == 0 {
            continue;
        }
        let found = checkpoint_hashes.iter().find(|(s, _)| *s == checkpoint.seq);
        if found.map(|(_, h)| h.as_bytes()) != Some(&checkpoint.head) {
            return Ok(Err(ChainBreak {
                seq: checkpoint.seq,
                what: "the chain does not match the checkpoint recorded at this seq (rewritten history)".to_owned(),
            }));
        }
    }
    Ok(Ok(VerifyReport {
        records,
        head,
        checkpoints: checkpoints.len(),
    }))
}
