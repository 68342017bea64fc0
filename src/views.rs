//! Read models of the projections for people and machines: what `tenants`,
//! `queue`, `runs` and `replay` print, as serde structs with snake_case
//! enum values. Shared by the CLI (and later the HTTP API).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::domain::activity::{RunStatus, RunSummary, WorkerStats};
use crate::domain::budget::Tenant;
use crate::domain::queue::{QueueCounts, TaskStatus};
use crate::domain::{
    BudgetPeriod, BudgetStatus, Category, LearningIntensity, Priority, State, Timestamp,
};

#[derive(Serialize)]
pub struct TenantView {
    pub tenant: String,
    pub budget_micros: i64,
    pub spent_micros: i64,
    pub reserved_micros: i64,
    pub available_micros: i64,
    pub spent_by_category: BTreeMap<&'static str, i64>,
    pub utilisation_bp: i64,
    pub status: BudgetStatus,
    pub active_runs: u32,
    pub peak_active_runs: u32,
    pub max_concurrent_runs: u32,
    pub learning_intensity: LearningIntensity,
    pub exploration_bp: u32,
    pub meta_learning: bool,
    pub budget_period: BudgetPeriod,
    pub overrun_micros: i64,
    pub admissions_denied: u64,
    /// The highest `spent + reserved` share of the budget at any seq.
    pub peak_committed_bp: i64,
}

impl TenantView {
    pub fn new(tenant: &Tenant, state: &State) -> Self {
        TenantView {
            tenant: tenant.tenant.0.clone(),
            budget_micros: tenant.budget_micros.0,
            spent_micros: tenant.spent_micros().0,
            reserved_micros: tenant.reserved_micros.0,
            available_micros: tenant.available_micros().0,
            spent_by_category: Category::ALL
                .iter()
                .map(|c| (c.name(), tenant.spent_by_category[c.index()].0))
                .collect(),
            utilisation_bp: tenant.utilisation_bp(),
            status: tenant.status(),
            active_runs: tenant.active_runs,
            peak_active_runs: tenant.peak_active_runs,
            max_concurrent_runs: tenant.max_concurrent_runs,
            learning_intensity: tenant.learning_intensity,
            exploration_bp: state
                .learning
                .get(&tenant.tenant)
                .map_or(tenant.learning_intensity.exploration_bp(), |p| {
                    p.exploration_bp
                }),
            meta_learning: tenant.meta_learning,
            budget_period: tenant.budget_period,
            overrun_micros: tenant.overrun_micros.0,
            admissions_denied: tenant.admissions_denied,
            peak_committed_bp: tenant.peak_committed_bp,
        }
    }
}

pub fn tenants(state: &State) -> Vec<TenantView> {
    state
        .tenants
        .sorted()
        .into_iter()
        .map(|t| TenantView::new(t, state))
        .collect()
}

#[derive(Serialize)]
pub struct LeaseView {
    pub task: String,
    pub tenant: String,
    pub worker: String,
    pub attempt: u32,
    pub lease_deadline: Option<Timestamp>,
}

/// Ready tasks per priority, highest first.
#[derive(Serialize, Clone, Copy)]
pub struct ReadyByPriority {
    pub critical: u64,
    pub high: u64,
    pub normal: u64,
    pub low: u64,
    pub batch: u64,
}

#[derive(Serialize)]
pub struct QueueView {
    #[serde(flatten)]
    pub counts: QueueCounts,
    pub total: u64,
    pub ready_by_priority: ReadyByPriority,
    pub leased_tasks: Vec<LeaseView>,
    pub dead_letter: Vec<String>,
}

pub fn queue(state: &State) -> QueueView {
    let ready = state.queue.ready_by_priority();
    let mut leased_tasks = Vec::new();
    let mut dead_letter = Vec::new();
    for (id, task) in state.queue.sorted() {
        match task.status {
            TaskStatus::Leased => leased_tasks.push(LeaseView {
                task: id.0.clone(),
                tenant: task.tenant.0.clone(),
                worker: task
                    .worker
                    .as_ref()
                    .map(|w| w.0.clone())
                    .unwrap_or_default(),
                attempt: task.attempts,
                lease_deadline: task.lease_deadline,
            }),
            TaskStatus::DeadLettered => dead_letter.push(id.0.clone()),
            _ => {}
        }
    }
    QueueView {
        counts: state.queue.counts(),
        total: state.queue.counts().total(),
        ready_by_priority: ReadyByPriority {
            critical: ready[Priority::Critical.index()],
            high: ready[Priority::High.index()],
            normal: ready[Priority::Normal.index()],
            low: ready[Priority::Low.index()],
            batch: ready[Priority::Batch.index()],
        },
        leased_tasks,
        dead_letter,
    }
}

