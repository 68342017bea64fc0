//! The read models of a ledger as tables or JSON: `tenants`, `queue`,
//! `runs`, `workers` (the folded projections) and `decisions` (the
//! governance decisions, walked from the records).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use serde::Serialize;

use super::exit::Damaged;
use super::filter::{Scopes, require_known};
use super::open::{fold, open_store, walk_error};
use super::output::print_json;
use crate::domain::Event;
use crate::log::codec::decode_event;
use crate::views::{self, Table, bp_percent};

pub(super) fn tenants(data: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let folded = fold(data, None)?;
    let views = views::tenants(&folded.state);
    if json {
        return print_json(out, &views);
    }
    let mut table = Table::new(&[
        "TENANT",
        "BUDGET",
        "SPENT",
        "RESERVED",
        "USED",
        "STATUS",
        "RUNS",
        "INTENSITY",
        "LLM",
        "RETRIEVAL",
        "RERANK",
        "STORAGE",
        "TOOL",
        "OTHER",
    ]);
    let m = |v: i64| crate::domain::Micros(v).to_string();
    for t in views {
        let cat = |name: &str| m(t.spent_by_category.get(name).copied().unwrap_or(0));
        table.row(vec![
            t.tenant.clone(),
            m(t.budget_micros),
            m(t.spent_micros),
            m(t.reserved_micros),
            bp_percent(t.utilisation_bp),
            t.status.name().to_owned(),
            format!("{}/{}", t.active_runs, t.max_concurrent_runs),
            t.learning_intensity.name().to_owned(),
            cat("llm"),
            cat("retrieval"),
            cat("rerank"),
            cat("storage"),
            cat("tool"),
            cat("other"),
        ]);
    }
    write!(out, "{}", table.render())?;
    Ok(())
}

pub(super) fn queue(data: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let folded = fold(data, None)?;
    let view = views::queue(&folded.state);
    if json {
        return print_json(out, &view);
    }
    let c = view.counts;
    let mut table = Table::new(&[
        "WAITING",
        "PENDING",
        "LEASED",
        "DONE",
        "DEAD-LETTERED",
        "CANCELLED",
        "RETRIES",
    ]);
    table.row(
        [
            c.waiting,
            c.pending,
            c.leased,
            c.done,
            c.dead_lettered,
            c.cancelled,
            c.retries,
        ]
        .iter()
        .map(u64::to_string)
        .collect(),
    );
    write!(out, "{}", table.render())?;
    let r = view.ready_by_priority;
    writeln!(
        out,
        "ready by priority: critical {}, high {}, normal {}, low {}, batch {}",
        r.critical, r.high, r.normal, r.low, r.batch
    )?;
    if !view.leased_tasks.is_empty() {
        let mut leases = Table::new(&["LEASED TASK", "TENANT", "WORKER", "ATTEMPT", "DEADLINE"]);
        for l in &view.leased_tasks {
            leases.row(vec![
                l.task.clone(),
                l.tenant.clone(),
                l.worker.clone(),
                l.attempt.to_string(),
                l.lease_deadline
                    .map_or_else(|| "-".to_owned(), |d| d.to_string()),
            ]);
        }
        write!(out, "{}", leases.render())?;
    }
    if !view.dead_letter.is_empty() {
        writeln!(out, "dead letter: {}", view.dead_letter.join(", "))?;
    }
    Ok(())
}

pub(super) fn runs(data: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let folded = fold(data, None)?;
    let views = views::runs(&folded.state);
    if json {
        return print_json(out, &views);
    }
    let mut table = Table::new(&[
        "RUN",
        "STATUS",
        "SEED",
        "STARTED",
        "SUBMITTED",
        "ACKED",
        "NACKED",
        "DEAD",
        "CANCELLED",
        "COST",
        "PEAK",
    ]);
    for r in views {
        table.row(vec![
            r.run,
            format!("{:?}", r.status).to_lowercase(),
            r.seed.to_string(),
            r.started_at.to_string(),
            r.tasks_submitted.to_string(),
            r.tasks_acked.to_string(),
            r.tasks_nacked.to_string(),
            r.tasks_dead_lettered.to_string(),
            r.tasks_cancelled.to_string(),
            crate::domain::Micros(r.cost_micros).to_string(),
            r.peak_running.to_string(),
        ]);
    }
    write!(out, "{}", table.render())?;
    Ok(())
}

