//! Audit of stored ledgers: questions asked of the log after the fact.
//!
//! - [`check`]: `replay --check`, every recorded decision run again on the
//!   state just before it and compared.
//! - [`diff`]: align two runs of the same workload and report the first
//!   divergence and a summary of what differs (tasks, money, decisions).
//!
//! Nothing here appends: every module reads the store (checking hashes on
//! the way) and works on decoded records.

pub mod check;
pub mod diff;
