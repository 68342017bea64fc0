//! `runledger bench distributed`: end-to-end tasks/s of no-op tasks through
//! Redis with K `runledger worker` processes, beside two baselines measured
//! in the same run: raw Redis Streams XADD → XREADGROUP → XACK on the same
//! server (the physical limit) and the same workload on the in-memory
//! queue in this process.
//!
//! For each K: a fresh scratch ledger (`batch` durability, 10 ms — what
//! `runledger run` uses), K worker processes spawned from the given
//! executable (`worker --concurrency C --idle-exit-sec 2`, a key prefix of
//! their own), then the coordinator in this process (`run_live_on` with
//! `Dispatch::Redis`, no local workers), timed from its start to its end.
//! The CPU time of the coordinator (this process), the workers and
//! redis-server over the same interval is read from `/proc`, so the
//! report shows which of them is saturated.
//!
//! Shell code: processes, a private redis-server, the clock and `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;

use super::redis::{OwnServer, envelope_json, raw, transport};
use crate::log::{Durability, Ledger, LedgerOptions};
use crate::runtime::handler::Handlers;
use crate::runtime::live::{Dispatch, run_live, run_live_on};
use crate::runtime::redis::{RedisStreams, StreamsConfig};
use crate::runtime::sim::{RunOptions, RunReport};
use crate::workload::Workload;

/// Entries per pipeline / read in the raw baseline (as `bench redis`).
const RAW_BATCH: usize = 256;
/// Single-task runs the dispatch latency is measured over, and the gap
/// between their arrivals: long enough for the engine to be idle at each.
const DISPATCH_RUNS: u64 = 200;
const DISPATCH_GAP_MS: u64 = 10;
/// Workers exit after this long with nothing to claim.
const IDLE_EXIT_SEC: u64 = 2;

