//! Workload files (TOML): what to run — seed, pool / queue / worker
//! settings under the keys of DESIGN §11, tenants, pipeline templates (a DAG
//! of nodes) and submissions — parsed and checked before anything is
//! appended. Every error names the file and line. A workload loaded from
//! a file has the relative file names of its `exec` argvs resolved against
//! the file's directory.
//!
//! The checks cover every limit of `domain::limits` a run of the workload
//! could reach: the file's size, ids, each node's params (size, and its
//! handler's schema), the tasks it expands to, the ids, params and
//! `task_submitted` events of the expansion ([`Workload::check_run`]), and
//! every time its schedule can reach; so a checked workload never makes an
//! executor write what the ledger refuses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::domain::limits::{
    self, EVENT_BYTES_MAX, ID_BYTES_MAX, PARAMS_BYTES_MAX, TIME_MICROS_MAX, TIMEOUT_MS_MIN,
    WORKLOAD_FILE_BYTES_MAX, WORKLOAD_TASKS_MAX,
};
use crate::domain::scheduler::QueuePolicy;
use crate::domain::{
    BudgetPeriod, LearningIntensity, Micros, ParamError, Params, Priority, Timestamp,
};

/// The largest count a workload may ask for (workers, runs, fan-out, ...).
const MAX_COUNT: i64 = 1_000_000;

/// Handlers the executor knows.
pub const HANDLERS: &[&str] = &["exec", "sim"];

/// The longest run id a run gets by default (`run-<seed>`): what the
/// checker assumes when the workload names no `run`.
const DEFAULT_RUN_ID_MAX: &str = "run-18446744073709551615";

/// What the checker knows of the handlers a workload may name: their
/// names, and each one's params schema.
pub trait HandlerSchemas {
    fn names(&self) -> Vec<&str>;
    fn check_params(&self, handler: &str, params: &serde_json::Value) -> Result<(), ParamError>;
}

/// Names alone: the built-in `sim` checks its params with its schema, any
/// other handler accepts any params (a registry of handlers, which knows
/// each one's schema, is a `runtime::handler::Handlers`).
impl HandlerSchemas for [&str] {
    fn names(&self) -> Vec<&str> {
        self.to_vec()
    }

    fn check_params(&self, handler: &str, params: &serde_json::Value) -> Result<(), ParamError> {
        match handler {
            "sim" => crate::domain::sim::check_params(params),
            _ => Ok(()),
        }
    }
}

impl<const N: usize> HandlerSchemas for [&str; N] {
    fn names(&self) -> Vec<&str> {
        self.as_slice().names()
    }

