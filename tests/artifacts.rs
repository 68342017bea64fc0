//! Artifact files as views of the ledger, through the binary: `run
//! --artifacts` writes exactly what `runledger artifacts` regenerates from
//! the ledger alone, the numbers agree with `tenants --json` and the log,
//! and no id can steer a file outside the output directory.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::bin::{ok, runledger, runledger_stdin};

/// Tight budgets (DEGRADE and TERMINATE verdicts) and a daily budget whose
/// period turns at midnight, seconds after the run starts.
const WORKLOAD: &str = r#"
seed = 11
start = "2026-01-01T23:59:57Z"
run = "midnight"

[execution.pool]
max_concurrency = 4
backpressure_threshold = 0.8

[execution.queue]
max_attempts = 2
retry_base_ms = 100

[execution.workers]
num_workers = 4
worker_timeout_sec = 1.5

[[pipelines]]
id = "rag"
mode = "serial"
nodes = [
  { id = "retrieve", params = { step = "retrieve", depth = 5 } },
  { id = "rerank", optional = true, params = { step = "rerank" } },
  { id = "generate", params = { step = "generate", candidates = 3, learn = { model = ["large", "medium", "small"] } } },
]

[[tenants]]
id = "tight"
budget_micros = 90000

[[tenants]]
id = "daily"
budget_micros = 200000
budget_period = "daily"

[[tenants]]
id = "roomy"
budget_micros = 10000000
learning_intensity = "aggressive"

[[submissions]]
tenant = "tight"
pipeline = "rag"
runs = 5
interval_ms = 700

[[submissions]]
tenant = "daily"
pipeline = "rag"
runs = 5
interval_ms = 1500

[[submissions]]
tenant = "roomy"
pipeline = "rag"
runs = 2
interval_ms = 2000
"#;

fn ingest(data: &Path, lines: &str) {
    ok(&runledger_stdin(data, &["ingest", "-"], lines.as_bytes()));
}

