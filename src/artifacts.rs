//! Artifact files: the governance views of the ledger written as JSON and
//! JSON-lines files — each tenant's budget usage, daily cost reports,
//! archives of ended budget periods, learning profile and history, and the
//! cost agent's decisions per task.
//!
//! They are views, like every projection: [`Artifacts`] folds the records
//! once, in seq order, through the same `State::evolve` as replay, and
//! renders files whose bytes depend on nothing but those records (pretty
//! JSON ending in a newline, maps sorted, files sorted by path). So the
//! files `run --artifacts` writes after a run and the ones `runledger
//! artifacts` regenerates later from the ledger alone are byte-identical —
//! until the ledger grows. This module never appends, and [`write`] never
//! writes outside the directory it is given: every path segment taken from
//! an id goes through [`path_segment`].
//!
//! Layout under the output directory:
//!
//! ```text
//! tenants/{tenant}/budget_usage.json               the budget now (at the head)
//! tenants/{tenant}/cost_report_{YYYY-MM-DD}.json   one per UTC date with money events
//!                                                  (costs, reservations, releases,
//!                                                  overruns, verdicts, admission denials)
//! tenants/{tenant}/budget_archive_{YYYYMMDDTHHMMSSZ}.json  one per budget_period_reset
//! tenants/{tenant}/learning_profile.json
//! tenants/{tenant}/learning_history.jsonl          one line per learning_* event
//! rag_project/{task segments}/cost_decision.json   tasks with degradation_decided events
//! ```
//!
//! ```
//! use runledger::artifacts::Artifacts;
//! use runledger::domain::{BudgetPeriod, Event, LearningIntensity, Micros, Timestamp};
//!
//! let mut artifacts = Artifacts::new(None);
//! let event = Event::TenantRegistered {
//!     tenant: "acme".into(),
//!     budget_micros: Micros(1_000),
//!     max_concurrent_runs: 1,
//!     learning_intensity: LearningIntensity::Balanced,
//!     meta_learning: false,
//!     budget_period: BudgetPeriod::None,
//! };
//! artifacts.record(1, Timestamp(0), blake3::hash(b"record 1"), event);
//! let files = artifacts.finish().unwrap();
//! let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
//! assert_eq!(
//!     paths,
//!     [
//!         "tenants/acme/budget_usage.json",
//!         "tenants/acme/learning_history.jsonl",
//!         "tenants/acme/learning_profile.json",
//!     ]
//! );
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::budget::Tenant;
use crate::domain::{
    BudgetPeriod, BudgetStatus, Category, Decision, Event, LearningIntensity, RunId, State, TaskId,
    TenantId, Timestamp,
};
use crate::log::store::{Store, WalkError, decode_record};

