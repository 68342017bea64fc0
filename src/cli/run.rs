//! Running workloads: `run`, `demo` and `resume` — the ledger opened,
//! the executor the workload calls for (simulated, real-time, on the
//! in-memory queue or Redis), a progress bar, the summary; and the exit on
//! SIGINT / SIGTERM (130 / 143) after killing the running `exec` steps.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use super::args::{QueueArgs, shard_prefix};
use super::audit::write_artifacts;
use super::exit::RunFailed;
use super::open::{open_ledger, open_store, walk_error};
use super::output::print_json;
use super::process::{exit_on_signal, live_runtime};
use crate::domain::RunId;
use crate::log::query::ResumeTarget;
use crate::log::{Durability, Ledger};
use crate::runtime::{RunError, RunOptions, RunReport, run_simulated};
use crate::views::{self, Table, bp_percent};
use crate::workload::Workload;

/// `runledger run`: the workload file on the ledger in `data`; exit 3 when
/// tasks were dead-lettered.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_cmd(
    data: &Path,
    workload: &Path,
    seed: Option<u64>,
    run_id: &Option<String>,
    artifacts: Option<&Path>,
    queue: &QueueArgs,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if let Some(id) = run_id {
        if id.is_empty() || id.contains(['/', '#']) {
            bail!("--run-id `{id}` must be non-empty without '/' or '#'");
        }
        crate::domain::limits::check_id("--run-id", id).map_err(|r| anyhow::anyhow!("{r}"))?;
    }
    let loaded = Workload::load(workload)?;
    let explicit = run_id.is_some();
    execute(
        data,
        &loaded,
        RunOptions {
            seed,
            run_id: run_id.clone(),
            ..RunOptions::default()
        },
        explicit,
        artifacts,
        queue,
        json,
        out,
    )
    .and_then(|report| dead_letters_fail(&report))
}

/// `runledger demo`: the built-in demo workload, generated and run.
#[allow(clippy::too_many_arguments)]
pub(super) fn demo(
    data: &Path,
    tenants: u32,
    runs: u32,
    seed: u64,
    max_concurrency: u32,
    artifacts: Option<&Path>,
    queue: &QueueArgs,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if tenants == 0 || runs == 0 || max_concurrency == 0 {
        bail!("--tenants, --runs and --max-concurrency must be at least 1");
    }
    let text = crate::demo::workload_toml(tenants, runs, seed, max_concurrency);
    let loaded = Workload::parse("<demo>", &text)?;
    execute(
        data,
        &loaded,
        RunOptions::default(),
        false,
        artifacts,
        queue,
        json,
        out,
    )
    // The demo's failures are injected, part of the show: it exits 0.
    .map(drop)
}

/// `runledger resume`: finishes an unfinished run (the latest, or `run`)
/// and prints its summary; exit 3 when tasks were dead-lettered.
pub(super) fn resume_cmd(
    data: &Path,
    run: Option<&str>,
    queue: &QueueArgs,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let ledger = open_ledger(
        data,
        Durability::Batch {
            interval: std::time::Duration::from_millis(10),
        },
        false,
    )?;
    let result = resume(&ledger, run, queue);
    match result {
        Ok(report) => {
            finish_run(data, ledger, &report, None, json, out)?;
            dead_letters_fail(&report)
        }
        Err(e) => {
            let _ = ledger.close();
            Err(e.into())
        }
    }
}

/// Runs a workload on the ledger in `data` with a progress bar on a
/// terminal, then prints the summary. Without an explicit run id, an id
/// already in the ledger gets a `-2`, `-3`, ... suffix.
#[allow(clippy::too_many_arguments)]
fn execute(
    data: &Path,
    workload: &Workload,
    mut options: RunOptions,
    explicit_id: bool,
    artifacts: Option<&Path>,
    queue: &QueueArgs,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<RunReport> {
    let sharded;
    let workload = match queue.shard {
        Some((index, shards)) => {
            sharded = workload.shard(index, shards);
            &sharded
        }
        None => workload,
    };
    // Reach Redis before the ledger is opened (or created).
    let runtime = live_runtime()?;
    exit_on_signal(&runtime)?;
    let redis = redis_of(workload, queue, &runtime)?;
    let ledger = open_ledger(
        data,
        Durability::Batch {
            interval: std::time::Duration::from_millis(10),
        },
        true,
    )?;
    if !explicit_id {
        let seed = options.seed.unwrap_or(workload.seed);
        let base = workload.default_run_id(seed);
        options.run_id = Some(ledger.unused_run_id(&base)?.0);
    }
    let bar = progress_bar(json);
    let kill_after = kill_after_tasks()?;
    let mut progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
        if kill_after.is_some_and(|n| done >= n) {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    };
    let run = Run {
        runtime: &runtime,
        ledger: &ledger,
        workload,
        options: &options,
    };
    let result = run.on(redis, queue, &mut progress);
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(RunError::RunExists(id)) => {
            let _ = ledger.close();
            bail!("run `{id}` is already in the ledger (choose another with --run-id)");
        }
        Err(e) => {
            let _ = ledger.discard_if_new();
            return Err(e.into());
        }
    };
    finish_run(data, ledger, &report, artifacts, json, out)?;
    Ok(report)
}

