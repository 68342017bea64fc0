//! Workload files (TOML): what to run — seed, pool / queue / worker
//! settings under the keys of DESIGN §11, tenants, pipeline templates (a DAG
//! of nodes) and submissions — parsed and checked before anything is
//! appended. Every error names the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::domain::scheduler::QueuePolicy;
use crate::domain::{BudgetPeriod, LearningIntensity, Micros, Params, Priority, Timestamp};

/// The largest count a workload may ask for (workers, runs, fan-out, ...).
const MAX_COUNT: i64 = 1_000_000;

/// Handlers the executor knows.
pub const HANDLERS: &[&str] = &["exec", "sim"];

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
}

impl Checker<'_> {
    fn err(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> WorkloadError {
        WorkloadError {
            file: self.file.to_owned(),
            line: line_of(self.text, span.start),
            message: message.into(),
        }
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
    pub fn load(path: &Path) -> Result<Workload, WorkloadError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| WorkloadError {
            file: file.clone(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Workload::parse(&file, &text)
    }

    /// Parses and checks a workload that uses the built-in handlers; `file`
    /// names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Workload, WorkloadError> {
        Workload::parse_for(file, text, HANDLERS)
    }

    /// Parses and checks a workload whose nodes may name any of `handlers`
    /// (the built-ins plus those a library user registers).
    pub fn parse_for(file: &str, text: &str, handlers: &[&str]) -> Result<Workload, WorkloadError> {
        let c = Checker { file, text };
        let raw: RawWorkload = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            WorkloadError {
                file: file.to_owned(),
                line,
                message: e.message().trim().to_owned(),
            }
        })?;

        if let Some(run) = &raw.run {
            if run.get_ref().is_empty() || run.get_ref().contains(['/', '#']) {
                return Err(c.err(
                    run.span(),
                    format!(
                        "run id `{}` must be non-empty without '/' or '#'",
                        run.get_ref()
                    ),
                ));
            }
        }
        let start = match &raw.start {
            Some(s) => Timestamp::parse(s.get_ref()).map_err(|e| c.err(s.span(), e))?,
            None => Timestamp::parse("2026-01-01T00:00:00Z").unwrap_or(Timestamp::EPOCH),
        };
        let pool = &raw.execution.pool;
        let max_concurrency =
            c.positive(&pool.max_concurrency, "execution.pool.max_concurrency")?;
        let threshold = *pool.backpressure_threshold.get_ref();
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(c.err(
                pool.backpressure_threshold.span(),
                format!(
                    "execution.pool.backpressure_threshold must be in (0, 1] (got {threshold})"
                ),
            ));
        }
        let queue = &raw.execution.queue;
        let queue_kind = queue.kind.get_ref().clone();
        if queue_kind != "memory" && queue_kind != "redis" {
            return Err(c.err(
                queue.kind.span(),
                format!(
                    "execution.queue.type must be \"memory\" or \"redis\" (got \"{queue_kind}\")"
                ),
            ));
        }
        let max_attempts = c.positive(&queue.max_attempts, "execution.queue.max_attempts")?;
        let workers = &raw.execution.workers;
        let num_workers = c.positive(&workers.num_workers, "execution.workers.num_workers")?;
        let timeout = *workers.worker_timeout_sec.get_ref();
        if !(timeout > 0.0 && timeout < 1e9) {
            return Err(c.err(
                workers.worker_timeout_sec.span(),
                format!("execution.workers.worker_timeout_sec must be positive (got {timeout})"),
            ));
        }

        let default_ceiling = match &raw.execution.default_cost_ceiling_micros {
            Some(ceiling) if *ceiling.get_ref() < 0 => {
                return Err(c.err(
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

        let mut tenants = Vec::new();
        let mut tenant_ids = BTreeSet::new();
        for t in &raw.tenants {
            let id = t.id.get_ref();
            // Task ids are `run/tenant/pipeline#n/node`: keep them unambiguous.
            if id.is_empty() || id.contains(['/', '#']) {
                return Err(c.err(
                    t.id.span(),
                    format!("tenant id `{id}` must be non-empty without '/' or '#'"),
                ));
            }
            if !tenant_ids.insert(id.clone()) {
                return Err(c.err(t.id.span(), format!("duplicate tenant `{id}`")));
            }
            if *t.budget_micros.get_ref() < 0 {
                return Err(c.err(
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
                max_concurrent_runs: c.positive(&t.max_concurrent_runs, "max_concurrent_runs")?,
                learning_intensity: t.learning_intensity,
                meta_learning: t.meta_learning,
                budget_period: t.budget_period,
            });
        }

        let mut pipelines = BTreeMap::new();
        for p in &raw.pipelines {
            let pid = p.id.get_ref();
            if pid.is_empty() || pid.contains('/') || pid.contains('#') {
                return Err(c.err(
                    p.id.span(),
                    format!("pipeline id `{pid}` must be non-empty without '/' or '#'"),
                ));
            }
            if pipelines.contains_key(pid) {
                return Err(c.err(p.id.span(), format!("duplicate pipeline `{pid}`")));
            }
            if p.nodes.is_empty() {
                return Err(c.err(p.id.span(), format!("pipeline `{pid}` has no nodes")));
            }
            let mut nodes = Vec::new();
            let mut node_ids = BTreeMap::new();
            for n in &p.nodes {
                let nid = n.id.get_ref();
                if nid.is_empty() || nid.contains(['/', '#', '.']) {
                    return Err(c.err(
                        n.id.span(),
                        format!("node id `{nid}` must be non-empty without '/', '#' or '.'"),
                    ));
                }
                if node_ids.insert(nid.clone(), n.id.span()).is_some() {
                    return Err(c.err(
                        n.id.span(),
                        format!("duplicate node `{nid}` in pipeline `{pid}`"),
                    ));
                }
                if !handlers.contains(&n.handler.get_ref().as_str()) {
                    return Err(c.err(
                        n.handler.span(),
                        format!(
                            "unknown handler `{}` (known: {})",
                            n.handler.get_ref(),
                            handlers.join(", ")
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
                        return Err(c.err(n.id.span(), format!("node `{nid}`: handler exec needs params.argv = [\"program\", \"arg\", ...]")));
                    }
                }
                if let Some(params) = &n.params {
                    if let Err(e) = crate::domain::learning::check_offer(&json_of(params)) {
                        return Err(c.err(n.id.span(), format!("node `{nid}`: {e}")));
                    }
                }
                match &n.cost_ceiling_micros {
                    Some(ceiling) if *ceiling.get_ref() < 0 => {
                        return Err(
                            c.err(ceiling.span(), "cost_ceiling_micros must not be negative")
                        );
                    }
                    // Every node is governed: without a cost model, its
                    // ceiling is declared, here or as the default.
                    None if n.handler.get_ref() != "sim" && default_ceiling.is_none() => {
                        return Err(c.err(
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
                    return Err(c.err(
                        n.id.span(),
                        format!("node `{nid}` has a stage but pipeline `{pid}` is not map_reduce"),
                    ));
                }
            }
            for n in &p.nodes {
                for dep in &n.deps {
                    if !node_ids.contains_key(dep.get_ref()) {
                        return Err(c.err(
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
            if p.mode == Mode::MapReduce {
                let reduces: Vec<_> = p
                    .nodes
                    .iter()
                    .filter(|n| n.stage == Some(Stage::Reduce))
                    .collect();
                if !p.nodes.iter().any(|n| n.stage == Some(Stage::Map)) || reduces.len() != 1 {
                    return Err(c.err(p.id.span(), format!("map_reduce pipeline `{pid}` needs map nodes and exactly one reduce node")));
                }
            }
            let fan_out = if p.mode == Mode::MapReduce {
                c.positive(&p.fan_out, "fan_out")?
            } else {
                1
            };
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
            if let Some(cycle_at) = find_cycle(&nodes) {
                let span = node_ids.get(&cycle_at).cloned().unwrap_or(p.id.span());
                return Err(c.err(
                    span,
                    format!("pipeline `{pid}` has a dependency cycle through node `{cycle_at}`"),
                ));
            }
            // Parents are submitted before their children.
            let nodes = topological(nodes);
            pipelines.insert(
                pid.clone(),
                PipelineSpec {
                    id: pid.clone(),
                    mode: p.mode,
                    fan_out,
                    nodes,
                },
            );
        }

        let mut submissions = Vec::new();
        for s in &raw.submissions {
            if !tenant_ids.contains(s.tenant.get_ref()) {
                return Err(c.err(
                    s.tenant.span(),
                    format!("unknown tenant `{}`", s.tenant.get_ref()),
                ));
            }
            if !pipelines.contains_key(s.pipeline.get_ref()) {
                return Err(c.err(
                    s.pipeline.span(),
                    format!("unknown pipeline `{}`", s.pipeline.get_ref()),
                ));
            }
            if *s.interval_ms.get_ref() < 0 {
                return Err(c.err(s.interval_ms.span(), "interval_ms must not be negative"));
            }
            submissions.push(SubmissionSpec {
                tenant: s.tenant.get_ref().clone(),
                pipeline: s.pipeline.get_ref().clone(),
                runs: c.positive(&s.runs, "runs")?,
                priority: s.priority,
                interval_micros: s.interval_ms.get_ref().saturating_mul(1_000),
            });
        }

        Ok(Workload {
            seed: raw.seed,
            start,
            run: raw.run.map(Spanned::into_inner),
            max_concurrency,
            backpressure_threshold_bp: (threshold * 10_000.0).round() as u32,
            queue_kind,
            redis_url: queue.redis_url.clone(),
            max_attempts,
            policy: QueuePolicy {
                aging_records: queue.aging_records.max(1),
                retry_base_micros: queue.retry_base_ms.max(0).saturating_mul(1_000),
                retry_max_micros: queue.retry_max_ms.max(0).saturating_mul(1_000),
                jitter_bp: 5_000,
            },
            num_workers,
            worker_timeout_micros: (timeout * 1e6) as i64,
            tenants,
            pipelines,
            submissions,
            config_hash: blake3::hash(text.as_bytes()).to_hex().to_string(),
            text: text.to_owned(),
        })
    }
}

impl Workload {
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
