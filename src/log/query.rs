//! The reads the ledger's writer answers: a closed vocabulary of typed
//! queries ([`Query`]) and their answers ([`Answer`]), and the typed
//! methods on [`Ledger`] that ask them.
//!
//! A query is data: the writer answers it with [`answer`], plain code over
//! its live state and head, when the message is handled — no caller code
//! ever runs on the writer's thread. How an answer is handed over (at once,
//! or under `always` once every group before it is durable) is the
//! writer's.
//!
//! Each read a caller makes has its own variant, answered with what it
//! needs and no more: a read polled in a loop (queue counts, a run's
//! progress) costs a few counters, never a copy of the state. Only
//! [`Query::State`] copies the whole projection, for the few callers that
//! read all of it once (the start and end of a run, tests).

use super::store::Head;
use super::writer::{AppendError, Ledger};
use crate::domain::activity::{RunProgress, RunSummary};
use crate::domain::budget::Tenant;
use crate::domain::governance::admitted;
use crate::domain::queue::QueueCounts;
use crate::domain::{Digests, RunId, State, TaskId, TenantId, Timestamp};

/// A read of the live projection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// The head: the last record's seq and hash.
    Head,
    /// A copy of the whole projection, with the head it is at.
    State,
    /// Tasks by status.
    QueueCounts,
    /// A run's counters: tasks submitted and ended, attempts running.
    RunProgress(RunId),
    /// What a run's report is made of, once it finished: its summary, the
    /// projection digests, the head and the last record's time.
    RunEnd(RunId),
    /// A run's tasks admitted for dispatch (a reservation or a learning
    /// choice recorded) and not started, in queue order.
    AdmittedTasks(RunId),
    /// A tenant.
    Tenant(TenantId),
    /// The run to resume: the one named, else the running run started
    /// last; with its seed and recorded workload.
    ResumeTarget(Option<RunId>),
    /// A free id for a run: `base`, else the first of `base-2`, `base-3`,
    /// ... no run has yet.
    UnusedRunId(String),
}

/// The answer to a [`Query`]: the variant of the same name.
#[derive(Clone, Debug)]
pub enum Answer {
    Head(Head),
    State(Box<(State, Head)>),
    QueueCounts(QueueCounts),
    RunProgress(Option<RunProgress>),
    RunEnd(Box<RunEnd>),
    AdmittedTasks(Vec<TaskId>),
    Tenant(Option<Tenant>),
    ResumeTarget(Option<ResumeTarget>),
    UnusedRunId(RunId),
}

/// What [`Query::RunEnd`] answers.
#[derive(Clone, Debug)]
pub struct RunEnd {
    /// `None` when the ledger holds no such run.
    pub summary: Option<RunSummary>,
    pub digests: Digests,
    pub head: Head,
    pub last_at: Timestamp,
}

/// What [`Query::ResumeTarget`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeTarget {
    pub run: RunId,
    pub seed: u64,
    /// The workload text the run recorded, if it recorded one.
    pub workload: Option<String>,
}

/// Answers `query` on the live `state` at `head` (the writer's; also
/// correct on any state with its head).
pub(super) fn answer(state: &State, head: Head, query: Query) -> Answer {
    match query {
        Query::Head => Answer::Head(head),
        Query::State => Answer::State(Box::new((state.clone(), head))),
        Query::QueueCounts => Answer::QueueCounts(state.queue.counts()),
        Query::RunProgress(run) => {
            Answer::RunProgress(state.runs.get(&run).map(RunSummary::progress))
        }
        Query::RunEnd(run) => Answer::RunEnd(Box::new(RunEnd {
            summary: state.runs.get(&run).cloned(),
            digests: state.digests(),
            head,
            last_at: state.last_at,
        })),
        Query::AdmittedTasks(run) => Answer::AdmittedTasks(
            state
                .queue
                .sorted()
                .into_iter()
                .filter(|(id, t)| t.run == run && admitted(state, id))
                .map(|(id, _)| id.clone())
                .collect(),
        ),
        Query::Tenant(tenant) => Answer::Tenant(state.tenants.get(&tenant).cloned()),
        Query::ResumeTarget(run) => {
            let summary = match &run {
                Some(run) => state.runs.get(run),
                None => state.runs.latest_running(),
            };
            Answer::ResumeTarget(summary.map(|s| ResumeTarget {
                run: s.run.clone(),
                seed: s.seed,
                workload: state.workload_of(&s.run).map(str::to_owned),
            }))
        }
        Query::UnusedRunId(base) => Answer::UnusedRunId(state.runs.unused_id(&base)),
    }
}

impl Answer {
    /// The variant's name, for a mismatch report.
    fn name(&self) -> &'static str {
        match self {
            Answer::Head(_) => "Head",
            Answer::State(_) => "State",
            Answer::QueueCounts(_) => "QueueCounts",
            Answer::RunProgress(_) => "RunProgress",
            Answer::RunEnd(_) => "RunEnd",
            Answer::AdmittedTasks(_) => "AdmittedTasks",
            Answer::Tenant(_) => "Tenant",
            Answer::ResumeTarget(_) => "ResumeTarget",
            Answer::UnusedRunId(_) => "UnusedRunId",
        }
    }
}

/// Stops on an answer of another variant than its query's: [`answer`]
/// pairs them by name, so this is a bug of the writer, never of the input.
fn mismatch(query: &str, answer: &Answer) -> ! {
    panic!(
        "the writer answered a `{query}` query with a `{}` answer",
        answer.name()
    )
}

