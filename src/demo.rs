//! The built-in demo workload: a multi-tenant RAG-style mix that shows the
//! engine at work in a few seconds — serial pipelines with an optional
//! rerank, map-reduce research pipelines, retries, timeouts, dead letters
//! and the cancellations they cause, backpressure.

use std::fmt::Write;

/// Name, budget as a share of what the tenant's runs would cost (basis
/// points), learning intensity, concurrent pipeline runs: a generous tenant
/// that is never touched beside tenants that run into WARNING, CRITICAL,
/// degradation and termination.
const TENANTS: [(&str, i64, &str, u32); 8] = [
    ("acme", 30_000, "balanced", 50),
    ("globex", 6_000, "aggressive", 10),
    ("initech", 1_800, "conservative", 10),
    ("umbrella", 800, "balanced", 10),
    ("hooli", 20_000, "aggressive", 10),
    ("stark", 11_000, "conservative", 10),
    ("wayne", 9_200, "balanced", 10),
    ("wonka", 5_000, "balanced", 10),
];

/// About what one pipeline run of the demo costs, in micros.
const COST_PER_RUN_MICROS: i64 = 75_000;

/// The demo workload as TOML (so it goes through the same checks as a
/// user's file). `tenants` above eight get generated names.
pub fn workload_toml(tenants: u32, runs: u32, seed: u64, max_concurrency: u32) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"# runledger demo workload
seed = {seed}
start = "2026-01-01T00:00:00Z"
run = "demo-{seed}"

[execution.pool]
max_concurrency = {max_concurrency}
backpressure_threshold = 0.8

[execution.queue]
type = "memory"
max_attempts = 3
retry_base_ms = 200
retry_max_ms = 5000

[execution.workers]
num_workers = {max_concurrency}
worker_timeout_sec = 1.5

[[pipelines]]
id = "rag"
mode = "serial"
nodes = [
  {{ id = "retrieve", handler = "sim", params = {{ step = "retrieve", depth = 5 }} }},
  {{ id = "rerank", handler = "sim", optional = true, params = {{ step = "rerank", failure_rate_bp = 3000 }} }},
  {{ id = "generate", handler = "sim", params = {{ step = "generate", candidates = 3, learn = {{ model = ["large", "medium", "small"] }} }} }},
  {{ id = "evaluate", handler = "sim", priority = "low", params = {{ step = "evaluate" }} }},
]

[[pipelines]]
id = "research"
mode = "map_reduce"
fan_out = 4
nodes = [
  {{ id = "search", stage = "map", handler = "sim", params = {{ step = "retrieve", depth = 3 }} }},
  {{ id = "browse", stage = "map", handler = "sim", deps = ["search"], params = {{ step = "tool", latency_ms = 1300, failure_rate_bp = 2500 }} }},
  {{ id = "summarize", stage = "reduce", handler = "sim", params = {{ step = "generate", model = "medium" }} }},
]
"#
    );
    for i in 0..tenants {
        let (name, share_bp, intensity, max_runs) = match TENANTS.get(i as usize) {
            Some(&(n, b, l, r)) => (n.to_owned(), b, l, r),
            None => {
                let (_, b, _, r) = TENANTS[i as usize % TENANTS.len()];
                (format!("tenant-{i:03}"), b, "balanced", r)
            }
        };
        let budget = i64::from(runs) * COST_PER_RUN_MICROS * share_bp / 10_000;
        let _ = write!(
            out,
            "\n[[tenants]]\nid = \"{name}\"\nbudget_micros = {budget}\nmax_concurrent_runs = {max_runs}\nlearning_intensity = \"{intensity}\"\n"
        );
        let _ = write!(
            out,
            "\n[[submissions]]\ntenant = \"{name}\"\npipeline = \"rag\"\nruns = {runs}\ninterval_ms = 150\n"
        );
        if i % 2 == 0 {
            let research = runs.div_ceil(3);
            let _ = write!(
                out,
                "\n[[submissions]]\ntenant = \"{name}\"\npipeline = \"research\"\nruns = {research}\npriority = \"batch\"\ninterval_ms = 400\n"
            );
        }
    }
    out
}
