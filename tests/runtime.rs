//! Workload files and the simulated executor: every invalid input is named
//! by file and line before anything is appended; a run is deterministic and
//! its ledger shows retries, timeouts, dead letters, cancellations,
//! priorities, map-reduce fan-out and backpressure.

mod support;

use std::path::Path;

use runledger::domain::queue::TaskStatus;
use runledger::domain::{Event, State};
use runledger::log::{Ledger, LedgerOptions};
use runledger::runtime::{RunOptions, run_simulated};
use runledger::workload::Workload;

use support::bin::{command, runledger};
use support::ledger::{events, open_ledger, open_store};

const HEADER: &str = r#"
seed = 7
[execution.pool]
max_concurrency = 2
backpressure_threshold = 0.5
[execution.queue]
max_attempts = 2
retry_base_ms = 100
[execution.workers]
num_workers = 2
worker_timeout_sec = 1.0

[[tenants]]
id = "acme"
budget_micros = 100000000
"#;

fn parse_err(body: &str) -> String {
    let text = format!("{HEADER}{body}");
    Workload::parse("w.toml", &text)
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn workload_errors_name_file_and_line() {
    let pipeline = "\n[[pipelines]]\nid = \"p\"\nnodes = [ { id = \"a\" } ]\n";
    let cases = [
        (
            "\n[[tenants]]\nid = \"y\"\nbudget_micros = 1\ncolor = 1\n",
            "w.toml:",
            "unknown field `color`",
        ),
        (
            "\n[[tenants]]\nid = \"x\"\nbudget_micros = \"lots\"\n",
            "w.toml:19:",
            "invalid type",
        ),
        (
            "\n[[tenants]]\nid = \"x\"\nbudget_micros = -5\n",
            "w.toml:19:",
            "must not be negative",
        ),
        (
            "\n[[tenants]]\nid = \"acme\"\nbudget_micros = 5\n",
            "w.toml:18:",
            "duplicate tenant `acme`",
        ),
        (
            "\n[[pipelines]]\nid = \"p\"\nnodes = [ { id = \"a\", handler = \"teleport\" } ]\n",
            "w.toml:19:",
            "unknown handler `teleport`",
        ),
        (
            "\n[[pipelines]]\nid = \"p\"\nnodes = [\n  { id = \"a\", deps = [\"b\"] },\n  { id = \"b\", deps = [\"a\"] },\n]\n",
            "w.toml:",
            "dependency cycle",
        ),
        (
            "\n[[pipelines]]\nid = \"p\"\nnodes = [ { id = \"a\", deps = [\"zz\"] } ]\n",
            "w.toml:19:",
            "unknown node `zz`",
        ),
        (
            &format!("{pipeline}\n[[submissions]]\ntenant = \"nobody\"\npipeline = \"p\"\n"),
            "w.toml:22:",
            "unknown tenant `nobody`",
        ),
        (
            &format!("{pipeline}\n[[submissions]]\ntenant = \"acme\"\npipeline = \"q\"\n"),
            "w.toml:23:",
            "unknown pipeline `q`",
        ),
        (
            &format!("{pipeline}{pipeline}"),
            "w.toml:22:",
            "duplicate pipeline `p`",
        ),
        (
            "\n[[tenants]]\nid = \"a/b\"\nbudget_micros = 1\n",
            "w.toml:18:",
            "without '/' or '#'",
        ),
    ];
    for (body, place, what) in cases {
        let err = parse_err(body);
        assert!(
            err.starts_with(place) && err.contains(what),
            "expected `{place}...{what}`, got `{err}` for {body}"
        );
    }
}

fn workload(body: &str) -> Workload {
    Workload::parse("w.toml", &format!("{HEADER}{body}")).unwrap()
}

fn run(dir: &Path, w: &Workload) -> (runledger::runtime::RunReport, State) {
    let ledger = open_ledger(dir);
    let report = run_simulated(&ledger, w, &RunOptions::default(), &mut |_, _| {}).unwrap();
    let (state, _) = ledger.state().unwrap();
    ledger.close().unwrap();
    (report, state)
}

const RAG: &str = r#"
[[pipelines]]
id = "rag"
mode = "serial"
nodes = [
  { id = "retrieve", params = { step = "retrieve" } },
  { id = "generate", params = { step = "generate", model = "small" } },
]

[[submissions]]
tenant = "acme"
pipeline = "rag"
runs = 5
interval_ms = 10
"#;

#[test]
fn run_is_deterministic_and_replay_agrees() {
    let w = workload(RAG);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (report_a, _) = run(a.path(), &w);
    let (report_b, _) = run(b.path(), &w);
    assert_eq!(
        report_a.head, report_b.head,
        "same workload and seed, same ledger"
    );
    assert_eq!(report_a.digest, report_b.digest);
    let store = open_store(a.path());
    let replayed = runledger::log::replay::fold(&store, None).unwrap();
    assert_eq!(
        replayed.state.digests().combined.to_hex().as_str(),
        report_a.digest
    );
    drop(store);
    let other_seed = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(other_seed.path(), LedgerOptions::default()).unwrap();
    let report_c = run_simulated(
        &ledger,
        &w,
        &RunOptions {
            seed: Some(8),
            ..RunOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    ledger.close().unwrap();
    assert_ne!(report_c.head, report_a.head);
}

#[test]
fn serial_pipeline_runs_nodes_in_order_and_every_task_ends() {
    let w = workload(RAG);
    let dir = tempfile::tempdir().unwrap();
    let (report, state) = run(dir.path(), &w);
    assert_eq!(report.tasks, 10);
    assert_eq!(
        report.acked + report.dead_lettered + report.cancelled + report.skipped,
        10
    );
    let generate = state
        .queue
        .get(&"run-7/acme/rag#0/generate".into())
        .unwrap();
    assert_eq!(generate.deps, vec!["run-7/acme/rag#0/retrieve".into()]);
    let c = state.queue.counts();
    assert_eq!((c.waiting, c.pending, c.leased), (0, 0, 0));
    let evs = events(dir.path());
    let first_dequeue = |task: &str| {
        evs.iter()
            .position(|e| matches!(e, Event::TaskDequeued { task: t, .. } if t.as_str() == task))
            .unwrap()
    };
    let acked = |task: &str| {
        evs.iter()
            .position(|e| matches!(e, Event::TaskAcked { task: t, .. } if t.as_str() == task))
            .unwrap()
    };
    assert!(acked("run-7/acme/rag#0/retrieve") < first_dequeue("run-7/acme/rag#0/generate"));
    assert!(matches!(evs.last(), Some(Event::RunFinished { .. })));
}

#[test]
fn failing_node_retries_with_backoff_then_dead_letters_and_cancels_dependants() {
    let w = workload(
        r#"
[[pipelines]]
id = "p"
mode = "serial"
nodes = [
  { id = "flaky", params = { step = "tool", failure_rate_bp = 10000 } },
  { id = "after", params = { step = "tool" } },
]
[[submissions]]
tenant = "acme"
pipeline = "p"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let (report, state) = run(dir.path(), &w);
    assert_eq!(
        (report.dead_lettered, report.cancelled, report.retries),
        (1, 1, 2)
    );
    assert_eq!(
        state
            .queue
            .get(&"run-7/acme/p#0/after".into())
            .unwrap()
            .status,
        TaskStatus::Cancelled
    );
    let evs = events(dir.path());
    let nacks: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::TaskNacked { retry_at, .. } => Some(*retry_at),
            _ => None,
        })
        .collect();
    assert_eq!(nacks.len(), 2);
    assert!(nacks[0].is_some(), "the first failure schedules a retry");
    assert!(nacks[1].is_none(), "the last attempt does not");
}

#[test]
fn slow_node_times_out_and_is_nacked_as_timed_out() {
    let w = workload(
        r#"
[[pipelines]]
id = "p"
nodes = [ { id = "slow", params = { step = "tool", latency_ms = 5000, failure_rate_bp = 0 } } ]
[[submissions]]
tenant = "acme"
pipeline = "p"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let (report, _) = run(dir.path(), &w);
    assert_eq!((report.timeouts, report.dead_lettered), (2, 1));
    assert!(events(dir.path()).iter().any(|e| matches!(e, Event::TaskNacked { timed_out: true, error, .. } if error.contains("timed out"))));
}

#[test]
fn map_reduce_fans_out_and_reduce_gets_every_map_output() {
    let w = workload(
        r#"
[[pipelines]]
id = "mr"
mode = "map_reduce"
fan_out = 3
nodes = [
  { id = "map", stage = "map", params = { step = "retrieve", failure_rate_bp = 0 } },
  { id = "reduce", stage = "reduce", params = { step = "generate", failure_rate_bp = 0 } },
]
[[submissions]]
tenant = "acme"
pipeline = "mr"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let (report, state) = run(dir.path(), &w);
    assert_eq!((report.tasks, report.acked), (4, 4));
    let reduce = state.queue.get(&"run-7/acme/mr#0/reduce".into()).unwrap();
    assert_eq!(reduce.deps.len(), 3);
    let inputs = reduce.params.to_value()["inputs"].as_array().unwrap().len();
    assert_eq!(inputs, 3);
    assert!(report.peak_running >= 2, "maps run in parallel");
}

#[test]
fn backpressure_engages_and_releases_as_events() {
    let w = workload(
        r#"
[[pipelines]]
id = "p"
nodes = [ { id = "a", params = { step = "tool", failure_rate_bp = 0 } }, { id = "b", params = { step = "tool", failure_rate_bp = 0 } } ]
[[submissions]]
tenant = "acme"
pipeline = "p"
runs = 6
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let (report, _) = run(dir.path(), &w);
    assert!(report.backpressure_engaged >= 1);
    assert_eq!(report.backpressure_engaged, report.backpressure_released);
    let evs = events(dir.path());
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::BackpressureEngaged {
            running: 2,
            threshold: 1,
            ..
        }
    )));
}

#[test]
fn cli_run_bad_workload_exits_2_with_file_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        format!("{HEADER}\n[[tenants]]\nid = \"x\"\nbudget_micros = -1\n"),
    )
    .unwrap();
    let out = runledger(&dir.path().join("data"), &["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:19:") && stderr.contains("must not be negative"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing may be created for a bad workload"
    );
}

#[test]
fn cli_demo_twice_prints_the_same_digest_as_replay() {
    let dir = tempfile::tempdir().unwrap();
    let demo = |data: &Path| {
        let out = runledger(data, &["demo", "--tenants", "3", "--runs", "2"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let digest = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("digest: "))
            .unwrap()
            .to_owned()
    };
    let head = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("head: "))
            .unwrap()
            .to_owned()
    };
    let a = demo(&dir.path().join("a"));
    let b = demo(&dir.path().join("b"));
    assert_eq!(head(&a), head(&b), "fresh ledgers, same head");
    let replay = runledger(&dir.path().join("a"), &["replay"]);
    assert_eq!(digest(&a), digest(&String::from_utf8_lossy(&replay.stdout)));
    let again = demo(&dir.path().join("a"));
    assert!(
        again.starts_with("run demo-42-2 "),
        "a second demo in the same ledger gets a new run id: {again}"
    );
}