#[derive(Clone, Debug)]
pub struct DistributedBench {
    /// No-op tasks per measure.
    pub tasks: u64,
    /// Worker process counts to measure, in order.
    pub workers: Vec<u32>,
    /// Attempts each worker process runs at once (and the in-memory
    /// baseline's worker count).
    pub concurrency: u32,
    /// The scratch ledgers' durability.
    pub durability: Durability,
    /// The `runledger` binary to spawn workers from.
    pub exe: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct DistributedRow {
    /// Worker processes.
    pub workers: u32,
    pub tasks_per_sec: f64,
    pub elapsed_sec: f64,
    /// Over the raw XADD → XREADGROUP → XACK cycle of the same run.
    pub ratio_to_raw: f64,
    /// Over the in-memory queue of the same run.
    pub ratio_to_memory: f64,
    /// CPU seconds per wall second while the coordinator ran (1.0 = one
    /// core busy all along): the coordinator process (ledger writer,
    /// gate, results reader, submitter), all workers together, redis-server.
    pub coordinator_cores: f64,
    pub workers_cores: f64,
    pub redis_cores: f64,
    /// The coordinator's pool bound: tasks dispatched and not yet reported.
    pub max_in_flight: u32,
    /// CPU microseconds the coordinator process spent per task.
    pub coordinator_us_per_task: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DistributedBenchReport {
    pub tasks: u64,
    pub concurrency: u32,
    pub durability: String,
    pub cpus: usize,
    /// Baseline: raw pipelined XADD, XREADGROUP and XACK, batches of 256.
    pub raw_payload_bytes: usize,
    pub raw_xadd_per_sec: f64,
    pub raw_cycle_per_sec: f64,
    /// The transport's dispatch → claim → report → results → ack in one
    /// process, no ledger (what `bench redis` calls the transport cycle).
    pub transport_cycle_per_sec: f64,
    /// Baseline: the same workload through the in-memory queue, with
    /// `concurrency` workers in this process.
    pub memory_tasks_per_sec: f64,
    pub memory_cores: f64,
    /// The same under `always` durability (every step fsynced before it
    /// is answered).
    pub memory_always_tasks_per_sec: f64,
    pub memory_always_cores: f64,
    /// Dispatch latency on an idle engine (in-memory queue): from a task's
    /// `task_submitted` record to its handler's start, over
    /// `dispatch_samples` single-task runs arriving `DISPATCH_GAP_MS` apart.
    pub dispatch_p50_us: u64,
    pub dispatch_p99_us: u64,
    pub dispatch_samples: usize,
    /// `coordinator_us_per_task` of the last (largest) Redis row.
    pub coordinator_us_per_task: f64,
    pub runs: Vec<DistributedRow>,
}

/// The workload: `tasks` one-node pipelines of a `sim` step that sleeps
/// no time and never fails, no cost ceiling, one tenant with a huge budget.
pub fn workload_toml(tasks: u64, num_workers: u32, max_concurrency: u32) -> String {
    arriving_workload_toml(tasks, num_workers, max_concurrency, 0)
}

/// [`workload_toml`] with the runs arriving `interval_ms` apart.
fn arriving_workload_toml(
    tasks: u64,
    num_workers: u32,
    max_concurrency: u32,
    interval_ms: u64,
) -> String {
    format!(
        r#"seed = 7
run = "bench-distributed"
[execution.pool]
max_concurrency = {max_concurrency}
[execution.workers]
num_workers = {num_workers}
worker_timeout_sec = 30
[[tenants]]
id = "bench"
budget_micros = 1000000000000000
max_concurrent_runs = {runs}
[[pipelines]]
id = "noop"
mode = "serial"
nodes = [
  {{ id = "noop", handler = "sim", params = {{ step = "tool", latency_ms = 0, failure_rate_bp = 0 }} }},
]
[[submissions]]
tenant = "bench"
pipeline = "noop"
runs = {tasks}
interval_ms = {interval_ms}
"#,
        runs = tasks.clamp(1, u64::from(u32::MAX)),
    )
}

fn workload(tasks: u64, num_workers: u32, max_concurrency: u32) -> anyhow::Result<Workload> {
    let text = workload_toml(tasks, num_workers, max_concurrency);
    Ok(Workload::parse("bench-distributed.toml", &text)?)
}

fn scratch_ledger(dir: &Path, durability: Durability) -> anyhow::Result<Ledger> {
    Ok(Ledger::open(
        dir,
        LedgerOptions {
            durability,
            checkpoint_every: 1_000_000,
            create: true,
        },
    )?)
}

/// CPU seconds (user + system) of a process so far, from `/proc`
/// (`None`: this process); 0 where `/proc` is missing.
pub(crate) fn cpu_secs(pid: Option<u32>) -> f64 {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux for every architecture we build on.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn per_sec(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn check_report(report: &RunReport, tasks: u64, what: &str) -> anyhow::Result<()> {
    ensure!(
        report.acked == tasks && report.tasks == tasks,
        "{what}: {} of {} tasks submitted, {} ACKed ({} dead-lettered, {} retries)",
        report.tasks,
        tasks,
        report.acked,
        report.dead_lettered,
        report.retries
    );
    Ok(())
}

/// Worker processes, killed on drop if still running.
struct Workers {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Workers {
    fn spawn(
        exe: &Path,
        url: &str,
        prefix: &str,
        count: u32,
        concurrency: u32,
        logs: &Path,
    ) -> anyhow::Result<Workers> {
        let mut workers = Workers {
            children: Vec::new(),
            logs: Vec::new(),
        };
        for n in 1..=count {
            let log = logs.join(format!("{prefix}-w{n}.log"));
            let file = std::fs::File::create(&log)?;
            let child = Command::new(exe)
                .arg("worker")
                .args(["--redis-url", url, "--redis-prefix", prefix])
                .args(["--id", &format!("{prefix}-w{n}")])
                .args(["--concurrency", &concurrency.to_string()])
                .args(["--handlers", "sim"])
                .args(["--idle-exit-sec", &IDLE_EXIT_SEC.to_string()])
                .env_remove("RUNLEDGER_DATA")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(file)
                .spawn()
                .with_context(|| format!("spawning `{} worker`", exe.display()))?;
            workers.children.push(child);
            workers.logs.push(log);
        }
        Ok(workers)
    }

    fn cpu_secs(&self) -> f64 {
        self.children.iter().map(|c| cpu_secs(Some(c.id()))).sum()
    }

    /// What the workers wrote on stderr (the last lines), for an error.
    fn tails(&self) -> String {
        self.logs
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|t| {
                let lines: Vec<String> = t.lines().map(str::to_owned).collect();
                lines[lines.len().saturating_sub(3)..].to_vec()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Fails if a worker exited already (before the run was over).
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("a worker exited early ({status}): {}", self.tails());
            }
        }
        Ok(())
    }

    /// Waits for the idle workers to exit, each with success.
    fn finish(mut self) -> anyhow::Result<()> {
        let give_up = Instant::now() + Duration::from_secs(IDLE_EXIT_SEC + 20);
        for child in &mut self.children {
            loop {
                if let Some(status) = child.try_wait()? {
                    ensure!(status.success(), "a worker exited with {status}");
                    break;
                }
                if Instant::now() > give_up {
                    bail!("a worker did not exit after the run");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.children.clear();
        Ok(())
    }
}

async fn connected_clients(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("clients").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .context("INFO clients has no connected_clients")
}

/// Runs the baselines, then each worker count.
pub fn run_distributed_bench(
    config: &DistributedBench,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<DistributedBenchReport> {
    ensure!(config.tasks > 0, "--tasks must be positive");
    ensure!(
        !config.workers.is_empty() && config.workers.iter().all(|&k| k > 0),
        "--workers must list positive worker counts"
    );
    let concurrency = config.concurrency.max(1);
    let server = OwnServer::start()?;
    let url = server.url().to_owned();
    let scratch = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let nonce = std::process::id();
    let mut probe = runtime.block_on(async {
        let client = redis::Client::open(url.as_str())?;
        anyhow::Ok(client.get_multiplexed_async_connection().await?)
    })?;

    progress("baseline: raw XADD → XREADGROUP → XACK");
    let payload = envelope_json()?;
    let (raw_xadd, raw_cycle) =
        runtime.block_on(raw(&url, nonce, config.tasks, RAW_BATCH, &payload))?;
    progress("baseline: the transport cycle in one process");
    let (_, transport_cycle) = runtime.block_on(transport(&url, nonce, config.tasks, RAW_BATCH))?;

    progress("baseline: the in-memory queue");
    let memory = |durability| {
        let dir = scratch.path().join(format!("memory-{durability:?}"));
        measure_memory(&runtime, &dir, config.tasks, concurrency, durability)
    };
    let (memory_rate, memory_cores) = memory(config.durability)?;
    progress("baseline: the in-memory queue, `always` durability");
    let (memory_always_rate, memory_always_cores) = memory(Durability::Always)?;

    progress("dispatch latency: the in-memory queue, idle");
    let dispatch = measure_dispatch(
        &runtime,
        &scratch.path().join("dispatch"),
        config.durability,
    )?;

    let mut runs = Vec::new();
    for &k in &config.workers {
        progress(&format!(
            "{k} worker process(es) × {concurrency} through Redis"
        ));
        let prefix = format!("bench-dist-{nonce}-k{k}");
        let max_in_flight = k.saturating_mul(concurrency).saturating_mul(2);
        let workload = workload(config.tasks, 1, max_in_flight)?;
        let ledger = scratch_ledger(
            &scratch.path().join(format!("redis-k{k}")),
            config.durability,
        )?;
        let before = runtime.block_on(connected_clients(&mut probe))?;
        let mut workers =
            Workers::spawn(&config.exe, &url, &prefix, k, concurrency, scratch.path())?;
        // Start the clock once every worker is connected.
        let give_up = Instant::now() + Duration::from_secs(20);
        while runtime.block_on(connected_clients(&mut probe))? < before + u64::from(k) {
            workers.check_alive()?;
            if Instant::now() > give_up {
                bail!(
                    "the workers did not connect within 20 s: {}",
                    workers.tails()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let streams = runtime.block_on(RedisStreams::connect(
            &url,
            StreamsConfig {
                prefix: prefix.clone(),
                // As `run --queue redis` and `worker` default: longer than
                // an attempt may run (`worker_timeout_sec = 30`).
                lease: Duration::from_secs(60),
                ..StreamsConfig::default()
            },
        ))?;
        let (coordinator_cpu, workers_cpu, redis_cpu) = (
            cpu_secs(None),
            workers.cpu_secs(),
            cpu_secs(Some(server.pid())),
        );
        let started = Instant::now();
        let report = runtime.block_on(run_live_on(
            &ledger,
            &workload,
            &RunOptions::default(),
            &Handlers::builtin(),
            false,
            Dispatch::Redis {
                streams,
                local_workers: 0,
            },
            &mut |_, _| {},
        ));
        let elapsed = started.elapsed();
        let wall = elapsed.as_secs_f64().max(1e-9);
        let coordinator_cores = (cpu_secs(None) - coordinator_cpu) / wall;
        let workers_cores = (workers.cpu_secs() - workers_cpu) / wall;
        let redis_cores = (cpu_secs(Some(server.pid())) - redis_cpu) / wall;
        let report = report.with_context(|| format!("the coordinator with {k} workers"))?;
        ledger.close()?;
        check_report(&report, config.tasks, &format!("{k} workers"))?;
        workers.finish()?;
        let rate = per_sec(config.tasks, elapsed);
        runs.push(DistributedRow {
            workers: k,
            tasks_per_sec: rate,
            elapsed_sec: elapsed.as_secs_f64(),
            ratio_to_raw: rate / raw_cycle.max(1e-9),
            ratio_to_memory: rate / memory_rate.max(1e-9),
            coordinator_cores,
            workers_cores,
            redis_cores,
            max_in_flight,
            coordinator_us_per_task: coordinator_cores * wall * 1e6 / config.tasks.max(1) as f64,
        });
    }
    drop(server);
    Ok(DistributedBenchReport {
        tasks: config.tasks,
        concurrency,
        durability: match config.durability {
            Durability::Always => "always".to_owned(),
            Durability::Batch { interval } => format!("batch ({} ms)", interval.as_millis()),
            Durability::None => "none".to_owned(),
        },
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        raw_payload_bytes: payload.len(),
        raw_xadd_per_sec: raw_xadd,
        raw_cycle_per_sec: raw_cycle,
        transport_cycle_per_sec: transport_cycle,
        memory_tasks_per_sec: memory_rate,
        memory_cores,
        memory_always_tasks_per_sec: memory_always_rate,
        memory_always_cores,
        dispatch_p50_us: dispatch.percentile(50),
        dispatch_p99_us: dispatch.percentile(99),
        dispatch_samples: dispatch.0.len(),
        coordinator_us_per_task: runs.last().map_or(0.0, |r| r.coordinator_us_per_task),
        runs,
    })
}

/// The no-op workload through the in-memory queue with `concurrency`
/// workers in this process, on a scratch ledger in `dir`: tasks per second
/// and the cores used.
fn measure_memory(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    tasks: u64,
    concurrency: u32,
    durability: Durability,
) -> anyhow::Result<(f64, f64)> {
    let workload = workload(tasks, concurrency, concurrency.saturating_mul(2))?;
    let ledger = scratch_ledger(dir, durability)?;
    let cpu = cpu_secs(None);
    let started = Instant::now();
    let report = runtime.block_on(run_live(
        &ledger,
        &workload,
        &RunOptions::default(),
        &Handlers::builtin(),
        false,
        &mut |_, _| {},
    ))?;
    let elapsed = started.elapsed();
    let cores = (cpu_secs(None) - cpu) / elapsed.as_secs_f64().max(1e-9);
    ledger.close()?;
    check_report(&report, tasks, "in-memory queue")?;
    Ok((per_sec(tasks, elapsed), cores))
}

/// Dispatch latencies in micros, sorted.
struct Latencies(Vec<u64>);

impl Latencies {
    /// The `p`-th percentile (nearest rank).
    fn percentile(&self, p: usize) -> u64 {
        let n = self.0.len();
        if n == 0 {
            return 0;
        }
        let rank = (p * n).div_ceil(100).clamp(1, n);
        self.0[rank - 1]
    }
}

/// The `sim` handler, noting when each attempt starts (wall clock, micros).
struct Probe {
    started: std::sync::Arc<std::sync::Mutex<Vec<(crate::domain::TaskId, i64)>>>,
}

impl crate::runtime::handler::Handler for Probe {
    fn run<'a>(
        &'a self,
        ctx: &'a crate::runtime::handler::TaskContext,
    ) -> crate::runtime::handler::HandlerFuture<'a> {
        let now = wall_micros();
        if let Ok(mut started) = self.started.lock() {
            started.push((ctx.task.clone(), now));
        }
        crate::runtime::handler::SimHandler.run(ctx)
    }
}

fn wall_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Single-task runs arriving [`DISPATCH_GAP_MS`] apart through the
/// in-memory queue: for each, the time from its `task_submitted` record
/// (stamped when the writer takes the submission) to its handler's start.
fn measure_dispatch(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    durability: Durability,
) -> anyhow::Result<Latencies> {
    let text = arriving_workload_toml(DISPATCH_RUNS, 2, 4, DISPATCH_GAP_MS);
    let workload = Workload::parse("bench-dispatch.toml", &text)?;
    let started = std::sync::Arc::default();
    let mut handlers = Handlers::builtin();
    handlers.register(
        "sim",
        Probe {
            started: std::sync::Arc::clone(&started),
        },
    );
    let ledger = scratch_ledger(dir, durability)?;
    let report = runtime.block_on(run_live(
        &ledger,
        &workload,
        &RunOptions::default(),
        &handlers,
        false,
        &mut |_, _| {},
    ))?;
    ledger.close()?;
    check_report(&report, DISPATCH_RUNS, "dispatch latency")?;
    let mut submitted = std::collections::HashMap::new();
    let store = crate::log::Store::open_read(dir)?;
    let mut bad = None;
    store.walk(1, |raw| {
        match crate::log::store::decode_record(raw) {
            Ok(record) => {
                if let crate::domain::Event::TaskSubmitted { task, .. } = record.event {
                    submitted.insert(task, record.recorded_at.0);
                }
            }
            Err(why) => bad = Some(why),
        }
        std::ops::ControlFlow::Continue(())
    })?;
    if let Some(why) = bad {
        bail!("the dispatch ledger does not decode: {why}");
    }
    let started = std::mem::take(&mut *started.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let mut latencies: Vec<u64> = (started.into_iter())
        .filter_map(|(task, at)| Some(at.saturating_sub(*submitted.get(&task)?).max(0) as u64))
        .collect();
    ensure!(
        latencies.len() as u64 >= DISPATCH_RUNS,
        "{} of {DISPATCH_RUNS} dispatches were seen",
        latencies.len()
    );
    latencies.sort_unstable();
    Ok(Latencies(latencies))
}
