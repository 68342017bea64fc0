//! The simulated executor: runs a workload on virtual time.
//!
//! Each step takes the earliest timer (a task attempt finishing, a retry
//! becoming due, a pipeline run arriving), runs the deciders on the
//! ledger's live state (lent to it for the run), and queues the resulting events with `recorded_at`
//! set to the virtual time; every few thousand events go to the ledger as
//! one batch, which the writer commits while the next is decided. No
//! sleeping and no thread interleaving: the ledger it writes depends only
//! on the workload, the seed and what the ledger held before.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Instant;

use crate::domain::decide::{self, Answer, Attempt, Ended, LeaseTo, Rules, Start};
use crate::domain::governance::{Denial, admit_run, may_start_run};
use crate::domain::scheduler::{Lost, next_ready_many, next_retry_at};
use crate::domain::sim::simulate;
use crate::domain::{
    Event, Micros, Params, PipelineId, RunId, State, TaskId, TenantId, Timestamp, WorkerId,
};
use crate::log::writer::Lent;
use crate::log::{AppendError, Ledger};
use crate::workload::{Stage, Workload};

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Overrides the workload's seed.
    pub seed: Option<u64>,
    /// The run's id (default: the workload's `run`, else `run-<seed>`).
    pub run_id: Option<String>,
    /// Stop (as if the process died) after this many steps: crash drills.
    pub stop_after_steps: Option<u64>,
    /// The deciders' thresholds (standard unless a what-if run asks for
    /// others). Not recorded: `replay --check --policy` must be given them.
    pub policy: crate::domain::Policy,
}

impl RunOptions {
    /// The run's seed and id: the options', else the workload's (the one
    /// rule every executor and command names a run by).
    pub fn seed_and_run(&self, workload: &Workload) -> (u64, RunId) {
        let seed = self.seed.unwrap_or(workload.seed);
        let run = self
            .run_id
            .clone()
            .unwrap_or_else(|| workload.default_run_id(seed));
        (seed, RunId(run))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("run `{0}` is already in the ledger (choose another with --run-id)")]
    RunExists(String),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Queue(#[from] super::queue::QueueError),
    #[error("internal error: the executor produced an impossible event: {0}")]
    Impossible(String),
    #[error("{0}")]
    Resume(String),
    #[error("stopped after {0} steps, as asked")]
    Stopped(u64),
    #[error(transparent)]
    Workload(#[from] crate::workload::WorkloadError),
}

/// What a run did, for the summary.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunReport {
    pub run: String,
    pub seed: u64,
    pub tasks: u64,
    pub acked: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    /// Optional nodes a degradation plan skipped.
    pub skipped: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub peak_running: u32,
    pub backpressure_engaged: u64,
    pub backpressure_released: u64,
    /// Cost-agent verdicts by kind (`continue`, `degrade`, `terminate`).
    pub decisions: std::collections::BTreeMap<String, u64>,
    pub virtual_elapsed_micros: i64,
    pub wall_elapsed_micros: u64,
    pub head_seq: u64,
    pub head: String,
    pub digest: String,
}

impl RunReport {
    /// The report of a finished run from its summary and the ledger's head.
    pub(crate) fn new(
        s: &crate::domain::activity::RunSummary,
        elapsed_micros: i64,
        wall: Instant,
        head: crate::log::Head,
        digest: blake3::Hash,
    ) -> Self {
        RunReport {
            run: s.run.0.clone(),
            seed: s.seed,
            tasks: s.tasks_submitted,
            acked: s.tasks_acked,
            dead_lettered: s.tasks_dead_lettered,
            cancelled: s.tasks_cancelled,
            skipped: s.tasks_skipped,
            retries: s.tasks_nacked + s.leases_expired,
            timeouts: s.tasks_timed_out,
            peak_running: s.peak_running,
            decisions: ["continue", "degrade", "terminate"]
                .into_iter()
                .zip(s.decisions)
                .map(|(kind, n)| (kind.to_owned(), n))
                .collect(),
            backpressure_engaged: s.backpressure_engaged,
            backpressure_released: s.backpressure_released,
            virtual_elapsed_micros: elapsed_micros,
            wall_elapsed_micros: u64::try_from(wall.elapsed().as_micros()).unwrap_or(u64::MAX),
            head_seq: head.seq,
            head: head.hash.to_hex().to_string(),
            digest: digest.to_hex().to_string(),
        }
    }
}

/// Events the executor decides before it hands them to the ledger.
const FLUSH_EVENTS: usize = 4_096;

/// A task attempt in flight: when it ends, and how.
type Timer = Reverse<(i64, u64, TaskId, u32, u32, bool, Params)>;

struct Sim<'a> {
    ledger: &'a Ledger,
    workload: &'a Workload,
    seed: u64,
    run: RunId,
    /// The ledger's live state, lent to the executor for the run: every
    /// decision is made on it and every event applied to it before the
    /// writer chains it.
    lent: Lent,
    now: Timestamp,
    timers: BinaryHeap<Timer>,
    order: u64,
    free_workers: BTreeSet<u32>,
    running: u32,
    backpressure: bool,
    /// Times at which a NACKed task becomes ready again.
    retry_wakeups: BinaryHeap<Reverse<i64>>,
    /// What the run's decisions depend on besides the state.
    rules: Rules,
    /// Per tenant, the pipeline runs that wait for its concurrency to allow
    /// them, oldest first.
    deferred: BTreeMap<TenantId, VecDeque<(usize, u32)>>,
    /// Whether this run continues one whose process died.
    resumed: bool,
    /// The batch the writer is committing.
    in_flight: Option<crate::log::writer::PendingAppend>,
    /// The run's ended tasks as of the batch in flight, and as of what the
    /// ledger holds: progress reports the latter, so a caller acting on it
    /// (the crash drill of the tests) acts on what was appended.
    ended_sent: u64,
    ended_appended: u64,
}

