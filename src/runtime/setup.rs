//! What both executors do the same way before and around a run: the run's
//! options and its id (the one rule every executor and command names a run
//! by, and the suffix a taken default id gets), its report and errors, the
//! registration of the workload's tenants, the pipeline runs' arrival times
//! and the `task_submitted` events of each, and the backpressure maths.
//!
//! The simulated executor ([`super::sim`]) and the real-time one
//! ([`super::live`]) both build on it; neither imports the other.

use std::time::Instant;

use crate::domain::{Event, Micros, Params, PipelineId, RunId, State, TaskId, TenantId};
use crate::log::AppendError;
use crate::workload::{Stage, Workload};

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Overrides the workload's seed.
    pub seed: Option<u64>,
    /// The run's id (default: the workload's `run`, else `run-<seed>`).
    pub run_id: Option<String>,
    /// Stop (as if the process died) after this many steps: crash drills.
    pub stop_after_steps: Option<u64>,
    /// The deciders' thresholds (standard unless a what-if run asks for
    /// others). Not recorded: `replay --check --policy` must be given them.
    pub policy: crate::domain::Policy,
}

impl RunOptions {
    /// The run's seed and id: the options', else the workload's (the one
    /// rule every executor and command names a run by).
    pub fn seed_and_run(&self, workload: &Workload) -> (u64, RunId) {
        let seed = self.seed.unwrap_or(workload.seed);
        let run = self
            .run_id
            .clone()
            .unwrap_or_else(|| workload.default_run_id(seed));
        (seed, RunId(run))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("run `{0}` is already in the ledger (choose another with --run-id)")]
    RunExists(String),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Queue(#[from] super::queue::QueueError),
    #[error("internal error: the executor produced an impossible event: {0}")]
    Impossible(String),
    #[error("{0}")]
    Resume(String),
    #[error("stopped after {0} steps, as asked")]
    Stopped(u64),
    #[error(transparent)]
    Workload(#[from] crate::workload::WorkloadError),
}

/// What a run did, for the summary.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunReport {
    pub run: String,
    pub seed: u64,
    pub tasks: u64,
    pub acked: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    /// Optional nodes a degradation plan skipped.
    pub skipped: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub peak_running: u32,
    pub backpressure_engaged: u64,
    pub backpressure_released: u64,
    /// Cost-agent verdicts by kind (`continue`, `degrade`, `terminate`).
    pub decisions: std::collections::BTreeMap<String, u64>,
    pub virtual_elapsed_micros: i64,
    pub wall_elapsed_micros: u64,
    pub head_seq: u64,
    pub head: String,
    pub digest: String,
}

impl RunReport {
    /// The report of a finished run from its summary and the ledger's head.
    pub(crate) fn new(
        s: &crate::domain::activity::RunSummary,
        elapsed_micros: i64,
        wall: Instant,
        head: crate::log::Head,
        digest: blake3::Hash,
    ) -> Self {
        RunReport {
            run: s.run.0.clone(),
            seed: s.seed,
            tasks: s.tasks_submitted,
            acked: s.tasks_acked,
            dead_lettered: s.tasks_dead_lettered,
            cancelled: s.tasks_cancelled,
            skipped: s.tasks_skipped,
            retries: s.tasks_nacked + s.leases_expired,
            timeouts: s.tasks_timed_out,
            peak_running: s.peak_running,
            decisions: ["continue", "degrade", "terminate"]
                .into_iter()
                .zip(s.decisions)
                .map(|(kind, n)| (kind.to_owned(), n))
                .collect(),
            backpressure_engaged: s.backpressure_engaged,
            backpressure_released: s.backpressure_released,
            virtual_elapsed_micros: elapsed_micros,
            wall_elapsed_micros: u64::try_from(wall.elapsed().as_micros()).unwrap_or(u64::MAX),
            head_seq: head.seq,
            head: head.hash.to_hex().to_string(),
            digest: digest.to_hex().to_string(),
        }
    }
}

/// `Some(new)` when it differs from `old`.
fn changed<T: PartialEq + Copy>(old: &T, new: T) -> Option<T> {
    (*old != new).then_some(new)
}

/// The pipeline instance id of run `instance` of `submission`.
fn instance_id(workload: &Workload, submission: usize, instance: u32) -> String {
    let spec = &workload.submissions[submission];
    format!("{}/{}#{instance}", spec.tenant, spec.pipeline)
}

/// The task names of `node`: one per map copy, else its id.
fn replicas(
    pipeline: &crate::workload::PipelineSpec,
    node: &crate::workload::NodeSpec,
) -> Vec<String> {
    if node.stage == Some(Stage::Map) {
        (0..pipeline.fan_out)
            .map(|k| format!("{}.{k}", node.id))
            .collect()
    } else {
        vec![node.id.clone()]
    }
}

/// The `task_submitted` events of pipeline run `instance` of `submission`.
pub(crate) fn instance_events(
    workload: &Workload,
    run: &RunId,
    submission: usize,
    instance: u32,
) -> Vec<Event> {
    let spec = &workload.submissions[submission];
    let Some(pipeline) = workload.pipelines.get(&spec.pipeline) else {
        return Vec::new();
    };
    let instance_id = instance_id(workload, submission, instance);
    let task_id = |node: &str| TaskId(format!("{run}/{instance_id}/{node}"));
    let replicas = |node: &crate::workload::NodeSpec| replicas(pipeline, node);
    let by_id: std::collections::BTreeMap<&str, &crate::workload::NodeSpec> =
        pipeline.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let mut events = Vec::with_capacity(pipeline.nodes.len());
    for node in &pipeline.nodes {
        let deps: Vec<TaskId> = node
            .deps
            .iter()
            .filter_map(|d| by_id.get(d.as_str()))
            .flat_map(|d| replicas(d))
            .map(|r| task_id(&r))
            .collect();
        for (k, name) in replicas(node).into_iter().enumerate() {
            let mut params = node.params.to_value();
            if node.stage.is_some() {
                let extra = if node.stage == Some(Stage::Map) {
                    ("shard", serde_json::Value::from(k))
                } else {
                    (
                        "inputs",
                        serde_json::Value::from(
                            deps.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
                        ),
                    )
                };
                if !params.is_object() {
                    params = serde_json::json!({});
                }
                params[extra.0] = extra.1;
            }
            events.push(Event::TaskSubmitted {
                run: run.clone(),
                task: task_id(&name),
                tenant: TenantId(spec.tenant.clone()),
                priority: node.priority.unwrap_or(spec.priority),
                deps: deps.clone(),
                pipeline: Some(PipelineId(instance_id.clone())),
                cost_ceiling_micros: ceiling_of(node, &params),
                handler: node.handler.clone(),
                params: Params::from_value(&params),
                max_attempts: workload.max_attempts,
                optional: node.optional,
            });
        }
    }
    events
}

/// A node's cost ceiling: the declared one (or the workload's default),
/// else for `sim` the most the step can cost; 0 for a node declared free.
fn ceiling_of(node: &crate::workload::NodeSpec, params: &serde_json::Value) -> Micros {
    if node.cost_ceiling_micros > Micros::ZERO {
        return node.cost_ceiling_micros;
    }
    if node.handler == "sim" {
        return crate::domain::cost::cost_ceiling(&Params::from_value(params));
    }
    Micros::ZERO
}

/// Whether pipeline run `instance` of `submission` is already in `state`.
pub(crate) fn instance_submitted(
    state: &State,
    workload: &Workload,
    run: &RunId,
    submission: usize,
    instance: u32,
) -> bool {
    // Its first task (an instance is submitted whole, in one step).
    let Some(pipeline) = workload
        .pipelines
        .get(&workload.submissions[submission].pipeline)
    else {
        return false;
    };
    let Some(first) = pipeline
        .nodes
        .first()
        .and_then(|n| replicas(pipeline, n).into_iter().next())
    else {
        return false;
    };
    let instance_id = instance_id(workload, submission, instance);
    let task = TaskId(format!("{run}/{instance_id}/{first}"));
    state.queue.get(&task).is_some()
}

/// Registers the workload's tenants, or updates the ones the ledger knows
/// when their settings changed.
pub(crate) fn registration_events(state: &State, workload: &Workload) -> Vec<Event> {
    let mut out = Vec::new();
    for t in &workload.tenants {
        let tenant = TenantId(t.id.clone());
        let event = match state.tenants.get(&tenant) {
            None => Some(Event::TenantRegistered {
                tenant,
                budget_micros: t.budget_micros,
                max_concurrent_runs: t.max_concurrent_runs,
                learning_intensity: t.learning_intensity,
                meta_learning: t.meta_learning,
                budget_period: t.budget_period,
            }),
            Some(known) => {
                let update = Event::TenantUpdated {
                    tenant,
                    budget_micros: changed(&known.budget_micros, t.budget_micros),
                    max_concurrent_runs: changed(&known.max_concurrent_runs, t.max_concurrent_runs),
                    learning_intensity: changed(&known.learning_intensity, t.learning_intensity),
                    meta_learning: changed(&known.meta_learning, t.meta_learning),
                    budget_period: changed(&known.budget_period, t.budget_period),
                };
                let unchanged = matches!(
                    &update,
                    Event::TenantUpdated {
                        budget_micros: None,
                        max_concurrent_runs: None,
                        learning_intensity: None,
                        meta_learning: None,
                        budget_period: None,
                        ..
                    }
                );
                (!unchanged).then_some(update)
            }
        };
        out.extend(event);
    }
    out
}

/// The arrival times of every pipeline run: `(time, submission, instance)`.
pub(crate) fn arrivals(workload: &Workload) -> Vec<(i64, usize, u32)> {
    let mut arrivals = Vec::new();
    for (i, s) in workload.submissions.iter().enumerate() {
        for n in 0..s.runs {
            arrivals.push((
                workload
                    .start
                    .0
                    .saturating_add(s.interval_micros.saturating_mul(i64::from(n))),
                i,
                n,
            ));
        }
    }
    arrivals.sort_unstable();
    arrivals
}

pub(crate) fn total_tasks(workload: &Workload) -> u64 {
    workload.total_tasks()
}

/// Whether `running` attempts put a pool of `max_concurrency` over its
/// backpressure threshold (`threshold_bp` of it): backpressure engages
/// above it and releases at or below it.
pub(crate) fn over_threshold(running: u32, threshold_bp: u32, max_concurrency: u32) -> bool {
    u64::from(running) * 10_000 > u64::from(threshold_bp) * u64::from(max_concurrency)
}

/// The threshold as a count of running attempts, as the backpressure
/// events record it.
pub(crate) fn threshold_count(threshold_bp: u32, max_concurrency: u32) -> u32 {
    (u64::from(threshold_bp) * u64::from(max_concurrency) / 10_000) as u32
}
