//! Audit of stored ledgers: questions asked of the log after the fact, by
//! runledger's users and by a tenant's auditor.
//!
//! - [`check`]: `replay --check`, every recorded decision run again on the
//!   state just before it and compared.
//! - [`diff`]: align two runs of the same workload and report the first
//!   divergence and a summary of what differs (tasks, money, decisions).
//! - [`merkle`]: the Merkle trees (records, tenant subtree, tenants), roots
//!   and multi-proofs.
//! - [`tenants`]: the per-tenant commitment that makes an export complete.
//! - [`published`]: published checkpoints (`runledger checkpoint`), checked
//!   by `runledger verify`.
//! - [`failures`]: a run's dead-lettered tasks grouped by their last error.
//! - [`export`]: a tenant's cost history with its proof (`runledger export`).
//! - [`verify_export`]: the offline check of such a file (`runledger
//!   verify-export`).
//!
//! Nothing here appends to the log: every module reads the store (checking
//! hashes on the way) and works on decoded records.

pub mod check;
pub mod diff;
pub mod export;
pub mod failures;
pub mod merkle;
pub mod published;
pub mod tenants;
pub mod verify_export;