#[test]
fn docs_workload_example_parses_and_runs() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/workloads.md")).unwrap();
    let section = &readme[readme.find("## Workloads").unwrap()..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let text = &section[start..start + section[start..].find("```").unwrap()];
    let w = Workload::parse("docs/workloads.md", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (w.tenants.len(), w.pipelines.len(), w.submissions.len()),
        (1, 2, 1)
    );
    let dir = tempfile::tempdir().unwrap();
    let (report, _) = run(dir.path(), &w);
    assert_eq!(report.run, "nightly");
    assert_eq!(
        report.acked + report.dead_lettered + report.cancelled + report.skipped,
        report.tasks
    );
}

fn assert_run_complete_and_acked_once(dir: &Path) {
    let evs = events(dir);
    let mut acks = std::collections::BTreeMap::<String, u32>::new();
    for e in &evs {
        if let Event::TaskAcked { task, .. } = e {
            *acks.entry(task.0.clone()).or_default() += 1;
        }
    }
    assert!(acks.values().all(|&n| n == 1), "a task was ACKed twice");
    let store = open_store(dir);
    runledger::log::verify::verify(&store).unwrap().unwrap();
    let state = runledger::log::replay::fold(&store, None).unwrap().state;
    let c = state.queue.counts();
    assert_eq!(
        (c.waiting, c.pending, c.leased),
        (0, 0, 0),
        "every task ended"
    );
    assert_eq!(
        c.done + c.dead_lettered + c.cancelled + c.skipped,
        c.total()
    );
    assert!(
        state
            .runs
            .sorted()
            .iter()
            .all(|r| r.status == runledger::domain::activity::RunStatus::Finished)
    );
}

