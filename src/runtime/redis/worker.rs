//! `runledger worker`: a worker process on any machine. It claims tasks
//! from the Redis streams, announces each attempt it starts (the
//! coordinator records the lease), runs the handler under the timeout and
//! reports the result. It never touches a ledger: the coordinator owns it.
//!
//! A worker killed mid-task loses nothing: its claimed entries stay
//! pending in Redis and the next claimer takes them over after the lease
//! (a new attempt, which the coordinator records after the lost lease).
//! Redis going away is waited out; an error retrying cannot fix ends the
//! worker (exit 2); a [`Stop`] (SIGINT, SIGTERM) ends it cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::{Claimed, Outcome, RedisError, RedisStreams, Retries};
use crate::domain::WorkerId;
use crate::runtime::handler::{Handlers, TaskContext};

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub id: WorkerId,
    /// Attempts running at once.
    pub concurrency: u32,
    /// An attempt running longer is NACKed as timed out (the handler is
    /// dropped, an `exec` child killed).
    pub timeout: Duration,
    /// Exit after this long with nothing to do (`None`: run until stopped).
    pub idle_exit: Option<Duration>,
}

/// What a worker did, when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub executed: u64,
    pub succeeded: u64,
    pub failed: u64,
}

/// Asks a worker to stop: it claims nothing more, lets running attempts
/// finish and report, and gives up waiting for a Redis that is away.
/// Cheap to clone; clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<(AtomicBool, tokio::sync::Notify)>);

impl Stop {
    pub fn new() -> Self {
        Stop::default()
    }

    pub fn set(&self) {
        self.0.0.store(true, Ordering::SeqCst);
        self.0.1.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.0.0.load(Ordering::SeqCst)
    }

    /// Returns once the stop is asked.
    pub async fn wait(&self) {
        loop {
            let notified = self.0.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }

    /// Sleeps for `wait`, or less when the stop is asked.
    async fn sleep(&self, wait: Duration) {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.wait() => {}
        }
    }
}

/// Runs until `stop` is set, or until idle for `options.idle_exit`. Redis
/// going away is waited out (each failed call logged); an error retrying
/// cannot fix (a key of the wrong type, a missing permission) ends the
/// worker with [`RedisError::GaveUp`] after
/// [`PERMANENT_RETRIES_MAX`](super::PERMANENT_RETRIES_MAX) tries, once its
/// running attempts have finished.
pub async fn run_worker(
    streams: RedisStreams,
    handlers: Handlers,
    options: WorkerOptions,
    stop: Stop,
) -> Result<WorkerStats, RedisError> {
    streams.ensure_groups().await?;
    let running = Arc::new(AtomicU32::new(0));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let handlers = Arc::new(handlers);
    let mut attempts = tokio::task::JoinSet::new();
    let mut idle_since = tokio::time::Instant::now();
    let mut claims = Retries::new("claiming tasks");
    let mut fatal = None;
    while !stop.is_set() {
        // An attempt whose report Redis refused for good ends the worker.
        while let Some(joined) = attempts.try_join_next() {
            if let Some(e) = report_failure(joined) {
                fatal.get_or_insert(e);
            }
        }
        if fatal.is_some() {
            break;
        }
        let free = options
            .concurrency
            .saturating_sub(running.load(Ordering::SeqCst));
        if free == 0 {
            tokio::select! {
                Some(joined) = attempts.join_next() => {
                    if let Some(e) = report_failure(joined) {
                        fatal.get_or_insert(e);
                    }
                }
                () = stop.wait() => {}
            }
            continue;
        }
        let claiming = streams.claim(
            options.id.as_str(),
            free as usize,
            Duration::from_millis(200),
        );
        let claimed = tokio::select! {
            claimed = claiming => claimed,
            () = stop.wait() => break,
        };
        let claimed = match claimed {
            Ok(claimed) => {
                claims.succeeded();
                claimed
            }
            // Redis went away (a restart): wait for it, keep what runs.
            Err(e) => match claims.failed(&e, e.is_permanent(), false) {
                Some(wait) => {
                    stop.sleep(wait).await;
                    continue;
                }
                None => {
                    fatal = Some(gave_up(&claims, e));
                    break;
                }
            },
        };
        if claimed.is_empty() {
            let idle = running.load(Ordering::SeqCst) == 0;
            if let Some(limit) = options.idle_exit {
                if idle && idle_since.elapsed() >= limit {
                    break;
                }
            }
            if !idle {
                idle_since = tokio::time::Instant::now();
            }
            continue;
        }
        idle_since = tokio::time::Instant::now();
        let started: Vec<_> = claimed
            .iter()
            .map(|c| c.result(&options.id, Outcome::Started))
            .collect();
        // The coordinator records the lease from this: it must land
        // before the result does. Not announced, the claimed entries stay
        // pending and are taken over after their lease.
        let mut announces = Retries::new("announcing started attempts");
        let announced = loop {
            match streams.announce(&started).await {
                Ok(()) => break Ok(()),
                Err(e) => match announces.failed(&e, e.is_permanent(), stop.is_set()) {
                    Some(wait) => stop.sleep(wait).await,
                    None => break Err(gave_up(&announces, e)),
                },
            }
        };
        if let Err(e) = announced {
            if !stop.is_set() {
                fatal = Some(e);
            }
            break;
        }
        for claim in claimed {
            running.fetch_add(1, Ordering::SeqCst);
            let (streams, handlers, running, counts, stop) = (
                streams.clone(),
                Arc::clone(&handlers),
                Arc::clone(&running),
                Arc::clone(&counts),
                stop.clone(),
            );
            let (id, timeout) = (options.id.clone(), options.timeout);
            attempts.spawn(async move {
                let outcome = attempt(&handlers, &claim, timeout).await;
                counts[0].fetch_add(1, Ordering::SeqCst);
                let slot = if matches!(outcome, Outcome::Ack { .. }) {
                    1
                } else {
                    2
                };
                counts[slot].fetch_add(1, Ordering::SeqCst);
                let reported = report(&streams, &claim, claim.result(&id, outcome), &stop).await;
                running.fetch_sub(1, Ordering::SeqCst);
                reported
            });
        }
    }
    while let Some(joined) = attempts.join_next().await {
        if let Some(e) = report_failure(joined) {
            fatal.get_or_insert(e);
        }
    }
    if let Some(e) = fatal {
        return Err(e);
    }
    Ok(WorkerStats {
        executed: counts[0].load(Ordering::SeqCst),
        succeeded: counts[1].load(Ordering::SeqCst),
        failed: counts[2].load(Ordering::SeqCst),
    })
}

