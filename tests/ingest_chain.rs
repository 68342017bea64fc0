//! `ingest` keeps the chain: record lines (as `log --json` prints them)
//! must continue the chain where they land — the ledger's head for the
//! first, the line before for the next — so an export with a line deleted,
//! moved or replayed into another ledger is refused at that line with
//! exit 2 and nothing appended; a whole export re-ingests with its seqs,
//! times and hashes unchanged. Bare events stay appendable after records,
//! not before them. A `budget_overrun` needs spend behind it.

mod support;

use std::path::Path;
use std::process::Output;

use support::bin::{runledger, runledger_stdin, stderr, stdout};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/replay/sample/ledger.jsonl");

fn ingest(data: &Path, lines: &[&str]) -> Output {
    let mut text = lines.join("\n");
    text.push('\n');
    runledger_stdin(data, &["ingest", "-"], text.as_bytes())
}

fn sample() -> Vec<String> {
    std::fs::read_to_string(SAMPLE)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn refs(lines: &[String]) -> Vec<&str> {
    lines.iter().map(String::as_str).collect()
}

/// Records the ledger in `data` holds (0 when there is none).
fn records(data: &Path) -> u64 {
    let out = runledger(data, &["--json", "verify"]);
    if out.status.code() == Some(2) && stderr(&out).contains("no ledger") {
        return 0;
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    v["records"].as_u64().unwrap()
}

/// Asserts that ingesting `lines` into `data` is refused at `line`, naming
/// `what`, and leaves the ledger as it was.
fn refused(data: &Path, lines: &[&str], line: usize, what: &str) {
    let before = records(data);
    let out = ingest(data, lines);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout {} stderr {err}",
        stdout(&out)
    );
    assert!(
        err.contains(&format!("<stdin>: line {line}: ")),
        "expected line {line} in: {err}"
    );
    assert!(err.contains(what), "expected `{what}` in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(records(data), before, "nothing may be appended: {err}");
}

fn nth_cost_line(lines: &[String], n: usize) -> usize {
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"type\":\"cost_incurred\""))
        .nth(n)
        .map(|(i, _)| i)
        .unwrap()
}

#[test]
fn an_export_with_a_deleted_cost_line_is_refused_at_the_line_after_it() {
    let mut lines = sample();
    let at = nth_cost_line(&lines, 0);
    lines.remove(at);
    let dir = tempfile::tempdir().unwrap();
    // File lines count from 1: the line after the deleted one now sits at `at + 1`.
    refused(
        dir.path(),
        &refs(&lines),
        at + 1,
        &format!("record seq {} does not continue the chain", at + 2),
    );
}

#[test]
fn an_export_with_two_lines_swapped_is_refused_at_the_first() {
    let mut lines = sample();
    let at = nth_cost_line(&lines, 2);
    lines.swap(at, at + 1);
    let dir = tempfile::tempdir().unwrap();
    refused(
        dir.path(),
        &refs(&lines),
        at + 1,
        &format!(
            "record seq {} does not continue the chain: the record on line {at} is seq {at}, so seq {} is expected",
            at + 2,
            at + 1
        ),
    );
}

#[test]
fn a_record_naming_another_predecessor_is_refused() {
    // Record 11 re-signed (a valid hash over its fields) with the hash of
    // record 9 as its predecessor: its seq fits, its link does not.
    let lines = sample();
    let mut record: serde_json::Value = serde_json::from_str(&lines[10]).unwrap();
    let nine: serde_json::Value = serde_json::from_str(&lines[8]).unwrap();
    record["prev_hash"] = nine["hash"].clone();
    let event: runledger::domain::Event = serde_json::from_value(record["event"].clone()).unwrap();
    let at: runledger::domain::Timestamp =
        serde_json::from_value(record["recorded_at"].clone()).unwrap();
    let prev = blake3::Hash::from_hex(nine["hash"].as_str().unwrap()).unwrap();
    let hash = runledger::log::record::record_hash(
        11,
        at,
        &prev,
        &runledger::log::codec::encode_event(&event),
    );
    record["hash"] = serde_json::json!(hash.to_hex().as_str());
    let resigned = serde_json::to_string(&record).unwrap();
    let mut file = refs(&lines[..10]);
    file.push(&resigned);
    let dir = tempfile::tempdir().unwrap();
    refused(
        dir.path(),
        &file,
        11,
        "record seq 11: `prev_hash` is not the hash of seq 10 (line 10)",
    );
}

