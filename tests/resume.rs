//! `resume` after a kill at any point: a simulated run stopped after K
//! steps (a deterministic kill point — every durable state of a killed run
//! is a step boundary, since the executor appends whole steps) and resumed
//! always finishes with no reservation left open for any tenant, the
//! budget invariant at every seq, a chain that verifies and decisions that
//! re-check (`replay --check`).

mod support;

use proptest::prelude::*;
use runledger::domain::activity::RunStatus;
use runledger::domain::{RunId, State};
use runledger::log::Store;
use runledger::runtime::sim::{RunError, resume_simulated};
use runledger::runtime::{RunOptions, run_simulated};
use runledger::workload::Workload;

use support::ledger::{open_ledger, open_store};

/// Tight budgets, so that the cost agent degrades and terminates; retries,
/// timeouts and a serial pipeline beside a map-reduce one, so that a kill
/// finds attempts in flight of every kind.
fn workload_text(seed: u64, budgets: &[u32], concurrency: u32, failure_bp: u32) -> String {
    let mut text = format!(
        r#"
seed = {seed}
run = "r"
[execution.pool]
max_concurrency = {concurrency}
backpressure_threshold = 0.9
[execution.queue]
max_attempts = 3
retry_base_ms = 10
[execution.workers]
num_workers = {concurrency}
worker_timeout_sec = 0.5
[[pipelines]]
id = "rag"
mode = "serial"
nodes = [
  {{ id = "retrieve", params = {{ step = "retrieve", failure_rate_bp = {failure_bp} }} }},
  {{ id = "rerank", optional = true, params = {{ step = "rerank", failure_rate_bp = {failure_bp} }} }},
  {{ id = "generate", params = {{ step = "generate", candidates = 2, learn = {{ model = ["large", "small"] }}, failure_rate_bp = {failure_bp} }} }},
  {{ id = "slow", params = {{ step = "tool", latency_ms = 400, failure_rate_bp = {failure_bp} }} }},
]
[[pipelines]]
id = "fan"
mode = "map_reduce"
fan_out = 3
nodes = [
  {{ id = "m", stage = "map", params = {{ step = "tool", latency_ms = 300, failure_rate_bp = {failure_bp} }} }},
  {{ id = "r", stage = "reduce", params = {{ step = "generate", model = "large" }} }},
]
"#
    );
    for (i, budget) in budgets.iter().enumerate() {
        text.push_str(&format!(
            "\n[[tenants]]\nid = \"t{i}\"\nbudget_micros = {budget}\nmax_concurrent_runs = {}\n\n[[submissions]]\ntenant = \"t{i}\"\npipeline = \"{}\"\nruns = 3\ninterval_ms = {}\n",
            1 + i % 2,
            if i % 2 == 0 { "rag" } else { "fan" },
            i * 5,
        ));
    }
    text
}