/// Typed reads: each sends one [`Query`] and returns its answer's value.
/// The blocking ones are for threads outside an async runtime; the
/// `_async` ones yield while the writer's inbox is full.
impl Ledger {
    pub fn head(&self) -> Result<Head, AppendError> {
        match self.query(Query::Head)? {
            Answer::Head(head) => Ok(head),
            other => mismatch("Head", &other),
        }
    }

    pub async fn head_async(&self) -> Result<Head, AppendError> {
        match self.query_async(Query::Head).await? {
            Answer::Head(head) => Ok(head),
            other => mismatch("Head", &other),
        }
    }

    /// A copy of the whole live state and its head: for a read of all of
    /// it, never in a loop.
    pub fn state(&self) -> Result<(State, Head), AppendError> {
        match self.query(Query::State)? {
            Answer::State(state) => Ok(*state),
            other => mismatch("State", &other),
        }
    }

    /// [`Ledger::state`] for async code.
    pub async fn state_async(&self) -> Result<(State, Head), AppendError> {
        match self.query_async(Query::State).await? {
            Answer::State(state) => Ok(*state),
            other => mismatch("State", &other),
        }
    }

    pub fn queue_counts(&self) -> Result<QueueCounts, AppendError> {
        match self.query(Query::QueueCounts)? {
            Answer::QueueCounts(counts) => Ok(counts),
            other => mismatch("QueueCounts", &other),
        }
    }

    pub async fn queue_counts_async(&self) -> Result<QueueCounts, AppendError> {
        match self.query_async(Query::QueueCounts).await? {
            Answer::QueueCounts(counts) => Ok(counts),
            other => mismatch("QueueCounts", &other),
        }
    }

    /// `None` when the ledger holds no such run.
    pub fn run_progress(&self, run: &RunId) -> Result<Option<RunProgress>, AppendError> {
        match self.query(Query::RunProgress(run.clone()))? {
            Answer::RunProgress(progress) => Ok(progress),
            other => mismatch("RunProgress", &other),
        }
    }

    /// [`Ledger::run_progress`] for async code.
    pub async fn run_progress_async(
        &self,
        run: &RunId,
    ) -> Result<Option<RunProgress>, AppendError> {
        match self.query_async(Query::RunProgress(run.clone())).await? {
            Answer::RunProgress(progress) => Ok(progress),
            other => mismatch("RunProgress", &other),
        }
    }

    /// See [`Query::RunEnd`]; it digests the whole state.
    pub async fn run_end_async(&self, run: &RunId) -> Result<RunEnd, AppendError> {
        match self.query_async(Query::RunEnd(run.clone())).await? {
            Answer::RunEnd(end) => Ok(*end),
            other => mismatch("RunEnd", &other),
        }
    }

    /// See [`Query::AdmittedTasks`].
    pub async fn admitted_tasks_async(&self, run: &RunId) -> Result<Vec<TaskId>, AppendError> {
        match self.query_async(Query::AdmittedTasks(run.clone())).await? {
            Answer::AdmittedTasks(tasks) => Ok(tasks),
            other => mismatch("AdmittedTasks", &other),
        }
    }

    /// `None` when the tenant is not registered.
    pub fn tenant(&self, tenant: &TenantId) -> Result<Option<Tenant>, AppendError> {
        match self.query(Query::Tenant(tenant.clone()))? {
            Answer::Tenant(tenant) => Ok(tenant),
            other => mismatch("Tenant", &other),
        }
    }

    /// [`Ledger::tenant`] for async code.
    pub async fn tenant_async(&self, tenant: &TenantId) -> Result<Option<Tenant>, AppendError> {
        match self.query_async(Query::Tenant(tenant.clone())).await? {
            Answer::Tenant(tenant) => Ok(tenant),
            other => mismatch("Tenant", &other),
        }
    }

    /// See [`Query::ResumeTarget`]; `None` when there is no such run.
    pub fn resume_target(&self, run: Option<&RunId>) -> Result<Option<ResumeTarget>, AppendError> {
        match self.query(Query::ResumeTarget(run.cloned()))? {
            Answer::ResumeTarget(target) => Ok(target),
            other => mismatch("ResumeTarget", &other),
        }
    }

    /// See [`Query::UnusedRunId`].
    pub fn unused_run_id(&self, base: &str) -> Result<RunId, AppendError> {
        match self.query(Query::UnusedRunId(base.to_owned()))? {
            Answer::UnusedRunId(run) => Ok(run),
            other => mismatch("UnusedRunId", &other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Event;

    /// The name of a query's variant, as its `Debug` spells it.
    fn name(query: &Query) -> String {
        let text = format!("{query:?}");
        text.split('(').next().unwrap_or_default().to_owned()
    }

    #[test]
    fn answer_is_the_variant_of_its_query() {
        let mut state = State::new();
        state.evolve(
            1,
            Timestamp(1),
            Event::RunStarted {
                run: "r".into(),
                seed: 7,
                config_hash: String::new(),
            },
        );
        let head = Head {
            seq: 1,
            hash: blake3::hash(b"head"),
        };
        let queries = [
            Query::Head,
            Query::State,
            Query::QueueCounts,
            Query::RunProgress("r".into()),
            Query::RunEnd("r".into()),
            Query::AdmittedTasks("r".into()),
            Query::Tenant("t".into()),
            Query::ResumeTarget(None),
            Query::UnusedRunId("r".to_owned()),
        ];
        for query in queries {
            let expected = name(&query);
            let answer = answer(&state, head, query);
            assert_eq!(answer.name(), expected);
        }
    }
}
