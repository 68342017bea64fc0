//! The tenant budget controller: admission with reservations, settlement of
//! actual costs, releases, overruns and status changes — the two-phase
//! pattern of financial ledgers.
//!
//! Admission reserves a task's cost ceiling before it runs; settlement posts
//! what it actually cost by category (consuming the reservation), records a
//! `budget_overrun` when it cost more than its ceiling (the only way to
//! EXCEEDED, which blocks the tenant) and releases the rest; a failed
//! attempt posts what it spent and releases the rest too. So `spent +
//! reserved ≤ budget` holds at every seq unless an overrun was recorded.
//! Pure: decisions read the projection and return events.

use super::event::{BudgetStatus, Category, Event};
use super::ids::{TaskId, TenantId};
use super::money::Micros;
use super::policy::Policy;
use super::state::State;
use super::time::Timestamp;

/// Why a task or a pipeline run may not start now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// It does not fit the budget now but may once reservations settle.
    BudgetBusy(String),
    /// It can never fit: nothing is reserved that could free room.
    BudgetExhausted(String),
    /// The tenant is blocked after a budget overrun.
    Blocked(String),
    /// The tenant runs as many pipeline runs as it may.
    Concurrency(String),
}

impl Denial {
    pub fn reason(&self) -> &str {
        match self {
            Denial::BudgetBusy(r)
            | Denial::BudgetExhausted(r)
            | Denial::Blocked(r)
            | Denial::Concurrency(r) => r,
        }
    }

    /// Whether waiting can help (else the task is rejected).
    pub fn may_wait(&self) -> bool {
        matches!(self, Denial::BudgetBusy(_) | Denial::Concurrency(_))
    }
}

/// Whether `tenant` is registered, not blocked and below its concurrent-run
/// limit: [`admit_run`] without the reason.
pub fn may_start_run(state: &State, tenant: &TenantId) -> bool {
    state
        .tenants
        .get(tenant)
        .is_some_and(|t| !t.overrun && t.active_runs < t.max_concurrent_runs)
}

/// May `tenant` start one more pipeline run?
pub fn admit_run(state: &State, tenant: &TenantId) -> Result<(), Denial> {
    let Some(t) = state.tenants.get(tenant) else {
        return Err(Denial::Blocked(format!(
            "tenant `{tenant}` is not registered"
        )));
    };
    if t.overrun {
        return Err(Denial::Blocked(format!(
            "tenant `{tenant}` is blocked after a budget overrun"
        )));
    }
    if t.active_runs >= t.max_concurrent_runs {
        return Err(Denial::Concurrency(format!(
            "tenant `{tenant}` runs {} of {} concurrent pipeline runs",
            t.active_runs, t.max_concurrent_runs
        )));
    }
    Ok(())
}

/// The reservation that admits `task` now (its cost ceiling), or why not.
pub fn admit_task(state: &State, task: &TaskId) -> Result<Micros, Denial> {
    Admitter::new(state).admit(task)
}

/// Admits several tasks in one decision: each admission sees the
/// reservations of the ones before it.
pub struct Admitter<'s> {
    state: &'s State,
    /// What this decision reserved so far, per tenant.
    reserved: rustc_hash::FxHashMap<&'s TenantId, Micros>,
}

impl<'s> Admitter<'s> {
    pub fn new(state: &'s State) -> Self {
        Admitter {
            state,
            reserved: rustc_hash::FxHashMap::default(),
        }
    }

    /// Admits `task` and counts its reservation, or says why not.
    pub fn admit(&mut self, task: &TaskId) -> Result<Micros, Denial> {
        let t = self.task(task)?;
        self.reserve(task, t, t.cost_ceiling_micros)
    }

    /// Admits `task` reserving `ceiling` (its own, or a lower one when a
    /// degradation plan makes the node cheaper).
    pub fn admit_at(&mut self, task: &TaskId, ceiling: Micros) -> Result<Micros, Denial> {
        let t = self.task(task)?;
        self.reserve(task, t, ceiling)
    }