pub(super) fn workers(data: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let folded = fold(data, None)?;
    let views = views::workers(&folded.state);
    if json {
        return print_json(out, &views);
    }
    let mut table = Table::new(&[
        "WORKER",
        "EXECUTED",
        "SUCCEEDED",
        "FAILED",
        "TIMED OUT",
        "SUCCESS",
        "UPTIME",
    ]);
    for w in views {
        table.row(vec![
            w.worker,
            w.executed.to_string(),
            w.succeeded.to_string(),
            w.failed.to_string(),
            w.timed_out.to_string(),
            bp_percent(i64::from(w.success_rate_bp)),
            format!("{:.3}s", w.uptime_micros as f64 / 1e6),
        ]);
    }
    write!(out, "{}", table.render())?;
    Ok(())
}

/// One governance decision as `decisions` shows it.
#[derive(Serialize)]
struct DecisionView {
    seq: u64,
    recorded_at: crate::domain::Timestamp,
    /// The event kind (`admission_denied`, `budget_status_changed`, ...).
    kind: &'static str,
    tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    /// `continue` | `degrade` | `terminate` for cost-agent verdicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<crate::domain::Decision>,
    reason: String,
    /// The cost agent's inputs, projection and plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<serde_json::Value>,
}

pub(super) fn decisions(
    data: &Path,
    run: Option<&str>,
    tenant: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let store = open_store(data)?;
    require_known(&store, run, tenant)?;
    let mut scopes = Scopes::default();
    let mut found = Vec::new();
    let mut failure = None;
    store
        .walk(1, |raw| {
            let event = match decode_event(raw.event_bytes) {
                Ok(event) => event,
                Err(what) => {
                    failure = Some(Damaged(crate::log::ChainBreak { seq: raw.seq, what }));
                    return ControlFlow::Break(());
                }
            };
            let owner_run = event.run().cloned().or_else(|| {
                event
                    .task()
                    .and_then(|t| scopes.tasks.get(t))
                    .map(|o| o.0.clone())
            });
            if !scopes.matches(&event, run, tenant) {
                return ControlFlow::Continue(());
            }
            let (decision, reason) = match &event {
                Event::AdmissionDenied { reason, .. } => (None, reason.clone()),
                Event::BudgetStatusChanged { from, to, .. } => (None, format!("{from} -> {to}")),
                Event::BudgetOverrun { amount_micros, .. } => (
                    None,
                    format!("cost passed the ceiling by {amount_micros}; tenant blocked"),
                ),
                Event::BudgetPeriodReset { .. } => (None, "budget period reset".to_owned()),
                Event::DegradationDecided {
                    decision, reason, ..
                } => (Some(*decision), reason.clone()),
                Event::LearningProfileAdjusted {
                    exploration_bp,
                    reason,
                    ..
                } => (
                    None,
                    format!(
                        "exploration {}: {reason}",
                        bp_percent(i64::from(*exploration_bp))
                    ),
                ),
                Event::LearningArmChosen {
                    param,
                    arm,
                    explored,
                    reason,
                    ..
                } => (
                    None,
                    format!(
                        "{param}={arm}{}: {reason}",
                        if *explored { " (explores)" } else { "" }
                    ),
                ),
                Event::TaskSkipped { reason, .. } => (None, reason.clone()),
                _ => return ControlFlow::Continue(()),
            };
            found.push(DecisionView {
                seq: raw.seq,
                recorded_at: raw.recorded_at,
                kind: event.kind(),
                tenant: event
                    .tenant()
                    .or_else(|| event.task().and_then(|t| scopes.tasks.get(t)).map(|o| &o.1))
                    .map(|t| t.0.clone())
                    .unwrap_or_default(),
                run: owner_run.map(|r| r.0),
                task: event.task().map(|t| t.0.clone()),
                decision,
                reason,
                details: match &event {
                    Event::DegradationDecided { details, .. } if !details.is_null() => {
                        Some(details.to_value())
                    }
                    _ => None,
                },
            });
            ControlFlow::Continue(())
        })
        .map_err(walk_error)?;
    if let Some(d) = failure {
        return Err(d.into());
    }
    if json {
        for d in &found {
            print_json(out, d)?;
        }
        return Ok(());
    }
    let mut table = Table::new(&["SEQ", "KIND", "TENANT", "TASK", "DECISION", "REASON"]);
    for d in found {
        table.row(vec![
            d.seq.to_string(),
            d.kind.to_owned(),
            d.tenant,
            d.task.unwrap_or_else(|| "-".to_owned()),
            d.decision
                .map_or_else(|| "-".to_owned(), |x| format!("{x:?}").to_lowercase()),
            d.reason,
        ]);
    }
    write!(out, "{}", table.render())?;
    Ok(())
}
