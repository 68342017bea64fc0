//! `replay --check`: every decision of a ledger runledger wrote is run
//! again on the state just before it and comes out the same; a changed
//! threshold, an edited decision or a dropped one is reported at its seq,
//! field by field.

mod support;

use std::path::Path;

use runledger::audit::check::{CheckOptions, CheckReport, check, parse_policy};
use runledger::domain::{Decision, Event, Policy};
use runledger::log::store::decode_record;
use runledger::log::{Append, Durability, Ledger, LedgerOptions};
use support::bin::{runledger, stderr, stdout};
use support::ledger::open_store;

/// A ledger holding the built-in demo: degradations, terminations,
/// admission denials, retries, dead letters, learning.
fn demo(dir: &Path) {
    let out = runledger(dir, &["demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn checked(dir: &Path, options: CheckOptions) -> CheckReport {
    let store = open_store(dir);
    check(&store, options).unwrap()
}

/// Every record of the ledger at `from`, in order.
fn records(from: &Path) -> Vec<(runledger::domain::Timestamp, Event)> {
    let store = open_store(from);
    let mut out = Vec::new();
    store
        .read_chain(decode_record, |frames| {
            for r in frames.into_iter().flatten() {
                out.push((r.recorded_at, r.event));
            }
        })
        .unwrap();
    out
}

/// Writes `records` (with their times) as a new ledger at `to`.
fn write(to: &Path, records: Vec<(runledger::domain::Timestamp, Event)>) {
    let ledger = Ledger::open(
        to,
        LedgerOptions {
            durability: Durability::None,
            ..LedgerOptions::default()
        },
    )
    .unwrap();
    let batch: Vec<Append> = records
        .into_iter()
        .map(|(at, event)| Append {
            recorded_at: Some(at),
            event,
        })
        .collect();
    ledger.append(batch).unwrap();
    ledger.close().unwrap();
}

#[test]
fn every_decision_of_a_simulated_run_rechecks() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let report = checked(dir.path(), CheckOptions::default());
    assert!(report.ok(), "{:?}", report.first);
    assert_eq!(report.not_recheckable, 0);
    for kind in [
        "degradation_decided",
        "cost_reserved",
        "admission_denied",
        "reservation_released",
        "task_skipped",
        "task_cancelled",
        "task_nacked",
        "task_dead_lettered",
        "learning_arm_chosen",
        "learning_outcome",
        "learning_profile_adjusted",
        "budget_status_changed",
    ] {
        assert!(
            report.by_kind.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} re-checked: {:?}",
            report.by_kind
        );
    }
    assert_eq!(report.decisions, report.by_kind.values().sum::<u64>());
    // The projections it rebuilt are the replay's.
    let replay = runledger(dir.path(), &["replay", "--json"]);
    let replay: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert_eq!(replay["digest"].as_str(), Some(report.digest.as_str()));
}

#[test]
fn a_changed_threshold_is_caught_at_the_first_decision_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let stricter = Policy {
        degrade_utilisation_bp: 8_000,
        ..Policy::STANDARD
    };
    let report = checked(
        dir.path(),
        CheckOptions {
            policy: stricter,
            ..CheckOptions::default()
        },
    );
    assert_eq!(report.divergences, 1, "stops at the first");
    let first = &report.first[0];
    assert_eq!(first.decision, "degradation_decided");
    let reason = first.fields.iter().find(|f| f.field == "reason").unwrap();
    assert!(
        reason.recomputed.as_str().unwrap().contains("> 8000 bp"),
        "{reason:?}"
    );
    // Far stricter, and going on: the verdict itself flips, CONTINUE
    // recorded, DEGRADE today, with the plan it would have applied.
    let all = checked(
        dir.path(),
        CheckOptions {
            policy: Policy {
                degrade_utilisation_bp: 1_000,
                ..Policy::STANDARD
            },
            keep_going: true,
            ..CheckOptions::default()
        },
    );
    assert!(all.divergences > 1);
    let flipped = all
        .first
        .iter()
        .find(|d| {
            d.fields
                .iter()
                .any(|f| f.field == "decision" && f.recorded == "continue")
        })
        .expect("a flipped verdict");
    let decision = flipped
        .fields
        .iter()
        .find(|f| f.field == "decision")
        .unwrap();
    assert_eq!(decision.recorded, "continue");
    assert_eq!(decision.recomputed, "degrade");
    assert!(flipped.fields.iter().any(|f| f.field == "details.plan"));

    // A budget status threshold moves the status changes.
    let report = checked(
        dir.path(),
        CheckOptions {
            policy: Policy {
                warning_bp: 7_000,
                critical_bp: 8_500,
                ..Policy::STANDARD
            },
            keep_going: true,
            ..CheckOptions::default()
        },
    );
    assert!(
        report
            .first
            .iter()
            .any(|d| d.decision == "budget_status_changed"),
        "{:?}",
        report.first
    );
    // And the exploration thresholds move the learning adjustments.
    let report = checked(
        dir.path(),
        CheckOptions {
            policy: Policy {
                explore_grow_below_bp: 0,
                ..Policy::STANDARD
            },
            keep_going: true,
            ..CheckOptions::default()
        },
    );
    assert!(
        report
            .first
            .iter()
            .any(|d| d.decision == "learning_profile_adjusted"),
        "{:?}",
        report.first
    );
}

