//! Opening a test's ledger, and reading back what it holds.

use std::ops::ControlFlow;
use std::path::Path;

use runledger::domain::Event;
use runledger::log::codec::decode_event;
use runledger::log::{Durability, Ledger, LedgerOptions, Store};

/// A test ledger's options: no fsync, no checkpoints, created when absent.
pub fn options() -> LedgerOptions {
    LedgerOptions {
        durability: Durability::None,
        checkpoint_every: 0,
        create: true,
    }
}

/// The ledger in `dir` (made when absent) with [`options`].
pub fn open_ledger(dir: &Path) -> Ledger {
    Ledger::open(dir, options()).unwrap()
}

/// The store of the (closed) ledger in `dir`, opened in place.
pub fn open_store(dir: &Path) -> Store {
    Store::open(dir, false).unwrap()
}

/// Every event of the ledger in `dir`, in seq order, with the size of its
/// encoding.
pub fn events_sized(dir: &Path) -> Vec<(Event, usize)> {
    let store = open_store(dir);
    let mut out = Vec::new();
    store
        .walk(1, |r| {
            out.push((decode_event(r.event_bytes).unwrap(), r.event_bytes.len()));
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

/// Every event of the ledger in `dir`, in seq order.
pub fn events(dir: &Path) -> Vec<Event> {
    events_sized(dir).into_iter().map(|(e, _)| e).collect()
}

/// Fails the test unless the chain of the ledger in `dir` verifies.
pub fn assert_verifies(dir: &Path) {
    let store = open_store(dir);
    assert!(runledger::log::verify::verify(&store).unwrap().is_ok());
}
