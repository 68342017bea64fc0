//! The ledger benchmark behind `runledger bench ledger`: durable appends
//! from concurrent appenders through group commit, then replay and verify
//! of what was written, beside a raw sled baseline (one key per event, no
//! hashing) measured in the same run so the ratio is visible.
//!
//! Also the queue benchmark behind `runledger bench queue`, and, in
//! [`governance`], the admission and cost-agent benchmark behind
//! `runledger bench governance`, and, in [`redis`], the Redis Streams
//! transport beside raw XADD / XREADGROUP / XACK (`runledger bench redis`),
//! and, in [`distributed`], a coordinator with K worker processes through
//! Redis beside raw Redis and the in-memory queue (`runledger bench
//! distributed`), and, in [`pipeline`], one serial pipeline of each given
//! length run to its end (`runledger bench pipeline`).

use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::domain::{Category, Event, Micros, Priority, RunId, TaskId, TenantId, WorkerId};
use crate::log::codec::encode_event;
use crate::log::replay;
use crate::log::verify::verify;
use crate::log::{Durability, Ledger, LedgerOptions, Store};

pub mod check;
pub mod distributed;
pub mod export;
pub mod governance;
pub mod pipeline;
pub mod redis;

#[derive(Clone, Debug)]
pub struct LedgerBench {
    pub events: u64,
    pub durability: Durability,
    pub appenders: usize,
    /// Events per append call.
    pub batch: usize,
    /// Append into a new ledger here (an absent or empty directory)
    /// instead of a scratch one.
    pub data: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LedgerBenchReport {
    pub events: u64,
    pub appenders: usize,
    pub batch: usize,
    pub durability: String,
    pub event_bytes_avg: f64,
    pub append_events_per_sec: f64,
    pub append_latency_us_p50: f64,
    pub append_latency_us_p99: f64,
    pub append_latency_us_max: f64,
    pub single_appender_events_per_sec: f64,
    pub single_appender_latency_us_p99: f64,
    pub bytes_per_event: f64,
    pub replay_events_per_sec: f64,
    pub verify_events_per_sec: f64,
    pub raw_sled_events_per_sec: f64,
    pub raw_sled_bytes_per_event: f64,
}

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Always => "always",
        Durability::Batch { .. } => "batch",
        Durability::None => "none",
    }
}

/// Four events per synthetic task: submitted, dequeued, cost, acked.
pub fn synthetic_task(run: &RunId, tenant: &TenantId, worker: &WorkerId, n: u64) -> [Event; 4] {
    let task = TaskId(format!("{run}/t{n:08}"));
    [
        Event::TaskSubmitted {
            run: run.clone(),
            task: task.clone(),
            tenant: tenant.clone(),
            priority: Priority::Normal,
            deps: Vec::new(),
            pipeline: None,
            cost_ceiling_micros: Micros::ZERO,
            handler: "sim".to_owned(),
            params: Default::default(),
            max_attempts: 3,
            optional: false,
        },
        Event::TaskDequeued {
            task: task.clone(),
            worker: worker.clone(),
            attempt: 1,
            lease_deadline: None,
        },
        Event::CostIncurred {
            tenant: tenant.clone(),
            task: Some(task.clone()),
            category: Category::Llm,
            amount_micros: Micros(1_000 + (n % 997) as i64),
        },
        Event::TaskAcked {
            task,
            worker: worker.clone(),
            output: Default::default(),
        },
    ]
}

/// Batches of synthetic events for each appender.
fn workload(
    run: &RunId,
    appenders: usize,
    per_appender: u64,
    batch: usize,
) -> Vec<Vec<Vec<Event>>> {
    (0..appenders)
        .map(|k| {
            let tenant = TenantId(format!("bench-tenant-{k}"));
            let worker = WorkerId(format!("bench-worker-{k}"));
            let mut events = Vec::with_capacity(per_appender as usize);
            let mut n = 0;
            while (events.len() as u64) < per_appender {
                let task_no = k as u64 * 1_000_000_000 + n;
                events.extend(synthetic_task(run, &tenant, &worker, task_no));
                n += 1;
            }
            events.truncate(per_appender as usize);
            let mut batches = Vec::new();
            let mut it = events.into_iter().peekable();
            while it.peek().is_some() {
                batches.push(it.by_ref().take(batch.max(1)).collect());
            }
            batches
        })
        .collect()
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)])
}

struct AppendRun {
    events: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    event_bytes: u64,
}