#[derive(Serialize)]
pub struct RunView {
    pub run: String,
    pub status: RunStatus,
    pub seed: u64,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub tasks_submitted: u64,
    pub tasks_acked: u64,
    pub tasks_nacked: u64,
    pub tasks_timed_out: u64,
    pub tasks_dead_lettered: u64,
    pub tasks_cancelled: u64,
    pub tasks_skipped: u64,
    pub leases_expired: u64,
    pub cost_micros: i64,
    pub peak_running: u32,
    pub admissions_denied: u64,
    pub backpressure_engaged: u64,
    pub decisions: BTreeMap<&'static str, u64>,
}

impl From<&RunSummary> for RunView {
    fn from(r: &RunSummary) -> Self {
        RunView {
            run: r.run.0.clone(),
            status: r.status,
            seed: r.seed,
            started_at: r.started_at,
            finished_at: r.finished_at,
            tasks_submitted: r.tasks_submitted,
            tasks_acked: r.tasks_acked,
            tasks_nacked: r.tasks_nacked,
            tasks_timed_out: r.tasks_timed_out,
            tasks_dead_lettered: r.tasks_dead_lettered,
            tasks_cancelled: r.tasks_cancelled,
            tasks_skipped: r.tasks_skipped,
            leases_expired: r.leases_expired,
            cost_micros: r.cost_micros.0,
            peak_running: r.peak_running,
            admissions_denied: r.admissions_denied,
            backpressure_engaged: r.backpressure_engaged,
            decisions: [
                ("continue", r.decisions[0]),
                ("degrade", r.decisions[1]),
                ("terminate", r.decisions[2]),
            ]
            .into_iter()
            .collect(),
        }
    }
}

pub fn runs(state: &State) -> Vec<RunView> {
    state.runs.sorted().into_iter().map(RunView::from).collect()
}

#[derive(Serialize)]
pub struct WorkerView {
    pub worker: String,
    pub executed: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub success_rate_bp: u32,
    pub uptime_micros: i64,
}

impl From<&WorkerStats> for WorkerView {
    fn from(w: &WorkerStats) -> Self {
        WorkerView {
            worker: w.worker.0.clone(),
            executed: w.executed,
            succeeded: w.succeeded,
            failed: w.failed,
            timed_out: w.timed_out,
            success_rate_bp: w.success_rate_bp(),
            uptime_micros: w.uptime_micros(),
        }
    }
}

pub fn workers(state: &State) -> Vec<WorkerView> {
    state
        .workers
        .sorted()
        .into_iter()
        .map(WorkerView::from)
        .collect()
}

/// A plain-text table with left-aligned columns.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The rows with their columns aligned. A cell longer than
    /// [`CELL_CHARS_MAX`] (an id from a ledger written before ids were
    /// capped) is cut there and ends with `…`; padding is written by hand,
    /// so no width can make the formatter panic.
    pub fn render(&self) -> String {
        let rows: Vec<Vec<std::borrow::Cow<'_, str>>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(|cell| clip(cell)).collect())
            .collect();
        let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                rows.iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    let pad = widths[c] - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The widest a table cell is shown: an id at its limit fits whole.
pub const CELL_CHARS_MAX: usize = crate::domain::limits::ID_BYTES_MAX;

/// `cell`, cut to [`CELL_CHARS_MAX`] characters with a final `…`.
fn clip(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.char_indices().nth(CELL_CHARS_MAX) {
        None => std::borrow::Cow::Borrowed(cell),
        Some(_) => {
            let keep: String = cell.chars().take(CELL_CHARS_MAX - 1).collect();
            std::borrow::Cow::Owned(keep + "…")
        }
    }
}

pub fn bp_percent(bp: i64) -> String {
    format!("{}.{:02}%", bp / 100, (bp % 100).abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_renders_cells_of_any_length_without_panicking() {
        // `format!("{:<w$}")` panics for widths over 65,535.
        let long = "x".repeat(70_000);
        let mut table = Table::new(&["tenant", "budget"]);
        table.row(vec![long.clone(), "1".to_owned()]);
        table.row(vec!["acme".to_owned(), "2".to_owned()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        let clipped = format!("{}…  1", "x".repeat(CELL_CHARS_MAX - 1));
        assert_eq!(lines[1], clipped);
        assert_eq!(
            lines[2],
            format!("acme{}2", " ".repeat(CELL_CHARS_MAX - 4 + 2))
        );
        assert_eq!(lines[0].find("budget"), lines[2].find('2'));
    }
}
