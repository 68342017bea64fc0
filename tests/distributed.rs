//! Distributed dispatch, process against process: a coordinator (`run
//! --queue redis`, no workers of its own) and two `runledger worker`
//! processes on a private `redis-server`; one worker is SIGKILLed while it
//! holds tasks. Nothing is lost: its tasks are taken over after their lease
//! and completed by the other worker, every task is ACKed exactly once in
//! the ledger, which shows both attempts, budgets hold, and the ledger
//! verifies and re-checks.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::bin::{BIN, runledger};
use support::redis::RedisServer;

const WORKLOAD: &str = r#"
seed = 11
run = "dist"
[execution.pool]
max_concurrency = 8
[execution.queue]
max_attempts = 3
retry_base_ms = 20
retry_max_ms = 100
[execution.workers]
num_workers = 4
worker_timeout_sec = 1
[[tenants]]
id = "acme"
budget_micros = 5000000
max_concurrent_runs = 4
[[tenants]]
id = "globex"
budget_micros = 200000
max_concurrent_runs = 2
[[pipelines]]
id = "rag"
mode = "serial"
nodes = [
  { id = "retrieve", handler = "sim", params = { step = "retrieve", depth = 5, latency_ms = 200, failure_rate_bp = 0 } },
  { id = "generate", handler = "sim", params = { step = "generate", candidates = 2, latency_ms = 300, failure_rate_bp = 0, learn = { model = ["large", "small"] } }, cost_ceiling_micros = 300000 },
]
[[submissions]]
tenant = "acme"
pipeline = "rag"
runs = 16
interval_ms = 10
[[submissions]]
tenant = "globex"
pipeline = "rag"
runs = 8
interval_ms = 10
"#;