/// Every file under `dir`, by path relative to it (`/`-separated).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn visit(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                visit(root, &path, files);
            } else {
                let relative = path.strip_prefix(root).unwrap();
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_str().unwrap())
                    .collect::<Vec<_>>()
                    .join("/");
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    visit(dir, dir, &mut files);
    files
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// The ledger's records as `log --json` prints them.
fn records(data: &Path) -> Vec<Value> {
    ok(&runledger(data, &["--json", "log"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

struct Ran {
    _dir: tempfile::TempDir,
    data: PathBuf,
    written: PathBuf,
    root: PathBuf,
}

/// Runs the workload with `--artifacts`.
fn run_workload() -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let workload = root.join("w.toml");
    std::fs::write(&workload, WORKLOAD).unwrap();
    let data = root.join("data");
    let written = root.join("written");
    ok(&runledger(
        &data,
        &[
            "run",
            workload.to_str().unwrap(),
            "--artifacts",
            written.to_str().unwrap(),
        ],
    ));
    Ran {
        _dir: dir,
        data,
        written,
        root,
    }
}

fn regenerate(ran: &Ran, name: &str, run: Option<&str>) -> BTreeMap<String, Vec<u8>> {
    let out = ran.root.join(name);
    let mut args = vec!["artifacts", "--out", out.to_str().unwrap()];
    if let Some(run) = run {
        args.extend(["--run", run]);
    }
    let printed = ok(&runledger(&ran.data, &args));
    let files = tree(&out);
    assert_eq!(
        printed.trim(),
        format!("wrote {} files to {}", files.len(), out.display())
    );
    files
}

#[test]
fn run_artifacts_are_byte_identical_to_the_regenerated_ones() {
    let ran = run_workload();
    let mut written = tree(&ran.written);
    // Beside the artifacts, `run --artifacts` keeps the run's summary files
    // (wall-clock figures included): those are not views of the log.
    let summaries: Vec<String> = written
        .keys()
        .filter(|p| p.starts_with("runs/"))
        .cloned()
        .collect();
    assert_eq!(
        summaries,
        [
            "runs/midnight/summary.json",
            "runs/midnight/tenants.json",
            "runs/midnight/workers.json"
        ]
    );
    for path in summaries {
        written.remove(&path);
    }
    let regenerated = regenerate(&ran, "regenerated", Some("midnight"));
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        regenerated.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &written {
        assert!(
            bytes == &regenerated[path],
            "{path} differs:\n{}\n---\n{}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&regenerated[path])
        );
        assert!(bytes.ends_with(b"\n"), "{path} ends with a newline");
    }
    for tenant in ["daily", "roomy", "tight"] {
        for file in [
            "budget_usage.json",
            "learning_profile.json",
            "learning_history.jsonl",
        ] {
            let path = format!("tenants/{tenant}/{file}");
            assert!(written.contains_key(&path), "no {path}");
        }
    }
    // The whole ledger holds only this run: the same tenant files and
    // decisions, and reports that say they are not restricted to a run.
    let whole = regenerate(&ran, "whole", None);
    assert_eq!(
        whole.keys().collect::<Vec<_>>(),
        written.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &whole {
        if path.contains("/cost_report_") {
            let (mut a, b) = (json(bytes), json(&written[path]));
            assert_eq!(b["run"], "midnight");
            a["run"] = "midnight".into();
            assert_eq!(a, b, "{path}");
        } else {
            assert!(bytes == &written[path], "{path} differs");
        }
    }
}

#[test]
fn artifact_contents_agree_with_tenants_json_and_the_log() {
    let ran = run_workload();
    let files = regenerate(&ran, "all", None);
    let log = records(&ran.data);
    let head = log.last().unwrap();
    let tenants: Vec<Value> =
        serde_json::from_str(&ok(&runledger(&ran.data, &["--json", "tenants"]))).unwrap();
    assert_eq!(tenants.len(), 3);

    for view in &tenants {
        let tenant = view["tenant"].as_str().unwrap();
        let dir = format!("tenants/{tenant}");
        let of_tenant: Vec<&Value> = log
            .iter()
            .filter(|r| r["event"]["tenant"] == tenant)
            .collect();

        // Budget usage now: the numbers `tenants --json` shows, at the head.
        let usage = json(&files[&format!("{dir}/budget_usage.json")]);
        for field in [
            "budget_micros",
            "spent_micros",
            "spent_by_category",
            "reserved_micros",
            "available_micros",
            "utilisation_bp",
            "status",
            "active_runs",
            "max_concurrent_runs",
            "budget_period",
            "learning_intensity",
            "exploration_bp",
        ] {
            assert_eq!(usage[field], view[field], "{tenant}: {field}");
        }
        assert_eq!(usage["as_of"]["seq"], head["seq"]);
        assert_eq!(usage["as_of"]["recorded_at"], head["recorded_at"]);
        assert_eq!(usage["as_of"]["hash"], head["hash"]);

        // Cost reports: one per date with money events, adding up to the
        // tenant's costs in the log.
        let cost = |r: &&Value| {
            (r["event"]["type"] == "cost_incurred").then(|| {
                let date = r["recorded_at"].as_str().unwrap()[..10].to_owned();
                (date, r["event"]["amount_micros"].as_i64().unwrap())
            })
        };
        let mut by_date: BTreeMap<String, i64> = BTreeMap::new();
        for (date, amount) in of_tenant.iter().filter_map(cost) {
            *by_date.entry(date).or_default() += amount;
        }
        let reports: BTreeMap<String, Value> = files
            .iter()
            .filter_map(|(path, bytes)| {
                let date = path
                    .strip_prefix(&format!("{dir}/cost_report_"))?
                    .strip_suffix(".json")?;
                Some((date.to_owned(), json(bytes)))
            })
            .collect();
        assert_eq!(
            reports.keys().collect::<Vec<_>>(),
            by_date.keys().collect::<Vec<_>>(),
            "{tenant}"
        );
        assert_eq!(by_date.len(), 2, "{tenant} spent on both sides of midnight");
        for (date, report) in &reports {
            assert_eq!(report["date"], date.as_str());
            assert_eq!(report["spent_micros"], by_date[date], "{tenant} {date}");
            assert_eq!(report["by_run"]["midnight"]["spent_micros"], by_date[date]);
            assert!(report.get("run").is_none());
            let incurred = of_tenant
                .iter()
                .filter(|r| {
                    r["event"]["type"] == "cost_incurred"
                        && r["recorded_at"]
                            .as_str()
                            .unwrap()
                            .starts_with(date.as_str())
                })
                .count();
            assert_eq!(report["events"]["cost_incurred"], incurred);
        }

        // An archive per reset, taken just before it.
        let resets: Vec<&&Value> = of_tenant
            .iter()
            .filter(|r| r["event"]["type"] == "budget_period_reset")
            .collect();
        let archives: Vec<Value> = files
            .iter()
            .filter(|(path, _)| path.starts_with(&format!("{dir}/budget_archive_")))
            .map(|(_, bytes)| json(bytes))
            .collect();
        assert_eq!(archives.len(), resets.len(), "{tenant}");
        assert_eq!(resets.len(), usize::from(tenant == "daily"));
        for (archive, reset) in archives.iter().zip(&resets) {
            let seq = reset["seq"].as_u64().unwrap();
            assert_eq!(archive["reset"]["seq"], seq);
            assert_eq!(archive["reset"]["recorded_at"], reset["recorded_at"]);
            assert_eq!(archive["usage"]["as_of"]["seq"], seq - 1);
            let from = archive["period_started"]["seq"].as_u64().unwrap();
            let spent: i64 = of_tenant
                .iter()
                .filter(|r| (from..seq).contains(&r["seq"].as_u64().unwrap()))
                .filter_map(cost)
                .map(|(_, amount)| amount)
                .sum();
            assert!(spent > 0);
            assert_eq!(
                archive["usage"]["spent_micros"], spent,
                "the period's spend"
            );
        }
        if tenant == "daily" {
            let path = format!("{dir}/budget_archive_20260102T000000Z.json");
            assert!(files.contains_key(&path), "no {path}");
        }

        // Learning history: the tenant's learning events, all of them, in order.
        let history =
            String::from_utf8(files[&format!("{dir}/learning_history.jsonl")].clone()).unwrap();
        let lines: Vec<Value> = history
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let learning: Vec<&&Value> = of_tenant
            .iter()
            .filter(|r| {
                r["event"]["type"]
                    .as_str()
                    .unwrap()
                    .starts_with("learning_")
            })
            .collect();
        assert!(!lines.is_empty());
        assert_eq!(lines.len(), learning.len(), "{tenant}");
        for (line, record) in lines.iter().zip(&learning) {
            assert_eq!(line["event"]["tenant"], tenant);
            assert_eq!(line["seq"], record["seq"]);
            assert_eq!(line["recorded_at"], record["recorded_at"]);
            assert_eq!(line["event"], record["event"]);
        }
        let profile = json(&files[&format!("{dir}/learning_profile.json")]);
        let outcomes = lines
            .iter()
            .filter(|l| l["event"]["type"] == "learning_outcome")
            .count();
        assert!(outcomes > 0, "{tenant}");
        assert_eq!(profile["outcomes"], outcomes);
    }

    // Cost decisions: every task with a verdict, in ledger order, the
    // last one in force; DEGRADE and TERMINATE both occur.
    let verdicts: Vec<&Value> = log
        .iter()
        .filter(|r| r["event"]["type"] == "degradation_decided")
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut counted = 0;
    for (path, bytes) in files.iter().filter(|(p, _)| p.starts_with("rag_project/")) {
        let view = json(bytes);
        let task = view["task"].as_str().unwrap();
        let encoded = task.replace('#', "%23");
        assert_eq!(path, &format!("rag_project/{encoded}/cost_decision.json"));
        let decisions = view["decisions"].as_array().unwrap();
        let expected: Vec<&&Value> = verdicts
            .iter()
            .filter(|r| r["event"]["task"] == task)
            .collect();
        assert_eq!(decisions.len(), expected.len(), "{task}");
        for (d, r) in decisions.iter().zip(&expected) {
            assert_eq!(d["seq"], r["seq"]);
            assert_eq!(d["decision"], r["event"]["decision"]);
            assert_eq!(d["reason"], r["event"]["reason"]);
            assert_eq!(d["details"], r["event"]["details"]);
            assert!(d["details"]["projection"].is_object());
        }
        assert_eq!(&view["decision"], decisions.last().unwrap());
        counted += decisions.len();
        seen.insert(view["decision"]["decision"].as_str().unwrap().to_owned());
    }
    assert_eq!(counted, verdicts.len());
    assert!(
        seen.contains("degrade") && seen.contains("terminate"),
        "{seen:?}"
    );
}

#[test]
fn hostile_ids_stay_inside_the_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let submit = |task: &str| {
        format!(
            r#"{{"type":"task_submitted","run":"..","task":"{task}","tenant":"../evil","priority":"normal"}}
{{"type":"degradation_decided","tenant":"../evil","run":"..","task":"{task}","decision":"degrade","reason":"test"}}
"#
        )
    };
    let mut lines = String::from(
        r#"{"type":"tenant_registered","tenant":"../evil","budget_micros":1000,"max_concurrent_runs":4}
{"type":"run_started","run":"..","seed":1}
{"type":"cost_incurred","tenant":"../evil","category":"llm","amount_micros":5}
"#,
    );
    for task in [
        "../../../escape",
        "/abs/./x/",
        "a",
        "a/cost_decision.json",
        "C:\\\\win",
    ] {
        lines.push_str(&submit(task));
    }
    ingest(&data, &lines);
    let out = dir.path().join("nested").join("out");
    ok(&runledger(
        &data,
        &["artifacts", "--out", out.to_str().unwrap()],
    ));
    let everything = tree(dir.path());
    let outside: Vec<&String> = everything
        .keys()
        .filter(|p| !p.starts_with("nested/out/") && !p.starts_with("data/"))
        .collect();
    assert!(outside.is_empty(), "written outside --out: {outside:?}");
    let files: Vec<String> = tree(&out).into_keys().collect();
    let (reports, rest): (Vec<&String>, Vec<&String>) = files
        .iter()
        .partition(|p| p.starts_with("tenants/%2E%2E%2Fevil/cost_report_"));
    assert_eq!(reports.len(), 1, "{files:?}");
    assert_eq!(
        rest,
        [
            "rag_project/%/abs/%2E/x/%/cost_decision.json",
            "rag_project/%2E%2E/%2E%2E/%2E%2E/escape/cost_decision.json",
            "rag_project/C%3A%5Cwin/cost_decision.json",
            "rag_project/a/cost_decision%2Ejson/cost_decision.json",
            "rag_project/a/cost_decision.json",
            "tenants/%2E%2E%2Fevil/budget_usage.json",
            "tenants/%2E%2E%2Fevil/learning_history.jsonl",
            "tenants/%2E%2E%2Fevil/learning_profile.json",
        ]
    );
}

#[test]
fn unknown_run_exits_2_and_writes_nothing() {
    let ran = run_workload();
    let out = ran.root.join("nothing");
    let result = runledger(
        &ran.data,
        &["artifacts", "--run", "nope", "--out", out.to_str().unwrap()],
    );
    assert_eq!(result.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("run `nope` is not in the ledger"),
        "{stderr}"
    );
    assert!(!out.exists());
}
