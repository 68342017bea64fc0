//! Learning: each tenant's profile (intensity, exploration share, what its
//! own outcomes taught it per arm) and the policy that chooses an arm for a
//! node that offers a choice.
//!
//! A node offers a choice with a `learn` param: `learn = { model = ["large",
//! "medium", "small"] }` lets the policy pick the node's `model`. The policy
//! is an ε-greedy bandit with a budget: it runs the arm with the best mean
//! reward the tenant has seen (the first listed while it has seen none) and
//! explores another with probability `exploration_bp` — but only while the
//! tenant's exploration spend stays under `exploration_bp` of its budget,
//! and never under a degradation. Every choice is a `learning_arm_chosen`
//! event, every attempt's result a `learning_outcome`; changes of the
//! exploration share with utilisation are `learning_profile_adjusted`.
//!
//! Isolation: a tenant's profile changes only through its own events. A
//! tenant that opts into meta-learning also sees, for arms it has not tried,
//! the mean reward over all opted-in tenants — only as an aggregate, with
//! Laplace noise of scale `2 × 10,000 / ε` on the reward sum and `2 / ε` on
//! the count (ε = [`META_EPSILON`], split between the two; one outcome
//! changes the sum by at most 10,000 bp and the count by 1). The noise is
//! drawn from the run's seed and the aggregate's size, so the same aggregate
//! always reads the same, and a replay chooses the same.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::draw::draw;
use super::event::{Event, LearningIntensity, Params};
use super::ids::{TaskId, TenantId};
use super::money::Micros;
use super::policy::Policy;

/// The privacy parameter of meta-learning: ε of the ε-differentially
/// private release of one aggregate (per arm).
pub const META_EPSILON: f64 = 1.0;
/// The most arms a node may offer.
pub const MAX_ARMS: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Encode, Decode)]
pub struct ArmStats {
    pub pulls: u64,
    pub reward_bp_sum: i64,
    pub cost_micros: Micros,
}

impl ArmStats {
    fn add(&mut self, reward_bp: i32, cost: Micros) {
        self.pulls += 1;
        self.reward_bp_sum = self.reward_bp_sum.saturating_add(i64::from(reward_bp));
        self.cost_micros.0 = self.cost_micros.0.saturating_add(cost.0);
    }

    /// Mean reward in bp, if pulled.
    pub fn mean_bp(&self) -> Option<i64> {
        (self.pulls > 0).then(|| self.reward_bp_sum / self.pulls as i64)
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Encode, Decode)]
pub struct LearningProfile {
    pub tenant: TenantId,
    pub intensity: LearningIntensity,
    /// Share of budget the policy may explore with, in basis points; also
    /// the probability of exploring at a choice.
    pub exploration_bp: u32,
    pub meta_learning: bool,
    pub adjustments: u32,
    pub outcomes: u64,
    pub reward_bp_sum: i64,
    pub cost_micros: Micros,
    /// Choices that explored; what their outcomes cost this budget
    /// period; explored attempts still running.
    pub explorations: u64,
    pub exploration_spent_micros: Micros,
    pub explorations_in_flight: u32,
    /// Per arm, keyed `param=value` (e.g. `model=small`).
    pub arms: BTreeMap<String, ArmStats>,
}

impl LearningProfile {
    fn new(tenant: &TenantId, intensity: LearningIntensity, meta_learning: bool) -> Self {
        LearningProfile {
            tenant: tenant.clone(),
            intensity,
            exploration_bp: intensity.exploration_bp(),
            meta_learning,
            adjustments: 0,
            outcomes: 0,
            reward_bp_sum: 0,
            cost_micros: Micros::ZERO,
            explorations: 0,
            exploration_spent_micros: Micros::ZERO,
            explorations_in_flight: 0,
            arms: BTreeMap::new(),
        }
    }
}

/// A choice made for an attempt that has not reported its outcome yet.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode)]
struct Pending {
    tenant: TenantId,
    arm: String,
    explored: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Learning {
    profiles: FxHashMap<TenantId, LearningProfile>,
    /// Choices awaiting their outcome, by task.
    pending: FxHashMap<TaskId, Pending>,
    /// Per arm, the outcomes of every tenant that opted into meta-learning.
    meta: BTreeMap<String, ArmStats>,
}

/// What the learning projection's digest covers.
#[derive(Encode)]
pub struct LearningDigest<'a> {
    profiles: Vec<&'a LearningProfile>,
    pending: Vec<(&'a TaskId, &'a Pending)>,
    meta: &'a BTreeMap<String, ArmStats>,
}