/// The file each task directory under `rag_project/` holds; a task id
/// segment spelled like it is encoded, so a file never shadows a directory.
const DECISION_FILE: &str = "cost_decision.json";

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// One artifact: its path relative to the output directory (segments
/// separated by `/`, each one safe, see [`path_segment`]) and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactFile {
    pub path: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("run `{0}` is not in the ledger")]
    UnknownRun(RunId),
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error("cannot encode {path}: {source}")]
    Encode {
        path: String,
        source: serde_json::Error,
    },
    #[error("refusing to write `{0}`: not a plain relative path")]
    UnsafePath(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The file-system name of one segment of an id (ids are split at `/`).
///
/// A segment is kept as it is when it is non-empty, uses only
/// `A-Z a-z 0-9 . _ -`, and is not `.`, `..` or `cost_decision.json`.
/// Any other segment is percent-encoded: each byte of its UTF-8 outside
/// `A-Z a-z 0-9 _ -` becomes `%XX` (uppercase hex), dots included, so `..`
/// becomes `%2E%2E` and `rag#0` becomes `rag%230`; an empty segment becomes
/// `%`. Distinct segments get distinct names, and none of them can leave
/// the directory it is in.
pub fn path_segment(segment: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if segment.is_empty() {
        return Cow::Borrowed("%");
    }
    let special = matches!(segment, "." | ".." | DECISION_FILE);
    if !special && segment.bytes().all(|b| plain(b) || b == b'.') {
        return Cow::Borrowed(segment);
    }
    let mut out = String::with_capacity(segment.len() * 3);
    for b in segment.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

/// The relative directory of a task under `rag_project/`: one directory
/// per `/`-separated segment of its id.
fn task_dir(task: &TaskId) -> String {
    let segments: Vec<Cow<'_, str>> = task.as_str().split('/').map(path_segment).collect();
    format!("rag_project/{}", segments.join("/"))
}

fn tenant_dir(tenant: &TenantId) -> String {
    format!("tenants/{}", path_segment(tenant.as_str()))
}

/// UTC `YYYY-MM-DD` of a day counted from the Unix epoch.
fn date_name(day: i64) -> String {
    day.checked_mul(86_400)
        .and_then(|secs| DateTime::<Utc>::from_timestamp(secs, 0))
        .map_or_else(|| format!("day{day}"), |d| d.format("%Y-%m-%d").to_string())
}

/// `20260102T000000Z`: a timestamp to the second, safe in a file name.
fn instant_name(at: Timestamp) -> String {
    DateTime::<Utc>::from_timestamp_micros(at.0).map_or_else(
        || format!("{}us", at.0),
        |d| d.format("%Y%m%dT%H%M%SZ").to_string(),
    )
}

fn by_category(amounts: &[i64; 6]) -> BTreeMap<&'static str, i64> {
    Category::ALL
        .iter()
        .map(|c| (c.name(), amounts[c.index()]))
        .collect()
}

const DECISIONS: [(Decision, &str); 3] = [
    (Decision::Continue, "continue"),
    (Decision::Degrade, "degrade"),
    (Decision::Terminate, "terminate"),
];

/// Where a verdict is counted in `[u64; 3]` counters ordered as [`DECISIONS`].
fn decision_slot(decision: Decision) -> usize {
    match decision {
        Decision::Continue => 0,
        Decision::Degrade => 1,
        Decision::Terminate => 2,
    }
}

/// A record of the ledger: where a view was taken.
#[derive(Clone, Debug, Serialize)]
pub struct AsOf {
    pub seq: u64,
    pub recorded_at: Timestamp,
    /// The record's hash (hex): the head of the chain it was taken at.
    pub hash: String,
}

/// A point of the ledger without its hash (a reset, a period start).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Mark {
    pub seq: u64,
    pub recorded_at: Timestamp,
}

/// `budget_usage.json`: a tenant's budget at one record.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetUsage {
    pub tenant: String,
    pub as_of: AsOf,
    pub budget_micros: i64,
    /// Spend of the current period.
    pub spent_micros: i64,
    pub spent_by_category: BTreeMap<&'static str, i64>,
    pub reserved_micros: i64,
    pub available_micros: i64,
    pub utilisation_bp: i64,
    pub status: BudgetStatus,
    pub overrun: bool,
    pub overrun_micros: i64,
    pub active_runs: u32,
    pub max_concurrent_runs: u32,
    pub budget_period: BudgetPeriod,
    pub period_resets: u32,
    pub lifetime_spent_micros: i64,
    pub learning_intensity: LearningIntensity,
    pub exploration_bp: u32,
}

impl BudgetUsage {
    fn new(tenant: &Tenant, state: &State, as_of: AsOf) -> Self {
        BudgetUsage {
            tenant: tenant.tenant.0.clone(),
            as_of,
            budget_micros: tenant.budget_micros.0,
            spent_micros: tenant.spent_micros().0,
            spent_by_category: by_category(&tenant.spent_by_category.map(|m| m.0)),
            reserved_micros: tenant.reserved_micros.0,
            available_micros: tenant.available_micros().0,
            utilisation_bp: tenant.utilisation_bp(),
            status: tenant.status(),
            overrun: tenant.overrun,
            overrun_micros: tenant.overrun_micros.0,
            active_runs: tenant.active_runs,
            max_concurrent_runs: tenant.max_concurrent_runs,
            budget_period: tenant.budget_period,
            period_resets: tenant.period_resets,
            lifetime_spent_micros: tenant.lifetime_spent_micros.0,
            learning_intensity: tenant.learning_intensity,
            exploration_bp: state
                .learning
                .get(&tenant.tenant)
                .map_or(tenant.learning_intensity.exploration_bp(), |p| {
                    p.exploration_bp
                }),
        }
    }
}

/// `budget_archive_{timestamp}.json`: the usage of a period that ended,
/// taken from the state just before its `budget_period_reset`.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetArchive {
    pub tenant: String,
    /// The record that opened the period: the tenant's registration or
    /// its previous reset.
    pub period_started: Mark,
    /// The `budget_period_reset` record that closed it.
    pub reset: Mark,
    pub usage: BudgetUsage,
}

