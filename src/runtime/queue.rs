//! The task queue: the `TaskQueue` trait every implementation follows, and
//! `MemoryQueue`, whose state is the ledger's queue projection.
//!
//! Every move is an event decided against the live state and appended in
//! the same step (`Ledger::commands`): a dequeue is a `task_dequeued` with a
//! lease deadline, an ACK posts the task's costs and `task_acked`, a NACK
//! schedules a retry with backoff and seeded jitter or dead-letters the
//! task and cancels its dependants, an expired lease returns the task.
//! Because the state is the projection, a restarted process resumes from
//! the ledger. The trait is shaped for a Redis Streams implementation too:
//! callers only see leases.

use std::future::Future;
use std::time::Duration;

use crate::domain::command::{Command, Expiring, Outcome};
pub use crate::domain::command::{Lease, inputs_of};
use crate::domain::decide::{Answer, Ended, Rules};
pub use crate::domain::decide::{Attempt, is_current};
use crate::domain::limits::{EVENT_BYTES_MAX, PARAMS_BYTES_MAX};
use crate::domain::queue::QueueCounts;
use crate::domain::scheduler::{Lost, QueuePolicy};
use crate::domain::{Category, Event, Micros, Params, RunId, Timestamp, WorkerId};
use crate::log::{AppendError, Ledger};

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

/// What a worker reports about its attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    Done {
        output: Params,
        costs: Vec<(Category, Micros)>,
    },
    Failed {
        error: String,
        timed_out: bool,
        costs: Vec<(Category, Micros)>,
    },
}

impl Report {
    /// The command that ends `lease`'s attempt with this report. An answer
    /// the ledger would refuse ([`answer_refusal`]) ends it as a failure
    /// naming the limit.
    pub fn settle(&self, lease: &Lease) -> Command {
        let (answer, costs) = match self.clone() {
            Report::Done { output, costs } => (success(lease.attempt_of(), output), costs),
            Report::Failed {
                error,
                timed_out,
                costs,
            } => (Answer::Failed { error, timed_out }, costs),
        };
        Command::Settle {
            attempt: lease.owned_attempt(),
            answer,
            costs,
        }
    }
}

/// A success as the ledger can record it: with the reward its output
/// reports, or a failure naming the limit of the ledger it passes.
pub(crate) fn success(attempt: Attempt<'_>, output: Params) -> Answer {
    match answer_refusal(attempt, &output) {
        Some(error) => Answer::Failed {
            error,
            timed_out: false,
        },
        None => Answer::Done {
            reward_bp: reward_of(&output),
            output,
        },
    }
}

