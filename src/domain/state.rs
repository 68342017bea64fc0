//! The whole projection: queue, tenants, runs, workers and learning,
//! folded from events by one `evolve` that the live writer and every replay
//! share.
//!
//! `validate` decides whether an event is possible in the current state;
//! `evolve` applies it without checking. Digests are blake3 over a canonical
//! encoding (entries sorted by id), so two folds of the same log compare in
//! one line whatever the hash-map order.

use bincode::Encode;
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::activity::{RunStatus, Runs, Workers};
use super::budget::Tenants;
use super::event::{BudgetPeriod, Decision, Event};
use super::ids::{PipelineId, RunId, TaskId, TenantId};
use super::journal::{Journaled, Undo};
use super::learning::Learning;
use super::money::Micros;
use super::period::Periods;
use super::queue::Queue;
use super::rejection::Rejection;
use super::time::Timestamp;

/// Every projection the ledger can rebuild. Equal states (`==`) hold the
/// same projections, indices and memories.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub queue: Queue,
    pub tenants: Tenants,
    pub runs: Runs,
    pub workers: Workers,
    pub learning: Learning,
    /// The workload text each run recorded (what `resume` needs); derived
    /// from the log like the rest, outside the digests.
    workloads: Journaled<FxHashMap<RunId, String>>,
    /// When each tenant's current budget period began (its registration,
    /// a change of its period kind, or its last reset), and the tenants by
    /// when that period ends; outside the digests.
    periods: Periods,
    /// Open (non-terminal) tasks per pipeline instance, by run.
    pipelines: Journaled<FxHashMap<(RunId, PipelineId), u32>>,
    /// What each run's tasks hold reserved (runs holding nothing are
    /// absent); outside the digests, like the task reservations it sums.
    reserved_by_run: Journaled<FxHashMap<RunId, i64>>,
    /// What the gate has recorded about open tasks; outside the digests.
    gate: GateMemory,
    /// Seq of the last event folded in.
    pub seq: u64,
    /// `recorded_at` of the last event folded in.
    pub last_at: Timestamp,
    /// `(seq, last_at)` at the last mark, while recording ([`Undo`]).
    at_mark: SeqAtMark,
}

/// Equal projections, indices and memories: the journal and the memo of
/// shares (a cache) are not part of the value.
impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.queue == other.queue
            && self.tenants == other.tenants
            && self.runs == other.runs
            && self.workers == other.workers
            && self.learning == other.learning
            && self.workloads == other.workloads
            && self.periods == other.periods
            && self.pipelines == other.pipelines
            && self.reserved_by_run == other.reserved_by_run
            && self.gate == other.gate
            && self.seq == other.seq
            && self.last_at == other.last_at
    }
}

/// A clone of the state starts without a journal, like its tables.
#[derive(Debug, Default)]
struct SeqAtMark(Option<(u64, Timestamp)>);

impl Clone for SeqAtMark {
    fn clone(&self) -> Self {
        SeqAtMark(None)
    }
}

/// The writer's undo of a rejected command: every table of the state keeps
/// its journal (see [`super::journal`]).
impl Undo for State {
    fn record(&mut self, on: bool) {
        self.queue.record(on);
        self.tenants.record(on);
        self.runs.record(on);
        self.workers.record(on);
        self.learning.record(on);
        self.workloads.record(on);
        self.periods.record(on);
        self.pipelines.record(on);
        self.reserved_by_run.record(on);
        self.gate.record(on);
        self.at_mark = SeqAtMark(on.then_some((self.seq, self.last_at)));
    }

    fn mark(&mut self) {
        self.queue.mark();
        self.tenants.mark();
        self.runs.mark();
        self.workers.mark();
        self.learning.mark();
        self.workloads.mark();
        self.periods.mark();
        self.pipelines.mark();
        self.reserved_by_run.mark();
        self.gate.mark();
        if self.at_mark.0.is_some() {
            self.at_mark = SeqAtMark(Some((self.seq, self.last_at)));
        }
    }

    fn undo(&mut self) {
        self.queue.undo();
        self.tenants.undo();
        self.runs.undo();
        self.workers.undo();
        self.learning.undo();
        self.workloads.undo();
        self.periods.undo();
        self.pipelines.undo();
        self.reserved_by_run.undo();
        self.gate.undo();
        if let Some((seq, last_at)) = self.at_mark.0 {
            (self.seq, self.last_at) = (seq, last_at);
        }
    }
}

