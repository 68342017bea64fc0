//! The real-time executor: a pool of pull-based workers on tokio running
//! real handlers (`exec`, user code, or `sim` sleeping its latency) under a
//! timeout, fed by a submitter that waits while the pool is under
//! backpressure. Every move goes through the [`TaskQueue`]; time is the
//! wall clock, so the ledger is replayable but not reproducible byte for
//! byte (use the simulated executor for that).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::sync::{Notify, mpsc};

use super::handler::{Handlers, TaskContext};
use super::queue::{Lease, MemoryQueue, QueueError, Report, TaskQueue, TransportError};
use super::redis::Retries;
use super::setup::{
    RunError, RunOptions, RunReport, arrivals, instance_events, instance_submitted, over_threshold,
    registration_events, threshold_count,
};
use crate::domain::command::{Command, Expiring, Outcome, Submission};
use crate::domain::decide::Rules;
use crate::domain::scheduler::Lost;
use crate::domain::{Event, RunId, TenantId, WorkerId};
use crate::log::{Append, AppendError, Ledger};
use crate::workload::Workload;

/// Shared between the submitter and the workers.
struct Pool {
    ledger: Ledger,
    run: RunId,
    rules: Rules,
    running: AtomicU32,
    max_concurrency: u32,
    threshold_bp: u32,
    /// Whether backpressure is engaged; the lock orders engage/release events.
    backpressure: tokio::sync::Mutex<bool>,
    submitted_all: AtomicBool,
    /// Set on the first error anywhere: every task of the pool stops.
    stop: AtomicBool,
    failure: std::sync::Mutex<Option<RunError>>,
    /// Signalled when work may have become ready (a submission, the last
    /// one, a stop): the conductor looks again.
    wake: Notify,
}

impl Pool {
    /// Records the first failure and stops the pool.
    fn fail(&self, error: RunError) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(error);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn over_threshold(&self, running: u32) -> bool {
        over_threshold(running, self.threshold_bp, self.max_concurrency)
    }

    fn threshold(&self) -> u32 {
        threshold_count(self.threshold_bp, self.max_concurrency)
    }

    /// Records an engage or release when the running count crossed the threshold.
    async fn check_backpressure(&self) -> Result<(), RunError> {
        let mut engaged = self.backpressure.lock().await;
        let running = self.running.load(Ordering::SeqCst);
        let over = self.over_threshold(running);
        if over != *engaged {
            *engaged = over;
            let (run, threshold) = (self.run.clone(), self.threshold());
            let event = if over {
                Event::BackpressureEngaged {
                    run,
                    running,
                    threshold,
                }
            } else {
                Event::BackpressureReleased {
                    run,
                    running,
                    threshold,
                }
            };
            self.ledger.append_async(vec![Append::from(event)]).await?;
        }
        Ok(())
    }

    /// Tasks of the run that have not ended.
    async fn open_tasks(&self) -> Result<u64, RunError> {
        let (submitted, ended) = self.task_counts().await?;
        Ok(submitted.saturating_sub(ended))
    }

    /// Tasks of the run submitted, and ended.
    async fn task_counts(&self) -> Result<(u64, u64), RunError> {
        let progress = self.ledger.run_progress_async(&self.run).await?;
        Ok(progress.map_or((0, 0), |p| (p.tasks_submitted, p.tasks_ended)))
    }
}

/// Where the tasks of a real-time run go.
pub enum Dispatch {
    /// The in-memory queue (the ledger's projection), workers in this process.
    Memory,
    /// Redis Streams: this process coordinates — owns the ledger, admits,
    /// dispatches, records what workers report — with `local_workers`
    /// workers of its own; `runledger worker` processes elsewhere pull from
    /// the same streams.
    Redis {
        streams: crate::runtime::redis::RedisStreams,
        local_workers: u32,
    },
}

