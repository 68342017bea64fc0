//! Opening the ledger for a command, and what its read errors mean for
//! the exit code: a missing ledger is bad input (exit 2, with a hint), a
//! broken chain or index a failed check (exit 1).

use std::path::Path;

use anyhow::bail;

use super::exit::{CheckFailed, Damaged};
use crate::domain::RunId;
use crate::log::replay::{self, Folded};
use crate::log::{Durability, Ledger, LedgerOptions, OpenError, Store, StoreError, WalkError};

/// Opens the ledger in `data` to read it: in place, or a scratch copy when
/// its disk is full or read-only (see [`Store::open_read`]).
pub(super) fn open_store(data: &Path) -> anyhow::Result<Store> {
    missing_hint(Store::open_read(data))
}

/// Opens the ledger in `data` in place to write into it (never creating it).
pub(super) fn open_store_to_write(data: &Path) -> anyhow::Result<Store> {
    missing_hint(Store::open(data, false))
}

fn missing_hint<T>(opened: Result<T, StoreError>) -> anyhow::Result<T> {
    match opened {
        Ok(opened) => Ok(opened),
        Err(StoreError::Missing(dir)) => bail!(
            "no ledger at {} (create one with `runledger ingest FILE`, or pass --data DIR)",
            dir.display()
        ),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn walk_error(error: WalkError) -> anyhow::Error {
    match error {
        WalkError::Break(b) => Damaged(b).into(),
        WalkError::Index(b) => CheckFailed(format!(
            "{b}; `runledger verify` names the first seq it misses, \
             `runledger verify --repair-indices` rebuilds the indices from the log"
        ))
        .into(),
        WalkError::Storage(e) => anyhow::Error::new(e).context("cannot read the ledger"),
    }
}

pub(super) fn fold(data: &Path, run: Option<&str>) -> anyhow::Result<Folded> {
    let store = open_store(data)?;
    let run = run.map(|r| RunId(r.to_owned()));
    replay::fold(&store, run.as_ref()).map_err(walk_error)
}

/// Opens the ledger in `data` to append (with `create`, making a new one
/// when the directory is absent or empty).
pub(super) fn open_ledger(
    data: &Path,
    durability: Durability,
    create: bool,
) -> anyhow::Result<Ledger> {
    let options = LedgerOptions {
        durability,
        checkpoint_every: 1_000_000,
        create,
    };
    match Ledger::open(data, options) {
        Ok(ledger) => Ok(ledger),
        Err(OpenError::Damaged(e)) => Err(walk_error(e)),
        Err(OpenError::Store(e)) => missing_hint(Err(e)),
    }
}
