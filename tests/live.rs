//! The real-time executor: pull-based workers running `exec` programs and
//! user handlers under a timeout, with costs from the handlers in the
//! ledger.

mod support;

use std::path::Path;

use runledger::domain::{Category, Event, Micros, Params};
use runledger::runtime::handler::{
    Failure, Handler, HandlerFuture, Handlers, Outcome, TaskContext,
};
use runledger::workload::Workload;

use support::bin::{command, runledger};
use support::ledger::assert_verifies;
use support::live::{run, script};

fn workload(nodes: &str, runs: u32, timeout_sec: f64) -> Workload {
    let text = format!(
        r#"
seed = 5
[execution]
default_cost_ceiling_micros = 10000
[execution.pool]
max_concurrency = 3
backpressure_threshold = 0.5
[execution.queue]
max_attempts = 2
retry_base_ms = 20
[execution.workers]
num_workers = 3
worker_timeout_sec = {timeout_sec}
[[tenants]]
id = "acme"
budget_micros = 100000000
[[pipelines]]
id = "p"
mode = "serial"
nodes = [ {nodes} ]
[[submissions]]
tenant = "acme"
pipeline = "p"
runs = {runs}
"#
    );
    Workload::parse("live.toml", &text).unwrap_or_else(|e| panic!("{e}"))
}

/// Every event of the ledger in `dir`, which verifies.
fn events(dir: &Path) -> Vec<Event> {
    assert_verifies(dir);
    support::ledger::events(dir)
}

#[test]
fn exec_handler_posts_its_costs_and_failures_dead_letter_with_dependants_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let ok = script(
        dir.path(),
        "ok.sh",
        r#"read -r spec; echo "progress" ; echo '{"costs":[{"category":"tool","amount_micros":250},{"category":"llm","amount_micros":1000}],"output":{"seen":1}}'"#,
    );
    let bad = script(
        dir.path(),
        "bad.sh",
        "cat >/dev/null; echo 'no key' >&2; exit 3",
    );
    let nodes = format!(
        r#"{{ id = "a", handler = "exec", params = {{ argv = ["{ok}"] }} }}, {{ id = "b", handler = "exec", params = {{ argv = ["{bad}"] }} }}, {{ id = "c", handler = "exec", params = {{ argv = ["{ok}"] }} }}"#
    );
    let w = workload(&nodes, 2, 5.0);
    let data = dir.path().join("data");
    let report = run(&data, &w, &Handlers::builtin());
    assert_eq!(
        (
            report.tasks,
            report.acked,
            report.dead_lettered,
            report.cancelled
        ),
        (6, 2, 2, 2)
    );
    let evs = events(&data);
    let costs: i64 = evs
        .iter()
        .filter_map(|e| match e {
            Event::CostIncurred {
                category: Category::Tool | Category::Llm,
                amount_micros,
                ..
            } => Some(amount_micros.0),
            _ => None,
        })
        .sum();
    assert_eq!(costs, 2 * 1_250);
    assert!(evs.iter().any(|e| matches!(e, Event::TaskNacked { error, .. } if error.contains("exited with code 3") && error.contains("no key"))));
    assert!(evs.iter().any(
        |e| matches!(e, Event::TaskAcked { output, .. } if output.as_json() == r#"{"seen":1}"#)
    ));
}

#[test]
fn exec_past_the_timeout_is_killed_and_nacked_as_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let slow = script(
        dir.path(),
        "slow.sh",
        &format!("cat >/dev/null; echo $$ >> {}; sleep 30", pids.display()),
    );
    let nodes = format!(r#"{{ id = "slow", handler = "exec", params = {{ argv = ["{slow}"] }} }}"#);
    let w = workload(&nodes, 1, 0.3);
    let data = dir.path().join("data");
    let started = std::time::Instant::now();
    let report = run(&data, &w, &Handlers::builtin());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the run must not wait for the child"
    );
    assert_eq!((report.timeouts, report.dead_lettered), (2, 1));
    std::thread::sleep(std::time::Duration::from_millis(100));
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} was not killed"
        );
    }
}