fn worker(url: &str, id: &str) -> Child {
    Command::new(BIN)
        .args([
            "worker",
            "--redis",
            url,
            "--id",
            id,
            "--lease-ms",
            "1500",
            "--timeout-sec",
            "1",
            "--idle-exit-sec",
            "4",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// How many task entries `consumer` holds claimed in Redis.
fn held_by(url: &str, consumer: &str) -> usize {
    let Ok(client) = redis::Client::open(url) else {
        return 0;
    };
    let Ok(mut conn) = client.get_connection() else {
        return 0;
    };
    ["critical", "high", "normal", "low", "batch"]
        .iter()
        .map(|p| {
            let pending: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XPENDING")
                .arg(format!("{{runledger}}:tasks:{p}"))
                .arg("workers")
                .arg("-")
                .arg("+")
                .arg(100)
                .arg(consumer)
                .query(&mut conn);
            pending.map_or(0, |v| v.len())
        })
        .sum()
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("a process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn events(data: &Path) -> Vec<serde_json::Value> {
    let out = runledger(data, &["log", "--json"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect()
}

#[test]
fn a_worker_killed_mid_run_loses_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, WORKLOAD).unwrap();
    let data: PathBuf = dir.path().join("data");

    let mut doomed = worker(&url, "w1");
    let mut survivor = worker(&url, "w2");
    let mut coordinator = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .args(["--json", "run"])
        .arg(&file)
        .args([
            "--queue",
            "redis",
            "--redis-url",
            &url,
            "--local-workers",
            "0",
            "--lease-ms",
            "1500",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill w1 while it holds tasks.
    let until = Instant::now() + Duration::from_secs(30);
    while held_by(&url, "w1") == 0 {
        assert!(Instant::now() < until, "w1 never claimed a task");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Long enough for its announcements to be recorded (steps take 200 to
    // 300 ms, so it still holds them).
    std::thread::sleep(Duration::from_millis(100));
    doomed.kill().unwrap();
    doomed.wait().unwrap();

    let status = wait(&mut coordinator, Duration::from_secs(120));
    let mut stderr = String::new();
    std::io::Read::read_to_string(coordinator.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "the coordinator failed: {stderr}");
    assert!(wait(&mut survivor, Duration::from_secs(30)).success());

    let evs = events(&data);
    let mut acks: BTreeMap<String, u32> = BTreeMap::new();
    let mut leases: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut lost = Vec::new();
    for e in &evs {
        let task = e["task"].as_str().unwrap_or_default().to_owned();
        match e["type"].as_str().unwrap() {
            "task_acked" => *acks.entry(task).or_default() += 1,
            "task_dequeued" => leases.entry(task).or_default().push((
                e["worker"].as_str().unwrap().to_owned(),
                e["attempt"].as_u64().unwrap(),
            )),
            "lease_expired" => {
                assert_eq!(e["worker"], "w1", "only the killed worker loses leases");
                lost.push(task);
            }
            _ => {}
        }
    }
    assert_eq!(acks.len(), 48, "every task ACKed");
    assert!(acks.values().all(|&n| n == 1), "none twice: {acks:?}");
    assert!(!lost.is_empty(), "w1 died holding tasks");
    for task in &lost {
        // Both attempts are in the ledger: w1's, then the one that finished.
        let attempts = &leases[task];
        assert!(attempts.len() >= 2, "{task}: {attempts:?}");
        assert_eq!(attempts[0].0, "w1");
        let last = attempts.last().unwrap();
        assert_eq!(last.0, "w2");
        assert!(last.1 > attempts[0].1);
    }

    // Budgets hold; the chain verifies; every decision re-checks.
    let tenants = runledger(&data, &["--json", "tenants"]);
    let tenants: serde_json::Value = serde_json::from_slice(&tenants.stdout).unwrap();
    for t in tenants.as_array().unwrap() {
        assert!(
            t["spent_micros"].as_i64().unwrap() <= t["budget_micros"].as_i64().unwrap(),
            "{t}"
        );
        assert_eq!(t["reserved_micros"], 0, "{t}");
    }
    assert!(runledger(&data, &["verify"]).status.success());
    let check = runledger(&data, &["replay", "--check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn a_bad_or_unreachable_redis_is_a_clear_error_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, WORKLOAD).unwrap();
    let data = dir.path().join("data");
    let closed = format!("redis://127.0.0.1:{}", support::redis::free_port());
    for url in ["http://127.0.0.1:6379", closed.as_str()] {
        let started = Instant::now();
        let out = runledger(
            &data,
            &[
                "run",
                file.to_str().unwrap(),
                "--queue",
                "redis",
                "--redis-url",
                url,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(url.trim_start_matches("http://")) || stderr.contains("127.0.0.1"),
            "the error names the URL: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "fails fast");
        let out = Command::new(BIN)
            .args(["worker", "--redis", url])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "worker on {url}");
    }
    // Nothing was appended by the failed runs.
    let replay = runledger(&data, &["replay"]);
    assert!(
        !replay.status.success() || String::from_utf8_lossy(&replay.stdout).contains("replayed 0")
    );
    let out = runledger(&data, &["run", file.to_str().unwrap(), "--queue", "redis"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--redis-url"));
}

#[test]
fn redis_restarted_mid_run_with_aof_loses_nothing_acknowledged() {
    let aof = tempfile::tempdir().unwrap();
    let Some(mut server) = RedisServer::start_aof(aof.path()) else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, WORKLOAD).unwrap();
    let data: PathBuf = dir.path().join("data");
    let mut w = worker(&url, "w1");
    let mut coordinator = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .args(["--json", "run"])
        .arg(&file)
        .args([
            "--queue",
            "redis",
            "--redis-url",
            &url,
            "--local-workers",
            "0",
            "--lease-ms",
            "1500",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Restart Redis (SIGKILL, then the same port and AOF) while tasks are
    // claimed, results pending and envelopes queued.
    let until = Instant::now() + Duration::from_secs(30);
    while held_by(&url, "w1") == 0 {
        assert!(Instant::now() < until, "w1 never claimed a task");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    server.restart();

    let status = wait(&mut coordinator, Duration::from_secs(120));
    let mut stderr = String::new();
    std::io::Read::read_to_string(coordinator.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "the coordinator failed: {stderr}");
    assert!(wait(&mut w, Duration::from_secs(30)).success());

    let mut acks: BTreeMap<String, u32> = BTreeMap::new();
    for e in events(&data) {
        if e["type"] == "task_acked" {
            *acks
                .entry(e["task"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(acks.len(), 48, "every task ACKed");
    assert!(acks.values().all(|&n| n == 1), "none twice: {acks:?}");
    assert!(runledger(&data, &["verify"]).status.success());
    let check = runledger(&data, &["replay", "--check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn two_shard_coordinators_split_the_tenants_by_hash_on_one_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    // `acme` hashes to shard 1 of 2, `wonka` to shard 0.
    std::fs::write(&file, WORKLOAD.replace("globex", "wonka")).unwrap();
    let mut procs = Vec::new();
    for shard in ["0/2", "1/2"] {
        let mut w = Command::new(BIN);
        w.args([
            "worker",
            "--redis",
            &url,
            "--shard",
            shard,
            "--idle-exit-sec",
            "3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        procs.push(w.spawn().unwrap());
    }
    let mut coordinators = Vec::new();
    for (i, shard) in ["0/2", "1/2"].iter().enumerate() {
        let data = dir.path().join(format!("shard-{i}"));
        let child = Command::new(BIN)
            .arg("--data")
            .arg(&data)
            .arg("run")
            .arg(&file)
            .args([
                "--queue",
                "redis",
                "--redis-url",
                &url,
                "--local-workers",
                "0",
            ])
            .args(["--shard", shard])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        coordinators.push((data, child));
    }
    let mut acked = 0;
    for (data, mut child) in coordinators {
        assert!(wait(&mut child, Duration::from_secs(120)).success());
        let tenants = runledger(&data, &["--json", "tenants"]);
        let tenants: serde_json::Value = serde_json::from_slice(&tenants.stdout).unwrap();
        assert_eq!(tenants.as_array().unwrap().len(), 1, "one tenant per shard");
        let shard: u32 = data
            .to_str()
            .unwrap()
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        for t in tenants.as_array().unwrap() {
            // Each tenant is in the ledger of the shard its id hashes to.
            let id = t["tenant"].as_str().unwrap();
            let named = Command::new(BIN)
                .args(["shard", id, "--of", "2"])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&named.stdout).trim(),
                shard.to_string()
            );
        }
        acked += events(&data)
            .iter()
            .filter(|e| e["type"] == "task_acked")
            .count();
        assert!(runledger(&data, &["verify"]).status.success());
    }
    assert_eq!(acked, 48, "every task of both shards, once");
    for mut p in procs {
        assert!(wait(&mut p, Duration::from_secs(30)).success());
    }
}

#[test]
fn a_coordinator_killed_mid_run_resumes_from_its_ledger_and_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, WORKLOAD).unwrap();
    let data: PathBuf = dir.path().join("data");
    let mut w = Command::new(BIN)
        .args([
            "worker",
            "--redis",
            &url,
            "--id",
            "w1",
            "--lease-ms",
            "1500",
        ])
        .args(["--timeout-sec", "1", "--idle-exit-sec", "6"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let queue_args = [
        "--queue",
        "redis",
        "--redis-url",
        &url,
        "--local-workers",
        "0",
        "--lease-ms",
        "1500",
    ];
    let mut first = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .arg("run")
        .arg(&file)
        .args(queue_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the coordinator while the worker holds tasks.
    let until = Instant::now() + Duration::from_secs(30);
    while held_by(&url, "w1") == 0 {
        assert!(Instant::now() < until, "w1 never claimed a task");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(400));
    first.kill().unwrap();
    first.wait().unwrap();

    let resumed = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .args(["resume", "dist"])
        .args(queue_args)
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(wait(&mut w, Duration::from_secs(30)).success());
    let mut acks: BTreeMap<String, u32> = BTreeMap::new();
    let mut reservations: BTreeMap<String, u32> = BTreeMap::new();
    for e in events(&data) {
        let task = e["task"].as_str().unwrap_or_default().to_owned();
        match e["type"].as_str().unwrap() {
            "task_acked" => *acks.entry(task).or_default() += 1,
            "cost_reserved" => *reservations.entry(task).or_default() += 1,
            _ => {}
        }
    }
    assert_eq!(acks.len(), 48, "every task ACKed");
    assert!(acks.values().all(|&n| n == 1), "none twice: {acks:?}");
    assert!(
        reservations.values().all(|&n| n == 1),
        "nothing admitted twice: {reservations:?}"
    );
    assert!(runledger(&data, &["verify"]).status.success());
    let check = runledger(&data, &["replay", "--check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn a_lease_shorter_than_an_attempt_may_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(
        &file,
        WORKLOAD.replace("worker_timeout_sec = 1", "worker_timeout_sec = 3"),
    )
    .unwrap();
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let out = runledger(
        &dir.path().join("data"),
        &[
            "run",
            file.to_str().unwrap(),
            "--queue",
            "redis",
            "--redis-url",
            &url,
            "--lease-ms",
            "2000",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be longer than an attempt may run")
    );
    let out = Command::new(BIN)
        .args([
            "worker",
            "--redis",
            &url,
            "--lease-ms",
            "2000",
            "--timeout-sec",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--lease-ms (2000) must be longer"));
}

#[test]
fn a_result_the_ledger_refuses_fails_its_attempt_and_the_run_goes_on() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.sh");
    std::fs::write(
        &huge,
        "#!/bin/sh\ncat >/dev/null\necho '{\"costs\":[{\"category\":\"llm\",\"amount_micros\":9223372036854775807},{\"category\":\"llm\",\"amount_micros\":1}]}'\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(&huge).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&huge, perms).unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(
        &file,
        format!(
            r#"
seed = 3
run = "refused"
[execution]
default_cost_ceiling_micros = 1000
[execution.queue]
max_attempts = 2
retry_base_ms = 10
retry_max_ms = 10
[execution.workers]
worker_timeout_sec = 1
[[tenants]]
id = "acme"
budget_micros = 1000000000
[[pipelines]]
id = "p"
nodes = [{{ id = "huge", handler = "exec", params = {{ argv = ["{}"] }} }}]
[[pipelines]]
id = "q"
nodes = [{{ id = "fine", handler = "sim", params = {{ step = "tool", latency_ms = 1, failure_rate_bp = 0 }} }}]
[[submissions]]
tenant = "acme"
pipeline = "p"
[[submissions]]
tenant = "acme"
pipeline = "q"
runs = 5
"#,
            huge.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut w = worker(&url, "w1");
    let out = runledger(
        &data,
        &[
            "run",
            file.to_str().unwrap(),
            "--queue",
            "redis",
            "--redis-url",
            &url,
            "--local-workers",
            "0",
            "--lease-ms",
            "1500",
        ],
    );
    // The huge step is dead-lettered: the run ends, as a failed run (exit 3).
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = w.kill();
    let _ = w.wait();
    let evs = events(&data);
    let refused = evs
        .iter()
        .filter(|e| e["type"] == "task_nacked")
        .filter(|e| {
            e["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with("the result was refused")
        })
        .count();
    assert_eq!(refused, 2, "both attempts of the huge step were refused");
    assert!(evs.iter().any(|e| e["type"] == "task_dead_lettered"));
    assert_eq!(evs.iter().filter(|e| e["type"] == "task_acked").count(), 5);
    assert!(runledger(&data, &["replay", "--check"]).status.success());
}

/// Reads a child's stderr on a thread (so that the child never blocks on
/// a full pipe); its text once the child closes it.
fn stderr_of(child: &mut Child) -> std::thread::JoinHandle<String> {
    let mut pipe = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        text
    })
}

/// A child's stderr, read on a thread as it comes (so that the child never
/// blocks on a full pipe and a test can wait for what it says).
struct Stderr {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Stderr {
    fn of(child: &mut Child) -> Self {
        let pipe = child.stderr.take().expect("stderr piped");
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let reader = {
            let text = std::sync::Arc::clone(&text);
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut text = text.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            })
        };
        Stderr { text, reader }
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits until the child has said `what`; panics past `limit` (a
    /// safety net, not a measure).
    fn wait_for(&self, what: &str, limit: Duration) {
        let until = Instant::now() + limit;
        while !self.text().contains(what) {
            assert!(
                Instant::now() < until,
                "never said {what:?} within {limit:?}: {}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything once the child closed it.
    fn join(self) -> String {
        let Stderr { text, reader } = self;
        let _ = reader.join();
        text.lock().unwrap().clone()
    }
}

/// Waits for both; kills both if either is still running at `limit`.
fn wait_both(
    a: &mut Child,
    b: &mut Child,
    limit: Duration,
) -> (std::process::ExitStatus, std::process::ExitStatus) {
    let until = Instant::now() + limit;
    loop {
        if let (Some(x), Some(y)) = (a.try_wait().unwrap(), b.try_wait().unwrap()) {
            return (x, y);
        }
        if Instant::now() > until {
            let _ = a.kill();
            let _ = b.kill();
            let _ = a.wait();
            let _ = b.wait();
            panic!("the processes did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn coordinator(data: &Path, file: &Path, url: &str) -> Child {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .arg("run")
        .arg(file)
        .args([
            "--queue",
            "redis",
            "--redis-url",
            url,
            "--local-workers",
            "0",
            "--lease-ms",
            "1500",
        ])
        .env_remove("RUNLEDGER_DATA")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_worker_answer_past_params_bytes_max_is_nacked_naming_the_limit() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.sh");
    let len = runledger::domain::limits::PARAMS_BYTES_MAX + 10;
    std::fs::write(
        &big,
        format!(
            "#!/bin/sh\ncat >/dev/null\nprintf '{{\"output\":\"'\nhead -c {len} /dev/zero | tr '\\0' x\necho '\"}}'\n"
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&big).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&big, perms).unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(
        &file,
        format!(
            r#"
seed = 3
run = "big"
[execution]
default_cost_ceiling_micros = 1000
[execution.queue]
max_attempts = 2
retry_base_ms = 10
retry_max_ms = 10
[execution.workers]
worker_timeout_sec = 1
[[tenants]]
id = "acme"
budget_micros = 1000000000
[[pipelines]]
id = "p"
nodes = [{{ id = "big", handler = "exec", params = {{ argv = ["{}"] }} }}]
[[submissions]]
tenant = "acme"
pipeline = "p"
"#,
            big.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut w = worker(&url, "w1");
    let mut run = coordinator(&data, &file, &url);
    let run_err = stderr_of(&mut run);
    let status = wait(&mut run, Duration::from_secs(120));
    // Its one task is dead-lettered: a failed run (exit 3).
    assert_eq!(status.code(), Some(3), "{}", run_err.join().unwrap());
    let _ = w.kill();
    let _ = w.wait();
    let evs = events(&data);
    let nacks: Vec<&str> = evs
        .iter()
        .filter(|e| e["type"] == "task_nacked")
        .map(|e| e["error"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(nacks.len(), 2, "{nacks:?}");
    assert!(
        nacks.iter().all(|e| e.contains("PARAMS_BYTES_MAX")),
        "{nacks:?}"
    );
    assert!(!evs.iter().any(|e| e["type"] == "task_acked"));
    assert!(runledger(&data, &["replay", "--check"]).status.success());
}

#[test]
fn a_key_of_the_wrong_type_ends_coordinator_and_worker_with_exit_2_and_the_reason() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, WORKLOAD).unwrap();
    let data: PathBuf = dir.path().join("data");
    let mut w = Command::new(BIN)
        .args(["worker", "--redis", &url, "--id", "w1"])
        .args(["--lease-ms", "1500", "--timeout-sec", "1"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let w_err = stderr_of(&mut w);
    let mut run = coordinator(&data, &file, &url);
    let run_err = stderr_of(&mut run);
    let until = Instant::now() + Duration::from_secs(30);
    while held_by(&url, "w1") == 0 {
        assert!(Instant::now() < until, "w1 never claimed a task");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Mid-run, the normal-priority stream becomes a string.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let key = "{runledger}:tasks:normal";
    redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(key)
        .ignore()
        .cmd("SET")
        .arg(key)
        .arg("not a stream")
        .ignore()
        .query::<()>(&mut conn)
        .unwrap();
    // A generous bound: a safety net, not a measure.
    let (run_status, w_status) = wait_both(&mut run, &mut w, Duration::from_secs(90));
    let (run_err, w_err) = (run_err.join().unwrap(), w_err.join().unwrap());
    assert_eq!(run_status.code(), Some(2), "coordinator: {run_err}");
    assert_eq!(w_status.code(), Some(2), "worker: {w_err}");
    for (who, stderr) in [("coordinator", &run_err), ("worker", &w_err)] {
        assert!(
            stderr.contains("WRONGTYPE") && stderr.contains("gave up after"),
            "{who}: {stderr}"
        );
        assert!(
            stderr.contains("retrying in"),
            "{who} logs its retries: {stderr}"
        );
        assert!(
            stderr.lines().any(|l| l.starts_with("error: ")),
            "{who} ends with the reason: {stderr}"
        );
    }
    // What was recorded before stays sound.
    assert!(runledger(&data, &["verify"]).status.success());
}

#[test]
fn a_worker_stops_cleanly_on_sigterm_and_sigint_while_redis_is_away() {
    for sig in ["TERM", "INT"] {
        let Some(mut server) = RedisServer::start() else {
            return;
        };
        let url = server.url();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(&file, WORKLOAD).unwrap();
        let data: PathBuf = dir.path().join("data");
        let mut w = Command::new(BIN)
            .args(["worker", "--redis", &url, "--id", "w1"])
            .args(["--lease-ms", "1500", "--timeout-sec", "1"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let w_err = Stderr::of(&mut w);
        let mut run = coordinator(&data, &file, &url);
        let until = Instant::now() + Duration::from_secs(30);
        while held_by(&url, "w1") == 0 {
            assert!(Instant::now() < until, "w1 never claimed a task");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Redis goes away while the worker holds tasks: it cannot claim
        // or report, and retries (it says so).
        server.kill();
        w_err.wait_for("retrying in", Duration::from_secs(60));
        // The coordinator stops on the signal too.
        signal(&run, sig);
        let _ = wait(&mut run, Duration::from_secs(30));
        assert!(
            w.try_wait().unwrap().is_none(),
            "the worker waits for Redis"
        );
        signal(&w, sig);
        let status = wait(&mut w, Duration::from_secs(30));
        let stderr = w_err.join();
        assert_eq!(status.code(), Some(0), "SIG{sig}: {stderr}");
        let mut stdout = String::new();
        std::io::Read::read_to_string(w.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        assert!(stdout.starts_with("worker w1: "), "SIG{sig}: {stdout}");
        assert!(stderr.contains("retrying in"), "SIG{sig}: {stderr}");
    }
}

#[test]
fn a_worker_is_named_after_the_real_hostname() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let out = Command::new(BIN)
        .args(["worker", "--redis", &server.url(), "--idle-exit-sec", "1"])
        .env("HOSTNAME", "not-the-hostname")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("worker worker-{}-", host.trim())),
        "{stdout}"
    );
}

/// A one-task workload in `dir/w.toml` whose node runs `script` (written to
/// `dir/<name>`, executable) under a 100 s timeout; returns the workload.
fn one_exec_step(dir: &Path, name: &str, script: &str) -> PathBuf {
    let step = dir.join(name);
    std::fs::write(&step, script).unwrap();
    let mut perms = std::fs::metadata(&step).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&step, perms).unwrap();
    let file = dir.join("w.toml");
    std::fs::write(
        &file,
        format!(
            r#"
seed = 3
[execution]
default_cost_ceiling_micros = 1000
[execution.workers]
worker_timeout_sec = 100
[[tenants]]
id = "acme"
budget_micros = 1000000
[[pipelines]]
id = "p"
nodes = [{{ id = "step", handler = "exec", params = {{ argv = ["{}"] }} }}]
[[submissions]]
tenant = "acme"
pipeline = "p"
"#,
            step.display()
        ),
    )
    .unwrap();
    file
}

#[test]
fn a_second_signal_kills_a_stopping_workers_running_steps() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let file = one_exec_step(
        dir.path(),
        "long.sh",
        &format!(
            "#!/bin/sh\ncat >/dev/null\necho $$ >> {}\nsleep 60\n",
            pids.display()
        ),
    );
    let mut w = Command::new(BIN)
        .args(["worker", "--redis", &url, "--id", "w1"])
        .args(["--lease-ms", "200000", "--timeout-sec", "100"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let w_err = Stderr::of(&mut w);
    // Killed when the test ends, however it ends.
    let _run = Reap(
        Command::new(BIN)
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("run")
            .arg(&file)
            .args(["--queue", "redis", "--redis-url", &url])
            .args(["--local-workers", "0", "--lease-ms", "200000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&pids).map_or(true, |p| p.is_empty()) {
        assert!(Instant::now() < until, "the step never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = std::fs::read_to_string(&pids).unwrap().trim().to_owned();
    signal(&w, "TERM");
    // Sent only once the first one was taken: two signals close together
    // may be delivered as one.
    w_err.wait_for("stopping:", Duration::from_secs(30));
    assert!(
        w.try_wait().unwrap().is_none(),
        "the first signal lets the running step finish"
    );
    signal(&w, "TERM");
    let status = wait(&mut w, Duration::from_secs(30));
    let stderr = w_err.join();
    assert_eq!(status.code(), Some(143), "{stderr}");
    let until = Instant::now() + Duration::from_secs(10);
    let ended = loop {
        let ended = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        });
        if ended || Instant::now() > until {
            break ended;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !ended {
        let _ = Command::new("kill").args(["-9", &pid]).status();
    }
    assert!(ended, "the running step was killed");
}

#[test]
fn a_report_redis_refuses_for_good_ends_the_worker_with_exit_2_and_the_reason() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (started, go) = (dir.path().join("started"), dir.path().join("go"));
    // A step that answers once the test lets it.
    let file = one_exec_step(
        dir.path(),
        "step.sh",
        &format!(
            "#!/bin/sh\ncat >/dev/null\ntouch {}\nwhile [ ! -e {} ]; do sleep 0.02; done\necho '{{}}'\n",
            started.display(),
            go.display()
        ),
    );
    let mut w = Reap(
        Command::new(BIN)
            .args(["worker", "--redis", &url, "--id", "w1"])
            .args(["--lease-ms", "200000", "--timeout-sec", "100"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let w_err = Stderr::of(&mut w.0);
    let _run = Reap(
        Command::new(BIN)
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("run")
            .arg(&file)
            .args(["--queue", "redis", "--redis-url", &url])
            .args(["--local-workers", "0", "--lease-ms", "200000"])
            .env_remove("RUNLEDGER_DATA")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(Instant::now() < until, "the step never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The attempt was claimed and announced; its report will meet a
    // results key of the wrong type (the tasks keys stay sound).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let key = "{runledger}:results";
    redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(key)
        .ignore()
        .cmd("SET")
        .arg(key)
        .arg("not a stream")
        .ignore()
        .query::<()>(&mut conn)
        .unwrap();
    std::fs::write(&go, "").unwrap();
    // A generous bound: a safety net, not a measure.
    let status = wait(&mut w.0, Duration::from_secs(90));
    let stderr = w_err.join();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("reporting a result failed"), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("error: ")
            && l.contains("WRONGTYPE")
            && l.contains("gave up after")),
        "the worker ends with the reason: {stderr}"
    );
}

/// A child killed (if still running) and reaped when dropped.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