/// Makes the relative `exec` paths of `workload`, a run's recorded
/// workload text, absolute against the directory they were resolved
/// against when the run started (the workload file's, see
/// [`Workload::load`]), so that a resumed run runs the same programs
/// wherever it is resumed from. The directory is read from the tasks the
/// run already submitted, whose params carry the absolute paths; it is an
/// error when none shows it.
pub fn resolve_recorded_exec_paths(
    state: &crate::domain::State,
    workload: &mut Workload,
    run: &RunId,
) -> Result<(), RunError> {
    if !workload.has_relative_exec_paths() {
        return Ok(());
    }
    let dir = arrivals(workload)
        .into_iter()
        .filter(|&(_, submission, instance)| {
            instance_submitted(state, workload, run, submission, instance)
        })
        .flat_map(|(_, submission, instance)| instance_events(workload, run, submission, instance))
        .find_map(|event| match event {
            Event::TaskSubmitted {
                task,
                handler,
                params,
                ..
            } if handler == "exec" => {
                let submitted = state.queue.get(&task)?;
                crate::workload::exec_dir_of(&params, &submitted.params)
            }
            _ => None,
        });
    let Some(dir) = dir else {
        return Err(RunError::Resume(format!(
            "run `{run}` cannot be resumed: its workload names `exec` files by relative paths, and no task it submitted shows the directory they are relative to"
        )));
    };
    workload.resolve_exec_paths(&dir);
    Ok(())
}

/// Runs `workload` in real time with `handlers`. With `resume`, continues
/// the unfinished run `options.run_id` instead of starting one.
pub async fn run_live(
    ledger: &Ledger,
    workload: &Workload,
    options: &RunOptions,
    handlers: &Handlers,
    resume: bool,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<RunReport, RunError> {
    run_live_on(
        ledger,
        workload,
        options,
        handlers,
        resume,
        Dispatch::Memory,
        progress,
    )
    .await
}

/// [`run_live`] on the queue `dispatch` names.
pub async fn run_live_on(
    ledger: &Ledger,
    workload: &Workload,
    options: &RunOptions,
    handlers: &Handlers,
    resume: bool,
    dispatch: Dispatch,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<RunReport, RunError> {
    let seed = options.seed.unwrap_or(workload.seed);
    match dispatch {
        Dispatch::Memory => {
            let queue = MemoryQueue::new(ledger.clone(), workload.policy, seed);
            let workers = workload.num_workers.min(workload.max_concurrency);
            run_with(
                ledger, workload, options, handlers, resume, queue, workers, None, progress,
            )
            .await
        }
        Dispatch::Redis {
            streams,
            local_workers,
        } => {
            let timeout = Duration::from_micros(workload.worker_timeout_micros.max(1) as u64);
            let lease = streams.config().lease;
            if timeout >= lease {
                return Err(RunError::Resume(format!(
                    "the Redis lease ({} ms, --lease-ms) must be longer than an attempt may run (worker_timeout_sec: {} ms), or running attempts would be taken over",
                    lease.as_millis(),
                    timeout.as_millis()
                )));
            }
            let queue = crate::runtime::redis::RedisQueue::new(
                ledger.clone(),
                streams,
                workload.policy,
                seed,
            )
            .await
            .map_err(|e| RunError::Resume(format!("the Redis queue: {e}")))?
            .with_timeout(timeout);
            if resume {
                // What the last coordinator admitted is on the streams or
                // with a worker: wait for it before admitting anything twice.
                let (_, run) = options.seed_and_run(workload);
                queue.resume(&run).await?;
            }
            let coordinator = queue.clone();
            let workers = local_workers.min(workload.max_concurrency);
            run_with(
                ledger,
                workload,
                options,
                handlers,
                resume,
                queue,
                workers,
                Some(coordinator),
                progress,
            )
            .await
        }
    }
}

/// How many pipeline runs the submitter offers the ledger in one step.
const SUBMIT_BATCH: usize = 1_024;
/// How many results one step records, at most.
const SETTLE_BATCH: usize = 4_096;
/// How long the conductor sleeps when nothing was ready and nothing woke
/// it: a retry or a budget may come due meanwhile.
const IDLE_POLL: Duration = Duration::from_millis(2);

#[allow(clippy::too_many_arguments)]
async fn run_with<Q: TaskQueue + Clone + 'static>(
    ledger: &Ledger,
    workload: &Workload,
    options: &RunOptions,
    handlers: &Handlers,
    resume: bool,
    queue: Q,
    local_workers: u32,
    coordinator: Option<crate::runtime::redis::RedisQueue>,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<RunReport, RunError> {
    let wall = Instant::now();
    let (seed, run) = options.seed_and_run(workload);
    let rules = Rules::new(workload.policy, seed);
    let state = begin(
        ledger,
        workload,
        resume,
        coordinator.is_some(),
        &run,
        seed,
        rules,
    )
    .await?;
    let pool = Arc::new(Pool {
        ledger: ledger.clone(),
        run: run.clone(),
        rules,
        running: AtomicU32::new(0),
        max_concurrency: workload.max_concurrency,
        threshold_bp: workload.backpressure_threshold_bp,
        backpressure: tokio::sync::Mutex::new(
            state
                .runs
                .get(&run)
                .is_some_and(|r| r.backpressure_engaged > r.backpressure_released),
        ),
        submitted_all: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        failure: std::sync::Mutex::new(None),
        wake: Notify::new(),
    });
    // A resumed run may have stopped with backpressure engaged: nothing runs
    // now, so release it.
    pool.check_backpressure().await?;

    let submitter = tokio::spawn(submit(
        Arc::clone(&pool),
        workload.clone(),
        resume.then_some(state),
    ));
    let expiry = {
        let (pool, queue) = (Arc::clone(&pool), queue.clone());
        tokio::spawn(async move {
            while !pool.stopped() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Err(e) = queue.expire_leases().await {
                    pool.fail(e.into());
                }
            }
        })
    };

    let timeout = Duration::from_micros(workload.worker_timeout_micros.max(1) as u64);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(coordinator) = coordinator {
        coordinate(
            &mut tasks,
            &pool,
            coordinator,
            workload.max_concurrency,
            timeout,
        );
    }
    if local_workers > 0 {
        let workers = (1..=local_workers)
            .map(|n| WorkerId(format!("worker-{n:02}")))
            .collect();
        spawn_pool(&mut tasks, &pool, queue, handlers, workers, seed, timeout);
    }
    watch(&mut tasks, &pool, workload.total_tasks(), progress).await;
    expiry.abort();
    if let Err(e) = submitter.await {
        pool.fail(RunError::Impossible(format!("the submitter panicked: {e}")));
    }
    if let Some(error) = pool.failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(error);
    }
    finish(ledger, &run, wall).await
}

