//! Criterion benchmarks of the ledger: append under each durability mode
//! (8 appenders, batches of 256), a raw sled baseline (one key per event, no
//! hashing) in the same run, replay and verify of a prebuilt ledger.
//!
//! `cargo bench --bench ledger`; the figures of DESIGN §12 are the targets.
//! `runledger bench ledger` measures the same with latency percentiles and
//! bytes per event.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use runledger::bench::synthetic_task;
use runledger::domain::{Event, Micros, RunId, TenantId, WorkerId};
use runledger::log::codec::encode_event;
use runledger::log::replay;
use runledger::log::verify::verify;
use runledger::log::{Durability, Ledger, LedgerOptions, Store};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: u64 = 40_000;
const APPENDERS: u64 = 8;
const BATCH: usize = 256;

fn setup(run: &RunId, tenants: u64) -> Vec<Event> {
    let mut events = vec![Event::RunStarted {
        run: run.clone(),
        seed: 0,
        config_hash: String::new(),
    }];
    for k in 0..tenants {
        events.push(Event::TenantRegistered {
            tenant: TenantId(format!("t{k}")),
            budget_micros: Micros(i64::MAX / 4),
            max_concurrent_runs: 1_000,
            learning_intensity: Default::default(),
            meta_learning: false,
            budget_period: Default::default(),
        });
    }
    events
}

fn batches(run: &RunId, k: u64, per_appender: u64) -> Vec<Vec<Event>> {
    let tenant = TenantId(format!("t{k}"));
    let worker = WorkerId(format!("w{k}"));
    let events: Vec<Event> = (0..per_appender / 4)
        .flat_map(|n| synthetic_task(run, &tenant, &worker, k * 1_000_000_000 + n))
        .collect();
    events.chunks(BATCH).map(<[Event]>::to_vec).collect()
}

fn append_once(durability: Durability) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(
        dir.path(),
        LedgerOptions {
            durability,
            checkpoint_every: 0,
            create: true,
        },
    )
    .unwrap();
    let run = RunId("bench".into());
    ledger.append(setup(&run, APPENDERS)).unwrap();
    let work: Vec<_> = (0..APPENDERS)
        .map(|k| batches(&run, k, EVENTS / APPENDERS))
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for batches in work {
            let ledger = ledger.clone();
            s.spawn(move || {
                for batch in batches {
                    ledger.append(batch).unwrap();
                }
            });
        }
    });
    let elapsed = start.elapsed();
    ledger.close().unwrap();
    elapsed
}

fn raw_sled_once(durability: Durability, events: &[Vec<u8>]) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()
        .unwrap();
    let file = std::fs::File::open(dir.path().join("db")).unwrap();
    let start = Instant::now();
    for (i, bytes) in events.iter().enumerate() {
        db.insert((i as u64).to_be_bytes(), bytes.as_slice())
            .unwrap();
        if durability == Durability::Always && (i + 1) % (APPENDERS as usize * BATCH) == 0 {
            db.flush().unwrap();
            file.sync_data().unwrap();
        }
    }
    db.flush().unwrap();
    file.sync_data().unwrap();
    start.elapsed()
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(EVENTS));
    let run = RunId("raw".into());
    let raw: Vec<Vec<u8>> = batches(&run, 0, EVENTS)
        .into_iter()
        .flatten()
        .map(|e| encode_event(&e))
        .collect();
    for (name, durability) in [
        ("always", Durability::Always),
        (
            "batch",
            Durability::Batch {
                interval: Duration::from_millis(10),
            },
        ),
        ("none", Durability::None),
    ] {
        group.bench_function(format!("ledger/{name}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| append_once(durability)).sum())
        });
        group.bench_function(format!("raw_sled/{name}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| raw_sled_once(durability, &raw)).sum())
        });
    }
    group.finish();
}

fn read_paths(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(
        dir.path(),
        LedgerOptions {
            durability: Durability::None,
            checkpoint_every: 0,
            create: true,
        },
    )
    .unwrap();
    let run = RunId("read".into());
    ledger.append(setup(&run, 16)).unwrap();
    for k in 0..16 {
        for batch in batches(&run, k, 200_000 / 16) {
            ledger.append(batch).unwrap();
        }
    }
    let head = ledger.head().unwrap();
    ledger.close().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(head.seq));
    group.bench_function("replay", |b| {
        b.iter(|| replay::fold(&store, None).unwrap().head)
    });
    group.bench_function("verify", |b| {
        b.iter(|| verify(&store).unwrap().unwrap().records)
    });
    group.finish();
}

criterion_group!(benches, append, read_paths);
criterion_main!(benches);
