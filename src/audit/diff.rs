//! `runledger diff`: two runs of the same workload side by side — the first
//! event where they part, and a summary of what differs (tasks, money per
//! tenant, governance decisions, the tasks whose cost moved most) — for
//! "why did yesterday's run cost more than today's".
//!
//! [`compare`] is pure: it takes the decoded records of each run and never
//! touches the disk, so alignment and field diffs are tested without a
//! ledger. [`load_run`] is the thin loader: the run's records through the
//! by-run index, the tenant-scoped events without a run or task (budget
//! status changes, learning adjustments, period resets, untasked costs and
//! denials) recorded while the run was open through the by-tenant index,
//! and each tenant's registered configuration as of the run's last record.
//! Nothing here appends, and nothing in the output depends on hash-map
//! order: every list is sorted.
//!
//! Alignment: the events of each run, in seq order, are compared position
//! by position after normalising run-scoped ids — the run id becomes
//! `<run>` and the run prefix is cut from task ids
//! (`demo-42/acme/rag#0/retrieve` → `acme/rag#0/retrieve`), also inside
//! free text such as reasons — so two runs of one workload under different
//! run ids line up. Seq and hash are ignored; the event and its
//! `recorded_at` are compared.
//!
//! ```
//! use runledger::audit::diff::{compare, RunInput};
//! use runledger::domain::{Event, RunId, Timestamp};
//! use runledger::log::store::DecodedRecord;
//!
//! let record = |seq, run: &str| DecodedRecord {
//!     seq,
//!     frame_seq: seq,
//!     recorded_at: Timestamp(0),
//!     hash: blake3::hash(b""),
//!     event: Event::RunStarted { run: RunId::new(run), seed: 7, config_hash: String::new() },
//! };
//! let a = RunInput::new(RunId::new("a"), vec![record(1, "a")]);
//! let b = RunInput::new(RunId::new("b"), vec![record(9, "b")]);
//! assert!(compare(&a, &b).identical);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use serde::Serialize;
use serde_json::Value;

use crate::domain::{
    BudgetPeriod, Category, Decision, Event, LearningIntensity, RunId, TaskId, TenantId, Timestamp,
};
use crate::log::record::RawRecord;
use crate::log::store::{DecodedRecord, IndexKind, Store, decode_record};
use crate::log::{ChainBreak, WalkError};

/// Field differences listed for the first divergence, at most.
pub const FIELDS_MAX: usize = 64;
/// Tasks listed (per side) as present in one run only, at most; the counts
/// are always complete.
pub const ONLY_LISTED_MAX: usize = 100;
/// Tasks listed by cost delta.
pub const TOP_TASKS_MAX: usize = 10;

/// What the placeholder for the run id reads in normalised events.
const RUN_PLACEHOLDER: &str = "<run>";

/// One run, as read from a ledger: the records to align and the tenants'
/// configuration.
#[derive(Clone, Debug)]
pub struct RunInput {
    pub run: RunId,
    /// The run's records and the tenant-scoped records without run or task
    /// recorded while it was open, in seq order.
    pub records: Vec<DecodedRecord>,
    /// Each tenant's registered configuration as of the run's last record
    /// (tenants of the run only).
    pub tenants: BTreeMap<TenantId, TenantConfig>,
}

impl RunInput {
    /// A run without tenant configurations (what tests build by hand).
    pub fn new(run: RunId, records: Vec<DecodedRecord>) -> Self {
        RunInput {
            run,
            records,
            tenants: BTreeMap::new(),
        }
    }
}

/// A tenant's settings as `tenant_registered` / `tenant_updated` left them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantConfig {
    pub budget_micros: i64,
    pub max_concurrent_runs: u32,
    pub learning_intensity: LearningIntensity,
    pub meta_learning: bool,
    pub budget_period: BudgetPeriod,
}