/// Starts the run — its tenants registered, `run_started` and its
/// workload recorded — or, resuming it, returns the leases an earlier
/// process held; the state before.
async fn begin(
    ledger: &Ledger,
    workload: &Workload,
    resume: bool,
    on_redis: bool,
    run: &RunId,
    seed: u64,
    rules: Rules,
) -> Result<crate::domain::State, RunError> {
    if !resume {
        workload.check_run(run.as_str())?;
    }
    let (state, _) = ledger.state_async().await?;
    if resume {
        // On Redis, leases belong to workers that may still be running:
        // they are taken over in Redis, not expired here.
        if !on_redis {
            let expire = Command::ExpireLeases {
                which: Expiring::Run(run.clone()),
                lost: Lost::Release,
            };
            ledger.command(rules, expire).await?;
        }
        return Ok(state);
    }
    if state.runs.get(run).is_some() {
        return Err(RunError::RunExists(run.0.clone()));
    }
    let mut setup = registration_events(&state, workload);
    setup.push(Event::RunStarted {
        run: run.clone(),
        seed,
        config_hash: workload.config_hash.clone(),
    });
    setup.push(Event::WorkloadRecorded {
        run: run.clone(),
        format: "toml".to_owned(),
        text: workload.text.clone(),
    });
    ledger
        .append_async(setup.into_iter().map(Into::into).collect())
        .await?;
    Ok(state)
}

