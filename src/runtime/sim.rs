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
use crate::domain::{Event, Params, RunId, State, TaskId, TenantId, Timestamp, WorkerId};
use crate::log::Ledger;
use crate::log::writer::Lent;
use crate::workload::Workload;

pub use super::setup::{RunError, RunOptions, RunReport};
use super::setup::{
    arrivals, instance_events, instance_submitted, over_threshold, registration_events,
    threshold_count, total_tasks,
};

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
        over_threshold(
            self.running,
            self.workload.backpressure_threshold_bp,
            self.workload.max_concurrency,
        )
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
        threshold_count(
            self.workload.backpressure_threshold_bp,
            self.workload.max_concurrency,
        )
    }

    /// Records the release of backpressure once the running attempts are
    /// back at or below the threshold.
    fn release_backpressure(&mut self) -> Result<(), RunError> {
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
        self.release_backpressure()
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

fn worker_id(n: u32) -> WorkerId {
    WorkerId(format!("worker-{n:02}"))
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

/// Runs the event loop until every task has ended, then finishes the run.
fn drive(
    mut sim: Sim<'_>,
    stop_after_steps: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
    wall: Instant,
) -> Result<RunReport, RunError> {
    let arrivals = arrivals(sim.workload);
    let total_tasks = total_tasks(sim.workload);
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
        sim.step(&arrivals, &mut next_arrival)?;
        steps += 1;
        if stop_after_steps.is_some_and(|limit| steps >= limit) {
            // The drill dies right after its last append.
            sim.flush()?;
            sim.wait()?;
            return Err(RunError::Stopped(steps));
        }
        progress(sim.ended_appended, total_tasks);
        match sim.next_wake(&arrivals, next_arrival) {
            Some(at) => sim.advance(Timestamp(at.max(sim.now.0)))?,
            None if sim.idle(seq_at_step)? => break,
            None => {}
        }
    }
    sim.finish(wall)
}

/// The parts of the event loop.
impl Sim<'_> {
    /// One step at the current time: periods turn, backpressure releases,
    /// waiting and arriving pipeline runs are admitted, free workers take
    /// ready tasks.
    fn step(
        &mut self,
        arrivals: &[(i64, usize, u32)],
        next_arrival: &mut usize,
    ) -> Result<(), RunError> {
        // A run may start in a later budget period than the ledger's last
        // (a run of a later day): its periods turn before anything is decided.
        let now = self.now;
        decide::turn_periods(self, now)?;
        self.release_backpressure()?;
        if !self.backpressure {
            // Pipeline runs that waited for their tenant's concurrency go first.
            self.admit_deferred()?;
        }
        while !self.backpressure
            && *next_arrival < arrivals.len()
            && arrivals[*next_arrival].0 <= self.now.0
        {
            let (_, submission, instance) = arrivals[*next_arrival];
            self.admit_instance(submission, instance)?;
            *next_arrival += 1;
        }
        self.dispatch()?;
        // Steps are decided on the lent state, so the ledger need not answer
        // each one: append in batches of a few thousand events.
        if self.lent.pending() >= FLUSH_EVENTS {
            self.flush()?;
        }
        Ok(())
    }

    /// The virtual time of the next thing to happen: an attempt ending, a
    /// pipeline run arriving (unless backpressure holds arrivals back) or
    /// a retry coming due; `None` when nothing is scheduled.
    fn next_wake(&mut self, arrivals: &[(i64, usize, u32)], next_arrival: usize) -> Option<i64> {
        let mut wake: Option<i64> = self.timers.peek().map(|t| t.0.0);
        if !self.backpressure && next_arrival < arrivals.len() {
            wake = Some(wake.map_or(arrivals[next_arrival].0, |w| {
                w.min(arrivals[next_arrival].0)
            }));
        }
        while self.retry_wakeups.peek().is_some_and(|r| r.0 <= self.now.0) {
            self.retry_wakeups.pop();
        }
        if let Some(Reverse(at)) = self.retry_wakeups.peek().copied() {
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        wake
    }

    /// Nothing is scheduled: whether the run is done. It is not when the
    /// step just taken decided something (a skip or a termination may
    /// have made other tasks ready), nor while pipeline runs wait to be
    /// admitted — those still refused now never will be, and are denied.
    fn idle(&mut self, seq_at_step: u64) -> Result<bool, RunError> {
        // A step that ended tasks without running them (a skip, a
        // termination) may have made others ready: nothing runs only
        // once a step decides nothing.
        if self.lent.state().seq != seq_at_step {
            return Ok(false);
        }
        if self.deferred.is_empty() {
            return Ok(true);
        }
        // Nothing runs, so no concurrency limit can hold them back: a
        // deferred run still refused here never will be admitted.
        if self.admit_deferred()? == 0 {
            for (tenant, queue) in std::mem::take(&mut self.deferred) {
                for (_, instance) in queue {
                    let reason = format!(
                        "pipeline run #{instance} of tenant `{tenant}` could not be admitted"
                    );
                    self.emit(Event::AdmissionDenied {
                        tenant: tenant.clone(),
                        task: None,
                        reason,
                    })?;
                }
            }
        }
        Ok(false)
    }

    /// Moves the virtual time to `next` and ends the attempts due by then.
    fn advance(&mut self, next: Timestamp) -> Result<(), RunError> {
        // Budgets of tenants with a period start again when it turns.
        self.now = next;
        decide::turn_periods(self, next)?;
        while self.timers.peek().is_some_and(|t| t.0.0 <= self.now.0) {
            let Some(Reverse((_, _, task, worker, attempt, timed_out, params))) = self.timers.pop()
            else {
                break;
            };
            self.finish_attempt(task, worker, attempt, timed_out, params)?;
        }
        Ok(())
    }

    /// Records the run's end, waits until the ledger holds everything and
    /// gives the state back.
    fn finish(mut self, wall: Instant) -> Result<RunReport, RunError> {
        let run = self.run.clone();
        self.emit(Event::RunFinished { run: run.clone() })?;
        self.flush()?;
        self.wait()?;

        // One state: what the executor decided on is what the ledger holds.
        let digests = self.lent.state().digests();
        let elapsed = self.now.0 - self.workload.start.0;
        let summary = self
            .lent
            .state()
            .runs
            .get(&run)
            .cloned()
            .ok_or_else(|| RunError::Impossible("the run vanished".to_owned()))?;
        let Sim { ledger, lent, .. } = self;
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