/// The arm key of `param` = `value`.
pub fn arm_key(param: &str, value: &str) -> String {
    format!("{param}={value}")
}

/// The choice a node's params offer: `learn = { param = [values...] }`.
pub fn offered(params: &Params) -> Option<(String, Vec<String>)> {
    // Most nodes offer nothing: skip parsing them.
    if !params.as_json().contains("\"learn\"") {
        return None;
    }
    let value = params.to_value();
    let learn = value.get("learn")?.as_object()?;
    let (param, values) = learn.iter().next()?;
    let values: Vec<String> = values
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    (!values.is_empty()).then(|| (param.clone(), values))
}

/// `params` with `param` set to `value` and the offer removed.
pub fn with_value(params: &Params, param: &str, value: &str) -> Params {
    let mut json = params.to_value();
    if let Some(map) = json.as_object_mut() {
        map.remove("learn");
        map.insert(param.to_owned(), value.into());
    }
    Params::from_value(&json)
}

/// Why `params` do not offer a well-formed choice, if they have `learn`.
pub fn check_offer(params: &serde_json::Value) -> Result<(), String> {
    let Some(learn) = params.get("learn") else {
        return Ok(());
    };
    let shape = "learn must be a table with one param and its values, e.g. learn = { model = [\"large\", \"small\"] }";
    let Some(map) = learn.as_object() else {
        return Err(shape.to_owned());
    };
    let mut entries = map.iter();
    let (Some((param, values)), None) = (entries.next(), entries.next()) else {
        return Err(shape.to_owned());
    };
    let Some(values) = values.as_array() else {
        return Err(shape.to_owned());
    };
    if values.is_empty() || values.len() > MAX_ARMS {
        return Err(format!("learn.{param} needs 1 to {MAX_ARMS} values"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for v in values {
        match v.as_str() {
            Some(s) if !s.is_empty() => {
                if !seen.insert(s) {
                    return Err(format!("learn.{param} lists `{s}` twice"));
                }
            }
            _ => return Err(format!("learn.{param} values must be non-empty strings")),
        }
    }
    Ok(())
}

/// What the policy chose for an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub param: String,
    pub value: String,
    pub explored: bool,
    pub reason: String,
}

impl Choice {
    /// The params the attempt runs with: `param` set to the chosen value,
    /// the offer removed.
    pub fn apply(&self, params: &Params) -> Params {
        with_value(params, &self.param, &self.value)
    }

    pub fn event(&self, tenant: &TenantId, task: &TaskId) -> Event {
        Event::LearningArmChosen {
            tenant: tenant.clone(),
            task: task.clone(),
            param: self.param.clone(),
            arm: self.value.clone(),
            explored: self.explored,
            reason: self.reason.clone(),
        }
    }
}

/// A Laplace(0, `scale`) sample from a uniform draw (inverse CDF).
fn laplace(scale: f64, draw: u64) -> f64 {
    // u in (-0.5, 0.5), never an end, so the logarithm stays finite.
    let u = ((draw >> 12) as f64 + 0.5) / (1u64 << 52) as f64 - 0.5;
    -scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()
}

impl Learning {
    pub fn get(&self, tenant: &TenantId) -> Option<&LearningProfile> {
        self.profiles.get(tenant)
    }

    pub fn sorted(&self) -> Vec<&LearningProfile> {
        let mut all: Vec<_> = self.profiles.values().collect();
        all.sort_unstable_by(|a, b| a.tenant.cmp(&b.tenant));
        all
    }

    pub fn digest_input(&self) -> LearningDigest<'_> {
        let mut pending: Vec<_> = self.pending.iter().collect();
        pending.sort_unstable_by(|a, b| a.0.cmp(b.0));
        LearningDigest {
            profiles: self.sorted(),
            pending,
            meta: &self.meta,
        }
    }

    /// The meta-learning estimate of `arm`'s mean reward, with noise drawn
    /// from `seed` and the aggregate's size: `None` without outcomes.
    pub fn meta_estimate(&self, arm: &str, seed: u64) -> Option<i64> {
        let stats = self.meta.get(arm)?;
        let size = u32::try_from(stats.pulls).unwrap_or(u32::MAX);
        let sum = stats.reward_bp_sum as f64
            + laplace(
                2.0 * 10_000.0 / META_EPSILON,
                draw(seed, "meta-sum", arm, size),
            );
        let count =
            stats.pulls as f64 + laplace(2.0 / META_EPSILON, draw(seed, "meta-count", arm, size));
        Some((sum / count.max(1.0)).clamp(0.0, 10_000.0).round() as i64)
    }

    /// Chooses a value of `param` among `values` for attempt `attempt` of a
    /// task (whose draws are keyed by `key`, [`TaskId::draw_key`]) of
    /// `tenant` whose budget is `budget` and whose attempt may cost up to
    /// `ceiling`. `may_explore` is false under a
    /// degradation. An exploration must fit the allowance counting every
    /// explored attempt still running at this ceiling.
    #[allow(clippy::too_many_arguments)]
    pub fn choose(
        &self,
        tenant: &TenantId,
        budget: Micros,
        ceiling: Micros,
        param: &str,
        values: &[String],
        may_explore: bool,
        seed: u64,
        key: &str,
        attempt: u32,
    ) -> Choice {
        let profile = self.profiles.get(tenant);
        let meta = profile.is_some_and(|p| p.meta_learning);
        // Each arm's estimate: the tenant's own mean, else (opted in) the
        // noisy aggregate, else unknown.
        let estimates: Vec<(Option<i64>, &'static str)> = values
            .iter()
            .map(|v| {
                let key = arm_key(param, v);
                let own = profile
                    .and_then(|p| p.arms.get(&key))
                    .and_then(ArmStats::mean_bp);
                match own {
                    Some(mean) => (Some(mean), "own"),
                    None if meta => (self.meta_estimate(&key, seed), "meta"),
                    None => (None, ""),
                }
            })
            .collect();
        let mut best = 0;
        for (i, (estimate, _)) in estimates.iter().enumerate() {
            if estimate.is_some() && (estimates[best].0.is_none() || *estimate > estimates[best].0)
            {
                best = i;
            }
        }
        let (rate_bp, spent, in_flight) = profile.map_or((0, Micros::ZERO, 0), |p| {
            (
                p.exploration_bp,
                p.exploration_spent_micros,
                p.explorations_in_flight,
            )
        });
        // What this exploration and those still running may yet cost.
        let exposure = Micros(
            spent
                .0
                .saturating_add(ceiling.0.saturating_mul(i64::from(in_flight) + 1)),
        );
        let allowance = Micros(
            (i128::from(budget.0) * i128::from(rate_bp) / 10_000)
                .try_into()
                .unwrap_or(i64::MAX),
        );
        let roll = draw(seed, "explore", key, attempt) % 10_000;
        if may_explore && values.len() > 1 && exposure <= allowance && roll < u64::from(rate_bp) {
            let pick = draw(seed, "explore-arm", key, attempt) % (values.len() as u64 - 1);
            let i = (0..values.len())
                .filter(|&i| i != best)
                .nth(pick as usize)
                .unwrap_or(best);
            return Choice {
                param: param.to_owned(),
                value: values[i].clone(),
                explored: true,
                reason: format!(
                    "explores (roll {roll} < {rate_bp} bp; {spent} of {allowance} exploration budget spent)"
                ),
            };
        }
        let reason = match estimates[best] {
            (Some(mean), "own") => {
                let pulls = profile
                    .and_then(|p| p.arms.get(&arm_key(param, &values[best])))
                    .map_or(0, |a| a.pulls);
                format!("best mean reward {mean} bp over {pulls} outcomes")
            }
            (Some(mean), _) => format!("best meta-learning estimate {mean} bp (noisy aggregate)"),
            (None, _) => "no outcomes yet: the first listed".to_owned(),
        };
        Choice {
            param: param.to_owned(),
            value: values[best].clone(),
            explored: false,
            reason,
        }
    }

    /// Whether a choice for `task` waits for its outcome.
    pub fn has_pending(&self, task: &TaskId) -> bool {
        self.pending.contains_key(task)
    }

    /// The param and value chosen for `task`, awaiting its outcome.
    pub fn pending_arm(&self, task: &TaskId) -> Option<(&str, &str)> {
        self.pending.get(task)?.arm.split_once('=')
    }

    /// Drops `task`'s pending choice, if any, counting an exploration as
    /// no longer running.
    fn settle_pending(&mut self, task: &TaskId) -> Option<Pending> {
        let pending = self.pending.remove(task)?;
        if pending.explored {
            if let Some(p) = self.profiles.get_mut(&pending.tenant) {
                p.explorations_in_flight = p.explorations_in_flight.saturating_sub(1);
            }
        }
        Some(pending)
    }

    /// The `learning_outcome` of `task`'s attempt, if a choice is pending.
    pub fn outcome(&self, task: &TaskId, reward_bp: i32, cost: Micros) -> Option<Event> {
        let pending = self.pending.get(task)?;
        Some(Event::LearningOutcome {
            tenant: pending.tenant.clone(),
            task: Some(task.clone()),
            arm: pending.arm.clone(),
            reward_bp: reward_bp.clamp(0, 10_000),
            cost_micros: cost,
        })
    }

    pub fn evolve(&mut self, event: &Event) {
        match event {
            Event::TenantRegistered {
                tenant,
                learning_intensity,
                meta_learning,
                ..
            } => {
                self.profiles.insert(
                    tenant.clone(),
                    LearningProfile::new(tenant, *learning_intensity, *meta_learning),
                );
            }
            Event::TenantUpdated {
                tenant,
                learning_intensity,
                meta_learning,
                ..
            } => {
                if let Some(p) = self.profiles.get_mut(tenant) {
                    if let Some(intensity) = learning_intensity {
                        p.intensity = *intensity;
                        p.exploration_bp = intensity.exploration_bp();
                    }
                    if let Some(meta) = meta_learning {
                        p.meta_learning = *meta;
                    }
                }
            }
            Event::LearningArmChosen {
                tenant,
                task,
                param,
                arm,
                explored,
                ..
            } => {
                if *explored {
                    if let Some(p) = self.profiles.get_mut(tenant) {
                        p.explorations += 1;
                        p.explorations_in_flight += 1;
                    }
                }
                // A new choice for the same task replaces one never settled.
                self.settle_pending(task);
                self.pending.insert(
                    task.clone(),
                    Pending {
                        tenant: tenant.clone(),
                        arm: arm_key(param, arm),
                        explored: *explored,
                    },
                );
            }
            Event::LearningOutcome {
                tenant,
                task,
                arm,
                reward_bp,
                cost_micros,
            } => {
                let explored = task
                    .as_ref()
                    .and_then(|t| self.settle_pending(t))
                    .is_some_and(|p| p.explored);
                if let Some(p) = self.profiles.get_mut(tenant) {
                    p.outcomes += 1;
                    p.reward_bp_sum = p.reward_bp_sum.saturating_add(i64::from(*reward_bp));
                    p.cost_micros.0 = p.cost_micros.0.saturating_add(cost_micros.0);
                    if explored {
                        p.exploration_spent_micros.0 =
                            p.exploration_spent_micros.0.saturating_add(cost_micros.0);
                    }
                    p.arms
                        .entry(arm.clone())
                        .or_default()
                        .add(*reward_bp, *cost_micros);
                    if p.meta_learning {
                        self.meta
                            .entry(arm.clone())
                            .or_default()
                            .add(*reward_bp, *cost_micros);
                    }
                }
            }
            Event::LearningProfileAdjusted {
                tenant,
                intensity,
                exploration_bp,
                ..
            } => {
                if let Some(p) = self.profiles.get_mut(tenant) {
                    if let Some(intensity) = intensity {
                        p.intensity = *intensity;
                    }
                    p.exploration_bp = *exploration_bp;
                    p.adjustments += 1;
                }
            }
            // An attempt that ended without an outcome drops its choice.
            Event::TaskAcked { task, .. }
            | Event::TaskNacked { task, .. }
            | Event::LeaseExpired { task, .. }
            | Event::TaskDeadLettered { task, .. }
            | Event::TaskCancelled { task, .. }
            | Event::TaskSkipped { task, .. } => {
                self.settle_pending(task);
            }
            // The exploration allowance is a share of the period's budget.
            Event::BudgetPeriodReset { tenant } => {
                if let Some(p) = self.profiles.get_mut(tenant) {
                    p.exploration_spent_micros = Micros::ZERO;
                }
            }
            _ => {}
        }
    }
}

/// The exploration share a tenant of `intensity` should have at
/// `utilisation_bp` of its budget spent, and why, when it differs from
/// `current_bp`: halved above 90 %, half as much again below 50 %, the
/// intensity's share between.
pub fn adjustment(
    intensity: LearningIntensity,
    current_bp: u32,
    utilisation_bp: i64,
) -> Option<(u32, String)> {
    adjustment_under(&Policy::STANDARD, intensity, current_bp, utilisation_bp)
}

/// [`adjustment`] with `policy`'s thresholds.
pub fn adjustment_under(
    policy: &Policy,
    intensity: LearningIntensity,
    current_bp: u32,
    utilisation_bp: i64,
) -> Option<(u32, String)> {
    let base = intensity.exploration_bp();
    let (shrink, grow) = (policy.explore_shrink_above_bp, policy.explore_grow_below_bp);
    let (target, why) = if utilisation_bp > shrink {
        (
            base / 2,
            format!("utilisation {utilisation_bp} bp > {shrink} bp: exploration halved"),
        )
    } else if utilisation_bp < grow {
        (
            base + base / 2,
            format!("utilisation {utilisation_bp} bp < {grow} bp: room to explore"),
        )
    } else {
        (
            base,
            format!(
                "utilisation {utilisation_bp} bp: the {} share",
                intensity.name()
            ),
        )
    };
    (target != current_bp).then_some((target, why))
}

/// Records the outcomes of attempts and the adjustments they bring, for
/// several attempts in one decision: each sees the exploration share the
/// ones before it left.
pub struct Learner<'s> {
    learning: &'s Learning,
    policy: Policy,
    exploration_bp: BTreeMap<TenantId, u32>,
}

impl<'s> Learner<'s> {
    pub fn new(learning: &'s Learning) -> Self {
        Learner::under(Policy::STANDARD, learning)
    }

    /// A learner that adjusts with `policy`'s thresholds.
    pub fn under(policy: Policy, learning: &'s Learning) -> Self {
        Learner {
            learning,
            policy,
            exploration_bp: BTreeMap::new(),
        }
    }

    /// The events for the end of an attempt of `task` that got `reward_bp`
    /// for `cost`: its `learning_outcome` if the policy chose for it, then
    /// a `learning_profile_adjusted` if the tenant's utilisation (given by
    /// `utilisation_bp`, after this attempt's costs) calls for one.
    pub fn after_attempt(
        &mut self,
        task: &TaskId,
        reward_bp: i32,
        cost: Micros,
        utilisation_bp: impl FnOnce(&TenantId) -> i64,
    ) -> Vec<Event> {
        let Some(outcome) = self.learning.outcome(task, reward_bp, cost) else {
            return Vec::new();
        };
        let Event::LearningOutcome { tenant, .. } = &outcome else {
            return Vec::new();
        };
        let tenant = tenant.clone();
        let mut events = vec![outcome];
        if let Some(profile) = self.learning.get(&tenant) {
            let current = *self
                .exploration_bp
                .entry(tenant.clone())
                .or_insert(profile.exploration_bp);
            if let Some((exploration_bp, reason)) = adjustment_under(
                &self.policy,
                profile.intensity,
                current,
                utilisation_bp(&tenant),
            ) {
                self.exploration_bp.insert(tenant.clone(), exploration_bp);
                events.push(Event::LearningProfileAdjusted {
                    tenant,
                    intensity: None,
                    exploration_bp,
                    reason,
                });
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laplace_is_finite_symmetric_and_scaled() {
        let samples: Vec<f64> = (0..20_000u32)
            .map(|i| laplace(1.0, draw(7, "t", "x", i)))
            .collect();
        assert!(samples.iter().all(|x| x.is_finite()));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let mad = samples.iter().map(|x| x.abs()).sum::<f64>() / samples.len() as f64;
        // Laplace(0, 1): mean 0, mean absolute deviation 1.
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((mad - 1.0).abs() < 0.05, "mad {mad}");
        assert!(laplace(1.0, 0).is_finite() && laplace(1.0, u64::MAX).is_finite());
    }
}