/// A progress bar on a terminal (hidden otherwise, or under `--json`).
fn progress_bar(json: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() || json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} tasks",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// A run about to execute on an open ledger.
struct Run<'a> {
    runtime: &'a tokio::runtime::Runtime,
    ledger: &'a Ledger,
    workload: &'a Workload,
    options: &'a RunOptions,
}

impl Run<'_> {
    /// Executes it: on Redis when `redis` is given (even simulated steps
    /// then run in real time, on workers), else on virtual time for a
    /// simulated workload, else in real time on the in-memory queue.
    fn on(
        &self,
        redis: Option<crate::runtime::redis::RedisStreams>,
        queue: &QueueArgs,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<RunReport, RunError> {
        let (ledger, workload, options) = (self.ledger, self.workload, self.options);
        match redis {
            Some(streams) => self.runtime.block_on(crate::runtime::live::run_live_on(
                ledger,
                workload,
                options,
                &crate::runtime::handler::Handlers::builtin(),
                false,
                crate::runtime::live::Dispatch::Redis {
                    streams,
                    local_workers: queue.local_workers.unwrap_or(workload.num_workers),
                },
                progress,
            )),
            None if workload.is_simulated() => run_simulated(ledger, workload, options, progress),
            None => self.runtime.block_on(crate::runtime::live::run_live(
                ledger,
                workload,
                options,
                &crate::runtime::handler::Handlers::builtin(),
                false,
                progress,
            )),
        }
    }
}

/// The Redis streams a run's `QueueArgs` (or its workload) ask for, if any.
fn redis_of(
    workload: &Workload,
    queue: &QueueArgs,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<crate::runtime::redis::RedisStreams>> {
    let kind = queue.queue.as_deref().unwrap_or(&workload.queue_kind);
    if kind != "redis" {
        return Ok(None);
    }
    let Some(url) = queue.redis_url.as_ref().or(workload.redis_url.as_ref()) else {
        bail!("the Redis queue needs a URL: --redis-url URL or execution.queue.redis_url");
    };
    let config = crate::runtime::redis::StreamsConfig {
        prefix: shard_prefix(&queue.redis_prefix, queue.shard),
        lease: std::time::Duration::from_millis(queue.lease_ms),
        ..Default::default()
    };
    let streams = runtime.block_on(crate::runtime::redis::RedisStreams::connect(url, config))?;
    Ok(Some(streams))
}

/// The crash drill of the tests: `RUNLEDGER_TEST_KILL_AFTER_TASKS=N` makes
/// a run SIGKILL its own process once N tasks have ended, so a test kills
/// it mid-run at a point that depends on the work done, not on wall time.
fn kill_after_tasks() -> anyhow::Result<Option<u64>> {
    match std::env::var("RUNLEDGER_TEST_KILL_AFTER_TASKS") {
        Ok(text) => text.parse().map(Some).map_err(|_| {
            anyhow::anyhow!("RUNLEDGER_TEST_KILL_AFTER_TASKS=`{text}`: expected a task count")
        }),
        Err(_) => Ok(None),
    }
}

/// A run that ended with dead-lettered tasks is a failed run (exit 3).
fn dead_letters_fail(report: &RunReport) -> anyhow::Result<()> {
    if report.dead_lettered == 0 {
        return Ok(());
    }
    Err(RunFailed {
        run: report.run.clone(),
        dead_lettered: report.dead_lettered,
        tasks: report.tasks,
    }
    .into())
}

/// Closes the ledger, writes the run's summary and artifact files under
/// `artifacts` (the artifacts regenerated from the closed ledger, as
/// `runledger artifacts --run` would) and prints the summary.
fn finish_run(
    data: &Path,
    ledger: Ledger,
    report: &RunReport,
    artifacts: Option<&Path>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (state, _) = ledger.state()?;
    ledger.close()?;
    let tenants = views::tenants(&state);
    let workers = views::workers(&state);
    // Best effort: the run is recorded whatever this read finds (on a full
    // disk it may need a copy that does not fit), and its exit code stays.
    let failures = if report.dead_lettered > 0 {
        open_store(data)
            .and_then(|store| {
                crate::audit::failures::top_reasons(
                    &store,
                    &RunId(report.run.clone()),
                    FAILURE_REASONS_SHOWN,
                )
                .map_err(walk_error)
            })
            .unwrap_or_else(|e| {
                tracing::warn!("cannot list the run's failure reasons: {e:#}");
                Vec::new()
            })
    } else {
        Vec::new()
    };
    if let Some(dir) = artifacts {
        write_artifacts(data, Some(&report.run), dir)?;
        let run_dir = dir.join("runs").join(&report.run);
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("cannot create {}", run_dir.display()))?;
        let write = |name: &str, value: serde_json::Value| -> anyhow::Result<()> {
            let path = run_dir.join(name);
            std::fs::write(&path, serde_json::to_string_pretty(&value)? + "\n")
                .with_context(|| format!("cannot write {}", path.display()))
        };
        write("summary.json", serde_json::to_value(report)?)?;
        write("tenants.json", serde_json::to_value(&tenants)?)?;
        write("workers.json", serde_json::to_value(&workers)?)?;
    }
    if json {
        return print_json(
            out,
            &serde_json::json!({ "report": report, "tenants": tenants, "workers": workers, "failures": failures, "digest": report.digest }),
        );
    }
    print_summary(report, &tenants, &workers, &failures, out)
}

