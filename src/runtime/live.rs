//! The real-time executor: a pool of pull-based workers on tokio running
//! real handlers (`exec`, user code, or `sim` sleeping its latency) under a
//! timeout, fed by a submitter that waits while the pool is under
//! backpressure. Every move goes through the [`TaskQueue`]; time is the
//! wall clock, so the ledger is replayable but not reproducible byte for
//! byte (use the simulated executor for that).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::handler::{Failure, Handlers, TaskContext};
use super::queue::{MemoryQueue, QueueError, TaskQueue, TransportError};
use super::redis::Retries;
use super::sim::{
    RunError, RunOptions, RunReport, arrivals, instance_events, instance_submitted,
    registration_events, total_tasks,
};
use crate::domain::governance::admit_run;
use crate::domain::{Event, RunId, TenantId, WorkerId};
use crate::log::{Append, Ledger};
use crate::workload::Workload;

/// Shared between the submitter and the workers.
struct Pool {
    ledger: Ledger,
    run: RunId,
    running: AtomicU32,
    max_concurrency: u32,
    threshold_bp: u32,
    /// Whether backpressure is engaged; the lock orders engage/release events.
    backpressure: tokio::sync::Mutex<bool>,
    submitted_all: AtomicBool,
    /// Set on the first error anywhere: every task of the pool stops.
    stop: AtomicBool,
    failure: std::sync::Mutex<Option<RunError>>,
}

impl Pool {
    /// Records the first failure and stops the pool.
    fn fail(&self, error: RunError) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(error);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn over_threshold(&self, running: u32) -> bool {
        u64::from(running) * 10_000 > u64::from(self.threshold_bp) * u64::from(self.max_concurrency)
    }

