//! `runledger bench`: runs each benchmark of `crate::bench` and prints its
//! figures beside the baseline measured in the same run.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::args::BenchCommand;
use super::output::print_json;
use crate::bench::{LedgerBench, run_ledger_bench};
use crate::log::Durability;
use crate::views::Table;

/// `runledger bench WHAT`; `data`: the `--data` given on the command line
/// (only `bench ledger` takes one).
pub(super) fn bench(
    what: &BenchCommand,
    data: Option<PathBuf>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match *what {
        BenchCommand::Queue {
            tasks,
            workers,
            batch,
            durability,
        } => bench_queue(tasks, workers, batch, durability, json, out),
        BenchCommand::Redis {
            tasks,
            batch,
            ref url,
        } => bench_redis(tasks, batch, url.as_deref(), json, out),
        BenchCommand::Distributed {
            tasks,
            ref workers,
            concurrency,
            durability,
        } => bench_distributed(tasks, workers, concurrency, durability, json, out),
        BenchCommand::Governance { tenants } => bench_governance(tenants, json, out),
        BenchCommand::Export { events } => bench_export(events, json, out),
        BenchCommand::Check {
            tenants,
            runs,
            max_concurrency,
        } => bench_check(tenants, runs, max_concurrency, json, out),
        BenchCommand::Pipeline { ref nodes } => bench_pipeline(nodes, json, out),
        BenchCommand::Ledger {
            events,
            durability,
            appenders,
            batch,
        } => {
            let config = LedgerBench {
                events,
                durability,
                appenders,
                batch,
                data,
            };
            bench_ledger(&config, json, out)
        }
    }
}

fn bench_queue(
    tasks: u64,
    workers: usize,
    batch: usize,
    durability: Durability,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let report = crate::bench::run_queue_bench(tasks, workers, batch, durability)?;
    writeln!(
        out,
        "queue ({} durability, {} workers x {} leases): {:.0} no-op tasks/s submit → dequeue → ack; appending the same events directly: {:.0} tasks/s ({:.2}x)",
        report.durability,
        report.workers,
        report.batch,
        report.tasks_per_sec,
        report.baseline_tasks_per_sec,
        report.tasks_per_sec / report.baseline_tasks_per_sec.max(1.0)
    )?;
    if json {
        print_json(out, &report)?;
    }
    Ok(())
}

fn bench_redis(
    tasks: u64,
    batch: usize,
    url: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let report = crate::bench::redis::run_redis_bench(tasks, batch, url)?;
    writeln!(
        out,
        "raw Redis Streams ({} entries of {} bytes, batches of {}): XADD {:.0}/s; XADD → XREADGROUP → XACK {:.0}/s",
        report.tasks,
        report.payload_bytes,
        report.batch,
        report.raw_xadd_per_sec,
        report.raw_cycle_per_sec
    )?;
    writeln!(
        out,
        "transport: dispatch {:.0}/s; dispatch → claim → report → results → ack {:.0} tasks/s ({:.2}x of raw)",
        report.transport_dispatch_per_sec,
        report.transport_cycle_per_sec,
        report.transport_cycle_per_sec / report.raw_cycle_per_sec.max(1.0)
    )?;
    if json {
        print_json(out, &report)?;
    }
    Ok(())
}

fn bench_ledger(config: &LedgerBench, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let report = run_ledger_bench(config, &mut |phase| eprintln!("bench: {phase}"))?;
    let r = &report;
    writeln!(
        out,
        "append ({} durability, {} appenders x {} events/append): {:.0} events/s, latency p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        r.durability,
        r.appenders,
        r.batch,
        r.append_events_per_sec,
        r.append_latency_us_p50,
        r.append_latency_us_p99,
        r.append_latency_us_max
    )?;
    writeln!(
        out,
        "raw sled baseline (one key per event, no hashing): {:.0} events/s, {:.1} bytes/event; ledger/raw = {:.2}x",
        r.raw_sled_events_per_sec,
        r.raw_sled_bytes_per_event,
        r.append_events_per_sec / r.raw_sled_events_per_sec.max(1.0)
    )?;
    writeln!(
        out,
        "single appender, 1 event/append: {:.0} events/s, latency p99 {:.0} us",
        r.single_appender_events_per_sec, r.single_appender_latency_us_p99
    )?;
    writeln!(
        out,
        "disk: {:.1} bytes/event (events average {:.1} bytes encoded)",
        r.bytes_per_event, r.event_bytes_avg
    )?;
    writeln!(out, "replay: {:.0} events/s", r.replay_events_per_sec)?;
    writeln!(out, "verify: {:.0} events/s", r.verify_events_per_sec)?;
    if json {
        print_json(out, &report)?;
    }
    Ok(())
}

