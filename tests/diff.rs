//! `runledger diff`: alignment of two runs under different run ids, field
//! by field differences, the summary's money against `tenants` / `runs`,
//! exit codes (0 same, 1 different, 2 bad input).

mod support;

use std::path::Path;
use std::process::Output;

use runledger::audit::diff::{RunInput, compare, load_run, normalise_text, strip_run};
use runledger::domain::{Category, Decision, Event, Micros, Params, RunId, Timestamp};
use runledger::log::store::DecodedRecord;
use serde_json::{Value, json};

use support::bin::{runledger, stderr, stdout};
use support::events::{run_started, submit};
use support::ledger::open_store;

// ------------------------------------------------------------ pure tests

fn record(seq: u64, at: i64, event: Event) -> DecodedRecord {
    DecodedRecord {
        seq,
        frame_seq: seq,
        recorded_at: Timestamp(at),
        hash: blake3::hash(&seq.to_le_bytes()),
        event,
    }
}

/// A small run `run` whose records start at `first_seq`; `generate_cost`
/// is what its generate task posts.
fn small_run(run: &str, first_seq: u64, generate_cost: i64) -> RunInput {
    let r = RunId::new(run);
    let task = |node: &str| format!("{run}/acme/rag#0/{node}");
    let events = vec![
        run_started(run, 7),
        submit(&task("retrieve"), "acme")
            .run(run)
            .pipeline("acme/rag#0")
            .ceiling(200)
            .max_attempts(3)
            .into(),
        submit(&task("generate"), "acme")
            .run(run)
            .deps([task("retrieve")])
            .pipeline("acme/rag#0")
            .ceiling(2_000)
            .max_attempts(3)
            .into(),
        Event::DegradationDecided {
            tenant: "acme".into(),
            run: r.clone(),
            task: Some(task("generate").as_str().into()),
            decision: Decision::Continue,
            reason: format!("`{}` may run", task("generate")),
            details: Params::null(),
        },
        Event::CostReserved {
            tenant: "acme".into(),
            task: task("generate").as_str().into(),
            amount_micros: Micros(2_000),
        },
        Event::CostIncurred {
            tenant: "acme".into(),
            task: Some(task("generate").as_str().into()),
            category: Category::Llm,
            amount_micros: Micros(generate_cost),
        },
        Event::ReservationReleased {
            tenant: "acme".into(),
            task: task("generate").as_str().into(),
            amount_micros: Micros(2_000 - generate_cost),
        },
        Event::RunFinished { run: r.clone() },
    ];
    let records = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| record(first_seq + i as u64, 1_000 * i as i64, e))
        .collect();
    RunInput::new(r, records)
}

#[test]
fn normalise_cuts_the_run_prefix_where_an_id_starts() {
    assert_eq!(
        strip_run("demo-42/acme/rag#0/retrieve", "demo-42"),
        "acme/rag#0/retrieve"
    );
    assert_eq!(strip_run("other/acme", "demo-42"), "other/acme");
    // Only a `run` field naming the run becomes `<run>`: a tenant named
    // like its run stays, and an id loses one prefix, not two.
    assert_eq!(normalise_text("daily", "daily"), "daily");
    assert_eq!(
        normalise_text("daily/daily/research#0/search.0", "daily"),
        "daily/research#0/search.0"
    );
    assert_eq!(
        normalise_text("parent `demo-42/acme/rag#0/x` was dead-lettered", "demo-42"),
        "parent `acme/rag#0/x` was dead-lettered"
    );
    // Inside another id the run's name is left alone.
    assert_eq!(normalise_text("xdemo-42/a", "demo-42"), "xdemo-42/a");
    assert_eq!(normalise_text("demo-42/a demo-42/b", "demo-42"), "a b");
}

#[test]
fn diff_aligns_runs_with_different_ids_as_identical() {
    let a = small_run("demo-42", 5, 1_200);
    let b = small_run("demo-43", 900, 1_200);
    let d = compare(&a, &b);
    assert!(d.identical, "{:?}", d.first_divergence);
    assert!(d.first_divergence.is_none());
    assert_eq!(d.events_a, 8);
    assert_eq!(d.summary.tasks.submitted.delta, 0);
    assert!(d.summary.tasks.only_in_a.is_empty());
    assert!(d.summary.top_task_deltas.is_empty());
}

