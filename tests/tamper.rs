//! Tamper tests: build a real ledger, close it, damage it behind the
//! ledger's back through sled (the log tree holds one value per frame, keyed
//! by the frame's first seq in big-endian), and check that `verify` — and the
//! `runledger verify` command — name the first bad seq without panicking.

mod support;

use std::ops::ControlFlow;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runledger::domain::{Category, Event, Micros, Priority, RunId, TaskId, TenantId, WorkerId};
use runledger::log::codec::{decode_event, encode_event};
use runledger::log::frame::{OwnedFrame, TAG_LEN, frame_key};
use runledger::log::record::record_hash;
use runledger::log::verify::{VerifyReport, verify};
use runledger::log::{ChainBreak, Durability, Ledger, LedgerOptions, OpenError, Store, StoreError};
use tempfile::TempDir;

use support::events::run_started;

/// Tasks appended one per batch (each batch is one commit group, so one frame).
const SMALL_TASKS: u64 = 120;
/// Tasks appended in a single batch (one group, split into ~4 KiB frames).
const BIG_BATCH_TASKS: u64 = 60;
/// Tenant registration and run start.
const SETUP_EVENTS: u64 = 2;
const TOTAL_RECORDS: u64 = SETUP_EVENTS + 4 * (SMALL_TASKS + BIG_BATCH_TASKS);

struct Built {
    dir: TempDir,
    head_seq: u64,
    head_hash: blake3::Hash,
}

fn task_events(run: &RunId, tenant: &TenantId, worker: &WorkerId, n: u64) -> [Event; 4] {
    let task = TaskId(format!("task-{n:05}"));
    [
        Event::TaskSubmitted {
            run: run.clone(),
            task: task.clone(),
            tenant: tenant.clone(),
            priority: Priority::Normal,
            deps: Vec::new(),
            pipeline: None,
            cost_ceiling_micros: Micros::ZERO,
            handler: "summarise".to_owned(),
            params: Default::default(),
            max_attempts: 3,
            optional: false,
        },
        Event::TaskDequeued {
            task: task.clone(),
            worker: worker.clone(),
            attempt: 1,
            lease_deadline: None,
        },
        Event::CostIncurred {
            tenant: tenant.clone(),
            task: Some(task.clone()),
            category: Category::Llm,
            amount_micros: Micros(1_000 + n as i64),
        },
        Event::TaskAcked {
            task,
            worker: worker.clone(),
            output: Default::default(),
        },
    ]
}

/// A closed ledger of `TOTAL_RECORDS` records: many one-task frames, then a
/// big batch that spans several full frames. `close` records a checkpoint at
/// the head.
fn build_ledger() -> Built {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open_ledger(dir.path(), support::ledger::options());
    let tenant = TenantId::from("acme");
    let run = RunId::from("run-1");
    let worker = WorkerId::from("worker-1");
    ledger
        .append([
            support::events::tenant("acme", 1_000_000_000_000)
                .max_runs(1_000_000)
                .into(),
            run_started("run-1", 7),
        ])
        .expect("setup");
    for n in 0..SMALL_TASKS {
        ledger
            .append(task_events(&run, &tenant, &worker, n))
            .expect("small batch");
    }
    let big: Vec<Event> = (SMALL_TASKS..SMALL_TASKS + BIG_BATCH_TASKS)
        .flat_map(|n| task_events(&run, &tenant, &worker, n))
        .collect();
    let receipt = ledger.append(big).expect("big batch");
    let head = ledger.head().expect("head");
    assert_eq!(receipt.last_seq, TOTAL_RECORDS);
    assert_eq!(head.seq, TOTAL_RECORDS);
    assert_eq!(head.hash, receipt.head);
    ledger.close().expect("close");
    Built {
        dir,
        head_seq: head.seq,
        head_hash: head.hash,
    }
}

/// How long a closed ledger's directory may stay locked: sled releases its
/// file lock only when its background threads let go of the file, a few
/// milliseconds after the last handle is dropped.
const LOCK_GRACE: Duration = Duration::from_secs(5);

/// Retries `open` while it fails because the directory is still locked.
fn retry_locked<T, E: std::fmt::Display>(
    mut open: impl FnMut() -> Result<T, E>,
    is_locked: impl Fn(&E) -> bool,
) -> T {
    let start = Instant::now();
    loop {
        match open() {
            Ok(value) => return value,
            Err(e) if is_locked(&e) && start.elapsed() < LOCK_GRACE => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("cannot open the ledger: {e}"),
        }
    }
}

fn open_store(dir: &Path) -> Store {
    retry_locked(
        || Store::open(dir, false),
        |e| matches!(e, StoreError::Locked(_)),
    )
}

fn open_ledger(dir: &Path, options: LedgerOptions) -> Ledger {
    retry_locked(
        || Ledger::open(dir, options),
        |e| matches!(e, OpenError::Store(StoreError::Locked(_))),
    )
}

/// Every frame as `(key seq, decoded frame)`, in key order.
fn frames(store: &Store) -> Vec<(u64, OwnedFrame)> {
    store
        .log_tree()
        .iter()
        .map(|item| {
            let (key, value) = item.expect("read log tree");
            let seq = u64::from_be_bytes(key.as_ref().try_into().expect("8-byte key"));
            (seq, OwnedFrame::decode(&value).expect("decode frame"))
        })
        .collect()
}

fn put_frame(store: &Store, key_seq: u64, frame: &OwnedFrame) {
    store
        .log_tree()
        .insert(frame_key(key_seq), frame.encode())
        .expect("write frame");
}

fn last(frame: &OwnedFrame) -> u64 {
    frame.header.first_seq + u64::from(frame.header.count) - 1
}