    fn task(&self, task: &TaskId) -> Result<&'s super::queue::Task, Denial> {
        self.state
            .queue
            .get(task)
            .ok_or_else(|| Denial::Blocked(format!("task `{task}` was never submitted")))
    }

    /// Reserves `ceiling` for `t` if it fits what its tenant has left.
    fn reserve(
        &mut self,
        task: &TaskId,
        t: &'s super::queue::Task,
        ceiling: Micros,
    ) -> Result<Micros, Denial> {
        let state = self.state;
        let Some(tenant) = state.tenants.get(&t.tenant) else {
            return Err(Denial::Blocked(format!(
                "tenant `{}` is not registered",
                t.tenant
            )));
        };
        if tenant.overrun {
            return Err(Denial::Blocked(format!(
                "tenant `{}` is blocked after a budget overrun",
                t.tenant
            )));
        }
        let extra = self
            .reserved
            .get(&t.tenant)
            .copied()
            .unwrap_or(Micros::ZERO);
        let reserved = Micros(tenant.reserved_micros.0.saturating_add(extra.0));
        let available = Micros(tenant.available_micros().0.saturating_sub(extra.0));
        if ceiling <= available {
            self.reserved
                .insert(&t.tenant, Micros(extra.0.saturating_add(ceiling.0)));
            tenant.assert_reservation_fits(Micros(reserved.0.saturating_add(ceiling.0)));
            return Ok(ceiling);
        }
        let reason = format!(
            "task `{task}` needs a reservation of {ceiling} but tenant `{}` has {available} available (budget {}, spent {}, reserved {reserved})",
            t.tenant,
            tenant.budget_micros,
            tenant.spent_micros(),
        );
        if reserved > Micros::ZERO {
            Err(Denial::BudgetBusy(reason))
        } else {
            Err(Denial::BudgetExhausted(reason))
        }
    }
}

/// The events that settle an attempt of `task`: an overrun if its costs
/// pass its ceiling (recorded first), its costs by category, the release of
/// what stays reserved, and a status change if the numbers moved the tenant
/// to another status.
pub fn settle(state: &State, task: &TaskId, costs: &[(Category, Micros)]) -> Vec<Event> {
    Settler::new(state).settle(task, costs)
}

/// Settles several attempts in one decision: each sees the spend and the
/// status the ones before it left.
pub struct Settler<'s> {
    state: &'s State,
    policy: Policy,
    /// Per tenant: spend added, overrun, recorded status, in this decision.
    tenants: std::collections::BTreeMap<TenantId, (i64, bool, BudgetStatus)>,
}

impl<'s> Settler<'s> {
    pub fn new(state: &'s State) -> Self {
        Settler::under(Policy::STANDARD, state)
    }

    /// A settler that places statuses with `policy`'s thresholds.
    pub fn under(policy: Policy, state: &'s State) -> Self {
        Settler {
            state,
            policy,
            tenants: std::collections::BTreeMap::new(),
        }
    }

    /// `tenant`'s utilisation (spent of budget, bp) counting what this
    /// decision has posted so far.
    pub fn utilisation_bp(&self, tenant: &TenantId) -> i64 {
        let Some(t) = self.state.tenants.get(tenant) else {
            return 0;
        };
        let added = self.tenants.get(tenant).map_or(0, |e| e.0);
        Micros(t.spent_micros().0.saturating_add(added)).basis_points_of(t.budget_micros)
    }

    pub fn settle(&mut self, task: &TaskId, costs: &[(Category, Micros)]) -> Vec<Event> {
        let Some(t) = self.state.queue.get(task) else {
            return Vec::new();
        };
        let Some(before) = self.state.tenants.get(&t.tenant) else {
            return Vec::new();
        };
        let tenant = t.tenant.clone();
        let total: i64 = costs
            .iter()
            .map(|c| c.1.0.max(0))
            .fold(0i64, i64::saturating_add);
        let reserved = t.reserved_micros.0;
        // Every task is governed: what it spends past its reservation (all
        // of it for a node declared free) is an overrun.
        let overrun = total > reserved;
        let mut events = Vec::new();
        // An overrun is recorded before the costs that cause it, so that no
        // seq shows spend past the reservation without it.
        if overrun {
            events.push(Event::BudgetOverrun {
                tenant: tenant.clone(),
                task: Some(task.clone()),
                amount_micros: Micros(total - reserved),
            });
        }
        events.extend(
            costs
                .iter()
                .filter(|(_, amount)| amount.0 > 0)
                .map(|(category, amount)| Event::CostIncurred {
                    tenant: tenant.clone(),
                    task: Some(task.clone()),
                    category: *category,
                    amount_micros: *amount,
                }),
        );
        if reserved > total {
            events.push(Event::ReservationReleased {
                tenant: tenant.clone(),
                task: task.clone(),
                amount_micros: Micros(reserved - total),
            });
        }
        let entry = self.tenants.entry(tenant.clone()).or_insert((
            0,
            before.overrun,
            before.recorded_status,
        ));
        entry.0 = entry.0.saturating_add(total);
        entry.1 |= overrun;
        let status = status_under(
            &self.policy,
            before.spent_micros().0.saturating_add(entry.0),
            before.budget_micros.0,
            entry.1,
        );
        if status != entry.2 {
            events.push(Event::BudgetStatusChanged {
                tenant,
                from: entry.2,
                to: status,
            });
            entry.2 = status;
        }
        events
    }
}

