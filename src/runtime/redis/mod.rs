//! The Redis Streams transport between a coordinator and workers on other
//! machines: [`RedisStreams`].
//!
//! It owns the Redis side only — streams, consumer groups, the delayed set,
//! the dead-letter stream — and never the truth: the coordinator's ledger
//! decides what a task's state is, and this transport only carries
//! envelopes out and results back. Results are at-least-once; the
//! coordinator deduplicates them by (task, attempt).
//!
//! Keys (all share the hash tag `{prefix}`, so the scripts also run on
//! Redis Cluster; many namespaces share one Redis):
//! - `{prefix}:tasks:<priority>` — one stream per priority (critical, high,
//!   normal, low, batch), consumer group `workers`; entry field `e` = the
//!   envelope JSON. Reported entries are deleted, so a stream's length is
//!   its backlog (ready + leased), bounded by `stream_len_max`: a dispatch
//!   past the bound is refused ([`RedisError::Full`]), never trimmed.
//! - `{prefix}:results` — worker reports, consumer group `coordinator`,
//!   field `r`; deleted once the coordinator acknowledges them; bounded
//!   the same way.
//! - `{prefix}:delayed` — sorted set of retries by due time (ms), members
//!   `"<priority index>:<envelope JSON>"`.
//! - `{prefix}:dead` — dead letters (`kind`, `payload`, `reason`), trimmed
//!   exactly to `dead_len_max` (an archive: the ledger holds the truth).
//!
//! Every multi-key move is one Lua script ([`scripts`]), so it happens
//! whole or not at all. Nothing here panics on what Redis returns: replies
//! are matched, and an entry that does not decode is dead-lettered.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runledger::runtime::redis::RedisError> {
//! use std::time::Duration;
//! use runledger::runtime::redis::{RedisStreams, StreamsConfig};
//! let streams = RedisStreams::connect("redis://127.0.0.1:6390", StreamsConfig::default()).await?;
//! let claimed = streams.claim("worker-1", 16, Duration::from_millis(500)).await?;
//! # let _ = claimed; Ok(()) }
//! ```

pub mod envelope;
pub mod queue;
pub mod scripts;
pub mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::domain::Priority;

pub use envelope::{Claimed, Outcome, Receipt, ResultEntry, TaskEnvelope, TaskResult};
pub use queue::RedisQueue;

/// The workers' consumer group on the priority streams.
pub const WORKER_GROUP: &str = "workers";
/// The coordinator's consumer group on the results stream.
pub const COORDINATOR_GROUP: &str = "coordinator";
/// Envelopes or results per script call (each call is atomic).
pub const SCRIPT_BATCH_MAX: usize = 1_024;
/// Idle dedicated connections kept for blocking reads.
const BLOCKING_IDLE_MAX: usize = 8;
/// Longest accepted namespace prefix.
const PREFIX_LEN_MAX: usize = 64;

/// Bounds and timings of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamsConfig {
    /// Namespace: every key starts with `{prefix}:`.
    pub prefix: String,
    /// An entry claimed and not reported for this long is reclaimed by the
    /// next claimer (XAUTOCLAIM min-idle). Envelopes may not ask for more.
    pub lease: Duration,
    /// Aging: an entry `k` priority levels lower is served as if added
    /// `k × aging_ms` later (see [`scripts::CLAIM`]).
    pub aging_ms: u64,
    /// Bound of each priority stream (ready + leased entries).
    pub stream_len_max: u64,
    /// Bound of the results stream (unacknowledged results).
    pub results_len_max: u64,
    /// Bound of the delayed set.
    pub delayed_max: u64,
    /// The dead-letter stream keeps the newest this many.
    pub dead_len_max: u64,
    /// Delayed entries moved per `promote_due` call at most.
    pub promote_batch_max: u64,
    /// Connecting gives up after this.
    pub connect_timeout: Duration,
    /// A command (beyond its own blocking time) gives up after this.
    pub command_timeout: Duration,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            prefix: "runledger".to_owned(),
            lease: Duration::from_secs(30),
            aging_ms: 5_000,
            stream_len_max: 1_000_000,
            results_len_max: 1_000_000,
            delayed_max: 10_000_000,
            dead_len_max: 100_000,
            promote_batch_max: 1_024,
            connect_timeout: Duration::from_secs(3),
            command_timeout: Duration::from_secs(5),
        }
    }
}