fn bench_check(
    tenants: u32,
    runs: u32,
    max_concurrency: u32,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::bench::check::run_check_bench;
    let r = run_check_bench(tenants, runs, max_concurrency, &mut |phase| {
        eprintln!("bench: {phase}")
    })?;
    if json {
        return print_json(out, &r);
    }
    writeln!(
        out,
        "check: demo {} tenants × {} runs, {} records, {} decisions",
        r.tenants, r.runs, r.records, r.decisions
    )?;
    let mut table = Table::new(&["MEASURE", "SECONDS", "RECORDS/S", "DECISIONS/S"]);
    table.row(vec![
        "baseline: replay (fold + digests)".to_owned(),
        format!("{:.3}", r.replay_secs),
        format!("{:.0}", r.replay_records_per_sec),
        String::new(),
    ]);
    table.row(vec![
        "replay --check".to_owned(),
        format!("{:.3}", r.check_secs),
        format!("{:.0}", r.check_records_per_sec),
        format!("{:.0}", r.check_decisions_per_sec),
    ]);
    write!(out, "{}", table.render())?;
    writeln!(out, "check / replay: {:.2}×", r.check_over_replay)?;
    Ok(())
}

fn bench_pipeline(nodes: &[u32], json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    use crate::bench::pipeline::run_pipeline_bench;
    let r = run_pipeline_bench(nodes, &mut |phase| eprintln!("bench: {phase}"))?;
    if json {
        return print_json(out, &r);
    }
    writeln!(
        out,
        "pipeline: one serial pipeline per length, run to its end (simulated executor, no fsync)"
    )?;
    let mut table = Table::new(&[
        "NODES", "RECORDS", "CHECK S", "CPU S", "RUN S", "CPU S", "NODES/S", "µS/NODE",
    ]);
    for row in &r.rows {
        table.row(vec![
            row.nodes.to_string(),
            row.records.to_string(),
            format!("{:.3}", row.check_secs),
            format!("{:.3}", row.check_cpu_secs),
            format!("{:.3}", row.run_secs),
            format!("{:.3}", row.run_cpu_secs),
            format!("{:.0}", row.nodes_per_sec),
            format!("{:.2}", row.micros_per_node),
        ]);
    }
    write!(out, "{}", table.render())?;
    writeln!(
        out,
        "time per node grows {:.2}× over {:.0}× the length (1× is linear)",
        r.per_node_growth, r.length_growth
    )?;
    Ok(())
}

fn bench_distributed(
    tasks: u64,
    workers: &[u32],
    concurrency: u32,
    durability: Durability,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::bench::distributed::{DistributedBench, run_distributed_bench};
    let config = DistributedBench {
        tasks,
        workers: workers.to_vec(),
        concurrency,
        durability,
        exe: std::env::current_exe().context("finding this executable to spawn workers")?,
    };
    let r = run_distributed_bench(&config, &mut |phase| eprintln!("bench: {phase}"))?;
    writeln!(
        out,
        "{} no-op tasks, {} durability, private redis-server, {} CPUs; baselines from this run:",
        r.tasks, r.durability, r.cpus
    )?;
    writeln!(
        out,
        "  raw Redis Streams ({} B entries, batches of 256, one client): XADD {:.0}/s, XADD → XREADGROUP → XACK {:.0}/s",
        r.raw_payload_bytes, r.raw_xadd_per_sec, r.raw_cycle_per_sec
    )?;
    writeln!(
        out,
        "  transport cycle in one process, no ledger: {:.0} tasks/s",
        r.transport_cycle_per_sec
    )?;
    writeln!(
        out,
        "  in-memory queue, {} workers in-process: {:.0} tasks/s ({:.2} cores)",
        r.concurrency, r.memory_tasks_per_sec, r.memory_cores
    )?;
    writeln!(
        out,
        "  in-memory queue, `always` durability: {:.0} tasks/s ({:.2} cores)",
        r.memory_always_tasks_per_sec, r.memory_always_cores
    )?;
    writeln!(
        out,
        "  dispatch latency, idle in-memory queue (task_submitted → handler start, {} runs): p50 {:.2} ms, p99 {:.2} ms",
        r.dispatch_samples,
        r.dispatch_p50_us as f64 / 1000.0,
        r.dispatch_p99_us as f64 / 1000.0
    )?;
    writeln!(
        out,
        "{:>7}  {:>10}  {:>8}  {:>8}  {:>11}  {:>7}  {:>5}  {:>8}",
        "workers", "tasks/s", "÷ raw", "÷ memory", "coordinator", "workers", "redis", "µs/task"
    )?;
    for row in &r.runs {
        writeln!(
            out,
            "{:>7}  {:>10.0}  {:>7.3}x  {:>7.2}x  {:>6.2} cores  {:>7.2}  {:>5.2}  {:>8.1}",
            row.workers,
            row.tasks_per_sec,
            row.ratio_to_raw,
            row.ratio_to_memory,
            row.coordinator_cores,
            row.workers_cores,
            row.redis_cores,
            row.coordinator_us_per_task
        )?;
    }
    writeln!(
        out,
        "(each worker runs {} attempts at once; cores = CPU seconds per wall second while the coordinator ran; µs/task = the coordinator's CPU per task)",
        r.concurrency
    )?;
    if json {
        print_json(out, &r)?;
    }
    Ok(())
}