/// `replay --check` cannot drift from the executors: it runs their own
/// deciders. A run decided under other thresholds re-checks under those
/// thresholds, decision for decision, and diverges under the standard ones
/// — a checker with deciders of its own would not follow the change.
#[test]
fn the_checker_runs_the_executors_deciders_whatever_their_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), LedgerOptions::default()).unwrap();
    let workload = runledger::workload::Workload::parse(
        "demo.toml",
        &runledger::demo::workload_toml(4, 12, 42, 8),
    )
    .unwrap();
    let what_if = Policy {
        degrade_utilisation_bp: 2_000,
        explore_shrink_above_bp: 3_000,
        ..Policy::STANDARD
    };
    let options = runledger::runtime::sim::RunOptions {
        policy: what_if,
        ..Default::default()
    };
    runledger::runtime::sim::run_simulated(&ledger, &workload, &options, &mut |_, _| {}).unwrap();
    ledger.close().unwrap();

    let same = checked(
        dir.path(),
        CheckOptions {
            policy: what_if,
            ..CheckOptions::default()
        },
    );
    assert!(same.ok(), "{:?}", same.first);
    assert!(
        same.by_kind
            .get("degradation_decided")
            .is_some_and(|n| *n > 0),
        "{:?}",
        same.by_kind
    );
    assert!(
        same.by_kind
            .get("learning_profile_adjusted")
            .is_some_and(|n| *n > 0),
        "{:?}",
        same.by_kind
    );
    assert!(
        same.by_kind.get("task_nacked").is_some_and(|n| *n > 0),
        "{:?}",
        same.by_kind
    );

    let standard = checked(dir.path(), CheckOptions::default());
    assert_eq!(standard.divergences, 1, "{:?}", standard.first);
}

#[test]
fn an_edited_or_dropped_decision_is_reported_with_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let original = records(dir.path());

    // A verdict rewritten after the fact.
    let mut edited = original.clone();
    let at = edited
        .iter()
        .position(|(_, e)| {
            matches!(
                e,
                Event::DegradationDecided {
                    decision: Decision::Degrade,
                    ..
                }
            )
        })
        .unwrap();
    if let Event::DegradationDecided {
        decision, reason, ..
    } = &mut edited[at].1
    {
        *decision = Decision::Continue;
        *reason = "within budget".to_owned();
    }
    let copy = tempfile::tempdir().unwrap();
    write(copy.path(), edited);
    let report = checked(copy.path(), CheckOptions::default());
    assert_eq!(report.divergences, 1);
    let first = &report.first[0];
    assert_eq!(first.seq, at as u64 + 1);
    let decision = first.fields.iter().find(|f| f.field == "decision").unwrap();
    assert_eq!(decision.recorded, "continue");
    assert_eq!(decision.recomputed, "degrade");

    // An exploration flag flipped.
    let mut edited = original.clone();
    let at = edited
        .iter()
        .position(|(_, e)| matches!(e, Event::LearningArmChosen { .. }))
        .unwrap();
    if let Event::LearningArmChosen { explored, .. } = &mut edited[at].1 {
        *explored = !*explored;
    }
    let copy = tempfile::tempdir().unwrap();
    write(copy.path(), edited);
    let report = checked(copy.path(), CheckOptions::default());
    assert_eq!(report.first[0].seq, at as u64 + 1);
    assert!(report.first[0].fields.iter().any(|f| f.field == "explored"));

    // The first verdict dropped: the gate's decision lacks its record.
    let mut dropped = original;
    let at = dropped
        .iter()
        .position(|(_, e)| matches!(e, Event::DegradationDecided { .. }))
        .unwrap();
    dropped.remove(at);
    let copy = tempfile::tempdir().unwrap();
    write(copy.path(), dropped);
    let report = checked(copy.path(), CheckOptions::default());
    assert_eq!(report.divergences, 1);
    assert_eq!(report.first[0].seq, at as u64 + 1);
    assert_eq!(report.first[0].decision, "degradation_decided");
}