/// What went wrong, naming the Redis URL (password hidden) and the step.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("bad Redis URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("bad Redis namespace prefix {prefix:?}: {reason}")]
    BadPrefix { prefix: String, reason: String },
    #[error("cannot connect to Redis at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("Redis at {url} did not answer within {timeout_ms} ms while {step}")]
    Timeout {
        url: String,
        step: &'static str,
        timeout_ms: u128,
    },
    #[error("Redis at {url}: {step} failed: {source}")]
    Command {
        url: String,
        step: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis at {url}: {key} holds its bound of {len_max} entries; try again once it drains")]
    Full {
        url: String,
        key: String,
        len_max: u64,
    },
    #[error(
        "task {task} asks a lease of {lease_ms} ms, more than the transport's {transport_lease_ms} ms (it would be reclaimed while running)"
    )]
    LeaseTooLong {
        task: String,
        lease_ms: u64,
        transport_lease_ms: u128,
    },
    #[error("Redis at {url}: unexpected reply to {step}: {reply}")]
    Reply {
        url: String,
        step: &'static str,
        reply: String,
    },
    /// A loop retried `error` [`PERMANENT_RETRIES_MAX`] times in a row.
    #[error("{error} (gave up after {attempts} tries: retrying cannot fix this)")]
    GaveUp {
        attempts: u32,
        error: Box<RedisError>,
    },
    #[error("encoding {what} as JSON: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// How many times in a row a loop retries a Redis error that waiting
/// cannot fix ([`RedisError::is_permanent`]) before its process gives up.
pub const PERMANENT_RETRIES_MAX: u32 = 5;
/// The first and the longest wait between two tries of a failing call.
const RETRY_WAIT_MIN: Duration = Duration::from_millis(50);
const RETRY_WAIT_MAX: Duration = Duration::from_secs(2);

impl RedisError {
    /// Whether retrying cannot fix this: a key of the wrong type
    /// (WRONGTYPE), a missing permission (NOPERM), a script Redis will not
    /// run (NOSCRIPT, a script error), a reply this client does not
    /// understand, a bad setting. Redis away, restarting (LOADING), busy,
    /// out of memory or at a bound ([`RedisError::Full`]) may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            RedisError::Connect { .. } | RedisError::Timeout { .. } | RedisError::Full { .. } => {
                false
            }
            RedisError::Command { source, .. } => {
                let passing = matches!(
                    source.code(),
                    Some("OOM" | "BUSY" | "READONLY" | "LOADING" | "MASTERDOWN" | "TRYAGAIN")
                );
                !passing && matches!(source.retry_method(), redis::RetryMethod::NoRetry)
            }
            RedisError::BadUrl { .. }
            | RedisError::BadPrefix { .. }
            | RedisError::LeaseTooLong { .. }
            | RedisError::Reply { .. }
            | RedisError::Encode { .. }
            | RedisError::GaveUp { .. } => true,
        }
    }
}

/// How one loop retries a failing Redis call: an error that waiting may
/// fix for as long as it takes, one that it cannot
/// [`PERMANENT_RETRIES_MAX`] times in a row; each failure is logged (a
/// warning on stderr) with the wait before the next try, which doubles
/// from 50 ms up to 2 s.
#[derive(Debug)]
pub struct Retries {
    /// What the loop does, for the log.
    step: &'static str,
    failures: u32,
    permanent: u32,
    wait: Duration,
}

impl Retries {
    pub fn new(step: &'static str) -> Self {
        Retries {
            step,
            failures: 0,
            permanent: 0,
            wait: RETRY_WAIT_MIN,
        }
    }

    /// The call succeeded: the next failure starts afresh.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.permanent = 0;
        self.wait = RETRY_WAIT_MIN;
    }

    /// After a failure: how long to wait before the next try, or `None`
    /// when it is time to give up (the errors retrying cannot fix reached
    /// the bound, or `stopping` and the failures reached it).
    pub fn failed(
        &mut self,
        error: &dyn std::fmt::Display,
        permanent: bool,
        stopping: bool,
    ) -> Option<Duration> {
        self.failures += 1;
        if permanent {
            self.permanent += 1;
        }
        let bounded = if stopping {
            self.failures
        } else {
            self.permanent
        };
        if bounded >= PERMANENT_RETRIES_MAX {
            tracing::error!(
                "{} failed {} times, giving up: {error}",
                self.step,
                self.failures
            );
            return None;
        }
        let wait = self.wait;
        self.wait = (self.wait * 2).min(RETRY_WAIT_MAX);
        tracing::warn!(
            "{} failed (try {}), retrying in {} ms: {error}",
            self.step,
            self.failures,
            wait.as_millis()
        );
        Some(wait)
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Counts of one priority stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamDepth {
    /// Entries in the stream: ready plus leased.
    pub length: u64,
    /// Delivered and not yet reported (leased).
    pub pending: u64,
}

impl StreamDepth {
    pub fn ready(&self) -> u64 {
        self.length.saturating_sub(self.pending)
    }
}

/// Counts of a namespace, per priority (critical first).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Depth {
    pub priorities: [StreamDepth; 5],
    pub delayed: u64,
    pub dead: u64,
    pub results: u64,
    pub results_pending: u64,
}

/// A dead letter as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub stream_id: String,
    /// `task`, `result` or `delayed`: what the payload is.
    pub kind: String,
    pub payload: String,
    pub reason: String,
}