/// The budget status for `spent` of `budget` (EXCEEDED only with an overrun).
pub fn status_of(spent: i64, budget: i64, overrun: bool) -> BudgetStatus {
    status_under(&Policy::STANDARD, spent, budget, overrun)
}

/// [`status_of`] with `policy`'s thresholds.
pub fn status_under(policy: &Policy, spent: i64, budget: i64, overrun: bool) -> BudgetStatus {
    if overrun {
        return BudgetStatus::Exceeded;
    }
    match Micros(spent).basis_points_of(Micros(budget)) {
        bp if bp >= policy.critical_bp => BudgetStatus::Critical,
        bp if bp >= policy.warning_bp => BudgetStatus::Warning,
        _ => BudgetStatus::Healthy,
    }
}

pub use super::period::period_index;

/// The period resets due at `now`: for each tenant (in id order) whose
/// current budget period began in an earlier period than `now`'s,
/// `budget_period_reset` and, if its recorded status was not HEALTHY, the
/// change back. Every executor pushes these first in each step, so no
/// decision is made on a period that is over. Reads only the tenants whose
/// period ended by `now` (`State::periods_ended_by`), so a step with none
/// due costs the same at ten tenants as at a million.
pub fn period_resets(state: &State, now: Timestamp) -> Vec<Event> {
    let mut due: Vec<&super::budget::Tenant> = state
        .periods_ended_by(now)
        .filter_map(|(tenant, started)| {
            let t = state.tenants.get(tenant)?;
            // Periods only move forward: a run whose clock is behind the
            // ledger's latest reset (a simulated run replaying old days)
            // does not reset again; nor does a `now` outside the calendar.
            super::period::period_over(t.budget_period, started, now).then_some(t)
        })
        .collect();
    due.sort_unstable_by(|a, b| a.tenant.cmp(&b.tenant));
    let mut events = Vec::new();
    for t in due {
        events.push(Event::BudgetPeriodReset {
            tenant: t.tenant.clone(),
        });
        if t.recorded_status != BudgetStatus::Healthy {
            events.push(Event::BudgetStatusChanged {
                tenant: t.tenant.clone(),
                from: t.recorded_status,
                to: BudgetStatus::Healthy,
            });
        }
    }
    events
}

/// Whether `task` went through the gate for its next attempt and waits for
/// its lease — it holds a reservation or a learning choice (the Redis queue
/// admits at dispatch and leases when a worker claims). The coordinator and
/// `replay --check` agree on it through this one rule.
pub fn admitted(state: &State, task: &TaskId) -> bool {
    state.queue.get(task).is_some_and(|t| {
        t.status == super::queue::TaskStatus::Pending
            && (t.reserved_micros > Micros::ZERO || state.learning.has_pending(task))
    })
}

/// The reservation an attempt of `t` with `params` needs: its declared
/// ceiling, or — when a degradation plan or a learning choice changed the
/// params of a `sim` node — what the changed step can cost at most.
pub fn node_ceiling(t: &super::queue::Task, params: &super::event::Params) -> Micros {
    if t.handler == "sim" && *params != t.params {
        return super::cost::cost_ceiling(params).min(t.cost_ceiling_micros);
    }
    t.cost_ceiling_micros
}
