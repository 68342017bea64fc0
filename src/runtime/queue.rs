//! The task queue: the `TaskQueue` trait every implementation follows, and
//! `MemoryQueue`, whose state is the ledger's queue projection.
//!
//! Every move is an event decided against the live state and appended in
//! the same step (`Ledger::decide`): a dequeue is a `task_dequeued` with a
//! lease deadline, an ACK posts the task's costs and `task_acked`, a NACK
//! schedules a retry with backoff and seeded jitter or dead-letters the
//! task and cancels its dependants, an expired lease returns the task.
//! Because the state is the projection, a restarted process resumes from
//! the ledger. The trait is shaped for a Redis Streams implementation too:
//! callers only see leases.

use std::future::Future;
use std::time::Duration;

use crate::domain::decide::{self, Answer, Ended, LeaseTo, Rules, Start};
pub use crate::domain::decide::{Attempt, is_current};
use crate::domain::limits::{EVENT_BYTES_MAX, PARAMS_BYTES_MAX};
use crate::domain::queue::QueueCounts;
use crate::domain::scheduler::{Lost, QueuePolicy, next_ready_many};
use crate::domain::{
    Category, Event, Micros, Params, RunId, TaskId, TenantId, Timestamp, WorkerId,
};
use crate::log::{AppendError, Draft, Ledger};

/// A task handed to a worker until its deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub task: TaskId,
    pub run: RunId,
    pub tenant: TenantId,
    pub worker: WorkerId,
    pub attempt: u32,
    pub deadline: Timestamp,
    pub handler: String,
    pub params: Params,
    /// Outputs of the task's parents, for reduce steps.
    pub inputs: Vec<(TaskId, Params)>,
}

/// A finished attempt to ACK: its lease, output and costs.
pub type Done = (Lease, Params, Vec<(Category, Micros)>);

/// What a NACK led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NackOutcome {
    RetryAt(Timestamp),
    /// Out of attempts: dead-lettered, with the dependants it cancelled.
    DeadLettered {
        cancelled: usize,
    },
    /// The lease was no longer current (it expired and the task moved on):
    /// nothing was recorded.
    Stale,
}

/// Puts ready `task` through the gate on `state` ([`decide::start`]
/// without a lease: the Redis queue leases when a worker claims it): the
/// events to record — with its reservation when it runs — and the params it
/// runs with, if it runs now.
pub(crate) fn admit(
    state: &crate::domain::State,
    task: &TaskId,
    rules: &Rules,
) -> (Vec<Event>, Option<Params>) {
    match decide::start(state, task, None, rules) {
        (events, Start::Run { params, .. }) => (events, Some(params)),
        (events, _) => (events, None),
    }
}

/// The outputs of `deps`, for a reduce step's attempt.
pub(crate) fn inputs_of(state: &crate::domain::State, deps: &[TaskId]) -> Vec<(TaskId, Params)> {
    deps.iter()
        .filter_map(|d| state.queue.get(d).map(|p| (d.clone(), p.output.clone())))
        .collect()
}

impl Lease {
    pub fn attempt_of(&self) -> Attempt<'_> {
        Attempt {
            task: &self.task,
            run: &self.run,
            worker: &self.worker,
            attempt: self.attempt,
        }
    }
}

/// A successful attempt to record: its output and what it cost.
pub struct Acked<'a> {
    pub attempt: Attempt<'a>,
    pub output: Params,
    pub costs: &'a [(Category, Micros)],
}

impl Acked<'_> {
    /// The events that record it (settlement, learning, the ACK); `None`
    /// when the attempt is no longer current. An answer the ledger would
    /// refuse is never appended: past a limit of the ledger
    /// ([`answer_refusal`]), or with costs it cannot take (past 64-bit
    /// micros), the attempt is recorded as failed instead, with the reason,
    /// its costs settled when the ledger can take them, and what that led
    /// to. Every queue ends an attempt
    /// through here or [`Failed::events`], whose events the ledger always
    /// accepts on `state`.
    pub fn events(
        self,
        state: &crate::domain::State,
        now: Timestamp,
        policy: &QueuePolicy,
        seed: u64,
    ) -> Option<(Vec<Event>, Option<NackOutcome>)> {
        let Acked {
            attempt,
            output,
            costs,
        } = self;
        let answer = match answer_refusal(attempt, &output) {
            Some(error) => Answer::Failed {
                error,
                timed_out: false,
            },
            None => Answer::Done {
                reward_bp: reward_of(&output),
                output,
            },
        };
        let rules = Rules::new(*policy, seed);
        let (events, ended) = decide::end_attempt(state, attempt, answer, costs, now, &rules)?;
        Some((events, nack_outcome(ended)))
    }
}