struct Keys {
    tasks: [String; 5],
    results: String,
    delayed: String,
    dead: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let key = |rest: &str| format!("{{{prefix}}}:{rest}");
        Keys {
            tasks: Priority::ALL.map(|p| key(&format!("tasks:{}", p.name()))),
            results: key("results"),
            delayed: key("delayed"),
            dead: key("dead"),
        }
    }
}

struct Scripts {
    dispatch: Script,
    claim: Script,
    report: Script,
    retry_later: Script,
    promote_due: Script,
}

struct Inner {
    url: String,
    client: redis::Client,
    conn: ConnectionManager,
    blocking: tokio::sync::Mutex<Vec<ConnectionManager>>,
    config: StreamsConfig,
    keys: Keys,
    scripts: Scripts,
    last_reclaim: std::sync::Mutex<Option<Instant>>,
}

/// A connection to one namespace of Redis Streams. Cheap to clone; clones
/// share the connection.
#[derive(Clone)]
pub struct RedisStreams {
    inner: Arc<Inner>,
}

/// The URL as shown in messages: the password, if any, hidden.
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let hidden = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        "***".to_owned()
    };
    format!("{scheme}://{hidden}{}", &rest[at..])
}

fn check_url(url: &str, shown: &str) -> Result<(), RedisError> {
    let bad = |reason: String| RedisError::BadUrl {
        url: shown.to_owned(),
        reason,
    };
    match url.split_once("://") {
        None => Err(bad("expected redis://HOST[:PORT][/DB]".to_owned())),
        Some(("redis" | "unix" | "redis+unix", _)) => Ok(()),
        Some(("rediss", _)) => Err(bad(
            "TLS (rediss://) is not built in; use redis:// through a TLS tunnel".to_owned(),
        )),
        Some((scheme, _)) => Err(bad(format!(
            "the scheme must be redis:// or unix:// (got {scheme}://)"
        ))),
    }
}

fn check_prefix(prefix: &str) -> Result<(), RedisError> {
    let bad = |reason: &str| RedisError::BadPrefix {
        prefix: prefix.to_owned(),
        reason: reason.to_owned(),
    };
    if prefix.is_empty() {
        return Err(bad("it is empty"));
    }
    if prefix.len() > PREFIX_LEN_MAX {
        return Err(bad("it is longer than 64 bytes"));
    }
    if prefix
        .chars()
        .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
    {
        return Err(bad("braces, spaces and control characters are not allowed"));
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".to_owned()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn array(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// `{"full", key}` from a script: the key that is at its bound.
fn full_key(value: &Value) -> Option<String> {
    let items = array(value)?;
    if items.len() == 2 && text(&items[0]).as_deref() == Some("full") {
        return text(&items[1]);
    }
    None
}

/// A stream entry's fields as (name, value) text pairs.
type Fields = Vec<(String, Option<String>)>;

/// The fields of a stream entry as (name, value) text pairs.
fn fields(value: &Value) -> Fields {
    match value {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [name, value] => Some((text(name)?, text(value))),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(name, value)| Some((text(name)?, text(value))))
            .collect(),
        _ => Vec::new(),
    }
}

fn field(fields: &[(String, Option<String>)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.clone())
}

/// The entries of an XREADGROUP / XRANGE reply for one stream:
/// `(id, fields)`.
fn entries_of(value: &Value) -> Vec<(String, Fields)> {
    array(value)
        .unwrap_or_default()
        .iter()
        .filter_map(|entry| {
            let parts = array(entry)?;
            let id = text(parts.first()?)?;
            Some((id, parts.get(1).map(fields).unwrap_or_default()))
        })
        .collect()
}

/// The entries of the single stream an XREADGROUP over one key returned.
fn read_reply_entries(value: &Value) -> Vec<(String, Fields)> {
    match value {
        Value::Array(streams) => streams
            .iter()
            .filter_map(array)
            .filter_map(|s| s.get(1))
            .flat_map(entries_of)
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries_of(e)).collect(),
        _ => Vec::new(),
    }
}

fn shorten(value: &Value) -> String {
    let mut shown = format!("{value:?}");
    if shown.len() > 200 {
        let mut cut = 200;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push('…');
    }
    shown
}

impl RedisStreams {
    /// Connects to `url` (redis://HOST:PORT[/DB]) for the namespace in
    /// `config`, and creates the consumer groups that are missing. Fails
    /// within about `2 × connect_timeout` when Redis is unreachable.
    pub async fn connect(url: &str, config: StreamsConfig) -> Result<Self, RedisError> {
        let shown = shown_url(url);
        check_url(url, &shown)?;
        check_prefix(&config.prefix)?;
        let client = redis::Client::open(url).map_err(|e| RedisError::BadUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let conn = open_connection(&client, &shown, &config).await?;
        let streams = RedisStreams {
            inner: Arc::new(Inner {
                url: shown,
                client,
                conn,
                blocking: tokio::sync::Mutex::new(Vec::new()),
                keys: Keys::new(&config.prefix),
                config,
                scripts: Scripts {
                    dispatch: Script::new(scripts::DISPATCH),
                    claim: Script::new(scripts::CLAIM),
                    report: Script::new(scripts::REPORT),
                    retry_later: Script::new(scripts::RETRY_LATER),
                    promote_due: Script::new(scripts::PROMOTE_DUE),
                },
                last_reclaim: std::sync::Mutex::new(None),
            }),
        };
        streams.ensure_groups().await?;
        Ok(streams)
    }

    /// The URL as shown in messages.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub fn config(&self) -> &StreamsConfig {
        &self.inner.config
    }