struct Echo;

impl Handler for Echo {
    fn run<'a>(&'a self, ctx: &'a TaskContext) -> HandlerFuture<'a> {
        Box::pin(async move {
            let n = ctx.params.to_value()["n"].as_i64().unwrap_or(0);
            if n < 0 {
                return Err(Failure {
                    error: "negative".into(),
                    costs: vec![(Category::Other, Micros(1))],
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            Ok(Outcome {
                output: Params::from_value(
                    &serde_json::json!({ "n": n, "inputs": ctx.inputs.len() }),
                ),
                costs: vec![(Category::Rerank, Micros(n * 10))],
            })
        })
    }
}

#[test]
fn user_handlers_run_by_name_with_parent_outputs_and_bounded_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
seed = 1
[execution]
default_cost_ceiling_micros = 1000
[execution.pool]
max_concurrency = 2
[execution.workers]
num_workers = 4
[[tenants]]
id = "acme"
budget_micros = 1000000
[[pipelines]]
id = "p"
mode = "serial"
nodes = [ { id = "one", handler = "sim", params = { step = "store", latency_ms = 5, failure_rate_bp = 0 } } ]
[[submissions]]
tenant = "acme"
pipeline = "p"
runs = 6
"#;
    // A workload may name handlers the library user registers.
    let text = text.replace(
        r#"handler = "sim", params = { step = "store", latency_ms = 5, failure_rate_bp = 0 }"#,
        r#"handler = "echo", params = { n = 7 }"#,
    );
    assert!(
        Workload::parse("u.toml", &text)
            .unwrap_err()
            .to_string()
            .contains("unknown handler `echo`")
    );
    let w = Workload::parse_for("u.toml", &text, &["echo", "exec", "sim"]).unwrap();
    let mut handlers = Handlers::builtin();
    handlers.register("echo", Echo);
    let data = dir.path().join("data");
    let report = run(&data, &w, &handlers);
    assert_eq!((report.tasks, report.acked), (6, 6));
    assert!(
        report.peak_running <= 2,
        "max_concurrency 2, peak {}",
        report.peak_running
    );
    let rerank: i64 = events(&data)
        .iter()
        .filter_map(|e| match e {
            Event::CostIncurred {
                category: Category::Rerank,
                amount_micros,
                ..
            } => Some(amount_micros.0),
            _ => None,
        })
        .sum();
    assert_eq!(rerank, 6 * 70);
}

#[test]
fn cli_resume_finishes_a_real_time_run_killed_mid_way() {
    let dir = tempfile::tempdir().unwrap();
    let step = script(
        dir.path(),
        "step.sh",
        r#"cat >/dev/null; sleep 0.05; echo '{"costs":[{"category":"tool","amount_micros":5}]}'"#,
    );
    let file = dir.path().join("w.toml");
    std::fs::write(
        &file,
        format!(
            r#"
seed = 9
[execution]
default_cost_ceiling_micros = 100
[execution.pool]
max_concurrency = 2
[execution.workers]
num_workers = 2
worker_timeout_sec = 5
[[tenants]]
id = "acme"
budget_micros = 1000000
[[pipelines]]
id = "p"
mode = "serial"
nodes = [ {{ id = "a", handler = "exec", params = {{ argv = ["{step}"] }} }}, {{ id = "b", handler = "exec", params = {{ argv = ["{step}"] }} }} ]
[[submissions]]
tenant = "acme"
pipeline = "p"
runs = 20
"#
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    // The run SIGKILLs itself once 10 of its 40 tasks have ended: mid-run
    // however loaded the machine is.
    let killed = command(&data, &["run"])
        .arg(&file)
        .env("RUNLEDGER_TEST_KILL_AFTER_TASKS", "10")
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        killed.signal(),
        Some(9),
        "the drill kills the run: {killed}"
    );
    let resume = runledger(&data, &["resume"]);
    assert!(
        resume.status.success(),
        "{}",
        String::from_utf8_lossy(&resume.stderr)
    );
    let evs = events(&data);
    let mut acks = std::collections::BTreeMap::<String, u32>::new();
    for e in &evs {
        if let Event::TaskAcked { task, .. } = e {
            *acks.entry(task.0.clone()).or_default() += 1;
        }
    }
    assert_eq!(acks.len(), 40, "every task ACKed");
    assert!(acks.values().all(|&n| n == 1), "none twice");
    assert!(matches!(evs.last(), Some(Event::RunFinished { .. })));
    // The killed process's decisions and the resumed one's re-check.
    let check = runledger(&data, &["replay", "--check"]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

struct Panics;

impl Handler for Panics {
    fn run<'a>(&'a self, _: &'a TaskContext) -> HandlerFuture<'a> {
        Box::pin(async move { panic!("handler bug") })
    }
}

#[test]
fn a_panicking_handler_or_an_impossible_result_fails_the_attempt_instead_of_hanging_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let huge = script(
        dir.path(),
        "huge.sh",
        r#"cat >/dev/null; echo '{"costs":[{"category":"llm","amount_micros":9223372036854775807},{"category":"llm","amount_micros":1}]}'"#,
    );
    let nodes = format!(
        r#"{{ id = "boom", handler = "panics" }}, {{ id = "huge", handler = "exec", params = {{ argv = ["{huge}"] }} }}"#
    );
    let text = format!(
        r#"
seed = 1
[execution]
default_cost_ceiling_micros = 100
[execution.pool]
max_concurrency = 1
backpressure_threshold = 0.5
[execution.queue]
max_attempts = 1
[execution.workers]
num_workers = 1
worker_timeout_sec = 5
[[tenants]]
id = "acme"
budget_micros = 1000
[[pipelines]]
id = "p"
nodes = [ {nodes} ]
[[submissions]]
tenant = "acme"
pipeline = "p"
runs = 2
interval_ms = 200
"#
    );
    let w = Workload::parse_for("p.toml", &text, &["exec", "panics", "sim"]).unwrap();
    let mut handlers = Handlers::builtin();
    handlers.register("panics", Panics);
    let data = dir.path().join("data");
    let report = run(&data, &w, &handlers);
    assert_eq!((report.tasks, report.dead_lettered), (4, 4));
    let evs = events(&data);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::TaskNacked { error, .. } if error.contains("panicked")))
    );
    assert!(evs.iter().any(|e| matches!(e, Event::TaskNacked { error, .. } if error.contains("refused") && error.contains("overflows"))));
}

fn governed(dir: &Path, cost: i64) -> runledger::runtime::RunReport {
    let step = script(
        dir,
        &format!("cost{cost}.sh"),
        &format!(
            r#"cat >/dev/null; echo '{{"costs":[{{"category":"llm","amount_micros":{cost}}}]}}'"#
        ),
    );
    let text = format!(
        r#"
seed = 2
[execution.pool]
max_concurrency = 1
[execution.workers]
num_workers = 1
[[tenants]]
id = "small"
budget_micros = 1000
max_concurrent_runs = 1
[[pipelines]]
id = "p"
nodes = [ {{ id = "a", handler = "exec", cost_ceiling_micros = 300, params = {{ argv = ["{step}"] }} }} ]
[[submissions]]
tenant = "small"
pipeline = "p"
runs = 5
"#
    );
    let w = Workload::parse("g.toml", &text).unwrap();
    run(&dir.join("data"), &w, &Handlers::builtin())
}

#[test]
fn real_time_budget_admits_up_to_the_edge_then_cancels_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let report = governed(dir.path(), 300);
    assert_eq!(
        (report.acked, report.cancelled),
        (3, 2),
        "three reservations of 300 fit a budget of 1000, a fourth does not"
    );
    let evs = events(&dir.path().join("data"));
    let refused = evs
        .iter()
        .filter(|e| matches!(e, Event::TaskCancelled { reason, .. } if reason.contains("cost agent") || reason.contains("not admitted")))
        .count();
    assert_eq!(
        refused, 2,
        "the two that do not fit are refused with a reason"
    );
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::BudgetStatusChanged {
            to: runledger::domain::BudgetStatus::Critical,
            ..
        }
    )));
    let mut state = runledger::domain::State::new();
    for (i, e) in evs.into_iter().enumerate() {
        state.evolve(i as u64 + 1, runledger::domain::Timestamp(0), e);
        let t = state.tenants.get(&"small".into());
        if let Some(t) = t {
            assert!(
                t.spent_micros().0 + t.reserved_micros.0 <= t.budget_micros.0,
                "over budget at seq {}",
                i + 1
            );
        }
    }
}

