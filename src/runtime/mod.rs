//! The runtime: executes workloads against the ledger.
//!
//! `sim` is the discrete-event executor for simulated workloads: one
//! thread, a min-heap of (virtual time, order) timers, the deciders of the
//! core, and one ledger append per step — deterministic, so the same
//! workload and seed give the same ledger, head hash included.

pub mod handler;
pub mod live;
pub mod queue;
pub mod redis;
pub mod sim;

pub use sim::{RunOptions, RunReport, run_simulated};
