//! `runledger worker`: a worker process on any machine. It claims tasks
//! from the Redis streams, announces each attempt it starts (the
//! coordinator records the lease), runs the handler under the timeout and
//! reports the result. It never touches a ledger: the coordinator owns it.
//!
//! A worker killed mid-task loses nothing: its claimed entries stay
//! pending in Redis and the next claimer takes them over after the lease
//! (a new attempt, which the coordinator records after the lost lease).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::{Claimed, Outcome, RedisError, RedisStreams};
use crate::domain::WorkerId;
use crate::runtime::handler::{Failure, Handlers, TaskContext};

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

/// Runs until `stop` is set, or until idle for `options.idle_exit`.
pub async fn run_worker(
    streams: RedisStreams,
    handlers: Handlers,
    options: WorkerOptions,
    stop: Arc<AtomicBool>,
) -> Result<WorkerStats, RedisError> {
    streams.ensure_groups().await?;
    let running = Arc::new(AtomicU32::new(0));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let handlers = Arc::new(handlers);
    let mut attempts = tokio::task::JoinSet::new();
    let mut idle_since = tokio::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        while attempts.try_join_next().is_some() {}
        let free = options
            .concurrency
            .saturating_sub(running.load(Ordering::SeqCst));
        if free == 0 {
            attempts.join_next().await;
            continue;
        }
        let claimed = match streams
            .claim(
                options.id.as_str(),
                free as usize,
                Duration::from_millis(200),
            )
            .await
        {
            Ok(claimed) => claimed,
            // Redis went away (a restart): wait for it, keep what runs.
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
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
        // before the result does.
        let mut wait = Duration::from_millis(50);
        while let Err(e) = streams.announce(&started).await {
            tracing::warn!(error = %e, "announce failed; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
        for claim in claimed {
            running.fetch_add(1, Ordering::SeqCst);
            let (streams, handlers, running, counts) = (
                streams.clone(),
                Arc::clone(&handlers),
                Arc::clone(&running),
                Arc::clone(&counts),
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
                report(&streams, &claim, claim.result(&id, outcome)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
    while attempts.join_next().await.is_some() {}
    Ok(WorkerStats {
        executed: counts[0].load(Ordering::SeqCst),
        succeeded: counts[1].load(Ordering::SeqCst),
        failed: counts[2].load(Ordering::SeqCst),
    })
}

/// Runs one claimed attempt under the timeout.
async fn attempt(handlers: &Handlers, claim: &Claimed, timeout: Duration) -> Outcome {
    let e = &claim.envelope;
    let Some(handler) = handlers.get(&e.handler) else {
        return Outcome::Nack {
            error: format!("this worker has no handler named `{}`", e.handler),
            timed_out: false,
            costs: Vec::new(),
        };
    };
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
    let mut running = tokio::spawn(async move { handler.run(&ctx).await });
    match tokio::time::timeout(timeout, &mut running).await {
        Ok(Ok(Ok(done))) => Outcome::Ack {
            output: done.output,
            costs: done.costs,
        },
        Ok(Ok(Err(Failure { error, costs }))) => Outcome::Nack {
            error,
            timed_out: false,
            costs,
        },
        Ok(Err(join)) => Outcome::Nack {
            error: format!("the handler panicked: {join}"),
            timed_out: false,
            costs: Vec::new(),
        },
        Err(_) => {
            running.abort();
            Outcome::Nack {
                error: format!("timed out after {} ms", timeout.as_millis()),
                timed_out: true,
                costs: Vec::new(),
            }
        }
    }
}

/// Reports a result, retrying while Redis is away (a restart): a result
/// is never dropped while the worker lives; if the worker dies first, the
/// entry is reclaimed and run again.
async fn report(streams: &RedisStreams, claim: &Claimed, result: super::TaskResult) {
    let mut wait = Duration::from_millis(50);
    loop {
        match streams.report(&claim.receipt, &result).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(task = %result.task, error = %e, "report failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}