/// Spend by category.
#[derive(Clone, Copy, Debug, Default)]
struct Spend([i64; 6]);

impl Spend {
    fn add(&mut self, category: Category, amount: i64) {
        let slot = &mut self.0[category.index()];
        *slot = slot.saturating_add(amount);
    }

    fn total(&self) -> i64 {
        self.0.iter().fold(0i64, |sum, m| sum.saturating_add(*m))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSpend {
    pub spent_micros: i64,
    pub spent_by_category: BTreeMap<&'static str, i64>,
}

impl From<Spend> for RunSpend {
    fn from(spend: Spend) -> Self {
        RunSpend {
            spent_micros: spend.total(),
            spent_by_category: by_category(&spend.0),
        }
    }
}

/// Events counted by a cost report, by kind.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct MoneyEventCounts {
    pub cost_incurred: u64,
    pub cost_reserved: u64,
    pub reservation_released: u64,
    pub budget_overrun: u64,
}

/// What a day of one tenant adds up to while the fold goes on.
#[derive(Clone, Debug)]
struct Day {
    first_seq: u64,
    last_seq: u64,
    spend: Spend,
    by_run: BTreeMap<RunId, Spend>,
    without_run: Spend,
    reserved: i64,
    released: i64,
    overrun: i64,
    events: MoneyEventCounts,
    decisions: [u64; 3],
    admissions_denied: u64,
}

impl Day {
    fn new(seq: u64) -> Self {
        Day {
            first_seq: seq,
            last_seq: seq,
            spend: Spend::default(),
            by_run: BTreeMap::new(),
            without_run: Spend::default(),
            reserved: 0,
            released: 0,
            overrun: 0,
            events: MoneyEventCounts::default(),
            decisions: [0; 3],
            admissions_denied: 0,
        }
    }
}

/// `cost_report_{date}.json`: a tenant's money events of one UTC date.
#[derive(Clone, Debug, Serialize)]
pub struct CostReport {
    pub tenant: String,
    pub date: String,
    /// The run the report is restricted to (`--run`); absent when it covers
    /// the whole ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The first and last seq of the events counted.
    pub first_seq: u64,
    pub last_seq: u64,
    pub spent_micros: i64,
    pub spent_by_category: BTreeMap<&'static str, i64>,
    /// Spend of tasks, by the run they belong to.
    pub by_run: BTreeMap<String, RunSpend>,
    /// Spend without a task (imported costs).
    pub spent_without_run_micros: i64,
    pub reserved_micros: i64,
    pub released_micros: i64,
    pub overrun_micros: i64,
    pub events: MoneyEventCounts,
    /// `degradation_decided` verdicts by decision.
    pub decisions: BTreeMap<&'static str, u64>,
    pub admissions_denied: u64,
}

/// One cost-agent verdict on a task.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionEntry {
    pub seq: u64,
    pub recorded_at: Timestamp,
    pub decision: Decision,
    pub reason: String,
    /// The decision's inputs: `projection` and `plan`.
    pub details: serde_json::Value,
}

/// `rag_project/{task}/cost_decision.json`.
#[derive(Clone, Debug, Serialize)]
pub struct CostDecisions {
    pub task: String,
    pub tenant: String,
    pub run: String,
    /// The last verdict, the one in force.
    pub decision: DecisionEntry,
    /// Every verdict, in ledger order.
    pub decisions: Vec<DecisionEntry>,
}

/// One line of `learning_history.jsonl`.
#[derive(Serialize)]
struct LearningLine<'a> {
    seq: u64,
    recorded_at: Timestamp,
    event: &'a Event,
}

