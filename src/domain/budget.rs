//! The tenant budget projection: budget, reservations, spend by category,
//! status and concurrent pipeline runs.
//!
//! Invariant kept by validation: a reservation never takes `spent +
//! reserved` past the budget. Spend itself is never refused (a cost that
//! happened is a fact); EXCEEDED is reached only through a recorded
//! `budget_overrun`, and an overrun needs spend behind it: a tenant-wide
//! one (no task) the tenant's `spent + reserved` past its budget by at
//! least its amount at its seq; one naming a task ([`OverrunCover`]) that
//! task's spend past its reservation, recorded in the same append (or command of a step) — the
//! settler records the overrun just before the costs that cause it.

use bincode::{Decode, Encode};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::event::{BudgetPeriod, BudgetStatus, Category, Event, LearningIntensity};
use super::ids::{TaskId, TenantId};
use super::journal::{Journaled, Undo};
use super::money::Micros;
use super::policy::{CRITICAL_BP, WARNING_BP};
use super::rejection::Rejection;

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Encode, Decode)]
pub struct Tenant {
    pub tenant: TenantId,
    pub budget_micros: Micros,
    pub max_concurrent_runs: u32,
    pub learning_intensity: LearningIntensity,
    pub meta_learning: bool,
    pub budget_period: BudgetPeriod,
    /// Spend of the current period by category, indexed by `Category::index`.
    pub spent_by_category: [Micros; 6],
    pub reserved_micros: Micros,
    /// Spend over all periods.
    pub lifetime_spent_micros: Micros,
    pub overrun: bool,
    pub overrun_micros: Micros,
    /// The status last recorded by a `budget_status_changed` event.
    pub recorded_status: BudgetStatus,
    /// Pipeline instances with unfinished tasks.
    pub active_runs: u32,
    pub peak_active_runs: u32,
    pub admissions_denied: u64,
    pub period_resets: u32,
    /// The highest `spent + reserved` share of the budget at any seq so
    /// far, in basis points: above 10,000 only after an overrun or
    /// imported costs.
    pub peak_committed_bp: i64,
}

impl Tenant {
    pub fn spent_micros(&self) -> Micros {
        spent_of(&self.spent_by_category)
    }

    /// Whether `costs` can be posted one after the other (each a
    /// `cost_incurred`): no amount is negative and none takes a spend
    /// counter past 64-bit micros.
    pub fn can_incur(
        &self,
        costs: impl IntoIterator<Item = (Category, Micros)>,
    ) -> Result<(), Rejection> {
        let mut by_category = self.spent_by_category;
        let mut lifetime = self.lifetime_spent_micros;
        for (category, amount) in costs {
            non_negative("amount_micros", amount)?;
            let spent = spent_of(&by_category);
            let slot = &mut by_category[category.index()];
            let (Some(in_category), Some(all_periods), Some(_)) = (
                slot.checked_add(amount),
                lifetime.checked_add(amount),
                spent.checked_add(amount),
            ) else {
                return Err(Rejection::Overflow);
            };
            *slot = in_category;
            lifetime = all_periods;
        }
        Ok(())
    }

    fn note_peak(&mut self) {
        let committed = Micros(self.spent_micros().0.saturating_add(self.reserved_micros.0));
        self.peak_committed_bp = self
            .peak_committed_bp
            .max(committed.basis_points_of(self.budget_micros));
    }

    /// Spent share of the budget, in basis points.
    pub fn utilisation_bp(&self) -> i64 {
        self.spent_micros().basis_points_of(self.budget_micros)
    }

    /// The status the numbers give now.
    pub fn status(&self) -> BudgetStatus {
        if self.overrun {
            return BudgetStatus::Exceeded;
        }
        match self.utilisation_bp() {
            bp if bp >= CRITICAL_BP => BudgetStatus::Critical,
            bp if bp >= WARNING_BP => BudgetStatus::Warning,
            _ => BudgetStatus::Healthy,
        }
    }

    /// Asserts what every reservation leaves: `spent + reserved ≤ budget`
    /// with `reserved` reserved in all. Validation refuses a reservation
    /// past the budget, and the admitter never decides one, so this holds
    /// after each; only spend goes past the budget (an overrun, or costs
    /// imported without a task), and neither reserves.
    pub fn assert_reservation_fits(&self, reserved: Micros) {
        let spent = self.spent_micros();
        let committed = spent.0.saturating_add(reserved.0);
        assert!(
            committed <= self.budget_micros.0,
            "tenant `{}`: a reservation takes spent {spent} + reserved {reserved} past its budget {}",
            self.tenant,
            self.budget_micros
        );
    }