/// The first frame (after `after_seq`) with at least `min` records: the
/// untouched frames on both sides make sure the damage is in the middle of
/// the chain, not at an edge.
fn frame_with_at_least(store: &Store, min: u32, after_seq: u64) -> (u64, OwnedFrame) {
    frames(store)
        .into_iter()
        .find(|(seq, f)| *seq > after_seq && f.header.count >= min)
        .unwrap_or_else(|| panic!("no frame after seq {after_seq} holds {min} records"))
}

fn broken(store: &Store) -> ChainBreak {
    match verify(store).expect("store readable") {
        Ok(report) => panic!("verify passed a damaged ledger: {report:?}"),
        Err(b) => b,
    }
}

fn good(store: &Store) -> VerifyReport {
    match verify(store).expect("store readable") {
        Ok(report) => report,
        Err(b) => panic!("verify failed an intact ledger: {b}"),
    }
}

/// The hash of the record at `seq`, as the intact chain has it.
fn hash_at(store: &Store, seq: u64) -> blake3::Hash {
    let mut found = None;
    store
        .walk(seq, |r| {
            if r.seq == seq {
                found = Some(r.hash);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .expect("walk");
    found.unwrap_or_else(|| panic!("no record {seq}"))
}

fn tag_of(hash: &blake3::Hash) -> [u8; TAG_LEN] {
    hash.as_bytes()[..TAG_LEN].try_into().expect("tag length")
}

/// Index in `frame` of the first `CostIncurred` record at or after `from`.
fn cost_index(frame: &OwnedFrame, from: usize) -> usize {
    (from..frame.entries.len())
        .find(|&i| {
            matches!(
                decode_event(&frame.entries[i].2),
                Ok(Event::CostIncurred { .. })
            )
        })
        .expect("a cost record in the frame")
}

/// Re-encodes the event at `index` with a bigger amount, keeping its tag.
fn edit_cost(frame: &mut OwnedFrame, index: usize) {
    let event = decode_event(&frame.entries[index].2).expect("decode event");
    let Event::CostIncurred {
        tenant,
        task,
        category,
        amount_micros,
    } = event
    else {
        panic!("record {index} is not a cost: {event:?}")
    };
    let edited = Event::CostIncurred {
        tenant,
        task,
        category,
        amount_micros: Micros(amount_micros.0 + 1_000_000),
    };
    let bytes = encode_event(&edited);
    assert_ne!(bytes, frame.entries[index].2, "the edit changes the bytes");
    frame.entries[index].2 = bytes;
}

// ---------------------------------------------------------------------------
// The fixture itself.

#[test]
fn verify_untouched_ledger_reports_every_record() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let report = good(&store);
    assert_eq!(report.records, TOTAL_RECORDS);
    assert_eq!(report.head.seq, built.head_seq);
    assert_eq!(report.head.hash, built.head_hash);
    assert_eq!(
        report.checkpoints, 1,
        "close records exactly one checkpoint"
    );

    let all = frames(&store);
    assert!(
        all.len() > SMALL_TASKS as usize,
        "one frame per small batch at least: {} frames",
        all.len()
    );
    let big = all.iter().filter(|(_, f)| f.header.count >= 20).count();
    assert!(
        big >= 2,
        "the big batch must span several frames, got {big}"
    );
    // Keys, first seqs and counts tile 1..=head without gaps.
    let mut next = 1;
    for (key, frame) in &all {
        assert_eq!(*key, next);
        assert_eq!(frame.header.first_seq, next);
        next = last(frame) + 1;
    }
    assert_eq!(next, TOTAL_RECORDS + 1);
}

#[test]
fn frame_decode_encode_round_trips_stored_bytes() {
    // The tamper tests rewrite frames through OwnedFrame: it must not change
    // a byte by itself, or the tests would damage more than they intend.
    let built = build_ledger();
    let store = open_store(built.dir.path());
    for item in store.log_tree().iter() {
        let (key, value) = item.unwrap();
        let frame = OwnedFrame::decode(&value).unwrap();
        assert_eq!(frame.encode(), value.to_vec(), "frame at key {key:?}");
    }
}

// ---------------------------------------------------------------------------
// a. An edited event, tag kept.

#[test]
fn verify_edited_record_reports_its_seq() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    let index = cost_index(&frame, 5);
    let seq = frame.header.first_seq + index as u64;
    edit_cost(&mut frame, index);
    put_frame(&store, key, &frame);

    let b = broken(&store);
    assert_eq!(b.seq, seq, "{b}");
    assert!(b.what.contains("hash mismatch"), "{b}");
}

#[test]
fn verify_edited_first_record_of_ledger_reports_seq_one() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frames(&store).into_iter().next().unwrap();
    assert_eq!(key, 1);
    let Ok(Event::TenantRegistered { budget_micros, .. }) = decode_event(&frame.entries[0].2)
    else {
        panic!("seq 1 is the tenant registration")
    };
    let edited = Event::TenantRegistered {
        tenant: "acme".into(),
        budget_micros: Micros(budget_micros.0 * 10),
        max_concurrent_runs: 1_000_000,
        learning_intensity: Default::default(),
        meta_learning: false,
        budget_period: Default::default(),
    };
    frame.entries[0].2 = encode_event(&edited);
    put_frame(&store, key, &frame);

    let b = broken(&store);
    assert_eq!(b.seq, 1, "{b}");
}

// ---------------------------------------------------------------------------
// b. A forger who recomputes the edited record's tag.

