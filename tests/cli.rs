//! The `runledger` binary as users drive it: exit codes, messages that say
//! what and where, JSON shapes, and the `log --json` → `ingest` round trip.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::bin::{BIN, runledger, runledger_bare, runledger_stdin, stderr, stdout};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/replay/sample/ledger.jsonl");

fn digest_line(o: &Output) -> String {
    stdout(o)
        .lines()
        .find(|l| l.starts_with("digest: "))
        .expect("a digest line")
        .to_owned()
}

fn sample_ledger() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = runledger(dir.path(), &["ingest", SAMPLE]);
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

#[test]
fn ingest_then_verify_and_replay_print_head_and_digest() {
    let dir = sample_ledger();
    let verify = runledger(dir.path(), &["verify"]);
    assert_eq!(verify.status.code(), Some(0));
    let text = stdout(&verify);
    assert!(text.starts_with("ok: 56 records, head "), "{text}");
    let head = text.trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(head.len(), 64);
    let replay = runledger(dir.path(), &["replay"]);
    assert_eq!(replay.status.code(), Some(0));
    let line = digest_line(&replay);
    assert_eq!(line.len(), "digest: ".len() + 64);
    assert!(stdout(&replay).contains(&head));
}

#[test]
fn log_json_round_trips_through_ingest_with_identical_digests() {
    let dir = sample_ledger();
    let log = runledger(dir.path(), &["log", "--json"]);
    assert!(log.status.success());
    let copy = tempfile::tempdir().unwrap();
    let ingest = runledger_stdin(copy.path(), &["ingest", "-"], &log.stdout);
    assert!(ingest.status.success(), "{}", stderr(&ingest));
    assert_eq!(
        digest_line(&runledger(dir.path(), &["replay"])),
        digest_line(&runledger(copy.path(), &["replay"]))
    );
    assert_eq!(
        stdout(&runledger(dir.path(), &["verify"])),
        stdout(&runledger(copy.path(), &["verify"]))
    );
    let a = runledger(dir.path(), &["--json", "replay"]);
    let b = runledger(copy.path(), &["--json", "replay"]);
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn ingest_bad_line_exits_2_names_the_line_and_appends_nothing() {
    let dir = sample_ledger();
    let before = stdout(&runledger(dir.path(), &["verify"]));
    let cases: [(&str, &str); 5] = [
        (
            "{\"type\":\"run_started\",\"run\":\"r9\",\"seed\":1}\n{oops\n",
            "line 2: invalid JSON",
        ),
        (
            "{\"type\":\"run_started\",\"run\":\"r9\",\"seed\":1}\n\n{\"type\":\"run_paused\",\"run\":\"r9\"}\n",
            "line 3: unknown variant `run_paused`",
        ),
        (
            "{\"type\":\"run_started\",\"run\":\"r9\",\"seed\":1}\n{\"type\":\"task_acked\",\"task\":\"acme/q1/retrieve\",\"worker\":\"w1\"}\n",
            "line 2: cannot ack task `acme/q1/retrieve`: it is done",
        ),
        (
            "{\"type\":\"cost_incurred\",\"tenant\":\"nobody\",\"category\":\"llm\",\"amount_micros\":5}\n",
            "line 1: tenant `nobody` is not registered",
        ),
        (
            "{\"type\":\"cost_incurred\",\"tenant\":\"acme\",\"category\":\"llm\",\"amount_micros\":1.5}\n",
            "line 1: invalid type",
        ),
    ];
    for (input, expected) in cases {
        let out = runledger_stdin(dir.path(), &["ingest", "-"], input.as_bytes());
        assert_eq!(out.status.code(), Some(2), "{input}");
        assert!(
            stderr(&out).contains(expected),
            "expected `{expected}` in: {}",
            stderr(&out)
        );
        assert_eq!(
            stdout(&runledger(dir.path(), &["verify"])),
            before,
            "nothing may be appended"
        );
    }
}

#[test]
fn ingest_missing_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = runledger(dir.path(), &["ingest", "/nonexistent/events.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot open /nonexistent/events.jsonl"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn read_commands_on_missing_or_foreign_data_exit_2() {
    let missing = tempfile::tempdir().unwrap();
    let path = missing.path().join("nothing-here");
    for cmd in ["verify", "replay", "tenants", "queue", "runs", "log"] {
        let out = runledger(&path, &[cmd]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(
            stderr(&out).contains("no ledger at"),
            "{cmd}: {}",
            stderr(&out)
        );
    }
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("db"), vec![0xAB; 70_000]).unwrap();
    let out = runledger(foreign.path(), &["verify"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a runledger ledger"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn tenants_json_uses_snake_case_status_and_tenant_field() {
    let dir = sample_ledger();
    let out = runledger(dir.path(), &["tenants", "--json"]);
    assert!(out.status.success());
    let tenants: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let acme = tenants
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "acme")
        .unwrap();
    assert_eq!(acme["status"], "exceeded");
    assert_eq!(acme["spent_micros"], 9_176_000);
    assert_eq!(acme["spent_by_category"]["llm"], 9_100_000);
    assert_eq!(acme["learning_intensity"], "balanced");
    let globex = tenants
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "globex")
        .unwrap();
    assert_eq!(globex["status"], "healthy");
}

#[test]
fn log_filters_by_tenant_run_seq_and_limit() {
    let dir = sample_ledger();
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = runledger(dir.path(), args);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let initech = lines(&["log", "--json", "--tenant", "initech"]);
    assert!(!initech.is_empty());
    for record in &initech {
        let text = record["event"].to_string();
        assert!(text.contains("initech"), "{text}");
    }
    let second_run = lines(&["log", "--json", "--run", "rag-2026-11-02"]);
    let seqs: Vec<u64> = second_run
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [54, 55, 56]);
    let window = lines(&["log", "--json", "--from", "10", "--limit", "3"]);
    let seqs: Vec<u64> = window.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [10, 11, 12]);
    assert_eq!(window[0]["prev_hash"].as_str().unwrap().len(), 64);
}

#[test]
fn replay_of_one_run_differs_from_whole_ledger_and_unknown_run_exits_2() {
    let dir = sample_ledger();
    let all = digest_line(&runledger(dir.path(), &["replay"]));
    let one = runledger(dir.path(), &["replay", "--run", "rag-2026-11-02"]);
    assert!(one.status.success());
    assert_ne!(digest_line(&one), all);
    let unknown = runledger(dir.path(), &["replay", "--run", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn bench_ledger_json_last_line_has_the_contract_fields() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "bench",
            "ledger",
            "--events",
            "4000",
            "--appenders",
            "4",
            "--batch",
            "50",
            "--durability",
            "batch",
            "--json",
        ])
        .env("TMPDIR", dir.path())
        .env_remove("RUNLEDGER_DATA")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let last = stdout(&out).lines().last().unwrap().to_owned();
    let report: serde_json::Value = serde_json::from_str(&last).unwrap();
    for field in [
        "append_events_per_sec",
        "append_latency_us_p99",
        "bytes_per_event",
        "replay_events_per_sec",
        "verify_events_per_sec",
        "raw_sled_events_per_sec",
        "single_appender_events_per_sec",
    ] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {last}"
        );
    }
    assert_eq!(report["events"], 4000);
}