#[test]
fn records_from_seq_one_are_refused_by_a_non_empty_ledger() {
    let lines = sample();
    let dir = tempfile::tempdir().unwrap();
    let out = ingest(
        dir.path(),
        &[
            r#"{"type":"tenant_registered","tenant":"zeta","budget_micros":5,"max_concurrent_runs":1}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    refused(
        dir.path(),
        &refs(&lines[..3]),
        1,
        "record seq 1 does not continue the ledger: its head is seq 1, so seq 2 is expected",
    );
}

#[test]
fn records_of_another_ledger_are_refused_even_at_the_right_seq() {
    let lines = sample();
    let dir = tempfile::tempdir().unwrap();
    // Another ledger of 20 records: the sample's first 19 records, then a
    // bare event, so its head at seq 20 has a different hash.
    let mut other = refs(&lines[..19]);
    other.push(
        r#"{"type":"tenant_registered","tenant":"zeta","budget_micros":5,"max_concurrent_runs":1}"#,
    );
    let out = ingest(dir.path(), &other);
    assert!(out.status.success(), "{}", stderr(&out));
    refused(
        dir.path(),
        &refs(&lines[20..]),
        1,
        "`prev_hash` is not the hash of the ledger's head (seq 20)",
    );
}

#[test]
fn a_whole_export_reingests_with_its_seqs_times_and_hashes() {
    let lines = sample();
    let dir = tempfile::tempdir().unwrap();
    // In two parts: the second continues the head the first left.
    let out = ingest(dir.path(), &refs(&lines[..30]));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ingest(dir.path(), &refs(&lines[30..]));
    assert!(out.status.success(), "{}", stderr(&out));
    let log = runledger(dir.path(), &["log", "--json"]);
    assert!(log.status.success(), "{}", stderr(&log));
    let relogged: Vec<String> = stdout(&log).lines().map(str::to_owned).collect();
    assert_eq!(relogged, lines);
    let head: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let out = runledger(dir.path(), &["--json", "verify"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["head"], head["hash"]);
}

#[test]
fn bare_events_follow_records_but_a_record_cannot_follow_a_bare_event() {
    let lines = sample();
    let event =
        r#"{"type":"tenant_registered","tenant":"zeta","budget_micros":5,"max_concurrent_runs":1}"#;
    let dir = tempfile::tempdir().unwrap();
    refused(
        dir.path(),
        &[event, lines[0].as_str()],
        2,
        "a record cannot follow the event on line 1",
    );
    let mut file = refs(&lines);
    file.push(event);
    let out = ingest(dir.path(), &file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(records(dir.path()), lines.len() as u64 + 1);
    // And bare events alone, into a ledger that has records.
    let out = ingest(
        dir.path(),
        &[r#"{"type":"cost_incurred","tenant":"zeta","category":"llm","amount_micros":1}"#],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(records(dir.path()), lines.len() as u64 + 2);
}

/// A tenant with a budget of 1.0, one task with a ceiling of 0.1 that is
/// leased and has its ceiling reserved.
const GOVERNED: [&str; 5] = [
    r#"{"type":"tenant_registered","tenant":"acme","budget_micros":1000000,"max_concurrent_runs":4}"#,
    r#"{"type":"run_started","run":"r1","seed":1}"#,
    r#"{"type":"task_submitted","run":"r1","task":"t1","tenant":"acme","priority":"normal","deps":[],"cost_ceiling_micros":100000,"handler":"sim","params":{},"max_attempts":3}"#,
    r#"{"type":"cost_reserved","tenant":"acme","task":"t1","amount_micros":100000}"#,
    r#"{"type":"task_dequeued","task":"t1","worker":"w1","attempt":1}"#,
];

const OVERRUN_50K: &str =
    r#"{"type":"budget_overrun","tenant":"acme","task":"t1","amount_micros":50000}"#;
const COST_150K: &str = r#"{"type":"cost_incurred","tenant":"acme","task":"t1","category":"llm","amount_micros":150000}"#;

fn governed() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = ingest(dir.path(), &GOVERNED);
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

#[test]
fn a_budget_overrun_with_no_cost_behind_it_is_refused() {
    let dir = governed();
    refused(dir.path(), &[OVERRUN_50K], 1, "has no cost behind it");
    // Spend within the reservation does not justify it either.
    let within = r#"{"type":"cost_incurred","tenant":"acme","task":"t1","category":"llm","amount_micros":90000}"#;
    refused(
        dir.path(),
        &[OVERRUN_50K, within],
        1,
        "has no cost behind it",
    );
    // Nor does more overrun than the spend past the reservation.
    let overrun_60k =
        r#"{"type":"budget_overrun","tenant":"acme","task":"t1","amount_micros":60000}"#;
    refused(
        dir.path(),
        &[overrun_60k, COST_150K],
        1,
        "has no cost behind it",
    );
    // A tenant-wide overrun needs the tenant past its budget.
    let tenant_wide = r#"{"type":"budget_overrun","tenant":"acme","amount_micros":1}"#;
    refused(dir.path(), &[tenant_wide], 1, "has no cost behind it");
}

#[test]
fn a_budget_overrun_with_its_cost_is_accepted_before_or_after_it() {
    // As the settler records it: the overrun first, then the costs.
    let dir = governed();
    let out = ingest(dir.path(), &[OVERRUN_50K, COST_150K]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(records(dir.path()), GOVERNED.len() as u64 + 2);
    // The cost first, then the overrun (as older ledgers hold it).
    let dir = governed();
    let out = ingest(dir.path(), &[COST_150K, OVERRUN_50K]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A tenant-wide overrun within what the tenant spent past its budget.
    let dir = governed();
    let out = ingest(
        dir.path(),
        &[
            r#"{"type":"cost_incurred","tenant":"acme","category":"llm","amount_micros":1000500}"#,
            r#"{"type":"budget_overrun","tenant":"acme","amount_micros":600}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}