/// Edits the cost at `index` of `frame` and gives it the tag its new bytes
/// hash to, as a forger who knows the chain up to it would.
fn forge(store: &Store, frame: &mut OwnedFrame, index: usize) -> blake3::Hash {
    let seq = frame.header.first_seq + index as u64;
    let prev = if seq == 1 {
        runledger::log::ZERO_HASH
    } else {
        hash_at(store, seq - 1)
    };
    edit_cost(frame, index);
    let (at, _, bytes) = &frame.entries[index];
    let hash = record_hash(seq, *at, &prev, bytes);
    frame.entries[index].1 = tag_of(&hash);
    hash
}

#[test]
fn verify_forged_tag_mid_frame_reports_next_seq() {
    // The forged record itself passes its 8-byte tag check, so the first
    // record the chain cannot vouch for is the next one: its tag was made
    // from the original hash of the edited record (its prev_hash).
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    let index = cost_index(&frame, 5);
    assert!(
        index + 1 < frame.entries.len(),
        "the edited record is not the last of its frame"
    );
    let seq = frame.header.first_seq + index as u64;
    forge(&store, &mut frame, index);
    put_frame(&store, key, &frame);

    let b = broken(&store);
    assert_eq!(b.seq, seq + 1, "{b}");
    assert!(b.what.contains("hash mismatch"), "{b}");
}

#[test]
fn verify_forged_tag_on_last_record_of_frame_reports_that_seq() {
    // No later record in the frame: the frame's full 32-byte last_hash no
    // longer matches, and that check names the frame's last seq — which is
    // the forged record.
    let built = build_ledger();
    let store = open_store(built.dir.path());
    // A one-task frame ends with the ack: forge it with another worker.
    let (key, mut frame) = frames(&store)
        .into_iter()
        .find(|(k, f)| *k > 100 && f.header.count == 4)
        .unwrap();
    let index = frame.entries.len() - 1;
    let seq = last(&frame);
    let Ok(Event::TaskAcked { task, output, .. }) = decode_event(&frame.entries[index].2) else {
        panic!("a one-task frame ends with its ack")
    };
    frame.entries[index].2 = encode_event(&Event::TaskAcked {
        task,
        worker: "mallory".into(),
        output,
    });
    let prev = hash_at(&store, seq - 1);
    let (at, _, bytes) = &frame.entries[index];
    frame.entries[index].1 = tag_of(&record_hash(seq, *at, &prev, bytes));
    put_frame(&store, key, &frame);

    let b = broken(&store);
    assert_eq!(b.seq, seq, "{b}");
    assert!(b.what.contains("frame hash mismatch"), "{b}");
}

#[test]
fn verify_forged_tag_and_frame_hash_reports_next_frame_first_seq() {
    // The forger also rewrites the frame's last_hash after editing its last
    // record: the frame is self-consistent, and the break shows at the link
    // to the next frame (whose prev_hash still holds the original hash).
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    let index = cost_index(&frame, 5);
    let mut hash = forge(&store, &mut frame, index);
    // Re-chain the rest of the frame too.
    for i in index + 1..frame.entries.len() {
        let seq = frame.header.first_seq + i as u64;
        let (at, _, bytes) = &frame.entries[i];
        hash = record_hash(seq, *at, &hash, bytes);
        frame.entries[i].1 = tag_of(&hash);
    }
    frame.header.last_hash = *hash.as_bytes();
    let next_seq = last(&frame) + 1;
    put_frame(&store, key, &frame);

    let b = broken(&store);
    assert_eq!(b.seq, next_seq, "{b}");
    assert!(b.what.contains("prev_hash"), "{b}");
}

#[test]
fn verify_fully_rechained_history_reports_checkpoint_seq() {
    // A forger who re-chains everything from the edit to the head leaves a
    // self-consistent chain; only the checkpoint close recorded at the head
    // catches it, and names the checkpoint's seq.
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    let index = cost_index(&frame, 5);
    let mut hash = forge(&store, &mut frame, index);
    let mut chain = vec![(key, frame)];
    chain.extend(frames(&store).into_iter().filter(|(k, _)| *k > key));
    for (n, (_, f)) in chain.iter_mut().enumerate() {
        let start = if n == 0 { index + 1 } else { 0 };
        if n > 0 {
            f.header.prev_hash = *hash.as_bytes();
        }
        for i in start..f.entries.len() {
            let seq = f.header.first_seq + i as u64;
            let (at, _, bytes) = &f.entries[i];
            hash = record_hash(seq, *at, &hash, bytes);
            f.entries[i].1 = tag_of(&hash);
        }
        f.header.last_hash = *hash.as_bytes();
    }
    for (k, f) in &chain {
        put_frame(&store, *k, f);
    }
    assert_ne!(hash, built.head_hash);
    // The chain alone holds.
    assert_eq!(
        store
            .walk(1, |_| ControlFlow::Continue(()))
            .expect("re-chained walk")
            .hash,
        hash
    );

    let b = broken(&store);
    assert_eq!(b.seq, built.head_seq, "{b}");
    assert!(b.what.contains("rewritten history"), "{b}");
}

// ---------------------------------------------------------------------------
// c. A deleted frame.

#[test]
fn verify_deleted_frame_reports_its_first_seq_missing() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, frame) = frame_with_at_least(&store, 4, 200);
    store
        .log_tree()
        .remove(frame_key(key))
        .unwrap()
        .expect("frame existed");

    let b = broken(&store);
    assert_eq!(b.seq, key, "{b}");
    assert!(b.what.contains("missing"), "{b}");
    assert!(
        b.what.contains(&format!("{key}..{}", last(&frame))),
        "names the missing range: {b}"
    );
}