fn append_run(
    dir: &Path,
    durability: Durability,
    appenders: usize,
    events: u64,
    batch: usize,
) -> anyhow::Result<AppendRun> {
    let ledger = Ledger::open(
        dir,
        LedgerOptions {
            durability,
            checkpoint_every: 0,
            create: true,
        },
    )?;
    let head = ledger.head()?;
    let run = RunId(format!("bench-{}", head.seq + 1));
    let mut setup = vec![Event::RunStarted {
        run: run.clone(),
        seed: 0,
        config_hash: String::new(),
    }];
    for k in 0..appenders {
        let tenant = TenantId(format!("bench-tenant-{k}"));
        let known = ledger.tenant(&tenant)?.is_some();
        if !known {
            setup.push(Event::TenantRegistered {
                tenant,
                budget_micros: Micros(i64::MAX / 4),
                max_concurrent_runs: 1_000_000,
                learning_intensity: Default::default(),
                meta_learning: false,
                budget_period: Default::default(),
            });
        }
    }
    ledger.append(setup)?;
    let per_appender = events / appenders as u64;
    let work = workload(&run, appenders, per_appender, batch);
    let event_bytes: u64 = work
        .iter()
        .flatten()
        .flatten()
        .map(|e| encode_event(e).len() as u64)
        .sum();
    let barrier = Barrier::new(appenders + 1);
    let mut latencies = Vec::new();
    let mut elapsed = Duration::ZERO;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = work
            .into_iter()
            .map(|batches| {
                let ledger = ledger.clone();
                let barrier = &barrier;
                scope.spawn(move || -> anyhow::Result<Vec<u32>> {
                    let mut lat = Vec::with_capacity(batches.len());
                    barrier.wait();
                    for batch in batches {
                        let t = Instant::now();
                        ledger.append(batch)?;
                        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    Ok(lat)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            latencies.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("appender thread panicked"))??,
            );
        }
        elapsed = start.elapsed();
        Ok(())
    })?;
    ledger.close()?;
    latencies.sort_unstable();
    Ok(AppendRun {
        events: per_appender * appenders as u64,
        elapsed,
        latencies_us: latencies,
        event_bytes,
    })
}

/// One sled key per event, no hashing, no framing; flushed (and fsynced
/// under `always`) every `group` events.
fn raw_sled(
    dir: &Path,
    durability: Durability,
    events: &[Vec<u8>],
    group: usize,
) -> anyhow::Result<(f64, f64)> {
    let db = sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let tree = db.open_tree("raw")?;
    let file = std::fs::File::open(dir.join("db"))?;
    let start = Instant::now();
    for (i, bytes) in events.iter().enumerate() {
        tree.insert((i as u64 + 1).to_be_bytes(), bytes.as_slice())?;
        if durability == Durability::Always && (i + 1) % group == 0 {
            db.flush()?;
            file.sync_data()?;
        }
    }
    db.flush()?;
    file.sync_data()?;
    let rate = events.len() as f64 / start.elapsed().as_secs_f64();
    drop(tree);
    drop(db);
    let bytes = crate::log::dir::dir_size(dir) as f64 / events.len().max(1) as f64;
    Ok((rate, bytes))
}