/// The error of a finished attempt task whose result could not be
/// reported for a reason retrying cannot fix.
fn report_failure(
    joined: Result<Result<(), RedisError>, tokio::task::JoinError>,
) -> Option<RedisError> {
    match joined {
        Ok(Err(e)) => Some(e),
        Ok(Ok(())) | Err(_) => None,
    }
}

fn gave_up(retries: &Retries, error: RedisError) -> RedisError {
    RedisError::GaveUp {
        attempts: retries.failures(),
        error: Box::new(error),
    }
}

/// Runs one claimed attempt under the timeout.
async fn attempt(handlers: &Handlers, claim: &Claimed, timeout: Duration) -> Outcome {
    let e = &claim.envelope;
    let ctx = TaskContext {
        run: e.run.clone(),
        task: e.task.clone(),
        tenant: e.tenant.clone(),
        attempt: claim.attempt(),
        seed: e.seed,
        params: e.params.clone(),
        inputs: e.inputs.clone(),
    };
    // The run's timeout when it is the shorter one.
    let timeout = match e.timeout_ms {
        0 => timeout,
        ms => timeout.min(Duration::from_millis(ms)),
    };
    handlers.attempt(&e.handler, ctx, timeout).await.into()
}

/// Reports a result, retrying while Redis is away (a restart): a result
/// is never dropped while the worker runs; if the worker dies or stops
/// first, or Redis refuses the report for good, the entry stays pending
/// and is taken over and run again after its lease. An error when the
/// report could not be made for a reason retrying cannot fix.
async fn report(
    streams: &RedisStreams,
    claim: &Claimed,
    result: super::TaskResult,
    stop: &Stop,
) -> Result<(), RedisError> {
    let mut retries = Retries::new("reporting a result");
    loop {
        match streams.report(&claim.receipt, &result).await {
            Ok(()) => return Ok(()),
            Err(e) => match retries.failed(&e, e.is_permanent(), stop.is_set()) {
                // Not cut short by a stop: a report is worth a few tries.
                Some(wait) => tokio::time::sleep(wait).await,
                None if stop.is_set() && !e.is_permanent() => {
                    tracing::warn!(
                        "stopping: the result of task {} attempt {} was not reported; it runs again after its lease",
                        result.task,
                        result.attempt
                    );
                    return Ok(());
                }
                None => return Err(gave_up(&retries, e)),
            },
        }
    }
}
