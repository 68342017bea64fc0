//! Queue semantics through the `TaskQueue` trait: strict priority, FIFO
//! within a priority, aging, leases that expire and return the task,
//! results counted once per (task, attempt), retries with backoff, dead
//! letters that cancel their dependants, batches and depth. The suite is
//! generic over the implementation: the in-memory queue and the Redis
//! Streams queue (against a `redis-server` each test starts on a free
//! loopback port) run the same checks.

mod support;

use std::time::Duration;

use runledger::domain::scheduler::QueuePolicy;
use runledger::domain::{Event, Micros, Params, Priority, RunId, TaskId, TenantId, WorkerId};
use runledger::log::{Append, Ledger};
use runledger::runtime::queue::{Lease, MemoryQueue, NackOutcome, TaskQueue};
use runledger::runtime::redis::{RedisQueue, RedisStreams, StreamsConfig};

use support::ledger::{open_ledger, open_store};

const RUN: &str = "q";
const LEASE: Duration = Duration::from_secs(30);
const NO_WAIT: Duration = Duration::ZERO;

/// A ledger with one tenant and one started run, and the queue under test
/// (with whatever it needs kept alive, e.g. its Redis server).
struct Harness<Q> {
    ledger: Ledger,
    queue: Q,
    _dir: tempfile::TempDir,
    _keep: Box<dyn std::any::Any>,
}

/// The run's seed (the queues draw their retry jitter from it).
const SEED: u64 = 1;

fn policy() -> QueuePolicy {
    QueuePolicy {
        aging_records: 1_000_000,
        retry_base_micros: 50_000,
        retry_max_micros: 50_000,
        jitter_bp: 5_000,
    }
}

/// A workload with `policy`'s retry settings, recorded with the run so
/// that `replay --check` re-checks the queue's decisions.
fn workload_text(policy: &QueuePolicy) -> String {
    format!(
        r#"seed = {SEED}
[execution.queue]
retry_base_ms = {}
retry_max_ms = {}
aging_records = {}
[[tenants]]
id = "acme"
budget_micros = 1000000
[[pipelines]]
id = "p"
nodes = [{{ id = "a", handler = "sim" }}]
[[submissions]]
tenant = "acme"
pipeline = "p"
"#,
        policy.retry_base_micros / 1_000,
        policy.retry_max_micros / 1_000,
        policy.aging_records
    )
}

/// Builds the harness, or `None` when the queue cannot be had here (no
/// `redis-server`, and not required).
async fn harness<
    Q: TaskQueue,
    F: std::future::Future<Output = Option<(Q, Box<dyn std::any::Any>)>>,
>(
    policy: QueuePolicy,
    make: impl Fn(Ledger, QueuePolicy) -> F,
) -> Option<Harness<Q>> {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    ledger
        .append_async(vec![
            Append::from(Event::TenantRegistered {
                tenant: TenantId::from("acme"),
                budget_micros: Micros(1_000_000),
                max_concurrent_runs: 10,
                learning_intensity: Default::default(),
                meta_learning: false,
                budget_period: Default::default(),
            }),
            Append::from(Event::RunStarted {
                run: RunId::from(RUN),
                seed: SEED,
                config_hash: String::new(),
            }),
            Append::from(Event::WorkloadRecorded {
                run: RunId::from(RUN),
                format: "toml".to_owned(),
                text: workload_text(&policy),
            }),
        ])
        .await
        .unwrap();
    let (queue, keep) = make(ledger.clone(), policy).await?;
    Some(Harness {
        ledger,
        queue,
        _dir: dir,
        _keep: keep,
    })
}

fn task(id: &str, priority: Priority, deps: &[&str], max_attempts: u32) -> Event {
    Event::TaskSubmitted {
        run: RunId::from(RUN),
        task: TaskId::from(id),
        tenant: TenantId::from("acme"),
        priority,
        deps: deps.iter().map(|d| TaskId::from(*d)).collect(),
        pipeline: None,
        cost_ceiling_micros: Micros::ZERO,
        handler: "noop".to_owned(),
        params: Params::null(),
        max_attempts,
        optional: false,
    }
}

fn worker(n: u32) -> WorkerId {
    WorkerId::from(format!("w{n}").as_str())
}

impl<Q: TaskQueue> Harness<Q> {
    async fn lease(&self, w: u32) -> Option<Lease> {
        self.queue
            .dequeue(&RunId::from(RUN), &worker(w), LEASE, NO_WAIT)
            .await
            .unwrap()
    }

    async fn ack(&self, lease: &Lease) {
        self.queue
            .ack(lease, Params::null(), Vec::new())
            .await
            .unwrap();
    }