/// The submitter: pipeline runs arrive at their offsets from the start
/// and wait while backpressure is engaged; the ones due together are
/// offered in one step ([`Command::SubmitRuns`]: admitted under their
/// tenant's limits, or the denial recorded once; a blocked tenant's run is
/// dropped; a run whose tenant is at its limit waits, and the ones after
/// it with it). `resumed` is the state a resumed run starts from: the runs
/// it already holds are not submitted again.
async fn submit(pool: Arc<Pool>, workload: Workload, resumed: Option<crate::domain::State>) {
    let run = pool.run.clone();
    let mut arriving: std::collections::VecDeque<_> = arrivals(&workload)
        .into_iter()
        .filter(|&(_, submission, instance)| {
            resumed.as_ref().is_none_or(|state| {
                !instance_submitted(state, &workload, &run, submission, instance)
            })
        })
        .collect();
    drop(resumed);
    let origin = tokio::time::Instant::now();
    let offset = |at: i64| Duration::from_micros(at.saturating_sub(workload.start.0).max(0) as u64);
    let mut denial_recorded = false;
    while let Some(&(first, _, _)) = arriving.front() {
        tokio::time::sleep_until(origin + offset(first)).await;
        while *pool.backpressure.lock().await && !pool.stopped() {
            tokio::time::sleep(IDLE_POLL).await;
        }
        if pool.stopped() {
            return;
        }
        let due = origin.elapsed();
        let runs = arriving
            .iter()
            .take(SUBMIT_BATCH)
            .take_while(|&&(at, _, _)| offset(at) <= due)
            .map(|&(_, submission, instance)| Submission {
                tenant: TenantId(workload.submissions[submission].tenant.clone()),
                events: instance_events(&workload, &run, submission, instance),
            })
            .collect();
        let command = Command::SubmitRuns {
            runs,
            denial_recorded,
        };
        let outcome = pool.ledger.command(pool.rules, command).await;
        let (taken, waiting) = match outcome.map(|(_, o)| o) {
            Ok(Outcome::Submitted { taken, waiting }) => (taken, waiting),
            Ok(other) => {
                let why = format!("a submission step answered {other:?}");
                return pool.fail(RunError::Impossible(why));
            }
            Err(e) => return pool.fail(e.into()),
        };
        arriving.drain(..taken);
        pool.wake.notify_one();
        denial_recorded = waiting.is_some();
        if denial_recorded {
            tokio::time::sleep(IDLE_POLL).await;
        }
    }
    pool.submitted_all.store(true, Ordering::SeqCst);
    pool.wake.notify_one();
}

/// How long the Redis coordinator's loops wait for work before looking
/// again: the results loop blocks on the results stream and the dispatch
/// loop waits for results to be recorded (each wakes at once when there is
/// something); past this, a retry or a stale dispatch may have come due.
const COORDINATOR_WAIT: Duration = Duration::from_millis(20);

/// The Redis coordinator's two loops, so that admitting and dispatching
/// never waits for recording results, nor the other way round (each waits
/// for its ledger steps to be durable): until the run has no open task
/// left. Neither polls: the results loop blocks reading the results
/// stream, and the dispatch loop runs again when results were recorded
/// (then it dispatches once an eighth of the window is free, so each
/// admission step takes a batch), runs were submitted, or
/// [`COORDINATOR_WAIT`] passed (then any room will do).
fn coordinate(
    tasks: &mut tokio::task::JoinSet<()>,
    pool: &Arc<Pool>,
    coordinator: crate::runtime::redis::RedisQueue,
    in_flight: u32,
    timeout: Duration,
) {
    let done = Arc::new(AtomicBool::new(false));
    let lease = timeout + Duration::from_secs(5);
    {
        let (pool, coordinator, done) = (Arc::clone(pool), coordinator.clone(), Arc::clone(&done));
        // Woken by recorded results, it waits for room for a batch (an
        // eighth of the window); otherwise any room will do.
        let batch = (in_flight / 8).max(1);
        tasks.spawn(async move {
            let mut retries = Retries::new("dispatching to Redis");
            let mut min_room = 1;
            while !pool.stopped() && !done.load(Ordering::SeqCst) {
                let round = coordinator
                    .fill(&pool.run, in_flight, min_room, lease)
                    .await;
                if !retry_transport(&pool, &mut retries, round).await {
                    return;
                }
                min_room = tokio::select! {
                    () = coordinator.recorded() => batch,
                    () = pool.wake.notified() => 1,
                    () = tokio::time::sleep(COORDINATOR_WAIT) => 1,
                };
            }
        });
    }
    let pool = Arc::clone(pool);
    tasks.spawn(async move {
        let mut retries = Retries::new("recording results from Redis");
        while !pool.stopped() {
            let round = coordinator
                .apply_results_within(COORDINATOR_WAIT)
                .await
                .map(drop);
            if !retry_transport(&pool, &mut retries, round).await {
                return;
            }
            match pool.open_tasks().await {
                Ok(0) if pool.submitted_all.load(Ordering::SeqCst) => {
                    done.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(_) => {}
                Err(e) => return pool.fail(e),
            }
        }
    });
}

/// The local workers and the loop that feeds them ([`conduct`]). A worker
/// hands its result over and takes its next lease from the same ledger
/// step that records the result.
fn spawn_pool<Q: TaskQueue + Clone + 'static>(
    tasks: &mut tokio::task::JoinSet<()>,
    pool: &Arc<Pool>,
    queue: Q,
    handlers: &Handlers,
    workers: Vec<WorkerId>,
    seed: u64,
    timeout: Duration,
) {
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let mut slots = Vec::with_capacity(workers.len());
    for me in 0..workers.len() {
        let (slot, leases) = mpsc::channel(1);
        slots.push(slot);
        let (pool, handlers, reports) = (Arc::clone(pool), handlers.clone(), report_tx.clone());
        tasks.spawn(async move {
            let worker = Worker {
                me,
                leases,
                reports,
            };
            if let Err(e) = worker.work(&pool, &handlers, seed, timeout).await {
                pool.fail(e);
            }
        });
    }
    drop(report_tx);
    let pool = Arc::clone(pool);
    tasks.spawn(async move {
        let lease = timeout + Duration::from_secs(5);
        let conductor = Conductor {
            workers,
            slots,
            reports: report_rx,
            lease,
        };
        if let Err(e) = conductor.conduct(&pool, &queue).await {
            pool.fail(e);
        }
    });
}

