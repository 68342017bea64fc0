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

use crate::domain::governance::{Admitter, Gate, Settler, Start};
use crate::domain::learning::Learner;
use crate::domain::queue::{QueueCounts, TaskStatus};
use crate::domain::scheduler::{QueuePolicy, dependants_to_cancel, draw, next_ready_many};
use crate::domain::{
    Category, Event, Micros, Params, RunId, TaskId, TenantId, Timestamp, WorkerId,
};
use crate::log::{AppendError, Ledger};

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
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Ledger(#[from] AppendError),
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
    ) -> impl Future<Output = Result<Option<Lease>, QueueError>> + Send;
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
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
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

    async fn dequeue(
        &self,
        run: &RunId,
        worker: &WorkerId,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Lease>, QueueError> {
        Ok(self.dequeue_many(run, worker, 1, lease, wait).await?.pop())
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
                        let mut events = Vec::new();
                        let state = draft.state();
                        let start = gate.start(
                            state,
                            &mut Admitter::new(state),
                            task,
                            &mut gone,
                            &mut events,
                        );
                        let lease = match (start, state.queue.get(task)) {
                            (Start::Run { params, reserve }, Some(t)) => {
                                if reserve > Micros::ZERO {
                                    events.push(Event::CostReserved {
                                        tenant: t.tenant.clone(),
                                        task: task.clone(),
                                        amount_micros: reserve,
                                    });
                                }
                                let inputs = t
                                    .deps
                                    .iter()
                                    .filter_map(|d| {
                                        state.queue.get(d).map(|p| (d.clone(), p.output.clone()))
                                    })
                                    .collect();
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
        self.ledger
            .decide_each(move |draft| {
                // Each result settles on the state the ones before it left.
                for (lease, output, costs) in done {
                    let state = draft.state();
                    let mut settler = Settler::new(state);
                    let mut events = settler.settle(&lease.task, &costs);
                    events.extend(Learner::new(&state.learning).after_attempt(
                        &lease.task,
                        reward_of(&output),
                        total(&costs),
                        |tenant| settler.utilisation_bp(tenant),
                    ));
                    events.push(Event::TaskAcked {
                        task: lease.task,
                        worker: lease.worker,
                        output,
                    });
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

    async fn ack(
        &self,
        lease: &Lease,
        output: Params,
        costs: Vec<(Category, Micros)>,
    ) -> Result<(), QueueError> {
        self.ack_many(vec![(lease.clone(), output, costs)]).await
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
            .decide(move |state, _, now| {
                let mut settler = Settler::new(state);
                let mut events = settler.settle(&lease.task, &costs);
                // A failed attempt teaches the policy too: reward 0.
                events.extend(Learner::new(&state.learning).after_attempt(
                    &lease.task,
                    0,
                    total(&costs),
                    |tenant| settler.utilisation_bp(tenant),
                ));
                let max_attempts = state.queue.get(&lease.task).map_or(1, |t| t.max_attempts);
                if lease.attempt < max_attempts {
                    let delay = policy.retry_delay_micros(
                        lease.attempt,
                        draw(
                            seed,
                            "retry",
                            lease.task.draw_key(&lease.run),
                            lease.attempt,
                        ),
                    );
                    let at = now.saturating_add_micros(delay);
                    events.push(Event::TaskNacked {
                        task: lease.task.clone(),
                        worker: lease.worker.clone(),
                        error,
                        retry_at: Some(at),
                        timed_out,
                    });
                    return (events, NackOutcome::RetryAt(at));
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
                let doomed = dependants_to_cancel(state, &lease.task);
                let cancelled = doomed.len();
                for child in doomed {
                    events.push(Event::TaskCancelled {
                        task: child,
                        reason: format!("parent `{}` was dead-lettered", lease.task),
                    });
                }
                (events, NackOutcome::DeadLettered { cancelled })
            })
            .await?;
        Ok(outcome)
    }

    async fn expire_leases(&self) -> Result<usize, QueueError> {
        let (_, n) = self
            .ledger
            .decide_each(|draft| {
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
                    for event in crate::domain::scheduler::expire_lease(draft.state(), task) {
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

    async fn depth(&self) -> Result<QueueCounts, QueueError> {
        Ok(self
            .ledger
            .query_async(|state, _| state.queue.counts())
            .await?)
    }
}