/// `spent + reserved ≤ budget` after every record unless an overrun was
/// recorded; the number of records.
fn budgets_hold_at_every_seq(store: &Store) -> Result<u64, String> {
    let mut state = State::new();
    let mut failure = None;
    store
        .walk(1, |r| {
            let event = runledger::log::codec::decode_event(r.event_bytes).unwrap();
            state.evolve(r.seq, r.recorded_at, event);
            for t in state.tenants.sorted() {
                if t.spent_micros().0 + t.reserved_micros.0 > t.budget_micros.0 && !t.overrun {
                    failure = Some(format!(
                        "seq {}: tenant {} has spent {} + reserved {} > budget {}",
                        r.seq,
                        t.tenant,
                        t.spent_micros(),
                        t.reserved_micros,
                        t.budget_micros
                    ));
                    return std::ops::ControlFlow::Break(());
                }
            }
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
    match failure {
        Some(f) => Err(f),
        None => Ok(state.seq),
    }
}

/// Runs the workload, stops it after `kill_after` steps, resumes it (unless
/// it ended first) and checks the finished run; `Err` says what broke.
fn kill_and_resume(text: &str, kill_after: u64) -> Result<(), String> {
    let workload = Workload::parse("kill.toml", text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    let stopped = run_simulated(
        &ledger,
        &workload,
        &RunOptions {
            stop_after_steps: Some(kill_after),
            ..RunOptions::default()
        },
        &mut |_, _| {},
    );
    let report = match stopped {
        // The run ended before the kill point: nothing to resume.
        Ok(report) => report,
        Err(RunError::Stopped(_)) => resume_simulated(&ledger, None, &mut |_, _| {})
            .map_err(|e| format!("resume after {kill_after} steps failed: {e}"))?,
        Err(e) => return Err(format!("the run failed before the kill: {e}")),
    };
    let (state, _) = ledger.state().unwrap();
    ledger.close().unwrap();
    if report.tasks != report.acked + report.dead_lettered + report.cancelled + report.skipped {
        return Err(format!("not every task ended: {report:?}"));
    }
    let run = state.runs.get(&RunId("r".to_owned())).unwrap();
    if run.status != RunStatus::Finished {
        return Err("the run is not finished".to_owned());
    }
    for t in state.tenants.sorted() {
        if t.reserved_micros.0 != 0 {
            return Err(format!(
                "tenant {} holds {} reserved after the run finished",
                t.tenant, t.reserved_micros
            ));
        }
    }
    for (id, t) in state.queue.sorted() {
        if t.reserved_micros.0 != 0 {
            return Err(format!(
                "task {id} ({}) holds {}",
                t.status, t.reserved_micros
            ));
        }
    }
    let store = open_store(dir.path());
    match runledger::log::verify::verify(&store) {
        Ok(Ok(_)) => {}
        other => return Err(format!("verify: {other:?}")),
    }
    budgets_hold_at_every_seq(&store)?;
    let check = runledger::audit::check::check(&store, Default::default()).unwrap();
    if !check.ok() {
        return Err(format!("replay --check diverges: {:?}", check.first));
    }
    Ok(())
}

proptest! {
    // `PROPTEST_CASES=N` for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_run_killed_at_any_step_resumes_to_a_finished_run_with_nothing_reserved(
        seed in any::<u64>(),
        budgets in prop::collection::vec(2_000u32..40_000, 2..5),
        concurrency in prop::sample::select(vec![1u32, 3, 8]),
        failure_bp in 0u32..3_000,
        kill_after in 1u64..80,
    ) {
        let text = workload_text(seed, &budgets, concurrency, failure_bp);
        let verdict = kill_and_resume(&text, kill_after);
        prop_assert!(verdict.is_ok(), "seed {} kill after {}: {}", seed, kill_after, verdict.unwrap_err());
    }
}

/// How many of the drill's kills leave an attempt whose reservation the
/// resumed run must return: the property above is only as good as this.
#[test]
fn kills_mid_run_leave_leased_attempts_with_reservations() {
    let text = workload_text(5, &[9_000, 30_000, 4_000], 3, 1_500);
    let workload = Workload::parse("kill.toml", &text).unwrap();
    let mut with_reservations = 0;
    for kill_after in 1..40 {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open_ledger(dir.path());
        let stopped = run_simulated(
            &ledger,
            &workload,
            &RunOptions {
                stop_after_steps: Some(kill_after),
                ..RunOptions::default()
            },
            &mut |_, _| {},
        );
        assert!(matches!(stopped, Err(RunError::Stopped(_))), "{kill_after}");
        let (state, _) = ledger.state().unwrap();
        let held = state.queue.sorted().iter().any(|(_, t)| {
            t.status == runledger::domain::queue::TaskStatus::Leased && t.reserved_micros.0 > 0
        });
        with_reservations += u32::from(held);
        ledger.close().unwrap();
    }
    assert!(with_reservations >= 20, "{with_reservations} of 39 kills");
}

/// The leak, pinned: a lease the resume expires on a task the cost agent
/// then terminates (budgets so tight that it does, early kills).
#[test]
fn a_terminated_task_returns_the_reservation_of_its_lost_attempt() {
    for kill_after in 1..30 {
        for seed in 0..6 {
            let text = workload_text(seed, &[3_000, 2_500], 3, 0);
            if let Err(e) = kill_and_resume(&text, kill_after) {
                panic!("seed {seed} kill after {kill_after}: {e}");
            }
        }
    }
}

/// Without a kill: a skipped optional node makes its dependant ready while
/// nothing else runs; the executor ran it (it once finished the run with
/// the dependant pending, or refused the tenant's waiting pipeline runs as
/// never admissible).
#[test]
fn a_skip_that_readies_a_node_while_nothing_runs_does_not_end_the_run() {
    for seed in 0..24u64 {
        let budgets = [
            (seed % 7 * 1_000 + 2_000) as u32,
            (seed % 5 * 3_000 + 2_000) as u32,
            9_000,
        ];
        let text = workload_text(
            seed,
            &budgets,
            1 + (seed % 3) as u32 * 3,
            (seed % 4) as u32 * 700,
        );
        if let Err(e) = kill_and_resume(&text, u64::MAX) {
            panic!("seed {seed}: {e}");
        }
    }
}