/// A worker's result: which worker, the lease, what it reported.
type Reported = (usize, Lease, Report);

/// Feeds the local workers: `slots[i]` hands leases to `workers[i]`,
/// whose results come back on `reports`.
struct Conductor {
    workers: Vec<WorkerId>,
    slots: Vec<mpsc::Sender<Lease>>,
    reports: mpsc::UnboundedReceiver<Reported>,
    lease: Duration,
}

impl Conductor {
    /// Until the run has no open task left: one ledger step records every
    /// result that arrived and leases a ready task to every worker without
    /// one (the ones just reporting included), so a worker holds at most
    /// one lease; when nothing was ready, waits for a submission, a result
    /// or a retry coming due. A step that could not reach the queue (Redis
    /// restarting) is sent again: a result is never dropped while the run
    /// lives. Once the pool stops, it records what the running attempts
    /// report and leases nothing more.
    async fn conduct<Q: TaskQueue>(mut self, pool: &Pool, queue: &Q) -> Result<(), RunError> {
        let index: FxHashMap<WorkerId, usize> = self.workers.iter().cloned().zip(0..).collect();
        let mut idle: Vec<usize> = (0..self.workers.len()).collect();
        let (mut results, mut freed) = (Vec::new(), Vec::new());
        let mut retries = Retries::new("recording results and leasing tasks");
        loop {
            while results.len() < SETTLE_BATCH {
                match self.reports.try_recv() {
                    Ok((me, lease, report)) => {
                        results.push((lease, report));
                        freed.push(me);
                    }
                    Err(_) => break,
                }
            }
            let stopping = pool.stopped();
            let asked: Vec<WorkerId> = match stopping {
                true => Vec::new(),
                false => (idle.iter().chain(&freed))
                    .map(|&i| self.workers[i].clone())
                    .collect(),
            };
            if results.is_empty() && asked.is_empty() {
                if stopping && idle.len() == self.workers.len() {
                    return Ok(());
                }
                // Every worker is busy: wait for one to report.
                match self.reports.recv().await {
                    Some((me, lease, report)) => {
                        results.push((lease, report));
                        freed.push(me);
                    }
                    None => return Ok(()),
                }
                continue;
            }
            let step = queue.settle_and_lease(&results, &pool.run, &asked, self.lease);
            let leases = match step.await {
                Ok(leases) => leases,
                Err(QueueError::Transport(e)) if !stopping => {
                    let wait = retried(&mut retries, Err(QueueError::Transport(e)), false)?;
                    tokio::time::sleep(wait.unwrap_or_default()).await;
                    continue;
                }
                Err(QueueError::Ledger(AppendError::Rejected { rejection, .. })) => {
                    // The lease step was refused (each result was recorded
                    // or refused on its own): no worker gets a task this
                    // round, the next step asks again.
                    tracing::warn!(%rejection, "lease step refused");
                    Vec::new()
                }
                Err(e) => return Err(e.into()),
            };
            retries.succeeded();
            results.clear();
            idle.append(&mut freed);
            let leased = !leases.is_empty();
            for lease in leases {
                let Some(&me) = index.get(&lease.worker) else {
                    let why = format!("a lease for unknown worker `{}`", lease.worker);
                    return Err(RunError::Impossible(why));
                };
                idle.retain(|&i| i != me);
                if self.slots[me].send(lease).await.is_err() {
                    return Ok(());
                }
            }
            if leased || stopping {
                continue;
            }
            if idle.len() == self.workers.len()
                && pool.submitted_all.load(Ordering::SeqCst)
                && pool.open_tasks().await? == 0
            {
                return Ok(());
            }
            tokio::select! {
                () = pool.wake.notified() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
                Some((me, lease, report)) = self.reports.recv() => {
                    results.push((lease, report));
                    freed.push(me);
                }
            }
        }
    }
}

