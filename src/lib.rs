//! runledger: a multi-tenant task engine whose every state change is an
//! event in an append-only, blake3 hash-chained ledger stored in sled.
//!
//! Crate map (see ARCHITECTURE.md):
//! - [`domain`]: the pure core — events, projections, validation, digests.
//! - [`log`]: records, the hash chain, the versioned codec, the sled store,
//!   the group-commit writer and chain verification.
//! - [`replay`]: folding a stored log back into projections.
//! - [`wire`]: the JSON line format of `ingest` and `log --json`.
//! - [`audit`]: Merkle checkpoints, tenant cost exports and their offline check.
//! - [`artifacts`]: the governance artifact files, rendered from the log.
//! - [`audit`]: questions asked of a stored ledger (`diff` of two runs).
//! - [`bench`]: the benchmarks behind `runledger bench ledger|queue|governance`.
//! - [`cli`]: the `runledger` command line.
//! - [`fuzzing`]: the entry points of the fuzz targets and their corpus replay.

#![forbid(unsafe_code)]
#![warn(clippy::all)]

pub mod artifacts;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod demo;
pub mod domain;
pub mod fuzzing;
pub mod log;
pub mod replay;
pub mod runtime;
pub mod views;
pub mod wire;
pub mod workload;