    fn check_params(&self, handler: &str, params: &serde_json::Value) -> Result<(), ParamError> {
        self.as_slice().check_params(handler, params)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct WorkloadError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    #[serde(default)]
    seed: u64,
    /// The virtual instant the run starts at (RFC 3339).
    #[serde(default)]
    start: Option<Spanned<String>>,
    #[serde(default)]
    run: Option<Spanned<String>>,
    #[serde(default)]
    execution: RawExecution,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    #[serde(default)]
    pipelines: Vec<RawPipeline>,
    #[serde(default)]
    submissions: Vec<RawSubmission>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecution {
    /// The cost ceiling of a node that declares none and whose handler
    /// has no cost model (every handler but `sim`).
    #[serde(default)]
    default_cost_ceiling_micros: Option<Spanned<i64>>,
    #[serde(default)]
    pool: RawPool,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    workers: RawWorkers,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(default = "default_max_concurrency")]
    max_concurrency: Spanned<i64>,
    #[serde(default = "default_threshold")]
    backpressure_threshold: Spanned<f64>,
}

fn default_max_concurrency() -> Spanned<i64> {
    Spanned::new(0..0, 8)
}

fn default_threshold() -> Spanned<f64> {
    Spanned::new(0..0, 0.8)
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            max_concurrency: default_max_concurrency(),
            backpressure_threshold: default_threshold(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    #[serde(default = "default_queue_type", rename = "type")]
    kind: Spanned<String>,
    #[serde(default)]
    redis_url: Option<String>,
    #[serde(default = "default_max_attempts")]
    max_attempts: Spanned<i64>,
    #[serde(default = "default_retry_base_ms")]
    retry_base_ms: i64,
    #[serde(default = "default_retry_max_ms")]
    retry_max_ms: i64,
    #[serde(default = "default_aging_records")]
    aging_records: u64,
}

fn default_queue_type() -> Spanned<String> {
    Spanned::new(0..0, "memory".to_owned())
}
fn default_max_attempts() -> Spanned<i64> {
    Spanned::new(0..0, 3)
}
fn default_retry_base_ms() -> i64 {
    200
}
fn default_retry_max_ms() -> i64 {
    30_000
}
fn default_aging_records() -> u64 {
    2_000
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            kind: default_queue_type(),
            redis_url: None,
            max_attempts: default_max_attempts(),
            retry_base_ms: default_retry_base_ms(),
            retry_max_ms: default_retry_max_ms(),
            aging_records: default_aging_records(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkers {
    #[serde(default = "default_num_workers")]
    num_workers: Spanned<i64>,
    #[serde(default = "default_timeout")]
    worker_timeout_sec: Spanned<f64>,
}

fn default_num_workers() -> Spanned<i64> {
    Spanned::new(0..0, 8)
}
fn default_timeout() -> Spanned<f64> {
    Spanned::new(0..0, 30.0)
}

impl Default for RawWorkers {
    fn default() -> Self {
        RawWorkers {
            num_workers: default_num_workers(),
            worker_timeout_sec: default_timeout(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: Spanned<String>,
    budget_micros: Spanned<i64>,
    #[serde(default = "default_runs")]
    max_concurrent_runs: Spanned<i64>,
    #[serde(default)]
    learning_intensity: LearningIntensity,
    #[serde(default)]
    meta_learning: bool,
    #[serde(default)]
    budget_period: BudgetPeriod,
}

fn default_runs() -> Spanned<i64> {
    Spanned::new(0..0, 4)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Serial,
    Parallel,
    MapReduce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Map,
    Reduce,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    id: Spanned<String>,
    #[serde(default = "default_mode")]
    mode: Mode,
    /// Map-reduce: how many instances of each map node run in parallel.
    #[serde(default = "default_fan_out")]
    fan_out: Spanned<i64>,
    nodes: Vec<RawNode>,
}

fn default_mode() -> Mode {
    Mode::Parallel
}
fn default_fan_out() -> Spanned<i64> {
    Spanned::new(0..0, 4)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Spanned<String>,
    #[serde(default = "default_handler")]
    handler: Spanned<String>,
    #[serde(default)]
    params: Option<toml::Value>,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    deps: Vec<Spanned<String>>,
    #[serde(default)]
    cost_ceiling_micros: Option<Spanned<i64>>,
    #[serde(default)]
    stage: Option<Stage>,
}

fn default_handler() -> Spanned<String> {
    Spanned::new(0..0, "sim".to_owned())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubmission {
    tenant: Spanned<String>,
    pipeline: Spanned<String>,
    #[serde(default = "default_one")]
    runs: Spanned<i64>,
    #[serde(default)]
    priority: Priority,
    /// Virtual milliseconds between two runs' arrivals.
    #[serde(default = "default_zero")]
    interval_ms: Spanned<i64>,
}

fn default_zero() -> Spanned<i64> {
    Spanned::new(0..0, 0)
}

fn default_one() -> Spanned<i64> {
    Spanned::new(0..0, 1)
}

/// A checked workload.
#[derive(Debug, Clone)]
pub struct Workload {
    pub seed: u64,
    pub start: Timestamp,
    pub run: Option<String>,
    pub max_concurrency: u32,
    /// Backpressure engages when running tasks exceed this share of
    /// `max_concurrency` (basis points).
    pub backpressure_threshold_bp: u32,
    pub queue_kind: String,
    pub redis_url: Option<String>,
    pub max_attempts: u32,
    pub policy: QueuePolicy,
    pub num_workers: u32,
    pub worker_timeout_micros: i64,
    pub tenants: Vec<TenantSpec>,
    pub pipelines: BTreeMap<String, PipelineSpec>,
    pub submissions: Vec<SubmissionSpec>,
    /// blake3 of the file's text, recorded in `run_started`.
    pub config_hash: String,
    /// The file's text, recorded in `workload_recorded`.
    pub text: String,
    /// Where errors of [`Workload::check_run`] point.
    file: String,
    run_line: usize,
    submission_lines: Vec<usize>,
}

/// Which of `shards` coordinators runs `tenant`: the first 8 bytes of
/// blake3 of its id, little-endian, modulo `shards` — the same on every
/// machine and in every version (a **contract**: a tenant's ledger lives
/// on its shard).
pub fn shard_of(tenant: &str, shards: u32) -> u32 {
    let hash = blake3::hash(tenant.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(first) % u64::from(shards.max(1))) as u32
}

impl Workload {
    /// The id of a run of this workload with `seed` when none is given:
    /// the workload's `run`, else `run-<seed>`.
    pub fn default_run_id(&self, seed: u64) -> String {
        self.run.clone().unwrap_or_else(|| format!("run-{seed}"))
    }

    /// The part of the workload shard `index` of `shards` runs: its
    /// tenants and their submissions.
    pub fn shard(&self, index: u32, shards: u32) -> Workload {
        let mine = |tenant: &str| shard_of(tenant, shards) == index;
        let mut part = self.clone();
        part.tenants.retain(|t| mine(&t.id));
        part.submissions.retain(|s| mine(&s.tenant));
        part
    }
}

#[derive(Debug, Clone)]
pub struct TenantSpec {
    pub id: String,
    pub budget_micros: Micros,
    pub max_concurrent_runs: u32,
    pub learning_intensity: LearningIntensity,
    pub meta_learning: bool,
    pub budget_period: BudgetPeriod,
}

#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub id: String,
    pub mode: Mode,
    pub fan_out: u32,
    pub nodes: Vec<NodeSpec>,
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: String,
    pub handler: String,
    pub params: Params,
    pub optional: bool,
    pub priority: Option<Priority>,
    pub deps: Vec<String>,
    /// The most one attempt may cost: the node's own, else the workload's
    /// `default_cost_ceiling_micros` (0 for a `sim` node without one: its
    /// cost model gives it at submission).
    pub cost_ceiling_micros: Micros,
    pub stage: Option<Stage>,
}

#[derive(Debug, Clone)]
pub struct SubmissionSpec {
    pub tenant: String,
    pub pipeline: String,
    pub runs: u32,
    pub priority: Priority,
    pub interval_micros: i64,
}

impl PipelineSpec {
    /// The tasks one run of the pipeline submits: each node once, each map
    /// node `fan_out` times.
    pub fn tasks_per_run(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| self.replicas(n))
            .fold(0, u64::saturating_add)
    }

    /// How many tasks node `n` becomes in one run.
    fn replicas(&self, n: &NodeSpec) -> u64 {
        if n.stage == Some(Stage::Map) {
            u64::from(self.fan_out)
        } else {
            1
        }
    }
}

fn too_large(file: &str, bytes: u64) -> WorkloadError {
    WorkloadError {
        file: file.to_owned(),
        line: 0,
        message: format!(
            "the workload is {bytes} bytes, over WORKLOAD_FILE_BYTES_MAX ({WORKLOAD_FILE_BYTES_MAX} bytes)"
        ),
    }
}

/// `span`, or `fallback` when the key was not written (a default's span is
/// empty).
fn known_span(
    span: std::ops::Range<usize>,
    fallback: std::ops::Range<usize>,
) -> std::ops::Range<usize> {
    if span.is_empty() { fallback } else { span }
}

/// The bound on every time a run of the workload can record, built up
/// submission by submission: time moves only to an arrival or to a timer
/// (an attempt's end or timeout, a retry), and each timer lies at most one
/// timeout or one longest retry wait after the step that set it. So no
/// record lies later than `start + last arrival + attempts × (timeout +
/// longest retry wait)`, attempts being `tasks × max_attempts`.
struct Schedule {
    start: i64,
    /// Per attempt: its timeout plus the longest retry wait after it.
    per_attempt: i128,
    max_attempts: u64,
    tasks: u64,
    last_arrival: i64,
}

impl Schedule {
    fn new(start: Timestamp, timeout_micros: i64, max_attempts: u32, policy: &QueuePolicy) -> Self {
        // The longest wait: the capped backoff with the largest jitter.
        let longest_retry =
            policy.retry_delay_micros(u32::MAX, u64::from(policy.jitter_bp.saturating_sub(1)));
        Schedule {
            start: start.as_micros(),
            per_attempt: i128::from(timeout_micros) + i128::from(longest_retry),
            max_attempts: u64::from(max_attempts),
            tasks: 0,
            last_arrival: 0,
        }
    }

    /// Counts `runs` runs of `per_run` tasks against `WORKLOAD_TASKS_MAX`
    /// (without expanding them).
    fn add_tasks(&mut self, runs: u32, per_run: u64) -> Result<(), String> {
        let total = per_run
            .checked_mul(u64::from(runs))
            .and_then(|tasks| tasks.checked_add(self.tasks))
            .filter(|total| *total <= WORKLOAD_TASKS_MAX);
        match total {
            Some(total) => {
                self.tasks = total;
                Ok(())
            }
            None => Err(format!(
                "the workload expands to more than WORKLOAD_TASKS_MAX ({WORKLOAD_TASKS_MAX}) tasks: \
                 this submission adds {runs} runs × {per_run} tasks per run to {} before it",
                self.tasks
            )),
        }
    }

    /// The interval in micros, after checking that the last of `runs`
    /// arrivals is no later than `TIME_MICROS_MAX`.
    fn add_arrivals(&mut self, interval_ms: i64, runs: u32) -> Result<i64, String> {
        if runs == 1 {
            // One run arrives at the start, whatever the interval.
            return Ok(interval_ms.saturating_mul(1_000));
        }
        let last = interval_ms
            .checked_mul(1_000)
            .and_then(|interval| Some((interval, interval.checked_mul(i64::from(runs) - 1)?)))
            .filter(|(_, last)| {
                self.start
                    .checked_add(*last)
                    .is_some_and(|at| at <= TIME_MICROS_MAX)
            });
        match last {
            Some((interval, last)) => {
                self.last_arrival = self.last_arrival.max(last);
                Ok(interval)
            }
            None => Err(format!(
                "the last of {runs} runs every {interval_ms} ms from start {} would arrive \
                 after 9999-12-31T23:59:59.999999Z (TIME_MICROS_MAX)",
                Timestamp(self.start)
            )),
        }
    }

    /// Whether every time the schedule can reach is within the limit.
    fn check_end(&self) -> Result<(), String> {
        let attempts = i128::from(self.tasks) * i128::from(self.max_attempts);
        let end = i128::from(self.start)
            + i128::from(self.last_arrival)
            + attempts.saturating_mul(self.per_attempt);
        if end <= i128::from(TIME_MICROS_MAX) {
            return Ok(());
        }
        Err(format!(
            "the run could record times after 9999-12-31T23:59:59.999999Z (TIME_MICROS_MAX): \
             start {} + last arrival {} ms + {} tasks × max_attempts {} × ({} ms, the timeout \
             plus the longest retry wait); lower them",
            Timestamp(self.start),
            self.last_arrival / 1_000,
            self.tasks,
            self.max_attempts,
            self.per_attempt / 1_000
        ))
    }
}

/// Digits of `n` in decimal.
fn digits(n: u64) -> u64 {
    n.checked_ilog10().map_or(1, |d| u64::from(d) + 1)
}

/// The digits of every number below `n`, summed.
fn digits_below(n: u64) -> u64 {
    let (mut total, mut from, mut width) = (0u64, 0u64, 1u64);
    while from < n {
        let to = from.saturating_mul(10).max(10).min(n);
        total = total.saturating_add((to - from).saturating_mul(width));
        from = to;
        width += 1;
    }
    total
}

/// The characters of `text` that JSON escapes (ids hold no control
/// characters, so only quotes and backslashes).
fn json_escapes(text: &str) -> u64 {
    text.bytes().filter(|b| matches!(b, b'"' | b'\\')).count() as u64
}

/// What one submission's expansion sums to for the ids of one node's
/// tasks: how many, their bytes and their JSON escapes.
#[derive(Clone, Copy, Default)]
struct IdSizes {
    count: u64,
    bytes: u64,
    escapes: u64,
}

impl IdSizes {
    fn add(self, other: IdSizes) -> IdSizes {
        IdSizes {
            count: self.count.saturating_add(other.count),
            bytes: self.bytes.saturating_add(other.bytes),
            escapes: self.escapes.saturating_add(other.escapes),
        }
    }
}

/// Why a run `run` of submission `s` of pipeline `p` would expand to a
/// task id, params or `task_submitted` event over its limit, computed from
/// the lengths alone (the largest pipeline run number, the largest map
/// shard): task ids are `run/tenant/pipeline#n/node` (`node.k` for map
/// shards), a map task's params gain its `shard`, a reduce task's its
/// `inputs` (every map task's id), and every task lists its parents.
fn expansion_error(run: &str, s: &SubmissionSpec, p: &PipelineSpec) -> Option<String> {
    let last_run = u64::from(s.runs.saturating_sub(1));
    let prefix = format!("{run}/{}/{}#{last_run}/", s.tenant, p.id);
    let prefix_len = prefix.len() as u64;
    let prefix_escapes = json_escapes(&prefix);
    let fan_out = u64::from(p.fan_out);
    let ids_of = |n: &NodeSpec| -> IdSizes {
        let name = n.id.len() as u64;
        let count = p.replicas(n);
        let suffix = if n.stage == Some(Stage::Map) {
            // `node.k` for k in 0..fan_out.
            fan_out
                .saturating_mul(name + 1)
                .saturating_add(digits_below(fan_out))
        } else {
            name
        };
        IdSizes {
            count,
            bytes: count.saturating_mul(prefix_len).saturating_add(suffix),
            escapes: count.saturating_mul(prefix_escapes + json_escapes(&n.id)),
        }
    };
    let by_id: BTreeMap<&str, &NodeSpec> = p.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    for n in &p.nodes {
        let longest = match n.stage {
            Some(Stage::Map) => format!("{prefix}{}.{}", n.id, fan_out.saturating_sub(1)),
            _ => format!("{prefix}{}", n.id),
        };
        if longest.len() > ID_BYTES_MAX {
            return Some(format!(
                "task ids of pipeline `{}` for tenant `{}` can be {} bytes (`{longest}`), \
                 over ID_BYTES_MAX ({ID_BYTES_MAX} bytes): shorten the run, tenant, pipeline or node id",
                p.id,
                s.tenant,
                longest.len()
            ));
        }
        let deps = n
            .deps
            .iter()
            .filter_map(|d| by_id.get(d.as_str()))
            .map(|d| ids_of(d))
            .fold(IdSizes::default(), IdSizes::add);
        // Params as the expansion writes them (a staged node's are a table).
        let declared = n.params.as_json().len() as u64;
        let declared_table = if n.params.to_value().is_object() {
            declared
        } else {
            2
        };
        let params = match n.stage {
            // `,"shard":k`
            Some(Stage::Map) => declared_table + 9 + digits(fan_out.saturating_sub(1)),
            // `,"inputs":["id",...]`: every parent's ids as JSON strings.
            Some(Stage::Reduce) => declared_table
                .saturating_add(12)
                .saturating_add(deps.bytes)
                .saturating_add(deps.escapes)
                .saturating_add(deps.count.saturating_mul(3)),
            None => declared,
        };
        if params > PARAMS_BYTES_MAX as u64 {
            return Some(format!(
                "node `{}` of pipeline `{}`: its params with the inputs the expansion adds \
                 (the ids of its {} parent tasks) can be {params} bytes, over PARAMS_BYTES_MAX \
                 ({PARAMS_BYTES_MAX} bytes): lower fan_out or shorten the ids",
                n.id, p.id, deps.count
            ));
        }
        // The event: its params, its parents (each id with its length),
        // four more ids at most, its handler and a few fixed-size fields.
        let event = params
            .saturating_add(deps.bytes)
            .saturating_add(deps.count.saturating_mul(3))
            .saturating_add(4 * (ID_BYTES_MAX as u64 + 3))
            .saturating_add(n.handler.len() as u64 + 64);
        if event > EVENT_BYTES_MAX as u64 {
            return Some(format!(
                "node `{}` of pipeline `{}`: its task_submitted event, which lists its {} parent \
                 tasks, can be {event} bytes, over EVENT_BYTES_MAX ({EVENT_BYTES_MAX} bytes): \
                 lower fan_out or shorten the ids",
                n.id, p.id, deps.count
            ));
        }
    }
    None
}

/// Line number (1-based) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    /// Whether the limits and params schemas are checked.
    strict: bool,
}

impl Checker<'_> {
    fn err(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> WorkloadError {
        WorkloadError {
            file: self.file.to_owned(),
            line: line_of(self.text, span.start),
            message: message.into(),
        }
    }

    /// A limit's rejection as an error at `span`.
    fn limit(
        &self,
        span: std::ops::Range<usize>,
        checked: Result<(), crate::domain::Rejection>,
    ) -> Result<(), WorkloadError> {
        if !self.strict {
            return Ok(());
        }
        checked.map_err(|rejection| self.err(span, rejection.to_string()))
    }

    fn positive(&self, value: &Spanned<i64>, what: &str) -> Result<u32, WorkloadError> {
        let v = *value.get_ref();
        if v <= 0 || v > MAX_COUNT {
            return Err(self.err(
                value.span(),
                format!("{what} must be an integer from 1 to {MAX_COUNT} (got {v})"),
            ));
        }
        Ok(v as u32)
    }
}

/// The `argv` of `exec` params, if any.
fn argv_of(params: &Params) -> Option<Vec<serde_json::Value>> {
    match params.to_value().get("argv") {
        Some(serde_json::Value::Array(argv)) => Some(argv.clone()),
        _ => None,
    }
}

/// The path to resolve against the workload's directory when `arg`, at
/// `index` in an `exec` argv, names a file relative to it: the program
/// when it holds a `/`, another element when it starts with `./` or
/// `../` (`./` dropped).
fn relative_arg(index: usize, arg: &str) -> Option<&str> {
    let relative = !arg.starts_with('/')
        && if index == 0 {
            arg.contains('/')
        } else {
            arg.starts_with("./") || arg.starts_with("../")
        };
    relative.then(|| arg.strip_prefix("./").unwrap_or(arg))
}

/// `params` with the relative paths of its argv resolved against `dir`;
/// `None` when it has no argv.
fn resolved_argv(params: &Params, dir: &Path) -> Option<Params> {
    let mut value = params.to_value();
    let argv = value.get_mut("argv").and_then(|a| a.as_array_mut())?;
    for (i, arg) in argv.iter_mut().enumerate() {
        let Some(rel) = arg.as_str().and_then(|a| relative_arg(i, a)) else {
            continue;
        };
        *arg = serde_json::Value::String(dir.join(rel).display().to_string());
    }
    Some(Params::from_value(&value))
}

/// The directory that `recorded`, the params of an `exec` node as the
/// workload file has them, were resolved against to give `submitted`, the
/// params of one of its tasks (what [`Workload::load`] did when the run
/// started); `None` when its argv holds no relative path or `submitted` is
/// not `recorded` resolved against any directory.
pub fn exec_dir_of(recorded: &Params, submitted: &Params) -> Option<std::path::PathBuf> {
    let (argv, argv_submitted) = (argv_of(recorded)?, argv_of(submitted)?);
    let dir = argv
        .iter()
        .zip(&argv_submitted)
        .enumerate()
        .find_map(|(i, (arg, got))| {
            let rel = relative_arg(i, arg.as_str()?)?;
            let dir = got.as_str()?.strip_suffix(rel)?;
            // `dir.join(rel)`: the directory, a `/`, then `rel`.
            match dir.strip_suffix('/') {
                Some("") => Some(std::path::PathBuf::from("/")),
                Some(dir) => Some(std::path::PathBuf::from(dir)),
                None => None,
            }
        })?;
    (resolved_argv(recorded, &dir).as_ref() == Some(submitted)).then_some(dir)
}

fn json_of(value: &toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(json_of).collect()),
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), json_of(v))).collect())
        }
    }
}