#[test]
fn verify_deleted_first_frame_reports_seq_one_missing() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    store
        .log_tree()
        .remove(frame_key(1))
        .unwrap()
        .expect("frame 1 existed");

    let b = broken(&store);
    assert_eq!(b.seq, 1, "{b}");
    assert!(b.what.contains("missing"), "{b}");
}

// ---------------------------------------------------------------------------
// d. A record removed from inside a frame.

#[test]
fn verify_removed_record_reports_its_seq() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    let index = 7;
    let seq = frame.header.first_seq + index as u64;
    frame.entries.remove(index);
    frame.header.count -= 1;
    put_frame(&store, key, &frame);

    let b = broken(&store);
    assert_eq!(b.seq, seq, "{b}");
}

#[test]
fn verify_removed_first_record_of_frame_reports_its_seq() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    frame.entries.remove(0);
    frame.header.count -= 1;
    put_frame(&store, key, &frame);

    let b = broken(&store);
    assert_eq!(b.seq, key, "{b}");
}

#[test]

fn verify_removed_last_record_of_frame_reports_its_seq() {
    // Today every remaining tag matches, so the only failing check is the
    // frame's last_hash, reported at the new last seq: an intact record.
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    let removed = last(&frame);
    frame.entries.pop();
    frame.header.count -= 1;
    put_frame(&store, key, &frame);

    let b = broken(&store);
    assert_eq!(b.seq, removed, "{b}");
}

// ---------------------------------------------------------------------------
// e. Two records swapped inside a frame.

#[test]
fn verify_swapped_records_report_first_swapped_seq() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    let (i, j) = (4, 11);
    assert_ne!(frame.entries[i].2, frame.entries[j].2);
    frame.entries.swap(i, j);
    put_frame(&store, key, &frame);

    let b = broken(&store);
    assert_eq!(b.seq, frame.header.first_seq + i as u64, "{b}");
    assert!(b.what.contains("hash mismatch"), "{b}");
}

#[test]
fn verify_swapped_adjacent_records_keeping_times_report_first_seq() {
    // Swap only the event bytes and tags (times stay in order), the subtler
    // reorder.
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    let i = 9;
    let (a, b) = (frame.entries[i].clone(), frame.entries[i + 1].clone());
    frame.entries[i] = (a.0, b.1, b.2);
    frame.entries[i + 1] = (b.0, a.1, a.2);
    put_frame(&store, key, &frame);

    let brk = broken(&store);
    assert_eq!(brk.seq, frame.header.first_seq + i as u64, "{brk}");
}

// ---------------------------------------------------------------------------
// f. Two frames' values swapped under their keys.

#[test]
fn verify_swapped_frames_report_first_swapped_frame_seq() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let all = frames(&store);
    let (ka, fa) = all.iter().find(|(k, _)| *k > 100).cloned().unwrap();
    let (kb, fb) = all
        .iter()
        .rev()
        .find(|(_, f)| f.header.count >= 20)
        .cloned()
        .unwrap();
    assert!(ka < kb);
    put_frame(&store, ka, &fb);
    put_frame(&store, kb, &fa);

    let b = broken(&store);
    assert_eq!(b.seq, ka, "{b}");
    assert!(b.what.contains("moved"), "{b}");
}

// ---------------------------------------------------------------------------
// g. A truncated tail.

#[test]
fn verify_truncated_tail_after_checkpoint_reports_truncation() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let checkpoints = store.checkpoints().unwrap();
    assert_eq!(
        checkpoints.iter().map(|c| c.seq).max(),
        Some(built.head_seq)
    );
    let (key, frame) = frames(&store).pop().unwrap();
    assert_eq!(last(&frame), built.head_seq);
    store
        .log_tree()
        .remove(frame_key(key))
        .unwrap()
        .expect("last frame existed");

    let b = broken(&store);
    assert_eq!(b.seq, key, "{b}");
    assert!(b.what.contains("truncated"), "{b}");
    assert!(
        b.what.contains(&format!("seq {}", built.head_seq)),
        "names the checkpoint seq: {b}"
    );
}

#[test]
fn verify_truncated_tail_with_explicit_checkpoint_reports_truncation() {
    // A checkpoint taken mid-history (`Ledger::checkpoint`), then more
    // appends: cutting the log back below that checkpoint is still caught.
    let built = build_ledger();
    let (mid_seq, extra_head) = {
        let options = LedgerOptions {
            durability: Durability::Always,
            checkpoint_every: 0,
            create: false,
        };
        let ledger = open_ledger(built.dir.path(), options);
        let cp = ledger.checkpoint().unwrap();
        assert_eq!(cp.seq, built.head_seq);
        let tenant = TenantId::from("acme");
        let r = ledger
            .append([Event::CostIncurred {
                tenant,
                task: None,
                category: Category::Tool,
                amount_micros: Micros(5),
            }])
            .unwrap();
        ledger.close().unwrap();
        (cp.seq, r.last_seq)
    };
    assert_eq!(extra_head, built.head_seq + 1);
    let store = open_store(built.dir.path());
    // Drop the appended frame and the last frame before it: the log now ends
    // below the checkpoint taken at `mid_seq`.
    let all = frames(&store);
    let (k1, _) = &all[all.len() - 1];
    let (k2, _) = &all[all.len() - 2];
    store.log_tree().remove(frame_key(*k1)).unwrap().unwrap();
    store.log_tree().remove(frame_key(*k2)).unwrap().unwrap();

    let b = broken(&store);
    assert_eq!(b.seq, *k2, "{b}");
    assert!(b.what.contains("truncated"), "{b}");
    assert!(mid_seq >= *k2);
}

