//! Audit: what a tenant or an auditor checks, built on the verified chain.
//!
//! - [`merkle`]: the Merkle tree over record hashes, roots and multi-proofs.
//! - [`published`]: published checkpoints (`runledger checkpoint`), checked
//!   by `runledger verify`.
//! - [`export`]: a tenant's cost history with its proof (`runledger export`).
//! - [`verify_export`]: the offline check of such a file (`runledger
//!   verify-export`).
//!
//! Nothing here appends to the log.

pub mod export;
pub mod merkle;
pub mod published;
pub mod verify_export;