/// The fold behind the artifact files: feed it every record in seq order
/// with [`Artifacts::record`], then render with [`Artifacts::finish`].
///
/// Restricted to a run, it renders the `rag_project` files of the run's
/// tasks, cost reports and archives counting the run's events, and the
/// tenant files of the run's tenants. An event is the run's when it names
/// the run or its task is the run's; an event with neither (a budget
/// period reset, a pipeline run's admission denial, a cost without a task)
/// is the run's when it was recorded while the run was open, between its
/// `run_started` and `run_finished`. The run's tenants are those of its
/// tasks and of the admission denials recorded while it was open. Tenant
/// files (`budget_usage`, `learning_profile`, `learning_history`) always
/// show the whole tenant at the head of the ledger.
pub struct Artifacts {
    run: Option<RunId>,
    run_open: bool,
    state: State,
    /// The last record folded in: seq, time and hash.
    last: (u64, Timestamp, blake3::Hash),
    run_tenants: BTreeSet<TenantId>,
    /// Where each tenant's current budget period started.
    period_started: BTreeMap<TenantId, Mark>,
    days: BTreeMap<(TenantId, i64), Day>,
    archives: BTreeMap<TenantId, Vec<BudgetArchive>>,
    learning: BTreeMap<TenantId, Vec<u8>>,
    decisions: BTreeMap<TaskId, (TenantId, RunId, Vec<DecisionEntry>)>,
    /// The first error met while encoding a learning line.
    failure: Option<ArtifactError>,
}

impl Artifacts {
    /// A fold of the whole ledger, or of what concerns `run`.
    pub fn new(run: Option<RunId>) -> Self {
        Artifacts {
            run,
            run_open: false,
            state: State::new(),
            last: (0, Timestamp::EPOCH, crate::log::ZERO_HASH),
            run_tenants: BTreeSet::new(),
            period_started: BTreeMap::new(),
            days: BTreeMap::new(),
            archives: BTreeMap::new(),
            learning: BTreeMap::new(),
            decisions: BTreeMap::new(),
            failure: None,
        }
    }

    /// Folds in the record `seq`, recorded at `recorded_at` with `hash`.
    pub fn record(&mut self, seq: u64, recorded_at: Timestamp, hash: blake3::Hash, event: Event) {
        let (owner, tenant) = {
            let (run, tenant) = self.state.scope(&event);
            (run.cloned(), tenant.cloned())
        };
        if let (Some(run), Event::RunStarted { run: started, .. }) = (&self.run, &event) {
            if run == started {
                self.run_open = true;
            }
        }
        let in_scope = match (&self.run, &owner) {
            (None, _) => true,
            (Some(run), Some(owner)) => run == owner,
            (Some(_), None) => self.run_open,
        };
        if let Some(tenant) = &tenant {
            if event.kind().starts_with("learning_") {
                self.learning_line(seq, recorded_at, tenant, &event);
            }
            if in_scope {
                if self.run.is_some()
                    && (owner.is_some() || matches!(event, Event::AdmissionDenied { .. }))
                {
                    self.run_tenants.insert(tenant.clone());
                }
                self.count(seq, recorded_at, owner.as_ref(), tenant, &event);
                if let Event::BudgetPeriodReset { .. } = &event {
                    self.archive(seq, recorded_at, tenant);
                }
            }
        }
        if let Event::RunFinished { run } = &event {
            if self.run.as_ref() == Some(run) {
                self.run_open = false;
            }
        }
        let opens_period = match &event {
            Event::TenantRegistered { tenant, .. } | Event::BudgetPeriodReset { tenant } => {
                Some(tenant.clone())
            }
            _ => None,
        };
        self.state.evolve(seq, recorded_at, event);
        if let Some(tenant) = opens_period {
            self.period_started
                .insert(tenant, Mark { seq, recorded_at });
        }
        self.last = (seq, recorded_at, hash);
    }

    /// Where a view taken now stands: the last record folded in.
    fn as_of(&self) -> AsOf {
        let (seq, recorded_at, hash) = self.last;
        AsOf {
            seq,
            recorded_at,
            hash: hash.to_hex().to_string(),
        }
    }

    fn learning_line(
        &mut self,
        seq: u64,
        recorded_at: Timestamp,
        tenant: &TenantId,
        event: &Event,
    ) {
        let line = LearningLine {
            seq,
            recorded_at,
            event,
        };
        let lines = self.learning.entry(tenant.clone()).or_default();
        match serde_json::to_writer(&mut *lines, &line) {
            Ok(()) => lines.push(b'\n'),
            Err(source) => {
                self.failure.get_or_insert(ArtifactError::Encode {
                    path: format!("{}/learning_history.jsonl", tenant_dir(tenant)),
                    source,
                });
            }
        }
    }