impl crate::domain::decide::Step for Sim<'_> {
    type Error = RunError;
    fn state(&self) -> &State {
        self.lent.state()
    }
    fn record(&mut self, event: Event) -> Result<(), RunError> {
        self.emit(event)
    }
}

impl Sim<'_> {
    /// Checks `event` as the writer would, applies it to the state and
    /// queues it for the ledger, stamped with the virtual time.
    fn emit(&mut self, event: Event) -> Result<(), RunError> {
        self.lent
            .record(self.now, event)
            .map_err(|refused| RunError::Impossible(refused.to_string()))
    }

    /// Sends the decided events to the ledger, after the answer to the
    /// batch before: the writer commits one batch while the next is
    /// decided, and a refused batch is never followed by another.
    fn flush(&mut self) -> Result<(), RunError> {
        self.wait()?;
        if self.lent.pending() > 0 {
            self.in_flight = Some(self.lent.send()?);
            self.ended_sent = self.ended();
        }
        Ok(())
    }

    /// Waits until what was sent to the ledger is in it.
    fn wait(&mut self) -> Result<(), RunError> {
        if let Some(pending) = self.in_flight.take() {
            pending.wait()?;
            self.ended_appended = self.ended_sent;
        }
        Ok(())
    }

    /// The run's tasks that have ended (on the mirror).
    fn ended(&self) -> u64 {
        self.lent.state().runs.get(&self.run).map_or(0, |r| {
            r.tasks_acked + r.tasks_dead_lettered + r.tasks_cancelled + r.tasks_skipped
        })
    }

    fn over_threshold(&self) -> bool {
        u64::from(self.running) * 10_000
            > u64::from(self.workload.backpressure_threshold_bp)
                * u64::from(self.workload.max_concurrency)
    }

    fn dispatch(&mut self) -> Result<(), RunError> {
        'workers: while let Some(&worker) = self.free_workers.iter().next() {
            let seq = self.lent.state().seq;
            // Only this run's tasks: other runs in the ledger are not ours to
            // execute. A few candidates, in case the best must wait.
            let run = &self.run;
            let window = self.free_workers.len() * 2 + 16;
            let candidates: Vec<TaskId> = next_ready_many(
                self.lent.state(),
                self.now,
                seq,
                &self.workload.policy,
                window,
                |t| &t.run == run,
            )
            .into_iter()
            .cloned()
            .collect();
            let timeout = self.workload.worker_timeout_micros;
            for task in candidates {
                let lease = LeaseTo {
                    worker: worker_id(worker),
                    deadline: Some(self.now.saturating_add_micros(timeout)),
                };
                let attempt = self
                    .lent
                    .state()
                    .queue
                    .get(&task)
                    .map_or(1, |t| t.attempts + 1);
                let (events, start) =
                    decide::start(self.lent.state(), &task, Some(lease), &self.rules);
                for event in events {
                    self.emit(event)?;
                }
                if let Start::Run { params, .. } = start {
                    self.schedule_end(task, worker, attempt, params);
                    continue 'workers;
                }
            }
            break;
        }
        if !self.backpressure && self.over_threshold() {
            self.backpressure = true;
            let threshold = self.threshold_count();
            self.emit(Event::BackpressureEngaged {
                run: self.run.clone(),
                running: self.running,
                threshold,
            })?;
        }
        Ok(())
    }

    /// Takes `worker` for the attempt that just started and schedules its
    /// end.
    fn schedule_end(&mut self, task: TaskId, worker: u32, attempt: u32, params: Params) {
        self.free_workers.remove(&worker);
        self.running += 1;
        let timeout = self.workload.worker_timeout_micros;
        let latency =
            simulate(self.seed, task.draw_key(&self.run), attempt, &params).latency_micros;
        let (ends, timed_out) = if latency > timeout {
            (timeout, true)
        } else {
            (latency, false)
        };
        self.order += 1;
        self.timers.push(Reverse((
            self.now.0.saturating_add(ends),
            self.order,
            task,
            worker,
            attempt,
            timed_out,
            params,
        )));
    }

    fn threshold_count(&self) -> u32 {
        (u64::from(self.workload.backpressure_threshold_bp)
            * u64::from(self.workload.max_concurrency)
            / 10_000) as u32
    }

    fn finish_attempt(
        &mut self,
        task: TaskId,
        worker: u32,
        attempt: u32,
        timed_out: bool,
        params: Params,
    ) -> Result<(), RunError> {
        let outcome = simulate(self.seed, task.draw_key(&self.run), attempt, &params);
        self.free_workers.insert(worker);
        self.running -= 1;
        // A timed-out attempt reports nothing.
        let (answer, costs) = match (timed_out, outcome.result) {
            (true, _) => (
                Answer::Failed {
                    error: format!(
                        "timed out after {} ms",
                        self.workload.worker_timeout_micros / 1_000
                    ),
                    timed_out: true,
                },
                Vec::new(),
            ),
            (false, Ok(output)) => (
                Answer::Done {
                    output,
                    reward_bp: outcome.reward_bp,
                },
                outcome.costs,
            ),
            (false, Err(error)) => (
                Answer::Failed {
                    error,
                    timed_out: false,
                },
                outcome.costs,
            ),
        };
        let worker_id = worker_id(worker);
        let attempt = Attempt {
            task: &task,
            run: &self.run,
            worker: &worker_id,
            attempt,
        };
        let (events, ended) = decide::end_attempt(
            self.lent.state(),
            attempt,
            answer,
            &costs,
            self.now,
            &self.rules,
        )
        .ok_or_else(|| RunError::Impossible(format!("the attempt of `{task}` ended twice")))?;
        for event in events {
            self.emit(event)?;
        }
        if let Ended::RetryAt(at) = ended {
            self.retry_wakeups.push(Reverse(at.0));
        }
        if self.backpressure && !self.over_threshold() {
            self.backpressure = false;
            let threshold = self.threshold_count();
            self.emit(Event::BackpressureReleased {
                run: self.run.clone(),
                running: self.running,
                threshold,
            })?;
        }
        Ok(())
    }

    fn submitted(&self, submission: usize, instance: u32) -> bool {
        instance_submitted(
            self.lent.state(),
            self.workload,
            &self.run,
            submission,
            instance,
        )
    }

    /// Submits a pipeline run if its tenant may start one now; otherwise
    /// records why (once) and defers it, or drops it when it never can.
    fn admit_instance(&mut self, submission: usize, instance: u32) -> Result<(), RunError> {
        // On resume, runs admitted out of arrival order are already in.
        if self.resumed && self.submitted(submission, instance) {
            return Ok(());
        }
        let tenant = TenantId(self.workload.submissions[submission].tenant.clone());
        match admit_run(self.lent.state(), &tenant) {
            // Behind runs already waiting, a new one waits its turn.
            Ok(()) if self.deferred.contains_key(&tenant) => {
                if let Some(queue) = self.deferred.get_mut(&tenant) {
                    queue.push_back((submission, instance));
                }
                Ok(())
            }
            Ok(()) => self.submit_instance(submission, instance),
            Err(denial) => {
                let wait = matches!(denial, Denial::Concurrency(_));
                let reason = denial.reason().to_owned();
                self.emit(Event::AdmissionDenied {
                    tenant: tenant.clone(),
                    task: None,
                    reason,
                })?;
                if wait {
                    self.deferred
                        .entry(tenant)
                        .or_default()
                        .push_back((submission, instance));
                }
                Ok(())
            }
        }
    }

    /// Submits the waiting pipeline runs their tenants may start now,
    /// oldest first; a tenant still at its limit costs one comparison.
    /// Returns how many were admitted or dropped.
    fn admit_deferred(&mut self) -> Result<usize, RunError> {
        let mut moved = 0;
        let mut emptied = Vec::new();
        // A tenant blocked after an overrun never starts its waiting runs:
        // they are refused now, with the reason.
        let state = self.lent.state();
        let blocked: Vec<TenantId> = self
            .deferred
            .keys()
            .filter(|t| matches!(admit_run(state, t), Err(d) if !d.may_wait()))
            .cloned()
            .collect();
        for tenant in blocked {
            let reason = admit_run(self.lent.state(), &tenant)
                .err()
                .map(|d| d.reason().to_owned())
                .unwrap_or_default();
            for _ in self.deferred.remove(&tenant).unwrap_or_default() {
                moved += 1;
                self.emit(Event::AdmissionDenied {
                    tenant: tenant.clone(),
                    task: None,
                    reason: reason.clone(),
                })?;
            }
        }
        // Usually no tenant may start a run yet: find out without cloning.
        let state = self.lent.state();
        let tenants: Vec<TenantId> = self
            .deferred
            .keys()
            .filter(|t| may_start_run(state, t))
            .cloned()
            .collect();
        for tenant in tenants {
            while let Some(&(submission, instance)) =
                self.deferred.get(&tenant).and_then(VecDeque::front)
            {
                if self.resumed && self.submitted(submission, instance) {
                    self.pop_deferred(&tenant);
                    continue;
                }
                if !may_start_run(self.lent.state(), &tenant) {
                    break;
                }
                self.pop_deferred(&tenant);
                moved += 1;
                self.submit_instance(submission, instance)?;
            }
            if self.deferred.get(&tenant).is_some_and(VecDeque::is_empty) {
                emptied.push(tenant);
            }
        }
        for tenant in emptied {
            self.deferred.remove(&tenant);
        }
        Ok(moved)
    }

    fn pop_deferred(&mut self, tenant: &TenantId) {
        if let Some(queue) = self.deferred.get_mut(tenant) {
            queue.pop_front();
        }
    }

    /// Submits every task of one pipeline run.
    fn submit_instance(&mut self, submission: usize, instance: u32) -> Result<(), RunError> {
        for event in instance_events(self.workload, &self.run, submission, instance) {
            self.emit(event)?;
        }
        Ok(())
    }
}