#[test]
fn bench_export_json_last_line_has_rates_beside_the_verify_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["bench", "export", "--events", "400", "--json"])
        .env("TMPDIR", dir.path())
        .env_remove("RUNLEDGER_DATA")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let last = stdout(&out).lines().last().unwrap().to_owned();
    let report: serde_json::Value = serde_json::from_str(&last).unwrap();
    for field in [
        "export_rows_per_sec",
        "verify_export_rows_per_sec",
        "verify_records_per_sec",
    ] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {last}"
        );
    }
    // 100 tasks of four rows, plus the registration; 2.5 records a row.
    assert_eq!(report["rows"], 401);
    assert_eq!(report["records"], 1_006);
}

#[test]
fn bench_governance_json_last_line_has_latencies_and_every_verdict() {
    let out = Command::new(BIN)
        .args(["bench", "governance", "--tenants", "2000", "--json"])
        .env_remove("RUNLEDGER_DATA")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("admission check"), "{text}");
    assert!(text.contains("p99 < 1000 ns: m"), "{text}");
    assert!(text.contains("period resets, none due"), "{text}");
    let last = text.lines().last().unwrap().to_owned();
    let report: serde_json::Value = serde_json::from_str(&last).unwrap();
    for field in [
        "admission_check_ns_p50",
        "admission_check_ns_p99",
        "admission_check_ns_mean",
        "baseline_lookup_ns_p50",
        "decision_ns_p50",
        "decision_ns_p99",
        "decision_ns_mean",
        "period_resets_ns_p50",
        "period_resets_ns_mean",
    ] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {last}"
        );
    }
    assert_eq!(report["tenants"], 2000);
    assert_eq!(report["tasks"], 8000);
    let count = |kind: &str| report[format!("decisions_{kind}")].as_u64().unwrap_or(0);
    for kind in ["continue", "degrade", "terminate"] {
        assert!(count(kind) > 0, "no {kind} decision in {last}");
    }
    assert_eq!(
        count("continue") + count("degrade") + count("terminate"),
        report["decision_calls"].as_u64().unwrap()
    );
    assert!(
        report["bytes_per_tenant"].is_number() || report["bytes_per_tenant"].is_null(),
        "{last}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        runledger(dir.path(), &["frobnicate"]).status.code(),
        Some(2)
    );
    assert_eq!(
        runledger(
            dir.path(),
            &["bench", "ledger", "--durability", "sometimes"]
        )
        .status
        .code(),
        Some(2)
    );
    for workers in ["0", "1,x", ""] {
        assert_eq!(
            runledger_bare(&["bench", "distributed", "--workers", workers])
                .status
                .code(),
            Some(2),
            "--workers {workers}"
        );
    }
    for tenants in ["0", "many", "5000001"] {
        assert_eq!(
            runledger_bare(&["bench", "governance", "--tenants", tenants])
                .status
                .code(),
            Some(2),
            "--tenants {tenants}"
        );
    }
}