    /// Counts a money or governance event in its tenant's day.
    fn count(
        &mut self,
        seq: u64,
        recorded_at: Timestamp,
        owner: Option<&RunId>,
        tenant: &TenantId,
        event: &Event,
    ) {
        let counted = matches!(
            event,
            Event::CostIncurred { .. }
                | Event::CostReserved { .. }
                | Event::ReservationReleased { .. }
                | Event::BudgetOverrun { .. }
                | Event::DegradationDecided { .. }
                | Event::AdmissionDenied { .. }
        );
        if !counted {
            return;
        }
        let day_index = recorded_at.0.div_euclid(MICROS_PER_DAY);
        let day = self
            .days
            .entry((tenant.clone(), day_index))
            .or_insert_with(|| Day::new(seq));
        day.last_seq = seq;
        match event {
            Event::CostIncurred {
                category,
                amount_micros,
                ..
            } => {
                day.events.cost_incurred += 1;
                day.spend.add(*category, amount_micros.0);
                match owner {
                    Some(run) => day
                        .by_run
                        .entry(run.clone())
                        .or_default()
                        .add(*category, amount_micros.0),
                    None => day.without_run.add(*category, amount_micros.0),
                }
            }
            Event::CostReserved { amount_micros, .. } => {
                day.events.cost_reserved += 1;
                day.reserved = day.reserved.saturating_add(amount_micros.0);
            }
            Event::ReservationReleased { amount_micros, .. } => {
                day.events.reservation_released += 1;
                day.released = day.released.saturating_add(amount_micros.0);
            }
            Event::BudgetOverrun { amount_micros, .. } => {
                day.events.budget_overrun += 1;
                day.overrun = day.overrun.saturating_add(amount_micros.0);
            }
            Event::DegradationDecided {
                task,
                decision,
                reason,
                details,
                run,
                ..
            } => {
                day.decisions[decision_slot(*decision)] += 1;
                if let Some(task) = task {
                    let entry = DecisionEntry {
                        seq,
                        recorded_at,
                        decision: *decision,
                        reason: reason.clone(),
                        details: details.to_value(),
                    };
                    self.decisions
                        .entry(task.clone())
                        .or_insert_with(|| (tenant.clone(), run.clone(), Vec::new()))
                        .2
                        .push(entry);
                }
            }
            Event::AdmissionDenied { .. } => day.admissions_denied += 1,
            _ => {}
        }
    }

    /// Keeps the usage of the period a reset is about to end.
    fn archive(&mut self, seq: u64, recorded_at: Timestamp, tenant: &TenantId) {
        let Some(t) = self.state.tenants.get(tenant) else {
            return;
        };
        let started = self.period_started.get(tenant).copied().unwrap_or(Mark {
            seq: 0,
            recorded_at: Timestamp::EPOCH,
        });
        let archive = BudgetArchive {
            tenant: tenant.0.clone(),
            period_started: started,
            reset: Mark { seq, recorded_at },
            usage: BudgetUsage::new(t, &self.state, self.as_of()),
        };
        self.archives
            .entry(tenant.clone())
            .or_default()
            .push(archive);
    }

    /// Renders the files, sorted by path. Fails when the fold was
    /// restricted to a run the ledger does not hold.
    pub fn finish(mut self) -> Result<Vec<ArtifactFile>, ArtifactError> {
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        if let Some(run) = &self.run {
            if self.state.runs.get(run).is_none() {
                return Err(ArtifactError::UnknownRun(run.clone()));
            }
        }
        let mut files = Files::default();
        let tenants: Vec<&Tenant> = match &self.run {
            None => self.state.tenants.sorted(),
            Some(_) => self
                .run_tenants
                .iter()
                .filter_map(|t| self.state.tenants.get(t))
                .collect(),
        };
        let empty = Vec::new();
        for tenant in tenants {
            let id = &tenant.tenant;
            let dir = tenant_dir(id);
            let usage = BudgetUsage::new(tenant, &self.state, self.as_of());
            files.json(format!("{dir}/budget_usage.json"), &usage)?;
            if let Some(profile) = self.state.learning.get(id) {
                files.json(format!("{dir}/learning_profile.json"), profile)?;
            }
            let history = self.learning.get(id).unwrap_or(&empty);
            files.raw(format!("{dir}/learning_history.jsonl"), history.clone());
            let days = self
                .days
                .range((id.clone(), i64::MIN)..=(id.clone(), i64::MAX));
            for ((_, day_index), day) in days {
                let report = self.cost_report(id, *day_index, day);
                files.json(format!("{dir}/cost_report_{}.json", report.date), &report)?;
            }
            for archive in self.archives.get(id).into_iter().flatten() {
                let stamp = instant_name(archive.reset.recorded_at);
                let mut path = format!("{dir}/budget_archive_{stamp}.json");
                if files.contains(&path) {
                    // Two resets of a tenant within one second.
                    path = format!("{dir}/budget_archive_{stamp}_{}.json", archive.reset.seq);
                }
                files.json(path, archive)?;
            }
        }
        // Only the decisions of the run were kept.
        for (task, (tenant, run, entries)) in &self.decisions {
            let Some(last) = entries.last() else {
                continue;
            };
            let view = CostDecisions {
                task: task.0.clone(),
                tenant: tenant.0.clone(),
                run: run.0.clone(),
                decision: last.clone(),
                decisions: entries.clone(),
            };
            files.json(format!("{}/{DECISION_FILE}", task_dir(task)), &view)?;
        }
        Ok(files.into_sorted())
    }

