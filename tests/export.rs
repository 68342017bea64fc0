//! `runledger export`, `verify-export` and `checkpoint` as users drive
//! them: totals equal to `tenants --json`, every kind of tampering named
//! by row, tenant isolation, the CSV through a spreadsheet-style parser,
//! date filters, checkpoints kept and proven against later.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use runledger::log::Store;
use serde_json::Value;

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/replay/sample/ledger.jsonl");
const WORKLOAD_DAILY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/replay/daily-period/workload.toml"
);

fn runledger(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runledger"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("RUNLEDGER_DATA")
        .output()
        .unwrap()
}

fn ok(out: Output) -> Output {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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
    // No ledger is needed: point --data at nothing.
    runledger(Path::new("/nonexistent-runledger-data"), &args)
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
    for format in ["jsonl", "csv"] {
        let file = export(&dir, a, &["--format", format]);
        let text = std::fs::read_to_string(&file).unwrap();
        for b in others {
            let log = ok(runledger(&data(&dir), &["log", "--json", "--tenant", b]));
            let mut needles = vec![b.clone(), hex(b.as_bytes())];
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
            let store = Store::open(&data(&dir), false).unwrap();
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