    /// Budget not yet spent or reserved (may be negative after an overrun).
    pub fn available_micros(&self) -> Micros {
        Micros(
            self.budget_micros
                .0
                .saturating_sub(self.spent_micros().0)
                .saturating_sub(self.reserved_micros.0),
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tenants {
    tenants: Journaled<FxHashMap<TenantId, Tenant>>,
}

impl Undo for Tenants {
    fn record(&mut self, on: bool) {
        self.tenants.record(on);
    }
    fn mark(&mut self) {
        self.tenants.mark();
    }
    fn undo(&mut self) {
        self.tenants.undo();
    }
}

/// The spend of all categories (saturating).
fn spent_of(by_category: &[Micros; 6]) -> Micros {
    Micros(
        by_category
            .iter()
            .map(|m| m.0)
            .fold(0i64, i64::saturating_add),
    )
}

fn non_negative(field: &'static str, amount: Micros) -> Result<(), Rejection> {
    if amount.is_negative() {
        return Err(Rejection::Negative {
            field,
            value: amount.0,
        });
    }
    Ok(())
}

impl Tenants {
    pub fn get(&self, tenant: &TenantId) -> Option<&Tenant> {
        self.tenants.get(tenant)
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    pub fn sorted(&self) -> Vec<&Tenant> {
        let mut all: Vec<_> = self.tenants.values().collect();
        all.sort_unstable_by(|a, b| a.tenant.cmp(&b.tenant));
        all
    }

    fn tenant(&self, tenant: &TenantId) -> Result<&Tenant, Rejection> {
        self.tenants
            .get(tenant)
            .ok_or_else(|| Rejection::UnknownTenant(tenant.clone()))
    }

    /// Checks a tenant or money event. `task_tenant` is the owner of the
    /// event's task and `task_reserved` its open reservation, looked up by
    /// the caller in the queue projection.
    pub fn validate(
        &self,
        event: &Event,
        task_tenant: Option<&TenantId>,
        task_reserved: Micros,
    ) -> Result<(), Rejection> {
        let owned_by = |tenant: &TenantId, task: &TaskId| -> Result<(), Rejection> {
            match task_tenant {
                None => Err(Rejection::UnknownTask(task.clone())),
                Some(owner) if owner != tenant => Err(Rejection::ForeignTask {
                    task: task.clone(),
                    owner: owner.clone(),
                    tenant: tenant.clone(),
                }),
                Some(_) => Ok(()),
            }
        };
        match event {
            Event::TenantRegistered {
                tenant,
                budget_micros,
                ..
            } => {
                if tenant.as_str().is_empty() {
                    return Err(Rejection::Empty { field: "tenant" });
                }
                if self.tenants.contains_key(tenant) {
                    return Err(Rejection::DuplicateTenant(tenant.clone()));
                }
                non_negative("budget_micros", *budget_micros)
            }
            Event::TenantUpdated {
                tenant,
                budget_micros,
                ..
            } => {
                self.tenant(tenant)?;
                match budget_micros {
                    Some(budget) => non_negative("budget_micros", *budget),
                    None => Ok(()),
                }
            }
            Event::TaskSubmitted {
                tenant,
                cost_ceiling_micros,
                ..
            } => {
                self.tenant(tenant)?;
                non_negative("cost_ceiling_micros", *cost_ceiling_micros)
            }
            Event::CostReserved {
                tenant,
                task,
                amount_micros,
            } => {
                let t = self.tenant(tenant)?;
                owned_by(tenant, task)?;
                non_negative("amount_micros", *amount_micros)?;
                let spent = t.spent_micros();
                let committed = spent
                    .checked_add(t.reserved_micros)
                    .and_then(|c| c.checked_add(*amount_micros))
                    .ok_or(Rejection::Overflow)?;
                if committed > t.budget_micros {
                    return Err(Rejection::BudgetExceeded {
                        tenant: tenant.clone(),
                        task: task.clone(),
                        amount: *amount_micros,
                        spent,
                        reserved: t.reserved_micros,
                        budget: t.budget_micros,
                    });
                }
                Ok(())
            }
            Event::CostIncurred {
                tenant,
                task,
                category,
                amount_micros,
            } => {
                let t = self.tenant(tenant)?;
                if let Some(task) = task {
                    owned_by(tenant, task)?;
                }
                t.can_incur([(*category, *amount_micros)])
            }
            Event::ReservationReleased {
                tenant,
                task,
                amount_micros,
            } => {
                self.tenant(tenant)?;
                owned_by(tenant, task)?;
                non_negative("amount_micros", *amount_micros)?;
                if *amount_micros > task_reserved {
                    return Err(Rejection::ReleaseExceedsReservation {
                        task: task.clone(),
                        amount: *amount_micros,
                        reserved: task_reserved,
                    });
                }
                Ok(())
            }
            Event::BudgetOverrun {
                tenant,
                task,
                amount_micros,
            } => {
                let t = self.tenant(tenant)?;
                non_negative("amount_micros", *amount_micros)?;
                if let Some(task) = task {
                    // Covered by the task's spend in the same append or command (see
                    // `OverrunCover`), which may come after it.
                    return owned_by(tenant, task);
                }
                let committed = t.spent_micros().0.saturating_add(t.reserved_micros.0);
                let behind = committed.saturating_sub(t.budget_micros.0).max(0);
                if amount_micros.0 > behind {
                    return Err(Rejection::TenantOverrunWithoutCost {
                        tenant: tenant.clone(),
                        amount: *amount_micros,
                        spent: t.spent_micros(),
                        reserved: t.reserved_micros,
                        budget: t.budget_micros,
                        behind: Micros(behind),
                    });
                }
                Ok(())
            }
            Event::BudgetStatusChanged { tenant, from, to } => {
                let t = self.tenant(tenant)?;
                if *from != t.recorded_status {
                    return Err(Rejection::StatusMismatch {
                        tenant: tenant.clone(),
                        claimed: *from,
                        actual: t.recorded_status,
                    });
                }
                if *to != t.status() {
                    return Err(Rejection::StatusMismatch {
                        tenant: tenant.clone(),
                        claimed: *to,
                        actual: t.status(),
                    });
                }
                Ok(())
            }
            Event::BudgetPeriodReset { tenant }
            | Event::LearningProfileAdjusted { tenant, .. }
            | Event::DegradationDecided { tenant, .. } => self.tenant(tenant).map(drop),
            Event::AdmissionDenied { tenant, task, .. }
            | Event::LearningOutcome { tenant, task, .. } => {
                self.tenant(tenant)?;
                match task {
                    Some(task) => owned_by(tenant, task),
                    None => Ok(()),
                }
            }
            Event::LearningArmChosen { tenant, task, .. } => {
                self.tenant(tenant)?;
                owned_by(tenant, task)
            }
            _ => Ok(()),
        }
    }

    /// Applies a tenant or money event (assumed valid). Returns how much of
    /// the event's task reservation it consumed or released, so the queue
    /// projection can follow.
    pub fn evolve(&mut self, event: &Event, task_reserved: Micros) -> Micros {
        match event {
            Event::TenantRegistered {
                tenant,
                budget_micros,
                max_concurrent_runs,
                learning_intensity,
                meta_learning,
                budget_period,
            } => {
                self.tenants.insert(
                    tenant.clone(),
                    Tenant {
                        tenant: tenant.clone(),
                        budget_micros: *budget_micros,
                        max_concurrent_runs: *max_concurrent_runs,
                        learning_intensity: *learning_intensity,
                        meta_learning: *meta_learning,
                        budget_period: *budget_period,
                        spent_by_category: [Micros::ZERO; 6],
                        reserved_micros: Micros::ZERO,
                        lifetime_spent_micros: Micros::ZERO,
                        overrun: false,
                        overrun_micros: Micros::ZERO,
                        recorded_status: BudgetStatus::Healthy,
                        active_runs: 0,
                        peak_active_runs: 0,
                        admissions_denied: 0,
                        period_resets: 0,
                        peak_committed_bp: 0,
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
                if let Some(t) = self.tenants.get_mut(tenant) {
                    if let Some(v) = budget_micros {
                        t.budget_micros = *v;
                    }
                    if let Some(v) = max_concurrent_runs {
                        t.max_concurrent_runs = *v;
                    }
                    if let Some(v) = learning_intensity {
                        t.learning_intensity = *v;
                    }
                    if let Some(v) = meta_learning {
                        t.meta_learning = *v;
                    }
                    if let Some(v) = budget_period {
                        t.budget_period = *v;
                    }
                    t.note_peak();
                }
            }
            Event::CostReserved {
                tenant,
                amount_micros,
                ..
            } => {
                if let Some(t) = self.tenants.get_mut(tenant) {
                    t.reserved_micros.0 += amount_micros.0;
                    t.note_peak();
                }
            }
            Event::CostIncurred {
                tenant,
                task,
                category,
                amount_micros,
            } => {
                if let Some(t) = self.tenants.get_mut(tenant) {
                    t.spent_by_category[category.index()].0 += amount_micros.0;
                    t.lifetime_spent_micros.0 += amount_micros.0;
                    // Posting a task's cost consumes its reservation first.
                    let consumed = if task.is_some() {
                        consumed(*amount_micros, task_reserved)
                    } else {
                        Micros::ZERO
                    };
                    t.reserved_micros.0 -= consumed.0;
                    t.note_peak();
                    return consumed;
                }
            }
            Event::ReservationReleased {
                tenant,
                amount_micros,
                ..
            } => {
                if let Some(t) = self.tenants.get_mut(tenant) {
                    t.reserved_micros.0 -= amount_micros.0;
                    return *amount_micros;
                }
            }
            Event::BudgetOverrun {
                tenant,
                amount_micros,
                ..
            } => {
                if let Some(t) = self.tenants.get_mut(tenant) {
                    t.overrun = true;
                    t.overrun_micros.0 = t.overrun_micros.0.saturating_add(amount_micros.0);
                }
            }
            Event::BudgetStatusChanged { tenant, to, .. } => {
                if let Some(t) = self.tenants.get_mut(tenant) {
                    t.recorded_status = *to;
                }
            }
            Event::BudgetPeriodReset { tenant } => {
                if let Some(t) = self.tenants.get_mut(tenant) {
                    t.spent_by_category = [Micros::ZERO; 6];
                    t.overrun = false;
                    t.period_resets += 1;
                }
            }
            Event::AdmissionDenied { tenant, .. } => {
                if let Some(t) = self.tenants.get_mut(tenant) {
                    t.admissions_denied += 1;
                }
            }
            _ => {}
        }
        Micros::ZERO
    }

    /// A pipeline instance of `tenant` got its first open task.
    pub(crate) fn run_opened(&mut self, tenant: &TenantId) {
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.active_runs += 1;
            t.peak_active_runs = t.peak_active_runs.max(t.active_runs);
        }
    }

    /// A pipeline instance of `tenant` has no open task left.
    pub(crate) fn run_closed(&mut self, tenant: &TenantId) {
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.active_runs = t.active_runs.saturating_sub(1);
        }
    }
}

/// How much of a task's open reservation `task_reserved` a cost of
/// `amount` posted on the task consumes; the rest is spend past it.
pub fn consumed(amount: Micros, task_reserved: Micros) -> Micros {
    amount.min(task_reserved)
}

/// Within one append (a batch, or one decision step), the overruns that
/// name a task must be covered by that task's spend past its reservation
/// recorded in the same append (a command, in a step), before or after them: the settler records
/// an overrun just before the costs that cause it, older ledgers just
/// after. The writer notes every event of an append on the state just
/// before it, then checks the whole append.
#[derive(Debug, Default)]
pub struct OverrunCover {
    /// Per task: spend past its reservation, overrun claimed, and the
    /// append index of its first overrun.
    tasks: FxHashMap<TaskId, (i64, i64, usize)>,
}

impl OverrunCover {
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes `event`, the `index`-th of the append; `task_reserved` is its
    /// task's open reservation just before it.
    pub fn note(&mut self, index: usize, event: &Event, task_reserved: Micros) {
        match event {
            Event::CostIncurred {
                task: Some(task),
                amount_micros,
                ..
            } => {
                let amount = Micros(amount_micros.0.max(0));
                let past = amount.0 - consumed(amount, task_reserved).0;
                if past > 0 {
                    let entry = self.tasks.entry(task.clone()).or_insert((0, 0, index));
                    entry.0 = entry.0.saturating_add(past);
                }
            }
            Event::BudgetOverrun {
                task: Some(task),
                amount_micros,
                ..
            } => {
                let entry = self.tasks.entry(task.clone()).or_insert((0, 0, index));
                if entry.1 == 0 {
                    entry.2 = index;
                }
                entry.1 = entry.1.saturating_add(amount_micros.0);
            }
            _ => {}
        }
    }

    /// The first overrun of the append (its index) that its task's spend
    /// does not cover.
    pub fn check(&self) -> Result<(), (usize, Rejection)> {
        let first = self
            .tasks
            .iter()
            .filter(|(_, (past, claimed, _))| claimed > past)
            .min_by_key(|(_, (_, _, index))| *index);
        match first {
            None => Ok(()),
            Some((task, (past, claimed, index))) => Err((
                *index,
                Rejection::OverrunWithoutCost {
                    task: task.clone(),
                    claimed: Micros(*claimed),
                    behind: Micros(*past),
                },
            )),
        }
    }
}