/// What the gate in front of every attempt has recorded about each open
/// task, so that a task looked at again is not recorded again: its last
/// verdict, and whether its present wait for admission is recorded.
/// Derived from the log like the rest (`replay --check` reads the same
/// memory the executors decided with).
#[derive(Clone, Debug, Default, PartialEq)]
struct GateMemory {
    verdicts: Journaled<FxHashMap<TaskId, Decision>>,
    waiting: Journaled<FxHashMap<TaskId, ()>>,
}

impl Undo for GateMemory {
    fn record(&mut self, on: bool) {
        self.verdicts.record(on);
        self.waiting.record(on);
    }
    fn mark(&mut self) {
        self.verdicts.mark();
        self.waiting.mark();
    }
    fn undo(&mut self) {
        self.verdicts.undo();
        self.waiting.undo();
    }
}

impl GateMemory {
    fn evolve(&mut self, event: &Event) {
        match event {
            Event::DegradationDecided {
                task: Some(task),
                decision,
                ..
            } => {
                self.verdicts.insert(task.clone(), *decision);
            }
            Event::AdmissionDenied {
                task: Some(task), ..
            } => {
                self.waiting.insert(task.clone(), ());
            }
            // A wait ends with the lease or the task.
            Event::TaskDequeued { task, .. } => {
                self.waiting.remove(task);
            }
            Event::TaskSkipped { task, .. } | Event::TaskCancelled { task, .. } => {
                self.waiting.remove(task);
                self.verdicts.remove(task);
            }
            // An ended task is never looked at again.
            Event::TaskAcked { task, .. } | Event::TaskDeadLettered { task, .. } => {
                self.verdicts.remove(task);
            }
            _ => {}
        }
    }
}

/// The digests of each projection and their combination.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Digests {
    pub queue: blake3::Hash,
    pub tenants: blake3::Hash,
    pub runs: blake3::Hash,
    pub workers: blake3::Hash,
    pub learning: blake3::Hash,
    pub combined: blake3::Hash,
}

impl Digests {
    pub fn named(&self) -> [(&'static str, blake3::Hash); 5] {
        [
            ("queue", self.queue),
            ("tenants", self.tenants),
            ("runs", self.runs),
            ("workers", self.workers),
            ("learning", self.learning),
        ]
    }
}

impl Serialize for Digests {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(6))?;
        for (name, hash) in self.named() {
            map.serialize_entry(name, &hash.to_hex().as_str())?;
        }
        map.serialize_entry("combined", &self.combined.to_hex().as_str())?;
        map.end()
    }
}

