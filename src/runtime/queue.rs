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

use crate::domain::governance::{Admitter, Gate, Settler, Start, period_resets};
use crate::domain::learning::Learner;
use crate::domain::limits::{ERROR_BYTES_MAX, EVENT_BYTES_MAX, PARAMS_BYTES_MAX};
use crate::domain::queue::{QueueCounts, TaskStatus};
use crate::domain::scheduler::{Lost, QueuePolicy, dependants_to_cancel, draw, next_ready_many};
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

/// Puts ready `task` through the gate on `state` (the cost agent, the
/// learning choice, admission): the events to record — with its
/// reservation when it runs — and the params it runs with, if it runs now.
/// `gone` holds the tasks this step already ended.
pub(crate) fn admit(
    gate: &mut Gate,
    state: &crate::domain::State,
    task: &TaskId,
    gone: &mut std::collections::BTreeSet<TaskId>,
) -> (Vec<Event>, Option<Params>) {
    let mut events = Vec::new();
    let start = gate.start(state, &mut Admitter::new(state), task, gone, &mut events);
    let (Start::Run { params, reserve }, Some(t)) = (start, state.queue.get(task)) else {
        return (events, None);
    };
    if reserve > Micros::ZERO {
        events.push(Event::CostReserved {
            tenant: t.tenant.clone(),
            task: task.clone(),
            amount_micros: reserve,
        });
    }
    (events, Some(params))
}

/// The outputs of `deps`, for a reduce step's attempt.
pub(crate) fn inputs_of(state: &crate::domain::State, deps: &[TaskId]) -> Vec<(TaskId, Params)> {
    deps.iter()
        .filter_map(|d| state.queue.get(d).map(|p| (d.clone(), p.output.clone())))
        .collect()
}

/// One attempt of a task by a worker: what a result is about.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    pub task: &'a TaskId,
    pub run: &'a RunId,
    pub worker: &'a WorkerId,
    pub attempt: u32,
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