/// What a NACK led to, from what the end of an attempt led to (`None` for
/// an ACK).
fn nack_outcome(ended: Ended) -> Option<NackOutcome> {
    match ended {
        Ended::Acked => None,
        Ended::RetryAt(at) => Some(NackOutcome::RetryAt(at)),
        Ended::DeadLettered { cancelled } => Some(NackOutcome::DeadLettered { cancelled }),
    }
}

/// Why a handler's answer cannot be recorded as it is, naming the limit:
/// its output params past [`PARAMS_BYTES_MAX`], or its `task_acked` past
/// [`EVENT_BYTES_MAX`].
pub fn answer_refusal(attempt: Attempt<'_>, output: &Params) -> Option<String> {
    let len = output.as_json().len();
    if len > PARAMS_BYTES_MAX {
        return Some(format!(
            "the answer's output is {len} bytes, more than PARAMS_BYTES_MAX ({PARAMS_BYTES_MAX} bytes)"
        ));
    }
    // The canonical bytes are the three strings, each after a varint
    // length (at most 10 bytes), and a few bytes of tags: encode only when
    // that could pass the limit.
    let most = len + attempt.task.as_str().len() + attempt.worker.as_str().len() + 64;
    if most <= EVENT_BYTES_MAX {
        return None;
    }
    let acked = Event::TaskAcked {
        task: attempt.task.clone(),
        worker: attempt.worker.clone(),
        output: output.clone(),
    };
    let len = crate::log::codec::encode_event(&acked).len();
    (len > EVENT_BYTES_MAX).then(|| {
        format!(
            "the answer's task_acked is {len} bytes, more than EVENT_BYTES_MAX ({EVENT_BYTES_MAX} bytes)"
        )
    })
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Ledger(#[from] AppendError),
    /// The transport between coordinator and workers (Redis) failed.
    #[error(transparent)]
    Transport(TransportError),
}

/// Why the transport failed, and whether retrying can fix it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    pub message: String,
    /// Retrying cannot fix it (e.g. a Redis key of the wrong type).
    pub permanent: bool,
}

