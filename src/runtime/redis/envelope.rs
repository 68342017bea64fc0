//! What travels through Redis: the task envelope a coordinator dispatches,
//! the result a worker reports, and their JSON payloads.
//!
//! Payloads hold integers only (attempts, milliseconds, micros): no float
//! ever crosses the wire. Decoding never panics: a payload that does not
//! parse is an error value naming the entry, and the transport moves it to
//! the dead-letter stream instead of handing it out.

use serde::{Deserialize, Serialize};

use crate::domain::{Category, Micros, Params, Priority, RunId, TaskId, TenantId, WorkerId};

/// One attempt of a task, as the coordinator dispatches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEnvelope {
    pub task: TaskId,
    /// The attempt this dispatch starts (1-based). A redelivery after a
    /// lease ran out is attempt `attempt + deliveries - 1`
    /// ([`Claimed::attempt`]).
    pub attempt: u32,
    pub run: RunId,
    pub tenant: TenantId,
    pub priority: Priority,
    pub handler: String,
    pub params: Params,
    /// Outputs of the task's parents, for reduce steps.
    #[serde(default)]
    pub inputs: Vec<(TaskId, Params)>,
    /// How long the worker may hold it; never more than the transport's
    /// lease, after which the entry is reclaimed.
    pub lease_ms: u64,
    /// The run's seed, for handlers that simulate (`sim`).
    #[serde(default)]
    pub seed: u64,
    /// The run's attempt timeout (`worker_timeout_sec`), in ms; a worker
    /// runs the attempt under the shorter of this and its own (0: its own).
    #[serde(default)]
    pub timeout_ms: u64,
}

/// Where a claimed entry sits, to acknowledge it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub priority: Priority,
    pub stream_id: String,
}

/// An envelope handed to one consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub receipt: Receipt,
    /// How many times the entry has been delivered (1 for a fresh one; a
    /// reclaim after a lease ran out adds one).
    pub deliveries: u64,
    pub envelope: TaskEnvelope,
}

impl Claimed {
    /// The attempt this delivery runs: each redelivery is a new attempt.
    pub fn attempt(&self) -> u32 {
        let extra = u32::try_from(self.deliveries.saturating_sub(1)).unwrap_or(u32::MAX);
        self.envelope.attempt.saturating_add(extra)
    }

    /// The result of this delivery, run by `worker`.
    pub fn result(&self, worker: &WorkerId, outcome: Outcome) -> TaskResult {
        TaskResult {
            task: self.envelope.task.clone(),
            attempt: self.attempt(),
            run: self.envelope.run.clone(),
            tenant: self.envelope.tenant.clone(),
            worker: worker.clone(),
            outcome,
            announces_start: false,
        }
    }
}

/// How an attempt ended, as the worker saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The worker has claimed it and starts the attempt (announced, the
    /// task entry stays pending): the coordinator records the lease.
    Started,
    Ack {
        output: Params,
        costs: Vec<(Category, Micros)>,
    },
    Nack {
        error: String,
        timed_out: bool,
        costs: Vec<(Category, Micros)>,
    },
}

impl From<crate::runtime::queue::Report> for Outcome {
    fn from(report: crate::runtime::queue::Report) -> Self {
        use crate::runtime::queue::Report;
        match report {
            Report::Done { output, costs } => Outcome::Ack { output, costs },
            Report::Failed {
                error,
                timed_out,
                costs,
            } => Outcome::Nack {
                error,
                timed_out,
                costs,
            },
        }
    }
}

/// A worker's report of one attempt. The coordinator deduplicates by
/// (task, attempt): a result may arrive twice, never zero times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: TaskId,
    pub attempt: u32,
    pub run: RunId,
    pub tenant: TenantId,
    pub worker: WorkerId,
    pub outcome: Outcome,
    /// The worker did not announce this attempt's start on its own (the
    /// announcement was still waiting to be sent when the attempt ended):
    /// this report stands for both, and the coordinator records the lease,
    /// then the end. Absent from the JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub announces_start: bool,
}

impl TaskResult {
    /// The attempt it reports on, numbered as claimed.
    pub fn attempt_of(&self) -> crate::domain::decide::Attempt<'_> {
        crate::domain::decide::Attempt {
            task: &self.task,
            run: &self.run,
            worker: &self.worker,
            attempt: self.attempt,
        }
    }
}

/// A result read from the results stream, to acknowledge once appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultEntry {
    pub stream_id: String,
    pub result: TaskResult,
}

/// Decodes a task entry's payload (field `e`), as a worker claims it.
pub fn decode_task(payload: &str) -> Result<TaskEnvelope, serde_json::Error> {
    serde_json::from_str(payload)
}

/// Decodes a result entry's payload (field `r`), as the coordinator reads
/// it.
pub fn decode_result(payload: &str) -> Result<TaskResult, serde_json::Error> {
    serde_json::from_str(payload)
}