#[test]
fn bench_distributed_reports_every_worker_count_beside_its_baselines() {
    // The bench starts its own redis-server; skip when there is none.
    if !support::redis::usable() {
        return;
    }
    let out = runledger_bare(&[
        "bench",
        "distributed",
        "--tasks",
        "200",
        "--workers",
        "1,2",
        "--concurrency",
        "8",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("÷ memory"), "{text}");
    let last = text.lines().last().unwrap();
    let report: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(report["tasks"], 200);
    assert_eq!(report["concurrency"], 8);
    for field in [
        "raw_xadd_per_sec",
        "raw_cycle_per_sec",
        "transport_cycle_per_sec",
        "memory_tasks_per_sec",
        "memory_always_tasks_per_sec",
        "coordinator_us_per_task",
    ] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field}: {last}");
    }
    // Every single-task run's dispatch is measured; latencies are ordered.
    assert_eq!(report["dispatch_samples"], 200, "{last}");
    let (p50, p99) = (
        report["dispatch_p50_us"].as_u64(),
        report["dispatch_p99_us"].as_u64(),
    );
    assert!(p50.unwrap() <= p99.unwrap(), "{last}");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{last}");
    for (run, k) in runs.iter().zip([1, 2]) {
        assert_eq!(run["workers"], k);
        for field in [
            "tasks_per_sec",
            "elapsed_sec",
            "ratio_to_raw",
            "ratio_to_memory",
            "coordinator_cores",
            "coordinator_us_per_task",
        ] {
            assert!(run[field].as_f64().unwrap() > 0.0, "{field}: {last}");
        }
    }
}

const FAILING: &str = r#"
seed = 1
start = "2026-03-01T09:00:00Z"
run = "failing"

[execution.queue]
max_attempts = 2
retry_base_ms = 10

[[pipelines]]
id = "p"
mode = "serial"
nodes = [
  { id = "fetch", params = { step = "retrieve", failure_rate_bp = 10000 } },
  { id = "answer", params = { step = "generate", model = "small" } },
]

[[tenants]]
id = "t"
budget_micros = 100000000

[[submissions]]
tenant = "t"
pipeline = "p"
runs = 3
"#;

