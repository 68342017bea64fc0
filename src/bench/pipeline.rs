//! `runledger bench pipeline`: one serial pipeline of N nodes, checked and
//! run to its end on the simulated executor (the cost agent deciding
//! before every node), for each N in the same run — so the time per node
//! at 20,000 and at 200,000 nodes can be compared: equal when the work is
//! linear in the pipeline's length.
//!
//! Each size runs in a scratch directory without fsync; nothing is written
//! anywhere else.

use std::time::Instant;

use serde::Serialize;

use crate::log::{Durability, Ledger, LedgerOptions};
use crate::runtime::{RunOptions, run_simulated};
use crate::workload::Workload;

/// The longest pipeline the bench builds.
pub const NODES_MAX: u32 = 2_000_000;

#[derive(Clone, Debug, Serialize)]
pub struct PipelineRow {
    pub nodes: u32,
    /// The generated workload's size.
    pub workload_bytes: usize,
    pub records: u64,
    /// Parsing and checking the workload.
    pub check_secs: f64,
    /// Running it to its end (every node ACKed), appends included.
    pub run_secs: f64,
    /// CPU seconds (user + system, every thread) of the check and of the
    /// run: a steadier measure than the wall clock on a shared machine.
    pub check_cpu_secs: f64,
    pub run_cpu_secs: f64,
    pub nodes_per_sec: f64,
    pub micros_per_node: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineBench {
    pub rows: Vec<PipelineRow>,
    /// Time per node of the longest pipeline over that of the shortest:
    /// 1 for linear work, the length ratio for quadratic.
    pub per_node_growth: f64,
    /// The length ratio of the longest pipeline to the shortest.
    pub length_growth: f64,
}

/// The workload: one tenant, one serial pipeline of `nodes` no-fail `sim`
/// tool steps, one run.
pub fn workload_text(nodes: u32) -> String {
    let mut text = String::from(
        "seed = 1\nrun = \"bench\"\n[[tenants]]\nid = \"t\"\nbudget_micros = 9000000000000000\n\
         [[pipelines]]\nid = \"p\"\nmode = \"serial\"\nnodes = [\n",
    );
    for i in 0..nodes {
        text.push_str(&format!(
            "{{id=\"n{i}\",params={{step=\"tool\",failure_rate_bp=0}}}},\n"
        ));
    }
    text.push_str("]\n[[submissions]]\ntenant = \"t\"\npipeline = \"p\"\n");
    text
}

pub fn run_pipeline_bench(
    sizes: &[u32],
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<PipelineBench> {
    anyhow::ensure!(!sizes.is_empty(), "--nodes needs at least one size");
    let mut rows = Vec::new();
    for &nodes in sizes {
        anyhow::ensure!(
            (1..=NODES_MAX).contains(&nodes),
            "--nodes must be from 1 to {NODES_MAX} (got {nodes})"
        );
        progress(&format!("a serial pipeline of {nodes} nodes"));
        let text = workload_text(nodes);
        let cpu = super::distributed::cpu_secs(None);
        let started = Instant::now();
        let workload = Workload::parse("<bench pipeline>", &text)?;
        let check_secs = started.elapsed().as_secs_f64();
        let check_cpu_secs = super::distributed::cpu_secs(None) - cpu;
        let dir = tempfile::tempdir()?;
        let ledger = Ledger::open(
            dir.path(),
            LedgerOptions {
                durability: Durability::None,
                checkpoint_every: 0,
                create: true,
            },
        )?;
        let cpu = super::distributed::cpu_secs(None);
        let started = Instant::now();
        let report = run_simulated(&ledger, &workload, &RunOptions::default(), &mut |_, _| {})?;
        let run_secs = started.elapsed().as_secs_f64();
        let run_cpu_secs = super::distributed::cpu_secs(None) - cpu;
        ledger.close()?;
        anyhow::ensure!(
            report.acked == u64::from(nodes),
            "only {} of {nodes} nodes ran: the bench measures a pipeline run to its end",
            report.acked
        );
        let secs = check_secs + run_secs;
        rows.push(PipelineRow {
            nodes,
            workload_bytes: text.len(),
            records: report.head_seq,
            check_secs,
            run_secs,
            check_cpu_secs,
            run_cpu_secs,
            nodes_per_sec: f64::from(nodes) / secs.max(1e-9),
            micros_per_node: secs * 1e6 / f64::from(nodes),
        });
    }
    let shortest = rows.iter().min_by_key(|r| r.nodes).cloned();
    let longest = rows.iter().max_by_key(|r| r.nodes).cloned();
    let (per_node_growth, length_growth) = match (shortest, longest) {
        (Some(a), Some(b)) => (
            b.micros_per_node / a.micros_per_node.max(1e-9),
            f64::from(b.nodes) / f64::from(a.nodes),
        ),
        _ => (1.0, 1.0),
    };
    Ok(PipelineBench {
        rows,
        per_node_growth,
        length_growth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bench's workload is one a user could write: it checks, and it
    /// runs every node.
    #[test]
    fn pipeline_bench_runs_every_node() {
        let bench = run_pipeline_bench(&[3, 30], &mut |_| {}).unwrap();
        assert_eq!(bench.rows.len(), 2);
        assert_eq!(bench.rows[1].nodes, 30);
        assert!(bench.rows[1].records > 30 * 3);
        assert_eq!(bench.length_growth, 10.0);
    }
}