fn bench_governance(tenants: u32, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    use crate::bench::governance::run_governance_bench;
    let r = run_governance_bench(tenants, &mut |phase| eprintln!("bench: {phase}"))?;
    /// `ns` as nanoseconds below 10 µs, else microseconds.
    fn time(ns: f64) -> String {
        if ns < 10_000.0 {
            format!("{ns:.0} ns")
        } else {
            format!("{:.1} us", ns / 1_000.0)
        }
    }
    fn verdict(p99: f64, target: f64) -> String {
        let met = if p99 < target { "met" } else { "missed" };
        format!("p99 < {}: {met}", time(target))
    }
    writeln!(
        out,
        "governance: {} tenants, {} tasks (one 4-node pipeline each), seed {}; state folded from {} events at {:.0} events/s",
        r.tenants, r.tasks, r.seed, r.fold_events, r.fold_events_per_sec
    )?;
    let mut table = Table::new(&["MEASURE", "CALLS", "P50", "P99", "MEAN", "TARGET"]);
    table.row(vec![
        "admission check (Admitter::admit)".to_owned(),
        r.admission_calls.to_string(),
        time(r.admission_check_ns_p50),
        time(r.admission_check_ns_p99),
        time(r.admission_check_ns_mean),
        verdict(r.admission_check_ns_p99, r.admission_target_ns),
    ]);
    table.row(vec![
        "baseline: FxHashMap lookup of the tenant".to_owned(),
        r.admission_calls.to_string(),
        time(r.baseline_lookup_ns_p50),
        time(r.baseline_lookup_ns_p99),
        time(r.baseline_lookup_ns_mean),
        String::new(),
    ]);
    table.row(vec![
        "cost-agent decision with plan".to_owned(),
        r.decision_calls.to_string(),
        time(r.decision_ns_p50),
        time(r.decision_ns_p99),
        time(r.decision_ns_mean),
        verdict(r.decision_ns_p99, r.decision_target_ns),
    ]);
    table.row(vec![
        "period resets, none due (period_resets)".to_owned(),
        r.period_resets_calls.to_string(),
        time(r.period_resets_ns_p50),
        time(r.period_resets_ns_p99),
        time(r.period_resets_ns_mean),
        String::new(),
    ]);
    write!(out, "{}", table.render())?;
    writeln!(
        out,
        "admission: {} admitted, {} denied; {:.1}x the baseline (means)",
        r.admissions_admitted, r.admissions_denied, r.admission_to_baseline
    )?;
    writeln!(
        out,
        "decisions: {} continue ({} mean), {} degrade ({}), {} terminate ({}); {:.1}x the baseline (means)",
        r.decisions_continue,
        time(r.decision_ns_mean_continue),
        r.decisions_degrade,
        time(r.decision_ns_mean_degrade),
        r.decisions_terminate,
        time(r.decision_ns_mean_terminate),
        r.decision_to_baseline
    )?;
    writeln!(
        out,
        "period resets: none due; {:.1}x the baseline (means)",
        r.period_resets_to_baseline
    )?;
    match (
        r.bytes_per_tenant,
        r.bytes_per_tenant_with_pipeline,
        r.state_bytes,
    ) {
        (Some(tenant), Some(with_pipeline), Some(total)) => writeln!(
            out,
            "memory (resident set growth): {tenant:.0} bytes per tenant, {with_pipeline:.0} with its pipeline; state {:.1} MiB",
            total as f64 / (1024.0 * 1024.0)
        )?,
        _ => writeln!(out, "memory: unknown (no /proc/self/status)")?,
    }
    writeln!(
        out,
        "timing: one clock read pair per sample of about 2 us of calls (calls per sample: admission {}, lookup {}, decision 1, period resets {}; p50/p99 over samples); clock overhead {:.0} ns, not subtracted",
        r.admission_batch, r.baseline_batch, r.period_resets_batch, r.timer_overhead_ns
    )?;
    if json {
        print_json(out, &r)?;
    }
    Ok(())
}

fn bench_export(events: u64, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let r =
        crate::bench::export::run_export_bench(events, &mut |phase| eprintln!("bench: {phase}"))?;
    writeln!(
        out,
        "ledger: {} records, tenant {} has {} rows",
        r.records, r.tenant, r.rows
    )?;
    writeln!(
        out,
        "export (jsonl, {:.1} MB): {:.0} rows/s ({:.2} s; reads and hashes all {} records)",
        r.file_bytes as f64 / 1e6,
        r.export_rows_per_sec,
        r.export_secs,
        r.records
    )?;
    writeln!(
        out,
        "verify-export: {:.0} rows/s ({:.2} s)",
        r.verify_export_rows_per_sec, r.verify_export_secs
    )?;
    writeln!(
        out,
        "baseline, chain verify of the same ledger: {:.0} records/s ({:.2} s)",
        r.verify_records_per_sec, r.verify_secs
    )?;
    if json {
        print_json(out, &r)?;
    }
    Ok(())
}