#[test]
fn diff_names_the_first_divergence_field_by_field() {
    let a = small_run("a", 1, 1_200);
    let b = small_run("b", 101, 1_450);
    let d = compare(&a, &b);
    assert!(!d.identical);
    let first = d.first_divergence.as_ref().unwrap();
    assert_eq!(first.index, 5);
    assert_eq!((first.seq_a, first.seq_b), (Some(6), Some(106)));
    assert_eq!(first.event_a.as_ref().unwrap()["type"], "cost_incurred");
    assert_eq!(first.event_b.as_ref().unwrap()["amount_micros"], 1_450);
    assert_eq!(first.fields.len(), 1, "{:?}", first.fields);
    assert_eq!(first.fields[0].field, "amount_micros");
    assert_eq!(
        (&first.fields[0].a, &first.fields[0].b),
        (&json!(1_200), &json!(1_450))
    );
    let acme = &d.summary.tenants[0];
    assert_eq!(acme.tenant, "acme");
    assert_eq!(
        (
            acme.spent.a_micros,
            acme.spent.b_micros,
            acme.spent.delta_micros
        ),
        (1_200, 1_450, 250)
    );
    assert_eq!(acme.spent_by_category["llm"].delta_micros, 250);
    assert_eq!(acme.reserved_at_end.b_micros, 0);
    let top = &d.summary.top_task_deltas;
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].task, "acme/rag#0/generate");
    assert_eq!(top[0].cost.delta_micros, 250);
}

