//! `runledger bench check`: how fast `replay --check` re-runs a ledger's
//! decisions, beside a plain replay (fold and digests) of the same ledger
//! in the same run — the floor a check cannot go below, since it folds the
//! same records.
//!
//! The ledger is the built-in demo at the given size, run on the simulated
//! executor into a scratch directory without fsync.

use std::time::Instant;

use serde::Serialize;

use crate::audit::check::{CheckOptions, check};
use crate::log::{Durability, Ledger, LedgerOptions, Store};
use crate::runtime::{RunOptions, run_simulated};
use crate::workload::Workload;

#[derive(Clone, Debug, Serialize)]
pub struct CheckBench {
    pub tenants: u32,
    pub runs: u32,
    pub records: u64,
    pub decisions: u64,
    /// Baseline: fold the ledger into the projections and digest them.
    pub replay_secs: f64,
    pub replay_records_per_sec: f64,
    pub check_secs: f64,
    pub check_records_per_sec: f64,
    pub check_decisions_per_sec: f64,
    /// check time / replay time.
    pub check_over_replay: f64,
}

pub fn run_check_bench(
    tenants: u32,
    runs: u32,
    max_concurrency: u32,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<CheckBench> {
    let dir = tempfile::tempdir()?;
    let text = crate::demo::workload_toml(tenants, runs, 42, max_concurrency);
    let workload = Workload::parse("<demo>", &text)?;
    progress(&format!(
        "running the demo ({tenants} tenants × {runs} runs) into a scratch ledger"
    ));
    let ledger = Ledger::open(
        dir.path(),
        LedgerOptions {
            durability: Durability::None,
            ..LedgerOptions::default()
        },
    )?;
    run_simulated(&ledger, &workload, &RunOptions::default(), &mut |_, _| {})?;
    ledger.close()?;
    let store = Store::open(dir.path(), false)?;

    progress("replaying (baseline)");
    let started = Instant::now();
    let folded = crate::log::replay::fold(&store, None)?;
    let digest = folded.state.digests().combined;
    let replay_secs = started.elapsed().as_secs_f64();

    progress("re-checking every decision");
    let started = Instant::now();
    let report = check(&store, CheckOptions::default())?;
    let check_secs = started.elapsed().as_secs_f64();
    if !report.ok() || report.digest != digest.to_hex().as_str() {
        anyhow::bail!("the demo ledger does not re-check: {:?}", report.first);
    }
    let records = folded.records;
    Ok(CheckBench {
        tenants,
        runs,
        records,
        decisions: report.decisions,
        replay_secs,
        replay_records_per_sec: records as f64 / replay_secs,
        check_secs,
        check_records_per_sec: records as f64 / check_secs,
        check_decisions_per_sec: report.decisions as f64 / check_secs,
        check_over_replay: check_secs / replay_secs,
    })
}