/// One local worker: runs each lease it is handed and reports the result.
struct Worker {
    me: usize,
    leases: mpsc::Receiver<Lease>,
    reports: mpsc::UnboundedSender<Reported>,
}

impl Worker {
    async fn work(
        mut self,
        pool: &Pool,
        handlers: &Handlers,
        seed: u64,
        timeout: Duration,
    ) -> Result<(), RunError> {
        while let Some(lease) = self.leases.recv().await {
            pool.running.fetch_add(1, Ordering::SeqCst);
            pool.check_backpressure().await?;
            let ctx = TaskContext {
                run: lease.run.clone(),
                task: lease.task.clone(),
                tenant: lease.tenant.clone(),
                attempt: lease.attempt,
                seed,
                params: lease.params.clone(),
                inputs: lease.inputs.clone(),
            };
            let report = handlers.attempt(&lease.handler, ctx, timeout).await;
            pool.running.fetch_sub(1, Ordering::SeqCst);
            pool.check_backpressure().await?;
            if self.reports.send((self.me, lease, report)).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// Reports progress until every task of the pool has ended, then stops
/// the pool.
async fn watch(
    tasks: &mut tokio::task::JoinSet<()>,
    pool: &Pool,
    total: u64,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(())) => {}
                Some(Err(e)) => pool.fail(RunError::Impossible(format!("a worker panicked: {e}"))),
            },
            _ = ticker.tick() => {
                // Tasks not yet submitted are not done.
                if let Ok((_, ended)) = pool.task_counts().await {
                    progress(ended.min(total), total);
                }
            }
        }
    }
    pool.stop.store(true, Ordering::SeqCst);
}

/// Records the run's end; its report.
async fn finish(ledger: &Ledger, run: &RunId, wall: Instant) -> Result<RunReport, RunError> {
    ledger
        .append_async(vec![Append::from(Event::RunFinished { run: run.clone() })])
        .await?;
    let end = ledger.run_end_async(run).await?;
    let s = (end.summary).ok_or_else(|| RunError::Impossible("the run vanished".to_owned()))?;
    Ok(RunReport::new(
        &s,
        end.last_at.0 - s.started_at.0,
        wall,
        end.head,
        end.digests.combined,
    ))
}

/// After a coordinator round: true to go on. Redis going away (a
/// restart) is waited out — what the ledger holds is safe, what Redis holds
/// comes back; an error retrying cannot fix (a key of the wrong type) stops
/// the run after [`PERMANENT_RETRIES_MAX`] tries, as does any other error
/// at once.
///
/// [`PERMANENT_RETRIES_MAX`]: crate::runtime::redis::PERMANENT_RETRIES_MAX
async fn retry_transport(
    pool: &Pool,
    retries: &mut Retries,
    round: Result<(), QueueError>,
) -> bool {
    match retried(retries, round, false) {
        Ok(None) => true,
        Ok(Some(wait)) => {
            tokio::time::sleep(wait).await;
            true
        }
        Err(e) => {
            pool.fail(e.into());
            false
        }
    }
}

/// After a call to the queue: `None` when it succeeded, the wait before
/// the next try when a transport error may still pass, else the error to
/// stop with (an error retrying cannot fix, once `retries` gave up).
fn retried(
    retries: &mut Retries,
    result: Result<(), QueueError>,
    stopping: bool,
) -> Result<Option<Duration>, QueueError> {
    match result {
        Ok(()) => {
            retries.succeeded();
            Ok(None)
        }
        Err(QueueError::Transport(e)) => match retries.failed(&e, e.permanent, stopping) {
            Some(wait) => Ok(Some(wait)),
            None => Err(QueueError::Transport(TransportError {
                message: format!(
                    "{} (gave up after {} tries: retrying cannot fix this)",
                    e.message,
                    retries.failures()
                ),
                permanent: true,
            })),
        },
        Err(e) => Err(e),
    }
}