#[test]
fn verify_truncated_tail_without_checkpoint_passes_as_shorter_ledger() {
    // The limit of the design: with the checkpoints gone too, a cut tail is
    // a shorter valid ledger. (Pinned so that a change here is noticed.)
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, _) = frames(&store).pop().unwrap();
    store.log_tree().remove(frame_key(key)).unwrap().unwrap();
    // Checkpoints live in their own sled tree; the store exposes no remover,
    // so reach it through sled directly after dropping the store.
    drop(store);
    {
        let db = retry_locked(
            || sled::Config::new().path(built.dir.path()).open(),
            |e| e.to_string().contains("lock"),
        );
        db.open_tree("checkpoints").unwrap().clear().unwrap();
        db.flush().unwrap();
    }
    let store = open_store(built.dir.path());
    let report = good(&store);
    assert_eq!(report.records, key - 1);
    assert_eq!(report.head.seq, key - 1);
    assert_eq!(report.checkpoints, 0);
}

// ---------------------------------------------------------------------------
// h. Garbage instead of a frame.

#[test]
fn verify_garbage_frame_reports_its_first_seq() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, frame) = frame_with_at_least(&store, 20, 1);
    let real = frame.encode();
    let head_len = header_len(&real);
    let seed = 0x7a3e_5eed_u64;
    println!("garbage seed {seed:#x}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("one byte".into(), vec![1]),
        ("text".into(), b"this is not a frame at all".to_vec()),
        ("all ones".into(), vec![0xFF; 300]),
        ("zeros".into(), vec![0; 300]),
        ("header only".into(), real[..head_len].to_vec()),
    ];
    let mut zero = frame.clone();
    zero.header.count = 0;
    values.push(("count 0".into(), zero.encode()));
    for n in 0..200 {
        let len = rng.random_range(0..600);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if n % 2 == 0 && !bytes.is_empty() {
            bytes[0] = 1; // a valid frame version, so decoding goes further
        }
        values.push((format!("random #{n}"), bytes));
    }
    // A real header (right version, first seq and prev hash) over random entries.
    for n in 0..50 {
        let mut bytes = real[..head_len].to_vec();
        let len = rng.random_range(0..400);
        bytes.extend((0..len).map(|_| rng.random::<u8>()));
        values.push((format!("real header + random #{n}"), bytes));
    }
    for (name, value) in values {
        store.log_tree().insert(frame_key(key), value).unwrap();
        let b = broken(&store);
        assert_eq!(b.seq, key, "garbage `{name}` (seed {seed:#x}): {b}");
    }
}

#[test]
fn verify_cut_frame_reports_first_record_it_cannot_read() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, frame) = frame_with_at_least(&store, 20, 1);
    let real = frame.encode();

    // One byte short: every record but the last still decodes and checks.
    store
        .log_tree()
        .insert(frame_key(key), &real[..real.len() - 1])
        .unwrap();
    let b = broken(&store);
    assert_eq!(b.seq, last(&frame), "{b}");
    assert!(b.what.contains("cannot be decoded"), "{b}");

    // Half a frame: the first record whose entry was cut.
    let half = real.len() / 2;
    // The encoding of the header plus the first `k` entries ends where
    // entry `k - 1` ends in the real frame.
    let end_of = |k: usize| {
        OwnedFrame {
            header: frame.header.clone(),
            entries: frame.entries[..k].to_vec(),
        }
        .encode()
        .len()
    };
    assert_eq!(end_of(frame.entries.len()), real.len());
    let cut_index = (1..=frame.entries.len())
        .find(|&k| end_of(k) > half)
        .unwrap()
        - 1;
    let first_cut = Some(frame.header.first_seq + cut_index as u64);
    store
        .log_tree()
        .insert(frame_key(key), &real[..half])
        .unwrap();
    let b = broken(&store);
    assert_eq!(Some(b.seq), first_cut, "{b}");
}

/// Set on a re-executed copy of this test binary: run the in-process check
/// of a frame whose count is far past its entries.
const HUGE_COUNT_CHILD_ENV: &str = "RUNLEDGER_TAMPER_HUGE_COUNT_CHILD";

/// The body of the check below; does nothing unless run as its child.
#[test]
fn verify_frame_count_past_entries_child() {
    if std::env::var_os(HUGE_COUNT_CHILD_ENV).is_none() {
        return;
    }
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, frame) = frame_with_at_least(&store, 20, 1);
    let mut huge = frame.clone();
    huge.header.count = u32::MAX;
    store
        .log_tree()
        .insert(frame_key(key), huge.encode())
        .unwrap();
    let b = broken(&store);
    assert_eq!(b.seq, last(&frame) + 1, "{b}");
    assert!(b.what.contains("cannot be decoded"), "{b}");
    println!("huge-count child: verify reported {b}");
}

#[test]

fn verify_frame_count_past_entries_reports_first_missing_record() {
    // A header whose count is far past its entries: the records there
    // verify, the first missing one cannot be decoded. Run in a copy of this
    // binary so that an abort (e.g. allocating by the untrusted count) fails
    // this test alone instead of killing every test in the binary.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "verify_frame_count_past_entries_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HUGE_COUNT_CHILD_ENV, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("huge-count child: verify reported"),
        "the child ran the check:\n{stdout}"
    );
}