#[test]
fn diff_reports_a_different_time_and_a_changed_kind() {
    let a = small_run("a", 1, 1_200);
    let mut b = small_run("b", 1, 1_200);
    b.records[2].recorded_at = Timestamp(2_500);
    let d = compare(&a, &b);
    let first = d.first_divergence.unwrap();
    assert_eq!(first.index, 2);
    assert_eq!(first.fields[0].field, "recorded_at");
    assert_eq!(first.fields.len(), 1);

    let mut c = small_run("c", 1, 1_200);
    c.records[3].event = Event::TaskCancelled {
        task: "c/acme/rag#0/generate".into(),
        reason: String::new(),
    };
    let d = compare(&a, &c);
    let first = d.first_divergence.unwrap();
    assert_eq!(first.index, 3);
    assert_eq!(first.fields[0].field, "type");
    assert_eq!(first.fields[0].b, json!("task_cancelled"));
    assert_eq!(d.summary.tasks.cancelled.delta, 1);
    assert_eq!(d.summary.decisions[0].r#continue.delta, -1);
}

#[test]
fn diff_says_where_a_prefix_run_ends() {
    let a = small_run("a", 1, 1_200);
    let mut b = small_run("b", 1, 1_200);
    b.records.truncate(5);
    let d = compare(&a, &b);
    assert!(!d.identical);
    let first = d.first_divergence.as_ref().unwrap();
    assert_eq!(first.index, 5);
    assert_eq!((first.seq_a, first.seq_b), (Some(6), None));
    assert!(first.event_b.is_none() && first.fields.is_empty());
    // b's generate task holds its reservation: it never posted its cost.
    assert_eq!(d.summary.tenants[0].reserved_at_end.b_micros, 2_000);
    assert_eq!(d.summary.tenants[0].reserved_at_end.a_micros, 0);
    let text = runledger::audit::diff::render_text(&d);
    assert!(
        text.contains("run `b` is a prefix of run `a`: it ends after 5 events"),
        "{text}"
    );
}

// ------------------------------------------------------------- CLI tests

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// Draws seeded by the task id (which holds the run id) decide latencies,
/// failures and token counts; this workload uses none of them (no
/// failures, latency 0, steps with fixed costs), so two fresh ledgers give
/// the same events whatever the run id.
const FIXED: &str = r#"
seed = 7
start = "2026-01-01T00:00:00Z"
[execution.pool]
max_concurrency = 2
[execution.workers]
num_workers = 2

[[tenants]]
id = "acme"
budget_micros = 100000000
max_concurrent_runs = 4

[[tenants]]
id = "globex"
budget_micros = 50000000
max_concurrent_runs = 2

[[pipelines]]
id = "rag"
mode = "serial"
nodes = [
  { id = "retrieve", params = { step = "retrieve", depth = 4, failure_rate_bp = 0, latency_ms = 0 } },
  { id = "tool", params = { step = "tool", failure_rate_bp = 0, latency_ms = 0 } },
]

[[submissions]]
tenant = "acme"
pipeline = "rag"
runs = 3
interval_ms = 10

[[submissions]]
tenant = "globex"
pipeline = "rag"
runs = 2
interval_ms = 15
"#;

/// Token counts, latencies and failures drawn from the seed.
const DRAWN: &str = r#"
seed = 7
start = "2026-01-01T00:00:00Z"
[execution.pool]
max_concurrency = 3
[execution.workers]
num_workers = 3

[[tenants]]
id = "acme"
budget_micros = 100000000
max_concurrent_runs = 4

[[tenants]]
id = "globex"
budget_micros = 60000
max_concurrent_runs = 2

[[pipelines]]
id = "rag"
mode = "serial"
nodes = [
  { id = "retrieve", params = { step = "retrieve" } },
  { id = "generate", params = { step = "generate", model = "medium", failure_rate_bp = 1500 } },
  { id = "evaluate", params = { step = "evaluate" } },
]

[[submissions]]
tenant = "acme"
pipeline = "rag"
runs = 6
interval_ms = 10

[[submissions]]
tenant = "globex"
pipeline = "rag"
runs = 6
interval_ms = 10
"#;

fn write_workload(dir: &Path, text: &str) -> std::path::PathBuf {
    let file = dir.join("w.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn run_workload(data: &Path, workload: &Path, extra: &[&str]) {
    let mut args = vec!["run", workload.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = runledger(data, &args);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn cli_diff_same_workload_two_ledgers_different_run_ids_is_identical_exit_0() {
    let files = tempfile::tempdir().unwrap();
    let workload = write_workload(files.path(), FIXED);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run_workload(a.path(), &workload, &["--run-id", "monday"]);
    run_workload(b.path(), &workload, &["--run-id", "tuesday"]);
    let b_dir = b.path().to_str().unwrap();
    let out = runledger(a.path(), &["diff", "monday", "tuesday", "--data-b", b_dir]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.starts_with("identical: runs `monday` and `tuesday` have the same "),
        "{text}"
    );
    let out = runledger(
        a.path(),
        &["--json", "diff", "monday", "tuesday", "--data-b", b_dir],
    );
    assert_eq!(out.status.code(), Some(0));
    let v = json_of(&out);
    assert_eq!(v["identical"], true);
    assert!(v["first_divergence"].is_null());
    assert_eq!(v["events_a"], v["events_b"]);
    assert_eq!(v["summary"]["tasks"]["submitted"]["a"], 10);
    assert_eq!(v["summary"]["tasks"]["submitted"]["delta"], 0);
    assert_eq!(v["summary"]["tenants"][0]["tenant"], "acme");
    assert_eq!(v["summary"]["tenants"][1]["tenant"], "globex");
    assert_eq!(v["summary"]["tenants"][0]["spent"]["delta_micros"], 0);
    assert!(v["summary"]["tenants"][0]["config"].is_null());
}

#[test]
fn cli_diff_two_runs_of_a_drawing_workload_are_identical_even_named_like_a_tenant() {
    // Seeded draws are keyed within the run: the same workload and seed
    // under two names, in two ledgers, record the same events — latencies,
    // failures, retries and costs included.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("replay/daily-period/workload.toml");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run_workload(a.path(), &fixture, &["--run-id", "daily"]);
    run_workload(b.path(), &fixture, &["--run-id", "other"]);
    let b_dir = b.path().to_str().unwrap();
    let out = runledger(a.path(), &["diff", "daily", "other", "--data-b", b_dir]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn cli_diff_same_workload_twice_in_one_ledger_differs_by_what_the_first_run_spent() {
    // Same workload, same seed, one ledger: tasks and costs match, but the
    // cost agent of the second run records the tenant's spend so far,
    // which includes the first run's: diff shows exactly that.
    let files = tempfile::tempdir().unwrap();
    let workload = write_workload(files.path(), FIXED);
    let data = tempfile::tempdir().unwrap();
    run_workload(data.path(), &workload, &["--run-id", "first"]);
    run_workload(data.path(), &workload, &["--run-id", "second"]);
    let out = runledger(data.path(), &["--json", "diff", "first", "second"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("runs `first` and `second` differ"));
    let v = json_of(&out);
    assert_eq!(v["identical"], false);
    let first = &v["first_divergence"];
    assert_eq!(first["event_a"]["type"], "degradation_decided");
    let fields: Vec<&str> = first["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"details.projection.spent_micros"),
        "{fields:?}"
    );
    assert!(first["seq_b"].as_u64().unwrap() > first["seq_a"].as_u64().unwrap());
    let s = &v["summary"];
    for what in ["submitted", "acked", "nacked", "retries", "cancelled"] {
        assert_eq!(s["tasks"][what]["delta"], 0, "{what}");
    }
    for t in s["tenants"].as_array().unwrap() {
        assert_eq!(t["spent"]["delta_micros"], 0);
    }
    assert!(s["top_task_deltas"].as_array().unwrap().is_empty());
}

#[test]
fn cli_diff_other_seed_exit_1_with_cost_deltas_equal_to_runs_and_tenants() {
    let files = tempfile::tempdir().unwrap();
    let workload = write_workload(files.path(), DRAWN);
    // One ledger: per-run costs are what `runs` shows.
    let data = tempfile::tempdir().unwrap();
    run_workload(data.path(), &workload, &["--run-id", "yesterday"]);
    run_workload(
        data.path(),
        &workload,
        &["--run-id", "today", "--seed", "8"],
    );
    let out = runledger(data.path(), &["diff", "yesterday", "today"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "first divergence at event 1 of the aligned runs (seq 3 in `yesterday`, seq "
        ),
        "{text}"
    );
    assert!(text.contains("  seed: 7 → 8\n"), "{text}");
    for section in ["\ntasks\n", "\ncost per tenant\n", "\ndecisions\n"] {
        assert!(text.contains(section), "{section} in {text}");
    }
    let v = json_of(&runledger(
        data.path(),
        &["--json", "diff", "yesterday", "today"],
    ));
    let runs = json_of(&runledger(data.path(), &["--json", "runs"]));
    let cost = |run: &str| {
        runs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["run"] == run)
            .unwrap()["cost_micros"]
            .as_i64()
            .unwrap()
    };
    let tenants = v["summary"]["tenants"].as_array().unwrap();
    let sum = |key: &str| -> i64 {
        tenants
            .iter()
            .map(|t| t["spent"][key].as_i64().unwrap())
            .sum()
    };
    assert_eq!(sum("a_micros"), cost("yesterday"));
    assert_eq!(sum("b_micros"), cost("today"));
    assert_eq!(sum("delta_micros"), cost("today") - cost("yesterday"));
    assert_ne!(sum("delta_micros"), 0, "seed 8 costs differently");
    let top = v["summary"]["top_task_deltas"].as_array().unwrap();
    assert!(!top.is_empty() && top.len() <= 10);
    let abs = |d: &Value| d["cost"]["delta_micros"].as_i64().unwrap().abs();
    assert!(top.windows(2).all(|w| abs(&w[0]) >= abs(&w[1])));

    // Two ledgers, one run each: per-tenant figures are what `tenants` shows.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run_workload(a.path(), &workload, &[]);
    run_workload(b.path(), &workload, &["--seed", "8", "--run-id", "run-7"]);
    let b_dir = b.path().to_str().unwrap();
    let out = runledger(
        a.path(),
        &["--json", "diff", "run-7", "run-7", "--data-b", b_dir],
    );
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    let ta = json_of(&runledger(a.path(), &["--json", "tenants"]));
    let tb = json_of(&runledger(b.path(), &["--json", "tenants"]));
    for (i, t) in v["summary"]["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let (x, y) = (&ta[i], &tb[i]);
        assert_eq!(t["tenant"], x["tenant"]);
        assert_eq!(t["spent"]["a_micros"], x["spent_micros"]);
        assert_eq!(t["spent"]["b_micros"], y["spent_micros"]);
        let delta = y["spent_micros"].as_i64().unwrap() - x["spent_micros"].as_i64().unwrap();
        assert_eq!(t["spent"]["delta_micros"], delta);
        assert_eq!(t["reserved_at_end"]["a_micros"], x["reserved_micros"]);
        for (category, m) in t["spent_by_category"].as_object().unwrap() {
            assert_eq!(m["a_micros"], x["spent_by_category"][category]);
            assert_eq!(m["b_micros"], y["spent_by_category"][category]);
        }
    }
}

#[test]
fn cli_diff_names_a_changed_tenant_budget() {
    let files = tempfile::tempdir().unwrap();
    let workload = write_workload(files.path(), DRAWN);
    let cheaper = files.path().join("cheaper.toml");
    std::fs::write(
        &cheaper,
        DRAWN.replace("budget_micros = 60000\n", "budget_micros = 30000\n"),
    )
    .unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run_workload(a.path(), &workload, &[]);
    run_workload(b.path(), &cheaper, &[]);
    let b_dir = b.path().to_str().unwrap();
    let out = runledger(a.path(), &["diff", "run-7", "run-7", "--data-b", b_dir]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("tenant `globex` is configured differently: budget_micros: 60000 → 30000"),
        "{text}"
    );
    let v = json_of(&runledger(
        a.path(),
        &["--json", "diff", "run-7", "run-7", "--data-b", b_dir],
    ));
    let globex = &v["summary"]["tenants"][1];
    assert_eq!(globex["config"]["fields"][0]["field"], "budget_micros");
    assert!(v["summary"]["tenants"][0]["config"].is_null());
}

#[test]
fn cli_diff_unknown_run_or_missing_ledger_exits_2_naming_it() {
    let files = tempfile::tempdir().unwrap();
    let workload = write_workload(files.path(), FIXED);
    let data = tempfile::tempdir().unwrap();
    run_workload(data.path(), &workload, &["--run-id", "monday"]);
    run_workload(data.path(), &workload, &["--run-id", "tuesday"]);
    let out = runledger(data.path(), &["diff", "monday", "sunday"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "no run `sunday` in {}: runs there: monday, tuesday",
            data.path().display()
        )),
        "{err}"
    );
    assert!(stdout(&out).is_empty());

    let missing = files.path().join("nowhere");
    let out = runledger(
        data.path(),
        &[
            "diff",
            "monday",
            "monday",
            "--data-b",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no ledger at"), "{}", stderr(&out));

    let out = runledger(&missing, &["diff", "monday", "tuesday"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn load_run_reads_the_same_records_through_the_indices_as_by_a_walk() {
    let files = tempfile::tempdir().unwrap();
    // A tight globex budget: its status changes during the run, an event
    // without run or task that the run's window takes in.
    let tight = DRAWN.replace("budget_micros = 60000\n", "budget_micros = 12000\n");
    let workload = write_workload(files.path(), &tight);
    let data = tempfile::tempdir().unwrap();
    run_workload(data.path(), &workload, &["--run-id", "x"]);
    run_workload(data.path(), &workload, &["--run-id", "y", "--seed", "9"]);
    let store = open_store(data.path());
    let run = RunId::new("y");
    let indexed = load_run(&store, &run).unwrap().unwrap();
    assert!(
        indexed
            .records
            .iter()
            .any(|r| matches!(r.event, Event::BudgetStatusChanged { .. })),
        "the window's status change is aligned with the run"
    );
    assert!(
        indexed
            .records
            .iter()
            .all(|r| r.event.run().is_none_or(|r| r == &run)),
    );
    assert_eq!(indexed.tenants.len(), 2);
    store.clear_index().unwrap();
    let walked = load_run(&store, &run).unwrap().unwrap();
    let seqs = |i: &RunInput| i.records.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&indexed), seqs(&walked));
    assert_eq!(indexed.tenants, walked.tenants);
    assert!(load_run(&store, &RunId::new("z")).unwrap().is_none());
}

#[test]
fn cli_diff_of_a_damaged_run_exits_1_naming_the_seq() {
    use runledger::log::frame::{OwnedFrame, frame_key};
    let files = tempfile::tempdir().unwrap();
    let workload = write_workload(files.path(), FIXED);
    let data = tempfile::tempdir().unwrap();
    run_workload(data.path(), &workload, &["--run-id", "a"]);
    run_workload(data.path(), &workload, &["--run-id", "b"]);
    {
        // Move the time of the first record of the last frame (run b's).
        let store = open_store(data.path());
        let (key, value) = store.log_tree().last().unwrap().unwrap();
        let mut frame = OwnedFrame::decode(&value).unwrap();
        frame.entries[0].0 = Timestamp(frame.entries[0].0.0 + 1);
        let seq = u64::from_be_bytes(key.as_ref().try_into().unwrap());
        store
            .log_tree()
            .insert(frame_key(seq), frame.encode())
            .unwrap();
        store.log_tree().flush().unwrap();
    }
    let out = runledger(data.path(), &["diff", "a", "b"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the ledger is damaged at seq "),
        "{}",
        stderr(&out)
    );
}
