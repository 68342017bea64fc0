//! `runledger bench export`: one tenant's cost history exported from a
//! ledger where its cost events are interleaved with other tenants', the
//! file verified offline, and — the baseline, in the same run — the plain
//! chain `verify` of the same ledger. Shell code: it reads the clock.

use std::time::Instant;

use serde::Serialize;

use crate::audit::export::{ExportOptions, Format, export};
use crate::audit::verify_export::verify_export;
use crate::domain::{Category, Event, Micros, Priority, RunId, TaskId, TenantId, WorkerId};
use crate::log::verify::verify;
use crate::log::{Durability, Ledger, LedgerOptions, Store};

/// Other tenants whose tasks are interleaved with the exported one's.
const OTHER_TENANTS: u64 = 4;
/// Events per append.
const BATCH_EVENTS: usize = 4_096;

#[derive(Clone, Debug, Serialize)]
pub struct ExportBenchReport {
    pub tenant: String,
    pub records: u64,
    pub rows: u64,
    pub file_bytes: u64,
    pub export_secs: f64,
    pub export_rows_per_sec: f64,
    pub verify_export_secs: f64,
    pub verify_export_rows_per_sec: f64,
    /// Baseline: `verify` of the whole chain.
    pub verify_secs: f64,
    pub verify_records_per_sec: f64,
}

/// Four money rows per task of the exported tenant: submitted (its
/// ceiling), reserved, cost, released; dequeue and ack are not rows.
fn tenant_task(run: &RunId, tenant: &TenantId, worker: &WorkerId, n: u64) -> [Event; 6] {
    let task = TaskId(format!("{run}/x{n:08}"));
    let cost = 1_000 + (n % 997) as i64;
    let ceiling = 2_000;
    [
        Event::TaskSubmitted {
            run: run.clone(),
            task: task.clone(),
            tenant: tenant.clone(),
            priority: Priority::Normal,
            deps: Vec::new(),
            pipeline: None,
            cost_ceiling_micros: Micros(ceiling),
            handler: "sim".to_owned(),
            params: Default::default(),
            max_attempts: 3,
            optional: false,
        },
        Event::CostReserved {
            tenant: tenant.clone(),
            task: task.clone(),
            amount_micros: Micros(ceiling),
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
            category: Category::ALL[(n % 6) as usize],
            amount_micros: Micros(cost),
        },
        Event::ReservationReleased {
            tenant: tenant.clone(),
            task: task.clone(),
            amount_micros: Micros(ceiling - cost),
        },
        Event::TaskAcked {
            task,
            worker: worker.clone(),
            output: Default::default(),
        },
    ]
}

pub fn run_export_bench(
    rows: u64,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<ExportBenchReport> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("ledger");
    let tenant = TenantId("bench-export-tenant".to_owned());
    progress(&format!(
        "appending {rows} cost events of {tenant} among {OTHER_TENANTS} other tenants' events"
    ));
    let ledger = Ledger::open(
        &data,
        LedgerOptions {
            durability: Durability::None,
            checkpoint_every: 0,
            create: true,
        },
    )?;
    let run = RunId("bench-export".to_owned());
    let worker = WorkerId("bench-worker".to_owned());
    let others: Vec<TenantId> = (0..OTHER_TENANTS)
        .map(|k| TenantId(format!("bench-other-{k}")))
        .collect();
    let mut setup = vec![Event::RunStarted {
        run: run.clone(),
        seed: 0,
        config_hash: String::new(),
    }];
    for t in std::iter::once(&tenant).chain(&others) {
        setup.push(Event::TenantRegistered {
            tenant: t.clone(),
            budget_micros: Micros(i64::MAX / 4),
            max_concurrent_runs: u32::MAX,
            learning_intensity: Default::default(),
            meta_learning: false,
            budget_period: Default::default(),
        });
    }
    ledger.append(setup)?;
    let tasks = rows / 4;
    let mut batch = Vec::with_capacity(BATCH_EVENTS + 16);
    for n in 0..tasks {
        batch.extend(tenant_task(&run, &tenant, &worker, n));
        let other = &others[(n % OTHER_TENANTS) as usize];
        batch.extend(super::synthetic_task(&run, other, &worker, n));
        if batch.len() >= BATCH_EVENTS {
            ledger.append(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        ledger.append(batch)?;
    }
    ledger.close()?;

    let store = Store::open(&data, false)?;
    progress("verify (baseline)");
    let start = Instant::now();
    let verified = verify(&store)?.map_err(|b| anyhow::anyhow!("seq {}: {}", b.seq, b.what))?;
    let verify_secs = start.elapsed().as_secs_f64();

    progress("export");
    let start = Instant::now();
    let options = ExportOptions {
        tenant: tenant.clone(),
        from: None,
        to: None,
        checkpoint: None,
    };
    let path = dir.path().join("export.jsonl");
    let built = export(&store, &options)?;
    let mut file = std::fs::File::create(&path)?;
    built.write(Format::Jsonl, &mut file)?;
    let export_secs = start.elapsed().as_secs_f64();
    let exported_rows = built.row_count() as u64;
    drop(built);
    let file_bytes = file.metadata()?.len();
    drop(file);

    progress("verify-export");
    let start = Instant::now();
    let mut input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&path)?);
    let report = verify_export(&mut input, None)?;
    let verify_export_secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.rows == exported_rows,
        "verify-export saw {} rows",
        report.rows
    );

    let per_sec = |n: u64, secs: f64| n as f64 / secs.max(1e-9);
    Ok(ExportBenchReport {
        tenant: tenant.0,
        records: verified.records,
        rows: exported_rows,
        file_bytes,
        export_secs,
        export_rows_per_sec: per_sec(exported_rows, export_secs),
        verify_export_secs,
        verify_export_rows_per_sec: per_sec(exported_rows, verify_export_secs),
        verify_secs,
        verify_records_per_sec: per_sec(verified.records, verify_secs),
    })
}
