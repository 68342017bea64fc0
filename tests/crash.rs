//! SIGKILL crash test: a child process (this test binary, re-executed on
//! one test function) appends to a ledger under `Durability::Always` and
//! prints every acknowledged append; the parent kills it at a random moment,
//! again and again on the same data directory, and after each kill checks
//! that the chain verifies and still holds every record that was acked.

use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runledger::domain::{Category, Event, Micros, TenantId};
use runledger::log::store::IndexKind;
use runledger::log::verify::verify;
use runledger::log::{Durability, Ledger, LedgerOptions, OpenError, Store, StoreError};

/// Set on the child only: the data directory it appends to.
const CHILD_DIR_ENV: &str = "RUNLEDGER_CRASH_CHILD_DIR";
/// Set on the child only: the seed of its batch sizes.
const CHILD_SEED_ENV: &str = "RUNLEDGER_CRASH_CHILD_SEED";
/// Optional on the parent: overrides the fixed seed.
const SEED_ENV: &str = "RUNLEDGER_CRASH_SEED";
const DEFAULT_SEED: u64 = 0x5eed_c0de_2024;
/// Optional on the parent: `MIN..MAX` milliseconds before the kill.
const WAIT_ENV: &str = "RUNLEDGER_CRASH_WAIT_MS";
/// Optional on the parent: the number of rounds.
const ROUNDS_ENV: &str = "RUNLEDGER_CRASH_ROUNDS";
const DEFAULT_ROUNDS: usize = 30;
const CHILD_TEST: &str = "crash_child_appends_until_killed";
const TENANT: &str = "crash-tenant";

/// The child: does nothing unless the parent set `CHILD_DIR_ENV`, so it
/// passes as an ordinary test.
#[test]
fn crash_child_appends_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let options = LedgerOptions {
        durability: Durability::Always,
        checkpoint_every: 50,
        create: true,
    };
    // The parent may have dropped its store a moment ago: sled lets go of
    // its file lock a few milliseconds after the last handle is dropped.
    let start = Instant::now();
    let ledger = loop {
        match Ledger::open(Path::new(&dir), options) {
            Ok(ledger) => break ledger,
            Err(OpenError::Store(StoreError::Locked(_)))
                if start.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("child: open ledger: {e}"),
        }
    };
    let tenant = TenantId::from(TENANT);
    let known = ledger.tenant(&tenant).expect("child: query").is_some();
    let stdout = std::io::stdout();
    if !known {
        let r = ledger
            .append([Event::TenantRegistered {
                tenant: tenant.clone(),
                budget_micros: Micros(i64::MAX / 4),
                max_concurrent_runs: 1_000_000,
                learning_intensity: Default::default(),
                meta_learning: false,
                budget_period: Default::default(),
            }])
            .expect("child: register tenant");
        let mut out = stdout.lock();
        writeln!(out, "acked {} {}", r.last_seq, r.head.to_hex()).expect("child: stdout");
        out.flush().expect("child: flush");
    }
    let mut n: i64 = 0;
    loop {
        let size = rng.random_range(1..=8);
        let batch: Vec<Event> = (0..size)
            .map(|_| {
                n += 1;
                Event::CostIncurred {
                    tenant: tenant.clone(),
                    task: None,
                    category: Category::Llm,
                    amount_micros: Micros(n),
                }
            })
            .collect();
        let r = ledger.append(batch).expect("child: append");
        assert_eq!(r.last_seq - r.first_seq + 1, size as u64);
        let mut out = stdout.lock();
        writeln!(out, "acked {} {}", r.last_seq, r.head.to_hex()).expect("child: stdout");
        out.flush().expect("child: flush");
    }
}

/// One acknowledged append, as the child printed it.
#[derive(Clone, Copy, Debug)]
struct Acked {
    seq: u64,
    hash: blake3::Hash,
}

/// Parses a complete `acked <seq> <hex>` line (with its newline): a line cut
/// by the kill is not an ack the parent may count on.
fn parse_ack(line: &str) -> Option<Acked> {
    let line = line.strip_suffix('\n')?;
    let mut parts = line.split(' ');
    if parts.next()? != "acked" {
        return None;
    }
    let seq = parts.next()?.parse().ok()?;
    let hash = blake3::Hash::from_hex(parts.next()?).ok()?;
    parts.next().is_none().then_some(Acked { seq, hash })
}

/// The hash of the record at `seq`, read through the chain-checking walk.
fn hash_at(store: &Store, seq: u64) -> Option<blake3::Hash> {
    let mut found = None;
    store
        .walk(seq, |r| {
            if r.seq == seq {
                found = Some(r.hash);
            }
            ControlFlow::Break(())
        })
        .expect("walk to an acked seq");
    found
}