/// `Some(new)` when it differs from `old`.
fn changed<T: PartialEq + Copy>(old: &T, new: T) -> Option<T> {
    (*old != new).then_some(new)
}

fn worker_id(n: u32) -> WorkerId {
    WorkerId(format!("worker-{n:02}"))
}

/// The pipeline instance id of run `instance` of `submission`.
fn instance_id(workload: &Workload, submission: usize, instance: u32) -> String {
    let spec = &workload.submissions[submission];
    format!("{}/{}#{instance}", spec.tenant, spec.pipeline)
}

/// The task names of `node`: one per map copy, else its id.
fn replicas(
    pipeline: &crate::workload::PipelineSpec,
    node: &crate::workload::NodeSpec,
) -> Vec<String> {
    if node.stage == Some(Stage::Map) {
        (0..pipeline.fan_out)
            .map(|k| format!("{}.{k}", node.id))
            .collect()
    } else {
        vec![node.id.clone()]
    }
}

/// The `task_submitted` events of pipeline run `instance` of `submission`.
pub(crate) fn instance_events(
    workload: &Workload,
    run: &RunId,
    submission: usize,
    instance: u32,
) -> Vec<Event> {
    let spec = &workload.submissions[submission];
    let Some(pipeline) = workload.pipelines.get(&spec.pipeline) else {
        return Vec::new();
    };
    let instance_id = instance_id(workload, submission, instance);
    let task_id = |node: &str| TaskId(format!("{run}/{instance_id}/{node}"));
    let replicas = |node: &crate::workload::NodeSpec| replicas(pipeline, node);
    let by_id: std::collections::BTreeMap<&str, &crate::workload::NodeSpec> =
        pipeline.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let mut events = Vec::with_capacity(pipeline.nodes.len());
    for node in &pipeline.nodes {
        let deps: Vec<TaskId> = node
            .deps
            .iter()
            .filter_map(|d| by_id.get(d.as_str()))
            .flat_map(|d| replicas(d))
            .map(|r| task_id(&r))
            .collect();
        for (k, name) in replicas(node).into_iter().enumerate() {
            let mut params = node.params.to_value();
            if node.stage.is_some() {
                let extra = if node.stage == Some(Stage::Map) {
                    ("shard", serde_json::Value::from(k))
                } else {
                    (
                        "inputs",
                        serde_json::Value::from(
                            deps.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
                        ),
                    )
                };
                if !params.is_object() {
                    params = serde_json::json!({});
                }
                params[extra.0] = extra.1;
            }
            events.push(Event::TaskSubmitted {
                run: run.clone(),
                task: task_id(&name),
                tenant: TenantId(spec.tenant.clone()),
                priority: node.priority.unwrap_or(spec.priority),
                deps: deps.clone(),
                pipeline: Some(PipelineId(instance_id.clone())),
                cost_ceiling_micros: ceiling_of(node, &params),
                handler: node.handler.clone(),
                params: Params::from_value(&params),
                max_attempts: workload.max_attempts,
                optional: node.optional,
            });
        }
    }
    events
}

