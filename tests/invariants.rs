//! Property test of the budget controller under the simulated executor:
//! random workloads (many tenants, tight budgets, random costs, failures
//! and timeouts, high concurrency) never take a tenant's `spent + reserved`
//! past its budget at any seq unless a `budget_overrun` was recorded, no
//! event moves the numbers of a tenant it does not belong to, every
//! recorded decision re-checks (`replay --check`), and a window of events
//! undone from a mark (the writer's undo of a rejected command) leaves the
//! state exactly as it was at the mark.

mod support;

use proptest::prelude::*;
use runledger::domain::journal::Undo;
use runledger::domain::{Event, State, TenantId, Timestamp};
use runledger::log::Store;
use runledger::runtime::{RunOptions, run_simulated};
use runledger::workload::Workload;

use support::ledger::{open_ledger, open_store};

fn workload_text(
    seed: u64,
    budgets: &[u32],
    runs: u32,
    concurrency: u32,
    ceilings: bool,
    failure_bp: u32,
) -> String {
    let ceiling = if ceilings {
        ", cost_ceiling_micros = 20000"
    } else {
        ""
    };
    let mut text = format!(
        r#"
seed = {seed}
[execution.pool]
max_concurrency = {concurrency}
backpressure_threshold = 0.9
[execution.queue]
max_attempts = 2
retry_base_ms = 10
[execution.workers]
num_workers = {concurrency}
worker_timeout_sec = 1.0
[[pipelines]]
id = "rag"
mode = "serial"
nodes = [
  {{ id = "retrieve", params = {{ step = "retrieve", failure_rate_bp = {failure_bp} }} }},
  {{ id = "generate", params = {{ step = "generate", candidates = 2, learn = {{ model = ["large", "medium", "small"] }}, failure_rate_bp = {failure_bp} }}{ceiling} }},
]
[[pipelines]]
id = "fan"
mode = "map_reduce"
fan_out = 3
nodes = [
  {{ id = "m", stage = "map", params = {{ step = "tool", latency_ms = 900, failure_rate_bp = {failure_bp} }} }},
  {{ id = "r", stage = "reduce", params = {{ step = "generate", model = "small" }} }},
]
"#
    );
    for (i, budget) in budgets.iter().enumerate() {
        text.push_str(&format!(
            "\n[[tenants]]\nid = \"t{i}\"\nbudget_micros = {budget}\nmax_concurrent_runs = {}\nlearning_intensity = \"{}\"\nmeta_learning = {}\n\n[[submissions]]\ntenant = \"t{i}\"\npipeline = \"{}\"\nruns = {runs}\ninterval_ms = {}\n",
            1 + i % 3,
            ["conservative", "balanced", "aggressive"][i % 3],
            i % 2 == 0,
            if i % 2 == 0 { "rag" } else { "fan" },
            i * 7,
        ));
    }
    text
}

/// Folds the ledger and checks the two invariants after every record.
/// `replay --check`: every decision of the run, re-decided on the state
/// before it, comes out as recorded.
fn recheck(dir: &std::path::Path) -> runledger::audit::check::CheckReport {
    let store = open_store(dir);
    runledger::audit::check::check(&store, Default::default()).unwrap()
}

/// The writer's undo of a rejected command: from `state`, a window of the
/// next events applied after a mark and undone leaves the state exactly as
/// it was at the mark (projections, indices and memories), wherever the
/// mark falls.
fn check_undo(state: &State, next: &[(u64, Timestamp, Event)], kept: usize) -> Result<(), String> {
    let mut trial = state.clone();
    trial.record(true);
    let (before, after) = next.split_at(kept.min(next.len()));
    for (seq, at, event) in before.iter().cloned() {
        trial.evolve(seq, at, event);
    }
    trial.mark();
    let marked = trial.clone();
    for (seq, at, event) in after.iter().cloned() {
        trial.evolve(seq, at, event);
    }
    trial.undo();
    // What the cost agent projects, recomputed after the undo forgot it.
    let projected = |s: &State| -> Vec<(i64, i64)> {
        let tasks = s.queue.sorted().into_iter().take(24);
        tasks.map(|(id, _)| s.queue.remaining(id)).collect()
    };
    if projected(&trial) != projected(&marked) {
        return Err("undo left another projection of the remaining DAG".to_owned());
    }
    if trial != marked {
        let seq = after.first().map_or(0, |e| e.0);
        return Err(format!(
            "undoing {} events from seq {seq} left another state",
            after.len()
        ));
    }
    Ok(())
}

