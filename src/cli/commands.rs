//! One function per subcommand. Arguments are already parsed; resources
//! (the store, the ledger) are opened only once the input is known good.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Serialize;

use super::{BenchCommand, CheckFailed, Cli, Command, Damaged};
use crate::artifacts::{self, ArtifactError};
use crate::bench::{LedgerBench, run_ledger_bench};
use crate::domain::{Event, RunId, TaskId, TenantId};
use crate::log::codec::decode_event;
use crate::log::record::{RawRecord, Record};
use crate::log::store::IndexKind;
use crate::log::{
    AppendError, Durability, Ledger, LedgerOptions, OpenError, Store, StoreError, WalkError,
};
use crate::replay::{self, Folded};
use crate::runtime::sim::RunError;
use crate::runtime::{RunOptions, RunReport, run_simulated};
use crate::views::{self, Table, bp_percent};
use crate::wire;
use crate::workload::Workload;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let out = &mut std::io::stdout().lock();
    match cli.command {
        Command::Ingest { ref file } => ingest(&cli.data, file, cli.json, out),
        Command::Log {
            ref run,
            ref tenant,
            from,
            limit,
        } => log(
            &cli.data,
            run.as_deref(),
            tenant.as_deref(),
            from,
            limit,
            cli.json,
            out,
        ),
        Command::Verify { repair_indices } => verify_cmd(&cli.data, repair_indices, cli.json, out),
        Command::Replay {
            ref run,
            check: true,
            ref policy,
            keep_going,
        } => check_cmd(
            &cli.data,
            run.as_deref(),
            policy.as_deref(),
            keep_going,
            cli.json,
            out,
        ),
        Command::Replay { ref run, .. } => replay_cmd(&cli.data, run.as_deref(), cli.json, out),
        Command::Tenants => tenants(&cli.data, cli.json, out),
        Command::Queue => queue(&cli.data, cli.json, out),
        Command::Runs => runs(&cli.data, cli.json, out),
        Command::Workers => workers(&cli.data, cli.json, out),
        Command::Decisions {
            ref run,
            ref tenant,
        } => decisions(&cli.data, run.as_deref(), tenant.as_deref(), cli.json, out),
        Command::Run {
            ref workload,
            seed,
            ref run_id,
            ref artifacts,
            ref queue,
        } => {
            if let Some(id) = run_id {
                if id.is_empty() || id.contains(['/', '#']) {
                    bail!("--run-id `{id}` must be non-empty without '/' or '#'");
                }
                crate::domain::limits::check_id("--run-id", id)
                    .map_err(|r| anyhow::anyhow!("{r}"))?;
            }
            let loaded = Workload::load(workload)?;
            let explicit = run_id.is_some();
            execute(
                &cli.data,
                &loaded,
                RunOptions {
                    seed,
                    run_id: run_id.clone(),
                    stop_after_steps: None,
                },
                explicit,
                artifacts.as_deref(),
                queue,
                cli.json,
                out,
            )
            .and_then(|report| dead_letters_fail(&report))
        }
        Command::Resume { ref run, ref queue } => {
            let ledger = open_ledger(
                &cli.data,
                Durability::Batch {
                    interval: std::time::Duration::from_millis(10),
                },
                false,
            )?;
            let result = resume(&ledger, run.as_deref(), queue);
            match result {
                Ok(report) => {
                    finish_run(&cli.data, ledger, &report, None, cli.json, out)?;
                    dead_letters_fail(&report)
                }
                Err(e) => {
                    let _ = ledger.close();
                    Err(e.into())
                }
            }
        }
        Command::Artifacts {
            ref run,
            out: ref dir,
        } => {
            let written = artifacts_cmd(&cli.data, run.as_deref(), dir)?;
            if cli.json {
                return print_json(
                    out,
                    &serde_json::json!({ "files": written, "out": dir.display().to_string() }),
                );
            }
            writeln!(out, "wrote {written} files to {}", dir.display())?;
            Ok(())
        }
        Command::Diff {
            ref run_a,
            ref run_b,
            ref data_b,
        } => diff_cmd(&cli.data, run_a, data_b.as_deref(), run_b, cli.json, out),
        Command::Export {
            ref tenant,
            from,
            to,
            format,
            ref out,
            checkpoint,
        } => {
            let options = crate::audit::export::ExportOptions {
                tenant: TenantId(tenant.clone()),
                from,
                to,
                checkpoint,
            };
            super::export::export(&cli.data, &options, format, out.as_deref())
        }
        Command::VerifyExport { ref file, ref head } => {
            super::export::verify_export(file, head.as_deref(), cli.json, out)
        }
        Command::Checkpoint => super::export::checkpoint(&cli.data, cli.json, out),
        Command::Demo {
            tenants,
            runs,
            seed,
            max_concurrency,
            ref artifacts,
            ref queue,
        } => {
            if tenants == 0 || runs == 0 || max_concurrency == 0 {
                bail!("--tenants, --runs and --max-concurrency must be at least 1");
            }
            let text = crate::demo::workload_toml(tenants, runs, seed, max_concurrency);
            let loaded = Workload::parse("<demo>", &text)?;
            execute(
                &cli.data,
                &loaded,
                RunOptions::default(),
                false,
                artifacts.as_deref(),
                queue,
                cli.json,
                out,
            )
            // The demo's failures are injected, part of the show: it exits 0.
            .map(drop)
        }
        Command::Shard { ref tenant, of } => {
            let shard = crate::workload::shard_of(tenant, of);
            if cli.json {
                print_json(
                    out,
                    &serde_json::json!({ "tenant": tenant, "shard": shard, "of": of }),
                )
            } else {
                writeln!(out, "{shard}")?;
                Ok(())
            }
        }
        Command::Worker {
            ref redis,
            ref prefix,
            concurrency,
            ref handlers,
            ref id,
            timeout_sec,
            lease_ms,
            idle_exit_sec,
            shard,
        } => worker_cmd(
            redis,
            &super::shard_prefix(prefix, shard),
            concurrency,
            handlers,
            id.as_deref(),
            timeout_sec,
            lease_ms,
            idle_exit_sec,
            out,
        ),
        Command::Bench {
            what:
                BenchCommand::Queue {
                    tasks,
                    workers,
                    batch,
                    durability,
                },
        } => {
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
            if cli.json {
                print_json(out, &report)?;
            }
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Redis {
                    tasks,
                    batch,
                    ref url,
                },
        } => {
            let report = crate::bench::redis::run_redis_bench(tasks, batch, url.as_deref())?;
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
            if cli.json {
                print_json(out, &report)?;
            }
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Distributed {
                    tasks,
                    ref workers,
                    concurrency,
                    durability,
                },
        } => bench_distributed(tasks, workers, concurrency, durability, cli.json, out),
        Command::Bench {
            what: BenchCommand::Governance { tenants },
        } => bench_governance(tenants, cli.json, out),
        Command::Bench {
            what: BenchCommand::Export { events },
        } => super::export::bench(events, cli.json, out),
        Command::Bench {
            what:
                BenchCommand::Check {
                    tenants,
                    runs,
                    max_concurrency,
                },
        } => bench_check(tenants, runs, max_concurrency, cli.json, out),
        Command::Bench {
            what: BenchCommand::Pipeline { nodes },
        } => bench_pipeline(&nodes, cli.json, out),
        Command::Bench {
            what:
                BenchCommand::Ledger {
                    events,
                    durability,
                    appenders,
                    batch,
                },
        } => {
            // Only an explicit --data: RUNLEDGER_DATA names the user's
            // real ledger, which a bench must never append to.
            let config = LedgerBench {
                events,
                durability,
                appenders,
                batch,
                data: cli.data_on_command_line.then(|| cli.data.clone()),
            };
            bench_ledger(&config, cli.json, out)
        }
    }
}