#[test]
fn cli_verify_frame_count_past_entries_exits_one_without_abort() {
    // A header whose count is far past its entries: the records there
    // verify, the first missing one cannot be decoded. Run through the CLI
    // so that an abort (e.g. allocating by the untrusted count) fails this
    // test alone instead of killing the whole test binary.
    let built = build_ledger();
    let (expected, _) = {
        let store = open_store(built.dir.path());
        let (key, frame) = frame_with_at_least(&store, 20, 1);
        let mut huge = frame.clone();
        huge.header.count = u32::MAX;
        store
            .log_tree()
            .insert(frame_key(key), huge.encode())
            .unwrap();
        store.flush(true).unwrap();
        (last(&frame) + 1, key)
    };
    let out = runledger(built.dir.path(), &["--json", "verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "status {:?}, stderr: {stderr}",
        out.status
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["seq"], expected, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cannot be decoded"),
        "{v}"
    );
}

#[test]

fn verify_missing_frame_before_a_damaged_one_reports_the_missing_seq() {
    // Two breaks: a deleted frame, and an edited record in the frame after
    // it. The first bad seq is the first missing one.
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let all = frames(&store);
    let at = all
        .iter()
        .position(|(k, f)| *k > 100 && f.header.count == 4)
        .unwrap();
    let (gone, _) = all[at];
    let (next_key, mut next) = all[at + 1].clone();
    store.log_tree().remove(frame_key(gone)).unwrap().unwrap();
    let index = cost_index(&next, 0);
    edit_cost(&mut next, index);
    put_frame(&store, next_key, &next);

    let b = broken(&store);
    assert_eq!(b.seq, gone, "{b}");
    assert!(b.what.contains("missing"), "{b}");
}

#[test]
fn verify_bad_link_before_a_damaged_record_reports_the_link() {
    // The frame's prev_hash is wrong and a record inside it is edited: the
    // first bad seq is the frame's first, where the link breaks.
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    frame.header.prev_hash = [0xAB; 32];
    let index = cost_index(&frame, 5);
    edit_cost(&mut frame, index);
    put_frame(&store, key, &frame);

    let b = broken(&store);
    assert_eq!(b.seq, key, "{b}");
}

/// Length of the encoded header at the front of a frame.
fn header_len(frame_bytes: &[u8]) -> usize {
    let (_, entries) = runledger::log::frame::decode_header(frame_bytes).unwrap();
    frame_bytes.len() - entries.len()
}

#[test]
fn verify_trailing_bytes_after_frame_reports_seq_after_its_last() {
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, frame) = frame_with_at_least(&store, 20, 1);
    let mut bytes = frame.encode();
    bytes.extend_from_slice(b"junk");
    store.log_tree().insert(frame_key(key), bytes).unwrap();

    let b = broken(&store);
    assert_eq!(b.seq, last(&frame) + 1, "{b}");
    assert!(b.what.contains("unexpected bytes"), "{b}");
}

#[test]
fn verify_undecodable_event_with_matching_tag_reports_its_seq() {
    // The chain holds (tags recomputed over the garbage), but the event
    // bytes are not an event: verify decodes every event and names it.
    let built = build_ledger();
    let store = open_store(built.dir.path());
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    let index = frame.entries.len() - 1;
    let seq = last(&frame);
    let prev = hash_at(&store, seq - 1);
    frame.entries[index].2 = vec![9, 9, 9];
    let (at, _, bytes) = &frame.entries[index];
    let hash = record_hash(seq, *at, &prev, bytes);
    frame.entries[index].1 = tag_of(&hash);
    // Keep the link to the next frame intact by re-chaining from here on.
    frame.header.last_hash = *hash.as_bytes();
    put_frame(&store, key, &frame);
    let mut h = hash;
    for (k, mut f) in frames(&store).into_iter().filter(|(k, _)| *k > key) {
        f.header.prev_hash = *h.as_bytes();
        for i in 0..f.entries.len() {
            let s = f.header.first_seq + i as u64;
            let (at, _, bytes) = &f.entries[i];
            h = record_hash(s, *at, &h, bytes);
            f.entries[i].1 = tag_of(&h);
        }
        f.header.last_hash = *h.as_bytes();
        put_frame(&store, k, &f);
    }

    let b = broken(&store);
    assert_eq!(b.seq, seq, "{b}");
    assert!(b.what.contains("cannot be decoded"), "{b}");
}

// ---------------------------------------------------------------------------
// The `runledger verify` command.