/// What a NACK led to, from what the end of an attempt led to (`None` for
/// an ACK).
pub(crate) fn nack_outcome(ended: Ended) -> Option<NackOutcome> {
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
    /// Leases up to one ready task of `run` to each of `workers`, in one
    /// step, without waiting for work.
    fn dequeue_for(
        &self,
        run: &RunId,
        workers: &[WorkerId],
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<Lease>, QueueError>> + Send {
        async move {
            let mut leases = Vec::new();
            for worker in workers {
                leases.extend(self.dequeue(run, worker, lease, Duration::ZERO).await?);
            }
            Ok(leases)
        }
    }
    /// Records the end of several attempts, each decided on the state the
    /// ones before it left; a report of an attempt that is no longer
    /// current is dropped.
    fn settle_many(
        &self,
        reports: &[(Lease, Report)],
    ) -> impl Future<Output = Result<(), QueueError>> + Send {
        async move {
            for (lease, report) in reports {
                match report.clone() {
                    Report::Done { output, costs } => self.ack(lease, output, costs).await?,
                    Report::Failed {
                        error,
                        timed_out,
                        costs,
                    } => {
                        self.nack(lease, error, timed_out, costs).await?;
                    }
                }
            }
            Ok(())
        }
    }
    /// [`TaskQueue::settle_many`], then [`TaskQueue::dequeue_for`]: in one
    /// step where the queue can.
    fn settle_and_lease(
        &self,
        reports: &[(Lease, Report)],
        run: &RunId,
        workers: &[WorkerId],
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<Lease>, QueueError>> + Send {
        async move {
            if !reports.is_empty() {
                self.settle_many(reports).await?;
            }
            if workers.is_empty() {
                return Ok(Vec::new());
            }
            self.dequeue_for(run, workers, lease).await
        }
    }
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
    rules: Rules,
    /// Poll interval while waiting for work.
    poll: Duration,
}

impl MemoryQueue {
    pub fn new(ledger: Ledger, policy: QueuePolicy, seed: u64) -> Self {
        MemoryQueue {
            ledger,
            rules: Rules::new(policy, seed),
            poll: Duration::from_millis(2),
        }
    }

    /// One command in one ledger step; its rejection is the error.
    async fn run(&self, command: Command) -> Result<Outcome, QueueError> {
        let (_, outcome) = self.ledger.command(self.rules, command).await?;
        Ok(outcome)
    }

    /// Settles `reports` (and with `then`, decides it after them) in one
    /// ledger step; a result the ledger refuses is dropped with a warning,
    /// its lease left to expire like a lost worker's, and the other
    /// results stand. Answers `then`'s outcome.
    async fn settle_then(
        &self,
        reports: &[(Lease, Report)],
        then: Option<Command>,
    ) -> Result<Option<Outcome>, QueueError> {
        let mut commands: Vec<Command> = reports.iter().map(|(l, r)| r.settle(l)).collect();
        let then_sent = then.is_some();
        commands.extend(then);
        let (_, mut decided) = self.ledger.commands(self.rules, commands).await?;
        let then = match then_sent {
            true => decided.pop().transpose(),
            false => Ok(None),
        };
        for ((lease, _), decided) in reports.iter().zip(&decided) {
            match decided {
                Ok(Outcome::Settled(None)) => {
                    tracing::warn!(task = %lease.task, attempt = lease.attempt, "stale result dropped");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(task = %lease.task, attempt = lease.attempt, error = %e, "result refused; its lease will expire");
                }
            }
        }
        // The results stand even when `then` was refused.
        Ok(then?)
    }

    async fn lease(
        &self,
        run: &RunId,
        workers: Vec<WorkerId>,
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let command = Command::Lease {
            run: run.clone(),
            workers,
            lease_micros: micros_of(lease),
        };
        Ok(match self.run(command).await? {
            Outcome::Leased(leases) => leases,
            _ => Vec::new(),
        })
    }
}

fn micros_of(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
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
        self.run(Command::Record(tasks)).await?;
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
        loop {
            let leases = self
                .lease(run, vec![worker.clone(); max.max(1)], lease)
                .await?;
            if !leases.is_empty() || tokio::time::Instant::now() >= give_up {
                return Ok(leases);
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn dequeue_for(
        &self,
        run: &RunId,
        workers: &[WorkerId],
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        self.lease(run, workers.to_vec(), lease).await
    }

    async fn settle_many(&self, reports: &[(Lease, Report)]) -> Result<(), QueueError> {
        self.settle_then(reports, None).await?;
        Ok(())
    }

    async fn settle_and_lease(
        &self,
        reports: &[(Lease, Report)],
        run: &RunId,
        workers: &[WorkerId],
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let then = (!workers.is_empty()).then(|| Command::Lease {
            run: run.clone(),
            workers: workers.to_vec(),
            lease_micros: micros_of(lease),
        });
        Ok(match self.settle_then(reports, then).await? {
            Some(Outcome::Leased(leases)) => leases,
            _ => Vec::new(),
        })
    }

    async fn ack_many(&self, done: Vec<Done>) -> Result<(), QueueError> {
        let reports: Vec<_> = done
            .into_iter()
            .map(|(lease, output, costs)| (lease, Report::Done { output, costs }))
            .collect();
        self.settle_many(&reports).await
    }

    async fn nack(
        &self,
        lease: &Lease,
        error: String,
        timed_out: bool,
        costs: Vec<(Category, Micros)>,
    ) -> Result<NackOutcome, QueueError> {
        let report = Report::Failed {
            error,
            timed_out,
            costs,
        };
        Ok(match self.run(report.settle(lease)).await? {
            Outcome::Settled(Some(ended)) => nack_outcome(ended).unwrap_or(NackOutcome::Stale),
            _ => NackOutcome::Stale,
        })
    }

    async fn expire_leases(&self) -> Result<usize, QueueError> {
        expire_due(&self.ledger, self.rules, Lost::Release).await
    }

    async fn depth(&self) -> Result<QueueCounts, QueueError> {
        Ok(self.ledger.queue_counts_async().await?)
    }
}

/// Returns the tasks whose lease deadline has passed, in one ledger step,
/// doing with their attempts' reservations what `lost` says; how many.
pub async fn expire_due(ledger: &Ledger, rules: Rules, lost: Lost) -> Result<usize, QueueError> {
    let command = Command::ExpireLeases {
        which: Expiring::Due,
        lost,
    };
    let (_, outcome) = ledger.command(rules, command).await?;
    Ok(match outcome {
        Outcome::Expired(n) => n,
        _ => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskId;

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
