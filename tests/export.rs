//! `runledger export`, `verify-export` and `checkpoint` as users drive
//! them: totals equal to `tenants --json`, every kind of tampering named
//! by row, tenant isolation, the CSV through a spreadsheet-style parser,
//! date filters, checkpoints kept and proven against later.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use support::bin::{runledger, runledger_bare, stderr};
use support::ledger::open_store;

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/replay/sample/ledger.jsonl");
const WORKLOAD_DAILY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/replay/daily-period/workload.toml"
);

/// `out`, once it is known to have exited 0.
fn ok(out: Output) -> Output {
    support::bin::ok(&out);
    out
}

/// The default demo: four tenants, admission denials, skips, status changes.
fn demo_ledger() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ok(runledger(&dir.path().join("data"), &["demo"]));
    dir
}

fn data(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data")
}

fn tenants_json(data: &Path) -> Vec<Value> {
    let out = ok(runledger(data, &["tenants", "--json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn export(dir: &tempfile::TempDir, tenant: &str, extra: &[&str]) -> PathBuf {
    let csv = extra.windows(2).any(|w| w == ["--format", "csv"]);
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let n = FILES.fetch_add(1, Ordering::Relaxed);
    let file = dir.path().join(format!(
        "{tenant}-{n}.{}",
        if csv { "csv" } else { "jsonl" }
    ));
    let mut args = vec![
        "export",
        "--tenant",
        tenant,
        "--out",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(runledger(&data(dir), &args));
    file
}

fn verify_export(file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["verify-export", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    // No ledger is needed (and `verify-export` takes no --data).
    runledger_bare(&args)
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn json_lines(file: &Path) -> Vec<Value> {
    lines(file)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn rows(file: &Path) -> Vec<Value> {
    json_lines(file)
        .into_iter()
        .filter(|v| {
            !["opening", "proof_node", "tenant", "proof"].contains(&v["kind"].as_str().unwrap())
        })
        .collect()
}

fn trailer(file: &Path) -> Value {
    json_lines(file).pop().unwrap()
}

/// Writes `lines` as a tampered copy and verifies it.
fn verify_lines(dir: &tempfile::TempDir, lines: &[String], extra: &[&str]) -> Output {
    let file = dir.path().join("tampered.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    verify_export(&file, extra)
}

#[track_caller]
fn assert_fails(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
}

/// Index in the file's lines of the row with `row` number.
fn line_of_row(lines: &[String], row: u64) -> usize {
    lines
        .iter()
        .position(|l| serde_json::from_str::<Value>(l).unwrap()["row"] == row)
        .unwrap()
}

fn totals_match(totals: &Value, tenant: &Value) {
    let name = &tenant["tenant"];
    for field in [
        "budget_micros",
        "spent_micros",
        "reserved_micros",
        "overrun_micros",
    ] {
        assert_eq!(totals[field], tenant[field], "{name} {field}");
    }
    assert_eq!(
        totals["spent_by_category"], tenant["spent_by_category"],
        "{name} spent_by_category"
    );
}

#[test]
fn export_totals_equal_tenants_json_for_every_tenant() {
    let demo = demo_ledger();
    let sample = tempfile::tempdir().unwrap();
    ok(runledger(&data(&sample), &["ingest", SAMPLE]));
    let daily = tempfile::tempdir().unwrap();
    ok(runledger(&data(&daily), &["run", WORKLOAD_DAILY]));
    let mut checked_kinds = std::collections::BTreeSet::new();
    for dir in [&demo, &sample, &daily] {
        for tenant in tenants_json(&data(dir)) {
            let name = tenant["tenant"].as_str().unwrap();
            let file = export(dir, name, &[]);
            ok(verify_export(&file, &[]));
            totals_match(&trailer(&file)["totals"], &tenant);
            let rows = rows(&file);
            let last = rows.last().unwrap();
            assert_eq!(last["spent_micros"], tenant["spent_micros"]);
            assert_eq!(last["reserved_micros"], tenant["reserved_micros"]);
            for row in &rows {
                checked_kinds.insert(row["kind"].as_str().unwrap().to_owned());
                assert!(row["amount_micros"].is_i64() || row["amount_micros"].is_null());
            }
        }
    }
    for kind in [
        "tenant_registered",
        "tenant_updated",
        "task_submitted",
        "cost_reserved",
        "cost_incurred",
        "reservation_released",
        "budget_overrun",
        "budget_period_reset",
        "budget_status_changed",
        "admission_denied",
        "degradation_decided",
        "task_skipped",
    ] {
        assert!(checked_kinds.contains(kind), "no {kind} row in any export");
    }
}

#[test]
fn export_spend_restarts_each_budget_period() {
    let sample = tempfile::tempdir().unwrap();
    ok(runledger(&data(&sample), &["ingest", SAMPLE]));
    let file = export(&sample, "globex", &[]);
    let rows = rows(&file);
    let reset = rows
        .iter()
        .position(|r| r["kind"] == "budget_period_reset")
        .expect("globex's period is reset in the sample");
    assert!(rows[reset - 1]["spent_micros"].as_i64().unwrap() > 0);
    assert_eq!(rows[reset]["spent_micros"], 0);
    assert_eq!(
        rows[reset]["period"],
        rows[reset - 1]["period"].as_u64().unwrap() + 1
    );
}

#[test]
fn export_of_one_tenant_holds_nothing_of_another() {
    let dir = demo_ledger();
    let tenants: Vec<String> = tenants_json(&data(&dir))
        .iter()
        .map(|t| t["tenant"].as_str().unwrap().to_owned())
        .collect();
    let (a, others) = tenants.split_first().unwrap();
    let ledger_id = json_lines(&export(&dir, a, &[]))[0]["ledger_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for format in ["jsonl", "csv"] {
        let file = export(&dir, a, &["--format", format]);
        let text = std::fs::read_to_string(&file).unwrap();
        for b in others {
            let log = ok(runledger(&data(&dir), &["log", "--json", "--tenant", b]));
            // B's tag neither: only hashes over it (a tenants-tree node).
            let tag = runledger::audit::tenants::tenant_tag(&ledger_id, b);
            let mut needles = vec![b.clone(), hex(b.as_bytes()), hex(&tag)];
            for line in String::from_utf8_lossy(&log.stdout).lines() {
                let record: Value = serde_json::from_str(line).unwrap();
                if let Some(task) = record["event"]["task"].as_str() {
                    needles.push(task.to_owned());
                }
            }
            // (Hashes of B's records may appear, as a row's prev_hash or a
            // proof node: they reveal nothing of what the records hold.)
            assert!(needles.len() > 10, "{b} has records");
            for needle in &needles {
                assert!(
                    !text.contains(needle.as_str()),
                    "{format} export of {a} shows `{needle}`"
                );
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A demo ledger and the JSONL export of its tenant `initech` (denials,
/// skips, status changes among its rows).
fn exported() -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let dir = demo_ledger();
    let file = export(&dir, "initech", &[]);
    let lines = lines(&file);
    ok(verify_export(&file, &[]));
    (dir, file, lines)
}

fn edit(line: &str, field: &str, value: Value) -> String {
    let mut v: Value = serde_json::from_str(line).unwrap();
    v[field] = value;
    serde_json::to_string(&v).unwrap()
}

#[test]
fn verify_export_names_an_edited_amount() {
    let (dir, _, mut lines) = exported();
    let i = lines
        .iter()
        .position(|l| l.contains("\"kind\":\"cost_incurred\""))
        .unwrap();
    let row: Value = serde_json::from_str(&lines[i]).unwrap();
    let amount = row["amount_micros"].as_i64().unwrap();
    lines[i] = edit(&lines[i], "amount_micros", Value::from(amount + 1));
    let out = verify_lines(&dir, &lines, &[]);
    let place = format!("line {} (row {}, seq {})", i + 1, row["row"], row["seq"]);
    assert_fails(&out, &[&place, "field amount_micros", &amount.to_string()]);
}

#[test]
fn verify_export_names_an_edited_hash_and_an_edited_event() {
    let (dir, _, lines) = exported();
    let i = line_of_row(&lines, 7);
    let row: Value = serde_json::from_str(&lines[i]).unwrap();
    let mut hash = row["hash"].as_str().unwrap().to_owned();
    hash.replace_range(0..1, if hash.starts_with('0') { "1" } else { "0" });
    let mut edited = lines.clone();
    edited[i] = edit(&lines[i], "hash", Value::from(hash));
    assert_fails(&verify_lines(&dir, &edited, &[]), &["row 7,", "field hash"]);

    let mut bytes = row["event_hex"].as_str().unwrap().to_owned();
    let last = bytes.pop().unwrap();
    bytes.push(if last == '0' { '1' } else { '0' });
    let mut edited = lines.clone();
    edited[i] = edit(&lines[i], "event_hex", Value::from(bytes));
    assert_fails(&verify_lines(&dir, &edited, &[]), &["row 7,", "field hash"]);
}

#[test]
fn verify_export_names_a_dropped_first_middle_and_last_row() {
    let (dir, file, lines) = exported();
    let rows = rows(&file);
    let n = rows.len() as u64;
    for dropped in [1, n / 2, n] {
        let seq = rows[dropped as usize - 1]["seq"].to_string();
        let mut edited = lines.clone();
        edited.remove(line_of_row(&lines, dropped));
        let out = verify_lines(&dir, &edited, &[]);
        assert_fails(&out, &[&format!("seq {seq}"), "dropped"]);
    }
}

#[test]
fn verify_export_names_an_added_duplicated_or_foreign_row() {
    let (dir, _, lines) = exported();
    let i = line_of_row(&lines, 5);
    let mut duplicated = lines.clone();
    duplicated.insert(i + 1, lines[i].clone());
    let out = verify_lines(&dir, &duplicated, &[]);
    assert_fails(&out, &[&format!("line {} (row 5,", i + 2), "added"]);

    // A genuine row of another tenant, renumbered to fit.
    let other = export(&dir, "acme", &[]);
    let foreign = rows(&other)
        .into_iter()
        .find(|r| r["kind"] == "cost_incurred")
        .unwrap();
    let mut added = lines.clone();
    let mut at = None;
    for (k, line) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["seq"]
            .as_u64()
            .is_some_and(|s| s > foreign["seq"].as_u64().unwrap())
        {
            at = Some(k);
            break;
        }
    }
    let at = at.unwrap();
    added.insert(at, serde_json::to_string(&foreign).unwrap());
    let out = verify_lines(&dir, &added, &[]);
    assert_fails(
        &out,
        &[
            &format!("line {}", at + 1),
            &format!("seq {}", foreign["seq"]),
        ],
    );
}

#[test]
fn verify_export_names_two_swapped_rows() {
    let (dir, _, mut lines) = exported();
    let (i, j) = (line_of_row(&lines, 10), line_of_row(&lines, 11));
    lines.swap(i, j);
    let out = verify_lines(&dir, &lines, &[]);
    assert_fails(&out, &[&format!("line {}", i + 1), "row 11"]);
}

#[test]
fn verify_export_catches_an_edited_proof_node_total_and_head() {
    let (dir, file, lines) = exported();
    let node = lines
        .iter()
        .position(|l| l.contains("\"kind\":\"proof_node\""))
        .unwrap();
    let mut edited = lines.clone();
    edited[node] = edit(&lines[node], "hash", Value::from("ab".repeat(32)));
    assert_fails(&verify_lines(&dir, &edited, &[]), &["(proof)", "root"]);

    // A running total in a row.
    let i = line_of_row(&lines, 20);
    let row: Value = serde_json::from_str(&lines[i]).unwrap();
    let mut edited = lines.clone();
    let spent = row["spent_micros"].as_i64().unwrap() + 5;
    edited[i] = edit(&lines[i], "spent_micros", Value::from(spent));
    assert_fails(
        &verify_lines(&dir, &edited, &[]),
        &["row 20,", "field spent_micros"],
    );

    // A closing total.
    let last = lines.len() - 1;
    let mut proof: Value = serde_json::from_str(&lines[last]).unwrap();
    proof["totals"]["reserved_micros"] = Value::from(1);
    let mut edited = lines.clone();
    edited[last] = serde_json::to_string(&proof).unwrap();
    assert_fails(
        &verify_lines(&dir, &edited, &[]),
        &["closing totals", "reserved_micros"],
    );

    // The head: right, a checkpoint-style root, wrong.
    let trailer = trailer(&file);
    let head = trailer["head_hash"].as_str().unwrap();
    let root = trailer["root"].as_str().unwrap();
    let verified = ok(runledger(&data(&dir), &["verify"]));
    assert!(String::from_utf8_lossy(&verified.stdout).contains(head));
    ok(verify_export(&file, &["--head", head]));
    ok(verify_export(&file, &["--head", root]));
    let wrong = "cd".repeat(32);
    assert_fails(
        &verify_export(&file, &["--head", &wrong]),
        &["--head", &wrong],
    );
}

#[test]
fn verify_export_of_unreadable_or_cut_input_exits_2() {
    let (dir, _, lines) = exported();
    let garbage = dir.path().join("garbage.txt");
    std::fs::write(&garbage, "hello\n").unwrap();
    assert_eq!(verify_export(&garbage, &[]).status.code(), Some(2));
    let cut = verify_lines(&dir, &lines[..lines.len() - 1], &[]);
    assert_eq!(cut.status.code(), Some(2), "{}", stderr(&cut));
    assert!(stderr(&cut).contains("cut short"), "{}", stderr(&cut));
    let mut broken = lines.clone();
    broken[3].truncate(10);
    let out = verify_lines(&dir, &broken, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("line 4"), "{}", stderr(&out));
    let missing = verify_export(&dir.path().join("missing.jsonl"), &[]);
    assert_eq!(missing.status.code(), Some(2));

    // A hostile tree size is refused at once, not enumerated.
    let last = lines.len() - 1;
    let mut proof: Value = serde_json::from_str(&lines[last]).unwrap();
    proof["tree_size"] = Value::from(u64::MAX);
    proof["head_seq"] = Value::from(u64::MAX);
    let mut huge = lines.clone();
    huge[last] = serde_json::to_string(&proof).unwrap();
    assert_fails(&verify_lines(&dir, &huge, &[]), &["uncovered"]);

    // A row appended after the proof line.
    let mut appended = lines.clone();
    appended.push(lines[3].clone());
    assert_fails(
        &verify_lines(&dir, &appended, &[]),
        &[&format!("line {}", lines.len() + 1), "after the proof"],
    );
}

/// `1.234567` → 1234567, by string: no floats.
fn units_to_micros(text: &str) -> i64 {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let (whole, fraction) = digits.split_once('.').expect("a decimal point");
    assert_eq!(fraction.len(), 6, "six decimals in `{text}`");
    sign * (whole.parse::<i64>().unwrap() * 1_000_000 + fraction.parse::<i64>().unwrap())
}

#[test]
fn csv_export_round_trips_through_a_spreadsheet_style_parser() {
    let dir = demo_ledger();
    let file = export(&dir, "umbrella", &["--format", "csv"]);
    ok(verify_export(&file, &[]));
    let mut reader = csv::Reader::from_path(&file).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header[..3], ["row", "seq", "recorded_at"]);
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let mut data_rows = 0;
    for record in &records {
        assert_eq!(record.len(), header.len(), "the file is rectangular");
        if ["opening", "proof_node", "tenant", "proof"].contains(&&record[column("kind")]) {
            serde_json::from_str::<Value>(&record[column("detail")]).unwrap();
            continue;
        }
        data_rows += 1;
        for (units, micros) in [
            ("amount", "amount_micros"),
            ("spent", "spent_micros"),
            ("reserved", "reserved_micros"),
        ] {
            if record[column(micros)].is_empty() {
                assert!(record[column(units)].is_empty());
                continue;
            }
            let micros: i64 = record[column(micros)].parse().unwrap();
            assert_eq!(units_to_micros(&record[column(units)]), micros);
        }
    }
    assert_eq!(data_rows, rows(&export(&dir, "umbrella", &[])).len());
    assert_eq!(&records[records.len() - 1][column("kind")], "proof");

    // Saved again by the "spreadsheet", it still verifies.
    let saved = dir.path().join("saved.csv");
    let mut writer = csv::Writer::from_path(&saved).unwrap();
    writer.write_record(&header).unwrap();
    for record in &records {
        writer.write_record(record).unwrap();
    }
    writer.flush().unwrap();
    ok(verify_export(&saved, &[]));

    // An amount edited in units is named.
    let row = records
        .iter()
        .position(|r| &r[column("kind")] == "cost_incurred")
        .unwrap();
    let mut writer = csv::Writer::from_path(&saved).unwrap();
    writer.write_record(&header).unwrap();
    for (k, record) in records.iter().enumerate() {
        let mut cells: Vec<String> = record.iter().map(str::to_owned).collect();
        if k == row {
            cells[column("amount")] = "9.999999".to_owned();
        }
        writer.write_record(&cells).unwrap();
    }
    writer.flush().unwrap();
    let row_no = &records[row][column("row")];
    assert_fails(
        &verify_export(&saved, &[]),
        &[&format!("row {row_no},"), "field amount"],
    );
}

#[test]
fn export_date_filters_keep_true_running_totals() {
    let dir = demo_ledger();
    let full = export(&dir, "initech", &[]);
    let all = rows(&full);
    let k = (all.len() / 2..all.len())
        .find(|&k| all[k]["recorded_at_micros"] != all[k - 1]["recorded_at_micros"])
        .expect("time moves during the demo");
    let cutoff = all[k]["recorded_at"].as_str().unwrap();

    let from = export(&dir, "initech", &["--from", cutoff]);
    ok(verify_export(&from, &[]));
    let from_rows = rows(&from);
    assert_eq!(from_rows[0]["seq"], all[k]["seq"]);
    assert_eq!(from_rows[0]["spent_micros"], all[k]["spent_micros"]);
    assert_eq!(from_rows.len(), all.len() - k);
    let opening = &json_lines(&from)[0]["totals"];
    assert_eq!(opening["spent_micros"], all[k - 1]["spent_micros"]);
    assert_eq!(opening["reserved_micros"], all[k - 1]["reserved_micros"]);
    assert_eq!(trailer(&from)["totals"], trailer(&full)["totals"]);

    let to = export(&dir, "initech", &["--to", cutoff]);
    ok(verify_export(&to, &[]));
    let to_rows = rows(&to);
    assert_eq!(to_rows.len(), k, "--to is exclusive");
    assert_eq!(
        trailer(&to)["totals"]["spent_micros"],
        all[k - 1]["spent_micros"]
    );

    let first_day = &all[0]["recorded_at"].as_str().unwrap()[..10];
    let whole = export(
        &dir,
        "initech",
        &["--from", first_day, "--to", "2999-01-01"],
    );
    assert_eq!(rows(&whole).len(), all.len());
    let later = export(&dir, "initech", &["--from", "2999-01-01"]);
    ok(verify_export(&later, &[]));
    assert!(rows(&later).is_empty());
    assert_eq!(trailer(&later)["totals"], trailer(&full)["totals"]);

    let backwards = runledger(
        &data(&dir),
        &[
            "export",
            "--tenant",
            "initech",
            "--from",
            "2999-01-01",
            "--to",
            "2000-01-01",
        ],
    );
    assert_eq!(backwards.status.code(), Some(2));
    let bad = runledger(
        &data(&dir),
        &["export", "--tenant", "initech", "--from", "May 1"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("YYYY-MM-DD"), "{}", stderr(&bad));
    let unknown = runledger(&data(&dir), &["export", "--tenant", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("nobody"));
}

fn checkpoint(data: &Path) -> Value {
    let out = ok(runledger(data, &["checkpoint", "--json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn export_against_a_kept_checkpoint_verifies_after_the_ledger_grew() {
    let dir = demo_ledger();
    let kept = checkpoint(&data(&dir));
    let seq = kept["seq"].as_u64().unwrap();
    let root = kept["root"].as_str().unwrap().to_owned();
    ok(runledger(&data(&dir), &["demo", "--seed", "7"]));
    let verified = ok(runledger(&data(&dir), &["verify", "--json"]));
    let verified: Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(verified["published_checkpoints"], 1);
    assert!(verified["head_seq"].as_u64().unwrap() > seq);

    let file = export(&dir, "globex", &["--checkpoint", &seq.to_string()]);
    ok(verify_export(&file, &["--head", &root]));
    ok(verify_export(
        &file,
        &["--head", kept["head"].as_str().unwrap()],
    ));
    assert_eq!(trailer(&file)["tree_size"], seq);
    assert!(
        rows(&file)
            .iter()
            .all(|r| r["seq"].as_u64().unwrap() <= seq)
    );

    // Today's export is of a larger tree: it does not prove the kept root.
    let today = export(&dir, "globex", &[]);
    assert_fails(&verify_export(&today, &["--head", &root]), &["--head"]);
    let missing = runledger(
        &data(&dir),
        &["export", "--tenant", "globex", "--checkpoint", "3"],
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("no published checkpoint at seq 3"));
}

#[test]
fn verify_catches_a_tampered_published_checkpoint() {
    let dir = demo_ledger();
    let kept = checkpoint(&data(&dir));
    let seq = kept["seq"].as_u64().unwrap();
    for field in ["root", "head"] {
        {
            let store = open_store(&data(&dir));
            let published = store.published().unwrap();
            let mut forged = published[0];
            match field {
                "root" => forged.root[0] ^= 1,
                _ => forged.head[0] ^= 1,
            }
            store.write_published(forged).unwrap();
            store.flush(true).unwrap();
        }
        let out = runledger(&data(&dir), &["verify"]);
        assert_fails(&out, &[&format!("seq {seq}"), "published checkpoint"]);
        let export = runledger(
            &data(&dir),
            &[
                "export",
                "--tenant",
                "acme",
                "--checkpoint",
                &seq.to_string(),
            ],
        );
        assert_eq!(export.status.code(), Some(1), "{}", stderr(&export));
        // Put it right again for the next field.
        checkpoint(&data(&dir));
        ok(runledger(&data(&dir), &["verify"]));
    }
}

// ---------------------------------------------------------------------
// Completeness: an attacker who holds the file drops a row and rebuilds
// everything the file lets them rebuild (the records multi-proof from
// the file's own hashes, the running, opening and closing totals, the
// tenant subtree's nodes); verify-export still fails against a checkpoint
// root the auditor kept.

use runledger::audit::export::Totals;
use runledger::audit::merkle::{Domain, checkpoint_root, leaf_hash};
use runledger::audit::tenants::row_leaf;
use runledger::domain::{Category, Timestamp};
use runledger::log::codec::decode_event;
use runledger::log::record::record_hash;
use std::collections::BTreeMap;

fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn unparse(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .map(|v| serde_json::to_string(v).unwrap())
        .collect()
}

fn h(text: &Value) -> blake3::Hash {
    blake3::Hash::from_hex(text.as_str().unwrap()).unwrap()
}

fn is_row(v: &Value) -> bool {
    !["opening", "proof_node", "tenant", "proof"].contains(&v["kind"].as_str().unwrap())
}

fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The hash of leaves `[lo, hi)` (0-based) from known nodes (keyed by
/// 1-based `(first, last)`) and known leaves (1-based).
fn subtree_hash(
    domain: Domain,
    lo: u64,
    hi: u64,
    nodes: &BTreeMap<(u64, u64), blake3::Hash>,
    leaves: &BTreeMap<u64, blake3::Hash>,
) -> blake3::Hash {
    if let Some(hash) = nodes.get(&(lo + 1, hi)) {
        return *hash;
    }
    if hi - lo == 1 {
        return *leaves
            .get(&hi)
            .unwrap_or_else(|| panic!("leaf {hi} unknown"));
    }
    let mid = lo + split(hi - lo);
    domain.node(
        &subtree_hash(domain, lo, mid, nodes, leaves),
        &subtree_hash(domain, mid, hi, nodes, leaves),
    )
}

/// The multi-proof nodes for `proven` (1-based, increasing) in a tree of
/// `size`, computed from what the file reveals — what a forger can do.
fn rebuild_nodes(
    domain: Domain,
    size: u64,
    proven: &[u64],
    nodes: &BTreeMap<(u64, u64), blake3::Hash>,
    leaves: &BTreeMap<u64, blake3::Hash>,
) -> Vec<(u64, u64, blake3::Hash)> {
    fn walk(
        domain: Domain,
        lo: u64,
        hi: u64,
        proven: &[u64],
        nodes: &BTreeMap<(u64, u64), blake3::Hash>,
        leaves: &BTreeMap<u64, blake3::Hash>,
        out: &mut Vec<(u64, u64, blake3::Hash)>,
    ) {
        if proven.is_empty() {
            out.push((lo + 1, hi, subtree_hash(domain, lo, hi, nodes, leaves)));
            return;
        }
        if hi - lo == 1 {
            return;
        }
        let mid = lo + split(hi - lo);
        let cut = proven.partition_point(|&p| p <= mid);
        walk(domain, lo, mid, &proven[..cut], nodes, leaves, out);
        walk(domain, mid, hi, &proven[cut..], nodes, leaves, out);
    }
    let mut out = Vec::new();
    walk(domain, 0, size, proven, nodes, leaves, &mut out);
    out
}

/// Rewrites the records multi-proof of the file for the rows it now
/// holds, from the hashes the original file revealed (`known` leaves:
/// every original row's record hash by seq).
fn rebuild_records_proof(values: &mut Vec<Value>, known: &BTreeMap<u64, blake3::Hash>) {
    let proof = values.last().unwrap().clone();
    let size = proof["tree_size"].as_u64().unwrap();
    let mut nodes = BTreeMap::new();
    for v in values.iter().filter(|v| v["kind"] == "proof_node") {
        nodes.insert(
            (
                v["first_seq"].as_u64().unwrap(),
                v["last_seq"].as_u64().unwrap(),
            ),
            h(&v["hash"]),
        );
    }
    let mut leaves: BTreeMap<u64, blake3::Hash> =
        known.iter().map(|(&s, r)| (s, leaf_hash(r))).collect();
    leaves.insert(size, leaf_hash(&h(&proof["head_hash"])));
    let mut proven: Vec<u64> = values
        .iter()
        .filter(|v| is_row(v))
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    if proven.last() != Some(&size) {
        proven.push(size);
    }
    let rebuilt = rebuild_nodes(Domain::RECORDS, size, &proven, &nodes, &leaves);
    let at = values
        .iter()
        .position(|v| v["kind"] == "proof_node")
        .unwrap();
    values.retain(|v| v["kind"] != "proof_node");
    for (k, (first, last, hash)) in rebuilt.into_iter().enumerate() {
        let node = serde_json::json!({
            "kind": "proof_node", "first_seq": first, "last_seq": last,
            "hash": hash.to_hex().to_string(),
        });
        values.insert(at + k, node);
    }
    let rows = values.iter().filter(|v| is_row(v)).count();
    let last = values.len() - 1;
    values[last]["rows"] = Value::from(rows);
}

/// Renumbers the rows and refolds every running total, the opening totals
/// (after `before`, events of rows moved out in front) and the closing
/// totals, with the verifier's own arithmetic.
fn refold(values: &mut [Value], before: &[Value]) {
    let event = |row: &Value| {
        let hex = row["event_hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        decode_event(&bytes).unwrap()
    };
    let opening: runledger::audit::export::TotalsView =
        serde_json::from_value(values[0]["totals"].clone()).unwrap();
    let mut totals = Totals::from_view(&opening).unwrap();
    for row in before {
        totals.apply(&event(row)).unwrap();
    }
    values[0]["totals"] = serde_json::to_value(totals.view().unwrap()).unwrap();
    let mut number = 0;
    for v in values.iter_mut().filter(|v| is_row(v)) {
        number += 1;
        totals.apply(&event(v)).unwrap();
        v["row"] = Value::from(number);
        v["budget_micros"] = Value::from(totals.budget_micros);
        v["spent_micros"] = Value::from(totals.spent_micros().unwrap());
        v["reserved_micros"] = Value::from(totals.reserved_micros);
        v["period"] = Value::from(totals.period);
        if let Some(name) = v["category"].as_str() {
            let c = Category::ALL.iter().find(|c| c.name() == name).unwrap();
            v["category_spent_micros"] = Value::from(totals.spent_by_category[c.index()]);
        }
    }
    let last = values.len() - 1;
    values[last]["totals"] = serde_json::to_value(totals.view().unwrap()).unwrap();
}

fn row_hashes(values: &[Value]) -> BTreeMap<u64, blake3::Hash> {
    values
        .iter()
        .filter(|v| is_row(v))
        .map(|v| (v["seq"].as_u64().unwrap(), h(&v["hash"])))
        .collect()
}

fn tenant_line(values: &mut [Value]) -> &mut Value {
    values.iter_mut().find(|v| v["kind"] == "tenant").unwrap()
}

/// A demo ledger with a kept checkpoint, and the export of `initech`.
fn exported_with_checkpoint(extra: &[&str]) -> (tempfile::TempDir, String, Vec<Value>) {
    let dir = demo_ledger();
    let root = checkpoint(&data(&dir))["root"].as_str().unwrap().to_owned();
    let file = export(&dir, "initech", extra);
    ok(verify_export(&file, &["--head", &root]));
    (dir, root, parse(&lines(&file)))
}

fn verify_values(dir: &tempfile::TempDir, values: &[Value], root: &str) -> Output {
    verify_lines(dir, &unparse(values), &["--head", root])
}

#[test]
fn verify_export_catches_a_middle_row_dropped_with_a_rebuilt_proof_and_totals() {
    let (dir, root, original) = exported_with_checkpoint(&[]);
    let known = row_hashes(&original);
    let rows: Vec<usize> = (0..original.len())
        .filter(|&i| is_row(&original[i]))
        .collect();
    let victim = rows[rows.len() / 2..]
        .iter()
        .copied()
        .find(|&i| original[i]["kind"] == "cost_incurred")
        .unwrap();
    let (before, after) = (
        original[victim - 1]["seq"].to_string(),
        original[victim + 1]["seq"].to_string(),
    );
    let mut values = original.clone();
    values.remove(victim);
    rebuild_records_proof(&mut values, &known);
    refold(&mut values, &[]);
    // Without the tenant commitment this file would pass: the rows, the
    // records proof and every total hold together.
    let out = verify_values(&dir, &values, &root);
    assert_fails(&out, &["(tenant)", "missing"]);

    // The forger also folds the dropped leaf into a subtree node.
    let position = rows.iter().position(|&i| i == victim).unwrap() as u64 + 1;
    let count = tenant_line(&mut values)["count"].as_u64().unwrap();
    let mut leaves = BTreeMap::new();
    for (k, &i) in rows.iter().enumerate() {
        let v = &original[i];
        let leaf = row_leaf(
            v["seq"].as_u64().unwrap(),
            v["recorded_at_micros"].as_i64().unwrap(),
            &h(&v["hash"]),
        );
        leaves.insert(k as u64 + 1, leaf);
    }
    let proven: Vec<u64> = (1..=count).filter(|&p| p != position).collect();
    let nodes = rebuild_nodes(Domain::TENANT, count, &proven, &BTreeMap::new(), &leaves);
    assert_eq!(nodes.len(), 1, "one node: the dropped leaf");
    tenant_line(&mut values)["nodes"] = serde_json::json!([{
        "first": nodes[0].0, "last": nodes[0].1, "hash": nodes[0].2.to_hex().to_string(),
    }]);
    let out = verify_values(&dir, &values, &root);
    assert_fails(
        &out,
        &[
            &format!("leaf {position} of the tenant"),
            &format!("between seq {before} and seq {after}"),
            "missing",
        ],
    );

    // Or renumbers the subtree without the dropped leaf: the count and
    // subroot no longer give the tenants root the checkpoint holds.
    let mut acc = runledger::audit::merkle::Accumulator::new(Domain::TENANT);
    for (&p, leaf) in &leaves {
        if p != position {
            acc.push_leaf(*leaf);
        }
    }
    let t = tenant_line(&mut values);
    t["nodes"] = serde_json::json!([]);
    t["count"] = Value::from(count - 1);
    t["subroot"] = Value::from(acc.root().to_hex().to_string());
    assert_fails(
        &verify_values(&dir, &values, &root),
        &["(tenant)", "tenants root"],
    );
}

/// A window with rows on both sides of it, and the export of it.
fn windowed() -> (tempfile::TempDir, String, Vec<Value>) {
    let dir = demo_ledger();
    let all = rows(&export(&dir, "initech", &[]));
    let moves = |from: usize| {
        (from..all.len())
            .find(|&k| all[k]["recorded_at_micros"] != all[k - 1]["recorded_at_micros"])
            .unwrap()
    };
    let (a, b) = (moves(all.len() / 3), moves(2 * all.len() / 3));
    let from = all[a]["recorded_at"].as_str().unwrap().to_owned();
    let to = all[b]["recorded_at"].as_str().unwrap().to_owned();
    let root = checkpoint(&data(&dir))["root"].as_str().unwrap().to_owned();
    let file = export(&dir, "initech", &["--from", &from, "--to", &to]);
    ok(verify_export(&file, &["--head", &root]));
    let values = parse(&lines(&file));
    let t = values.iter().find(|v| v["kind"] == "tenant").unwrap();
    assert!(t["left"].is_object() && t["right"].is_object(), "{t}");
    assert_eq!(rows(&file).len(), b - a);
    (dir, root, values)
}

/// Moves the first (or last) row of a windowed export into the boundary
/// leaf, rebuilding the subtree nodes, the records proof and the totals.
fn move_boundary(values: &[Value], first: bool) -> Vec<Value> {
    let known = row_hashes(values);
    let mut values = values.to_vec();
    let t = tenant_line(&mut values).clone();
    let count = t["count"].as_u64().unwrap();
    let (left, right) = (&t["left"], &t["right"]);
    let leaf_of = |v: &Value| {
        row_leaf(
            v["seq"].as_u64().unwrap(),
            v["recorded_at_micros"].as_i64().unwrap(),
            &h(&v["hash"]),
        )
    };
    let first_leaf = left["leaf"].as_u64().unwrap() + 1;
    let row_indices: Vec<usize> = (0..values.len()).filter(|&i| is_row(&values[i])).collect();
    let mut leaves = BTreeMap::new();
    leaves.insert(left["leaf"].as_u64().unwrap(), leaf_of(left));
    leaves.insert(right["leaf"].as_u64().unwrap(), leaf_of(right));
    for (k, &i) in row_indices.iter().enumerate() {
        leaves.insert(first_leaf + k as u64, leaf_of(&values[i]));
    }
    let mut nodes = BTreeMap::new();
    for n in t["nodes"].as_array().unwrap() {
        nodes.insert(
            (n["first"].as_u64().unwrap(), n["last"].as_u64().unwrap()),
            h(&n["hash"]),
        );
    }
    let victim = if first {
        row_indices[0]
    } else {
        *row_indices.last().unwrap()
    };
    let moved = values.remove(victim);
    let (lo, hi) = if first {
        (first_leaf, right["leaf"].as_u64().unwrap())
    } else {
        (
            left["leaf"].as_u64().unwrap(),
            first_leaf + row_indices.len() as u64 - 1,
        )
    };
    let proven: Vec<u64> = (lo..=hi).collect();
    let rebuilt = rebuild_nodes(Domain::TENANT, count, &proven, &nodes, &leaves);
    let position = if first { lo } else { hi };
    let boundary = serde_json::json!({
        "leaf": position, "seq": moved["seq"],
        "recorded_at_micros": moved["recorded_at_micros"], "hash": moved["hash"],
    });
    let tl = tenant_line(&mut values);
    tl[if first { "left" } else { "right" }] = boundary;
    tl["nodes"] = rebuilt
        .iter()
        .map(|(f, l, hash)| serde_json::json!({"first": f, "last": l, "hash": hash.to_hex().to_string()}))
        .collect();
    rebuild_records_proof(&mut values, &known);
    if first {
        refold(&mut values, &[moved]);
    } else {
        refold(&mut values, &[]);
    }
    values
}

#[test]
fn verify_export_catches_the_first_or_last_row_of_a_window_moved_into_the_boundary() {
    let (dir, root, values) = windowed();
    let out = verify_values(&dir, &move_boundary(&values, true), &root);
    assert_fails(&out, &["(tenant)", "before --from", "dropped at the start"]);
    let out = verify_values(&dir, &move_boundary(&values, false), &root);
    assert_fails(&out, &["(tenant)", "before --to", "dropped at the end"]);
}

#[test]
fn verify_export_catches_a_forged_boundary_time_count_and_path() {
    let (dir, root, values) = windowed();
    let mut edited = values.clone();
    let t = tenant_line(&mut edited);
    let at = t["left"]["recorded_at_micros"].as_i64().unwrap();
    t["left"]["recorded_at_micros"] = Value::from(at - 1);
    assert_fails(
        &verify_values(&dir, &edited, &root),
        &["(tenant)", "subroot"],
    );

    for delta in [1i64, -1] {
        let mut edited = values.clone();
        let t = tenant_line(&mut edited);
        let count = t["count"].as_i64().unwrap();
        t["count"] = Value::from(count + delta);
        assert_fails(&verify_values(&dir, &edited, &root), &["(tenant)"]);
    }

    let mut edited = values.clone();
    let t = tenant_line(&mut edited);
    let mut hash = t["tenants_path"][0]["hash"].as_str().unwrap().to_owned();
    hash.replace_range(0..1, if hash.starts_with('0') { "1" } else { "0" });
    t["tenants_path"][0]["hash"] = Value::from(hash);
    assert_fails(
        &verify_values(&dir, &edited, &root),
        &["(tenant)", "tenants root"],
    );
    let mut edited = values.clone();
    let t = tenant_line(&mut edited);
    let position = t["tenant_position"].as_u64().unwrap();
    t["tenant_position"] = Value::from(if position == 1 { 2 } else { position - 1 });
    assert_fails(&verify_values(&dir, &edited, &root), &["(tenant)"]);
}

#[test]
fn verify_export_catches_a_forged_row_with_rebuilt_proofs() {
    let (dir, root, original) = exported_with_checkpoint(&[]);
    let known = row_hashes(&original);
    let size = original.last().unwrap()["tree_size"].as_u64().unwrap();
    // A copy of row r's event at seq r + 1, another tenant's record that is
    // a one-leaf proof node (r + 1 is r's sibling), linked to row r.
    let i = (0..original.len())
        .find(|&i| {
            let v = &original[i];
            let Some(r) = v["seq"].as_u64().filter(|_| is_row(v)) else {
                return false;
            };
            (r - 1) % 2 == 0
                && r + 2 < size
                && !known.contains_key(&(r + 1))
                && !known.contains_key(&(r + 2))
        })
        .unwrap();
    let r = original[i]["seq"].as_u64().unwrap();
    let mut forged = original[i].clone();
    let at = Timestamp(forged["recorded_at_micros"].as_i64().unwrap());
    let hex = forged["event_hex"].as_str().unwrap().to_owned();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).unwrap())
        .collect();
    let prev = h(&original[i]["hash"]);
    let hash = record_hash(r + 1, at, &prev, &bytes);
    forged["seq"] = Value::from(r + 1);
    forged["prev_hash"] = Value::from(prev.to_hex().to_string());
    forged["hash"] = Value::from(hash.to_hex().to_string());
    let mut values = original.clone();
    values.insert(i + 1, forged);
    values.retain(|v| {
        !(v["kind"] == "proof_node" && v["first_seq"] == r + 1 && v["last_seq"] == r + 1)
    });
    refold(&mut values, &[]);
    // Restate the records root and the checkpoint root the rows now give.
    let mut nodes = BTreeMap::new();
    for v in values.iter().filter(|v| v["kind"] == "proof_node") {
        let key = (
            v["first_seq"].as_u64().unwrap(),
            v["last_seq"].as_u64().unwrap(),
        );
        nodes.insert(key, h(&v["hash"]));
    }
    let mut leaves: BTreeMap<u64, blake3::Hash> = row_hashes(&values)
        .iter()
        .map(|(&s, r)| (s, leaf_hash(r)))
        .collect();
    let last = values.len() - 1;
    leaves.insert(size, leaf_hash(&h(&values[last]["head_hash"])));
    let records_root = subtree_hash(Domain::RECORDS, 0, size, &nodes, &leaves);
    let tenants_root = h(&values[last]["tenants_root"]);
    values[last]["records_root"] = Value::from(records_root.to_hex().to_string());
    let forged_root = checkpoint_root(&records_root, &tenants_root);
    values[last]["root"] = Value::from(forged_root.to_hex().to_string());
    values[last]["rows"] = Value::from(known.len() + 1);
    // The rows and the records proof hold together; the tenant's subtree
    // has one leaf fewer than the rows.
    let out = verify_lines(&dir, &unparse(&values), &[]);
    assert_fails(&out, &["(tenant)", "a row was added"]);
    assert_fails(&verify_values(&dir, &values, &root), &["(tenant)"]);
}

#[test]
fn verify_catches_an_altered_tenants_root_in_a_published_checkpoint() {
    let dir = demo_ledger();
    let kept = checkpoint(&data(&dir));
    let seq = kept["seq"].as_u64().unwrap();
    {
        let store = open_store(&data(&dir));
        let mut forged = store.published().unwrap()[0];
        forged.tenants_root[0] ^= 1;
        store.write_published(forged).unwrap();
        store.flush(true).unwrap();
    }
    let out = runledger(&data(&dir), &["verify"]);
    assert_fails(
        &out,
        &[
            &format!("seq {seq}"),
            "tenants root",
            "published checkpoint",
        ],
    );
    let export = runledger(
        &data(&dir),
        &[
            "export",
            "--tenant",
            "acme",
            "--checkpoint",
            &seq.to_string(),
        ],
    );
    assert_eq!(export.status.code(), Some(1), "{}", stderr(&export));

    // A value of another layout is a damaged ledger at that seq, not a panic.
    {
        let store = open_store(&data(&dir));
        let tree = store.published_tree().unwrap();
        let (key, _) = tree.iter().next().unwrap().unwrap();
        tree.insert(key, vec![1u8; 40]).unwrap();
        store.flush(true).unwrap();
    }
    let out = runledger(&data(&dir), &["verify"]);
    assert_fails(&out, &["published checkpoint cannot be decoded"]);
}