impl Workload {
    /// Reads and checks a workload file; a file over
    /// `WORKLOAD_FILE_BYTES_MAX` is refused before it is read whole.
    pub fn load(path: &Path) -> Result<Workload, WorkloadError> {
        use std::io::Read;
        let file = path.display().to_string();
        let cannot_read = |e: std::io::Error| WorkloadError {
            file: file.clone(),
            line: 0,
            message: format!("cannot read: {e}"),
        };
        let handle = std::fs::File::open(path).map_err(cannot_read)?;
        let size = handle.metadata().map_err(cannot_read)?.len();
        if size > WORKLOAD_FILE_BYTES_MAX as u64 {
            return Err(too_large(&file, size));
        }
        // Bounded even when the size lied (a pipe, a file still growing).
        let mut text = String::new();
        handle
            .take(WORKLOAD_FILE_BYTES_MAX as u64 + 1)
            .read_to_string(&mut text)
            .map_err(cannot_read)?;
        let mut workload = Workload::parse(&file, &text)?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let dir = std::fs::canonicalize(dir).map_err(|e| WorkloadError {
            file,
            line: 0,
            message: format!("cannot resolve its directory: {e}"),
        })?;
        workload.resolve_exec_paths(&dir);
        Ok(workload)
    }

    /// Makes the file names in `exec` argvs that are relative to the
    /// workload absolute against `dir`, its directory: the program
    /// (`argv[0]`) when it holds a `/` (`./step.sh`, `scripts/x.py`; a bare
    /// name is looked up in `PATH`), and any other element that starts
    /// with `./` or `../` (`["python3", "./x.py"]`). Other arguments are
    /// passed as written. The submitted params — in the ledger and in
    /// Redis envelopes — carry the absolute paths.
    pub fn resolve_exec_paths(&mut self, dir: &Path) {
        for node in self.pipelines.values_mut().flat_map(|p| &mut p.nodes) {
            if node.handler != "exec" {
                continue;
            }
            if let Some(resolved) = resolved_argv(&node.params, dir) {
                node.params = resolved;
            }
        }
    }

