//! The Redis Streams transport against a real `redis-server` that each
//! test starts on its own free loopback port (see `support/redis.rs`):
//! priority and aging, FIFO, leases reclaimed with XAUTOCLAIM, late and
//! duplicate reports, delayed retries promoted exactly once, dead letters,
//! bounds, and clear errors for a dead server or a bad URL.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use runledger::domain::{Category, Micros, Params, Priority, RunId, TaskId, TenantId, WorkerId};
use runledger::runtime::redis::{Outcome, RedisError, RedisStreams, StreamsConfig, TaskEnvelope};
use support::redis::RedisServer;

macro_rules! server_or_skip {
    () => {
        match RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

fn envelope(task: &str, priority: Priority) -> TaskEnvelope {
    TaskEnvelope {
        task: TaskId::new(task),
        attempt: 1,
        run: RunId::new("run-1"),
        tenant: TenantId::new("acme"),
        priority,
        handler: "sim".to_owned(),
        params: Params::from_value(&serde_json::json!({"n": 1})),
        inputs: vec![(TaskId::new("parent"), Params::null())],
        lease_ms: 100,
        seed: 0,
        timeout_ms: 0,
    }
}

fn config(prefix: &str) -> StreamsConfig {
    StreamsConfig {
        prefix: prefix.to_owned(),
        lease: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(2),
        ..StreamsConfig::default()
    }
}

async fn connect(server: &RedisServer, config: StreamsConfig) -> RedisStreams {
    RedisStreams::connect(&server.url(), config)
        .await
        .expect("connect to the test's redis-server")
}

fn tasks(claimed: &[runledger::runtime::redis::Claimed]) -> Vec<String> {
    claimed
        .iter()
        .map(|c| c.envelope.task.to_string())
        .collect()
}

fn ack() -> Outcome {
    Outcome::Ack {
        output: Params::from_value(&serde_json::json!({"ok": true})),
        costs: vec![(Category::Llm, Micros(1_250)), (Category::Tool, Micros(7))],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_serves_strict_priority_order_when_fresh() {
    let server = server_or_skip!();
    let streams = connect(&server, config("prio")).await;
    let order = [
        ("b1", Priority::Batch),
        ("l1", Priority::Low),
        ("n1", Priority::Normal),
        ("c1", Priority::Critical),
        ("h1", Priority::High),
        ("c2", Priority::Critical),
    ];
    for (task, priority) in order {
        streams
            .dispatch(&envelope(task, priority))
            .await
            .expect("dispatch");
    }
    let claimed = streams
        .claim("w1", 10, Duration::ZERO)
        .await
        .expect("claim");
    assert_eq!(tasks(&claimed), ["c1", "c2", "h1", "n1", "l1", "b1"]);
    assert!(
        claimed
            .iter()
            .all(|c| c.deliveries == 1 && c.attempt() == 1)
    );
    assert_eq!(claimed[0].envelope, envelope("c1", Priority::Critical));
    // One at a time gives the same order.
    for (task, priority) in order {
        streams
            .dispatch(&envelope(task, priority))
            .await
            .expect("dispatch");
    }
    let mut one_by_one = Vec::new();
    for _ in 0..6 {
        one_by_one.extend(tasks(
            &streams.claim("w1", 1, Duration::ZERO).await.expect("claim"),
        ));
    }
    assert_eq!(one_by_one, ["c1", "c2", "h1", "n1", "l1", "b1"]);
    assert!(
        streams
            .claim("w1", 1, Duration::ZERO)
            .await
            .expect("claim")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_keeps_fifo_within_a_priority_across_batches() {
    let server = server_or_skip!();
    let streams = connect(&server, config("fifo")).await;
    let sent: Vec<TaskEnvelope> = (0..50)
        .map(|i| envelope(&format!("t{i:02}"), Priority::Normal))
        .collect();
    streams.dispatch_many(&sent).await.expect("dispatch");
    let mut got = Vec::new();
    loop {
        let batch = streams.claim("w1", 7, Duration::ZERO).await.expect("claim");
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 7);
        got.extend(tasks(&batch));
    }
    let want: Vec<String> = sent.iter().map(|e| e.task.to_string()).collect();
    assert_eq!(got, want);
}

/// Dispatches 5 CRITICAL and claims 5 per round, after one BATCH entry;
/// the round in which the BATCH entry came out, if any.
async fn batch_round_under_flood(streams: &RedisStreams, rounds: usize) -> Option<usize> {
    streams
        .dispatch(&envelope("batch", Priority::Batch))
        .await
        .expect("dispatch");
    for round in 0..rounds {
        let flood: Vec<TaskEnvelope> = (0..5)
            .map(|i| envelope(&format!("c{round}-{i}"), Priority::Critical))
            .collect();
        streams.dispatch_many(&flood).await.expect("dispatch");
        let claimed = streams.claim("w1", 5, Duration::ZERO).await.expect("claim");
        assert_eq!(claimed.len(), 5);
        if tasks(&claimed).iter().any(|t| t == "batch") {
            return Some(round);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aging_lets_batch_through_a_flood_of_critical() {
    let server = server_or_skip!();
    // aging 20 ms: BATCH (4 levels down) passes a CRITICAL entry added
    // more than 80 ms after it.
    let aged = connect(
        &server,
        StreamsConfig {
            aging_ms: 20,
            ..config("aged")
        },
    )
    .await;
    let round = batch_round_under_flood(&aged, 200).await;
    assert!(
        round.is_some(),
        "BATCH starved under the flood despite aging"
    );
    // Without aging in practice (one hour per level) the same flood
    // starves it for the whole test: the rule is what lets it through.
    let strict = connect(
        &server,
        StreamsConfig {
            aging_ms: 3_600_000,
            ..config("strict")
        },
    )
    .await;
    let elapsed = Instant::now();
    assert_eq!(batch_round_under_flood(&strict, 40).await, None);
    assert!(elapsed.elapsed() > Duration::from_millis(150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreported_claim_is_reclaimed_after_its_lease_and_both_results_land() {
    let server = server_or_skip!();
    let lease = StreamsConfig {
        lease: Duration::from_millis(200),
        ..config("lease")
    };
    let worker_a = connect(&server, lease.clone()).await;
    let worker_b = connect(&server, lease.clone()).await;
    let coordinator = connect(&server, lease).await;
    coordinator
        .dispatch(&envelope("t1", Priority::High))
        .await
        .expect("dispatch");

    let first = worker_a.claim("a", 4, Duration::ZERO).await.expect("claim");
    assert_eq!(tasks(&first), ["t1"]);
    assert_eq!((first[0].deliveries, first[0].attempt()), (1, 1));
    // Within the lease nobody else gets it.
    let early = worker_b
        .claim("b", 4, Duration::from_millis(50))
        .await
        .expect("claim");
    assert!(early.is_empty());

    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = worker_b.claim("b", 4, Duration::ZERO).await.expect("claim");
    assert_eq!(tasks(&second), ["t1"]);
    assert_eq!((second[0].deliveries, second[0].attempt()), (2, 2));
    assert_eq!(second[0].receipt, first[0].receipt);

    let b = WorkerId::new("b");
    worker_b
        .report(&second[0].receipt, &second[0].result(&b, ack()))
        .await
        .expect("report b");
    // The first worker comes back late: its report still lands.
    let a = WorkerId::new("a");
    let late = Outcome::Nack {
        error: "took too long".to_owned(),
        timed_out: true,
        costs: vec![(Category::Llm, Micros(900))],
    };
    worker_a
        .report(&first[0].receipt, &first[0].result(&a, late.clone()))
        .await
        .expect("late report a");

    let results = coordinator
        .results("coord", 10, Duration::from_millis(100))
        .await
        .expect("results");
    let seen: Vec<(String, u32, String)> = results
        .iter()
        .map(|r| {
            (
                r.result.task.to_string(),
                r.result.attempt,
                r.result.worker.to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("t1".to_owned(), 2, "b".to_owned()),
            ("t1".to_owned(), 1, "a".to_owned())
        ]
    );
    assert_eq!(results[0].result.outcome, ack());
    assert_eq!(results[1].result.outcome, late);

    let depth = coordinator.depth().await.expect("depth");
    assert_eq!(depth.priorities[Priority::High.index()].length, 0);
    assert_eq!(depth.priorities[Priority::High.index()].pending, 0);
    assert_eq!((depth.results, depth.results_pending), (2, 2));
    // Read but not acknowledged: a restarted coordinator sees them again.
    let again = coordinator
        .pending_results("coord", 10)
        .await
        .expect("pending");
    assert_eq!(again, results);
    let ids: Vec<String> = results.iter().map(|r| r.stream_id.clone()).collect();
    coordinator.ack_results(&ids).await.expect("ack results");
    let depth = coordinator.depth().await.expect("depth");
    assert_eq!((depth.results, depth.results_pending), (0, 0));
    assert!(
        coordinator
            .pending_results("coord", 10)
            .await
            .expect("pending")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_due_moves_only_due_retries() {
    let server = server_or_skip!();
    let streams = connect(&server, config("delay")).await;
    for (task, due_ms) in [("late", 3_000), ("early", 1_000), ("mid", 2_000)] {
        streams
            .retry_later(&envelope(task, Priority::Low), due_ms)
            .await
            .expect("retry later");
    }
    assert_eq!(streams.promote_due(999).await.expect("promote"), 0);
    assert_eq!(streams.promote_due(2_500).await.expect("promote"), 2);
    let depth = streams.depth().await.expect("depth");
    assert_eq!(depth.delayed, 1);
    assert_eq!(depth.priorities[Priority::Low.index()].length, 2);
    let claimed = streams.claim("w", 10, Duration::ZERO).await.expect("claim");
    assert_eq!(tasks(&claimed), ["early", "mid"]);
    assert_eq!(streams.promote_due(2_999).await.expect("promote"), 0);
    assert_eq!(streams.promote_due(3_000).await.expect("promote"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_promoters_dispatch_each_retry_exactly_once() {
    let server = server_or_skip!();
    let small_batches = StreamsConfig {
        promote_batch_max: 7,
        ..config("race")
    };
    let one = connect(&server, small_batches.clone()).await;
    let two = connect(&server, small_batches).await;
    for i in 0..200 {
        let priority = Priority::ALL[i % 5];
        one.retry_later(&envelope(&format!("r{i:03}"), priority), 1_000 + i as i64)
            .await
            .expect("retry later");
    }
    async fn drain(streams: &RedisStreams) -> u64 {
        let mut moved = 0;
        loop {
            let n = streams.promote_due(10_000).await.expect("promote");
            if n == 0 {
                return moved;
            }
            moved += n;
        }
    }
    let (a, b) = tokio::join!(drain(&one), drain(&two));
    assert_eq!(a + b, 200, "promoted {a} + {b}");
    let depth = one.depth().await.expect("depth");
    assert_eq!(depth.delayed, 0);
    let queued: u64 = depth.priorities.iter().map(|d| d.length).sum();
    assert_eq!(queued, 200);
    let mut seen = BTreeSet::new();
    loop {
        let claimed = one.claim("w", 64, Duration::ZERO).await.expect("claim");
        if claimed.is_empty() {
            break;
        }
        for task in tasks(&claimed) {
            assert!(seen.insert(task.clone()), "{task} dispatched twice");
        }
    }
    assert_eq!(seen.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_kept_bounded_and_undecodable_entries_go_there() {
    let server = server_or_skip!();
    let streams = connect(
        &server,
        StreamsConfig {
            dead_len_max: 5,
            ..config("dead")
        },
    )
    .await;
    for i in 0..8 {
        streams
            .dead_letter(
                &envelope(&format!("d{i}"), Priority::Normal),
                &format!("attempts exhausted ({i})"),
            )
            .await
            .expect("dead letter");
    }
    let dead = streams.dead_letters(100).await.expect("dead letters");
    assert_eq!(dead.len(), 5);
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons.first(), Some(&"attempts exhausted (3)"));
    assert_eq!(reasons.last(), Some(&"attempts exhausted (7)"));
    let kept: TaskEnvelope = serde_json::from_str(&dead[4].payload).expect("payload decodes");
    assert_eq!(kept, envelope("d7", Priority::Normal));
    assert_eq!(streams.depth().await.expect("depth").dead, 5);

    // An entry someone else wrote, not an envelope: dead-lettered, not handed out.
    let client = redis::Client::open(server.url()).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let _: String = redis::cmd("XADD")
        .arg(streams.task_key(Priority::Normal))
        .arg("*")
        .arg("e")
        .arg("{not json")
        .query_async(&mut raw)
        .await
        .expect("raw xadd");
    streams
        .dispatch(&envelope("good", Priority::Normal))
        .await
        .expect("dispatch");
    let claimed = streams.claim("w", 10, Duration::ZERO).await.expect("claim");
    assert_eq!(tasks(&claimed), ["good"]);
    let dead = streams.dead_letters(100).await.expect("dead letters");
    let last = dead.last().expect("a dead letter");
    assert_eq!(
        (last.kind.as_str(), last.payload.as_str()),
        ("task", "{not json")
    );
    assert!(last.reason.contains("does not decode"), "{}", last.reason);
    let depth = streams.depth().await.expect("depth");
    assert_eq!(depth.priorities[Priority::Normal.index()].length, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_streams_refuse_rather_than_trim() {
    let server = server_or_skip!();
    let streams = connect(
        &server,
        StreamsConfig {
            stream_len_max: 10,
            results_len_max: 2,
            ..config("bound")
        },
    )
    .await;
    let ten: Vec<TaskEnvelope> = (0..10)
        .map(|i| envelope(&format!("t{i}"), Priority::Normal))
        .collect();
    streams
        .dispatch_many(&ten)
        .await
        .expect("dispatch up to the bound");
    let refused = streams
        .dispatch_many(&[
            envelope("x", Priority::Batch),
            envelope("y", Priority::Normal),
        ])
        .await
        .expect_err("past the bound");
    match &refused {
        RedisError::Full { key, len_max, .. } => {
            assert_eq!(key, streams.task_key(Priority::Normal));
            assert_eq!(*len_max, 10);
        }
        other => panic!("expected Full, got {other}"),
    }
    assert!(refused.to_string().contains(&server.url()), "{refused}");
    // All or nothing: the BATCH envelope of the refused call was not added.
    let depth = streams.depth().await.expect("depth");
    assert_eq!(depth.priorities[Priority::Batch.index()].length, 0);
    assert_eq!(depth.priorities[Priority::Normal.index()].length, 10);

    // Results are bounded too; a refused report leaves its task leased.
    let claimed = streams.claim("w", 3, Duration::ZERO).await.expect("claim");
    let w = WorkerId::new("w");
    let reports: Vec<_> = claimed
        .iter()
        .map(|c| (c.receipt.clone(), c.result(&w, ack())))
        .collect();
    streams
        .report_many(&reports[..2])
        .await
        .expect("two results fit");
    let full = streams
        .report_many(&reports[2..])
        .await
        .expect_err("results full");
    assert!(matches!(full, RedisError::Full { .. }), "{full}");
    let depth = streams.depth().await.expect("depth");
    assert_eq!(depth.priorities[Priority::Normal.index()].length, 8);
    assert_eq!(depth.priorities[Priority::Normal.index()].pending, 1);
    // Room again once the stream drains.
    streams
        .dispatch(&envelope("z", Priority::Normal))
        .await
        .expect("dispatch");
    streams
        .dispatch(&envelope("z2", Priority::Normal))
        .await
        .expect("dispatch");
    assert!(
        streams
            .dispatch(&envelope("z3", Priority::Normal))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_longer_than_the_transports_is_refused() {
    let server = server_or_skip!();
    let streams = connect(&server, config("lease-check")).await;
    let mut long = envelope("long", Priority::Normal);
    long.lease_ms = 60_000;
    let error = streams.dispatch(&long).await.expect_err("too long");
    assert!(matches!(error, RedisError::LeaseTooLong { .. }), "{error}");
    assert!(error.to_string().contains("task long"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_gives_an_error_not_a_hang() {
    let mut server = server_or_skip!();
    let streams = connect(&server, config("killed")).await;
    streams
        .dispatch(&envelope("t", Priority::Normal))
        .await
        .expect("dispatch");
    server.kill();
    let started = Instant::now();
    let claim = streams.claim("w", 1, Duration::from_millis(200)).await;
    let error = claim.expect_err("the server is gone");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(error.to_string().contains(&server.url()), "{error}");
    let started = Instant::now();
    let depth = streams.depth().await;
    assert!(depth.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_unreachable_servers_fail_fast_with_the_url() {
    for url in [
        "redis-server://x",
        "http://localhost:6390",
        "localhost:6390",
        "redis://:x:y:z",
    ] {
        let started = Instant::now();
        let error = RedisStreams::connect(url, config("bad"))
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} connected"));
        assert!(matches!(error, RedisError::BadUrl { .. }), "{url}: {error}");
        assert!(error.to_string().contains(url), "{error}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let hidden = RedisStreams::connect("rediss://user:secret@localhost:1", config("bad"))
        .await
        .err()
        .expect("no TLS");
    assert!(!hidden.to_string().contains("secret"), "{hidden}");
    assert!(
        hidden.to_string().contains("user:***@localhost:1"),
        "{hidden}"
    );

    // Nothing listens on this port.
    let port = support::redis::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let error = RedisStreams::connect(&url, config("down"))
        .await
        .err()
        .expect("nothing listens");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(error.to_string().contains(&url), "{error}");

    // A prefix that would break the hash tag.
    let error = RedisStreams::connect(&url, config("a}b"))
        .await
        .err()
        .expect("bad prefix");
    assert!(matches!(error, RedisError::BadPrefix { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aof_server_restarted_on_its_port_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let Some(mut server) = RedisServer::start_aof(dir.path()) else {
        return;
    };
    let streams = connect(&server, config("aof")).await;
    let sent: Vec<TaskEnvelope> = (0..3)
        .map(|i| envelope(&format!("t{i}"), Priority::Normal))
        .collect();
    streams.dispatch_many(&sent).await.expect("dispatch");
    streams
        .retry_later(&envelope("later", Priority::Low), 5_000)
        .await
        .expect("retry later");
    let port = server.port();
    server.restart();
    assert_eq!(server.port(), port);
    // The same handle reconnects: the first call may still meet the old
    // connection's end.
    let give_up = Instant::now() + Duration::from_secs(5);
    let depth = loop {
        match streams.depth().await {
            Ok(depth) => break depth,
            Err(e) if Instant::now() < give_up => {
                eprintln!("while Redis restarts: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no reconnection after the restart: {e}"),
        }
    };
    assert_eq!(depth.priorities[Priority::Normal.index()].length, 3);
    assert_eq!(depth.delayed, 1);
    let claimed = streams.claim("w", 10, Duration::ZERO).await.expect("claim");
    assert_eq!(tasks(&claimed), ["t0", "t1", "t2"]);
}
