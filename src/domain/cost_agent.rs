//! The cost agent: before a pipeline node runs, project what the tenant
//! will spend and decide CONTINUE, DEGRADE or TERMINATE.
//!
//! Projection: what is spent and reserved, plus the cost ceilings of the
//! node and everything downstream of it (the remaining DAG), plus that much
//! again for each other concurrent run of the tenant weighted by a
//! confidence that falls as concurrency rises (`10,000 / runs` bp).
//! TERMINATE when the budget is exceeded, or projected to be even with the
//! degradation plan; DEGRADE when projected to exceed without the plan,
//! when utilisation passes 90 % or the concurrency factor 80 %; else
//! CONTINUE. The plan skips optional nodes, cuts generation candidates to
//! one, retrieval depth to three, and steps the model down. Pure: the
//! decision, its inputs, its projection and its plan are one event.

use serde::Serialize;

use super::cost::Plan;
use super::event::{Decision, Event, Params};
use super::ids::TaskId;
use super::money::Micros;
use super::policy::Policy;
use super::state::State;

/// The decision's inputs and projection, recorded with it. Fields in the
/// order of their names: serialized, the JSON is canonical as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Projection {
    pub active_runs: u32,
    pub budget_micros: i64,
    pub concurrency_factor_bp: i64,
    pub confidence_bp: i64,
    pub max_concurrent_runs: u32,
    pub projected_degraded_micros: i64,
    pub projected_micros: i64,
    pub remaining_degraded_micros: i64,
    pub remaining_micros: i64,
    pub reserved_micros: i64,
    pub spent_micros: i64,
    pub utilisation_bp: i64,
}

/// The `details` of a `degradation_decided` event, fields in name order.
#[derive(Serialize)]
struct Details<'a> {
    plan: Option<&'a Plan>,
    projection: &'a Projection,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostDecision {
    pub decision: Decision,
    pub reason: String,
    pub projection: Projection,
    pub plan: Option<Plan>,
}

impl CostDecision {
    /// The `degradation_decided` event that records it.
    pub fn event(&self, state: &State, task: &TaskId) -> Option<Event> {
        let t = state.queue.get(task)?;
        // Every struct in it serializes its fields in name order, so the
        // text is canonical without a detour through a sorted map.
        let details = Params::from_canonical_json(
            serde_json::to_string(&Details {
                plan: self.plan.as_ref(),
                projection: &self.projection,
            })
            .unwrap_or_default(),
        );
        Some(Event::DegradationDecided {
            tenant: t.tenant.clone(),
            run: t.run.clone(),
            task: Some(task.clone()),
            decision: self.decision,
            reason: self.reason.clone(),
            details,
        })
    }
}

/// Decides for `task` (about to run) under the standard policy. `None` for
/// a node declared free (a ceiling of 0): it reserves nothing and has
/// nothing to project, and whatever it spends is an overrun.
pub fn decide(state: &State, task: &TaskId) -> Option<CostDecision> {
    decide_under(&Policy::STANDARD, state, task)
}