/// The most common failure reasons a run's summary shows.
const FAILURE_REASONS_SHOWN: usize = 5;

fn print_summary(
    r: &RunReport,
    tenants: &[views::TenantView],
    workers: &[views::WorkerView],
    failures: &[crate::audit::failures::FailureReason],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    writeln!(out, "run {} (seed {}): {} tasks", r.run, r.seed, r.tasks)?;
    writeln!(
        out,
        "  outcomes: {} acked, {} dead-lettered, {} cancelled, {} skipped; {} retries ({} timeouts)",
        r.acked, r.dead_lettered, r.cancelled, r.skipped, r.retries, r.timeouts
    )?;
    if !failures.is_empty() {
        writeln!(out, "  dead-lettered tasks by last error:")?;
        for f in failures {
            writeln!(out, "    {:>6}  {}", f.tasks, f.reason)?;
        }
    }
    writeln!(
        out,
        "  peak concurrency {}; backpressure engaged {} times, released {} times",
        r.peak_running, r.backpressure_engaged, r.backpressure_released
    )?;
    let virtual_secs = r.virtual_elapsed_micros as f64 / 1e6;
    let wall_secs = r.wall_elapsed_micros as f64 / 1e6;
    writeln!(
        out,
        "  throughput: {:.1} tasks/s over {:.3} s of recorded time; executed in {:.3} s ({:.0} tasks/s)",
        r.tasks as f64 / virtual_secs.max(1e-9),
        virtual_secs,
        wall_secs,
        r.tasks as f64 / wall_secs.max(1e-9)
    )?;
    let m = |v: i64| crate::domain::Micros(v).to_string();
    let mut costs = Table::new(&[
        "TENANT",
        "STATUS",
        "LLM",
        "RETRIEVAL",
        "RERANK",
        "STORAGE",
        "TOOL",
        "OTHER",
        "TOTAL",
        "BUDGET",
        "PEAK",
    ]);
    for t in tenants {
        let cat = |name: &str| m(t.spent_by_category.get(name).copied().unwrap_or(0));
        costs.row(vec![
            t.tenant.clone(),
            t.status.name().to_owned(),
            cat("llm"),
            cat("retrieval"),
            cat("rerank"),
            cat("storage"),
            cat("tool"),
            cat("other"),
            m(t.spent_micros),
            m(t.budget_micros),
            bp_percent(t.peak_committed_bp),
        ]);
    }
    write!(out, "{}", costs.render())?;
    let verdict = |kind: &str| r.decisions.get(kind).copied().unwrap_or(0);
    writeln!(
        out,
        "  governance: {} continue, {} degrade, {} terminate; admission denied {} times",
        verdict("continue"),
        verdict("degrade"),
        verdict("terminate"),
        tenants.iter().map(|t| t.admissions_denied).sum::<u64>()
    )?;
    if let Some(peak) = tenants.iter().max_by_key(|t| t.peak_committed_bp) {
        let mut statuses = std::collections::BTreeMap::new();
        for t in tenants {
            *statuses.entry(t.status.name()).or_insert(0u32) += 1;
        }
        let statuses: Vec<String> = statuses
            .iter()
            .map(|(status, n)| format!("{n} {status}"))
            .collect();
        let held = if peak.peak_committed_bp <= 10_000 {
            "never exceeded"
        } else {
            "EXCEEDED"
        };
        writeln!(
            out,
            "  budgets: {}; spent + reserved {held}, at most {} of a budget (`{}`) at any seq",
            statuses.join(", "),
            bp_percent(peak.peak_committed_bp),
            peak.tenant
        )?;
    }
    let mut table = Table::new(&[
        "WORKER",
        "EXECUTED",
        "SUCCEEDED",
        "FAILED",
        "SUCCESS",
        "TASKS/S",
        "UPTIME",
    ]);
    // Many workers: the busiest few, then a count (`workers` lists all).
    const SHOWN: usize = 12;
    let mut shown: Vec<&views::WorkerView> = workers.iter().collect();
    if shown.len() > SHOWN {
        shown.sort_by(|a, b| b.executed.cmp(&a.executed).then(a.worker.cmp(&b.worker)));
        shown.truncate(SHOWN);
    }
    for w in shown {
        let uptime = w.uptime_micros as f64 / 1e6;
        table.row(vec![
            w.worker.clone(),
            w.executed.to_string(),
            w.succeeded.to_string(),
            w.failed.to_string(),
            bp_percent(i64::from(w.success_rate_bp)),
            format!("{:.2}", w.executed as f64 / uptime.max(1e-9)),
            format!("{uptime:.3}s"),
        ]);
    }
    write!(out, "{}", table.render())?;
    if workers.len() > SHOWN {
        writeln!(
            out,
            "  ... the {SHOWN} busiest of {} workers (`runledger workers` lists all)",
            workers.len()
        )?;
    }
    writeln!(out, "head: {} (seq {})", r.head, r.head_seq)?;
    writeln!(out, "digest: {}", r.digest)?;
    Ok(())
}