impl TenantConfig {
    /// Applies a registration or update; other events leave it alone.
    fn apply(configs: &mut BTreeMap<TenantId, TenantConfig>, event: &Event) {
        match event {
            Event::TenantRegistered {
                tenant,
                budget_micros,
                max_concurrent_runs,
                learning_intensity,
                meta_learning,
                budget_period,
            } => {
                configs.insert(
                    tenant.clone(),
                    TenantConfig {
                        budget_micros: budget_micros.0,
                        max_concurrent_runs: *max_concurrent_runs,
                        learning_intensity: *learning_intensity,
                        meta_learning: *meta_learning,
                        budget_period: *budget_period,
                    },
                );
            }
            Event::TenantUpdated {
                tenant,
                budget_micros,
                max_concurrent_runs,
                learning_intensity,
                meta_learning,
                budget_period,
            } => {
                if let Some(c) = configs.get_mut(tenant) {
                    if let Some(v) = budget_micros {
                        c.budget_micros = v.0;
                    }
                    if let Some(v) = max_concurrent_runs {
                        c.max_concurrent_runs = *v;
                    }
                    if let Some(v) = learning_intensity {
                        c.learning_intensity = *v;
                    }
                    if let Some(v) = meta_learning {
                        c.meta_learning = *v;
                    }
                    if let Some(v) = budget_period {
                        c.budget_period = *v;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The whole comparison; its JSON is the `--json` output of `diff`.
#[derive(Clone, Debug, Serialize)]
pub struct RunDiff {
    pub run_a: String,
    pub run_b: String,
    pub events_a: u64,
    pub events_b: u64,
    /// The same events in the same order (after normalisation).
    pub identical: bool,
    pub first_divergence: Option<Divergence>,
    pub summary: Summary,
}

/// Where the aligned streams first part. A side that has run out has no
/// seq and no event (one run is a prefix of the other).
#[derive(Clone, Debug, Serialize)]
pub struct Divergence {
    /// Position in the aligned streams, from 0.
    pub index: u64,
    pub seq_a: Option<u64>,
    pub seq_b: Option<u64>,
    pub recorded_at_a: Option<Timestamp>,
    pub recorded_at_b: Option<Timestamp>,
    /// The events as recorded (ingest JSON, not normalised).
    pub event_a: Option<Value>,
    pub event_b: Option<Value>,
    /// What differs, field by field, on the normalised events (`null` for
    /// a field one side lacks); `recorded_at` when the times differ.
    pub fields: Vec<FieldDiff>,
    /// Fields that differ beyond [`FIELDS_MAX`].
    pub fields_not_listed: u64,
    /// The events' ingest JSON text (`type` first), for people.
    #[serde(skip)]
    pub text_a: Option<String>,
    #[serde(skip)]
    pub text_b: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldDiff {
    /// Dotted path into the event JSON, `[i]` for array items.
    pub field: String,
    pub a: Value,
    pub b: Value,
}

/// A count per run and its delta (b − a).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub a: u64,
    pub b: u64,
    pub delta: i64,
}

impl Count {
    fn new(a: u64, b: u64) -> Self {
        Count {
            a,
            b,
            delta: i64::try_from(i128::from(b) - i128::from(a)).unwrap_or(i64::MAX),
        }
    }
}

/// An amount per run and its delta (b − a), in micros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Money {
    pub a_micros: i64,
    pub b_micros: i64,
    pub delta_micros: i64,
}

impl Money {
    fn new(a: i64, b: i64) -> Self {
        Money {
            a_micros: a,
            b_micros: b,
            delta_micros: b.saturating_sub(a),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub tasks: TaskSummary,
    /// One entry per tenant of either run, sorted by tenant.
    pub tenants: Vec<TenantDiff>,
    /// One entry per tenant with any decision in either run, sorted by tenant.
    pub decisions: Vec<DecisionDiff>,
    /// The tasks whose cost differs most, by |delta| then task id.
    pub top_task_deltas: Vec<TaskCostDelta>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TaskSummary {
    pub submitted: Count,
    pub acked: Count,
    pub nacked: Count,
    /// Attempts after the first (dequeues with attempt > 1).
    pub retries: Count,
    pub timed_out: Count,
    pub leases_expired: Count,
    pub dead_lettered: Count,
    pub cancelled: Count,
    pub skipped: Count,
    /// Normalised ids of tasks submitted in one run only (at most
    /// [`ONLY_LISTED_MAX`] each, sorted); the counts are complete.
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    pub only_in_a_count: u64,
    pub only_in_b_count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantDiff {
    pub tenant: String,
    /// Costs posted for the run's tasks.
    pub spent: Money,
    /// By category, only categories with spend in either run.
    pub spent_by_category: BTreeMap<&'static str, Money>,
    /// Reservations of the run's tasks still open after its last event.
    pub reserved_at_end: Money,
    /// The tenant's configuration when the two differ (else `null`).
    pub config: Option<ConfigDiff>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConfigDiff {
    pub a: Option<TenantConfig>,
    pub b: Option<TenantConfig>,
    pub fields: Vec<FieldDiff>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DecisionDiff {
    pub tenant: String,
    pub r#continue: Count,
    pub degrade: Count,
    pub terminate: Count,
    pub admission_denied: Count,
    pub budget_status_changed: Count,
    pub budget_overrun: Count,
    pub learning_arm_chosen: Count,
    pub learning_explored: Count,
    pub learning_profile_adjusted: Count,
}

impl DecisionDiff {
    /// `(name, count)` in display order.
    pub fn rows(&self) -> [(&'static str, Count); 9] {
        [
            ("continue", self.r#continue),
            ("degrade", self.degrade),
            ("terminate", self.terminate),
            ("admission_denied", self.admission_denied),
            ("budget_status_changed", self.budget_status_changed),
            ("budget_overrun", self.budget_overrun),
            ("learning_arm_chosen", self.learning_arm_chosen),
            ("learning_explored", self.learning_explored),
            ("learning_profile_adjusted", self.learning_profile_adjusted),
        ]
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskCostDelta {
    /// The normalised task id (without the run prefix).
    pub task: String,
    pub tenant: String,
    pub cost: Money,
}

/// `task` without its run's prefix (`r/acme/rag#0/x` → `acme/rag#0/x`).
pub fn strip_run<'t>(task: &'t str, run: &str) -> &'t str {
    task.strip_prefix(run)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(task)
}

fn id_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// A string with the run made neutral: `run/` where an id starts (at the
/// start, or after a character that cannot be part of an id) is cut, once
/// per id — `daily/daily/research#0` in run `daily` (a tenant named like
/// its run) becomes `daily/research#0`.
pub fn normalise_text(text: &str, run: &str) -> String {
    if run.is_empty() {
        return text.to_owned();
    }
    let prefix = format!("{run}/");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Whether `rest` begins inside an id whose prefix was just cut.
    let mut inside_id = false;
    while let Some(at) = rest.find(&prefix) {
        let starts_id = match rest[..at].chars().next_back() {
            Some(c) => !id_char(c),
            None => !inside_id,
        };
        out.push_str(&rest[..at]);
        if !starts_id {
            out.push_str(&prefix);
        }
        inside_id = true;
        rest = &rest[at + prefix.len()..];
    }
    out.push_str(rest);
    out
}

/// Makes the run neutral in an event's JSON, field by field: `run` naming
/// it becomes `<run>`; task ids (`task`, `deps`) lose the run's prefix;
/// ids that are not run-scoped (`tenant`, `pipeline`) stay as they are,
/// even when they begin like the run; free text (reasons, errors) loses
/// the prefix where an id starts.
fn normalise_value(value: &mut Value, run: &str) {
    match value {
        Value::String(s) if s.contains(run) => *s = normalise_text(s, run),
        Value::Array(items) => items.iter_mut().for_each(|v| normalise_value(v, run)),
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), v) {
                    ("run", Value::String(s)) if s == run => *s = RUN_PLACEHOLDER.to_owned(),
                    ("tenant" | "pipeline", Value::String(_)) => {}
                    ("task", Value::String(s)) => *s = strip_run(s, run).to_owned(),
                    ("deps", Value::Array(items)) => {
                        for item in items {
                            if let Value::String(s) = item {
                                *s = strip_run(s, run).to_owned();
                            }
                        }
                    }
                    (_, v) => normalise_value(v, run),
                }
            }
        }
        _ => {}
    }
}

fn event_json(event: &Event) -> Value {
    serde_json::to_value(event).unwrap_or_else(|_| Value::String(event.kind().to_owned()))
}

/// The event as compared: its JSON with the run made neutral.
pub fn normalised(event: &Event, run: &RunId) -> Value {
    let mut value = event_json(event);
    normalise_value(&mut value, run.as_str());
    value
}

fn flatten(value: &Value, path: &str, out: &mut BTreeMap<String, Value>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                flatten(v, &join(k), out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, &format!("{path}[{i}]"), out);
            }
        }
        leaf => {
            out.insert(path.to_owned(), leaf.clone());
        }
    }
}

/// What differs between two JSON values, leaf by leaf (`type` first, then
/// by path); a leaf one side lacks is `null` there.
pub fn field_diff(a: &Value, b: &Value) -> Vec<FieldDiff> {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten(a, "", &mut fa);
    flatten(b, "", &mut fb);
    let keys: BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    let mut out: Vec<FieldDiff> = keys
        .into_iter()
        .filter_map(|k| {
            let va = fa.get(k).cloned().unwrap_or(Value::Null);
            let vb = fb.get(k).cloned().unwrap_or(Value::Null);
            (va != vb).then(|| FieldDiff {
                field: k.clone(),
                a: va,
                b: vb,
            })
        })
        .collect();
    out.sort_by_key(|f| f.field != "type");
    out
}

fn divergence(a: &RunInput, b: &RunInput, index: usize) -> Divergence {
    let ra = a.records.get(index);
    let rb = b.records.get(index);
    let mut fields = Vec::new();
    if let (Some(ra), Some(rb)) = (ra, rb) {
        if ra.recorded_at != rb.recorded_at {
            fields.push(FieldDiff {
                field: "recorded_at".to_owned(),
                a: Value::String(ra.recorded_at.to_string()),
                b: Value::String(rb.recorded_at.to_string()),
            });
        }
        fields.extend(field_diff(
            &normalised(&ra.event, &a.run),
            &normalised(&rb.event, &b.run),
        ));
    }
    let not_listed = fields.len().saturating_sub(FIELDS_MAX);
    fields.truncate(FIELDS_MAX);
    Divergence {
        index: index as u64,
        seq_a: ra.map(|r| r.seq),
        seq_b: rb.map(|r| r.seq),
        recorded_at_a: ra.map(|r| r.recorded_at),
        recorded_at_b: rb.map(|r| r.recorded_at),
        event_a: ra.map(|r| event_json(&r.event)),
        event_b: rb.map(|r| event_json(&r.event)),
        fields,
        fields_not_listed: not_listed as u64,
        text_a: ra.map(|r| r.event.to_string()),
        text_b: rb.map(|r| r.event.to_string()),
    }
}

/// The first position where the aligned streams differ, if any.
pub fn first_divergence(a: &RunInput, b: &RunInput) -> Option<usize> {
    let common = a.records.len().min(b.records.len());
    for i in 0..common {
        let (ra, rb) = (&a.records[i], &b.records[i]);
        let same = ra.recorded_at == rb.recorded_at
            && (ra.event == rb.event
                || normalised(&ra.event, &a.run) == normalised(&rb.event, &b.run));
        if !same {
            return Some(i);
        }
    }
    (a.records.len() != b.records.len()).then_some(common)
}

/// Counters of one run, folded from its records.
#[derive(Default)]
struct Tally {
    submitted: u64,
    acked: u64,
    nacked: u64,
    retries: u64,
    timed_out: u64,
    leases_expired: u64,
    dead_lettered: u64,
    cancelled: u64,
    skipped: u64,
    /// Normalised task id → tenant.
    tasks: BTreeMap<String, TenantId>,
    /// Normalised task id → cost posted.
    task_cost: BTreeMap<String, i64>,
    /// Normalised task id → reservation still open.
    task_reserved: BTreeMap<String, (TenantId, i64)>,
    spent: BTreeMap<TenantId, [i64; 6]>,
    /// Tenant → [continue, degrade, terminate, denied, status, overrun,
    /// chosen, explored, adjusted].
    decisions: BTreeMap<TenantId, [u64; 9]>,
}

impl Tally {
    fn of(input: &RunInput) -> Tally {
        let mut t = Tally::default();
        let run = input.run.as_str();
        for record in &input.records {
            let task = record
                .event
                .task()
                .map(|id| strip_run(id.as_str(), run).to_owned());
            let tenant = record
                .event
                .tenant()
                .cloned()
                .or_else(|| task.as_ref().and_then(|id| t.tasks.get(id).cloned()));
            let mut decide = |slot: usize| {
                if let Some(tenant) = &tenant {
                    t.decisions.entry(tenant.clone()).or_default()[slot] += 1;
                }
            };
            match &record.event {
                Event::DegradationDecided { decision, .. } => decide(match decision {
                    Decision::Continue => 0,
                    Decision::Degrade => 1,
                    Decision::Terminate => 2,
                }),
                Event::AdmissionDenied { .. } => decide(3),
                Event::BudgetStatusChanged { .. } => decide(4),
                Event::BudgetOverrun { .. } => decide(5),
                Event::LearningArmChosen { explored, .. } => {
                    decide(6);
                    if *explored {
                        decide(7);
                    }
                }
                Event::LearningProfileAdjusted { .. } => decide(8),
                _ => {}
            }
            match &record.event {
                Event::TaskSubmitted { tenant, .. } => {
                    t.submitted += 1;
                    if let Some(task) = &task {
                        t.tasks.insert(task.clone(), tenant.clone());
                    }
                }
                Event::TaskAcked { .. } => t.acked += 1,
                Event::TaskNacked { timed_out, .. } => {
                    t.nacked += 1;
                    t.timed_out += u64::from(*timed_out);
                }
                Event::TaskDequeued { attempt, .. } => t.retries += u64::from(*attempt > 1),
                Event::LeaseExpired { .. } => t.leases_expired += 1,
                Event::TaskDeadLettered { .. } => t.dead_lettered += 1,
                Event::TaskCancelled { .. } => t.cancelled += 1,
                Event::TaskSkipped { .. } => t.skipped += 1,
                Event::CostReserved {
                    tenant,
                    amount_micros,
                    ..
                } => {
                    if let Some(task) = task {
                        let entry = t
                            .task_reserved
                            .entry(task)
                            .or_insert_with(|| (tenant.clone(), 0));
                        entry.1 = entry.1.saturating_add(amount_micros.0);
                    }
                }
                Event::CostIncurred {
                    tenant,
                    category,
                    amount_micros,
                    ..
                } => {
                    // Only the run's tasks' costs count toward the run (as
                    // in `runledger runs`); an untasked cost is aligned but
                    // not attributed.
                    if let Some(task) = task {
                        let cost = t.task_cost.entry(task.clone()).or_default();
                        *cost = cost.saturating_add(amount_micros.0);
                        let spent = t.spent.entry(tenant.clone()).or_default();
                        spent[category.index()] =
                            spent[category.index()].saturating_add(amount_micros.0);
                        // Posting a task's cost consumes its reservation first.
                        if let Some(open) = t.task_reserved.get_mut(&task) {
                            open.1 -= amount_micros.0.clamp(0, open.1.max(0));
                        }
                    }
                }
                Event::ReservationReleased { amount_micros, .. } => {
                    if let Some(open) = task.and_then(|task| t.task_reserved.get_mut(&task)) {
                        open.1 = open.1.saturating_sub(amount_micros.0);
                    }
                }
                _ => {}
            }
        }
        t
    }

    fn reserved(&self) -> BTreeMap<&TenantId, i64> {
        let mut out = BTreeMap::new();
        for (tenant, amount) in self.task_reserved.values() {
            let sum: &mut i64 = out.entry(tenant).or_default();
            *sum = sum.saturating_add(*amount);
        }
        out
    }

    fn tenants(&self) -> BTreeSet<&TenantId> {
        self.spent
            .keys()
            .chain(self.decisions.keys())
            .chain(self.tasks.values())
            .collect()
    }
}

fn only_in(
    ours: &BTreeMap<String, TenantId>,
    theirs: &BTreeMap<String, TenantId>,
) -> (Vec<String>, u64) {
    let mut listed = Vec::new();
    let mut count = 0u64;
    for task in ours.keys().filter(|t| !theirs.contains_key(*t)) {
        count += 1;
        if listed.len() < ONLY_LISTED_MAX {
            listed.push(task.clone());
        }
    }
    (listed, count)
}

fn config_diff(a: Option<&TenantConfig>, b: Option<&TenantConfig>) -> Option<ConfigDiff> {
    if a == b {
        return None;
    }
    let json = |c: Option<&TenantConfig>| {
        c.map_or(Value::Null, |c| {
            serde_json::to_value(c).unwrap_or(Value::Null)
        })
    };
    Some(ConfigDiff {
        a: a.cloned(),
        b: b.cloned(),
        fields: field_diff(&json(a), &json(b)),
    })
}

fn summarise(a: &RunInput, b: &RunInput) -> Summary {
    let (ta, tb) = (Tally::of(a), Tally::of(b));
    let (only_in_a, only_in_a_count) = only_in(&ta.tasks, &tb.tasks);
    let (only_in_b, only_in_b_count) = only_in(&tb.tasks, &ta.tasks);
    let tasks = TaskSummary {
        submitted: Count::new(ta.submitted, tb.submitted),
        acked: Count::new(ta.acked, tb.acked),
        nacked: Count::new(ta.nacked, tb.nacked),
        retries: Count::new(ta.retries, tb.retries),
        timed_out: Count::new(ta.timed_out, tb.timed_out),
        leases_expired: Count::new(ta.leases_expired, tb.leases_expired),
        dead_lettered: Count::new(ta.dead_lettered, tb.dead_lettered),
        cancelled: Count::new(ta.cancelled, tb.cancelled),
        skipped: Count::new(ta.skipped, tb.skipped),
        only_in_a,
        only_in_b,
        only_in_a_count,
        only_in_b_count,
    };

    let (reserved_a, reserved_b) = (ta.reserved(), tb.reserved());
    let all_tenants: BTreeSet<&TenantId> = ta
        .tenants()
        .into_iter()
        .chain(tb.tenants())
        .chain(a.tenants.keys())
        .chain(b.tenants.keys())
        .collect();
    let none = [0i64; 6];
    let tenants = all_tenants
        .iter()
        .map(|tenant| {
            let sa = ta.spent.get(*tenant).unwrap_or(&none);
            let sb = tb.spent.get(*tenant).unwrap_or(&none);
            TenantDiff {
                tenant: tenant.to_string(),
                spent: Money::new(
                    sa.iter().fold(0i64, |s, v| s.saturating_add(*v)),
                    sb.iter().fold(0i64, |s, v| s.saturating_add(*v)),
                ),
                spent_by_category: Category::ALL
                    .iter()
                    .filter(|c| sa[c.index()] != 0 || sb[c.index()] != 0)
                    .map(|c| (c.name(), Money::new(sa[c.index()], sb[c.index()])))
                    .collect(),
                reserved_at_end: Money::new(
                    reserved_a.get(*tenant).copied().unwrap_or(0),
                    reserved_b.get(*tenant).copied().unwrap_or(0),
                ),
                config: config_diff(a.tenants.get(*tenant), b.tenants.get(*tenant)),
            }
        })
        .collect();

    let decision_tenants: BTreeSet<&TenantId> =
        ta.decisions.keys().chain(tb.decisions.keys()).collect();
    let decisions = decision_tenants
        .into_iter()
        .map(|tenant| {
            let da = ta.decisions.get(tenant).copied().unwrap_or_default();
            let db = tb.decisions.get(tenant).copied().unwrap_or_default();
            let c = |i: usize| Count::new(da[i], db[i]);
            DecisionDiff {
                tenant: tenant.to_string(),
                r#continue: c(0),
                degrade: c(1),
                terminate: c(2),
                admission_denied: c(3),
                budget_status_changed: c(4),
                budget_overrun: c(5),
                learning_arm_chosen: c(6),
                learning_explored: c(7),
                learning_profile_adjusted: c(8),
            }
        })
        .collect();

    let task_ids: BTreeSet<&String> = ta.task_cost.keys().chain(tb.task_cost.keys()).collect();
    let mut deltas: Vec<TaskCostDelta> = task_ids
        .into_iter()
        .map(|task| {
            let tenant = ta.tasks.get(task).or_else(|| tb.tasks.get(task));
            TaskCostDelta {
                task: task.clone(),
                tenant: tenant.map(ToString::to_string).unwrap_or_default(),
                cost: Money::new(
                    ta.task_cost.get(task).copied().unwrap_or(0),
                    tb.task_cost.get(task).copied().unwrap_or(0),
                ),
            }
        })
        .filter(|d| d.cost.delta_micros != 0)
        .collect();
    deltas.sort_by(|x, y| {
        y.cost
            .delta_micros
            .unsigned_abs()
            .cmp(&x.cost.delta_micros.unsigned_abs())
            .then_with(|| x.task.cmp(&y.task))
    });
    deltas.truncate(TOP_TASKS_MAX);

    Summary {
        tasks,
        tenants,
        decisions,
        top_task_deltas: deltas,
    }
}

/// Compares two runs: the first divergence of their aligned event streams
/// and the summary of differences. Pure: no disk, no clock.
pub fn compare(a: &RunInput, b: &RunInput) -> RunDiff {
    let first = first_divergence(a, b);
    RunDiff {
        run_a: a.run.to_string(),
        run_b: b.run.to_string(),
        events_a: a.records.len() as u64,
        events_b: b.records.len() as u64,
        identical: first.is_none(),
        first_divergence: first.map(|i| divergence(a, b, i)),
        summary: summarise(a, b),
    }
}

// ---------------------------------------------------------------- loading

/// A tenant-scoped event without run or task: aligned with the run it was
/// recorded in. Registrations are configuration, not alignment.
fn is_tenant_global(event: &Event) -> bool {
    event.run().is_none()
        && event.task().is_none()
        && event.tenant().is_some()
        && !matches!(
            event,
            Event::TenantRegistered { .. } | Event::TenantUpdated { .. }
        )
}

fn decoded(raw: RawRecord<'_>) -> Result<DecodedRecord, ChainBreak> {
    decode_record(raw).map_err(|what| ChainBreak { seq: raw.seq, what })
}

/// Reads run `run` from `store`: `None` when the ledger has no record of it.
/// The run's records come through the by-run index and the tenants' global
/// events and configuration through the by-tenant index (reading only the
/// frames that hold them); when the indices lag behind the log, one walk
/// of the chain does instead. Hashes are checked on the way.
pub fn load_run(store: &Store, run: &RunId) -> Result<Option<RunInput>, WalkError> {
    let mut records = Vec::new();
    let mut bad: Option<ChainBreak> = None;
    let indexed =
        store.walk_indexed(&[(IndexKind::Run, run.as_str())], 1, |raw| {
            match decoded(raw) {
                Ok(record) => {
                    records.push(record);
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    bad = Some(e);
                    ControlFlow::Break(())
                }
            }
        })?;
    if let Some(e) = bad {
        return Err(e.into());
    }
    if indexed.is_none() {
        return load_by_walk(store, run);
    }
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(None);
    };
    let (first, last) = (first.seq, last.seq);
    let tenants = tenants_of(&records);
    let mut around = Vec::new();
    for tenant in &tenants {
        if tenant_records(store, tenant, first, last, &mut around)?.is_none() {
            return load_by_walk(store, run);
        }
    }
    around.sort_by_key(|r| r.seq);
    Ok(Some(assemble(run, records, around, first, last, &tenants)))
}

/// The tenants a run's records name, directly or through their task.
fn tenants_of(records: &[DecodedRecord]) -> BTreeSet<TenantId> {
    records
        .iter()
        .filter_map(|r| r.event.tenant().cloned())
        .collect()
}

/// Pushes onto `out` the registrations of `tenant` up to seq `last` and
/// its global events from `first` to `last`, read through its index;
/// `None` when the index cannot answer.
fn tenant_records(
    store: &Store,
    tenant: &TenantId,
    first: u64,
    last: u64,
    out: &mut Vec<DecodedRecord>,
) -> Result<Option<()>, WalkError> {
    let mut bad: Option<ChainBreak> = None;
    let indexed = store.walk_indexed(&[(IndexKind::Tenant, tenant.as_str())], 1, |raw| {
        if raw.seq > last {
            return ControlFlow::Break(());
        }
        match decoded(raw) {
            Ok(record) => {
                if keeps(&record, first) {
                    out.push(record);
                }
                ControlFlow::Continue(())
            }
            Err(e) => {
                bad = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    match bad {
        Some(e) => Err(e.into()),
        None => Ok(indexed),
    }
}

/// Whether a record outside the run matters to it: a registration (for
/// the configuration) or a tenant-global event from `first` on.
fn keeps(record: &DecodedRecord, first: u64) -> bool {
    matches!(
        record.event,
        Event::TenantRegistered { .. } | Event::TenantUpdated { .. }
    ) || (record.seq >= first && is_tenant_global(&record.event))
}

/// The run's records merged with the tenant-global ones of its window
/// `[first, last]`, and the configuration the registrations up to `last`
/// give its tenants.
fn assemble(
    run: &RunId,
    mut records: Vec<DecodedRecord>,
    around: Vec<DecodedRecord>,
    first: u64,
    last: u64,
    tenants: &BTreeSet<TenantId>,
) -> RunInput {
    let mut configs = BTreeMap::new();
    for record in around {
        if record.seq > last {
            break;
        }
        TenantConfig::apply(&mut configs, &record.event);
        let ours = record.event.tenant().is_some_and(|t| tenants.contains(t));
        if record.seq >= first && ours && is_tenant_global(&record.event) {
            records.push(record);
        }
    }
    records.sort_by_key(|r| r.seq);
    records.dedup_by_key(|r| r.seq);
    configs.retain(|t, _| tenants.contains(t));
    RunInput {
        run: run.clone(),
        records,
        tenants: configs,
    }
}

/// [`load_run`] without indices: one walk of the whole chain.
fn load_by_walk(store: &Store, run: &RunId) -> Result<Option<RunInput>, WalkError> {
    let mut tasks: BTreeSet<TaskId> = BTreeSet::new();
    let mut records = Vec::new();
    let mut around = Vec::new();
    let mut bad: Option<ChainBreak> = None;
    store.walk(1, |raw| {
        let record = match decoded(raw) {
            Ok(record) => record,
            Err(e) => {
                bad = Some(e);
                return ControlFlow::Break(());
            }
        };
        let event = &record.event;
        if let Event::TaskSubmitted { run: r, task, .. } = event {
            if r == run {
                tasks.insert(task.clone());
            }
        }
        let ours = match event.run() {
            Some(r) => r == run,
            None => event.task().is_some_and(|t| tasks.contains(t)),
        };
        if ours {
            records.push(record);
        } else if is_tenant_global(event)
            || matches!(
                event,
                Event::TenantRegistered { .. } | Event::TenantUpdated { .. }
            )
        {
            around.push(record);
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = bad {
        return Err(e.into());
    }
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(None);
    };
    let (first, last) = (first.seq, last.seq);
    let tenants = tenants_of(&records);
    Ok(Some(assemble(run, records, around, first, last, &tenants)))
}

/// The runs a ledger holds (ids of `run_started` events, in seq order):
/// what an error about an unknown run lists. Walks the whole chain.
pub fn runs(store: &Store) -> Result<Vec<RunId>, WalkError> {
    let mut out = Vec::new();
    let mut bad: Option<ChainBreak> = None;
    store.walk(1, |raw| match decoded(raw) {
        Ok(DecodedRecord {
            event: Event::RunStarted { run, .. },
            ..
        }) => {
            out.push(run);
            ControlFlow::Continue(())
        }
        Ok(_) => ControlFlow::Continue(()),
        Err(e) => {
            bad = Some(e);
            ControlFlow::Break(())
        }
    })?;
    match bad {
        Some(e) => Err(e.into()),
        None => Ok(out),
    }
}

// -------------------------------------------------------------- rendering

/// `text` cut at `max` characters.
fn short_text(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}…")
}

/// Human text of a JSON value, cut at `max` characters.
fn short(value: &Value, max: usize) -> String {
    short_text(&value.to_string(), max)
}

/// Micros as currency units with micros precision, signed (`+0.000250`).
fn signed(micros: i64) -> String {
    let text = crate::domain::Micros(micros).to_string();
    if micros > 0 { format!("+{text}") } else { text }
}

fn signed_count(delta: i64) -> String {
    if delta > 0 {
        format!("+{delta}")
    } else {
        delta.to_string()
    }
}

/// Event text shown per side, at most.
const EVENT_TEXT_MAX: usize = 400;
/// Field value text shown, at most.
const VALUE_TEXT_MAX: usize = 120;

/// The human report: first divergence, then aligned tables (money in
/// currency units with micros precision, deltas b − a).
pub fn render_text(diff: &RunDiff) -> String {
    use crate::views::Table;
    use std::fmt::Write as _;
    let (ra, rb) = (&diff.run_a, &diff.run_b);
    let mut out = String::new();
    let w = &mut out;
    match &diff.first_divergence {
        None => {
            let _ = writeln!(
                w,
                "identical: runs `{ra}` and `{rb}` have the same {} events in the same order",
                diff.events_a
            );
        }
        Some(d) => match (d.seq_a, d.seq_b) {
            (Some(sa), Some(sb)) => {
                let kind = |e: &Option<Value>| {
                    e.as_ref()
                        .and_then(|e| e.get("type"))
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned()
                };
                let (ka, kb) = (kind(&d.event_a), kind(&d.event_b));
                let what = if ka == kb { ka } else { format!("{ka} / {kb}") };
                let _ = writeln!(
                    w,
                    "first divergence at event {} of the aligned runs (seq {sa} in `{ra}`, seq {sb} in `{rb}`): {what}",
                    d.index + 1
                );
                for (run, seq, at, text) in [
                    (ra, sa, d.recorded_at_a, &d.text_a),
                    (rb, sb, d.recorded_at_b, &d.text_b),
                ] {
                    let _ = writeln!(
                        w,
                        "  {run}: seq {seq} at {}  {}",
                        at.map(|t| t.to_string()).unwrap_or_default(),
                        short_text(text.as_deref().unwrap_or(""), EVENT_TEXT_MAX)
                    );
                }
                for f in &d.fields {
                    let _ = writeln!(
                        w,
                        "  {}: {} → {}",
                        f.field,
                        short(&f.a, VALUE_TEXT_MAX),
                        short(&f.b, VALUE_TEXT_MAX)
                    );
                }
                if d.fields_not_listed > 0 {
                    let _ = writeln!(w, "  … and {} more fields", d.fields_not_listed);
                }
            }
            (seq_a, _) => {
                let (short_run, short_n, long_run, long_n, from) = match seq_a {
                    Some(seq) => (rb, diff.events_b, ra, diff.events_a, seq),
                    None => (ra, diff.events_a, rb, diff.events_b, d.seq_b.unwrap_or(0)),
                };
                let _ = writeln!(
                    w,
                    "run `{short_run}` is a prefix of run `{long_run}`: it ends after {short_n} events; `{long_run}` goes on with {} more from seq {from}",
                    long_n.saturating_sub(short_n)
                );
            }
        },
    }

    let t = &diff.summary.tasks;
    let _ = writeln!(w, "\ntasks");
    let mut table = Table::new(&["WHAT", ra, rb, "DELTA"]);
    for (name, c) in [
        ("submitted", t.submitted),
        ("acked", t.acked),
        ("nacked", t.nacked),
        ("retries", t.retries),
        ("timed out", t.timed_out),
        ("leases expired", t.leases_expired),
        ("dead-lettered", t.dead_lettered),
        ("cancelled", t.cancelled),
        ("skipped", t.skipped),
    ] {
        table.row(vec![
            name.to_owned(),
            c.a.to_string(),
            c.b.to_string(),
            signed_count(c.delta),
        ]);
    }
    w.push_str(&table.render());
    for (run, listed, count) in [
        (ra, &t.only_in_a, t.only_in_a_count),
        (rb, &t.only_in_b, t.only_in_b_count),
    ] {
        if count > 0 {
            let more = count.saturating_sub(listed.len() as u64);
            let tail = if more > 0 {
                format!(" … and {more} more")
            } else {
                String::new()
            };
            let _ = writeln!(w, "only in `{run}` ({count}): {}{tail}", listed.join(", "));
        }
    }

    let _ = writeln!(w, "\ncost per tenant");
    let mut table = Table::new(&["TENANT", "WHAT", ra, rb, "DELTA"]);
    let money = |m: &Money| {
        vec![
            crate::domain::Micros(m.a_micros).to_string(),
            crate::domain::Micros(m.b_micros).to_string(),
            signed(m.delta_micros),
        ]
    };
    for tenant in &diff.summary.tenants {
        let mut row = |what: &str, m: &Money| {
            let mut cells = vec![tenant.tenant.clone(), what.to_owned()];
            cells.extend(money(m));
            table.row(cells);
        };
        row("spent", &tenant.spent);
        for (category, m) in &tenant.spent_by_category {
            row(&format!("  {category}"), m);
        }
        row("reserved at end", &tenant.reserved_at_end);
    }
    w.push_str(&table.render());
    for tenant in &diff.summary.tenants {
        if let Some(config) = &tenant.config {
            let changes: Vec<String> = config
                .fields
                .iter()
                .map(|f| format!("{}: {} → {}", f.field, f.a, f.b))
                .collect();
            let _ = writeln!(
                w,
                "tenant `{}` is configured differently: {}",
                tenant.tenant,
                changes.join(", ")
            );
        }
    }

    let _ = writeln!(w, "\ndecisions");
    let mut table = Table::new(&["TENANT", "DECISION", ra, rb, "DELTA"]);
    for d in &diff.summary.decisions {
        for (name, c) in d.rows() {
            if c.a != 0 || c.b != 0 {
                table.row(vec![
                    d.tenant.clone(),
                    name.to_owned(),
                    c.a.to_string(),
                    c.b.to_string(),
                    signed_count(c.delta),
                ]);
            }
        }
    }
    w.push_str(&table.render());

    let _ = writeln!(w, "\ntasks whose cost differs most");
    if diff.summary.top_task_deltas.is_empty() {
        let _ = writeln!(w, "none: every task cost the same");
    } else {
        let mut table = Table::new(&["TASK", "TENANT", ra, rb, "DELTA"]);
        for d in &diff.summary.top_task_deltas {
            let mut cells = vec![d.task.clone(), d.tenant.clone()];
            cells.extend(money(&d.cost));
            table.row(cells);
        }
        w.push_str(&table.render());
    }
    out
}
