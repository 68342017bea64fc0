//! The data directory under hostile conditions: a full disk, a read-only
//! disk, a directory that holds someone else's files, a damaged sled
//! database, refused commands, and benchmarks beside a real ledger. Each
//! test drives the binary and checks, byte for byte, what it left behind.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use runledger::domain::limits::DISK_FREE_BYTES_MIN;
use runledger::log::{Durability, Ledger, LedgerOptions};
use support::bin::{BIN, command, ok, runledger, stderr};
use support::files::copy_dir;
use support::tmpfs::Tmpfs;

/// Every file under `dir` (relative path → bytes and mtime), and every
/// directory (with no bytes), so any write, creation or removal shows.
fn contents(dir: &Path) -> BTreeMap<PathBuf, (Option<Vec<u8>>, SystemTime)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (Option<Vec<u8>>, SystemTime)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = entry.metadata().unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                out.insert(rel, (None, meta.modified().unwrap()));
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(rel, (Some(bytes), meta.modified().unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

const TENANT_LINE: &str = r#"{"type":"tenant_registered","tenant":"zed","budget_micros":1000000,"max_concurrent_runs":2,"learning_intensity":"balanced","meta_learning":false,"budget_period":"none"}"#;

const WORKLOAD: &str = r#"
seed = 3
start = "2026-03-01T09:00:00Z"

[[pipelines]]
id = "p"
mode = "serial"
nodes = [
  { id = "retrieve", params = { step = "retrieve", depth = 2 } },
  { id = "generate", params = { step = "generate", candidates = 1 } },
]

[[tenants]]
id = "t1"
budget_micros = 100000000
max_concurrent_runs = 4

[[submissions]]
tenant = "t1"
pipeline = "p"
runs = 3
interval_ms = 100
"#;

/// A ledger with two demo runs and a published checkpoint; returns its
/// records (`log --json`). Sled wrote its snapshot when it last opened the
/// database, before the checkpoint was written: its next opening writes a
/// new one, the write a full disk tears.
fn two_run_ledger(dir: &Path) -> String {
    ok(&runledger(dir, &["demo", "--tenants", "2", "--runs", "2"]));
    ok(&runledger(
        dir,
        &["demo", "--tenants", "2", "--runs", "2", "--seed", "9"],
    ));
    let records = ok(&runledger(dir, &["log", "--json"]));
    ok(&runledger(dir, &["checkpoint"]));
    records
}

fn says_disk_full(o: &Output) -> bool {
    let text = stderr(o).to_lowercase();
    text.contains("no space") || text.contains("disk full") || text.contains("disk is full")
}

/// Every command that opens a ledger, as run against `data` (with `work`
/// for the files they read or write elsewhere).
fn every_command(work: &Path) -> Vec<Vec<String>> {
    let events = work.join("events.jsonl");
    std::fs::write(&events, format!("{TENANT_LINE}\n")).unwrap();
    let workload = work.join("workload.toml");
    std::fs::write(&workload, WORKLOAD).unwrap();
    let p = |p: PathBuf| p.display().to_string();
    let s = |s: &str| s.to_owned();
    vec![
        vec![s("verify")],
        vec![s("verify")],
        vec![s("verify")],
        vec![s("ingest"), p(events)],
        vec![s("run"), p(workload)],
        vec![s("resume")],
        vec![s("demo"), s("--tenants"), s("1"), s("--runs"), s("1")],
        vec![s("checkpoint")],
        vec![s("log")],
        vec![s("log"), s("--json"), s("--run"), s("demo-42")],
        vec![s("replay")],
        vec![s("replay"), s("--check")],
        vec![s("tenants")],
        vec![s("runs")],
        vec![s("queue")],
        vec![s("workers")],
        vec![s("decisions")],
        vec![s("export"), s("--tenant"), s("acme")],
        vec![s("artifacts"), s("--out"), p(work.join("artifacts"))],
        vec![s("diff"), s("demo-42"), s("demo-42")],
        vec![s("verify")],
    ]
}

/// Item 2 of issue 15: a full disk. Every command either works or exits 2
/// saying the disk is full, and none writes a byte into the ledger; once
/// space is freed, the ledger verifies and holds every record it held.
/// Here the free-space margin refuses every write before sled runs; sled
/// itself hitting ENOSPC is the test after this one.
#[test]
fn full_disk_every_command_works_or_exits_2_and_the_ledger_survives() {
    let work = tempfile::tempdir().unwrap();
    let built = work.path().join("built");
    let records = two_run_ledger(&built);
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(fs) = Tmpfs::mount(&mnt, "16m") else {
        return;
    };
    let data = fs.path().join("ledger");
    copy_dir(&built, &data);
    let filler = fs.path().join("filler");
    fs.fill(&filler);
    let before = contents(&data);
    for args in every_command(work.path()) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = runledger(&data, &args);
        let code = out.status.code();
        assert!(
            code == Some(0) || (code == Some(2) && says_disk_full(&out)),
            "`{}` on a full disk: exit {code:?}, {}",
            args.join(" "),
            stderr(&out)
        );
        assert!(
            contents(&data) == before,
            "`{}` on a full disk changed the ledger's files",
            args.join(" ")
        );
    }
    // Writes are refused, reads answer.
    let refused = runledger(
        &data,
        &[
            "ingest",
            &work.path().join("events.jsonl").display().to_string(),
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(says_disk_full(&refused), "{}", stderr(&refused));
    assert_eq!(ok(&runledger(&data, &["log", "--json"])), records);

    std::fs::remove_file(&filler).unwrap();
    let verified = ok(&runledger(&data, &["verify"]));
    assert!(verified.starts_with("ok: "), "{verified}");
    assert_eq!(ok(&runledger(&data, &["log", "--json"])), records);
}

/// A workload whose one step waits, on its first run, for `gate` to exist
/// (after touching `started`); then its 400 runs go through.
fn gated_workload(work: &Path, started: &Path, gate: &Path) -> PathBuf {
    let step = work.join("step.sh");
    std::fs::write(
        &step,
        format!(
            "cat >/dev/null\ntouch '{}'\nwhile [ ! -e '{}' ]; do sleep 0.02; done\necho '{{\"costs\":[{{\"category\":\"llm\",\"amount_micros\":5}}],\"output\":\"ok\"}}'\n",
            started.display(),
            gate.display()
        ),
    )
    .unwrap();
    let workload = work.join("gated.toml");
    std::fs::write(
        &workload,
        format!(
            r#"
seed = 5
start = "2026-03-01T09:00:00Z"

[[pipelines]]
id = "p"
mode = "serial"
nodes = [
  {{ id = "step", handler = "exec", cost_ceiling_micros = 1000, params = {{ argv = ["/bin/sh", "{}"] }} }},
]

[[tenants]]
id = "t1"
budget_micros = 100000000000
max_concurrent_runs = 8

[[submissions]]
tenant = "t1"
pipeline = "p"
runs = 400
interval_ms = 1
"#,
            step.display()
        ),
    )
    .unwrap();
    workload
}

/// Review finding 6 (item 2 for real): the disk fills up during a run,
/// after the margin check let it start, so that sled's own writes hit
/// ENOSPC. The run stops with exit 2; once space is freed the ledger
/// verifies, holds every record it held before, and the run is resumed to
/// its end.
#[test]
fn a_disk_that_fills_during_a_run_loses_nothing_and_the_run_resumes() {
    let work = tempfile::tempdir().unwrap();
    let built = work.path().join("built");
    let records = two_run_ledger(&built);
    let started = work.path().join("started");
    let gate = work.path().join("gate");
    let workload = gated_workload(work.path(), &started, &gate);
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(fs) = Tmpfs::mount(&mnt, "96m") else {
        return;
    };
    let data = fs.path().join("ledger");
    copy_dir(&built, &data);
    assert!(fs.free() > DISK_FREE_BYTES_MIN, "the run would be refused");
    let run = command(&data, &["run"])
        .arg(&workload)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The run has started its first task: now the disk fills up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut run = run;
    while !started.exists() {
        if let Some(status) = run.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut err).unwrap();
            panic!("the run ended ({status}) before its first task started: {err}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started its first task"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let filler = fs.path().join("filler");
    fs.fill(&filler);
    std::fs::write(&gate, b"").unwrap();
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("No space left on device") || says_disk_full(&out),
        "{}",
        stderr(&out)
    );

    std::fs::remove_file(&filler).unwrap();
    let verified = ok(&runledger(&data, &["verify"]));
    assert!(verified.starts_with("ok: "), "{verified}");
    let after = ok(&runledger(&data, &["log", "--json"]));
    assert!(
        after.starts_with(&records),
        "records before the run were lost"
    );
    let running = |data: &Path| {
        ok(&runledger(data, &["runs"]))
            .lines()
            .filter(|l| l.contains(" running "))
            .count()
    };
    assert_eq!(
        running(&data),
        1,
        "the interrupted run is not in the ledger"
    );
    ok(&runledger(&data, &["resume"]));
    let verified = ok(&runledger(&data, &["verify"]));
    assert!(verified.starts_with("ok: "), "{verified}");
    assert!(ok(&runledger(&data, &["log", "--json"])).starts_with(&after));
    assert_eq!(running(&data), 0, "the resumed run did not finish");
}

/// Item 2: sled writes while opening; a read-only disk must not stop a
/// ledger from being verified and read, and writes say why they cannot.
#[test]
fn read_only_disk_ledger_verifies_and_reads_and_writes_exit_2() {
    let work = tempfile::tempdir().unwrap();
    let built = work.path().join("built");
    let records = two_run_ledger(&built);
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(fs) = Tmpfs::mount(&mnt, "16m") else {
        return;
    };
    let data = fs.path().join("ledger");
    copy_dir(&built, &data);
    fs.remount(true);
    let verified = ok(&runledger(&data, &["verify"]));
    assert!(verified.starts_with("ok: "), "{verified}");
    assert_eq!(ok(&runledger(&data, &["log", "--json"])), records);
    ok(&runledger(&data, &["replay", "--check"]));
    ok(&runledger(&data, &["tenants"]));
    let refused = runledger(&data, &["checkpoint"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("read-only"),
        "{}",
        stderr(&refused)
    );
    fs.remount(false);
    assert_eq!(ok(&runledger(&data, &["log", "--json"])), records);
}

/// Item 2: when the ledger's disk is full and no scratch copy fits in the
/// temporary directory either, a read exits 2 with the reason and leaves
/// the ledger as it was.
#[test]
fn full_disk_and_full_temp_dir_exit_2_and_touch_nothing() {
    let work = tempfile::tempdir().unwrap();
    let built = work.path().join("built");
    let records = two_run_ledger(&built);
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(fs) = Tmpfs::mount(&mnt, "16m") else {
        return;
    };
    let data = fs.path().join("ledger");
    copy_dir(&built, &data);
    let tmp = fs.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let filler = fs.path().join("filler");
    fs.fill(&filler);
    let before = contents(&data);
    for args in [&["verify"][..], &["log"], &["tenants"]] {
        let out = command(&data, args).env("TMPDIR", &tmp).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(says_disk_full(&out), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("scratch copy"), "{}", stderr(&out));
        assert!(contents(&data) == before, "{args:?} changed the ledger");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    }
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(ok(&runledger(&data, &["log", "--json"])), records);
}

/// Item 2: what a full disk did to ledgers before: sled left an empty
/// `snap.*.generating` file, which it then took for its newest snapshot
/// and refused ("Read corrupted data"). Such a ledger opens again.
#[test]
fn a_snapshot_torn_by_a_full_disk_no_longer_bricks_the_ledger() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("ledger");
    let records = two_run_ledger(&data);
    let torn = data.join("snap.7FFFFFFFFFFFFFFF.generating");
    std::fs::write(&torn, b"").unwrap();
    let verified = ok(&runledger(&data, &["verify"]));
    assert!(verified.starts_with("ok: "), "{verified}");
    assert_eq!(ok(&runledger(&data, &["log", "--json"])), records);
    // Opened in place (the disk has room), sled's leftover is gone for good.
    assert!(!torn.exists());
}

/// Files to put in a directory: name and bytes.
type Files = Vec<(&'static str, Vec<u8>)>;

/// Item 3: a directory holding someone else's `db` (here an SQLite file)
/// is never taken over: every command exits 2 and nothing changes.
#[test]
fn a_foreign_db_file_is_never_taken_over() {
    let work = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Files)> = vec![
        (
            "an SQLite db",
            vec![("db", {
                let mut b = b"SQLite format 3\0".to_vec();
                b.extend(std::iter::repeat_n(7u8, 4096));
                b
            })],
        ),
        (
            "a db beside a conf that is not sled's",
            vec![
                ("db", vec![1u8; 8192]),
                ("conf", b"listen = 8080\nworkers = 4\n".to_vec()),
            ],
        ),
        ("someone's notes", vec![("notes.txt", b"hello".to_vec())]),
    ];
    for (name, files) in cases {
        let data = work.path().join(name.replace(' ', "-"));
        std::fs::create_dir(&data).unwrap();
        for (file, bytes) in &files {
            std::fs::write(data.join(file), bytes).unwrap();
        }
        let before = contents(&data);
        for args in every_command(work.path()) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = runledger(&data, &args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{name}: `{}`: {}",
                args.join(" "),
                stderr(&out)
            );
            assert!(
                stderr(&out).contains("not a runledger ledger"),
                "{name}: `{}`: {}",
                args.join(" "),
                stderr(&out)
            );
            assert!(
                contents(&data) == before,
                "{name}: `{}` changed the directory",
                args.join(" ")
            );
        }
    }
}

/// Item 14: a ledger whose sled files are damaged is a failed check
/// (exit 1, "damaged"), named with what is known of it — not exit 2 "not a
/// runledger ledger".
#[test]
fn a_damaged_sled_directory_exits_1_naming_what_is_known() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("ledger");
    two_run_ledger(&data);
    ok(&runledger(&data, &["verify"]));
    let snapshot = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .expect("sled wrote a snapshot");
    // A snapshot cut short: sled refuses the database.
    let bytes = std::fs::read(&snapshot).unwrap();
    std::fs::write(&snapshot, &bytes[..bytes.len() / 2]).unwrap();
    for args in [&["verify"][..], &["log"], &["tenants"], &["checkpoint"]] {
        let out = runledger(&data, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("is damaged"), "{err}");
        assert!(err.contains("runledger-ledger/1"), "{err}");
        assert!(err.contains("ledger id "), "{err}");
        assert!(err.contains("sled"), "{err}");
        assert!(!err.contains("not a runledger ledger"), "{err}");
    }
    // A ledger from before the marker file is recognised by sled's files.
    let _ = std::fs::remove_file(data.join("RUNLEDGER"));
    let out = runledger(&data, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is damaged"), "{}", stderr(&out));
}

/// Item 20: a refused `ingest` creates no ledger: no directory when there
/// was none, an empty directory left empty.
#[test]
fn a_refused_ingest_leaves_no_ledger_behind() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("events.jsonl");
    std::fs::write(
        &file,
        format!(
            "{TENANT_LINE}\n{}\n",
            r#"{"type":"run_finished","run":"nope"}"#
        ),
    )
    .unwrap();
    let absent = work.path().join("absent");
    let out = runledger(&absent, &["ingest", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
    assert!(
        !absent.exists(),
        "the refused ingest created {}",
        absent.display()
    );

    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = runledger(&empty, &["ingest", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

fn new_ledger(dir: &Path) -> Ledger {
    let options = LedgerOptions {
        durability: Durability::Always,
        ..support::ledger::options()
    };
    Ledger::open(dir, options).unwrap()
}

/// Review finding 2: a refused command removes what it made and nothing
/// else. It used to remove the topmost directory it had made, with
/// whatever another process put under it meanwhile (`ingest --data out/x`
/// refused while `demo --data out/y` ran lost the demo's ledger).
#[test]
fn a_refused_command_removes_only_what_it_made() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let x = out.join("x");
    let ledger = new_ledger(&x);
    // Meanwhile another command makes a ledger beside it.
    let y = out.join("y");
    ok(&runledger(&y, &["demo", "--tenants", "1", "--runs", "1"]));
    let records = ok(&runledger(&y, &["log", "--json"]));
    ledger.discard_if_new().unwrap();
    assert!(!x.exists(), "the discarded ledger is still there");
    let verified = ok(&runledger(&y, &["verify"]));
    assert!(verified.starts_with("ok: "), "{verified}");
    assert_eq!(ok(&runledger(&y, &["log", "--json"])), records);

    // A file another process put in the ledger's directory stays, and so
    // does the directory; the ledger's own files go.
    let z = out.join("z");
    let ledger = new_ledger(&z);
    std::fs::write(z.join("notes.txt"), b"mine").unwrap();
    ledger.discard_if_new().unwrap();
    let left: Vec<_> = std::fs::read_dir(&z)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["notes.txt"]);

    // Alone, every directory it made goes.
    let deep = work.path().join("a").join("b").join("c");
    new_ledger(&deep).discard_if_new().unwrap();
    assert!(!work.path().join("a").exists(), "it left what it made");
}

/// Item 20: a run on a Redis nobody answers creates no ledger.
#[test]
fn an_unreachable_redis_leaves_no_ledger_behind() {
    let work = tempfile::tempdir().unwrap();
    let workload = work.path().join("workload.toml");
    std::fs::write(&workload, WORKLOAD).unwrap();
    let url = format!("redis://127.0.0.1:{}", support::redis::free_port());
    let data = work.path().join("absent");
    for args in [
        vec![
            "run",
            workload.to_str().unwrap(),
            "--queue",
            "redis",
            "--redis-url",
            &url,
        ],
        vec!["demo", "--queue", "redis", "--redis-url", &url],
    ] {
        let out = runledger(&data, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!data.exists(), "{args:?} created {}", data.display());
    }
}

/// `runledger ARGS bench ledger` (small), then `after`.
fn bench_ledger(args: &[&str], after: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .args([
            "bench",
            "ledger",
            "--events",
            "400",
            "--appenders",
            "2",
            "--batch",
            "50",
            "--durability",
            "none",
        ])
        .args(after)
        .env_remove("RUNLEDGER_DATA");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// Item 4: `bench ledger` writes into a scratch directory unless `--data`
/// is on its command line (in either spelling), never into the ledger
/// `RUNLEDGER_DATA` names, and refuses a directory that holds a ledger.
#[test]
fn bench_ledger_writes_only_where_data_is_given_explicitly() {
    let work = tempfile::tempdir().unwrap();
    let real = work.path().join("real");
    ok(&runledger(
        &real,
        &["demo", "--tenants", "1", "--runs", "1"],
    ));
    let before = contents(&real);

    let out = bench_ledger(&[], &[], &[("RUNLEDGER_DATA", &real)]);
    ok(&out);
    assert!(
        contents(&real) == before,
        "the bench wrote into RUNLEDGER_DATA"
    );

    let target = |n: usize| work.path().join(format!("target{n}"));
    let spellings: [(Vec<String>, Vec<String>); 3] = [
        (vec![format!("--data={}", target(0).display())], vec![]),
        (
            vec!["--data".into(), target(1).display().to_string()],
            vec![],
        ),
        (
            vec![],
            vec!["--data".into(), target(2).display().to_string()],
        ),
    ];
    for (n, (before_args, after_args)) in spellings.iter().enumerate() {
        let before_args: Vec<&str> = before_args.iter().map(String::as_str).collect();
        let after_args: Vec<&str> = after_args.iter().map(String::as_str).collect();
        ok(&bench_ledger(
            &before_args,
            &after_args,
            &[("RUNLEDGER_DATA", &real)],
        ));
        let verified = ok(&runledger(&target(n), &["verify"]));
        assert!(verified.starts_with("ok: "), "spelling {n}: {verified}");
        assert!(
            contents(&real) == before,
            "spelling {n}: wrote into RUNLEDGER_DATA"
        );
    }

    let refused = bench_ledger(&["--data", real.to_str().unwrap()], &[], &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("already holds a ledger"),
        "{}",
        stderr(&refused)
    );
    assert!(
        contents(&real) == before,
        "the refused bench changed the ledger"
    );
}