fn digest_of<T: Encode>(tag: &str, value: &T) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"runledger.projection.v1\0");
    hasher.update(tag.as_bytes());
    hasher.update(&[0]);
    // Writing into a hasher cannot fail. Buffered: the encoder writes a
    // few bytes at a time, and each hasher update has a fixed cost.
    {
        let mut buffered = std::io::BufWriter::with_capacity(1 << 16, &mut hasher);
        let _ = bincode::encode_into_std_write(value, &mut buffered, bincode::config::standard());
        let _ = std::io::Write::flush(&mut buffered);
    }
    hasher.finalize()
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// The run and tenant an event belongs to, directly or through its task.
    pub fn scope<'a>(&'a self, event: &'a Event) -> (Option<&'a RunId>, Option<&'a TenantId>) {
        let task = event.task().and_then(|t| self.queue.get(t));
        scope_of(
            (event.run(), event.tenant()),
            task.map(|t| (&t.run, &t.tenant)),
        )
    }

    /// When `tenant`'s current budget period began.
    pub fn period_started(&self, tenant: &TenantId) -> Option<Timestamp> {
        self.periods.started(tenant)
    }

    /// The tenants whose current budget period ends at or before `now`, in
    /// the order their periods end, each with when its period began: a
    /// range of an ordered index, so its cost follows what it returns, not
    /// the number of tenants.
    pub fn periods_ended_by(&self, now: Timestamp) -> impl Iterator<Item = (&TenantId, Timestamp)> {
        self.periods.ended_by(now)
    }

    #[cfg(test)]
    pub(crate) fn periods(&self) -> &Periods {
        &self.periods
    }

    /// The cost agent's verdict last recorded for `task`, while it is open.
    pub fn last_verdict(&self, task: &TaskId) -> Option<Decision> {
        self.gate.verdicts.get(task).copied()
    }

    /// Whether `task`'s present wait for admission is recorded.
    pub fn wait_recorded(&self, task: &TaskId) -> bool {
        self.gate.waiting.contains_key(task)
    }

    /// The workload text recorded for `run`.
    pub fn workload_of(&self, run: &RunId) -> Option<&str> {
        self.workloads.get(run).map(String::as_str)
    }

    /// Whether `event` is possible now.
    pub fn validate(&self, event: &Event) -> Result<(), Rejection> {
        match event {
            Event::RunStarted { run, .. } => {
                if run.as_str().is_empty() {
                    return Err(Rejection::Empty { field: "run" });
                }
                if self.runs.get(run).is_some() {
                    return Err(Rejection::DuplicateRun(run.clone()));
                }
            }
            Event::RunFinished { run } => {
                self.open_run(run)?;
                // A finished run holds no reservation: each of its tasks
                // settled its attempts or returned what a lost one held.
                if let Some(&reserved) = self.reserved_by_run.get(run) {
                    return Err(Rejection::RunHoldsReservation {
                        run: run.clone(),
                        reserved: Micros(reserved),
                    });
                }
            }
            Event::BackpressureEngaged { run, .. }
            | Event::BackpressureReleased { run, .. }
            | Event::DegradationDecided { run, .. }
            | Event::WorkloadRecorded { run, .. }
            | Event::TaskSubmitted { run, .. } => self.open_run(run)?,
            _ => {}
        }
        // Tenant checks first so that an unknown tenant is reported as such.
        let task = event.task().and_then(|t| self.queue.get(t));
        let task_tenant = task.map(|t| &t.tenant);
        let task_reserved = task.map_or(Micros::ZERO, |t| t.reserved_micros);
        self.tenants.validate(event, task_tenant, task_reserved)?;
        self.queue.validate(event)
    }

    /// `run` is started and not finished.
    fn open_run(&self, run: &RunId) -> Result<(), Rejection> {
        match self.runs.get(run) {
            None => Err(Rejection::UnknownRun(run.clone())),
            Some(r) if r.status == RunStatus::Finished => Err(Rejection::RunFinished(run.clone())),
            Some(_) => Ok(()),
        }
    }

    /// Applies `event`, recorded at `seq` and `at`, without checking it.
    /// Takes the event so its strings move into the state instead of being
    /// copied.
    pub fn evolve(&mut self, seq: u64, at: Timestamp, event: Event) {
        // Counters that only need to know whose task it is go first, while
        // the task is as it was before the event.
        let task = event.task().and_then(|t| self.queue.get(t));
        self.runs.evolve(at, &event, task.map(|t| &t.run));
        let task_reserved = task.map_or(Micros::ZERO, |t| t.reserved_micros);
        self.workers.evolve(at, &event);
        self.learning.evolve(&event);
        self.gate.evolve(&event);
        // A budget period begins at registration, at a reset, and when the
        // tenant's period kind changes (not when an update restates it).
        let period_begins = match &event {
            Event::TenantRegistered { tenant, .. } | Event::BudgetPeriodReset { tenant } => {
                Some(tenant)
            }
            Event::TenantUpdated {
                tenant,
                budget_period: Some(period),
                ..
            } => self
                .tenants
                .get(tenant)
                .is_some_and(|t| t.budget_period != *period)
                .then_some(tenant),
            _ => None,
        };
        let kind_of = |tenants: &Tenants, tenant| {
            tenants
                .get(tenant)
                .map_or(BudgetPeriod::None, |t| t.budget_period)
        };
        let period_was = period_begins.map(|tenant| kind_of(&self.tenants, tenant));
        let moved = self.tenants.evolve(&event, task_reserved);
        if let (Some(tenant), Some(was)) = (period_begins, period_was) {
            let kind = kind_of(&self.tenants, tenant);
            self.periods.begin(tenant, at, was, kind);
        }

        if let Event::WorkloadRecorded { run, text, .. } = &event {
            self.workloads.insert(run.clone(), text.clone());
        }
        match &event {
            Event::TaskSubmitted {
                run,
                tenant,
                pipeline,
                ..
            } => match pipeline {
                // A task without a pipeline is a pipeline run of its own.
                None => self.tenants.run_opened(tenant),
                Some(pipeline) => {
                    let key = (run.clone(), pipeline.clone());
                    let open = self.pipelines.get_or_insert_with(&key, || 0);
                    *open += 1;
                    if *open == 1 {
                        self.tenants.run_opened(tenant);
                    }
                }
            },
            Event::CostReserved {
                task,
                amount_micros,
                ..
            } => {
                if let Some(t) = self.queue.task_mut(task) {
                    t.reserved_micros.0 += amount_micros.0;
                    note_reserved(&mut self.reserved_by_run, &t.run, amount_micros.0);
                }
            }
            Event::CostIncurred {
                task: Some(task),
                amount_micros,
                ..
            } => {
                if let Some(t) = self.queue.task_mut(task) {
                    t.reserved_micros.0 -= moved.0;
                    t.spent_micros.0 = t.spent_micros.0.saturating_add(amount_micros.0);
                    note_reserved(&mut self.reserved_by_run, &t.run, -moved.0);
                }
            }
            Event::ReservationReleased { task, .. } => {
                if let Some(t) = self.queue.task_mut(task) {
                    t.reserved_micros.0 -= moved.0;
                    note_reserved(&mut self.reserved_by_run, &t.run, -moved.0);
                }
            }
            _ => {}
        }

        if let Some(id) = self.queue.evolve(seq, event) {
            if let Some(t) = self.queue.get(&id) {
                close_pipeline_task(&mut self.pipelines, &mut self.tenants, t);
            }
        }
        self.seq = seq;
        self.last_at = at;
    }

    /// `validate` then `evolve`.
    pub fn apply(&mut self, seq: u64, at: Timestamp, event: &Event) -> Result<(), Rejection> {
        self.validate(event)?;
        self.evolve(seq, at, event.clone());
        Ok(())
    }

    pub fn digests(&self) -> Digests {
        let queue = digest_of("queue", &(self.queue.counts(), self.queue.sorted()));
        let tenants = digest_of("tenants", &self.tenants.sorted());
        let runs = digest_of("runs", &self.runs.sorted());
        let workers = digest_of("workers", &self.workers.sorted());
        let learning = digest_of("learning", &self.learning.digest_input());
        let mut combined = blake3::Hasher::new();
        combined.update(b"runledger.projections.v1\0");
        for hash in [queue, tenants, runs, workers, learning] {
            combined.update(hash.as_bytes());
        }
        Digests {
            queue,
            tenants,
            runs,
            workers,
            learning,
            combined: combined.finalize(),
        }
    }
}