/// Opens the ledger in `data` to read it: in place, or a scratch copy when
/// its disk is full or read-only (see [`Store::open_read`]).
pub(super) fn open_store(data: &Path) -> anyhow::Result<Store> {
    missing_hint(Store::open_read(data))
}

/// Opens the ledger in `data` in place to write into it (never creating it).
pub(super) fn open_store_to_write(data: &Path) -> anyhow::Result<Store> {
    missing_hint(Store::open(data, false))
}

fn missing_hint<T>(opened: Result<T, StoreError>) -> anyhow::Result<T> {
    match opened {
        Ok(opened) => Ok(opened),
        Err(StoreError::Missing(dir)) => bail!(
            "no ledger at {} (create one with `runledger ingest FILE`, or pass --data DIR)",
            dir.display()
        ),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn walk_error(error: WalkError) -> anyhow::Error {
    match error {
        WalkError::Break(b) => Damaged(b).into(),
        WalkError::Index(b) => CheckFailed(format!(
            "{b}; `runledger verify` names the first seq it misses, \
             `runledger verify --repair-indices` rebuilds the indices from the log"
        ))
        .into(),
        WalkError::Storage(e) => anyhow::Error::new(e).context("cannot read the ledger"),
    }
}

fn fold(data: &Path, run: Option<&str>) -> anyhow::Result<Folded> {
    let store = open_store(data)?;
    let run = run.map(|r| RunId(r.to_owned()));
    replay::fold(&store, run.as_ref()).map_err(walk_error)
}

pub(super) fn print_json(out: &mut dyn Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

fn ingest(data: &Path, file: &str, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let (name, reader): (String, Box<dyn BufRead>) = if file == "-" {
        (
            "<stdin>".to_owned(),
            Box::new(std::io::BufReader::new(std::io::stdin())),
        )
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?;
        (file.to_owned(), Box::new(std::io::BufReader::new(f)))
    };
    let mut batch = wire::Batch::new();
    for (number, line) in wire::lines(reader) {
        let line = line.map_err(|reason| anyhow::anyhow!("{name}: line {number}: {reason}"))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        wire::parse_line(text)
            .and_then(|parsed| batch.push(number, parsed))
            .map_err(|reason| anyhow::anyhow!("{name}: line {number}: {reason}"))?;
    }
    let count = batch.len();
    let ledger = open_ledger(data, Durability::Always, true)?;
    // The ledger is this process's alone (sled's lock), so its head cannot
    // move between this query and the append.
    let head = match ledger.head() {
        Ok(head) => head,
        Err(e) => {
            let _ = ledger.discard_if_new();
            return Err(e.into());
        }
    };
    let (appends, line_numbers) = match batch.attach(head) {
        Ok(attached) => attached,
        Err((line, reason)) => {
            let _ = ledger.discard_if_new();
            bail!("{name}: line {line}: {reason}; nothing was appended");
        }
    };
    let receipt = match ledger.append(appends) {
        Ok(receipt) => receipt,
        Err(AppendError::Rejected { index, rejection }) => {
            let _ = ledger.discard_if_new();
            bail!(
                "{name}: line {}: {rejection}; nothing was appended",
                line_numbers[index]
            );
        }
        Err(e) => {
            let _ = ledger.discard_if_new();
            return Err(e.into());
        }
    };
    ledger.close()?;
    if json {
        print_json(
            out,
            &serde_json::json!({
                "ingested": count,
                "first_seq": receipt.first_seq,
                "last_seq": receipt.last_seq,
                "head": receipt.head.to_hex().as_str(),
            }),
        )
    } else if count == 0 {
        writeln!(out, "ingested 0 events").map_err(Into::into)
    } else {
        writeln!(
            out,
            "ingested {count} events (seq {}..{}), head {}",
            receipt.first_seq,
            receipt.last_seq,
            receipt.head.to_hex()
        )
        .map_err(Into::into)
    }
}

/// Opens the ledger in `data` to append (with `create`, making a new one
/// when the directory is absent or empty).
fn open_ledger(data: &Path, durability: Durability, create: bool) -> anyhow::Result<Ledger> {
    let options = LedgerOptions {
        durability,
        checkpoint_every: 1_000_000,
        create,
    };
    match Ledger::open(data, options) {
        Ok(ledger) => Ok(ledger),
        Err(OpenError::Damaged(e)) => Err(walk_error(e)),
        Err(OpenError::Store(e)) => missing_hint(Err(e)),
    }
}

/// Follows which run and tenant each task belongs to during a full walk.
#[derive(Default)]
struct Scopes {
    tasks: rustc_hash::FxHashMap<TaskId, (RunId, TenantId)>,
}

impl Scopes {
    fn matches(&mut self, event: &Event, run: Option<&str>, tenant: Option<&str>) -> bool {
        if let Event::TaskSubmitted {
            task, run, tenant, ..
        } = event
        {
            self.tasks
                .insert(task.clone(), (run.clone(), tenant.clone()));
        }
        let owner = event.task().and_then(|t| self.tasks.get(t));
        let event_run = event.run().or(owner.map(|o| &o.0));
        let event_tenant = event.tenant().or(owner.map(|o| &o.1));
        run.is_none_or(|r| event_run.is_some_and(|x| x.as_str() == r))
            && tenant.is_none_or(|t| event_tenant.is_some_and(|x| x.as_str() == t))
    }
}

/// Refuses (exit 2) a `--run` or `--tenant` filter that names nothing in
/// the ledger, so a typo is not mistaken for an empty history.
fn require_known(store: &Store, run: Option<&str>, tenant: Option<&str>) -> anyhow::Result<()> {
    let filters = run
        .map(|r| (IndexKind::Run, r, "run"))
        .into_iter()
        .chain(tenant.map(|t| (IndexKind::Tenant, t, "tenant")));
    for (kind, id, what) in filters {
        let indexed = store.indexed_frames(kind, id).map_err(walk_error)?;
        let known = if let Some(frames) = indexed {
            !frames.is_empty()
        } else {
            let mut seen = false;
            let mut scopes = Scopes::default();
            store
                .walk(1, |raw| {
                    if let Ok(event) = decode_event(raw.event_bytes) {
                        let (r, t) = match kind {
                            IndexKind::Run => (Some(id), None),
                            IndexKind::Tenant => (None, Some(id)),
                        };
                        seen = scopes.matches(&event, r, t);
                    }
                    if seen {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .map_err(walk_error)?;
            seen
        };
        if !known {
            bail!("{what} `{id}` is not in the ledger");
        }
    }
    Ok(())
}

fn log(
    data: &Path,
    run: Option<&str>,
    tenant: Option<&str>,
    from: u64,
    limit: Option<u64>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let store = open_store(data)?;
    require_known(&store, run, tenant)?;
    let limit = limit.unwrap_or(u64::MAX);
    let mut shown = 0u64;
    let mut failure: Option<anyhow::Error> = None;
    let mut emit = |raw: RawRecord<'_>, event: Event| -> ControlFlow<()> {
        if shown >= limit {
            return ControlFlow::Break(());
        }
        let record = Record {
            seq: raw.seq,
            recorded_at: raw.recorded_at,
            prev_hash: raw.prev_hash,
            hash: raw.hash,
            event,
        };
        let written = if json {
            writeln!(out, "{}", wire::record_line(&record))
        } else {
            writeln!(
                out,
                "{:>8}  {}  {}  {}",
                record.seq,
                record.recorded_at,
                &record.hash.to_hex()[..16],
                record.event
            )
        };
        if let Err(e) = written {
            failure = Some(e.into());
            return ControlFlow::Break(());
        }
        shown += 1;
        if shown >= limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let mut decode_failure: Option<Damaged> = None;
    let mut decode = |raw: &RawRecord<'_>| match decode_event(raw.event_bytes) {
        Ok(event) => Some(event),
        Err(what) => {
            decode_failure = Some(Damaged(crate::log::ChainBreak {
                seq: raw.seq,
                what: format!("event cannot be decoded: {what}"),
            }));
            None
        }
    };
    let mut filters = Vec::new();
    if let Some(r) = run {
        filters.push((IndexKind::Run, r));
    }
    if let Some(t) = tenant {
        filters.push((IndexKind::Tenant, t));
    }
    let indexed = store
        .walk_indexed(&filters, from, |raw| match decode(&raw) {
            Some(event) => emit(raw, event),
            None => ControlFlow::Break(()),
        })
        .map_err(walk_error)?;
    if indexed.is_none() {
        let mut scopes = Scopes::default();
        let start = if filters.is_empty() { from } else { 1 };
        store
            .walk(start, |raw| {
                let Some(event) = decode(&raw) else {
                    return ControlFlow::Break(());
                };
                if raw.seq < from || !scopes.matches(&event, run, tenant) {
                    return ControlFlow::Continue(());
                }
                emit(raw, event)
            })
            .map_err(walk_error)?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(d) = decode_failure {
        return Err(d.into());
    }
    Ok(())
}

fn verify_cmd(
    data: &Path,
    repair_indices: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let store = open_store(data)?;
    // One pass: the chain, the published checkpoints, and the index
    // entries the log gives.
    let mut expected = replay::ExpectedIndex::default();
    let checked = crate::audit::published::verify_with_published_mapping(
        &store,
        |raw, event| replay::IndexKey::of(raw.frame_seq, event),
        |seq, key| expected.push(seq, key),
    );
    let (report, published) = match checked.context("cannot read the ledger")? {
        Ok(verified) => verified,
        Err(broken) => return verify_failed(&broken, false, json, out),
    };
    // The chain holds: now the indices against it.
    let index = expected
        .finish_check(&store, report.head.seq)
        .map_err(walk_error)?;
    let mut rebuilt = None;
    if repair_indices {
        replay::rebuild_index(&store).map_err(walk_error)?;
        store.flush(true)?;
        if let Err(broken) = replay::check_index(&store).map_err(walk_error)? {
            return verify_failed(&broken, true, json, out);
        }
        rebuilt = Some(index.err());
    } else if let Err(broken) = index {
        return verify_failed(&broken, true, json, out);
    }
    if json {
        let mut value = serde_json::json!({
            "ok": true,
            "records": report.records,
            "head_seq": report.head.seq,
            "head": report.head.hash.to_hex().as_str(),
            "checkpoints": report.checkpoints,
            "published_checkpoints": published,
        });
        if let Some(before) = &rebuilt {
            value["indices_rebuilt"] = serde_json::json!({
                "damaged_at_seq": before.as_ref().map(|b| b.seq),
                "error": before.as_ref().map(|b| b.what.as_str()),
            });
        }
        return print_json(out, &value);
    }
    match &rebuilt {
        Some(Some(before)) => writeln!(
            out,
            "indices rebuilt from the log (they were damaged at seq {}: {})",
            before.seq, before.what
        )?,
        Some(None) => writeln!(out, "indices rebuilt from the log (they matched it)")?,
        None => {}
    }
    writeln!(
        out,
        "ok: {} records, head {}",
        report.records,
        report.head.hash.to_hex()
    )?;
    Ok(())
}

/// Reports a failed `verify` (exit 1); `index`: the indices disagree with
/// an intact chain.
fn verify_failed(
    broken: &crate::log::ChainBreak,
    index: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::json!({"ok": false, "seq": broken.seq, "error": broken.what});
        if index {
            value["indices_damaged"] = serde_json::json!(true);
        }
        print_json(out, &value)?;
    } else {
        writeln!(out, "FAILED at seq {}: {}", broken.seq, broken.what)?;
    }
    let hint = if index {
        " (the chain holds; `runledger verify --repair-indices` rebuilds the indices from it)"
    } else {
        ""
    };
    Err(CheckFailed(format!(
        "verification failed at seq {}: {}{hint}",
        broken.seq, broken.what
    ))
    .into())
}

fn check_cmd(
    data: &Path,
    run: Option<&str>,
    policy: Option<&Path>,
    keep_going: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::audit::check::{CheckOptions, check, parse_policy};
    let policy = match policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the policy {}", path.display()))?;
            parse_policy(&path.display().to_string(), &text).map_err(anyhow::Error::msg)?
        }
        None => crate::domain::Policy::STANDARD,
    };
    let store = open_store(data)?;
    if let Some(r) = run {
        let folded = replay::fold(&store, Some(&RunId(r.to_owned()))).map_err(walk_error)?;
        if folded.state.runs.get(&RunId(r.to_owned())).is_none() {
            bail!("run `{r}` is not in the ledger");
        }
    }
    let options = CheckOptions {
        policy,
        run: run.map(|r| RunId(r.to_owned())),
        keep_going,
    };
    let report = check(&store, options).map_err(walk_error)?;
    if json {
        print_json(out, &report)?;
    } else {
        write_check(&report, out)?;
    }
    if report.ok() {
        return Ok(());
    }
    Err(CheckFailed(match report.first.first() {
        Some(d) => format!(
            "{} of {} decisions diverge; the first at seq {} ({} for {})",
            report.divergences,
            report.decisions + report.divergences,
            d.seq,
            d.decision,
            d.subject
        ),
        None => format!("{} decisions diverge", report.divergences),
    })
    .into())
}

fn write_check(
    report: &crate::audit::check::CheckReport,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "rebuilt {} records, digest {}",
        report.records, report.digest
    )?;
    for d in &report.first {
        writeln!(
            out,
            "divergence at seq {}: {} for `{}`: {}",
            d.seq, d.decision, d.subject, d.what
        )?;
        for f in &d.fields {
            writeln!(
                out,
                "  {}: recorded {}, recomputed {}",
                f.field, f.recorded, f.recomputed
            )?;
        }
    }
    if report.divergences > report.first.len() as u64 {
        writeln!(
            out,
            "... {} more divergences",
            report.divergences - report.first.len() as u64
        )?;
    }
    if report.ok() {
        let kinds: Vec<String> = report
            .by_kind
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        writeln!(out, "ok: {} decisions re-checked", report.decisions)?;
        if !kinds.is_empty() {
            writeln!(out, "  {}", kinds.join(", "))?;
        }
    }
    if report.not_recheckable > 0 {
        writeln!(
            out,
            "  {} decision events belong to runs runledger did not execute (ingested): not re-checkable",
            report.not_recheckable
        )?;
    }
    Ok(())
}

fn replay_cmd(
    data: &Path,
    run: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let folded = fold(data, run)?;
    if let Some(r) = run {
        if folded.state.runs.get(&RunId(r.to_owned())).is_none() {
            bail!("run `{r}` is not in the ledger");
        }
    }
    let digests = folded.state.digests();
    if json {
        return print_json(
            out,
            &serde_json::json!({
                "records": folded.records,
                "head_seq": folded.head.seq,
                "head": folded.head.hash.to_hex().as_str(),
                "run": run,
                "digests": digests,
                "tenants": views::tenants(&folded.state),
                "queue": views::queue(&folded.state),
                "digest": digests.combined.to_hex().as_str(),
            }),
        );
    }
    writeln!(
        out,
        "replayed {} records, head seq {} {}",
        folded.records,
        folded.head.seq,
        folded.head.hash.to_hex()
    )?;
    for (name, hash) in digests.named() {
        writeln!(out, "  {name:<9} {}", hash.to_hex())?;
    }
    let mut table = Table::new(&["TENANT", "SPENT", "BUDGET", "USED", "STATUS"]);
    for t in views::tenants(&folded.state) {
        table.row(vec![
            t.tenant,
            crate::domain::Micros(t.spent_micros).to_string(),
            crate::domain::Micros(t.budget_micros).to_string(),
            bp_percent(t.utilisation_bp),
            t.status.name().to_owned(),
        ]);
    }
    write!(out, "{}", table.render())?;
    let c = folded.state.queue.counts();
    writeln!(
        out,
        "queue: {} waiting, {} pending, {} leased, {} done, {} dead-lettered, {} cancelled, {} skipped ({} retries)",
        c.waiting, c.pending, c.leased, c.done, c.dead_lettered, c.cancelled, c.skipped, c.retries
    )?;
    writeln!(out, "digest: {}", digests.combined.to_hex())?;
    Ok(())
}

fn tenants(data: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let folded = fold(data, None)?;
    let views = views::tenants(&folded.state);
    if json {
        return print_json(out, &views);
    }
    let mut table = Table::new(&[
        "TENANT",
        "BUDGET",
        "SPENT",
        "RESERVED",
        "USED",
        "STATUS",
        "RUNS",
        "INTENSITY",
        "LLM",
        "RETRIEVAL",
        "RERANK",
        "STORAGE",
        "TOOL",
        "OTHER",
    ]);
    let m = |v: i64| crate::domain::Micros(v).to_string();
    for t in views {
        let cat = |name: &str| m(t.spent_by_category.get(name).copied().unwrap_or(0));
        table.row(vec![
            t.tenant.clone(),
            m(t.budget_micros),
            m(t.spent_micros),
            m(t.reserved_micros),
            bp_percent(t.utilisation_bp),
            t.status.name().to_owned(),
            format!("{}/{}", t.active_runs, t.max_concurrent_runs),
            t.learning_intensity.name().to_owned(),
            cat("llm"),
            cat("retrieval"),
            cat("rerank"),
            cat("storage"),
            cat("tool"),
            cat("other"),
        ]);
    }
    write!(out, "{}", table.render())?;
    Ok(())
}

fn queue(data: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let folded = fold(data, None)?;
    let view = views::queue(&folded.state);
    if json {
        return print_json(out, &view);
    }
    let c = view.counts;
    let mut table = Table::new(&[
        "WAITING",
        "PENDING",
        "LEASED",
        "DONE",
        "DEAD-LETTERED",
        "CANCELLED",
        "RETRIES",
    ]);
    table.row(
        [
            c.waiting,
            c.pending,
            c.leased,
            c.done,
            c.dead_lettered,
            c.cancelled,
            c.retries,
        ]
        .iter()
        .map(u64::to_string)
        .collect(),
    );
    write!(out, "{}", table.render())?;
    let r = view.ready_by_priority;
    writeln!(
        out,
        "ready by priority: critical {}, high {}, normal {}, low {}, batch {}",
        r.critical, r.high, r.normal, r.low, r.batch
    )?;
    if !view.leased_tasks.is_empty() {
        let mut leases = Table::new(&["LEASED TASK", "TENANT", "WORKER", "ATTEMPT", "DEADLINE"]);
        for l in &view.leased_tasks {
            leases.row(vec![
                l.task.clone(),
                l.tenant.clone(),
                l.worker.clone(),
                l.attempt.to_string(),
                l.lease_deadline
                    .map_or_else(|| "-".to_owned(), |d| d.to_string()),
            ]);
        }
        write!(out, "{}", leases.render())?;
    }
    if !view.dead_letter.is_empty() {
        writeln!(out, "dead letter: {}", view.dead_letter.join(", "))?;
    }
    Ok(())
}

fn runs(data: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let folded = fold(data, None)?;
    let views = views::runs(&folded.state);
    if json {
        return print_json(out, &views);
    }
    let mut table = Table::new(&[
        "RUN",
        "STATUS",
        "SEED",
        "STARTED",
        "SUBMITTED",
        "ACKED",
        "NACKED",
        "DEAD",
        "CANCELLED",
        "COST",
        "PEAK",
    ]);
    for r in views {
        table.row(vec![
            r.run,
            format!("{:?}", r.status).to_lowercase(),
            r.seed.to_string(),
            r.started_at.to_string(),
            r.tasks_submitted.to_string(),
            r.tasks_acked.to_string(),
            r.tasks_nacked.to_string(),
            r.tasks_dead_lettered.to_string(),
            r.tasks_cancelled.to_string(),
            crate::domain::Micros(r.cost_micros).to_string(),
            r.peak_running.to_string(),
        ]);
    }
    write!(out, "{}", table.render())?;
    Ok(())
}

fn workers(data: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let folded = fold(data, None)?;
    let views = views::workers(&folded.state);
    if json {
        return print_json(out, &views);
    }
    let mut table = Table::new(&[
        "WORKER",
        "EXECUTED",
        "SUCCEEDED",
        "FAILED",
        "TIMED OUT",
        "SUCCESS",
        "UPTIME",
    ]);
    for w in views {
        table.row(vec![
            w.worker,
            w.executed.to_string(),
            w.succeeded.to_string(),
            w.failed.to_string(),
            w.timed_out.to_string(),
            bp_percent(i64::from(w.success_rate_bp)),
            format!("{:.3}s", w.uptime_micros as f64 / 1e6),
        ]);
    }
    write!(out, "{}", table.render())?;
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
        "{:>7}  {:>10}  {:>8}  {:>8}  {:>11}  {:>7}  {:>5}",
        "workers", "tasks/s", "÷ raw", "÷ memory", "coordinator", "workers", "redis"
    )?;
    for row in &r.runs {
        writeln!(
            out,
            "{:>7}  {:>10.0}  {:>7.3}x  {:>7.2}x  {:>6.2} cores  {:>7.2}  {:>5.2}",
            row.workers,
            row.tasks_per_sec,
            row.ratio_to_raw,
            row.ratio_to_memory,
            row.coordinator_cores,
            row.workers_cores,
            row.redis_cores
        )?;
    }
    writeln!(
        out,
        "(each worker runs {} attempts at once; cores = CPU seconds per wall second while the coordinator ran)",
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
        "timing: one clock read pair per sample of about 2 us of calls (calls per sample: admission {}, lookup {}, decision 1; p50/p99 over samples); clock overhead {:.0} ns, not subtracted",
        r.admission_batch, r.baseline_batch, r.timer_overhead_ns
    )?;
    if json {
        print_json(out, &r)?;
    }
    Ok(())
}

/// Runs a workload on the ledger in `data` with a progress bar on a
/// terminal, then prints the summary. Without an explicit run id, an id
/// already in the ledger gets a `-2`, `-3`, ... suffix.
/// The Redis streams a run's `QueueArgs` (or its workload) ask for, if any.
fn redis_of(
    workload: &Workload,
    queue: &super::QueueArgs,
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
        prefix: super::shard_prefix(&queue.redis_prefix, queue.shard),
        lease: std::time::Duration::from_millis(queue.lease_ms),
        ..Default::default()
    };
    let streams = runtime.block_on(crate::runtime::redis::RedisStreams::connect(url, config))?;
    Ok(Some(streams))
}