/// A queue of tasks with leases. Implementations: [`MemoryQueue`] (the
/// ledger's projection); a Redis Streams queue fits the same calls.
pub trait TaskQueue: Send + Sync {
    /// Submits tasks (`task_submitted` events).
    fn enqueue(&self, tasks: Vec<Event>) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// The next ready task of `run`, leased to `worker` for `lease`; waits
    /// up to `wait` for one.
    fn dequeue(
        &self,
        run: &RunId,
        worker: &WorkerId,
        lease: Duration,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, QueueError>> + Send {
        async move { Ok(self.dequeue_many(run, worker, 1, lease, wait).await?.pop()) }
    }
    /// Up to `max` ready tasks of `run` at once, leased to `worker`.
    fn dequeue_many(
        &self,
        run: &RunId,
        worker: &WorkerId,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Lease>, QueueError>> + Send;
    /// ACKs several attempts in one append.
    fn ack_many(&self, done: Vec<Done>) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// The attempt succeeded: post its costs and ACK it.
    fn ack(
        &self,
        lease: &Lease,
        output: Params,
        costs: Vec<(Category, Micros)>,
    ) -> impl Future<Output = Result<(), QueueError>> + Send {
        async move { self.ack_many(vec![(lease.clone(), output, costs)]).await }
    }
    /// The attempt failed (or timed out): retry later or dead-letter.
    fn nack(
        &self,
        lease: &Lease,
        error: String,
        timed_out: bool,
        costs: Vec<(Category, Micros)>,
    ) -> impl Future<Output = Result<NackOutcome, QueueError>> + Send;
    /// Returns tasks whose lease deadline has passed; how many.
    fn expire_leases(&self) -> impl Future<Output = Result<usize, QueueError>> + Send;
    /// Tasks by state.
    fn depth(&self) -> impl Future<Output = Result<QueueCounts, QueueError>> + Send;
}

/// The in-memory queue: the ledger's queue projection, moved by events.
#[derive(Clone)]
pub struct MemoryQueue {
    ledger: Ledger,
    policy: QueuePolicy,
    seed: u64,
    /// Poll interval while waiting for work.
    poll: Duration,
}

impl MemoryQueue {
    pub fn new(ledger: Ledger, policy: QueuePolicy, seed: u64) -> Self {
        MemoryQueue {
            ledger,
            policy,
            seed,
            poll: Duration::from_millis(2),
        }
    }
}

/// The reward a handler reported in its output (`reward_bp`, 0 to 10,000),
/// else full marks for a success.
fn reward_of(output: &Params) -> i32 {
    output
        .to_value()
        .get("reward_bp")
        .and_then(serde_json::Value::as_i64)
        .map_or(10_000, |r| r.clamp(0, 10_000) as i32)
}

impl TaskQueue for MemoryQueue {
    async fn enqueue(&self, tasks: Vec<Event>) -> Result<(), QueueError> {
        self.ledger
            .append_async(tasks.into_iter().map(Into::into).collect())
            .await?;
        Ok(())
    }

    async fn dequeue_many(
        &self,
        run: &RunId,
        worker: &WorkerId,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let give_up = tokio::time::Instant::now() + wait;
        let lease_micros = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
        loop {
            let (run_id, worker_id) = (run.clone(), worker.clone());
            let rules = Rules::new(self.policy, self.seed);
            let (_, leases) = self
                .ledger
                .decide_each(move |draft| {
                    if !turn_periods(draft) {
                        return Vec::new();
                    }
                    let now = draft.now();
                    let window = max.max(1) * 2 + 16;
                    let picked: Vec<TaskId> = next_ready_many(
                        draft.state(),
                        now,
                        draft.head().seq,
                        &rules.queue,
                        window,
                        |t| t.run == run_id,
                    )
                    .into_iter()
                    .cloned()
                    .collect();
                    let deadline = now.saturating_add_micros(lease_micros);
                    let mut leases = Vec::with_capacity(picked.len());
                    // One task at a time, each decided on the state its
                    // predecessors' events left.
                    for task in &picked {
                        if leases.len() >= max.max(1) {
                            break;
                        }
                        let state = draft.state();
                        let to = LeaseTo {
                            worker: worker_id.clone(),
                            deadline: Some(deadline),
                        };
                        let (events, start) = decide::start(state, task, Some(to), &rules);
                        let lease = match (start, state.queue.get(task)) {
                            (Start::Run { params, .. }, Some(t)) => Some(Lease {
                                task: task.clone(),
                                run: t.run.clone(),
                                tenant: t.tenant.clone(),
                                worker: worker_id.clone(),
                                attempt: t.attempts + 1,
                                deadline,
                                handler: t.handler.clone(),
                                params,
                                inputs: inputs_of(state, &t.deps),
                            }),
                            _ => None,
                        };
                        for event in events {
                            if draft.push(event).is_err() {
                                // The step is dropped whole; the caller
                                // hears why.
                                return Vec::new();
                            }
                        }
                        leases.extend(lease);
                    }
                    leases
                })
                .await?;
            if !leases.is_empty() || tokio::time::Instant::now() >= give_up {
                return Ok(leases);
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn ack_many(&self, done: Vec<Done>) -> Result<(), QueueError> {
        let (policy, seed) = (self.policy, self.seed);
        self.ledger
            .decide_each(move |draft| {
                if !turn_periods(draft) {
                    return;
                }
                // Each result settles on the state the ones before it left;
                // a result of an attempt that is no longer current is dropped.
                for (lease, output, costs) in done {
                    let acked = Acked {
                        attempt: lease.attempt_of(),
                        output,
                        costs: &costs,
                    };
                    let Some((events, _)) = acked.events(draft.state(), draft.now(), &policy, seed)
                    else {
                        tracing::warn!(task = %lease.task, attempt = lease.attempt, "stale ACK dropped");
                        continue;
                    };
                    for event in events {
                        if draft.push(event).is_err() {
                            return;
                        }
                    }
                }
            })
            .await?;
        Ok(())
    }

    async fn nack(
        &self,
        lease: &Lease,
        error: String,
        timed_out: bool,
        costs: Vec<(Category, Micros)>,
    ) -> Result<NackOutcome, QueueError> {
        let (lease, policy, seed) = (lease.clone(), self.policy, self.seed);
        let (_, outcome) = self
            .ledger
            .decide_each(move |draft| {
                if !turn_periods(draft) {
                    return NackOutcome::Stale;
                }
                let failed = Failed {
                    attempt: lease.attempt_of(),
                    error,
                    timed_out,
                    costs: &costs,
                };
                let Some((events, outcome)) =
                    failed.events(draft.state(), draft.now(), &policy, seed)
                else {
                    return NackOutcome::Stale;
                };
                for event in events {
                    if draft.push(event).is_err() {
                        break;
                    }
                }
                outcome
            })
            .await?;
        Ok(outcome)
    }

    async fn expire_leases(&self) -> Result<usize, QueueError> {
        expire_due(&self.ledger, Lost::Release).await
    }

    async fn depth(&self) -> Result<QueueCounts, QueueError> {
        Ok(self
            .ledger
            .query_async(|state, _| state.queue.counts())
            .await?)
    }
}

/// Returns the tasks whose lease deadline has passed, in one ledger step,
/// doing with their attempts' reservations what `lost` says; how many.
pub async fn expire_due(ledger: &Ledger, lost: Lost) -> Result<usize, QueueError> {
    let (_, n) = ledger
        .decide_each(move |draft| {
            if !turn_periods(draft) {
                return 0;
            }
            let now = draft.now();
            decide::expire_leases(draft, lost, |t| t.lease_deadline.is_some_and(|d| d < now))
                .unwrap_or(0)
        })
        .await?;
    Ok(n)
}

/// Pushes the budget period resets due now, first in a step, so that no
/// decision of the step is made on a period that is over. False if the
/// step was dropped.
pub(crate) fn turn_periods(draft: &mut Draft<'_>) -> bool {
    let now = draft.now();
    decide::turn_periods(draft, now).is_ok()
}

/// A failed attempt to record.
pub struct Failed<'a> {
    pub attempt: Attempt<'a>,
    pub error: String,
    pub timed_out: bool,
    pub costs: &'a [(Category, Micros)],
}

impl Failed<'_> {
    /// The events that record it at `now` (settlement, learning, then the
    /// retry, or the dead letter and its cascade) and what it led to;
    /// `None` when the lease is no longer current.
    pub fn events(
        self,
        state: &crate::domain::State,
        now: Timestamp,
        policy: &QueuePolicy,
        seed: u64,
    ) -> Option<(Vec<Event>, NackOutcome)> {
        let Failed {
            attempt,
            error,
            timed_out,
            costs,
        } = self;
        let rules = Rules::new(*policy, seed);
        let answer = Answer::Failed { error, timed_out };
        let (events, ended) = decide::end_attempt(state, attempt, answer, costs, now, &rules)?;
        Some((events, nack_outcome(ended).unwrap_or(NackOutcome::Stale)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_past_a_limit_of_the_ledger_is_refused_naming_it() {
        let (task, run) = (TaskId("r/t".into()), RunId("r".into()));
        let worker = WorkerId("w".into());
        let attempt = Attempt {
            task: &task,
            run: &run,
            worker: &worker,
            attempt: 1,
        };
        let text = |len: usize| Params::from_value(&serde_json::Value::String("x".repeat(len)));
        assert_eq!(answer_refusal(attempt, &text(10)), None);
        assert_eq!(answer_refusal(attempt, &text(PARAMS_BYTES_MAX - 2)), None);
        let refused = answer_refusal(attempt, &text(PARAMS_BYTES_MAX - 1)).unwrap();
        assert!(refused.contains("PARAMS_BYTES_MAX"), "{refused}");
        // A worker id the ledger took in a lease, with an output under its
        // own limit, can still make the ACK too large to decode.
        let huge = WorkerId("w".repeat(EVENT_BYTES_MAX));
        let attempt = Attempt {
            worker: &huge,
            ..attempt
        };
        let refused = answer_refusal(attempt, &text(10)).unwrap();
        assert!(refused.contains("EVENT_BYTES_MAX"), "{refused}");
    }
}