#[test]
fn real_time_cost_above_the_ceiling_is_an_overrun_that_blocks_the_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let report = governed(dir.path(), 400);
    assert_eq!(
        report.acked, 1,
        "after the overrun nothing more is admitted"
    );
    assert_eq!(
        report.tasks,
        report.acked + report.cancelled,
        "submitted tasks are cancelled, later runs dropped"
    );
    let evs = events(&dir.path().join("data"));
    assert!(evs.iter().any(|e| matches!(e, Event::AdmissionDenied { reason, .. } if reason.contains("blocked"))
        || matches!(e, Event::TaskCancelled { reason, .. } if reason.contains("budget is exceeded"))));
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::BudgetOverrun {
            amount_micros: Micros(100),
            ..
        }
    )));
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::BudgetStatusChanged {
            to: runledger::domain::BudgetStatus::Exceeded,
            ..
        }
    )));
}

#[test]
fn a_resumed_run_resolves_relative_exec_paths_against_the_workload_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("work");
    std::fs::create_dir(&home).unwrap();
    let step = script(
        &home,
        "step.sh",
        r#"cat >/dev/null; echo '{"costs":[{"category":"tool","amount_micros":5}]}'"#,
    );
    let file = home.join("w.toml");
    std::fs::write(
        &file,
        r#"
seed = 9
[execution]
default_cost_ceiling_micros = 1000
[execution.workers]
worker_timeout_sec = 5
[[tenants]]
id = "acme"
budget_micros = 1000000
[[pipelines]]
id = "p"
nodes = [ { id = "a", handler = "exec", params = { argv = ["./step.sh"] } } ]
[[submissions]]
tenant = "acme"
pipeline = "p"
runs = 3
interval_ms = 1500
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    // Killed once its first task has ended, before the later runs arrive.
    let killed = command(&data, &["run"])
        .arg(&file)
        .env("RUNLEDGER_TEST_KILL_AFTER_TASKS", "1")
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        killed.signal(),
        Some(9),
        "the drill kills the run: {killed}"
    );
    // Resumed from another directory, where `./step.sh` is not the step.
    let resume = command(&data, &["resume"])
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        resume.status.success(),
        "{}",
        String::from_utf8_lossy(&resume.stderr)
    );
    let evs = events(&data);
    let argvs: Vec<serde_json::Value> = evs
        .iter()
        .filter_map(|e| match e {
            Event::TaskSubmitted { params, .. } => Some(params.to_value()["argv"].clone()),
            _ => None,
        })
        .collect();
    assert_eq!(argvs.len(), 3);
    let absolute = std::fs::canonicalize(&step).unwrap();
    for argv in &argvs {
        assert_eq!(argv, &serde_json::json!([absolute.display().to_string()]));
    }
    let acked = evs
        .iter()
        .filter(|e| matches!(e, Event::TaskAcked { .. }))
        .count();
    assert_eq!(acked, 3, "every task ran its step");
}
