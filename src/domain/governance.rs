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

use super::event::{BudgetPeriod, BudgetStatus, Category, Event};
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

/// Which budget period `at` falls in: the UTC day or calendar month since
/// the epoch; `None` for tenants without a period.
pub fn period_index(period: BudgetPeriod, at: Timestamp) -> Option<i64> {
    const DAY_MICROS: i64 = 86_400_000_000;
    match period {
        BudgetPeriod::None => None,
        BudgetPeriod::Daily => Some(at.0.div_euclid(DAY_MICROS)),
        BudgetPeriod::Monthly => {
            use chrono::Datelike;
            let dt = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(at.0)?;
            Some(i64::from(dt.year()) * 12 + i64::from(dt.month0()))
        }
    }
}

/// The period resets due at `now`: for each tenant (in id order) whose
/// current budget period began in an earlier period than `now`'s,
/// `budget_period_reset` and, if its recorded status was not HEALTHY, the
/// change back. Every executor pushes these first in each step, so no
/// decision is made on a period that is over.
pub fn period_resets(state: &State, now: Timestamp) -> Vec<Event> {
    let mut events = Vec::new();
    for t in state.tenants.sorted() {
        let Some(started) = state.period_started(&t.tenant) else {
            continue;
        };
        let (Some(a), Some(b)) = (
            period_index(t.budget_period, started),
            period_index(t.budget_period, now),
        ) else {
            continue;
        };
        // Periods only move forward: a run whose clock is behind the
        // ledger's latest reset (a simulated run replaying old days) does
        // not reset again.
        if b <= a {
            continue;
        }
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

/// What to do with a ready task about to be handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Run it with these params (a degradation plan may have changed
    /// them), reserving this much.
    Run {
        params: super::event::Params,
        reserve: Micros,
    },
    /// Not now: its budget is busy; it stays ready.
    Wait,
    /// It ended without running (terminated, skipped or refused); the
    /// events say how.
    Ended,
}

/// The cost agent, the learning policy and admission in front of every
/// attempt, shared by both executors. It remembers, per task, the last
/// verdict and whether a denial was recorded, so a task that waits is not
/// re-recorded each time it is looked at.
#[derive(Debug, Default)]
pub struct Gate {
    /// The run's seed, for the learning policy's draws.
    seed: u64,
    policy: Policy,
    last_verdict: std::collections::BTreeMap<TaskId, super::event::Decision>,
    waiting: std::collections::BTreeSet<TaskId>,
}

impl Gate {
    pub fn new(seed: u64) -> Self {
        Gate::under(Policy::STANDARD, seed)
    }

    /// A gate whose cost agent decides with `policy`'s thresholds.
    pub fn under(policy: Policy, seed: u64) -> Self {
        Gate {
            seed,
            policy,
            ..Gate::default()
        }
    }

    /// Decides for ready `task`, pushing the events to record onto
    /// `events`. `gone` holds the tasks this decision already ended (so a
    /// shared dependant is cancelled once).
    pub fn start(
        &mut self,
        state: &State,
        admitter: &mut Admitter,
        task: &TaskId,
        gone: &mut std::collections::BTreeSet<TaskId>,
        events: &mut Vec<Event>,
    ) -> Start {
        use super::cost_agent;
        use super::event::Decision;
        let Some(t) = state.queue.get(task) else {
            return Start::Ended;
        };
        // The cost agent decides before the node runs; a verdict is
        // recorded when it differs from the task's last one.
        let verdict = cost_agent::decide_under(&self.policy, state, task);
        if let Some(v) = &verdict {
            if self.last_verdict.get(task) != Some(&v.decision) {
                self.last_verdict.insert(task.clone(), v.decision);
                events.extend(v.event(state, task));
            }
        }
        let (decision, plan, why) = match &verdict {
            Some(v) => (v.decision, v.plan.as_ref(), v.reason.as_str()),
            None => (Decision::Continue, None, ""),
        };
        if decision == Decision::Terminate {
            self.end(
                state,
                task,
                format!("terminated by the cost agent: {why}"),
                None,
                gone,
                events,
            );
            return Start::Ended;
        }
        if t.optional && plan.is_some_and(|p| p.skip_optional) {
            self.waiting.remove(task);
            gone.insert(task.clone());
            events.push(Event::TaskSkipped {
                task: task.clone(),
                reason: format!("skipped by the degradation plan: {why}"),
            });
            return Start::Ended;
        }
        // The learning policy picks among the values the node offers (and
        // does not explore under a degradation), then the plan applies.
        let choice = super::learning::offered(&t.params).map(|(param, values)| {
            let budget = state
                .tenants
                .get(&t.tenant)
                .map_or(Micros::ZERO, |x| x.budget_micros);
            state.learning.choose(
                &t.tenant,
                budget,
                t.cost_ceiling_micros,
                &param,
                &values,
                decision == Decision::Continue,
                self.seed,
                task.draw_key(&t.run),
                t.attempts + 1,
            )
        });
        let mut params = match &choice {
            Some(c) => c.apply(&t.params),
            None => t.params.clone(),
        };
        if let Some(plan) = plan {
            params = plan.apply(&params);
        }
        // What runs is what the policy learns about: a value the plan
        // changed is recorded as run.
        let choice = choice.map(|mut c| {
            let ran = params
                .to_value()
                .get(&c.param)
                .and_then(|v| v.as_str().map(str::to_owned));
            if let Some(ran) = ran.filter(|ran| *ran != c.value) {
                c.reason = format!(
                    "{}; the degradation plan runs `{ran}` instead of `{}`",
                    c.reason, c.value
                );
                c.value = ran;
            }
            c
        });
        match admitter.admit_at(task, node_ceiling(t, &params)) {
            Ok(reserve) => {
                self.waiting.remove(task);
                events.extend(choice.map(|c| c.event(&t.tenant, task)));
                Start::Run { params, reserve }
            }
            Err(denial) if denial.may_wait() => {
                // Recorded once per wait; the task stays ready.
                if self.waiting.insert(task.clone()) {
                    events.push(Event::AdmissionDenied {
                        tenant: t.tenant.clone(),
                        task: Some(task.clone()),
                        reason: denial.reason().to_owned(),
                    });
                }
                Start::Wait
            }
            Err(denial) => {
                let reason = denial.reason().to_owned();
                self.end(
                    state,
                    task,
                    format!("not admitted: {reason}"),
                    Some(reason),
                    gone,
                    events,
                );
                Start::Ended
            }
        }
    }

    /// Cancels `task` and its dependants, after an admission denial when
    /// `denied` gives its reason.
    fn end(
        &mut self,
        state: &State,
        task: &TaskId,
        reason: String,
        denied: Option<String>,
        gone: &mut std::collections::BTreeSet<TaskId>,
        events: &mut Vec<Event>,
    ) {
        self.waiting.remove(task);
        if let (Some(denied), Some(t)) = (denied, state.queue.get(task)) {
            events.push(Event::AdmissionDenied {
                tenant: t.tenant.clone(),
                task: Some(task.clone()),
                reason: denied,
            });
        }
        gone.insert(task.clone());
        events.push(Event::TaskCancelled {
            task: task.clone(),
            reason: reason.clone(),
        });
        for child in super::scheduler::dependants_to_cancel(state, task) {
            if gone.insert(child.clone()) {
                events.push(Event::TaskCancelled {
                    task: child,
                    reason: reason.clone(),
                });
            }
        }
    }
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
        return super::sim::cost_ceiling(params).min(t.cost_ceiling_micros);
    }
    t.cost_ceiling_micros
}