    /// The stream key of one priority.
    pub fn task_key(&self, priority: Priority) -> &str {
        &self.inner.keys.tasks[priority.index()]
    }

    pub fn results_key(&self) -> &str {
        &self.inner.keys.results
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Runs one request with the command timeout (plus `blocking`).
    async fn call<T>(
        &self,
        step: &'static str,
        blocking: Duration,
        request: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisError> {
        let limit = self.inner.config.command_timeout.saturating_add(blocking);
        match tokio::time::timeout(limit, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(RedisError::Command {
                url: self.inner.url.clone(),
                step,
                source,
            }),
            Err(_) => Err(RedisError::Timeout {
                url: self.inner.url.clone(),
                step,
                timeout_ms: limit.as_millis(),
            }),
        }
    }

    fn full(&self, key: String) -> RedisError {
        let keys = &self.inner.keys;
        let config = &self.inner.config;
        let len_max = if key == keys.results {
            config.results_len_max
        } else if key == keys.delayed {
            config.delayed_max
        } else {
            config.stream_len_max
        };
        RedisError::Full {
            url: self.inner.url.clone(),
            key,
            len_max,
        }
    }

    fn reply_error(&self, step: &'static str, value: &Value) -> RedisError {
        RedisError::Reply {
            url: self.inner.url.clone(),
            step,
            reply: shorten(value),
        }
    }

    /// Creates the workers' groups on the priority streams and the
    /// coordinator's group on the results stream (from id 0, MKSTREAM);
    /// groups that exist are left as they are.
    pub async fn ensure_groups(&self) -> Result<(), RedisError> {
        let keys = &self.inner.keys;
        let wanted = keys
            .tasks
            .iter()
            .map(|k| (k.as_str(), WORKER_GROUP))
            .chain(std::iter::once((keys.results.as_str(), COORDINATOR_GROUP)));
        for (key, group) in wanted {
            let mut conn = self.conn();
            let created: Result<Value, RedisError> = self
                .call(
                    "creating a consumer group",
                    Duration::ZERO,
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(key)
                        .arg(group)
                        .arg("0")
                        .arg("MKSTREAM")
                        .query_async(&mut conn),
                )
                .await;
            match created {
                Ok(_) => {}
                Err(RedisError::Command { ref source, .. })
                    if source.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn check_lease(&self, envelope: &TaskEnvelope) -> Result<(), RedisError> {
        let lease = self.inner.config.lease;
        if u128::from(envelope.lease_ms) > lease.as_millis() {
            return Err(RedisError::LeaseTooLong {
                task: envelope.task.to_string(),
                lease_ms: envelope.lease_ms,
                transport_lease_ms: lease.as_millis(),
            });
        }
        Ok(())
    }

    fn encode<T: serde::Serialize>(
        what: impl Fn() -> String,
        value: &T,
    ) -> Result<String, RedisError> {
        serde_json::to_string(value).map_err(|source| RedisError::Encode {
            what: what(),
            source,
        })
    }

    /// Adds one envelope to its priority stream; its entry id.
    pub async fn dispatch(&self, envelope: &TaskEnvelope) -> Result<String, RedisError> {
        let mut ids = self.dispatch_many(std::slice::from_ref(envelope)).await?;
        ids.pop()
            .ok_or_else(|| self.reply_error("dispatch", &Value::Nil))
    }

    /// Adds envelopes to their priority streams, in order; their entry ids.
    /// Each run of up to [`SCRIPT_BATCH_MAX`] is added whole or not at all
    /// (refused with [`RedisError::Full`] when a stream would pass its
    /// bound).
    pub async fn dispatch_many(
        &self,
        envelopes: &[TaskEnvelope],
    ) -> Result<Vec<String>, RedisError> {
        let mut ids = Vec::with_capacity(envelopes.len());
        for chunk in envelopes.chunks(SCRIPT_BATCH_MAX) {
            let mut invocation = self.inner.scripts.dispatch.prepare_invoke();
            for key in &self.inner.keys.tasks {
                invocation.key(key);
            }
            invocation.arg(self.inner.config.stream_len_max);
            for envelope in chunk {
                self.check_lease(envelope)?;
                let json = Self::encode(|| format!("task {}", envelope.task), envelope)?;
                invocation.arg(envelope.priority.index()).arg(json);
            }
            let mut conn = self.conn();
            let reply: Value = self
                .call(
                    "dispatch",
                    Duration::ZERO,
                    invocation.invoke_async(&mut conn),
                )
                .await?;
            if let Some(key) = full_key(&reply) {
                return Err(self.full(key));
            }
            let added = array(&reply).ok_or_else(|| self.reply_error("dispatch", &reply))?;
            for id in added {
                ids.push(text(id).ok_or_else(|| self.reply_error("dispatch", &reply))?);
            }
        }
        Ok(ids)
    }

    /// Whether this handle should look for expired leases now: at most
    /// every quarter lease (between 10 ms and 1 s).
    fn reclaim_due(&self) -> bool {
        let interval =
            (self.inner.config.lease / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut last = self
            .inner
            .last_reclaim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < interval) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Up to `max` entries for `consumer`, waiting up to `block` for one:
    /// first entries whose lease ran out (reclaimed from their consumer,
    /// their delivery count raised), then new entries by priority with
    /// aging (see [`scripts::CLAIM`]). An entry that does not decode is
    /// moved to the dead-letter stream, not returned.
    pub async fn claim(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Claimed>, RedisError> {
        let max = max.clamp(1, SCRIPT_BATCH_MAX);
        let give_up = Instant::now() + block;
        loop {
            let reclaim = self.reclaim_due();
            let mut invocation = self.inner.scripts.claim.prepare_invoke();
            for key in &self.inner.keys.tasks {
                invocation.key(key);
            }
            invocation
                .arg(WORKER_GROUP)
                .arg(consumer)
                .arg(max)
                .arg(self.inner.config.aging_ms)
                .arg(if reclaim { "1" } else { "0" })
                .arg(millis(self.inner.config.lease));
            let mut conn = self.conn();
            let reply: Value = self
                .call("claim", Duration::ZERO, invocation.invoke_async(&mut conn))
                .await?;
            let parts = array(&reply)
                .filter(|p| p.len() == 2)
                .ok_or_else(|| self.reply_error("claim", &reply))?;
            let (entries, last) = (&parts[0], &parts[1]);
            let entries = array(entries).ok_or_else(|| self.reply_error("claim", &reply))?;
            let mut claimed = Vec::with_capacity(entries.len());
            for entry in entries {
                if let Some(c) = self.decode_claim(entry).await? {
                    claimed.push(c);
                }
            }
            if !claimed.is_empty() || !entries.is_empty() {
                if claimed.is_empty() {
                    continue;
                }
                return Ok(claimed);
            }
            let now = Instant::now();
            if now >= give_up {
                return Ok(claimed);
            }
            let last: Vec<String> = array(last)
                .unwrap_or_default()
                .iter()
                .filter_map(text)
                .collect();
            if last.len() != 5 {
                return Err(self.reply_error("claim", &reply));
            }
            self.wait_for_new(&last, give_up - now).await?;
        }
    }

    /// One `{priority index, id, payload, deliveries}` of the claim script;
    /// `None` (after dead-lettering it) when the payload does not decode.
    async fn decode_claim(&self, entry: &Value) -> Result<Option<Claimed>, RedisError> {
        let parts = array(entry)
            .filter(|p| p.len() == 4)
            .ok_or_else(|| self.reply_error("claim", entry))?;
        let priority = int(&parts[0])
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| Priority::ALL.get(i).copied())
            .ok_or_else(|| self.reply_error("claim", entry))?;
        let stream_id = text(&parts[1]).ok_or_else(|| self.reply_error("claim", entry))?;
        let deliveries = int(&parts[3])
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(1)
            .max(1);
        let payload = text(&parts[2]);
        let decoded = payload.as_deref().map(envelope::decode_task);
        match decoded {
            Some(Ok(envelope)) => Ok(Some(Claimed {
                receipt: Receipt {
                    priority,
                    stream_id,
                },
                deliveries,
                envelope,
            })),
            Some(Err(e)) => {
                let reason = format!("task entry {stream_id} does not decode: {e}");
                self.bury_entry(
                    priority,
                    &stream_id,
                    payload.as_deref().unwrap_or(""),
                    &reason,
                )
                .await?;
                Ok(None)
            }
            None => {
                let reason = format!("task entry {stream_id} has no envelope field \"e\"");
                self.bury_entry(priority, &stream_id, "", &reason).await?;
                Ok(None)
            }
        }
    }

    /// Moves a task entry that cannot be handed out to the dead-letter
    /// stream, atomically.
    async fn bury_entry(
        &self,
        priority: Priority,
        stream_id: &str,
        payload: &str,
        reason: &str,
    ) -> Result<(), RedisError> {
        let key = self.task_key(priority);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XADD")
            .arg(&self.inner.keys.dead)
            .arg("MAXLEN")
            .arg("=")
            .arg(self.inner.config.dead_len_max)
            .arg("*")
            .arg("kind")
            .arg("task")
            .arg("payload")
            .arg(payload)
            .arg("reason")
            .arg(reason)
            .ignore()
            .cmd("XACK")
            .arg(key)
            .arg(WORKER_GROUP)
            .arg(stream_id)
            .ignore()
            .cmd("XDEL")
            .arg(key)
            .arg(stream_id)
            .ignore();
        let mut conn = self.conn();
        self.call::<()>(
            "dead-lettering an undecodable entry",
            Duration::ZERO,
            pipe.query_async(&mut conn),
        )
        .await
    }

    /// A dedicated connection for a blocking read (a blocked command would
    /// hold up every other request on the shared connection).
    async fn blocking_connection(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(conn) = self.inner.blocking.lock().await.pop() {
            return Ok(conn);
        }
        open_connection(&self.inner.client, &self.inner.url, &self.inner.config).await
    }

    async fn return_blocking(&self, conn: ConnectionManager) {
        let mut idle = self.inner.blocking.lock().await;
        if idle.len() < BLOCKING_IDLE_MAX {
            idle.push(conn);
        }
    }

    /// Waits up to `wait` until a priority stream holds an entry past its
    /// group's last-delivered id (`last`, critical first). Claims nothing.
    async fn wait_for_new(&self, last: &[String], wait: Duration) -> Result<(), RedisError> {
        let block_ms = millis(wait).max(1);
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS");
        for key in &self.inner.keys.tasks {
            cmd.arg(key);
        }
        for id in last {
            cmd.arg(id);
        }
        let mut conn = self.blocking_connection().await?;
        let result: Result<Value, RedisError> = self
            .call("waiting for new entries", wait, cmd.query_async(&mut conn))
            .await;
        if result.is_ok() {
            self.return_blocking(conn).await;
        }
        result.map(|_| ())
    }

    /// Announces attempts a worker starts (`Outcome::Started` results):
    /// added to the results stream, the task entries left pending until
    /// their final report; see [`RedisStreams::send_results`].
    pub async fn announce(&self, results: &[TaskResult]) -> Result<(), RedisError> {
        let entries: Vec<_> = results.iter().map(|r| (None, r)).collect();
        self.send_results(&entries).await
    }

    /// Reports one attempt; see [`RedisStreams::send_results`].
    pub async fn report(&self, receipt: &Receipt, result: &TaskResult) -> Result<(), RedisError> {
        self.send_results(&[(Some(receipt), result)]).await
    }

    /// Reports attempts; see [`RedisStreams::send_results`].
    pub async fn report_many(&self, reports: &[(Receipt, TaskResult)]) -> Result<(), RedisError> {
        let entries: Vec<_> = reports.iter().map(|(r, t)| (Some(r), t)).collect();
        self.send_results(&entries).await
    }

    /// Adds results to the results stream in order, up to
    /// [`SCRIPT_BATCH_MAX`] per atomic script: a report (with the receipt
    /// of its task entry) also acknowledges and deletes its entry — after
    /// every result of the script is in, so no order of failures leaves a
    /// task acknowledged without its result; an announcement (no receipt)
    /// leaves the entry pending. A report for an entry already reclaimed by
    /// another consumer still lands (the coordinator deduplicates by (task,
    /// attempt)). Refused whole with [`RedisError::Full`] when the results
    /// stream would pass its bound.
    pub async fn send_results(
        &self,
        entries: &[(Option<&Receipt>, &TaskResult)],
    ) -> Result<(), RedisError> {
        for chunk in entries.chunks(SCRIPT_BATCH_MAX) {
            let mut invocation = self.inner.scripts.report.prepare_invoke();
            invocation.key(&self.inner.keys.results);
            for key in &self.inner.keys.tasks {
                invocation.key(key);
            }
            invocation
                .arg(WORKER_GROUP)
                .arg(self.inner.config.results_len_max);
            for &(receipt, result) in chunk {
                let json = Self::encode(
                    || {
                        format!(
                            "the result of task {} attempt {}",
                            result.task, result.attempt
                        )
                    },
                    result,
                )?;
                match receipt {
                    Some(receipt) => invocation
                        .arg(receipt.priority.index())
                        .arg(&receipt.stream_id),
                    None => invocation.arg("-").arg(""),
                };
                invocation.arg(json);
            }
            let mut conn = self.conn();
            let reply: Value = self
                .call("report", Duration::ZERO, invocation.invoke_async(&mut conn))
                .await?;
            if let Some(key) = full_key(&reply) {
                return Err(self.full(key));
            }
            if int(&reply).is_none() {
                return Err(self.reply_error("report", &reply));
            }
        }
        Ok(())
    }

    /// Up to `max` new results for the coordinator's `consumer`, waiting
    /// up to `block`. Acknowledge them with [`RedisStreams::ack_results`]
    /// once appended to the ledger; until then they stay pending and a
    /// restarted coordinator reads them again with
    /// [`RedisStreams::pending_results`].
    pub async fn results(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<ResultEntry>, RedisError> {
        let found = self.read_results(consumer, max, ">", None).await?;
        if !found.is_empty() || block.is_zero() {
            return Ok(found);
        }
        self.read_results(consumer, max, ">", Some(block)).await
    }

    /// Results delivered to `consumer` and not yet acknowledged (after a
    /// coordinator restart).
    pub async fn pending_results(
        &self,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<ResultEntry>, RedisError> {
        self.read_results(consumer, max, "0", None).await
    }

    async fn read_results(
        &self,
        consumer: &str,
        max: usize,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Vec<ResultEntry>, RedisError> {
        let max = max.clamp(1, SCRIPT_BATCH_MAX);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(COORDINATOR_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(millis(block).max(1));
        }
        cmd.arg("STREAMS").arg(&self.inner.keys.results).arg(from);
        let reply = self.query_results(&cmd, block).await;
        let reply = match reply {
            Err(RedisError::Command { ref source, .. }) if source.code() == Some("NOGROUP") => {
                self.ensure_groups().await?;
                self.query_results(&cmd, block).await?
            }
            other => other?,
        };
        let mut found = Vec::new();
        for (stream_id, fields) in read_reply_entries(&reply) {
            let payload = field(&fields, "r");
            match payload.as_deref().map(envelope::decode_result) {
                Some(Ok(result)) => found.push(ResultEntry { stream_id, result }),
                Some(Err(e)) => {
                    let reason = format!("result entry {stream_id} does not decode: {e}");
                    self.bury_result(&stream_id, payload.as_deref().unwrap_or(""), &reason)
                        .await?;
                }
                None => {
                    let reason = format!("result entry {stream_id} has no field \"r\"");
                    self.bury_result(&stream_id, "", &reason).await?;
                }
            }
        }
        Ok(found)
    }

    async fn query_results(
        &self,
        cmd: &redis::Cmd,
        block: Option<Duration>,
    ) -> Result<Value, RedisError> {
        match block {
            None => {
                let mut conn = self.conn();
                self.call(
                    "reading results",
                    Duration::ZERO,
                    cmd.query_async(&mut conn),
                )
                .await
            }
            Some(wait) => {
                let mut conn = self.blocking_connection().await?;
                let reply = self
                    .call("reading results", wait, cmd.query_async(&mut conn))
                    .await;
                if reply.is_ok() {
                    self.return_blocking(conn).await;
                }
                reply
            }
        }
    }

    async fn bury_result(
        &self,
        stream_id: &str,
        payload: &str,
        reason: &str,
    ) -> Result<(), RedisError> {
        let results = &self.inner.keys.results;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XADD")
            .arg(&self.inner.keys.dead)
            .arg("MAXLEN")
            .arg("=")
            .arg(self.inner.config.dead_len_max)
            .arg("*")
            .arg("kind")
            .arg("result")
            .arg("payload")
            .arg(payload)
            .arg("reason")
            .arg(reason)
            .ignore()
            .cmd("XACK")
            .arg(results)
            .arg(COORDINATOR_GROUP)
            .arg(stream_id)
            .ignore()
            .cmd("XDEL")
            .arg(results)
            .arg(stream_id)
            .ignore();
        let mut conn = self.conn();
        self.call::<()>(
            "dead-lettering an undecodable result",
            Duration::ZERO,
            pipe.query_async(&mut conn),
        )
        .await
    }

    /// Acknowledges and deletes results the coordinator has appended.
    pub async fn ack_results(&self, stream_ids: &[String]) -> Result<(), RedisError> {
        for chunk in stream_ids.chunks(SCRIPT_BATCH_MAX) {
            let results = &self.inner.keys.results;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("XACK")
                .arg(results)
                .arg(COORDINATOR_GROUP)
                .arg(chunk)
                .ignore()
                .cmd("XDEL")
                .arg(results)
                .arg(chunk)
                .ignore();
            let mut conn = self.conn();
            self.call::<()>(
                "acknowledging results",
                Duration::ZERO,
                pipe.query_async(&mut conn),
            )
            .await?;
        }
        Ok(())
    }

    /// Parks `envelope` until `due_ms` (Unix time, ms); [`promote_due`]
    /// dispatches it then.
    ///
    /// [`promote_due`]: RedisStreams::promote_due
    pub async fn retry_later(
        &self,
        envelope: &TaskEnvelope,
        due_ms: i64,
    ) -> Result<(), RedisError> {
        self.check_lease(envelope)?;
        let json = Self::encode(|| format!("task {}", envelope.task), envelope)?;
        let member = format!("{}:{json}", envelope.priority.index());
        let mut invocation = self.inner.scripts.retry_later.key(&self.inner.keys.delayed);
        invocation
            .arg(self.inner.config.delayed_max)
            .arg(due_ms)
            .arg(member);
        let mut conn = self.conn();
        let reply: Value = self
            .call(
                "parking a retry",
                Duration::ZERO,
                invocation.invoke_async(&mut conn),
            )
            .await?;
        if let Some(key) = full_key(&reply) {
            return Err(self.full(key));
        }
        Ok(())
    }

    /// Moves delayed envelopes due at `now_ms` onto their priority streams
    /// (up to `promote_batch_max`, oldest due first); how many. Atomic per
    /// call: two promoters never dispatch one envelope twice. An envelope
    /// whose stream is at its bound stays delayed.
    pub async fn promote_due(&self, now_ms: i64) -> Result<u64, RedisError> {
        let mut invocation = self.inner.scripts.promote_due.key(&self.inner.keys.delayed);
        for key in &self.inner.keys.tasks {
            invocation.key(key);
        }
        invocation
            .key(&self.inner.keys.dead)
            .arg(now_ms)
            .arg(self.inner.config.promote_batch_max)
            .arg(self.inner.config.stream_len_max)
            .arg(self.inner.config.dead_len_max);
        let mut conn = self.conn();
        let reply: Value = self
            .call(
                "promoting due retries",
                Duration::ZERO,
                invocation.invoke_async(&mut conn),
            )
            .await?;
        int(&reply)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| self.reply_error("promoting due retries", &reply))
    }

    /// Adds `envelope` to the dead-letter stream (bounded: the oldest are
    /// trimmed past `dead_len_max`).
    pub async fn dead_letter(
        &self,
        envelope: &TaskEnvelope,
        reason: &str,
    ) -> Result<String, RedisError> {
        let json = Self::encode(|| format!("task {}", envelope.task), envelope)?;
        let mut conn = self.conn();
        self.call(
            "dead-lettering",
            Duration::ZERO,
            redis::cmd("XADD")
                .arg(&self.inner.keys.dead)
                .arg("MAXLEN")
                .arg("=")
                .arg(self.inner.config.dead_len_max)
                .arg("*")
                .arg("kind")
                .arg("task")
                .arg("payload")
                .arg(json)
                .arg("reason")
                .arg(reason)
                .query_async(&mut conn),
        )
        .await
    }

    /// The oldest `max` dead letters.
    pub async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, RedisError> {
        let mut conn = self.conn();
        let reply: Value = self
            .call(
                "reading dead letters",
                Duration::ZERO,
                redis::cmd("XRANGE")
                    .arg(&self.inner.keys.dead)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(max.max(1))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(entries_of(&reply)
            .into_iter()
            .map(|(stream_id, fields)| DeadLetter {
                stream_id,
                kind: field(&fields, "kind").unwrap_or_default(),
                payload: field(&fields, "payload").unwrap_or_default(),
                reason: field(&fields, "reason").unwrap_or_default(),
            })
            .collect())
    }

    /// Counts per priority, delayed, dead and results, in one round trip.
    pub async fn depth(&self) -> Result<Depth, RedisError> {
        match self.depth_once().await {
            Err(RedisError::Command { ref source, .. }) if source.code() == Some("NOGROUP") => {
                self.ensure_groups().await?;
                self.depth_once().await
            }
            other => other,
        }
    }

    async fn depth_once(&self) -> Result<Depth, RedisError> {
        let keys = &self.inner.keys;
        let mut pipe = redis::pipe();
        for key in &keys.tasks {
            pipe.cmd("XLEN").arg(key);
            pipe.cmd("XPENDING").arg(key).arg(WORKER_GROUP);
        }
        pipe.cmd("ZCARD").arg(&keys.delayed);
        pipe.cmd("XLEN").arg(&keys.dead);
        pipe.cmd("XLEN").arg(&keys.results);
        pipe.cmd("XPENDING")
            .arg(&keys.results)
            .arg(COORDINATOR_GROUP);
        let mut conn = self.conn();
        let replies: Vec<Value> = self
            .call("reading depth", Duration::ZERO, pipe.query_async(&mut conn))
            .await?;
        let count = |i: usize| -> Result<u64, RedisError> {
            let value = replies.get(i).unwrap_or(&Value::Nil);
            // XPENDING's summary starts with the count.
            let n = int(value).or_else(|| array(value).and_then(|a| a.first()).and_then(int));
            n.and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| self.reply_error("reading depth", value))
        };
        let mut depth = Depth::default();
        for (p, slot) in depth.priorities.iter_mut().enumerate() {
            *slot = StreamDepth {
                length: count(2 * p)?,
                pending: count(2 * p + 1)?,
            };
        }
        depth.delayed = count(10)?;
        depth.dead = count(11)?;
        depth.results = count(12)?;
        depth.results_pending = count(13)?;
        Ok(depth)
    }
}

async fn open_connection(
    client: &redis::Client,
    shown: &str,
    config: &StreamsConfig,
) -> Result<ConnectionManager, RedisError> {
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(None)
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    let limit = config.connect_timeout.saturating_mul(2);
    let connecting = ConnectionManager::new_with_config(client.clone(), manager_config);
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(RedisError::Connect {
            url: shown.to_owned(),
            reason: e.to_string(),
        }),
        Err(_) => Err(RedisError::Timeout {
            url: shown.to_owned(),
            step: "connecting",
            timeout_ms: limit.as_millis(),
        }),
    }
}
