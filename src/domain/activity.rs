//! Run summaries and worker statistics: counters folded from task events.
//!
//! Both are pure projections; time spans come from `recorded_at` of the
//! records, never from a clock.

use bincode::{Decode, Encode};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::event::{Decision, Event};
use super::ids::{RunId, WorkerId};
use super::journal::{Journaled, Undo};
use super::money::Micros;
use super::time::Timestamp;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Finished,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Encode, Decode)]
pub struct RunSummary {
    pub run: RunId,
    pub seed: u64,
    pub config_hash: String,
    pub status: RunStatus,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub tasks_submitted: u64,
    pub tasks_acked: u64,
    pub tasks_nacked: u64,
    pub tasks_timed_out: u64,
    pub tasks_dead_lettered: u64,
    pub tasks_cancelled: u64,
    pub tasks_skipped: u64,
    pub leases_expired: u64,
    pub cost_micros: Micros,
    pub running: u32,
    pub peak_running: u32,
    pub admissions_denied: u64,
    pub backpressure_engaged: u64,
    pub backpressure_released: u64,
    /// Cost-agent verdicts: continue, degrade, terminate.
    pub decisions: [u64; 3],
}

impl RunSummary {
    /// The counters a run in progress is watched by.
    pub fn progress(&self) -> RunProgress {
        RunProgress {
            tasks_submitted: self.tasks_submitted,
            tasks_ended: self.tasks_acked
                + self.tasks_dead_lettered
                + self.tasks_cancelled
                + self.tasks_skipped,
            running: self.running,
        }
    }
}

/// How far a run is: its tasks submitted, its tasks ended (ACKed,
/// dead-lettered, cancelled or skipped), its attempts running.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RunProgress {
    pub tasks_submitted: u64,
    pub tasks_ended: u64,
    pub running: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Runs {
    runs: Journaled<FxHashMap<RunId, RunSummary>>,
}

impl Undo for Runs {
    fn record(&mut self, on: bool) {
        self.runs.record(on);
    }
    fn mark(&mut self) {
        self.runs.mark();
    }
    fn undo(&mut self) {
        self.runs.undo();
    }
}