    /// Whether an `exec` argv names a file relative to the workload's
    /// directory (what [`Workload::resolve_exec_paths`] resolves).
    pub fn has_relative_exec_paths(&self) -> bool {
        self.pipelines
            .values()
            .flat_map(|p| &p.nodes)
            .filter(|node| node.handler == "exec")
            .filter_map(|node| argv_of(&node.params))
            .any(|argv| {
                argv.iter()
                    .enumerate()
                    .any(|(i, arg)| arg.as_str().and_then(|a| relative_arg(i, a)).is_some())
            })
    }

    /// Parses and checks a workload that uses the built-in handlers; `file`
    /// names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Workload, WorkloadError> {
        Workload::parse_for(file, text, HANDLERS)
    }

    /// Parses and checks a workload whose nodes may name any of `handlers`
    /// (the built-ins plus those a library user registers).
    pub fn parse_for(
        file: &str,
        text: &str,
        handlers: &(impl HandlerSchemas + ?Sized),
    ) -> Result<Workload, WorkloadError> {
        Workload::parse_with(file, text, handlers, true)
    }

    /// Parses a workload a run recorded, to read what it ran with (`replay
    /// --check` takes its queue policy): the checks of its shape stay, the
    /// limits and params schemas are skipped, so a run recorded before a
    /// limit or a schema existed is still read. Never run what this returns.
    pub fn parse_recorded(file: &str, text: &str) -> Result<Workload, WorkloadError> {
        Workload::parse_with(file, text, HANDLERS, false)
    }

    fn parse_with(
        file: &str,
        text: &str,
        handlers: &(impl HandlerSchemas + ?Sized),
        strict: bool,
    ) -> Result<Workload, WorkloadError> {
        if strict && text.len() > WORKLOAD_FILE_BYTES_MAX {
            return Err(too_large(file, text.len() as u64));
        }
        let c = Checker { file, text, strict };
        let raw: RawWorkload = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            WorkloadError {
                file: file.to_owned(),
                line,
                message: e.message().trim().to_owned(),
            }
        })?;
        if let Some(run) = &raw.run {
            c.run_id(run)?;
        }
        let start = c.start(raw.start.as_ref())?;
        let execution = c.execution(&raw.execution)?;
        let (tenants, tenant_ids) = c.tenants(&raw.tenants)?;
        let mut pipelines = BTreeMap::new();
        for p in &raw.pipelines {
            let pipeline = c.pipeline(p, &pipelines, handlers, execution.default_ceiling)?;
            pipelines.insert(pipeline.id.clone(), pipeline);
        }
        let schedule = Schedule::new(
            start,
            execution.worker_timeout_micros,
            execution.max_attempts,
            &execution.policy,
        );
        let (submissions, submission_lines) =
            c.submissions(&raw.submissions, &tenant_ids, &pipelines, schedule)?;

        let run_line = raw
            .run
            .as_ref()
            .map_or(1, |r| line_of(text, r.span().start));
        let workload = Workload {
            seed: raw.seed,
            start,
            run: raw.run.map(Spanned::into_inner),
            max_concurrency: execution.max_concurrency,
            backpressure_threshold_bp: (execution.threshold * 10_000.0).round() as u32,
            queue_kind: execution.queue_kind,
            redis_url: raw.execution.queue.redis_url.clone(),
            max_attempts: execution.max_attempts,
            policy: execution.policy,
            num_workers: execution.num_workers,
            worker_timeout_micros: execution.worker_timeout_micros,
            tenants,
            pipelines,
            submissions,
            config_hash: blake3::hash(text.as_bytes()).to_hex().to_string(),
            text: text.to_owned(),
            file: file.to_owned(),
            run_line,
            submission_lines,
        };
        if strict {
            workload.check_run(workload.run.as_deref().unwrap_or(DEFAULT_RUN_ID_MAX))?;
        }
        Ok(workload)
    }
}