    fn cost_report(&self, tenant: &TenantId, day_index: i64, day: &Day) -> CostReport {
        CostReport {
            tenant: tenant.0.clone(),
            date: date_name(day_index),
            run: self.run.as_ref().map(|r| r.0.clone()),
            first_seq: day.first_seq,
            last_seq: day.last_seq,
            spent_micros: day.spend.total(),
            spent_by_category: by_category(&day.spend.0),
            by_run: day
                .by_run
                .iter()
                .map(|(run, spend)| (run.0.clone(), RunSpend::from(*spend)))
                .collect(),
            spent_without_run_micros: day.without_run.total(),
            reserved_micros: day.reserved,
            released_micros: day.released,
            overrun_micros: day.overrun,
            events: day.events,
            decisions: DECISIONS
                .iter()
                .map(|(d, name)| (*name, day.decisions[decision_slot(*d)]))
                .collect(),
            admissions_denied: day.admissions_denied,
        }
    }
}

/// Rendered files by path.
#[derive(Default)]
struct Files(BTreeMap<String, Vec<u8>>);

impl Files {
    fn contains(&self, path: &str) -> bool {
        self.0.contains_key(path)
    }

    /// Pretty JSON with a trailing newline.
    fn json(&mut self, path: String, value: &impl Serialize) -> Result<(), ArtifactError> {
        match serde_json::to_vec_pretty(value) {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                self.raw(path, bytes);
                Ok(())
            }
            Err(source) => Err(ArtifactError::Encode { path, source }),
        }
    }

    fn raw(&mut self, path: String, bytes: Vec<u8>) {
        let previous = self.0.insert(path, bytes);
        assert!(previous.is_none(), "two artifacts at one path");
    }

    fn into_sorted(self) -> Vec<ArtifactFile> {
        self.0
            .into_iter()
            .map(|(path, bytes)| ArtifactFile { path, bytes })
            .collect()
    }
}

/// Folds the whole chain of `store` (checking every hash) and renders the
/// artifact files, of everything or of `run`.
pub fn generate(store: &Store, run: Option<&RunId>) -> Result<Vec<ArtifactFile>, ArtifactError> {
    let mut artifacts = Artifacts::new(run.cloned());
    store.read_chain(decode_record, |frames| {
        for record in frames.into_iter().flatten() {
            artifacts.record(record.seq, record.recorded_at, record.hash, record.event);
        }
    })?;
    artifacts.finish()
}