#[test]
fn resume_finishes_a_run_whose_process_stopped_mid_run() {
    let w = workload(RAG);
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    let stopped = run_simulated(
        &ledger,
        &w,
        &RunOptions {
            stop_after_steps: Some(6),
            ..RunOptions::default()
        },
        &mut |_, _| {},
    );
    assert!(matches!(
        stopped,
        Err(runledger::runtime::sim::RunError::Stopped(6))
    ));
    let leased = ledger.queue_counts().unwrap().leased;
    assert!(leased > 0, "the drill stops with attempts in flight");
    let report = runledger::runtime::sim::resume_simulated(&ledger, None, &mut |_, _| {}).unwrap();
    ledger.close().unwrap();
    assert_eq!(report.run, "run-7");
    assert_eq!(report.tasks, 10);
    assert_eq!(
        report.acked + report.dead_lettered + report.cancelled + report.skipped,
        10
    );
    let expired = events(dir.path())
        .iter()
        .filter(|e| matches!(e, Event::LeaseExpired { .. }))
        .count();
    assert_eq!(
        expired as u64, leased,
        "each lease of the dead process is returned"
    );
    assert_run_complete_and_acked_once(dir.path());
}

#[test]
fn cli_resume_after_sigkill_finishes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The demo SIGKILLs itself once 1,000 of its 2,6xx tasks have ended:
    // mid-run on any machine, however loaded.
    let killed = command(&data, &["demo", "--tenants", "8", "--runs", "60"])
        .env("RUNLEDGER_TEST_KILL_AFTER_TASKS", "1000")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        killed.signal(),
        Some(9),
        "the drill kills the demo: {killed}"
    );
    let resume = runledger(&data, &["resume"]);
    let stderr = String::from_utf8_lossy(&resume.stderr);
    // The demo injects failures: the finished run has dead-lettered tasks (exit 3).
    assert_eq!(resume.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("run `demo-42` finished with"), "{stderr}");
    assert!(String::from_utf8_lossy(&resume.stdout).starts_with("run demo-42 "));
    assert_run_complete_and_acked_once(&data);
    // The killed process's decisions and the resumed one's re-check.
    let check = runledger(&data, &["replay", "--check"]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_run_never_executes_another_runs_tasks() {
    let w = workload(RAG);
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    let options = RunOptions {
        run_id: Some("A".into()),
        stop_after_steps: Some(1),
        ..RunOptions::default()
    };
    assert!(run_simulated(&ledger, &w, &options, &mut |_, _| {}).is_err());
    let b = run_simulated(
        &ledger,
        &w,
        &RunOptions {
            run_id: Some("B".into()),
            ..RunOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(b.tasks, b.acked + b.dead_lettered + b.cancelled + b.skipped);
    let (state, _) = ledger.state().unwrap();
    let a = state.runs.get(&"A".into()).unwrap();
    assert_eq!(a.tasks_acked, 0, "run B must not have run A's tasks");
    let resumed =
        runledger::runtime::sim::resume_simulated(&ledger, Some("A"), &mut |_, _| {}).unwrap();
    ledger.close().unwrap();
    assert_eq!(
        resumed.acked + resumed.dead_lettered + resumed.cancelled + resumed.skipped,
        resumed.tasks
    );
}

#[test]
fn nodes_may_be_written_before_their_parents_and_ids_cannot_shadow_map_copies() {
    let w = workload(
        r#"
[[pipelines]]
id = "p"
nodes = [ { id = "late", deps = ["early"], params = { step = "tool", failure_rate_bp = 0 } }, { id = "early", params = { step = "tool", failure_rate_bp = 0 } } ]
[[submissions]]
tenant = "acme"
pipeline = "p"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let (report, _) = run(dir.path(), &w);
    assert_eq!((report.tasks, report.acked), (2, 2));
    let err = parse_err(
        "\n[[pipelines]]\nid = \"m\"\nmode = \"map_reduce\"\nnodes = [ { id = \"s\", stage = \"map\" }, { id = \"s.0\" }, { id = \"r\", stage = \"reduce\" } ]\n",
    );
    assert!(
        err.contains("must be non-empty without '/', '#' or '.'"),
        "{err}"
    );
}

#[test]
fn cli_decisions_lists_admission_denials_and_status_changes_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let demo = runledger(&data, &["demo"]);
    assert!(demo.status.success());
    let rows = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = runledger(&data, &[&["decisions", "--json"], args].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let all = rows(&[]);
    for verdict in ["continue", "degrade", "terminate"] {
        assert!(
            all.iter()
                .any(|r| r["kind"] == "degradation_decided" && r["decision"] == verdict),
            "no {verdict} verdict"
        );
    }
    assert!(
        all.iter().any(|r| r["kind"] == "budget_status_changed"
            && r["reason"].as_str().unwrap().contains("-> "))
    );
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in ledger order");
    let umbrella = rows(&["--tenant", "umbrella"]);
    assert!(!umbrella.is_empty() && umbrella.iter().all(|r| r["tenant"] == "umbrella"));
}

#[test]
fn a_daily_budget_starts_again_each_virtual_day() {
    let text = r#"
seed = 4
start = "2026-03-01T12:00:00Z"
[execution.workers]
num_workers = 1
[[tenants]]
id = "daily"
budget_micros = 1000
budget_period = "daily"
[[pipelines]]
id = "p"
nodes = [ { id = "a", cost_ceiling_micros = 900, params = { step = "tool", failure_rate_bp = 0 } } ]
[[submissions]]
tenant = "daily"
pipeline = "p"
runs = 3
interval_ms = 86400000
"#;
    let w = Workload::parse("d.toml", text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (report, state) = run(dir.path(), &w);
    // 900 reserved of 1000 a day: one run a day fits, three days, three runs.
    assert_eq!((report.tasks, report.acked), (3, 3));
    let resets = events(dir.path())
        .iter()
        .filter(|e| matches!(e, Event::BudgetPeriodReset { .. }))
        .count();
    assert_eq!(resets, 2);
    assert_eq!(
        state.tenants.get(&"daily".into()).unwrap().spent_micros().0,
        300,
        "only today's spend"
    );
}