/// Finishes an unfinished run with the executor its workload calls for.
fn resume(ledger: &Ledger, run: Option<&str>, queue: &QueueArgs) -> Result<RunReport, RunError> {
    let target = ledger.resume_target(run.map(RunId::from).as_ref())?;
    let recorded = match target.as_ref().and_then(|t| t.workload.as_deref()) {
        Some(text) => Workload::parse("<recorded workload>", text).ok(),
        None => None,
    };
    let simulated = recorded.as_ref().is_none_or(Workload::is_simulated);
    // The queue the run was on: the flag, else its workload's.
    let on_redis = match queue.queue.as_deref() {
        Some(kind) => kind == "redis",
        None => recorded.as_ref().is_some_and(|w| w.queue_kind == "redis"),
    };
    if simulated && !on_redis {
        return crate::runtime::sim::resume_simulated(ledger, run, &mut |_, _| {});
    }
    let Some(ResumeTarget {
        run: id,
        seed,
        workload: Some(text),
    }) = target
    else {
        return Err(RunError::Resume(
            "no unfinished run in the ledger".to_owned(),
        ));
    };
    let mut workload = Workload::parse("<recorded workload>", &text)
        .map_err(|e| RunError::Resume(e.to_string()))?;
    // Relative `exec` paths run against the workload file's directory, not
    // this process's; the tasks the run submitted show it (a copy of the
    // state, taken only then).
    if workload.has_relative_exec_paths() {
        let (state, _) = ledger.state()?;
        crate::runtime::live::resolve_recorded_exec_paths(&state, &mut workload, &id)?;
    }
    if let Some((index, shards)) = queue.shard {
        workload = workload.shard(index, shards);
    }
    let options = RunOptions {
        seed: Some(seed),
        run_id: Some(id.0),
        ..RunOptions::default()
    };
    let runtime = live_runtime().map_err(|e| RunError::Resume(e.to_string()))?;
    exit_on_signal(&runtime).map_err(|e| RunError::Resume(e.to_string()))?;
    if on_redis {
        let streams = redis_of(&workload, queue, &runtime)
            .map_err(|e| RunError::Resume(e.to_string()))?
            .ok_or_else(|| RunError::Resume("the Redis queue needs --redis-url".to_owned()))?;
        return runtime.block_on(crate::runtime::live::run_live_on(
            ledger,
            &workload,
            &options,
            &crate::runtime::handler::Handlers::builtin(),
            true,
            crate::runtime::live::Dispatch::Redis {
                streams,
                local_workers: queue.local_workers.unwrap_or(workload.num_workers),
            },
            &mut |_, _| {},
        ));
    }
    runtime.block_on(crate::runtime::live::run_live(
        ledger,
        &workload,
        &options,
        &crate::runtime::handler::Handlers::builtin(),
        true,
        &mut |_, _| {},
    ))
}