/// A node's cost ceiling: the declared one (or the workload's default),
/// else for `sim` the most the step can cost; 0 for a node declared free.
fn ceiling_of(node: &crate::workload::NodeSpec, params: &serde_json::Value) -> Micros {
    if node.cost_ceiling_micros > Micros::ZERO {
        return node.cost_ceiling_micros;
    }
    if node.handler == "sim" {
        return crate::domain::cost::cost_ceiling(&Params::from_value(params));
    }
    Micros::ZERO
}

/// Whether pipeline run `instance` of `submission` is already in `state`.
pub(crate) fn instance_submitted(
    state: &State,
    workload: &Workload,
    run: &RunId,
    submission: usize,
    instance: u32,
) -> bool {
    // Its first task (an instance is submitted whole, in one step).
    let Some(pipeline) = workload
        .pipelines
        .get(&workload.submissions[submission].pipeline)
    else {
        return false;
    };
    let Some(first) = pipeline
        .nodes
        .first()
        .and_then(|n| replicas(pipeline, n).into_iter().next())
    else {
        return false;
    };
    let instance_id = instance_id(workload, submission, instance);
    let task = TaskId(format!("{run}/{instance_id}/{first}"));
    state.queue.get(&task).is_some()
}

/// Registers the workload's tenants, or updates the ones the ledger knows
/// when their settings changed.
pub(crate) fn registration_events(state: &State, workload: &Workload) -> Vec<Event> {
    let mut out = Vec::new();
    for t in &workload.tenants {
        let tenant = TenantId(t.id.clone());
        let event = match state.tenants.get(&tenant) {
            None => Some(Event::TenantRegistered {
                tenant,
                budget_micros: t.budget_micros,
                max_concurrent_runs: t.max_concurrent_runs,
                learning_intensity: t.learning_intensity,
                meta_learning: t.meta_learning,
                budget_period: t.budget_period,
            }),
            Some(known) => {
                let update = Event::TenantUpdated {
                    tenant,
                    budget_micros: changed(&known.budget_micros, t.budget_micros),
                    max_concurrent_runs: changed(&known.max_concurrent_runs, t.max_concurrent_runs),
                    learning_intensity: changed(&known.learning_intensity, t.learning_intensity),
                    meta_learning: changed(&known.meta_learning, t.meta_learning),
                    budget_period: changed(&known.budget_period, t.budget_period),
                };
                let unchanged = matches!(
                    &update,
                    Event::TenantUpdated {
                        budget_micros: None,
                        max_concurrent_runs: None,
                        learning_intensity: None,
                        meta_learning: None,
                        budget_period: None,
                        ..
                    }
                );
                (!unchanged).then_some(update)
            }
        };
        out.extend(event);
    }
    out
}

