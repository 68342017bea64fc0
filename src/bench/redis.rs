//! `runledger bench redis`: the physical limit of Redis Streams on this
//! machine — raw pipelined XADD, XREADGROUP in batches, XACK — beside the
//! same number of tasks through the transport's dispatch → claim → report
//! → results → ack cycle, in the same run against the same server.
//!
//! Shell code: it spawns `redis-server` (on a free loopback port, no
//! persistence, killed at the end) unless given a URL, and reads the clock.
//! Both measures use batches of the same size and one client, so the
//! ratio shows what the scripts, JSON and bookkeeping cost.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::domain::{Params, Priority, RunId, TaskId, TenantId, WorkerId};
use crate::runtime::redis::{Outcome, RedisStreams, StreamsConfig, TaskEnvelope};

#[derive(Clone, Debug, Serialize)]
pub struct RedisBenchReport {
    pub tasks: u64,
    pub batch: usize,
    /// Bytes of one envelope's JSON (the raw entries carry as many).
    pub payload_bytes: usize,
    pub own_server: bool,
    pub raw_xadd_per_sec: f64,
    pub raw_cycle_per_sec: f64,
    pub transport_dispatch_per_sec: f64,
    pub transport_cycle_per_sec: f64,
}

/// A `redis-server` of our own on a free loopback port, without
/// persistence, killed on drop (`bench redis`, `bench distributed`).
pub(crate) struct OwnServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnServer {
    /// Starts one and waits (up to 10 s) until it accepts connections.
    pub(crate) fn start() -> anyhow::Result<OwnServer> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed? or pass --url)")?;
        let server = OwnServer {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            _dir: dir,
        };
        let give_up = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > give_up {
                bail!("redis-server on port {port} did not start within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The server's process id (to read its CPU time).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn envelope(n: u64) -> TaskEnvelope {
    TaskEnvelope {
        task: TaskId(format!("bench-redis/t{n:08}")),
        attempt: 1,
        run: RunId("bench-redis".to_owned()),
        tenant: TenantId("bench-tenant-0".to_owned()),
        priority: Priority::Normal,
        handler: "noop".to_owned(),
        params: Params::null(),
        inputs: Vec::new(),
        lease_ms: 30_000,
        seed: 0,
        timeout_ms: 0,
    }
}

/// One envelope's JSON: the payload the raw measure writes.
pub(crate) fn envelope_json() -> anyhow::Result<String> {
    Ok(serde_json::to_string(&envelope(0))?)
}

fn per_sec(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Runs both measures; `url` = None starts a private server.
pub fn run_redis_bench(
    tasks: u64,
    batch: usize,
    url: Option<&str>,
) -> anyhow::Result<RedisBenchReport> {
    let batch = batch.clamp(1, crate::runtime::redis::SCRIPT_BATCH_MAX);
    let (server, url) = match url {
        Some(url) => (None, url.to_owned()),
        None => {
            let server = OwnServer::start()?;
            let url = server.url().to_owned();
            (Some(server), url)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let nonce = std::process::id();
    let report = runtime.block_on(async {
        // Checks the URL and reachability with the transport's own errors.
        RedisStreams::connect(&url, StreamsConfig::default()).await?;
        let payload = envelope_json()?;
        let (raw_xadd, raw_cycle) = raw(&url, nonce, tasks, batch, &payload).await?;
        let (dispatch, cycle) = transport(&url, nonce, tasks, batch).await?;
        anyhow::Ok(RedisBenchReport {
            tasks,
            batch,
            payload_bytes: payload.len(),
            own_server: server.is_some(),
            raw_xadd_per_sec: raw_xadd,
            raw_cycle_per_sec: raw_cycle,
            transport_dispatch_per_sec: dispatch,
            transport_cycle_per_sec: cycle,
        })
    })?;
    drop(server);
    Ok(report)
}

/// Pipelined XADD of `tasks` entries of `payload`, then XREADGROUP + XACK
/// in batches, on one connection; returns (XADD/s, whole cycle/s). Keys
/// are `{bench-raw-<nonce>}:stream`, deleted at the end.
pub(crate) async fn raw(
    url: &str,
    nonce: u32,
    tasks: u64,
    batch: usize,
    payload: &str,
) -> anyhow::Result<(f64, f64)> {
    let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {url}"))?;
    let key = format!("{{bench-raw-{nonce}}}:stream");
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await?;
    let started = Instant::now();
    let mut added = 0u64;
    while added < tasks {
        let n = (tasks - added).min(batch as u64);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("e")
                .arg(payload)
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
        added += n;
    }
    let xadd = started.elapsed();
    let mut done = 0u64;
    while done < tasks {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(batch)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|e| e.id)
            .collect();
        if ids.is_empty() {
            bail!("raw read found {done} of {tasks} entries");
        }
        let _: i64 = redis::cmd("XACK")
            .arg(&key)
            .arg("g")
            .arg(&ids)
            .query_async(&mut conn)
            .await?;
        done += ids.len() as u64;
    }
    let cycle = started.elapsed();
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
    Ok((per_sec(tasks, xadd), per_sec(tasks, cycle)))
}

/// dispatch_many, then claim → report_many → results → ack_results, in
/// one process; returns (dispatch/s, whole cycle/s).
pub(crate) async fn transport(
    url: &str,
    nonce: u32,
    tasks: u64,
    batch: usize,
) -> anyhow::Result<(f64, f64)> {
    let config = StreamsConfig {
        prefix: format!("bench-transport-{nonce}"),
        stream_len_max: tasks.max(1),
        results_len_max: tasks.max(1),
        ..StreamsConfig::default()
    };
    let streams = RedisStreams::connect(url, config).await?;
    let worker = WorkerId("bench-worker".to_owned());
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < tasks {
        let n = (tasks - sent).min(batch as u64);
        let envelopes: Vec<TaskEnvelope> = (sent..sent + n).map(envelope).collect();
        streams.dispatch_many(&envelopes).await?;
        sent += n;
    }
    let dispatch = started.elapsed();
    let mut acked = 0u64;
    while acked < tasks {
        let claimed = streams.claim("bench-worker", batch, Duration::ZERO).await?;
        if claimed.is_empty() {
            bail!("claim found {acked} of {tasks} tasks");
        }
        let reports: Vec<_> = claimed
            .iter()
            .map(|c| {
                let outcome = Outcome::Ack {
                    output: Params::null(),
                    costs: Vec::new(),
                };
                (c.receipt.clone(), c.result(&worker, outcome))
            })
            .collect();
        streams.report_many(&reports).await?;
        let results = streams
            .results("bench-coordinator", batch, Duration::ZERO)
            .await?;
        let ids: Vec<String> = results.into_iter().map(|r| r.stream_id).collect();
        streams.ack_results(&ids).await?;
        acked += ids.len() as u64;
    }
    let cycle = started.elapsed();
    let depth = streams.depth().await?;
    if depth.results != 0 || depth.priorities.iter().any(|d| d.length != 0) {
        bail!("the transport did not drain: {depth:?}");
    }
    Ok((per_sec(tasks, dispatch), per_sec(tasks, cycle)))
}