    /// Leases and ACKs until the queue is empty; the order tasks came in.
    async fn drain(&self) -> Vec<String> {
        let mut order = Vec::new();
        while let Some(lease) = self.lease(1).await {
            order.push(lease.task.0.clone());
            self.ack(&lease).await;
        }
        order
    }

    /// Closes the ledger and re-checks every decision the queue recorded.
    async fn recheck(self) -> runledger::audit::check::CheckReport {
        let dir = self.close().await;
        recheck(dir.path())
    }

    /// Closes the ledger, re-checks it, and returns its events after `seq`.
    async fn events_after(self, seq: u64) -> Vec<Event> {
        let dir = self.close().await;
        recheck(dir.path());
        let events = support::ledger::events(dir.path());
        events.into_iter().skip(seq as usize).collect()
    }

    /// Closes the ledger; the directory it is in.
    async fn close(self) -> tempfile::TempDir {
        let Harness {
            ledger,
            queue,
            _dir: dir,
            _keep,
        } = self;
        drop(queue);
        tokio::task::spawn_blocking(move || ledger.close().unwrap())
            .await
            .unwrap();
        dir
    }

    async fn head(&self) -> u64 {
        self.ledger.head_async().await.unwrap().seq
    }
}

/// Re-checks every decision recorded in the ledger in `dir`.
fn recheck(dir: &std::path::Path) -> runledger::audit::check::CheckReport {
    let store = open_store(dir);
    let report = runledger::audit::check::check(&store, Default::default()).unwrap();
    assert!(report.ok(), "replay --check: {:?}", report.first);
    assert_eq!(report.not_recheckable, 0);
    report
}

async fn strict_priority_then_fifo<Q: TaskQueue>(h: Harness<Q>) {
    h.queue
        .enqueue(vec![
            task("n1", Priority::Normal, &[], 1),
            task("b1", Priority::Batch, &[], 1),
            task("c1", Priority::Critical, &[], 1),
            task("n2", Priority::Normal, &[], 1),
            task("h1", Priority::High, &[], 1),
            task("l1", Priority::Low, &[], 1),
            task("c2", Priority::Critical, &[], 1),
        ])
        .await
        .unwrap();
    assert_eq!(h.drain().await, ["c1", "c2", "h1", "n1", "n2", "l1", "b1"]);
    let _ = h.recheck().await;
}

async fn aging_lets_batch_through<Q: TaskQueue>(h: Harness<Q>) {
    let mut tasks = vec![task("batch", Priority::Batch, &[], 1)];
    tasks.extend((0..40).map(|i| task(&format!("c{i:02}"), Priority::Critical, &[], 1)));
    h.queue.enqueue(tasks).await.unwrap();
    let order = h.drain().await;
    let at = order.iter().position(|t| t == "batch").unwrap();
    assert!(
        at < 40,
        "the BATCH task waited behind all 40 CRITICAL ones: {order:?}"
    );
    assert!(at > 0, "aging is gradual, not immediate");
    let _ = h.recheck().await;
}

