//! The pure core: ids, money, time, the event vocabulary and the
//! projections folded from it.
//!
//! `domain` knows nothing of sled, tokio, Redis, files or the system clock:
//! every input (time, seq) arrives as a value, so unit tests need no runtime
//! and no disk, and the live path and replay fold through the same code.
//! Nor does it know platform floating point: a decision is integer
//! arithmetic, the same on every machine (tests may use floats to check).

#![deny(clippy::float_arithmetic)]

pub mod activity;
pub mod budget;
pub mod command;
pub mod cost;
pub mod cost_agent;
pub mod decide;
pub mod draw;
pub mod event;
pub mod governance;
pub mod ids;
pub mod journal;
pub mod learning;
pub mod limits;
pub mod money;
pub mod period;
pub mod policy;
pub mod queue;
pub mod rejection;
pub mod scheduler;
pub mod sim;
pub mod state;
pub mod task_status;
pub mod time;

pub use event::{
    BudgetPeriod, BudgetStatus, Category, Decision, Event, LearningIntensity, ParamError, Params,
    Priority,
};
pub use ids::{PipelineId, RunId, TaskId, TenantId, WorkerId};
pub use money::Micros;
pub use policy::Policy;
pub use rejection::Rejection;
pub use state::{Digests, State};
pub use time::Timestamp;