#[test]
fn ledger_killed_mid_append_keeps_every_acked_record() {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let (min_ms, max_ms) = std::env::var(WAIT_ENV)
        .ok()
        .and_then(|s| {
            let (a, b) = s.split_once("..")?;
            Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
        })
        .filter(|(a, b)| a < b)
        .unwrap_or((20, 300));
    let rounds: usize = std::env::var(ROUNDS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    println!(
        "crash test seed {seed} (set {SEED_ENV} to replay), {rounds} rounds, kill after {min_ms}..{max_ms} ms"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("ledger");
    let exe = std::env::current_exe().expect("current test binary");
    let started = Instant::now();

    let mut rounds_with_acks = 0;
    let mut unborn_rounds = 0;
    let mut total_acks = 0usize;
    // The highest acked record over all rounds: it must survive every later
    // crash too, with the same hash.
    let mut best: Option<Acked> = None;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, &data)
            .env(CHILD_SEED_ENV, rng.random::<u64>().to_string())
            .env_remove(SEED_ENV)
            .env_remove(WAIT_ENV)
            .env_remove(ROUNDS_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut stderr = child.stderr.take().expect("child stderr");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if let Some(ack) = parse_ack(&line) {
                            let _ = tx.send(ack);
                        }
                    }
                }
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });

        let wait = Duration::from_millis(rng.random_range(min_ms..max_ms));
        // Half the rounds count the wait from the child's first ack, so the
        // kill lands mid-append however loaded the machine is; the others
        // from the spawn, which may come before the ledger exists.
        let mut first = Vec::new();
        if round % 2 == 0 {
            first.extend(rx.recv_timeout(Duration::from_secs(120)).ok());
        }
        std::thread::sleep(wait);
        let early_exit = child.try_wait().expect("try_wait");
        child.kill().expect("kill child"); // SIGKILL on unix
        let status = child.wait().expect("wait child");
        reader.join().expect("stdout reader");
        let child_stderr = err_reader.join().expect("stderr reader");
        assert!(
            early_exit.is_none(),
            "round {round}: the child exited by itself ({status}) before the kill; stderr:\n{child_stderr}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "round {round}: child ended by SIGKILL"
            );
        }

        let acks: Vec<Acked> = first.into_iter().chain(rx.try_iter()).collect();
        for pair in acks.windows(2) {
            assert!(
                pair[0].seq < pair[1].seq,
                "round {round}: acks in seq order: {acks:?}"
            );
        }
        if let (Some(prev), Some(first)) = (best, acks.first()) {
            assert!(
                first.seq > prev.seq,
                "round {round}: new acks continue after the last round's ({prev:?} then {first:?})"
            );
        }
        if !acks.is_empty() {
            rounds_with_acks += 1;
            total_acks += acks.len();
        }

        // Reopen read-only and check.
        let store = match Store::open(&data, false) {
            Ok(store) => store,
            // Killed before the ledger existed at all: nothing was acked.
            // Killed before the ledger existed at all, or while sled was
            // creating it (its files exist, the runledger metadata not yet):
            // nothing was acked, and the next child's open must create it.
            Err(e @ (StoreError::Missing(_) | StoreError::Foreign { .. }))
                if acks.is_empty() && best.is_none() =>
            {
                println!("round {round}: killed after {wait:?} before the ledger was created: {e}");
                unborn_rounds += 1;
                continue;
            }
            Err(e) => panic!("round {round}: cannot reopen after the kill: {e}"),
        };
        let report = match verify(&store).expect("store readable") {
            Ok(report) => report,
            Err(b) => panic!("round {round}: chain broken after a kill at {wait:?}: {b}"),
        };
        assert_eq!(
            report.records, report.head.seq,
            "round {round}: records 1..=head"
        );
        for ack in &acks {
            assert!(
                ack.seq <= report.head.seq,
                "round {round}: acked seq {} lost (head {})",
                ack.seq,
                report.head.seq
            );
        }
        if let Some(last) = acks.last() {
            best = Some(*last);
        }
        if let Some(best) = best {
            assert!(
                best.seq <= report.head.seq,
                "round {round}: acked seq {} lost (head {})",
                best.seq,
                report.head.seq
            );
            assert_eq!(
                hash_at(&store, best.seq),
                Some(best.hash),
                "round {round}: the record at acked seq {} has another hash",
                best.seq
            );
        }
        // The derived tenant index, when it claims to be up to date, lists
        // exactly the records of the chain (every record names the tenant).
        let mut indexed = Vec::new();
        let fresh = store
            .walk_indexed(&[(IndexKind::Tenant, TENANT)], 1, |r| {
                indexed.push(r.seq);
                ControlFlow::Continue(())
            })
            .unwrap_or_else(|e| panic!("round {round}: indexed walk: {e}"));
        if fresh.is_some() {
            assert_eq!(
                indexed,
                (1..=report.head.seq).collect::<Vec<_>>(),
                "round {round}: tenant index"
            );
        }
        println!(
            "round {round}: killed after {wait:?}, index {}, {} acks (last {:?}), head {} after reopen, {} checkpoints",
            if fresh.is_some() { "fresh" } else { "lagging" },
            acks.len(),
            acks.last().map(|a| a.seq),
            report.head.seq,
            report.checkpoints
        );
        drop(store); // sled holds an exclusive lock on the directory
    }
    println!(
        "{rounds_with_acks}/{rounds} rounds acked, {total_acks} acks, {unborn_rounds} killed before the ledger existed, {:?}",
        started.elapsed()
    );
    if min_ms == 20 && max_ms == 300 && rounds == DEFAULT_ROUNDS {
        // Every other round waits for an ack before its kill.
        assert!(
            rounds_with_acks >= rounds / 4,
            "only {rounds_with_acks} of {rounds} rounds acked anything"
        );
        assert!(
            best.is_some_and(|b| b.seq > 100),
            "the ledger grew over the rounds: {best:?}"
        );
    }
}