async fn an_expired_lease_returns_the_task_and_late_results_are_dropped<Q: TaskQueue>(
    h: Harness<Q>,
) {
    h.queue
        .enqueue(vec![task("t", Priority::Normal, &[], 3)])
        .await
        .unwrap();
    let first = h
        .queue
        .dequeue(
            &RunId::from(RUN),
            &worker(1),
            Duration::from_millis(1),
            NO_WAIT,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.attempt, 1);
    assert!(
        h.lease(2).await.is_none(),
        "a leased task is not handed out twice"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(h.queue.expire_leases().await.unwrap(), 1);
    // The same worker id leases it again: attempt 2.
    let second = h.lease(1).await.unwrap();
    assert_eq!((second.task.0.as_str(), second.attempt), ("t", 2));
    // The first attempt's result arrives late: dropped, nothing recorded.
    let before = h.head().await;
    h.ack(&first).await;
    let outcome = h
        .queue
        .nack(&first, "late".to_owned(), false, Vec::new())
        .await
        .unwrap();
    assert_eq!(outcome, NackOutcome::Stale);
    assert_eq!(h.head().await, before, "a stale result appends nothing");
    let counts = h.queue.depth().await.unwrap();
    assert_eq!((counts.leased, counts.done), (1, 0));
    // The current attempt's result counts, once.
    h.ack(&second).await;
    let after = h.head().await;
    h.ack(&second).await;
    assert_eq!(h.head().await, after, "a duplicate ACK appends nothing");
    let counts = h.queue.depth().await.unwrap();
    assert_eq!((counts.done, counts.retries), (1, 1));
    let _ = h.recheck().await;
}

async fn nack_retries_after_backoff_then_dead_letters_and_cancels<Q: TaskQueue>(h: Harness<Q>) {
    h.queue
        .enqueue(vec![
            task("parent", Priority::Normal, &[], 2),
            task("child", Priority::Normal, &["parent"], 1),
            task("grandchild", Priority::Normal, &["child"], 1),
        ])
        .await
        .unwrap();
    let lease = h.lease(1).await.unwrap();
    assert_eq!(lease.task.0, "parent");
    let outcome = h
        .queue
        .nack(&lease, "boom".to_owned(), false, Vec::new())
        .await
        .unwrap();
    let NackOutcome::RetryAt(at) = outcome else {
        panic!("a first failure retries: {outcome:?}");
    };
    assert!(
        at.as_micros() >= lease.deadline.as_micros() - LEASE.as_micros() as i64 + 50_000,
        "the retry waits its backoff"
    );
    assert!(h.lease(1).await.is_none(), "not before its backoff");
    let retried = h
        .queue
        .dequeue(&RunId::from(RUN), &worker(1), LEASE, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((retried.task.0.as_str(), retried.attempt), ("parent", 2));
    let outcome = h
        .queue
        .nack(&retried, "boom again".to_owned(), true, Vec::new())
        .await
        .unwrap();
    assert_eq!(outcome, NackOutcome::DeadLettered { cancelled: 2 });
    let counts = h.queue.depth().await.unwrap();
    assert_eq!(
        (counts.dead_lettered, counts.cancelled, counts.pending),
        (1, 2, 0)
    );
    assert!(h.lease(1).await.is_none());
    // The retry schedule, the dead letter and its cascade re-check.
    let report = h.recheck().await;
    for kind in ["task_nacked", "task_dead_lettered", "task_cancelled"] {
        assert!(report.by_kind.contains_key(kind), "{:?}", report.by_kind);
    }
}

async fn dependants_wait_for_their_parents<Q: TaskQueue>(h: Harness<Q>) {
    h.queue
        .enqueue(vec![
            task("a", Priority::Low, &[], 1),
            task("b", Priority::Critical, &["a"], 1),
            task("c", Priority::Normal, &[], 1),
        ])
        .await
        .unwrap();
    let counts = h.queue.depth().await.unwrap();
    assert_eq!((counts.pending, counts.waiting), (2, 1));
    assert_eq!(h.drain().await, ["c", "a", "b"]);
    let _ = h.recheck().await;
}

async fn batches_come_in_priority_order<Q: TaskQueue>(h: Harness<Q>) {
    h.queue
        .enqueue(
            (0..10)
                .map(|i| {
                    let p = if i % 2 == 0 {
                        Priority::Low
                    } else {
                        Priority::High
                    };
                    task(&format!("t{i}"), p, &[], 1)
                })
                .collect(),
        )
        .await
        .unwrap();
    let leases = h
        .queue
        .dequeue_many(&RunId::from(RUN), &worker(1), 4, LEASE, NO_WAIT)
        .await
        .unwrap();
    let got: Vec<&str> = leases.iter().map(|l| l.task.0.as_str()).collect();
    assert_eq!(got, ["t1", "t3", "t5", "t7"]);
    let counts = h.queue.depth().await.unwrap();
    assert_eq!((counts.leased, counts.pending), (4, 6));
    h.queue
        .ack_many(
            leases
                .into_iter()
                .map(|l| (l, Params::null(), Vec::new()))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(h.queue.depth().await.unwrap().done, 4);
    let _ = h.recheck().await;
}

/// Costs the ledger cannot take (they overflow the tenant's 64-bit spend).
fn overflowing_costs() -> Vec<(runledger::domain::Category, Micros)> {
    use runledger::domain::Category;
    vec![
        (Category::Llm, Micros(i64::MAX)),
        (Category::Llm, Micros(1)),
    ]
}

/// The error of the task's last recorded failure.
async fn last_error<Q: TaskQueue>(h: &Harness<Q>, task: &str) -> String {
    let (state, _) = h.ledger.state_async().await.unwrap();
    (state.queue.get(&TaskId::from(task)))
        .map(|t| t.last_error.clone())
        .unwrap_or_default()
}

async fn an_answer_whose_costs_the_ledger_refuses_is_a_failed_attempt<Q: TaskQueue>(h: Harness<Q>) {
    h.queue
        .enqueue(vec![task("a", Priority::Normal, &[], 3)])
        .await
        .unwrap();
    // An ACK: recorded as a failed attempt naming the refusal, not lost.
    let first = h.lease(1).await.unwrap();
    h.queue
        .ack(&first, Params::null(), overflowing_costs())
        .await
        .unwrap();
    let counts = h.queue.depth().await.unwrap();
    assert_eq!((counts.done, counts.retries), (0, 1));
    let error = last_error(&h, "a").await;
    assert!(
        error.starts_with("the result was refused") && error.contains("not recorded"),
        "{error}"
    );
    // A NACK with such costs: recorded as failed all the same.
    let second = h
        .queue
        .dequeue(&RunId::from(RUN), &worker(1), LEASE, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.attempt, 2);
    let outcome = h
        .queue
        .nack(&second, "boom".to_owned(), false, overflowing_costs())
        .await
        .unwrap();
    assert!(matches!(outcome, NackOutcome::RetryAt(_)), "{outcome:?}");
    let error = last_error(&h, "a").await;
    assert!(
        error.starts_with("boom") && error.contains("not recorded"),
        "{error}"
    );
    // Costs the ledger can take are still recorded with a failed attempt.
    let third = h
        .queue
        .dequeue(&RunId::from(RUN), &worker(1), LEASE, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let costs = vec![(runledger::domain::Category::Llm, Micros(7))];
    h.queue
        .nack(&third, "boom".to_owned(), false, costs)
        .await
        .unwrap();
    let spent = (h
        .ledger
        .tenant_async(&TenantId::from("acme"))
        .await
        .unwrap())
    .map(|t| t.spent_micros());
    assert_eq!(spent, Some(Micros(7)));
    assert_eq!(h.queue.depth().await.unwrap().dead_lettered, 1);
    let _ = h.recheck().await;
}

/// Settles a mix of results on `h` — batched or one by one — after
/// leasing three tasks; the seq they start after.
async fn settle_mixed<Q: TaskQueue>(h: &Harness<Q>, batched: bool) -> u64 {
    use runledger::domain::Category;
    use runledger::runtime::queue::Report;
    h.queue
        .enqueue(vec![
            task("t1", Priority::Normal, &[], 1),
            task("t2", Priority::Normal, &[], 1),
            task("t3", Priority::Normal, &[], 2),
            task("c2", Priority::Normal, &["t2"], 1),
        ])
        .await
        .unwrap();
    let workers = [worker(1), worker(2), worker(3)];
    let leases = h
        .queue
        .dequeue_for(&RunId::from(RUN), &workers, LEASE)
        .await
        .unwrap();
    let tasks: Vec<&str> = leases.iter().map(|l| l.task.as_str()).collect();
    assert_eq!(tasks, ["t1", "t2", "t3"]);
    let done = |n: i64| Report::Done {
        output: Params::from_value(&serde_json::json!({ "n": n })),
        costs: vec![(Category::Llm, Micros(n))],
    };
    let failed = Report::Failed {
        error: "boom".to_owned(),
        timed_out: false,
        costs: vec![(Category::Other, Micros(2))],
    };
    let reports = vec![
        (leases[0].clone(), done(5)),
        // Out of attempts: dead-lettered, its dependant cancelled.
        (leases[1].clone(), failed),
        (leases[2].clone(), done(7)),
        // Counted once per (task, attempt): the second is stale.
        (leases[0].clone(), done(9)),
    ];
    let seq = h.head().await;
    if batched {
        h.queue.settle_many(&reports).await.unwrap();
    } else {
        for report in &reports {
            h.queue
                .settle_many(std::slice::from_ref(report))
                .await
                .unwrap();
        }
    }
    seq
}

/// Results settled in one step are recorded exactly as settled one by one:
/// each is decided on the state the ones before it left.
async fn a_batch_of_results_records_what_one_by_one_does<Q: TaskQueue>(
    one_by_one: Harness<Q>,
    batched: Harness<Q>,
) {
    let from = settle_mixed(&one_by_one, false).await;
    let expected = one_by_one.events_after(from).await;
    let from = settle_mixed(&batched, true).await;
    let got = batched.events_after(from).await;
    let kinds: Vec<&str> = got.iter().map(Event::kind).collect();
    assert!(kinds.contains(&"task_dead_lettered"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "task_acked").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(got, expected);
}

/// Runs the whole suite against the queue `make` builds.
macro_rules! queue_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn strict_priority_then_fifo() {
                if let Some(h) = harness(policy(), $make).await {
                    super::strict_priority_then_fifo(h).await;
                }
            }

            #[tokio::test]
            async fn aging_lets_batch_through() {
                let aging = QueuePolicy {
                    aging_records: 8,
                    ..policy()
                };
                if let Some(h) = harness(aging, $make).await {
                    super::aging_lets_batch_through(h).await;
                }
            }

            #[tokio::test]
            async fn an_expired_lease_returns_the_task_and_late_results_are_dropped() {
                if let Some(h) = harness(policy(), $make).await {
                    super::an_expired_lease_returns_the_task_and_late_results_are_dropped(h).await;
                }
            }

            #[tokio::test]
            async fn nack_retries_after_backoff_then_dead_letters_and_cancels() {
                if let Some(h) = harness(policy(), $make).await {
                    super::nack_retries_after_backoff_then_dead_letters_and_cancels(h).await;
                }
            }

            #[tokio::test]
            async fn dependants_wait_for_their_parents() {
                if let Some(h) = harness(policy(), $make).await {
                    super::dependants_wait_for_their_parents(h).await;
                }
            }

            #[tokio::test]
            async fn an_answer_whose_costs_the_ledger_refuses_is_a_failed_attempt() {
                if let Some(h) = harness(policy(), $make).await {
                    super::an_answer_whose_costs_the_ledger_refuses_is_a_failed_attempt(h).await;
                }
            }

            #[tokio::test]
            async fn a_batch_of_results_records_what_one_by_one_does() {
                let one = harness(policy(), $make).await;
                let two = harness(policy(), $make).await;
                if let (Some(one), Some(two)) = (one, two) {
                    super::a_batch_of_results_records_what_one_by_one_does(one, two).await;
                }
            }

            #[tokio::test]
            async fn batches_come_in_priority_order() {
                if let Some(h) = harness(policy(), $make).await {
                    super::batches_come_in_priority_order(h).await;
                }
            }
        }
    };
}

queue_suite!(memory, |ledger, policy| async move {
    let queue = MemoryQueue::new(ledger, policy, SEED);
    Some((queue, Box::new(()) as Box<dyn std::any::Any>))
});

queue_suite!(redis, |ledger, policy| async move {
    let server = support::redis::RedisServer::start()?;
    // A short transport lease, so that leases run out within the tests.
    let config = StreamsConfig {
        lease: Duration::from_millis(50),
        ..StreamsConfig::default()
    };
    let streams = RedisStreams::connect(&server.url(), config).await.unwrap();
    let queue = RedisQueue::new(ledger, streams, policy, SEED)
        .await
        .unwrap();
    Some((queue, Box::new(server) as Box<dyn std::any::Any>))
});

/// A worker folds its announcement into the report when the attempt ends
/// before the announcement was sent (`announces_start`): the coordinator
/// records the lease, then the end, from that one entry — and the same
/// report read twice counts once.
#[tokio::test]
async fn redis_a_report_that_announces_its_start_is_recorded_as_lease_then_end_once() {
    use runledger::runtime::redis::Outcome;
    let Some(server) = support::redis::RedisServer::start() else {
        return;
    };
    let url = server.url();
    let make = |ledger, policy| {
        let url = url.clone();
        async move {
            let streams = RedisStreams::connect(&url, StreamsConfig::default())
                .await
                .unwrap();
            let queue = RedisQueue::new(ledger, streams, policy, SEED)
                .await
                .unwrap();
            Some((queue, Box::new(()) as Box<dyn std::any::Any>))
        }
    };
    let Some(h) = harness(policy(), make).await else {
        return;
    };
    h.queue
        .enqueue(vec![task("t", Priority::Normal, &[], 3)])
        .await
        .unwrap();
    let before = h.head().await;
    h.queue.fill(&RunId::from(RUN), 8, 1, LEASE).await.unwrap();
    // A worker elsewhere claims it; it never announces the start alone.
    let worker_side = RedisStreams::connect(&url, StreamsConfig::default())
        .await
        .unwrap();
    let claimed = worker_side.claim("w1", 4, NO_WAIT).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let done = Outcome::Ack {
        output: Params::null(),
        costs: Vec::new(),
    };
    let mut result = claimed[0].result(&worker(1), done);
    result.announces_start = true;
    for _ in 0..2 {
        worker_side
            .report(&claimed[0].receipt, &result)
            .await
            .unwrap();
    }
    h.queue.apply_results().await.unwrap();
    let events = h.events_after(before).await;
    let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
    let at = |kind: &str| kinds.iter().position(|k| *k == kind);
    assert_eq!(
        kinds.iter().filter(|k| **k == "task_dequeued").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "task_acked").count(),
        1,
        "{kinds:?}"
    );
    assert!(at("task_dequeued") < at("task_acked"), "{kinds:?}");
    assert!(events.iter().any(|e| matches!(
        e,
        Event::TaskDequeued { worker: w, attempt: 1, .. } if *w == worker(1)
    )));
}
