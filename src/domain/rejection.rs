//! Why an event cannot be appended in the current state.

use super::event::BudgetStatus;
use super::ids::{RunId, TaskId, TenantId, WorkerId};
use super::money::Micros;
use super::task_status::TaskStatus;
use super::time::Timestamp;

/// An event that is impossible in the current state. The message says what
/// and which id; the caller adds where (line, seq). A limit's variant
/// carries the limit it passed (`max`, one of [`super::limits`]'s
/// constants): the checks import this type, so it does not import them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("tenant `{0}` is not registered")]
    UnknownTenant(TenantId),
    #[error("tenant `{0}` is already registered")]
    DuplicateTenant(TenantId),
    #[error("run `{0}` was never started")]
    UnknownRun(RunId),
    #[error("run `{0}` is already started")]
    DuplicateRun(RunId),
    #[error("run `{0}` is already finished")]
    RunFinished(RunId),
    #[error("run `{run}` cannot finish: its tasks still hold {reserved} reserved")]
    RunHoldsReservation { run: RunId, reserved: Micros },
    #[error("task `{0}` was never submitted")]
    UnknownTask(TaskId),
    #[error("task `{0}` is already submitted")]
    DuplicateTask(TaskId),
    #[error("task `{task}` depends on `{dep}`, which was never submitted")]
    UnknownDependency { task: TaskId, dep: TaskId },
    #[error("task `{0}` depends on itself")]
    SelfDependency(TaskId),
    #[error("task `{task}` names dependency `{dep}` twice")]
    DuplicateDependency { task: TaskId, dep: TaskId },
    #[error("`deps` names {count} tasks, over DEPS_MAX ({max})")]
    TooManyDeps { count: usize, max: usize },
    #[error("the event's bytes would not decode ({what}): it is refused rather than written")]
    Undecodable { what: String },
    #[error("task `{task}` belongs to tenant `{owner}`, not `{tenant}`")]
    ForeignTask {
        task: TaskId,
        owner: TenantId,
        tenant: TenantId,
    },
    #[error("cannot {action} task `{task}`: it is {status}")]
    InvalidTransition {
        task: TaskId,
        action: &'static str,
        status: TaskStatus,
    },
    #[error("task `{task}` is leased by worker `{holder}`, not `{worker}`")]
    WrongWorker {
        task: TaskId,
        holder: WorkerId,
        worker: WorkerId,
    },
    #[error("task `{task}`: attempt {got} is out of order, expected {expected}")]
    WrongAttempt {
        task: TaskId,
        expected: u32,
        got: u32,
    },
    #[error("task `{task}`: attempt {attempt} exceeds max_attempts {max_attempts}")]
    AttemptsExhausted {
        task: TaskId,
        attempt: u32,
        max_attempts: u32,
    },
    #[error("`{field}` must not be negative (got {value})")]
    Negative { field: &'static str, value: i64 },
    #[error("`{field}` must not be empty")]
    Empty { field: &'static str },
    #[error(
        "reserving {amount} for task `{task}` would exceed the budget of tenant `{tenant}`: \
         spent {spent} + reserved {reserved} + {amount} > budget {budget}"
    )]
    BudgetExceeded {
        tenant: TenantId,
        task: TaskId,
        amount: Micros,
        spent: Micros,
        reserved: Micros,
        budget: Micros,
    },
    #[error("cannot release {amount} for task `{task}`: only {reserved} is reserved")]
    ReleaseExceedsReservation {
        task: TaskId,
        amount: Micros,
        reserved: Micros,
    },
    #[error("tenant `{tenant}`: status change claims {claimed}, but the ledger says {actual}")]
    StatusMismatch {
        tenant: TenantId,
        claimed: BudgetStatus,
        actual: BudgetStatus,
    },
    #[error(
        "budget_overrun of {claimed} for task `{task}` has no cost behind it: the same append \
         records only {behind} of spend past the task's reservation"
    )]
    OverrunWithoutCost {
        task: TaskId,
        claimed: Micros,
        behind: Micros,
    },
    #[error(
        "budget_overrun of {amount} for tenant `{tenant}` has no cost behind it: spent {spent} + \
         reserved {reserved} exceed the budget {budget} by only {behind}"
    )]
    TenantOverrunWithoutCost {
        tenant: TenantId,
        amount: Micros,
        spent: Micros,
        reserved: Micros,
        budget: Micros,
        behind: Micros,
    },
    #[error("task `{0}` is not optional: only optional nodes can be skipped")]
    NotOptional(TaskId),
    #[error("an amount overflows 64-bit micros")]
    Overflow,
    #[error("`{field}` is {bytes} bytes, over ID_BYTES_MAX ({max} bytes)")]
    IdTooLong {
        field: &'static str,
        bytes: usize,
        max: usize,
    },
    #[error("`{field}` holds a control character (U+{code:04X}); ids are printable text")]
    ControlCharacter { field: &'static str, code: u32 },
    #[error("`{field}` is {bytes} bytes of JSON, over PARAMS_BYTES_MAX ({max} bytes)")]
    ParamsTooLarge {
        field: &'static str,
        bytes: usize,
        max: usize,
    },
    #[error("the event encodes to {bytes} bytes, over EVENT_BYTES_MAX ({max} bytes)")]
    EventTooLarge { bytes: usize, max: usize },
    #[error(
        "`{field}` {at} is outside 1970-01-01T00:00:00Z..=9999-12-31T23:59:59.999999Z \
         (TIME_MICROS_MIN..=TIME_MICROS_MAX)"
    )]
    TimeOutOfRange { field: &'static str, at: Timestamp },
}

impl std::fmt::Display for BudgetStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
