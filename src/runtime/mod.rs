//! The runtime: executes workloads against the ledger.
//!
//! `setup` is what both executors share: the run's options, id rule,
//! report and errors, tenant registration, arrivals and the
//! `task_submitted` events of each pipeline run, the backpressure maths.
//! `sim` is the discrete-event executor for simulated workloads: one
//! thread, a min-heap of (virtual time, order) timers, the deciders of the
//! core, and one ledger append per step — deterministic, so the same
//! workload and seed give the same ledger, head hash included. `live` is
//! the real-time executor (tokio, real handlers) on the in-memory `queue`
//! or on `redis`; `handler` runs an attempt's handler.

pub mod handler;
pub mod live;
pub mod queue;
pub mod redis;
pub mod setup;
pub mod sim;

pub use setup::{RunError, RunOptions, RunReport};
pub use sim::run_simulated;