/// Runs the CLI on `dir`, again while it finds the directory still locked
/// by this process's just-dropped store (see [`LOCK_GRACE`]).
fn runledger(dir: &Path, args: &[&str]) -> std::process::Output {
    let start = Instant::now();
    loop {
        let out = support::bin::runledger(dir, args);
        let locked = out.status.code() == Some(2)
            && String::from_utf8_lossy(&out.stderr).contains("in use by another process");
        if !locked || start.elapsed() > LOCK_GRACE {
            return out;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Damages the ledger by editing a cost mid-frame; returns the edited seq.
fn tamper_one_record(dir: &Path) -> u64 {
    let store = open_store(dir);
    let (key, mut frame) = frame_with_at_least(&store, 20, 1);
    let index = cost_index(&frame, 5);
    edit_cost(&mut frame, index);
    put_frame(&store, key, &frame);
    store.flush(true).unwrap();
    frame.header.first_seq + index as u64
}

#[test]
fn cli_verify_good_ledger_exits_zero_and_prints_head() {
    let built = build_ledger();
    let out = runledger(built.dir.path(), &["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout} stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!(
            "ok: {TOTAL_RECORDS} records, head {}\n",
            built.head_hash.to_hex()
        )
    );
}

#[test]
fn cli_verify_good_ledger_json_reports_ok_true() {
    let built = build_ledger();
    let out = runledger(built.dir.path(), &["--json", "verify"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["ok"], true);
    assert_eq!(v["records"], TOTAL_RECORDS);
    assert_eq!(v["head_seq"], built.head_seq);
    assert_eq!(v["head"], built.head_hash.to_hex().as_str());
    assert_eq!(v["checkpoints"], 1);
}

#[test]
fn cli_verify_tampered_ledger_exits_one_naming_seq() {
    let built = build_ledger();
    let seq = tamper_one_record(built.dir.path());
    let out = runledger(built.dir.path(), &["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout {stdout} stderr {stderr}"
    );
    assert!(
        stdout.starts_with(&format!("FAILED at seq {seq}: ")),
        "stdout: {stdout}"
    );
    assert!(
        stderr.contains(&format!("verification failed at seq {seq}")),
        "stderr: {stderr}"
    );
}

#[test]
fn cli_verify_tampered_ledger_json_reports_ok_false_and_seq() {
    let built = build_ledger();
    let seq = tamper_one_record(built.dir.path());
    let out = runledger(built.dir.path(), &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // serde_json sorts object keys: the line is {"error":..,"ok":false,"seq":N}.
    assert_eq!(stdout.lines().count(), 1, "stdout: {stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(v["ok"], false);
    assert_eq!(v["seq"], seq);
    assert!(
        v["error"].as_str().unwrap().contains("hash mismatch"),
        "{v}"
    );
}

#[test]
fn cli_verify_garbage_frame_exits_one_without_panic() {
    let built = build_ledger();
    let key = {
        let store = open_store(built.dir.path());
        let (key, _) = frame_with_at_least(&store, 4, 300);
        store
            .log_tree()
            .insert(frame_key(key), &b"\x01garbage\xff\xff\xff\xff"[..])
            .unwrap();
        store.flush(true).unwrap();
        key
    };
    let out = runledger(built.dir.path(), &["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout {stdout} stderr {stderr}"
    );
    assert!(
        stdout.starts_with(&format!("FAILED at seq {key}: ")),
        "stdout: {stdout}"
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn cli_verify_missing_ledger_exits_two() {
    let dir = tempfile::tempdir().unwrap();
    let out = runledger(&dir.path().join("nothing-here"), &["verify"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no ledger at"));
}

// ---------------------------------------------------------------------------
// The derived indices (by_run, by_tenant): one entry per id and frame,
// keyed `id ‖ 0xFF ‖ frame seq (big-endian)`, valued by the offsets in
// the frame of the id's records. Damaged behind the ledger's back, they
// must be named by `verify`, refused by reads through them, and rebuilt
// by `verify --repair-indices`.

const RUN: &str = "run-1";

/// Opens the raw sled database of a closed ledger and runs `f` on the
/// tree `name`, flushing after.
fn with_tree<T>(dir: &Path, name: &str, f: impl FnOnce(&sled::Tree) -> T) -> T {
    let db = retry_locked(
        || sled::Config::new().path(dir).open(),
        |e| e.to_string().contains("lock"),
    );
    let tree = db.open_tree(name).expect("open tree");
    let out = f(&tree);
    db.flush().expect("flush");
    out
}

fn index_key(id: &str, frame_seq: u64) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.push(0xFF);
    key.extend_from_slice(&frame_seq.to_be_bytes());
    key
}

fn offsets_of(value: &[u8]) -> Vec<u32> {
    bincode::decode_from_slice(value, bincode::config::standard())
        .expect("index value")
        .0
}

fn offsets_value(offsets: &[u32]) -> Vec<u8> {
    bincode::encode_to_vec(offsets, bincode::config::standard()).expect("encode offsets")
}

/// The entries of `id` in index `tree`: frame seq and offsets, in order.
fn index_entries(dir: &Path, tree: &str, id: &str) -> Vec<(u64, Vec<u32>)> {
    with_tree(dir, tree, |t| {
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(0xFF);
        t.scan_prefix(&prefix)
            .map(|item| {
                let (key, value) = item.expect("read index");
                let seq = u64::from_be_bytes(key[prefix.len()..].try_into().expect("8-byte seq"));
                (seq, offsets_of(&value))
            })
            .collect()
    })
}

fn index_entry(dir: &Path, tree: &str, id: &str, n: usize) -> (u64, Vec<u32>) {
    index_entries(dir, tree, id).swap_remove(n)
}

/// Deletes the `n`-th by_run entry of the run; returns the first seq it listed.
fn delete_run_entry(dir: &Path, n: usize) -> u64 {
    let (frame_seq, offsets) = index_entry(dir, "by_run", RUN, n);
    with_tree(dir, "by_run", |t| {
        t.remove(index_key(RUN, frame_seq)).expect("remove");
    });
    frame_seq + u64::from(offsets[0])
}

/// The seqs `log --json` printed.
fn logged_seqs(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON record");
            v["seq"].as_u64().expect("seq")
        })
        .collect()
}

fn assert_exit(out: &std::process::Output, code: i32) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout {stdout} stderr {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    (stdout, stderr)
}

#[test]
fn cli_verify_names_a_deleted_by_run_entry_and_its_seq() {
    let built = build_ledger();
    let seq = delete_run_entry(built.dir.path(), 40);
    let out = runledger(built.dir.path(), &["verify"]);
    let (stdout, stderr) = assert_exit(&out, 1);
    assert!(
        stdout.starts_with(&format!("FAILED at seq {seq}: ")),
        "stdout: {stdout}"
    );
    assert!(
        stdout.contains("by_run") && stdout.contains(RUN),
        "stdout: {stdout}"
    );
    assert!(stderr.contains("--repair-indices"), "stderr: {stderr}");
}

#[test]
fn cli_verify_names_an_edited_or_forged_index_entry() {
    // One offset dropped from an entry of the big batch's frames.
    let built = build_ledger();
    // An entry of the big batch, whose frames hold many records each.
    let (frame_seq, offsets) = index_entries(built.dir.path(), "by_tenant", "acme")
        .into_iter()
        .find(|(seq, offsets)| *seq > 4 * SMALL_TASKS && offsets.len() > 2)
        .expect("a big frame");
    let dropped = offsets[1];
    let kept: Vec<u32> = offsets.iter().copied().filter(|o| *o != dropped).collect();
    with_tree(built.dir.path(), "by_tenant", |t| {
        t.insert(index_key("acme", frame_seq), offsets_value(&kept))
            .expect("insert");
    });
    let out = runledger(built.dir.path(), &["verify"]);
    let (stdout, _) = assert_exit(&out, 1);
    let seq = frame_seq + u64::from(dropped);
    assert!(
        stdout.starts_with(&format!("FAILED at seq {seq}: ")) && stdout.contains("by_tenant"),
        "stdout: {stdout}"
    );

    // An entry for a run the log never had, listing seq 1.
    let built = build_ledger();
    with_tree(built.dir.path(), "by_run", |t| {
        t.insert(index_key("run-0", 1), offsets_value(&[0]))
            .expect("insert");
    });
    let out = runledger(built.dir.path(), &["verify"]);
    let (stdout, _) = assert_exit(&out, 1);
    assert!(
        stdout.starts_with("FAILED at seq 1: ") && stdout.contains("run-0"),
        "stdout: {stdout}"
    );
}

#[test]
fn cli_reads_through_a_tampered_index_fail_instead_of_missing_records() {
    let built = build_ledger();
    let out = runledger(built.dir.path(), &["log", "--json", "--run", RUN]);
    let all = logged_seqs(&assert_exit(&out, 0).0);
    assert_eq!(all, (2..=TOTAL_RECORDS).collect::<Vec<_>>());
    delete_run_entry(built.dir.path(), 40);
    let out = runledger(built.dir.path(), &["log", "--json", "--run", RUN]);
    let (_, stderr) = assert_exit(&out, 1);
    assert!(
        stderr.contains("by_run") && stderr.contains(RUN),
        "stderr: {stderr}"
    );
    let out = runledger(built.dir.path(), &["diff", RUN, RUN]);
    let (_, stderr) = assert_exit(&out, 1);
    assert!(stderr.contains("by_run"), "stderr: {stderr}");
}

#[test]
fn cli_log_through_the_index_refuses_a_frame_moved_under_another_key() {
    let built = build_ledger();
    {
        let store = open_store(built.dir.path());
        let all = frames(&store);
        let (a, b) = (&all[10], &all[11]);
        put_frame(&store, a.0, &b.1);
        put_frame(&store, b.0, &a.1);
        store.flush(true).unwrap();
    }
    let out = runledger(built.dir.path(), &["log", "--json", "--run", RUN]);
    let (_, stderr) = assert_exit(&out, 1);
    assert!(stderr.contains("records were moved"), "stderr: {stderr}");
}

#[test]
fn cli_verify_repair_indices_rebuilds_them_from_the_log() {
    let built = build_ledger();
    delete_run_entry(built.dir.path(), 40);
    delete_run_entry(built.dir.path(), 7);
    with_tree(built.dir.path(), "by_run", |t| {
        t.insert(index_key("run-0", 1), offsets_value(&[0]))
            .expect("insert");
    });
    let out = runledger(built.dir.path(), &["verify", "--repair-indices"]);
    let (stdout, _) = assert_exit(&out, 0);
    assert!(stdout.contains("indices rebuilt"), "stdout: {stdout}");
    assert_exit(&runledger(built.dir.path(), &["verify"]), 0);
    let out = runledger(built.dir.path(), &["log", "--json", "--run", RUN]);
    let (stdout, _) = assert_exit(&out, 0);
    assert_eq!(
        logged_seqs(&stdout),
        (2..=TOTAL_RECORDS).collect::<Vec<_>>()
    );
    let out = runledger(built.dir.path(), &["log", "--json", "--run", "run-0"]);
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}

#[test]
fn indices_from_before_summaries_are_walked_around_then_rebuilt_on_open() {
    use runledger::log::store::IndexKind;
    let built = build_ledger();
    // What a ledger written before index summaries holds: entries and a
    // high-water mark, no summaries, no index format.
    with_tree(built.dir.path(), "meta", |t| {
        assert!(t.remove("index_format").expect("remove").is_some());
        let sums: Vec<_> = t
            .scan_prefix(b"index_sum\0")
            .keys()
            .map(|k| k.expect("key"))
            .collect();
        assert!(sums.len() >= 2, "a summary per run and tenant");
        for key in sums {
            t.remove(key).expect("remove");
        }
    });
    let count = |store: &Store| {
        let mut n = 0u64;
        let indexed = store
            .walk_indexed(&[(IndexKind::Run, RUN)], 1, |_| {
                n += 1;
                ControlFlow::Continue(())
            })
            .expect("read");
        (indexed.is_some(), n)
    };
    {
        let store = open_store(built.dir.path());
        assert_eq!(count(&store), (false, 0), "the old index is not used");
        assert_eq!(
            runledger::log::replay::check_index(&store).expect("read"),
            Ok(())
        );
    }
    let ledger = open_ledger(
        built.dir.path(),
        LedgerOptions {
            durability: Durability::None,
            checkpoint_every: 0,
            create: false,
        },
    );
    ledger.close().expect("close");
    let store = open_store(built.dir.path());
    assert_eq!(count(&store), (true, TOTAL_RECORDS - 1));
    assert_eq!(
        runledger::log::replay::check_index(&store).expect("read"),
        Ok(())
    );
}