fn check_every_seq(dir: &std::path::Path) -> Result<u64, String> {
    let store = Store::open(dir, false).map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    store
        .walk(1, |r| {
            events.push((
                r.seq,
                r.recorded_at,
                runledger::log::codec::decode_event(r.event_bytes).unwrap(),
            ));
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
    let mut state = State::new();
    // Some 16 undo windows per ledger, each from a clone of the state.
    let undo_every = (events.len() as u64 / 16).max(7);
    for (seq, at, event) in events.iter().cloned() {
        if seq % undo_every == 0 {
            let window = &events[seq as usize - 1..events.len().min(seq as usize + 11)];
            check_undo(&state, window, (seq % 3) as usize)?;
        }
        let (_, owner) = state.scope(&event);
        let owner: Option<TenantId> = owner.cloned().or_else(|| match &event {
            Event::TaskSubmitted { tenant, .. } => Some(tenant.clone()),
            _ => None,
        });
        let before: Vec<_> = state.tenants.sorted().into_iter().cloned().collect();
        let learning_before: Vec<_> = state.learning.sorted().into_iter().cloned().collect();
        state.evolve(seq, at, event.clone());
        if seq % 61 == 0 || seq == events.len() as u64 {
            // Lease expiry reads the leased index, not every task.
            let scanned: Vec<_> = (state.queue.sorted().into_iter())
                .filter(|(_, t)| t.status == runledger::domain::queue::TaskStatus::Leased)
                .map(|(id, _)| id.clone())
                .collect();
            let indexed: Vec<_> = state.queue.leased().map(|(id, _)| id.clone()).collect();
            if scanned != indexed {
                return Err(format!(
                    "seq {seq}: leased {scanned:?}, indexed {indexed:?}"
                ));
            }
        }
        for t in state.tenants.sorted() {
            let committed = t.spent_micros().0 + t.reserved_micros.0;
            if committed > t.budget_micros.0 && !t.overrun {
                return Err(format!(
                    "seq {seq}: tenant {} has spent {} + reserved {} > budget {}",
                    t.tenant,
                    t.spent_micros(),
                    t.reserved_micros,
                    t.budget_micros
                ));
            }
            if Some(&t.tenant) != owner.as_ref() {
                let profile = state.learning.get(&t.tenant);
                if let Some(old) = learning_before.iter().find(|b| b.tenant == t.tenant) {
                    if Some(old) != profile {
                        return Err(format!(
                            "seq {seq}: {} moved the learning profile of tenant {}",
                            event.kind(),
                            t.tenant
                        ));
                    }
                }
                if let Some(old) = before.iter().find(|b| b.tenant == t.tenant) {
                    if old != t {
                        return Err(format!(
                            "seq {seq}: {} moved tenant {}",
                            event.kind(),
                            t.tenant
                        ));
                    }
                }
            }
        }
    }
    Ok(events.len() as u64)
}

proptest! {
    // 1,000 workloads in the suite; `PROPTEST_CASES=N` for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn budgets_hold_at_every_seq_and_tenants_stay_isolated(
        seed in any::<u64>(),
        budgets in prop::collection::vec(0u32..60_000, 2..7),
        runs in 1u32..6,
        concurrency in prop::sample::select(vec![1u32, 4, 16, 64, 1000]),
        ceilings in any::<bool>(),
        failure_bp in 0u32..4000,
    ) {
        let text = workload_text(seed, &budgets, runs, concurrency, ceilings, failure_bp);
        let workload = Workload::parse("prop.toml", &text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ledger = open_ledger(dir.path());
        let report = run_simulated(&ledger, &workload, &RunOptions::default(), &mut |_, _| {}).unwrap();
        ledger.close().unwrap();
        prop_assert_eq!(report.tasks, report.acked + report.dead_lettered + report.cancelled + report.skipped, "every task ends (seed {})", seed);
        let checked = check_every_seq(dir.path());
        prop_assert!(checked.is_ok(), "seed {}: {}", seed, checked.unwrap_err());
        let rechecked = recheck(dir.path());
        prop_assert!(rechecked.ok(), "seed {}: replay --check diverges: {:?}", seed, rechecked.first);
    }
}

/// A workload with more than 1,000 tasks in flight at once: wide map-reduce
/// pipelines of many tenants, all arriving together.
fn wide_workload_text(seed: u64, budgets: &[u32], fan_out: u32, failure_bp: u32) -> String {
    let mut text = format!(
        r#"
seed = {seed}
[execution.pool]
max_concurrency = 4000
backpressure_threshold = 1.0
[execution.queue]
max_attempts = 2
retry_base_ms = 10
[execution.workers]
num_workers = 4000
worker_timeout_sec = 1.0
[[pipelines]]
id = "wide"
mode = "map_reduce"
fan_out = {fan_out}
nodes = [
  {{ id = "m", stage = "map", params = {{ step = "generate", candidates = 1, learn = {{ model = ["small", "medium"] }}, failure_rate_bp = {failure_bp} }} }},
  {{ id = "r", stage = "reduce", params = {{ step = "generate", model = "small" }} }},
]
"#
    );
    for (i, &budget) in budgets.iter().enumerate() {
        // Every other tenant can admit all its maps at once (at most
        // 240 × 5,940), so over 1,000 run together; the others run dry.
        let budget = if i % 2 == 0 {
            budget.max(1_450_000)
        } else {
            budget
        };
        text.push_str(&format!(
            "\n[[tenants]]\nid = \"w{i}\"\nbudget_micros = {budget}\nmax_concurrent_runs = 4\nmeta_learning = {}\n\n[[submissions]]\ntenant = \"w{i}\"\npipeline = \"wide\"\nruns = 2\ninterval_ms = 0\n",
            i % 2 == 0,
        ));
    }
    text
}

proptest! {
    // Fewer, larger cases: `PROPTEST_CASES=N` for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse::<u32>().ok()).map_or(6, |n| n.div_ceil(100).max(1)),
        ..ProptestConfig::default()
    })]

    #[test]
    fn budgets_hold_with_over_a_thousand_tasks_in_flight(
        seed in any::<u64>(),
        budgets in prop::collection::vec(50_000u32..4_000_000, 12..16),
        fan_out in 90u32..120,
        failure_bp in 0u32..3000,
    ) {
        let text = wide_workload_text(seed, &budgets, fan_out, failure_bp);
        let workload = Workload::parse("wide.toml", &text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ledger = open_ledger(dir.path());
        let report = run_simulated(&ledger, &workload, &RunOptions::default(), &mut |_, _| {}).unwrap();
        ledger.close().unwrap();
        prop_assert!(report.peak_running >= 1_000, "seed {}: peak {} tasks in flight", seed, report.peak_running);
        prop_assert_eq!(report.tasks, report.acked + report.dead_lettered + report.cancelled + report.skipped, "every task ends (seed {})", seed);
        let checked = check_every_seq(dir.path());
        prop_assert!(checked.is_ok(), "seed {}: {}", seed, checked.unwrap_err());
        let rechecked = recheck(dir.path());
        prop_assert!(rechecked.ok(), "seed {}: replay --check diverges: {:?}", seed, rechecked.first);
    }
}