/// Whether `attempt` is still the task's current one: leased, by this
/// worker, at this attempt. A result of any other attempt is a duplicate
/// or comes too late (its lease expired, the task was leased again) and
/// is dropped: results count once per (task, attempt).
pub fn is_current(state: &crate::domain::State, attempt: Attempt<'_>) -> bool {
    state.queue.get(attempt.task).is_some_and(|t| {
        t.status == TaskStatus::Leased
            && t.attempts == attempt.attempt
            && t.worker.as_ref() == Some(attempt.worker)
    })
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
        if !is_current(state, attempt) {
            return None;
        }
        // Costs it cannot take: `Failed::events` says why.
        let refusal = answer_refusal(attempt, &output).or_else(|| {
            cost_refusal(state, attempt.task, costs).map(|_| "the result was refused".to_owned())
        });
        if let Some(error) = refusal {
            let failed = Failed {
                attempt,
                error,
                timed_out: false,
                costs,
            };
            return failed
                .events(state, now, policy, seed)
                .map(|(events, outcome)| (events, Some(outcome)));
        }
        let mut settler = Settler::new(state);
        let mut events = settler.settle(attempt.task, costs);
        events.extend(Learner::new(&state.learning).after_attempt(
            attempt.task,
            reward_of(&output),
            total(costs),
            |tenant| settler.utilisation_bp(tenant),
        ));
        events.push(Event::TaskAcked {
            task: attempt.task.clone(),
            worker: attempt.worker.clone(),
            output,
        });
        Some((events, None))
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

/// Why the ledger cannot take `costs` as costs of `task`'s tenant, if it
/// cannot (an amount past 64-bit micros).
fn cost_refusal(
    state: &crate::domain::State,
    task: &TaskId,
    costs: &[(Category, Micros)],
) -> Option<crate::domain::Rejection> {
    let tenant = state
        .queue
        .get(task)
        .and_then(|t| state.tenants.get(&t.tenant))?;
    // What settlement posts: the positive amounts.
    let posted = costs.iter().copied().filter(|(_, amount)| amount.0 > 0);
    tenant.can_incur(posted).err()
}

/// `error` cut to [`ERROR_BYTES_MAX`] bytes (on a character boundary),
/// saying so.
fn bounded_error(mut error: String) -> String {
    if error.len() <= ERROR_BYTES_MAX {
        return error;
    }
    let note = format!(" … (cut: {} bytes, more than ERROR_BYTES_MAX)", error.len());
    let mut cut = ERROR_BYTES_MAX - note.len();
    while !error.is_char_boundary(cut) {
        cut -= 1;
    }
    error.truncate(cut);
    error.push_str(&note);
    error
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
    /// The cost agent and admission in front of every lease.
    gate: std::sync::Arc<std::sync::Mutex<Gate>>,
}

impl MemoryQueue {
    pub fn new(ledger: Ledger, policy: QueuePolicy, seed: u64) -> Self {
        MemoryQueue {
            ledger,
            policy,
            seed,
            poll: Duration::from_millis(2),
            gate: std::sync::Arc::new(std::sync::Mutex::new(Gate::new(seed))),
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

fn total(costs: &[(Category, Micros)]) -> Micros {
    Micros(
        costs
            .iter()
            .map(|c| c.1.0.max(0))
            .fold(0, i64::saturating_add),
    )
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
            let (run_id, worker_id, policy) = (run.clone(), worker.clone(), self.policy);
            let gate = std::sync::Arc::clone(&self.gate);
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
                        &policy,
                        window,
                        |t| t.run == run_id,
                    )
                    .into_iter()
                    .cloned()
                    .collect();
                    let deadline = now.saturating_add_micros(lease_micros);
                    let mut leases = Vec::with_capacity(picked.len());
                    let mut gone = std::collections::BTreeSet::new();
                    let mut gate = gate
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    // One task at a time, each decided on the state its
                    // predecessors' events left.
                    for task in &picked {
                        if leases.len() >= max.max(1) {
                            break;
                        }
                        if gone.contains(task) {
                            continue;
                        }
                        let state = draft.state();
                        let (mut events, runs) = admit(&mut gate, state, task, &mut gone);
                        let lease = match (runs, state.queue.get(task)) {
                            (Some(params), Some(t)) => {
                                let inputs = inputs_of(state, &t.deps);
                                let lease = Lease {
                                    task: task.clone(),
                                    run: t.run.clone(),
                                    tenant: t.tenant.clone(),
                                    worker: worker_id.clone(),
                                    attempt: t.attempts + 1,
                                    deadline,
                                    handler: t.handler.clone(),
                                    params,
                                    inputs,
                                };
                                events.push(Event::TaskDequeued {
                                    task: task.clone(),
                                    worker: worker_id.clone(),
                                    attempt: lease.attempt,
                                    lease_deadline: Some(deadline),
                                });
                                Some(lease)
                            }
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
            let expired: Vec<TaskId> = draft
                .state()
                .queue
                .sorted()
                .into_iter()
                .filter(|(_, t)| {
                    t.status == TaskStatus::Leased && t.lease_deadline.is_some_and(|d| d < now)
                })
                .map(|(id, _)| id.clone())
                .collect();
            // Each expiry may dead-letter and cancel: each is decided on
            // the state the ones before it left.
            for task in &expired {
                for event in crate::domain::scheduler::expire_lease(draft.state(), task, lost) {
                    if draft.push(event).is_err() {
                        return 0;
                    }
                }
            }
            expired.len()
        })
        .await?;
    Ok(n)
}

/// Pushes the budget period resets due now, first in a step, so that no
/// decision of the step is made on a period that is over. False if the
/// step was dropped.
pub(crate) fn turn_periods(draft: &mut Draft<'_>) -> bool {
    let resets = period_resets(draft.state(), draft.now());
    resets.into_iter().all(|event| draft.push(event).is_ok())
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
            attempt: lease,
            error,
            timed_out,
            costs,
        } = self;
        if !is_current(state, lease) {
            return None;
        }
        // Costs the ledger cannot take are not recorded, saying so: the
        // failure is.
        let (error, costs) = match cost_refusal(state, lease.task, costs) {
            Some(rejection) => (
                format!("{error} (its costs were not recorded: {rejection})"),
                &[][..],
            ),
            None => (error, costs),
        };
        let error = bounded_error(error);
        let mut settler = Settler::new(state);
        let mut events = settler.settle(lease.task, costs);
        // A failed attempt teaches the policy too: reward 0.
        events.extend(Learner::new(&state.learning).after_attempt(
            lease.task,
            0,
            total(costs),
            |tenant| settler.utilisation_bp(tenant),
        ));
        let max_attempts = state.queue.get(lease.task).map_or(1, |t| t.max_attempts);
        if lease.attempt < max_attempts {
            let key = lease.task.draw_key(lease.run);
            let delay =
                policy.retry_delay_micros(lease.attempt, draw(seed, "retry", key, lease.attempt));
            let at = now.saturating_add_micros(delay);
            events.push(Event::TaskNacked {
                task: lease.task.clone(),
                worker: lease.worker.clone(),
                error,
                retry_at: Some(at),
                timed_out,
            });
            return Some((events, NackOutcome::RetryAt(at)));
        }
        let reason = format!(
            "{} of {max_attempts} attempts failed, last: {error}",
            lease.attempt
        );
        events.push(Event::TaskNacked {
            task: lease.task.clone(),
            worker: lease.worker.clone(),
            error,
            retry_at: None,
            timed_out,
        });
        events.push(Event::TaskDeadLettered {
            task: lease.task.clone(),
            reason,
        });
        // Dependants of the task as it is now (the NACK changes nothing about them).
        let doomed = dependants_to_cancel(state, lease.task);
        let cancelled = doomed.len();
        for child in doomed {
            events.push(Event::TaskCancelled {
                task: child,
                reason: format!("parent `{}` was dead-lettered", lease.task),
            });
        }
        Some((events, NackOutcome::DeadLettered { cancelled }))
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

    #[test]
    fn a_long_error_is_cut_on_a_character_boundary_saying_so() {
        assert_eq!(bounded_error("short".into()), "short");
        let exact = "x".repeat(ERROR_BYTES_MAX);
        assert_eq!(bounded_error(exact.clone()), exact);
        let cut = bounded_error("é".repeat(ERROR_BYTES_MAX));
        assert!(cut.len() <= ERROR_BYTES_MAX);
        assert!(
            cut.starts_with("éé") && cut.contains("ERROR_BYTES_MAX"),
            "{cut}"
        );
    }
}