impl Runs {
    pub fn get(&self, run: &RunId) -> Option<&RunSummary> {
        self.runs.get(run)
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn sorted(&self) -> Vec<&RunSummary> {
        let mut all: Vec<_> = self.runs.values().collect();
        all.sort_unstable_by(|a, b| {
            a.started_at
                .cmp(&b.started_at)
                .then_with(|| a.run.cmp(&b.run))
        });
        all
    }

    /// The running run started last (ties: the greatest id).
    pub fn latest_running(&self) -> Option<&RunSummary> {
        self.sorted()
            .into_iter()
            .rev()
            .find(|r| r.status == RunStatus::Running)
    }

    /// A free id for a run that names none: `base`, else the first of
    /// `base-2`, `base-3`, ... no run has yet.
    pub fn unused_id(&self, base: &str) -> RunId {
        (1u32..)
            .map(|n| {
                if n == 1 {
                    base.to_owned()
                } else {
                    format!("{base}-{n}")
                }
            })
            .map(RunId)
            .find(|id| self.get(id).is_none())
            .unwrap_or_else(|| RunId(base.to_owned()))
    }

    /// Applies an event; `task_run` is the run of the event's task.
    pub fn evolve(&mut self, at: Timestamp, event: &Event, task_run: Option<&RunId>) {
        if let Event::RunStarted {
            run,
            seed,
            config_hash,
        } = event
        {
            self.runs.insert(
                run.clone(),
                RunSummary {
                    run: run.clone(),
                    seed: *seed,
                    config_hash: config_hash.clone(),
                    status: RunStatus::Running,
                    started_at: at,
                    finished_at: None,
                    tasks_submitted: 0,
                    tasks_acked: 0,
                    tasks_nacked: 0,
                    tasks_timed_out: 0,
                    tasks_dead_lettered: 0,
                    tasks_cancelled: 0,
                    tasks_skipped: 0,
                    leases_expired: 0,
                    cost_micros: Micros::ZERO,
                    running: 0,
                    peak_running: 0,
                    admissions_denied: 0,
                    backpressure_engaged: 0,
                    backpressure_released: 0,
                    decisions: [0; 3],
                },
            );
            return;
        }
        let Some(run) = event.run().or(task_run) else {
            return;
        };
        let Some(r) = self.runs.get_mut(run) else {
            return;
        };
        match event {
            Event::RunFinished { .. } => {
                r.status = RunStatus::Finished;
                r.finished_at = Some(at);
            }
            Event::TaskSubmitted { .. } => r.tasks_submitted += 1,
            Event::TaskDequeued { .. } => {
                r.running += 1;
                r.peak_running = r.peak_running.max(r.running);
            }
            Event::TaskAcked { .. } => {
                r.tasks_acked += 1;
                r.running = r.running.saturating_sub(1);
            }
            Event::TaskNacked { timed_out, .. } => {
                r.tasks_nacked += 1;
                r.tasks_timed_out += u64::from(*timed_out);
                r.running = r.running.saturating_sub(1);
            }
            Event::LeaseExpired { .. } => {
                r.leases_expired += 1;
                r.running = r.running.saturating_sub(1);
            }
            Event::TaskDeadLettered { .. } => r.tasks_dead_lettered += 1,
            Event::TaskCancelled { .. } => r.tasks_cancelled += 1,
            Event::TaskSkipped { .. } => r.tasks_skipped += 1,
            Event::CostIncurred { amount_micros, .. } => {
                r.cost_micros.0 = r.cost_micros.0.saturating_add(amount_micros.0);
            }
            Event::AdmissionDenied { .. } => r.admissions_denied += 1,
            Event::BackpressureEngaged { .. } => r.backpressure_engaged += 1,
            Event::BackpressureReleased { .. } => r.backpressure_released += 1,
            Event::DegradationDecided { decision, .. } => {
                let slot = match decision {
                    Decision::Continue => 0,
                    Decision::Degrade => 1,
                    Decision::Terminate => 2,
                };
                r.decisions[slot] += 1;
            }
            _ => {}
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Encode, Decode)]
pub struct WorkerStats {
    pub worker: WorkerId,
    /// Tasks dequeued (attempts started).
    pub executed: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub leases_expired: u64,
    pub busy: u32,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

impl WorkerStats {
    fn new(worker: WorkerId, at: Timestamp) -> Self {
        WorkerStats {
            worker,
            executed: 0,
            succeeded: 0,
            failed: 0,
            timed_out: 0,
            leases_expired: 0,
            busy: 0,
            first_seen: at,
            last_seen: at,
        }
    }

    /// Succeeded share of finished attempts, in basis points.
    pub fn success_rate_bp(&self) -> u32 {
        let finished = self.succeeded + self.failed + self.leases_expired;
        if finished == 0 {
            return 0;
        }
        u32::try_from(self.succeeded * 10_000 / finished).unwrap_or(10_000)
    }

    pub fn uptime_micros(&self) -> i64 {
        self.last_seen.0.saturating_sub(self.first_seen.0)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workers {
    workers: Journaled<FxHashMap<WorkerId, WorkerStats>>,
}

impl Undo for Workers {
    fn record(&mut self, on: bool) {
        self.workers.record(on);
    }
    fn mark(&mut self) {
        self.workers.mark();
    }
    fn undo(&mut self) {
        self.workers.undo();
    }
}

impl Workers {
    pub fn get(&self, worker: &WorkerId) -> Option<&WorkerStats> {
        self.workers.get(worker)
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn sorted(&self) -> Vec<&WorkerStats> {
        let mut all: Vec<_> = self.workers.values().collect();
        all.sort_unstable_by(|a, b| a.worker.cmp(&b.worker));
        all
    }

    pub fn evolve(&mut self, at: Timestamp, event: &Event) {
        let worker = match event {
            Event::TaskDequeued { worker, .. }
            | Event::TaskAcked { worker, .. }
            | Event::TaskNacked { worker, .. }
            | Event::LeaseExpired { worker, .. } => worker,
            _ => return,
        };
        if !self.workers.contains_key(worker) {
            self.workers
                .insert(worker.clone(), WorkerStats::new(worker.clone(), at));
        }
        let Some(w) = self.workers.get_mut(worker) else {
            return;
        };
        w.first_seen = w.first_seen.min(at);
        w.last_seen = w.last_seen.max(at);
        match event {
            Event::TaskDequeued { .. } => {
                w.executed += 1;
                w.busy += 1;
            }
            Event::TaskAcked { .. } => {
                w.succeeded += 1;
                w.busy = w.busy.saturating_sub(1);
            }
            Event::TaskNacked { timed_out, .. } => {
                w.failed += 1;
                w.timed_out += u64::from(*timed_out);
                w.busy = w.busy.saturating_sub(1);
            }
            Event::LeaseExpired { .. } => {
                w.leases_expired += 1;
                w.busy = w.busy.saturating_sub(1);
            }
            _ => {}
        }
    }
}