pub fn run_ledger_bench(
    config: &LedgerBench,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<LedgerBenchReport> {
    if let Some(dir) = &config.data {
        if Store::exists(dir)? {
            anyhow::bail!(
                "{} already holds a ledger: a bench writes only into a new or empty directory (or, without --data, a scratch one)",
                dir.display()
            );
        }
    }
    let scratch = tempfile::tempdir()?;
    let dir = match &config.data {
        Some(d) => d.clone(),
        None => scratch.path().join("ledger"),
    };
    let appenders = config.appenders.max(1);

    progress("raw sled baseline (one key per event, no hashing)");
    let sample: Vec<Vec<u8>> = {
        let run = RunId("bench-raw".to_owned());
        let tenant = TenantId("bench-tenant-0".to_owned());
        let worker = WorkerId("bench-worker-0".to_owned());
        (0..config.events.div_ceil(4))
            .flat_map(|n| synthetic_task(&run, &tenant, &worker, n))
            .take(config.events as usize)
            .map(|e| encode_event(&e))
            .collect()
    };
    let (raw_rate, raw_bytes) = raw_sled(
        &scratch.path().join("raw"),
        config.durability,
        &sample,
        appenders * config.batch.max(1),
    )?;
    drop(sample);

    progress("ledger append");
    let main = append_run(
        &dir,
        config.durability,
        appenders,
        config.events,
        config.batch,
    )?;
    let bytes_per_event = {
        let store = Store::open(&dir, false)?;
        store.disk_bytes() as f64 / store.head()?.seq.max(1) as f64
    };

    progress("single appender, one event per append");
    let single_events = (config.events / 100).clamp(200, 5_000);
    let single = append_run(
        &scratch.path().join("single"),
        config.durability,
        1,
        single_events,
        1,
    )?;

    progress("replay");
    let store = Store::open(&dir, false)?;
    let start = Instant::now();
    let folded = replay::fold(&store, None)?;
    let replay_rate = folded.head.seq as f64 / start.elapsed().as_secs_f64();

    progress("verify");
    let start = Instant::now();
    let report = verify(&store)?.map_err(|b| anyhow::anyhow!("verify failed: {b}"))?;
    let verify_rate = report.records as f64 / start.elapsed().as_secs_f64();

    Ok(LedgerBenchReport {
        events: main.events,
        appenders,
        batch: config.batch,
        durability: durability_name(config.durability).to_owned(),
        event_bytes_avg: main.event_bytes as f64 / main.events.max(1) as f64,
        append_events_per_sec: main.events as f64 / main.elapsed.as_secs_f64(),
        append_latency_us_p50: percentile(&main.latencies_us, 0.50),
        append_latency_us_p99: percentile(&main.latencies_us, 0.99),
        append_latency_us_max: main.latencies_us.last().copied().map_or(0.0, f64::from),
        single_appender_events_per_sec: single.events as f64 / single.elapsed.as_secs_f64(),
        single_appender_latency_us_p99: percentile(&single.latencies_us, 0.99),
        bytes_per_event,
        replay_events_per_sec: replay_rate,
        verify_events_per_sec: verify_rate,
        raw_sled_events_per_sec: raw_rate,
        raw_sled_bytes_per_event: raw_bytes,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct QueueBenchReport {
    pub tasks: u64,
    pub workers: usize,
    /// Tasks each worker leases (and ACKs) at once.
    pub batch: usize,
    pub durability: String,
    /// submit → dequeue → ack through `MemoryQueue`, no-op tasks.
    pub tasks_per_sec: f64,
    /// The same three events per task appended directly, in batches.
    pub baseline_tasks_per_sec: f64,
}

/// Submits `tasks` no-op tasks, drains them with `workers` pull-based
/// workers through the in-memory queue, and compares with appending the
/// same events without queue decisions.
pub fn run_queue_bench(
    tasks: u64,
    workers: usize,
    batch: usize,
    durability: Durability,
) -> anyhow::Result<QueueBenchReport> {
    use crate::runtime::queue::{MemoryQueue, TaskQueue};
    let scratch = tempfile::tempdir()?;
    let run = RunId("bench-queue".to_owned());
    let tenant = TenantId("bench-tenant-0".to_owned());
    let setup = |ledger: &Ledger| -> anyhow::Result<()> {
        ledger.append(vec![
            Event::TenantRegistered {
                tenant: tenant.clone(),
                budget_micros: Micros(i64::MAX / 4),
                max_concurrent_runs: u32::MAX,
                learning_intensity: Default::default(),
                meta_learning: false,
                budget_period: Default::default(),
            },
            Event::RunStarted {
                run: run.clone(),
                seed: 0,
                config_hash: String::new(),
            },
        ])?;
        Ok(())
    };
    let submissions: Vec<Event> = (0..tasks)
        .map(|n| {
            let [submitted, ..] = synthetic_task(&run, &tenant, &WorkerId::default(), n);
            submitted
        })
        .collect();

    // Baseline: the same submit / dequeue / ack events, appended directly.
    let baseline = {
        let ledger = Ledger::open(
            &scratch.path().join("baseline"),
            LedgerOptions {
                durability,
                checkpoint_every: 0,
                create: true,
            },
        )?;
        setup(&ledger)?;
        let worker = WorkerId("w".to_owned());
        let events: Vec<Event> = (0..tasks)
            .flat_map(|n| {
                let [submitted, dequeued, _, acked] = synthetic_task(&run, &tenant, &worker, n);
                [submitted, dequeued, acked]
            })
            .collect();
        let start = Instant::now();
        for chunk in events.chunks(3 * 1024) {
            ledger.append(chunk.to_vec())?;
        }
        let rate = tasks as f64 / start.elapsed().as_secs_f64();
        ledger.close()?;
        rate
    };

    let ledger = Ledger::open(
        &scratch.path().join("queue"),
        LedgerOptions {
            durability,
            checkpoint_every: 0,
            create: true,
        },
    )?;
    setup(&ledger)?;
    let queue = MemoryQueue::new(ledger.clone(), Default::default(), 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let elapsed = runtime.block_on(async {
        let start = Instant::now();
        for chunk in submissions.chunks(1024) {
            queue.enqueue(chunk.to_vec()).await?;
        }
        let mut handles = Vec::new();
        for k in 0..workers.max(1) {
            let (queue, run) = (queue.clone(), run.clone());
            handles.push(tokio::spawn(async move {
                let worker = WorkerId(format!("w{k}"));
                loop {
                    let leases = queue
                        .dequeue_many(
                            &run,
                            &worker,
                            batch,
                            Duration::from_secs(60),
                            Duration::ZERO,
                        )
                        .await?;
                    if leases.is_empty() {
                        break;
                    }
                    queue
                        .ack_many(
                            leases
                                .into_iter()
                                .map(|l| (l, Default::default(), Vec::new()))
                                .collect(),
                        )
                        .await?;
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        for h in handles {
            h.await??;
        }
        Ok::<Duration, anyhow::Error>(start.elapsed())
    })?;
    let done = ledger.queue_counts()?.done;
    ledger.close()?;
    anyhow::ensure!(done == tasks, "only {done} of {tasks} tasks were ACKed");
    Ok(QueueBenchReport {
        tasks,
        workers,
        batch,
        durability: durability_name(durability).to_owned(),
        tasks_per_sec: tasks as f64 / elapsed.as_secs_f64(),
        baseline_tasks_per_sec: baseline,
    })
}