#[allow(clippy::too_many_arguments)]
fn worker_cmd(
    redis: &str,
    prefix: &str,
    concurrency: u32,
    handlers: &[String],
    id: Option<&str>,
    timeout_sec: u64,
    lease_ms: u64,
    idle_exit_sec: Option<u64>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::runtime::redis::worker::{Stop, WorkerOptions, run_worker};
    use tokio::signal::unix::{SignalKind, signal};
    let all = crate::runtime::handler::Handlers::builtin();
    let chosen = all.only(handlers).map_err(|name| {
        anyhow::anyhow!(
            "--handlers: no handler named `{name}` (this build has: {})",
            all.names().join(", ")
        )
    })?;
    let id = id.map_or_else(
        || {
            let host = gethostname::gethostname();
            format!("worker-{}-{}", host.to_string_lossy(), std::process::id())
        },
        str::to_owned,
    );
    crate::domain::limits::check_id("--id", &id).map_err(|r| anyhow::anyhow!("{r}"))?;
    let options = WorkerOptions {
        id: crate::domain::WorkerId(id.clone()),
        concurrency,
        timeout: std::time::Duration::from_secs(timeout_sec),
        idle_exit: idle_exit_sec.map(std::time::Duration::from_secs),
    };
    let config = crate::runtime::redis::StreamsConfig {
        prefix: prefix.to_owned(),
        lease: std::time::Duration::from_millis(lease_ms),
        ..Default::default()
    };
    if timeout_sec.saturating_mul(1_000) >= lease_ms {
        bail!(
            "--lease-ms ({lease_ms}) must be longer than --timeout-sec ({timeout_sec} s), or this worker's running attempts would be taken over"
        );
    }
    let runtime = live_runtime()?;
    let stop = Stop::new();
    let stats = runtime.block_on(async {
        // SIGINT (Ctrl-C) and SIGTERM (Docker, Kubernetes, systemd) stop
        // the worker the same way, also while Redis is away.
        let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                tracing::warn!(
                    "stopping: running attempts finish and report first (a second signal kills them)"
                );
                stop.set();
                let (name, code) = tokio::select! {
                    _ = interrupt.recv() => ("SIGINT", 130),
                    _ = terminate.recv() => ("SIGTERM", 143),
                };
                crate::runtime::handler::kill_running_steps();
                eprintln!(
                    "{name} again: stopped, running exec steps killed; their tasks run again after their lease"
                );
                std::process::exit(code);
            });
        }
        let streams = crate::runtime::redis::RedisStreams::connect(redis, config).await?;
        anyhow::Ok(run_worker(streams, chosen, options, stop).await?)
    })?;
    writeln!(
        out,
        "worker {id}: {} attempts, {} succeeded, {} failed",
        stats.executed, stats.succeeded, stats.failed
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn execute(
    data: &Path,
    workload: &Workload,
    mut options: RunOptions,
    explicit_id: bool,
    artifacts: Option<&Path>,
    queue: &super::QueueArgs,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<RunReport> {
    use std::io::IsTerminal;
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
        let base = workload
            .run
            .clone()
            .unwrap_or_else(|| format!("run-{seed}"));
        let taken = {
            let base = base.clone();
            ledger.query(move |state, _| {
                (1u32..)
                    .map(|n| {
                        if n == 1 {
                            base.clone()
                        } else {
                            format!("{base}-{n}")
                        }
                    })
                    .find(|id| state.runs.get(&RunId(id.clone())).is_none())
            })?
        };
        options.run_id = taken;
    }
    let bar = if std::io::stderr().is_terminal() && !json {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} tasks",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
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
    let result = match redis {
        // On Redis even simulated steps run in real time, on workers.
        Some(streams) => runtime.block_on(crate::runtime::live::run_live_on(
            &ledger,
            workload,
            &options,
            &crate::runtime::handler::Handlers::builtin(),
            false,
            crate::runtime::live::Dispatch::Redis {
                streams,
                local_workers: queue.local_workers.unwrap_or(workload.num_workers),
            },
            &mut progress,
        )),
        None if workload.is_simulated() => {
            run_simulated(&ledger, workload, &options, &mut progress)
        }
        None => runtime.block_on(crate::runtime::live::run_live(
            &ledger,
            workload,
            &options,
            &crate::runtime::handler::Handlers::builtin(),
            false,
            &mut progress,
        )),
    };
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
    Err(super::RunFailed {
        run: report.run.clone(),
        dead_lettered: report.dead_lettered,
        tasks: report.tasks,
    }
    .into())
}

/// Writes the artifact files of the ledger in `data` (of `run` only, if
/// given) under `out` and returns how many; nothing is written when the
/// run is unknown.
fn artifacts_cmd(data: &Path, run: Option<&str>, out: &Path) -> anyhow::Result<usize> {
    let store = open_store(data)?;
    let run = run.map(|r| RunId(r.to_owned()));
    let files = match artifacts::generate(&store, run.as_ref()) {
        Ok(files) => files,
        Err(ArtifactError::Walk(e)) => return Err(walk_error(e)),
        Err(e) => return Err(e.into()),
    };
    drop(store);
    artifacts::write(out, &files)?;
    Ok(files.len())
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
    let state = ledger.query(|state, _| state.clone())?;
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
        artifacts_cmd(data, Some(&report.run), dir)?;
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

fn live_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// On SIGINT or SIGTERM, kills the running `exec` steps (their process
/// groups, which a terminal's Ctrl-C does not reach) and exits with 130 or
/// 143, as the signal would have; the ledger is safe as after any kill, and
/// `runledger resume` finishes the run.
fn exit_on_signal(runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _inside = runtime.enter();
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    runtime.spawn(async move {
        let (name, code) = tokio::select! {
            _ = interrupt.recv() => ("SIGINT", 130),
            _ = terminate.recv() => ("SIGTERM", 143),
        };
        crate::runtime::handler::kill_running_steps();
        eprintln!(
            "{name}: stopped, running exec steps killed; `runledger resume` finishes the run"
        );
        std::process::exit(code);
    });
    Ok(())
}

/// Finishes an unfinished run with the executor its workload calls for.
fn resume(
    ledger: &Ledger,
    run: Option<&str>,
    queue: &super::QueueArgs,
) -> Result<RunReport, RunError> {
    let target = {
        let run = run.map(str::to_owned);
        ledger.query(move |state, _| {
            let summary = match &run {
                Some(id) => state.runs.get(&RunId(id.clone())),
                None => state
                    .runs
                    .sorted()
                    .into_iter()
                    .rev()
                    .find(|r| r.status == crate::domain::activity::RunStatus::Running),
            };
            summary.map(|s| {
                (
                    s.run.clone(),
                    s.seed,
                    state.workload_of(&s.run).map(str::to_owned),
                )
            })
        })?
    };
    let recorded = match &target {
        Some((_, _, Some(text))) => Workload::parse("<recorded workload>", text).ok(),
        _ => None,
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
    let Some((id, seed, Some(text))) = target else {
        return Err(RunError::Resume(
            "no unfinished run in the ledger".to_owned(),
        ));
    };
    let mut workload = Workload::parse("<recorded workload>", &text)
        .map_err(|e| RunError::Resume(e.to_string()))?;
    // Relative `exec` paths run against the workload file's directory, not
    // this process's.
    let workload = {
        let run = id.clone();
        ledger.query(move |state, _| {
            crate::runtime::live::resolve_recorded_exec_paths(state, &mut workload, &run)
                .map(|()| workload)
        })??
    };
    let mut workload = workload;
    if let Some((index, shards)) = queue.shard {
        workload = workload.shard(index, shards);
    }
    let options = RunOptions {
        seed: Some(seed),
        run_id: Some(id.0),
        stop_after_steps: None,
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

/// One governance decision as `decisions` shows it.
#[derive(Serialize)]
struct DecisionView {
    seq: u64,
    recorded_at: crate::domain::Timestamp,
    /// The event kind (`admission_denied`, `budget_status_changed`, ...).
    kind: &'static str,
    tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    /// `continue` | `degrade` | `terminate` for cost-agent verdicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<crate::domain::Decision>,
    reason: String,
    /// The cost agent's inputs, projection and plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<serde_json::Value>,
}

fn decisions(
    data: &Path,
    run: Option<&str>,
    tenant: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let store = open_store(data)?;
    require_known(&store, run, tenant)?;
    let mut scopes = Scopes::default();
    let mut found = Vec::new();
    let mut failure = None;
    store
        .walk(1, |raw| {
            let event = match decode_event(raw.event_bytes) {
                Ok(event) => event,
                Err(what) => {
                    failure = Some(Damaged(crate::log::ChainBreak { seq: raw.seq, what }));
                    return ControlFlow::Break(());
                }
            };
            let owner_run = event.run().cloned().or_else(|| {
                event
                    .task()
                    .and_then(|t| scopes.tasks.get(t))
                    .map(|o| o.0.clone())
            });
            if !scopes.matches(&event, run, tenant) {
                return ControlFlow::Continue(());
            }
            let (decision, reason) = match &event {
                Event::AdmissionDenied { reason, .. } => (None, reason.clone()),
                Event::BudgetStatusChanged { from, to, .. } => (None, format!("{from} -> {to}")),
                Event::BudgetOverrun { amount_micros, .. } => (
                    None,
                    format!("cost passed the ceiling by {amount_micros}; tenant blocked"),
                ),
                Event::BudgetPeriodReset { .. } => (None, "budget period reset".to_owned()),
                Event::DegradationDecided {
                    decision, reason, ..
                } => (Some(*decision), reason.clone()),
                Event::LearningProfileAdjusted {
                    exploration_bp,
                    reason,
                    ..
                } => (
                    None,
                    format!(
                        "exploration {}: {reason}",
                        bp_percent(i64::from(*exploration_bp))
                    ),
                ),
                Event::LearningArmChosen {
                    param,
                    arm,
                    explored,
                    reason,
                    ..
                } => (
                    None,
                    format!(
                        "{param}={arm}{}: {reason}",
                        if *explored { " (explores)" } else { "" }
                    ),
                ),
                Event::TaskSkipped { reason, .. } => (None, reason.clone()),
                _ => return ControlFlow::Continue(()),
            };
            found.push(DecisionView {
                seq: raw.seq,
                recorded_at: raw.recorded_at,
                kind: event.kind(),
                tenant: event
                    .tenant()
                    .or_else(|| event.task().and_then(|t| scopes.tasks.get(t)).map(|o| &o.1))
                    .map(|t| t.0.clone())
                    .unwrap_or_default(),
                run: owner_run.map(|r| r.0),
                task: event.task().map(|t| t.0.clone()),
                decision,
                reason,
                details: match &event {
                    Event::DegradationDecided { details, .. } if !details.is_null() => {
                        Some(details.to_value())
                    }
                    _ => None,
                },
            });
            ControlFlow::Continue(())
        })
        .map_err(walk_error)?;
    if let Some(d) = failure {
        return Err(d.into());
    }
    if json {
        for d in &found {
            print_json(out, d)?;
        }
        return Ok(());
    }
    let mut table = Table::new(&["SEQ", "KIND", "TENANT", "TASK", "DECISION", "REASON"]);
    for d in found {
        table.row(vec![
            d.seq.to_string(),
            d.kind.to_owned(),
            d.tenant,
            d.task.unwrap_or_else(|| "-".to_owned()),
            d.decision
                .map_or_else(|| "-".to_owned(), |x| format!("{x:?}").to_lowercase()),
            d.reason,
        ]);
    }
    write!(out, "{}", table.render())?;
    Ok(())
}

/// `runledger diff`: loads both runs (from one store when both are in the
/// same directory: sled locks it), compares, prints; a difference is a
/// failed check (exit 1), an unknown run bad input (exit 2).
fn diff_cmd(
    data: &Path,
    run_a: &str,
    data_b: Option<&Path>,
    run_b: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::audit::diff;
    let same_dir = |b: &Path| match (data.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => data == b,
    };
    let store_a = open_store(data)?;
    let store_b = match data_b {
        Some(b) if !same_dir(b) => Some(open_store(b).context("--data-b")?),
        _ => None,
    };
    let load = |store: &Store, run: &str| -> anyhow::Result<diff::RunInput> {
        let id = RunId(run.to_owned());
        if let Some(input) = diff::load_run(store, &id).map_err(walk_error)? {
            return Ok(input);
        }
        let known = diff::runs(store).map_err(walk_error)?;
        let listed: Vec<&str> = known.iter().take(20).map(RunId::as_str).collect();
        let more = known.len().saturating_sub(listed.len());
        bail!(
            "no run `{run}` in {}: {}{}",
            store.dir().display(),
            if listed.is_empty() {
                "it holds no runs".to_owned()
            } else {
                format!("runs there: {}", listed.join(", "))
            },
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    };
    let a = load(&store_a, run_a)?;
    let b = load(store_b.as_ref().unwrap_or(&store_a), run_b)?;
    let result = diff::compare(&a, &b);
    if json {
        print_json(out, &result)?;
    } else {
        write!(out, "{}", diff::render_text(&result))?;
    }
    if result.identical {
        Ok(())
    } else {
        Err(CheckFailed(format!("runs `{run_a}` and `{run_b}` differ")).into())
    }
}
