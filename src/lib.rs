//! runledger: a multi-tenant task engine whose every state change is an
//! event in an append-only, blake3 hash-chained ledger stored in sled.
//!
//! Crate map, from the core out (ARCHITECTURE.md has the details):
//! - [`domain`]: the pure core — ids, integer money, time, the event
//!   vocabulary, the limits and rejections, the deciders' thresholds
//!   (`policy`), the seeded draws (`draw`), the cost model (`cost`), the
//!   projections with `validate` / `evolve` and digests, and the deciders
//!   (`decide`, governance, cost agent, learning, scheduler, the `sim`
//!   handler's outcomes). No IO, no clock; its modules import downward,
//!   never in a circle (`tests/layout.rs`).
//! - [`log`]: the ledger — records, the hash chain, the versioned codec,
//!   frames, the data directory, the sled store, the group-commit writer
//!   and the typed reads it answers (`log::query`),
//!   replay (folding a stored log back into projections) and chain
//!   verification.
//! - [`wire`]: the JSON line format of `ingest` and `log --json`.
//! - [`workload`]: workload files (TOML), parsed and checked before
//!   anything is appended; the tenant shard rule.
//! - [`demo`]: the built-in demo workload.
//! - [`runtime`]: executing workloads against the ledger — the run setup
//!   both executors share (`setup`: options and the run-id rule,
//!   registration, arrivals, backpressure), the simulated executor, the
//!   real-time one, the task queues (in memory, Redis) and the handlers
//!   (`sim`, `exec`).
//! - [`views`]: serializable read models of the projections (the `--json`
//!   contract) and the text tables.
//! - [`artifacts`]: the governance artifact files, rendered from the log.
//! - [`audit`]: questions asked of a stored ledger — `replay --check`,
//!   `diff` of two runs, run failures, Merkle checkpoints, tenant cost
//!   exports and their offline check.
//! - [`bench`](mod@bench): the benchmarks behind `runledger bench`.
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
pub mod runtime;
pub mod views;
pub mod wire;
pub mod workload;