#[test]
fn cli_run_with_dead_lettered_tasks_exits_3_and_names_the_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("failing.toml");
    std::fs::write(&workload, FAILING).unwrap();
    let data = dir.path().join("data");
    let out = runledger(&data, &["run", workload.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run `failing` finished with 3 of 6 tasks dead-lettered"),
        "{}",
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("3 dead-lettered, 3 cancelled"), "{text}");
    assert!(
        text.contains("dead-lettered tasks by last error:\n         3  simulated retrieve failure"),
        "{text}"
    );
    // JSON carries the same reasons; the ledger itself is sound.
    let out = runledger(&data, &["--json", "run", workload.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        json["failures"],
        serde_json::json!([{ "reason": "simulated retrieve failure", "tasks": 3 }])
    );
    assert!(runledger(&data, &["verify"]).status.success());
    // A run whose tasks all succeed exits 0.
    let ok = FAILING.replace("failure_rate_bp = 10000", "failure_rate_bp = 0");
    std::fs::write(&workload, ok).unwrap();
    let out = runledger(&data, &["run", workload.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn cli_every_flag_and_argument_has_a_help_line() {
    use clap::CommandFactory;
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") || arg.is_hide_set() {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_about().is_none() && sub.get_name() != "help" {
                missing.push(format!("{path} {} (no about)", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&runledger::cli::Cli::command(), "runledger", &mut missing);
    assert!(missing.is_empty(), "no help line: {missing:#?}");
}

#[test]
fn cli_an_unknown_run_or_tenant_filter_exits_2_on_every_command() {
    let dir = sample_ledger();
    let cases: &[&[&str]] = &[
        &["log", "--run", "no-such-run"],
        &["log", "--tenant", "no-such-tenant"],
        &["decisions", "--run", "no-such-run"],
        &["decisions", "--tenant", "no-such-tenant"],
        &["replay", "--run", "no-such-run"],
        &["replay", "--check", "--run", "no-such-run"],
        &["export", "--tenant", "no-such-tenant"],
        &["artifacts", "--run", "no-such-run", "--out"],
    ];
    for args in cases {
        let mut args = args.to_vec();
        let out_dir = dir.path().join("artifacts-out");
        if args.last() == Some(&"--out") {
            args.push(out_dir.to_str().unwrap());
        }
        let out = runledger(dir.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is not in the ledger"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
    // Known filters still work.
    let tenant = runledger(dir.path(), &["--json", "tenants"]);
    let tenants: serde_json::Value = serde_json::from_str(stdout(&tenant).trim()).unwrap();
    let first = tenants[0]["tenant"].as_str().unwrap().to_owned();
    let out = runledger(dir.path(), &["log", "--tenant", &first]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).is_empty());
}

#[test]
fn cli_redis_flags_are_spelled_alike_everywhere_and_old_spellings_still_parse() {
    use clap::Parser;
    use runledger::cli::Cli;
    for command in [
        vec!["run", "w.toml"],
        vec!["resume"],
        vec!["demo"],
        vec!["worker"],
        vec!["bench", "redis"],
    ] {
        let mut args = vec!["runledger"];
        args.extend(&command);
        args.extend(["--redis-url", "redis://127.0.0.1:1"]);
        if command[0] != "bench" {
            args.extend(["--redis-prefix", "p"]);
        }
        assert!(Cli::try_parse_from(&args).is_ok(), "{args:?}");
    }
    // The old spellings of `worker` and `bench redis` parse, hidden from help.
    assert!(
        Cli::try_parse_from([
            "runledger",
            "worker",
            "--redis",
            "redis://h",
            "--prefix",
            "p"
        ])
        .is_ok()
    );
    assert!(Cli::try_parse_from(["runledger", "bench", "redis", "--url", "redis://h"]).is_ok());
    let help = runledger(Path::new("."), &["worker", "--help"]);
    let help = stdout(&help);
    assert!(
        help.contains("--redis-url") && help.contains("--redis-prefix"),
        "{help}"
    );
    assert!(
        !help.contains("--redis <") && !help.contains("--prefix <"),
        "{help}"
    );
}

#[test]
fn cli_data_and_json_are_offered_only_by_commands_that_use_them() {
    // `verify` honours both, before or after the command.
    let dir = sample_ledger();
    let after = runledger_bare(&["verify", "--json", "--data", dir.path().to_str().unwrap()]);
    assert!(after.status.success(), "{}", stderr(&after));
    let before = runledger(dir.path(), &["--json", "verify"]);
    assert_eq!(stdout(&before), stdout(&after));
    // `worker` and `shard` have no ledger, `export` no --json (it has --format).
    for args in [
        &["worker", "--redis-url", "redis://127.0.0.1:1"][..],
        &["shard", "acme", "--of", "2"],
        &["verify-export", "x.jsonl"],
        &["bench", "governance"],
    ] {
        let out = runledger(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("`--data` is not used by"),
            "{args:?}: {}",
            stderr(&out)
        );
        let help = runledger_bare(&[args[0], "--help"]);
        assert!(!stdout(&help).contains("--data"), "{args:?}");
    }
    let out = runledger(dir.path(), &["--json", "export", "--tenant", "x"]);
    assert!(
        stderr(&out).contains("`--json` is not used by `runledger export`"),
        "{}",
        stderr(&out)
    );
    let out = runledger_bare(&["shard", "acme", "--of", "2", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("{"), "{}", stdout(&out));
}