/// The run and tenant a record belongs to: the event's own (`own`: its
/// `run()` and `tenant()`), else those of its task (`owner`: the run and
/// tenant the task was submitted with). What the indices list each record
/// under.
pub fn scope_of<'a>(
    own: (Option<&'a RunId>, Option<&'a TenantId>),
    owner: Option<(&'a RunId, &'a TenantId)>,
) -> (Option<&'a RunId>, Option<&'a TenantId>) {
    (own.0.or(owner.map(|o| o.0)), own.1.or(owner.map(|o| o.1)))
}

/// `run`'s tasks reserved `delta` more (or less); a run holding nothing
/// leaves the map.
fn note_reserved(reserved_by_run: &mut Journaled<FxHashMap<RunId, i64>>, run: &RunId, delta: i64) {
    if delta == 0 {
        return;
    }
    let held = reserved_by_run.get_or_insert_with(run, || 0);
    *held = held.saturating_add(delta);
    if *held == 0 {
        reserved_by_run.remove(run);
    }
}

/// A task of a pipeline run ended: the run stops counting towards its
/// tenant's concurrency when it has no open task left.
fn close_pipeline_task(
    pipelines: &mut Journaled<FxHashMap<(RunId, PipelineId), u32>>,
    tenants: &mut Tenants,
    t: &super::queue::Task,
) {
    let Some(pipeline) = &t.pipeline else {
        tenants.run_closed(&t.tenant);
        return;
    };
    let key = (t.run.clone(), pipeline.clone());
    if let Some(open) = pipelines.get_mut(&key) {
        *open = open.saturating_sub(1);
        if *open == 0 {
            pipelines.remove(&key);
            tenants.run_closed(&t.tenant);
        }
    }
}