/// What `[execution]` sets, checked.
struct Execution {
    max_concurrency: u32,
    /// The backpressure threshold, a share of `max_concurrency` in (0, 1].
    threshold: f64,
    queue_kind: String,
    max_attempts: u32,
    num_workers: u32,
    worker_timeout_micros: i64,
    policy: QueuePolicy,
    /// The ceiling of a node that declares none and has no cost model.
    default_ceiling: Option<Micros>,
}

/// The checks of a workload's parts, each in the order the file is read:
/// the first error found is the one reported.
impl Checker<'_> {
    /// The `run` id: usable in task ids, within the id limits.
    fn run_id(&self, run: &Spanned<String>) -> Result<(), WorkloadError> {
        if run.get_ref().is_empty() || run.get_ref().contains(['/', '#']) {
            return Err(self.err(
                run.span(),
                format!(
                    "run id `{}` must be non-empty without '/' or '#'",
                    run.get_ref()
                ),
            ));
        }
        self.limit(run.span(), limits::check_id("run", run.get_ref()))
    }

    /// The `start` instant (RFC 3339, within the time limits), or the default.
    fn start(&self, start: Option<&Spanned<String>>) -> Result<Timestamp, WorkloadError> {
        Ok(match start {
            Some(s) => {
                let start = Timestamp::parse(s.get_ref()).map_err(|e| self.err(s.span(), e))?;
                self.limit(s.span(), limits::check_time("start", start))?;
                start
            }
            None => Timestamp::parse("2026-01-01T00:00:00Z").unwrap_or(Timestamp::EPOCH),
        })
    }

    /// `[execution]`: the pool, the queue, the workers and the default
    /// cost ceiling.
    fn execution(&self, execution: &RawExecution) -> Result<Execution, WorkloadError> {
        let pool = &execution.pool;
        let max_concurrency =
            self.positive(&pool.max_concurrency, "execution.pool.max_concurrency")?;
        let threshold = *pool.backpressure_threshold.get_ref();
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(self.err(
                pool.backpressure_threshold.span(),
                format!(
                    "execution.pool.backpressure_threshold must be in (0, 1] (got {threshold})"
                ),
            ));
        }
        let queue = &execution.queue;
        let queue_kind = queue.kind.get_ref().clone();
        if queue_kind != "memory" && queue_kind != "redis" {
            return Err(self.err(
                queue.kind.span(),
                format!(
                    "execution.queue.type must be \"memory\" or \"redis\" (got \"{queue_kind}\")"
                ),
            ));
        }
        let max_attempts = self.positive(&queue.max_attempts, "execution.queue.max_attempts")?;
        let workers = &execution.workers;
        let num_workers = self.positive(&workers.num_workers, "execution.workers.num_workers")?;
        let worker_timeout_micros = self.worker_timeout(&workers.worker_timeout_sec)?;
        let policy = QueuePolicy {
            aging_records: queue.aging_records.max(1),
            retry_base_micros: queue.retry_base_ms.max(0).saturating_mul(1_000),
            retry_max_micros: queue.retry_max_ms.max(0).saturating_mul(1_000),
            jitter_bp: 5_000,
        };
        let default_ceiling = match &execution.default_cost_ceiling_micros {
            Some(ceiling) if *ceiling.get_ref() < 0 => {
                return Err(self.err(
                    ceiling.span(),
                    format!(
                        "execution.default_cost_ceiling_micros must not be negative (got {})",
                        ceiling.get_ref()
                    ),
                ));
            }
            Some(ceiling) => Some(Micros(*ceiling.get_ref())),
            None => None,
        };
        Ok(Execution {
            max_concurrency,
            threshold,
            queue_kind,
            max_attempts,
            num_workers,
            worker_timeout_micros,
            policy,
            default_ceiling,
        })
    }

    /// `execution.workers.worker_timeout_sec`, in micros: at least
    /// `TIMEOUT_MS_MIN` (strict) or above 0, and below 1e9 seconds.
    fn worker_timeout(&self, timeout_sec: &Spanned<f64>) -> Result<i64, WorkloadError> {
        let timeout = *timeout_sec.get_ref();
        // Below 1 ms a timeout would be recorded as 0 ms: every attempt
        // would time out at once.
        let timeout_min = TIMEOUT_MS_MIN as f64 / 1_000.0;
        let too_short = if self.strict {
            timeout < timeout_min
        } else {
            timeout <= 0.0
        };
        if too_short || timeout.is_nan() || timeout >= 1e9 {
            return Err(self.err(
                timeout_sec.span(),
                format!(
                    "execution.workers.worker_timeout_sec must be at least {timeout_min} \
                     (TIMEOUT_MS_MIN, {TIMEOUT_MS_MIN} ms) and below 1e9 seconds (got {timeout})"
                ),
            ));
        }
        Ok((timeout * 1e6) as i64)
    }

    /// `[[tenants]]`: ids usable in task ids and unique, budgets not
    /// negative; the specs and the set of ids.
    fn tenants(
        &self,
        raw: &[RawTenant],
    ) -> Result<(Vec<TenantSpec>, BTreeSet<String>), WorkloadError> {
        let mut tenants = Vec::new();
        let mut tenant_ids = BTreeSet::new();
        for t in raw {
            let id = t.id.get_ref();
            // Task ids are `run/tenant/pipeline#n/node`: keep them unambiguous.
            if id.is_empty() || id.contains(['/', '#']) {
                return Err(self.err(
                    t.id.span(),
                    format!("tenant id `{id}` must be non-empty without '/' or '#'"),
                ));
            }
            self.limit(t.id.span(), limits::check_id("tenants.id", id))?;
            if !tenant_ids.insert(id.clone()) {
                return Err(self.err(t.id.span(), format!("duplicate tenant `{id}`")));
            }
            if *t.budget_micros.get_ref() < 0 {
                return Err(self.err(
                    t.budget_micros.span(),
                    format!(
                        "tenant `{id}`: budget_micros must not be negative (got {})",
                        t.budget_micros.get_ref()
                    ),
                ));
            }
            tenants.push(TenantSpec {
                id: id.clone(),
                budget_micros: Micros(*t.budget_micros.get_ref()),
                max_concurrent_runs: self
                    .positive(&t.max_concurrent_runs, "max_concurrent_runs")?,
                learning_intensity: t.learning_intensity,
                meta_learning: t.meta_learning,
                budget_period: t.budget_period,
            });
        }
        Ok((tenants, tenant_ids))
    }

    /// One `[[pipelines]]` entry, against the pipelines before it: its id,
    /// its nodes, their dependencies and the map-reduce shape; then its
    /// nodes with every dependency they imply, acyclic, parents first.
    fn pipeline(
        &self,
        p: &RawPipeline,
        earlier: &BTreeMap<String, PipelineSpec>,
        handlers: &(impl HandlerSchemas + ?Sized),
        default_ceiling: Option<Micros>,
    ) -> Result<PipelineSpec, WorkloadError> {
        let pid = p.id.get_ref();
        if pid.is_empty() || pid.contains('/') || pid.contains('#') {
            return Err(self.err(
                p.id.span(),
                format!("pipeline id `{pid}` must be non-empty without '/' or '#'"),
            ));
        }
        self.limit(p.id.span(), limits::check_id("pipelines.id", pid))?;
        if earlier.contains_key(pid) {
            return Err(self.err(p.id.span(), format!("duplicate pipeline `{pid}`")));
        }
        if p.nodes.is_empty() {
            return Err(self.err(p.id.span(), format!("pipeline `{pid}` has no nodes")));
        }
        let mut node_ids = BTreeMap::new();
        for n in &p.nodes {
            self.node(n, p, &mut node_ids, handlers, default_ceiling)?;
        }
        self.deps_known(p, &node_ids)?;
        self.map_reduce_shape(p)?;
        let fan_out = if p.mode == Mode::MapReduce {
            self.positive(&p.fan_out, "fan_out")?
        } else {
            1
        };
        let nodes = node_specs(p, default_ceiling);
        if let Some(cycle_at) = find_cycle(&nodes) {
            let span = node_ids.get(&cycle_at).cloned().unwrap_or(p.id.span());
            return Err(self.err(
                span,
                format!("pipeline `{pid}` has a dependency cycle through node `{cycle_at}`"),
            ));
        }
        Ok(PipelineSpec {
            id: pid.clone(),
            mode: p.mode,
            fan_out,
            // Parents are submitted before their children.
            nodes: topological(nodes),
        })
    }

    /// One node of pipeline `p`, added to `node_ids` (the nodes before it):
    /// its id, its handler, `exec`'s argv, its params, its ceiling and its
    /// stage.
    fn node(
        &self,
        n: &RawNode,
        p: &RawPipeline,
        node_ids: &mut BTreeMap<String, std::ops::Range<usize>>,
        handlers: &(impl HandlerSchemas + ?Sized),
        default_ceiling: Option<Micros>,
    ) -> Result<(), WorkloadError> {
        let pid = p.id.get_ref();
        let nid = n.id.get_ref();
        if nid.is_empty() || nid.contains(['/', '#', '.']) {
            return Err(self.err(
                n.id.span(),
                format!("node id `{nid}` must be non-empty without '/', '#' or '.'"),
            ));
        }
        self.limit(n.id.span(), limits::check_id("nodes.id", nid))?;
        if node_ids.insert(nid.clone(), n.id.span()).is_some() {
            return Err(self.err(
                n.id.span(),
                format!("duplicate node `{nid}` in pipeline `{pid}`"),
            ));
        }
        let handler_names = handlers.names();
        if !handler_names.contains(&n.handler.get_ref().as_str()) {
            return Err(self.err(
                n.handler.span(),
                format!(
                    "unknown handler `{}` (known: {})",
                    n.handler.get_ref(),
                    handler_names.join(", ")
                ),
            ));
        }
        if n.handler.get_ref() == "exec" {
            let argv = n
                .params
                .as_ref()
                .and_then(|p| p.get("argv"))
                .and_then(|a| a.as_array());
            let ok = argv.is_some_and(|a| !a.is_empty() && a.iter().all(|v| v.is_str()));
            if !ok {
                return Err(self.err(
                    n.id.span(),
                    format!(
                        "node `{nid}`: handler exec needs params.argv = [\"program\", \"arg\", ...]"
                    ),
                ));
            }
        }
        if let Some(params) = &n.params {
            self.node_params(n, params, handlers)?;
        }
        match &n.cost_ceiling_micros {
            Some(ceiling) if *ceiling.get_ref() < 0 => {
                return Err(self.err(ceiling.span(), "cost_ceiling_micros must not be negative"));
            }
            // Every node is governed: without a cost model, its
            // ceiling is declared, here or as the default.
            None if n.handler.get_ref() != "sim" && default_ceiling.is_none() => {
                return Err(self.err(
                    n.id.span(),
                    format!(
                        "node `{nid}`: handler `{}` has no cost model, so the node needs a cost ceiling: set cost_ceiling_micros on it, or default_cost_ceiling_micros under [execution]",
                        n.handler.get_ref()
                    ),
                ));
            }
            _ => {}
        }
        if n.stage.is_some() && p.mode != Mode::MapReduce {
            return Err(self.err(
                n.id.span(),
                format!("node `{nid}` has a stage but pipeline `{pid}` is not map_reduce"),
            ));
        }
        Ok(())
    }

    /// A node's params: the learning offer's shape, the params limits and
    /// (strict) its handler's schema.
    fn node_params(
        &self,
        n: &RawNode,
        params: &toml::Value,
        handlers: &(impl HandlerSchemas + ?Sized),
    ) -> Result<(), WorkloadError> {
        let nid = n.id.get_ref();
        let json = json_of(params);
        if let Err(e) = crate::domain::learning::check_offer(&json) {
            return Err(self.err(n.id.span(), format!("node `{nid}`: {e}")));
        }
        self.limit(
            n.id.span(),
            limits::check_params("params", &Params::from_value(&json)),
        )?;
        if let Err(e) = handlers.check_params(n.handler.get_ref(), &json) {
            if self.strict {
                return Err(self.err(n.id.span(), e.to_string()));
            }
        }
        Ok(())
    }

    /// Every `deps` entry names a node of the same pipeline.
    fn deps_known(
        &self,
        p: &RawPipeline,
        node_ids: &BTreeMap<String, std::ops::Range<usize>>,
    ) -> Result<(), WorkloadError> {
        for n in &p.nodes {
            for dep in &n.deps {
                if !node_ids.contains_key(dep.get_ref()) {
                    return Err(self.err(
                        dep.span(),
                        format!(
                            "node `{}` depends on unknown node `{}`",
                            n.id.get_ref(),
                            dep.get_ref()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A map-reduce pipeline has map nodes and exactly one reduce node.
    fn map_reduce_shape(&self, p: &RawPipeline) -> Result<(), WorkloadError> {
        if p.mode != Mode::MapReduce {
            return Ok(());
        }
        let reduces: Vec<_> = p
            .nodes
            .iter()
            .filter(|n| n.stage == Some(Stage::Reduce))
            .collect();
        if !p.nodes.iter().any(|n| n.stage == Some(Stage::Map)) || reduces.len() != 1 {
            return Err(self.err(
                p.id.span(),
                format!(
                    "map_reduce pipeline `{}` needs map nodes and exactly one reduce node",
                    p.id.get_ref()
                ),
            ));
        }
        Ok(())
    }

    /// `[[submissions]]`: known tenants and pipelines, counts and intervals
    /// within the schedule's limits (strict); the specs and the line of
    /// each.
    fn submissions(
        &self,
        raw: &[RawSubmission],
        tenant_ids: &BTreeSet<String>,
        pipelines: &BTreeMap<String, PipelineSpec>,
        mut schedule: Schedule,
    ) -> Result<(Vec<SubmissionSpec>, Vec<usize>), WorkloadError> {
        let mut submissions = Vec::new();
        let mut submission_lines = Vec::new();
        for s in raw {
            if !tenant_ids.contains(s.tenant.get_ref()) {
                return Err(self.err(
                    s.tenant.span(),
                    format!("unknown tenant `{}`", s.tenant.get_ref()),
                ));
            }
            if !pipelines.contains_key(s.pipeline.get_ref()) {
                return Err(self.err(
                    s.pipeline.span(),
                    format!("unknown pipeline `{}`", s.pipeline.get_ref()),
                ));
            }
            if *s.interval_ms.get_ref() < 0 {
                return Err(self.err(s.interval_ms.span(), "interval_ms must not be negative"));
            }
            let runs = self.positive(&s.runs, "runs")?;
            let runs_span = known_span(s.runs.span(), s.pipeline.span());
            let per_run = pipelines
                .get(s.pipeline.get_ref())
                .map_or(0, PipelineSpec::tasks_per_run);
            let interval_ms = *s.interval_ms.get_ref();
            let interval_micros = if self.strict {
                schedule
                    .add_tasks(runs, per_run)
                    .map_err(|message| self.err(runs_span.clone(), message))?;
                let interval_span = known_span(s.interval_ms.span(), runs_span.clone());
                let interval_micros = schedule
                    .add_arrivals(interval_ms, runs)
                    .map_err(|message| self.err(interval_span, message))?;
                schedule
                    .check_end()
                    .map_err(|message| self.err(runs_span, message))?;
                interval_micros
            } else {
                interval_ms.saturating_mul(1_000)
            };
            submission_lines.push(line_of(self.text, s.pipeline.span().start));
            submissions.push(SubmissionSpec {
                tenant: s.tenant.get_ref().clone(),
                pipeline: s.pipeline.get_ref().clone(),
                runs,
                priority: s.priority,
                interval_micros,
            });
        }
        Ok((submissions, submission_lines))
    }
}

/// The nodes of a checked pipeline with every dependency its mode implies:
/// a serial node on the one before it, a reduce node on every map node.
fn node_specs(p: &RawPipeline, default_ceiling: Option<Micros>) -> Vec<NodeSpec> {
    let mut nodes: Vec<NodeSpec> = Vec::new();
    for n in &p.nodes {
        let mut deps: Vec<String> = n.deps.iter().map(|d| d.get_ref().clone()).collect();
        if p.mode == Mode::Serial {
            if let Some(prev) = nodes.last().map(|prev: &NodeSpec| prev.id.clone()) {
                if !deps.contains(&prev) {
                    deps.push(prev);
                }
            }
        }
        if n.stage == Some(Stage::Reduce) {
            for m in p.nodes.iter().filter(|m| m.stage == Some(Stage::Map)) {
                if !deps.contains(m.id.get_ref()) {
                    deps.push(m.id.get_ref().clone());
                }
            }
        }
        nodes.push(NodeSpec {
            id: n.id.get_ref().clone(),
            handler: n.handler.get_ref().clone(),
            params: n
                .params
                .as_ref()
                .map_or_else(Params::null, |v| Params::from_value(&json_of(v))),
            optional: n.optional,
            priority: n.priority,
            deps,
            cost_ceiling_micros: match &n.cost_ceiling_micros {
                Some(ceiling) => Micros(*ceiling.get_ref()),
                None if n.handler.get_ref() == "sim" => Micros::ZERO,
                None => default_ceiling.unwrap_or(Micros::ZERO),
            },
            stage: n.stage,
        });
    }
    nodes
}

impl Workload {
    /// Checks what a run named `run` of this workload appends against the
    /// limits: the run id, and every task id, params and `task_submitted`
    /// event the expansion makes. Parsing checks it with the workload's
    /// `run`, or the longest default run id; an executor checks again with
    /// the id it runs under, before it appends anything.
    pub fn check_run(&self, run: &str) -> Result<(), WorkloadError> {
        let error = |line, message: String| WorkloadError {
            file: self.file.clone(),
            line,
            message,
        };
        limits::check_id("run", run).map_err(|r| error(self.run_line, r.to_string()))?;
        for (i, s) in self.submissions.iter().enumerate() {
            let Some(p) = self.pipelines.get(&s.pipeline) else {
                continue;
            };
            if let Some(message) = expansion_error(run, s, p) {
                return Err(error(
                    self.submission_lines.get(i).copied().unwrap_or(1),
                    message,
                ));
            }
        }
        Ok(())
    }

    /// The tasks the workload submits (at most `WORKLOAD_TASKS_MAX`).
    pub fn total_tasks(&self) -> u64 {
        self.submissions
            .iter()
            .filter_map(|s| {
                let per_run = self.pipelines.get(&s.pipeline)?.tasks_per_run();
                Some(per_run.saturating_mul(u64::from(s.runs)))
            })
            .fold(0, u64::saturating_add)
    }

    /// Whether every node runs the `sim` handler: such a workload runs on
    /// virtual time, deterministically; any other runs in real time.
    pub fn is_simulated(&self) -> bool {
        self.pipelines
            .values()
            .flat_map(|p| &p.nodes)
            .all(|n| n.handler == "sim")
    }
}

/// The nodes with every node after its dependencies, otherwise in the order
/// written (the graph has no cycle): of the nodes whose dependencies are
/// placed, the first written goes next. Linear in nodes and edges (times a
/// log), so a pipeline of 200,000 nodes is sorted at once.
fn topological(nodes: Vec<NodeSpec>) -> Vec<NodeSpec> {
    use std::cmp::Reverse;
    let index: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    // Unplaced dependencies per node (each distinct one once), and who
    // waits for each node.
    let mut open = vec![0usize; nodes.len()];
    let mut waiting: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        let deps: BTreeSet<usize> = n
            .deps
            .iter()
            .filter_map(|d| index.get(d.as_str()).copied())
            .collect();
        open[i] = deps.len();
        for d in deps {
            waiting[d].push(i);
        }
    }
    let mut ready: std::collections::BinaryHeap<Reverse<usize>> = (0..nodes.len())
        .filter(|&i| open[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &w in &waiting[i] {
            open[w] -= 1;
            if open[w] == 0 {
                ready.push(Reverse(w));
            }
        }
    }
    drop(index);
    let mut slots: Vec<Option<NodeSpec>> = nodes.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// A node on a dependency cycle, if there is one: the first node a
/// depth-first search from each node in written order (dependencies in
/// written order) finds on its own path. Without recursion, so a chain of
/// any length cannot overflow the stack.
fn find_cycle(nodes: &[NodeSpec]) -> Option<String> {
    let index: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the path, 2 = done
    let mut mark = vec![0u8; nodes.len()];
    // (node, how many of its dependencies were looked at)
    let mut path: Vec<(usize, usize)> = Vec::new();
    for start in 0..nodes.len() {
        if mark[start] != 0 {
            continue;
        }
        mark[start] = 1;
        path.push((start, 0));
        while let Some(&mut (i, ref mut next)) = path.last_mut() {
            let Some(dep) = nodes[i].deps.get(*next) else {
                mark[i] = 2;
                path.pop();
                continue;
            };
            *next += 1;
            let Some(&j) = index.get(dep.as_str()) else {
                continue;
            };
            match mark[j] {
                1 => return Some(nodes[j].id.clone()),
                0 => {
                    mark[j] = 1;
                    path.push((j, 0));
                }
                _ => {}
            }
        }
    }
    None
}