#[test]
fn ingested_events_are_not_rechecked_but_counted() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("replay/sample/ledger.jsonl");
    let out = runledger(dir.path(), &["ingest", sample.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = checked(dir.path(), CheckOptions::default());
    assert!(report.ok());
    assert_eq!(report.decisions, 0);
    assert!(report.not_recheckable > 10, "{report:?}");
}

#[test]
fn a_live_run_rechecks_too() {
    let dir = tempfile::tempdir().unwrap();
    let step = dir.path().join("step.sh");
    // The first attempt of `flaky` fails, every attempt costs the same.
    std::fs::write(
        &step,
        "#!/bin/sh\nread line\ncase \"$line\" in *'\"attempt\":1'*) case \"$line\" in *flaky*) exit 3;; esac;; esac\n\
         echo '{\"costs\":[{\"category\":\"llm\",\"amount_micros\":4000}],\"output\":{\"reward_bp\":7000}}'\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(&step).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&step, perms).unwrap();
    let step = step.display();
    let workload = format!(
        r#"
seed = 7
run = "live"
[execution.pool]
max_concurrency = 4
[execution.queue]
max_attempts = 2
retry_base_ms = 5
retry_max_ms = 20
[execution.workers]
num_workers = 4
[[tenants]]
id = "acme"
budget_micros = 200000
max_concurrent_runs = 2
learning_intensity = "aggressive"
[[tenants]]
id = "globex"
budget_micros = 30000
max_concurrent_runs = 2
[[pipelines]]
id = "p"
mode = "serial"
nodes = [
  {{ id = "fetch", handler = "exec", params = {{ argv = ["{step}"] }}, cost_ceiling_micros = 5000 }},
  {{ id = "flaky", handler = "exec", params = {{ argv = ["{step}"], learn = {{ model = ["a", "b"] }} }}, cost_ceiling_micros = 5000 }},
  {{ id = "opt", handler = "exec", optional = true, params = {{ argv = ["{step}"] }}, cost_ceiling_micros = 5000 }},
]
[[submissions]]
tenant = "acme"
pipeline = "p"
runs = 6
interval_ms = 1
[[submissions]]
tenant = "globex"
pipeline = "p"
runs = 6
interval_ms = 1
"#
    );
    let file = dir.path().join("live.toml");
    std::fs::write(&file, workload).unwrap();
    let data = dir.path().join("data");
    let out = runledger(&data, &["run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = checked(&data, CheckOptions::default());
    assert!(report.ok(), "{:?}", report.first);
    for kind in ["cost_reserved", "task_nacked", "learning_arm_chosen"] {
        assert!(report.by_kind.contains_key(kind), "{:?}", report.by_kind);
    }
}

#[test]
fn the_command_reports_ok_or_the_first_divergence_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let out = runledger(dir.path(), &["replay", "--check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let ok = text.lines().find(|l| l.starts_with("ok: ")).unwrap();
    assert!(ok.ends_with(" decisions re-checked"), "{ok}");

    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "# proposed\ndegrade_utilisation_bp = 8000\n").unwrap();
    let out = runledger(
        dir.path(),
        &["replay", "--check", "--policy", policy.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("divergence at seq "), "{text}");
    assert!(text.contains("  reason: recorded "), "{text}");
    assert!(stderr(&out).contains("the first at seq "));

    let json = runledger(
        dir.path(),
        &[
            "replay",
            "--check",
            "--json",
            "--keep-going",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(report["divergences"].as_u64().unwrap() > 1);
    assert!(report["first"][0]["seq"].as_u64().unwrap() > 0);

    // A bad policy names the file and line; an unknown run is bad input.
    std::fs::write(&policy, "degrade_utilisation_bp = 8000\nwarning = 1\n").unwrap();
    let out = runledger(
        dir.path(),
        &["replay", "--check", "--policy", policy.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("policy.toml:2: unknown field `warning`"),
        "{}",
        stderr(&out)
    );
    let out = runledger(dir.path(), &["replay", "--check", "--run", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let out = runledger(dir.path(), &["replay", "--check", "--run", "demo-42"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = runledger(dir.path(), &["replay", "--keep-going"]);
    assert_eq!(out.status.code(), Some(2), "--keep-going needs --check");
}

#[test]
fn policy_files_keep_unset_thresholds() {
    let policy = parse_policy("p.toml", "warning_bp = 7500\n").unwrap();
    assert_eq!(policy.warning_bp, 7_500);
    assert_eq!(
        policy.degrade_utilisation_bp,
        Policy::STANDARD.degrade_utilisation_bp
    );
    let error = parse_policy("p.toml", "\n\nwarning_bp = \"high\"\n").unwrap_err();
    assert!(error.starts_with("p.toml:3: "), "{error}");
}

/// Old ledgers against new code: every recorded ledger kept under
/// `replay/` is re-checked with today's deciders, so a change of decision
/// logic fails here before it is released (re-record the fixture if the
/// change is meant).
#[test]
fn recorded_ledgers_recheck_with_todays_deciders() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("replay");
    let mut rechecked = 0;
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let jsonl = entry.path().join("ledger.jsonl");
        if !jsonl.exists() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = runledger(dir.path(), &["ingest", jsonl.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = runledger(dir.path(), &["replay", "--check"]);
        assert!(
            out.status.success(),
            "{}: {}{}",
            jsonl.display(),
            stdout(&out),
            stderr(&out)
        );
        let report = checked(dir.path(), CheckOptions::default());
        rechecked += report.decisions;
    }
    assert!(rechecked > 300, "{rechecked} decisions re-checked");
}

/// A ledger with a daily tenant run on two days (and the first day twice).
fn daily_runs(dir: &Path) -> std::path::PathBuf {
    let day = |start: &str| {
        format!(
            r#"
seed = 5
start = "{start}"
[[tenants]]
id = "daily"
budget_micros = 50000000
max_concurrent_runs = 2
budget_period = "daily"
[[pipelines]]
id = "p"
mode = "serial"
nodes = [
  {{ id = "a", handler = "sim", params = {{ step = "retrieve", depth = 3 }}, cost_ceiling_micros = 100000 }},
  {{ id = "b", handler = "sim", params = {{ step = "generate", model = "small" }}, cost_ceiling_micros = 100000 }},
]
[[submissions]]
tenant = "daily"
pipeline = "p"
runs = 3
interval_ms = 100
"#
        )
    };
    let data = dir.join("data");
    for (start, id) in [
        ("2026-03-01T10:00:00Z", "mon"),
        ("2026-03-01T10:00:00Z", "mon-again"),
        ("2026-03-02T10:00:00Z", "tue"),
    ] {
        let file = dir.join(format!("{id}.toml"));
        std::fs::write(&file, day(start)).unwrap();
        let out = runledger(&data, &["run", file.to_str().unwrap(), "--run-id", id]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    data
}

#[test]
fn budget_periods_turn_once_in_ledger_order_and_a_missing_reset_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let data = daily_runs(dir.path());
    let report = checked(&data, CheckOptions::default());
    assert!(report.ok(), "{:?}", report.first);
    // The second run of Monday does not reset again; Tuesday's run resets
    // before it decides anything.
    assert_eq!(report.by_kind.get("budget_period_reset"), Some(&1));
    let records = records(&data);
    let at = records
        .iter()
        .position(|(_, e)| matches!(e, Event::BudgetPeriodReset { .. }))
        .unwrap();
    let mut dropped = records;
    dropped.remove(at);
    let copy = tempfile::tempdir().unwrap();
    write(copy.path(), dropped);
    let report = checked(copy.path(), CheckOptions::default());
    assert_eq!(report.divergences, 1, "{:?}", report.first);
    let first = &report.first[0];
    assert_eq!(first.decision, "budget_period_reset");
    assert!(first.what.contains("no `budget_period_reset` was recorded"));
    assert!(
        first.seq > at as u64,
        "reported at the first decision after it"
    );

    // `--run` leaves the other runs' decisions out, and says so.
    let only = checked(
        &data,
        CheckOptions {
            run: Some("tue".into()),
            ..CheckOptions::default()
        },
    );
    assert!(only.ok() && only.decisions > 0);
    assert_eq!(only.not_recheckable, 0);
    assert!(only.out_of_scope > 0);
}

#[test]
fn a_dropped_cascade_cancellation_is_reported_where_it_belongs() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let original = records(dir.path());
    let at = original
        .iter()
        .position(|(_, e)| matches!(e, Event::TaskCancelled { reason, .. } if reason.contains("was dead-lettered")))
        .expect("the demo dead-letters a task with dependants");
    let mut dropped = original;
    dropped.remove(at);
    let copy = tempfile::tempdir().unwrap();
    write(copy.path(), dropped);
    let report = checked(copy.path(), CheckOptions::default());
    assert_eq!(report.divergences, 1);
    let first = &report.first[0];
    assert_eq!(first.decision, "task_cancelled", "{first:?}");
    assert!(
        first.seq == at as u64 || first.seq == at as u64 + 1,
        "reported at seq {} for a cancellation dropped at seq {}",
        first.seq,
        at + 1
    );
}
