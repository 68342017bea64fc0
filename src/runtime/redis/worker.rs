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

use super::{
    Claimed, Outcome, Receipt, RedisError, RedisStreams, Retries, SCRIPT_BATCH_MAX, TaskResult,
};
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

/// What a worker's attempts hand its reporter, in the order it must reach
/// the results stream.
enum Sent {
    /// Attempts claimed and about to start (their announcement).
    Started(Vec<TaskResult>),
    /// An attempt ended: its report, acknowledging its task entry.
    Ended(Receipt, TaskResult),
}

/// Items the reporter queue holds at most per attempt slot: an attempt
/// that ends with the queue full waits to hand its result over (and keeps
/// its slot meanwhile).
const SENT_PER_SLOT_MAX: usize = 2;

/// Runs until `stop` is set, or until idle for `options.idle_exit`. Redis
/// going away is waited out (each failed call logged); an error retrying
/// cannot fix (a key of the wrong type, a missing permission) ends the
/// worker with [`RedisError::GaveUp`] after
/// [`PERMANENT_RETRIES_MAX`](super::PERMANENT_RETRIES_MAX) tries, once its
/// running attempts have finished.
///
/// The claim loop never waits for Redis to take an announcement or a
/// report: both go, in order, to one reporter task, which sends everything
/// that is waiting in one script call ([`RedisStreams::send_results`]);
/// an announcement still waiting when its attempt ends is folded into the
/// attempt's report ([`TaskResult::announces_start`]).
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
    let queue_max = (options.concurrency.max(1) as usize).saturating_mul(SENT_PER_SLOT_MAX);
    let (sent, to_send) = tokio::sync::mpsc::channel(queue_max);
    let mut reporter = tokio::spawn(reporter(streams.clone(), to_send, stop.clone()));
    let mut attempts = tokio::task::JoinSet::new();
    let mut idle_since = tokio::time::Instant::now();
    let mut claims = Retries::new("claiming tasks");
    let mut fatal = None;
    while !stop.is_set() {
        while attempts.try_join_next().is_some() {}
        // A report Redis refused for good ends the worker.
        if reporter.is_finished() {
            break;
        }
        let free = options
            .concurrency
            .saturating_sub(running.load(Ordering::SeqCst));
        if free == 0 {
            tokio::select! {
                Some(_) = attempts.join_next() => {}
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
        // The coordinator records the lease from this: it goes to the
        // reporter before any result of these attempts, so it lands first.
        // Not announced, the claimed entries stay pending and are taken
        // over after their lease.
        let started = (claimed.iter())
            .map(|c| c.result(&options.id, Outcome::Started))
            .collect();
        if sent.send(Sent::Started(started)).await.is_err() {
            break;
        }
        for claim in claimed {
            running.fetch_add(1, Ordering::SeqCst);
            let (handlers, running, counts, sent) = (
                Arc::clone(&handlers),
                Arc::clone(&running),
                Arc::clone(&counts),
                sent.clone(),
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
                let result = claim.result(&id, outcome);
                // The reporter gone (it gave up), the entry stays pending
                // and runs again after its lease.
                let _ = sent.send(Sent::Ended(claim.receipt, result)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
    while attempts.join_next().await.is_some() {}
    // Every sender gone, the reporter sends what is left and ends.
    drop(sent);
    let reported = (&mut reporter).await;
    match reported {
        Ok(Err(e)) => {
            fatal.get_or_insert(e);
        }
        Ok(Ok(())) => {}
        Err(e) => {
            tracing::error!("the reporter ended abnormally: {e}");
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

/// How long the reporter holds an announcement back: an attempt that ends
/// meanwhile is announced by its report ([`TaskResult::announces_start`]),
/// one entry instead of two; a longer one is announced after this, its
/// lease recorded while it runs.
const ANNOUNCE_HOLD: Duration = Duration::from_millis(5);

/// Sends what the attempts hand over until every sender is gone: each
/// call takes every report waiting (up to [`SCRIPT_BATCH_MAX`] handed
/// over at once) in one script, with the announcements held for
/// [`ANNOUNCE_HOLD`] by then; an announcement whose attempt's report
/// comes first is folded into that report. Retries while Redis is away (a
/// restart): a result is never dropped while the worker runs; once
/// stopping and Redis is away, what is left is not sent — its entries
/// stay pending and run again after their lease. An error when a call
/// failed for a reason retrying cannot fix.
async fn reporter(
    streams: RedisStreams,
    mut to_send: tokio::sync::mpsc::Receiver<Sent>,
    stop: Stop,
) -> Result<(), RedisError> {
    let mut handed = Vec::new();
    // Announcements not sent yet, oldest first, with when they came.
    let mut held: std::collections::VecDeque<(tokio::time::Instant, TaskResult)> =
        std::collections::VecDeque::new();
    let mut open = true;
    // Once stopping and Redis is away, what is left is dropped unsent.
    let mut abandoned = false;
    while open || !held.is_empty() {
        if open {
            let receiving = to_send.recv_many(&mut handed, SCRIPT_BATCH_MAX);
            let received = match held.front() {
                None => receiving.await,
                Some(&(at, _)) => tokio::time::timeout_at(at + ANNOUNCE_HOLD, receiving)
                    .await
                    .unwrap_or(usize::MAX),
            };
            open = received != 0;
        }
        let now = tokio::time::Instant::now();
        let mut reports = Vec::new();
        for sent in handed.drain(..) {
            match sent {
                Sent::Started(results) => held.extend(results.into_iter().map(|r| (now, r))),
                Sent::Ended(receipt, mut result) => {
                    let started = (held.iter())
                        .position(|(_, s)| s.attempt == result.attempt && s.task == result.task);
                    if let Some(i) = started {
                        held.remove(i);
                        result.announces_start = true;
                    }
                    reports.push((Some(receipt), result));
                }
            }
        }
        // The announcements held long enough, or all once nothing more
        // comes; then the reports.
        let mut entries = Vec::with_capacity(reports.len());
        while let Some(&(at, _)) = held.front() {
            if open && now < at + ANNOUNCE_HOLD {
                break;
            }
            if let Some((_, result)) = held.pop_front() {
                entries.push((None, result));
            }
        }
        entries.append(&mut reports);
        if entries.is_empty() {
            continue;
        }
        if abandoned {
            not_reported(&entries);
            continue;
        }
        let mut retries = Retries::new("reporting a result");
        loop {
            let refs: Vec<_> = (entries.iter())
                .map(|(receipt, result)| (receipt.as_ref(), result))
                .collect();
            match streams.send_results(&refs).await {
                Ok(()) => break,
                Err(e) => match retries.failed(&e, e.is_permanent(), stop.is_set()) {
                    // Not cut short by a stop: a report is worth a few tries.
                    Some(wait) => tokio::time::sleep(wait).await,
                    None if stop.is_set() && !e.is_permanent() => {
                        not_reported(&entries);
                        abandoned = true;
                        break;
                    }
                    None => return Err(gave_up(&retries, e)),
                },
            }
        }
    }
    Ok(())
}

/// Says which results a stopping worker leaves unreported.
fn not_reported(entries: &[(Option<Receipt>, TaskResult)]) {
    for (receipt, result) in entries {
        if receipt.is_some() {
            tracing::warn!(
                "stopping: the result of task {} attempt {} was not reported; it runs again after its lease",
                result.task,
                result.attempt
            );
        }
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