/// Writes `files` under `dir`, creating directories as needed and
/// replacing files of the same name (files already there that `files` does
/// not name are left alone). Refuses, before writing anything, any path
/// that is not made of plain names, so nothing lands outside `dir`.
pub fn write(dir: &Path, files: &[ArtifactFile]) -> Result<(), ArtifactError> {
    let mut targets = Vec::with_capacity(files.len());
    for file in files {
        let mut path = dir.to_path_buf();
        for part in file.path.split('/') {
            let mut components = Path::new(part).components();
            match (components.next(), components.next()) {
                (Some(Component::Normal(name)), None) if name == part => path.push(name),
                _ => return Err(ArtifactError::UnsafePath(file.path.clone())),
            }
        }
        targets.push(path);
    }
    for (file, path) in files.iter().zip(targets) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ArtifactError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&path, &file.bytes)
            .map_err(|source| ArtifactError::Write { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Micros, Params, Priority};

    #[test]
    fn path_segment_keeps_plain_names_and_encodes_the_rest() {
        let cases = [
            ("acme", "acme"),
            ("search.0", "search.0"),
            ("a_b-C9", "a_b-C9"),
            ("rag#0", "rag%230"),
            ("", "%"),
            (".", "%2E"),
            ("..", "%2E%2E"),
            ("...", "..."),
            ("cost_decision.json", "cost_decision%2Ejson"),
            ("a/b", "a%2Fb"),
            ("v1.2 x", "v1%2E2%20x"),
            ("100%", "100%25"),
            ("é", "%C3%A9"),
        ];
        for (segment, name) in cases {
            assert_eq!(path_segment(segment), name, "{segment:?}");
        }
    }

    #[test]
    fn task_dir_maps_each_segment_to_a_directory() {
        assert_eq!(
            task_dir(&"r/acme/rag#0/generate".into()),
            "rag_project/r/acme/rag%230/generate"
        );
        assert_eq!(task_dir(&"../../x".into()), "rag_project/%2E%2E/%2E%2E/x");
        assert_eq!(task_dir(&"/a//".into()), "rag_project/%/a/%/%");
    }

    #[test]
    fn file_names_of_dates_and_instants() {
        let at = Timestamp::parse("2026-01-02T00:00:00.5Z").unwrap();
        assert_eq!(instant_name(at), "20260102T000000Z");
        assert_eq!(date_name(at.0.div_euclid(MICROS_PER_DAY)), "2026-01-02");
        assert_eq!(date_name(-1), "1969-12-31");
        assert_eq!(date_name(i64::MAX), format!("day{}", i64::MAX));
        assert_eq!(instant_name(Timestamp(i64::MAX)), format!("{}us", i64::MAX));
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    fn submit(run: &str, task: &str) -> Event {
        Event::TaskSubmitted {
            run: run.into(),
            task: task.into(),
            tenant: "acme".into(),
            priority: Priority::Normal,
            deps: vec![],
            pipeline: None,
            cost_ceiling_micros: Micros(0),
            handler: String::new(),
            params: Params::null(),
            max_attempts: 1,
            optional: false,
        }
    }

    fn cost(task: Option<&str>, amount: i64) -> Event {
        Event::CostIncurred {
            tenant: "acme".into(),
            task: task.map(TaskId::from),
            category: Category::Llm,
            amount_micros: Micros(amount),
        }
    }

    /// Two runs of a daily tenant; run `b` spans midnight, where the budget
    /// period resets.
    fn history() -> Vec<(Timestamp, Event)> {
        vec![
            (
                at("2026-01-01T10:00:00Z"),
                Event::TenantRegistered {
                    tenant: "acme".into(),
                    budget_micros: Micros(1_000),
                    max_concurrent_runs: 4,
                    learning_intensity: LearningIntensity::Balanced,
                    meta_learning: false,
                    budget_period: BudgetPeriod::Daily,
                },
            ),
            (
                at("2026-01-01T10:00:00Z"),
                Event::RunStarted {
                    run: "a".into(),
                    seed: 1,
                    config_hash: String::new(),
                },
            ),
            (at("2026-01-01T10:00:01Z"), submit("a", "a/t")),
            (at("2026-01-01T10:00:02Z"), cost(Some("a/t"), 300)),
            (
                at("2026-01-01T10:00:03Z"),
                Event::RunFinished { run: "a".into() },
            ),
            (
                at("2026-01-01T23:00:00Z"),
                Event::RunStarted {
                    run: "b".into(),
                    seed: 2,
                    config_hash: String::new(),
                },
            ),
            (at("2026-01-01T23:00:01Z"), submit("b", "b/t")),
            (at("2026-01-01T23:00:02Z"), cost(Some("b/t"), 200)),
            (
                at("2026-01-01T23:00:03Z"),
                Event::DegradationDecided {
                    tenant: "acme".into(),
                    run: "b".into(),
                    task: Some("b/t".into()),
                    decision: Decision::Degrade,
                    reason: "tight".to_owned(),
                    details: Params::null(),
                },
            ),
            (
                at("2026-01-02T00:00:00Z"),
                Event::BudgetPeriodReset {
                    tenant: "acme".into(),
                },
            ),
            (at("2026-01-02T00:00:01Z"), cost(None, 50)),
            (
                at("2026-01-02T00:00:02Z"),
                Event::RunFinished { run: "b".into() },
            ),
            (at("2026-01-02T09:00:00Z"), cost(None, 7)),
        ]
    }

    fn fold(run: Option<&str>) -> BTreeMap<String, serde_json::Value> {
        let mut artifacts = Artifacts::new(run.map(RunId::from));
        for (i, (recorded_at, event)) in history().into_iter().enumerate() {
            let seq = i as u64 + 1;
            artifacts.record(seq, recorded_at, blake3::hash(&seq.to_le_bytes()), event);
        }
        artifacts
            .finish()
            .unwrap()
            .into_iter()
            .filter(|f| f.path.ends_with(".json"))
            .map(|f| (f.path, serde_json::from_slice(&f.bytes).unwrap()))
            .collect()
    }

    #[test]
    fn archive_keeps_the_period_that_ended() {
        let files = fold(None);
        let archive = &files["tenants/acme/budget_archive_20260102T000000Z.json"];
        assert_eq!(archive["reset"]["seq"], 10);
        assert_eq!(archive["period_started"]["seq"], 1);
        assert_eq!(archive["usage"]["as_of"]["seq"], 9);
        assert_eq!(archive["usage"]["spent_micros"], 500);
        let usage = &files["tenants/acme/budget_usage.json"];
        assert_eq!(usage["spent_micros"], 57);
        assert_eq!(usage["lifetime_spent_micros"], 557);
        assert_eq!(usage["as_of"]["seq"], 13);
    }

    #[test]
    fn cost_reports_split_at_utc_midnight_and_by_run() {
        let files = fold(None);
        let first = &files["tenants/acme/cost_report_2026-01-01.json"];
        assert_eq!(first["spent_micros"], 500);
        assert_eq!(first["by_run"]["a"]["spent_micros"], 300);
        assert_eq!(first["by_run"]["b"]["spent_micros"], 200);
        assert_eq!(first["decisions"]["degrade"], 1);
        assert_eq!(first["events"]["cost_incurred"], 2);
        let second = &files["tenants/acme/cost_report_2026-01-02.json"];
        assert_eq!(second["spent_micros"], 57);
        assert_eq!(second["spent_without_run_micros"], 57);
        assert_eq!(second["first_seq"], 11);
        assert_eq!(second["last_seq"], 13);
    }

    #[test]
    fn a_run_keeps_its_tasks_and_what_was_recorded_while_it_was_open() {
        let b = fold(Some("b"));
        assert_eq!(
            b["tenants/acme/cost_report_2026-01-01.json"]["spent_micros"],
            200
        );
        assert_eq!(b["tenants/acme/cost_report_2026-01-01.json"]["run"], "b");
        // The cost without a task at 00:00:01 was recorded while `b` was
        // open; the one at 09:00 was not.
        assert_eq!(
            b["tenants/acme/cost_report_2026-01-02.json"]["spent_micros"],
            50
        );
        assert!(b.contains_key("tenants/acme/budget_archive_20260102T000000Z.json"));
        assert!(b.contains_key("rag_project/b/t/cost_decision.json"));
        // Tenant files show the tenant at the head whatever the run.
        assert_eq!(
            b["tenants/acme/budget_usage.json"]["lifetime_spent_micros"],
            557
        );

        let a = fold(Some("a"));
        let paths: Vec<&str> = a.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "tenants/acme/budget_usage.json",
                "tenants/acme/cost_report_2026-01-01.json",
                "tenants/acme/learning_profile.json",
            ]
        );
        assert_eq!(
            a["tenants/acme/cost_report_2026-01-01.json"]["spent_micros"],
            300
        );
        assert_eq!(
            a["tenants/acme/cost_report_2026-01-01.json"]["decisions"]["degrade"],
            0
        );
    }

    #[test]
    fn an_unknown_run_is_an_error() {
        let artifacts = Artifacts::new(Some("nope".into()));
        assert!(matches!(
            artifacts.finish(),
            Err(ArtifactError::UnknownRun(run)) if run.as_str() == "nope"
        ));
    }

    #[test]
    fn write_refuses_paths_that_are_not_plain() {
        let dir = tempfile::tempdir().unwrap();
        for path in ["../x", "a/../../x", "/etc/x", "a//b", "./a"] {
            let file = ArtifactFile {
                path: path.to_owned(),
                bytes: b"x".to_vec(),
            };
            assert!(
                matches!(
                    write(&dir.path().join("out"), &[file]),
                    Err(ArtifactError::UnsafePath(_))
                ),
                "{path}"
            );
        }
        assert!(!dir.path().join("out").exists());
    }
}