/// [`decide`] with `policy`'s thresholds.
pub fn decide_under(policy: &Policy, state: &State, task: &TaskId) -> Option<CostDecision> {
    let t = state.queue.get(task)?;
    // A node declared free has nothing to project.
    if t.cost_ceiling_micros == Micros::ZERO {
        return None;
    }
    let tenant = state.tenants.get(&t.tenant)?;
    let runs = tenant.active_runs.max(1);
    let confidence_bp = 10_000 / i64::from(runs);
    let (rest, rest_degraded) = state.queue.remaining(task);
    let plan = Plan::STANDARD;
    let committed = tenant
        .spent_micros()
        .0
        .saturating_add(tenant.reserved_micros.0);
    let project = |rest: i64| {
        let others = i128::from(rest) * i128::from(runs - 1) * i128::from(confidence_bp) / 10_000;
        committed
            .saturating_add(rest)
            .saturating_add(i64::try_from(others).unwrap_or(i64::MAX))
    };
    let projection = Projection {
        budget_micros: tenant.budget_micros.0,
        spent_micros: tenant.spent_micros().0,
        reserved_micros: tenant.reserved_micros.0,
        active_runs: tenant.active_runs,
        max_concurrent_runs: tenant.max_concurrent_runs,
        remaining_micros: rest,
        remaining_degraded_micros: rest_degraded,
        confidence_bp,
        projected_micros: project(rest),
        projected_degraded_micros: project(rest_degraded),
        utilisation_bp: Micros(committed).basis_points_of(tenant.budget_micros),
        concurrency_factor_bp: i64::from(tenant.active_runs) * 10_000
            / i64::from(tenant.max_concurrent_runs.max(1)),
    };
    let budget = tenant.budget_micros.0;
    let (decision, reason, plan) =
        if tenant.overrun || tenant.spent_micros().0 >= budget && budget > 0 {
            (
                Decision::Terminate,
                "the budget is exceeded".to_owned(),
                None,
            )
        } else if projection.projected_micros > budget {
            if projection.projected_degraded_micros <= budget {
                let reason = format!(
                    "projected {} > budget {}; degraded {} fits",
                    Micros(projection.projected_micros),
                    Micros(budget),
                    Micros(projection.projected_degraded_micros)
                );
                (Decision::Degrade, reason, Some(plan))
            } else {
                let reason = format!(
                    "projected {} > budget {}, {} even degraded",
                    Micros(projection.projected_micros),
                    Micros(budget),
                    Micros(projection.projected_degraded_micros)
                );
                (Decision::Terminate, reason, None)
            }
        } else if projection.utilisation_bp > policy.degrade_utilisation_bp {
            (
                Decision::Degrade,
                format!(
                    "utilisation {} bp > {} bp",
                    projection.utilisation_bp, policy.degrade_utilisation_bp
                ),
                Some(plan),
            )
        } else if projection.concurrency_factor_bp > policy.degrade_concurrency_bp {
            (
                Decision::Degrade,
                format!(
                    "concurrency factor {} bp > {} bp",
                    projection.concurrency_factor_bp, policy.degrade_concurrency_bp
                ),
                Some(plan),
            )
        } else {
            (Decision::Continue, "within budget".to_owned(), None)
        };
    Some(CostDecision {
        decision,
        reason,
        projection,
        plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `details` serialized straight from the structs is the text the
    /// sorted-map route gives: canonical, so equal decisions encode equal.
    #[test]
    fn decision_details_are_canonical_json() {
        let projection = Projection {
            active_runs: 2,
            budget_micros: 10_000,
            concurrency_factor_bp: 5_000,
            confidence_bp: 5_000,
            max_concurrent_runs: 4,
            projected_degraded_micros: 7_000,
            projected_micros: 12_000,
            remaining_degraded_micros: 3_000,
            remaining_micros: 8_000,
            reserved_micros: 1_000,
            spent_micros: 3_000,
            utilisation_bp: 4_000,
        };
        let mut state = State::new();
        let events = [
            Event::TenantRegistered {
                tenant: "t".into(),
                budget_micros: Micros(10_000),
                max_concurrent_runs: 4,
                learning_intensity: Default::default(),
                meta_learning: false,
                budget_period: Default::default(),
            },
            Event::RunStarted {
                run: "r".into(),
                seed: 1,
                config_hash: String::new(),
            },
            Event::TaskSubmitted {
                run: "r".into(),
                task: "a".into(),
                tenant: "t".into(),
                priority: Default::default(),
                deps: Vec::new(),
                pipeline: None,
                cost_ceiling_micros: Micros(10),
                handler: "sim".into(),
                params: Params::null(),
                max_attempts: 1,
                optional: false,
            },
        ];
        for (i, e) in events.iter().enumerate() {
            state
                .apply(i as u64 + 1, super::super::time::Timestamp(0), e)
                .unwrap();
        }
        for plan in [None, Some(Plan::STANDARD)] {
            let decision = CostDecision {
                decision: Decision::Degrade,
                reason: String::new(),
                projection: projection.clone(),
                plan: plan.clone(),
            };
            let Some(Event::DegradationDecided { details, .. }) =
                decision.event(&state, &"a".into())
            else {
                panic!("no event");
            };
            let sorted =
                Params::from_value(&serde_json::json!({ "projection": projection, "plan": plan }));
            assert_eq!(details, sorted);
        }
    }
}