/// Runs `workload` on virtual time, appending every step to `ledger`;
/// `progress(done, total)` is called after each step.
pub fn run_simulated(
    ledger: &Ledger,
    workload: &Workload,
    options: &RunOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RunReport, RunError> {
    let wall = Instant::now();
    let (seed, run) = options.seed_and_run(workload);
    workload.check_run(run.as_str())?;
    let lent = ledger.lend()?;
    if lent.state().runs.get(&run).is_some() {
        return Err(RunError::RunExists(run.0));
    }
    let concurrency = workload.num_workers.min(workload.max_concurrency);
    let mut sim = Sim {
        ledger,
        workload,
        seed,
        run: run.clone(),
        lent,
        now: workload.start,
        timers: BinaryHeap::new(),
        order: 0,
        free_workers: (1..=concurrency).collect(),
        running: 0,
        backpressure: false,
        retry_wakeups: BinaryHeap::new(),
        rules: Rules {
            policy: options.policy,
            ..Rules::new(workload.policy, seed)
        },
        deferred: BTreeMap::new(),
        resumed: false,
        in_flight: None,
        ended_sent: 0,
        ended_appended: 0,
    };

    for event in registration_events(sim.lent.state(), workload) {
        sim.emit(event)?;
    }
    sim.emit(Event::RunStarted {
        run: run.clone(),
        seed,
        config_hash: workload.config_hash.clone(),
    })?;

    sim.emit(Event::WorkloadRecorded {
        run: run.clone(),
        format: "toml".to_owned(),
        text: workload.text.clone(),
    })?;
    drive(sim, options.stop_after_steps, progress, wall)
}

/// The arrival times of every pipeline run: `(time, submission, instance)`.
pub(crate) fn arrivals(workload: &Workload) -> Vec<(i64, usize, u32)> {
    let mut arrivals = Vec::new();
    for (i, s) in workload.submissions.iter().enumerate() {
        for n in 0..s.runs {
            arrivals.push((
                workload
                    .start
                    .0
                    .saturating_add(s.interval_micros.saturating_mul(i64::from(n))),
                i,
                n,
            ));
        }
    }
    arrivals.sort_unstable();
    arrivals
}

pub(crate) fn total_tasks(workload: &Workload) -> u64 {
    workload.total_tasks()
}

/// Runs the event loop until every task has ended, then finishes the run.
fn drive(
    mut sim: Sim<'_>,
    stop_after_steps: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
    wall: Instant,
) -> Result<RunReport, RunError> {
    let workload = sim.workload;
    let run = sim.run.clone();
    let arrivals = arrivals(workload);
    let total_tasks = total_tasks(workload);
    // On resume, pipeline runs already submitted are not submitted again.
    let mut next_arrival = 0usize;
    while next_arrival < arrivals.len()
        && sim.submitted(arrivals[next_arrival].1, arrivals[next_arrival].2)
    {
        next_arrival += 1;
    }
    let mut steps = 0u64;
    loop {
        let seq_at_step = sim.lent.state().seq;
        // A run may start in a later budget period than the ledger's last
        // (a run of a later day): its periods turn before anything is decided.
        let now = sim.now;
        decide::turn_periods(&mut sim, now)?;
        if sim.backpressure && !sim.over_threshold() {
            sim.backpressure = false;
            let threshold = sim.threshold_count();
            sim.emit(Event::BackpressureReleased {
                run: run.clone(),
                running: sim.running,
                threshold,
            })?;
        }
        if !sim.backpressure {
            // Pipeline runs that waited for their tenant's concurrency go first.
            sim.admit_deferred()?;
        }
        while !sim.backpressure
            && next_arrival < arrivals.len()
            && arrivals[next_arrival].0 <= sim.now.0
        {
            let (_, submission, instance) = arrivals[next_arrival];
            sim.admit_instance(submission, instance)?;
            next_arrival += 1;
        }
        sim.dispatch()?;
        // Steps are decided on the lent state, so the ledger need not answer
        // each one: append in batches of a few thousand events.
        if sim.lent.pending() >= FLUSH_EVENTS {
            sim.flush()?;
        }
        steps += 1;
        if stop_after_steps.is_some_and(|limit| steps >= limit) {
            // The drill dies right after its last append.
            sim.flush()?;
            sim.wait()?;
            return Err(RunError::Stopped(steps));
        }
        progress(sim.ended_appended, total_tasks);

        let mut wake: Option<i64> = sim.timers.peek().map(|t| t.0.0);
        if !sim.backpressure && next_arrival < arrivals.len() {
            wake = Some(wake.map_or(arrivals[next_arrival].0, |w| {
                w.min(arrivals[next_arrival].0)
            }));
        }
        while sim.retry_wakeups.peek().is_some_and(|r| r.0 <= sim.now.0) {
            sim.retry_wakeups.pop();
        }
        if let Some(Reverse(at)) = sim.retry_wakeups.peek().copied() {
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        let Some(at) = wake else {
            // A step that ended tasks without running them (a skip, a
            // termination) may have made others ready: nothing runs only
            // once a step decides nothing.
            if sim.lent.state().seq != seq_at_step {
                continue;
            }
            if sim.deferred.is_empty() {
                break;
            }
            // Nothing runs, so no concurrency limit can hold them back: a
            // deferred run still refused here never will be admitted.
            if sim.admit_deferred()? == 0 {
                for (tenant, queue) in std::mem::take(&mut sim.deferred) {
                    for (_, instance) in queue {
                        let reason = format!(
                            "pipeline run #{instance} of tenant `{tenant}` could not be admitted"
                        );
                        sim.emit(Event::AdmissionDenied {
                            tenant: tenant.clone(),
                            task: None,
                            reason,
                        })?;
                    }
                }
            }
            continue;
        };
        let next = Timestamp(at.max(sim.now.0));
        // Budgets of tenants with a period start again when it turns.
        sim.now = next;
        decide::turn_periods(&mut sim, next)?;
        while sim.timers.peek().is_some_and(|t| t.0.0 <= sim.now.0) {
            let Some(Reverse((_, _, task, worker, attempt, timed_out, params))) = sim.timers.pop()
            else {
                break;
            };
            sim.finish_attempt(task, worker, attempt, timed_out, params)?;
        }
    }
    sim.emit(Event::RunFinished { run: run.clone() })?;
    sim.flush()?;
    sim.wait()?;

    // One state: what the executor decided on is what the ledger holds.
    let digests = sim.lent.state().digests();
    let elapsed = sim.now.0 - workload.start.0;
    let summary = sim
        .lent
        .state()
        .runs
        .get(&run)
        .cloned()
        .ok_or_else(|| RunError::Impossible("the run vanished".to_owned()))?;
    let Sim { ledger, lent, .. } = sim;
    lent.give_back();
    let head = ledger.head()?;
    Ok(RunReport::new(
        &summary,
        elapsed,
        wall,
        head,
        digests.combined,
    ))
}

/// Finishes a run whose process died: leases it held are returned
/// (`lease_expired`), pending tasks stay pending, pipeline runs not yet
/// submitted are submitted, and the loop goes on from the last recorded
/// time until every task is ACKed, dead-lettered or cancelled. `run`
/// defaults to the most recent unfinished run.
pub fn resume_simulated(
    ledger: &Ledger,
    run: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RunReport, RunError> {
    let wall = Instant::now();
    let lent = ledger.lend()?;
    let state = lent.state();
    let summary = match run {
        Some(id) => state
            .runs
            .get(&RunId(id.to_owned()))
            .cloned()
            .ok_or_else(|| RunError::Resume(format!("run `{id}` is not in the ledger")))?,
        None => state
            .runs
            .sorted()
            .into_iter()
            .rev()
            .find(|r| r.status == crate::domain::activity::RunStatus::Running)
            .cloned()
            .ok_or_else(|| RunError::Resume("no unfinished run in the ledger".to_owned()))?,
    };
    if summary.status == crate::domain::activity::RunStatus::Finished {
        return Err(RunError::Resume(format!(
            "run `{}` is already finished",
            summary.run
        )));
    }
    let text = state
        .workload_of(&summary.run)
        .ok_or_else(|| {
            RunError::Resume(format!(
                "run `{}` recorded no workload to resume from",
                summary.run
            ))
        })?
        .to_owned();
    let workload = Workload::parse(&format!("<workload of {}>", summary.run), &text)
        .map_err(|e| RunError::Resume(format!("the recorded workload no longer parses: {e}")))?;
    let concurrency = workload.num_workers.min(workload.max_concurrency);
    let now = state.last_at.max(workload.start);
    let engaged = summary.backpressure_engaged > summary.backpressure_released;
    let mut sim = Sim {
        ledger,
        workload: &workload,
        seed: summary.seed,
        run: summary.run.clone(),
        lent,
        now,
        timers: BinaryHeap::new(),
        order: 0,
        free_workers: (1..=concurrency).collect(),
        running: 0,
        backpressure: engaged,
        retry_wakeups: BinaryHeap::new(),
        rules: Rules::new(workload.policy, summary.seed),
        deferred: BTreeMap::new(),
        resumed: true,
        in_flight: None,
        ended_sent: 0,
        ended_appended: 0,
    };
    // Retries the dead process had scheduled.
    let run_id = summary.run.clone();
    if let Some(at) = next_retry_at(sim.lent.state(), sim.now, |t| t.run == run_id) {
        sim.retry_wakeups.push(Reverse(at.0));
    }
    // The dead process's leases: its attempts are lost, the tasks go back
    // (or, after a last attempt, to the dead letters).
    let run_id = summary.run.clone();
    decide::expire_leases(&mut sim, Lost::Release, |t| t.run == run_id)?;
    // Retries the dead process had scheduled.
    let run_id = summary.run.clone();
    if let Some(at) = next_retry_at(sim.lent.state(), sim.now, |t| t.run == run_id) {
        sim.retry_wakeups.push(Reverse(at.0));
    }
    drive(sim, None, progress, wall)
}