    fn threshold(&self) -> u32 {
        (u64::from(self.threshold_bp) * u64::from(self.max_concurrency) / 10_000) as u32
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
        let run = self.run.clone();
        Ok(self
            .ledger
            .query_async(move |state, _| {
                state.runs.get(&run).map_or((0, 0), |r| {
                    (
                        r.tasks_submitted,
                        r.tasks_acked + r.tasks_dead_lettered + r.tasks_cancelled + r.tasks_skipped,
                    )
                })
            })
            .await?)
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
    if !resume {
        workload.check_run(run.as_str())?;
    }
    let state = ledger.query_async(|state, _| state.clone()).await?;
    // On Redis, leases belong to workers that may still be running: they
    // are taken over in Redis, not expired here.
    if resume && coordinator.is_none() {
        let run = run.clone();
        ledger
            .decide_each(move |draft| {
                crate::domain::decide::expire_leases(
                    draft,
                    crate::domain::scheduler::Lost::Release,
                    |t| t.run == run,
                )
            })
            .await?
            .1?;
    } else if !resume {
        if state.runs.get(&run).is_some() {
            return Err(RunError::RunExists(run.0));
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
    }

    let pool = Arc::new(Pool {
        ledger: ledger.clone(),
        run: run.clone(),
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
    });
    // A resumed run may have stopped with backpressure engaged: nothing runs
    // now, so release it.
    pool.check_backpressure().await?;

    // The submitter: pipeline runs arrive at their offsets from the start,
    // and wait while backpressure is engaged.
    let submitter = {
        let (pool, queue, workload, run) = (
            Arc::clone(&pool),
            queue.clone(),
            workload.clone(),
            run.clone(),
        );
        let state = state.clone();
        tokio::spawn(async move {
            let origin = tokio::time::Instant::now();
            for (at, submission, instance) in arrivals(&workload) {
                if resume && instance_submitted(&state, &workload, &run, submission, instance) {
                    continue;
                }
                let offset =
                    Duration::from_micros(at.saturating_sub(workload.start.0).max(0) as u64);
                tokio::time::sleep_until(origin + offset).await;
                while *pool.backpressure.lock().await && !pool.stopped() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                if pool.stopped() {
                    return;
                }
                // The tenant's concurrency limit: wait for one of its runs
                // to end (the denial is recorded once); a blocked tenant's
                // run is dropped.
                let tenant = TenantId(workload.submissions[submission].tenant.clone());
                let mut recorded = false;
                let admitted = loop {
                    // Decided and recorded in one step, so the denial is
                    // true of the state just before its record.
                    let verdict = {
                        let tenant = tenant.clone();
                        pool.ledger
                            .decide(move |state, _, _| match admit_run(state, &tenant) {
                                Ok(()) => (Vec::new(), Ok(())),
                                Err(denial) => {
                                    let events = (!recorded)
                                        .then(|| Event::AdmissionDenied {
                                            tenant: tenant.clone(),
                                            task: None,
                                            reason: denial.reason().to_owned(),
                                        })
                                        .into_iter()
                                        .collect();
                                    (events, Err(denial))
                                }
                            })
                            .await
                    };
                    let denial = match verdict {
                        Ok((_, Ok(()))) => break true,
                        Ok((_, Err(denial))) => denial,
                        Err(e) => {
                            pool.fail(e.into());
                            return;
                        }
                    };
                    recorded = true;
                    if !denial.may_wait() || pool.stopped() {
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                };
                if !admitted {
                    continue;
                }
                if let Err(e) = queue
                    .enqueue(instance_events(&workload, &run, submission, instance))
                    .await
                {
                    pool.fail(e.into());
                    return;
                }
            }
            pool.submitted_all.store(true, Ordering::SeqCst);
        })
    };

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
    let mut workers = tokio::task::JoinSet::new();
    if let Some(coordinator) = coordinator {
        // Two loops, so that admitting and dispatching never waits for
        // recording results, nor the other way round (each waits for its
        // ledger steps to be durable): until the run has no open task left.
        let done = Arc::new(AtomicBool::new(false));
        let (in_flight, lease) = (workload.max_concurrency, timeout + Duration::from_secs(5));
        {
            let (pool, run, coordinator, done) = (
                Arc::clone(&pool),
                run.clone(),
                coordinator.clone(),
                Arc::clone(&done),
            );
            workers.spawn(async move {
                let mut retries = Retries::new("dispatching to Redis");
                while !pool.stopped() && !done.load(Ordering::SeqCst) {
                    let round = coordinator.fill(&run, in_flight, lease).await;
                    if !retry_transport(&pool, &mut retries, round).await {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
        let pool = Arc::clone(&pool);
        workers.spawn(async move {
            let mut retries = Retries::new("recording results from Redis");
            while !pool.stopped() {
                let round = coordinator.apply_results().await.map(drop);
                if !retry_transport(&pool, &mut retries, round).await {
                    return;
                }
                match pool.open_tasks().await {
                    Ok(0) if pool.submitted_all.load(Ordering::SeqCst) => {
                        done.store(true, Ordering::SeqCst);
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        pool.fail(e);
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    for n in 1..=local_workers {
        let (pool, queue, handlers, run) = (
            Arc::clone(&pool),
            queue.clone(),
            handlers.clone(),
            run.clone(),
        );
        let worker = WorkerId(format!("worker-{n:02}"));
        workers.spawn(async move {
            if let Err(e) = work(&pool, &queue, &handlers, &run, &worker, seed, timeout).await {
                pool.fail(e);
            }
        });
    }

    let total = total_tasks(workload);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
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
    expiry.abort();
    if let Err(e) = submitter.await {
        pool.fail(RunError::Impossible(format!("the submitter panicked: {e}")));
    }
    if let Some(error) = pool.failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(error);
    }
    ledger
        .append_async(vec![Append::from(Event::RunFinished { run: run.clone() })])
        .await?;

    let (summary, digests, head, last_at) = {
        let run = run.clone();
        ledger
            .query_async(move |state, head| {
                (
                    state.runs.get(&run).cloned(),
                    state.digests(),
                    head,
                    state.last_at,
                )
            })
            .await?
    };
    let s = summary.ok_or_else(|| RunError::Impossible("the run vanished".to_owned()))?;
    Ok(RunReport::new(
        &s,
        last_at.0 - s.started_at.0,
        wall,
        head,
        digests.combined,
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

/// One worker: lease a task, run its handler under the timeout (on a task
/// of its own, so a panic is a failure and a timeout drops it — killing an
/// `exec` child), ACK or NACK, until the run has no open task left.
async fn work<Q: TaskQueue>(
    pool: &Pool,
    queue: &Q,
    handlers: &Handlers,
    run: &RunId,
    worker: &WorkerId,
    seed: u64,
    timeout: Duration,
) -> Result<(), RunError> {
    use crate::log::AppendError;
    let mut dequeues = Retries::new("leasing a task");
    while !pool.stopped() {
        let lease_for = timeout + Duration::from_secs(5);
        let dequeued = match queue
            .dequeue(run, worker, lease_for, Duration::from_millis(20))
            .await
        {
            Ok(dequeued) => {
                dequeues.succeeded();
                dequeued
            }
            // Redis went away (a restart): wait for it.
            Err(e) => match retried(&mut dequeues, Err(e), false)? {
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                None => continue,
            },
        };
        let Some(lease) = dequeued else {
            if pool.submitted_all.load(Ordering::SeqCst) && pool.open_tasks().await? == 0 {
                return Ok(());
            }
            continue;
        };
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
        let result = match handlers.get(&lease.handler) {
            None => Some(Err(Failure::from(format!(
                "no handler named `{}`",
                lease.handler
            )))),
            Some(handler) => {
                let mut attempt = tokio::spawn(async move { handler.run(&ctx).await });
                match tokio::time::timeout(timeout, &mut attempt).await {
                    Ok(Ok(outcome)) => Some(outcome),
                    Ok(Err(join)) => {
                        Some(Err(Failure::from(format!("the handler panicked: {join}"))))
                    }
                    Err(_) => {
                        attempt.abort();
                        None
                    }
                }
            }
        };
        pool.running.fetch_sub(1, Ordering::SeqCst);
        // A report that could not reach the queue (Redis restarting) is
        // sent again: the result is never dropped while this worker lives.
        let mut reports = Retries::new("reporting a result");
        let settled = loop {
            let settled = match &result {
                // An answer the ledger would refuse (costs that overflow,
                // an output past its limit) is recorded as a failed
                // attempt by the queue (`Acked::events`).
                Some(Ok(outcome)) => {
                    queue
                        .ack(&lease, outcome.output.clone(), outcome.costs.clone())
                        .await
                }
                Some(Err(failure)) => queue
                    .nack(&lease, failure.error.clone(), false, failure.costs.clone())
                    .await
                    .map(drop),
                None => {
                    let error = format!("timed out after {} ms", timeout.as_millis());
                    queue.nack(&lease, error, true, Vec::new()).await.map(drop)
                }
            };
            match settled {
                Err(QueueError::Transport(e)) if !pool.stopped() => {
                    match retried(&mut reports, Err(QueueError::Transport(e)), false) {
                        Ok(wait) => tokio::time::sleep(wait.unwrap_or_default()).await,
                        Err(e) => break Err(e),
                    }
                }
                other => break other,
            }
        };
        match settled {
            Ok(()) => {}
            // A result for a lease that is no longer ours (it expired and
            // the task moved on): drop it.
            Err(QueueError::Ledger(AppendError::Rejected { rejection, .. })) => {
                tracing::warn!(task = %lease.task, %rejection, "dropped a stale result");
            }
            Err(e) => return Err(e.into()),
        }
        pool.check_backpressure().await?;
    }
    Ok(())
}
