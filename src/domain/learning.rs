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
//! the count (ε = [`META_EPSILON_MILLI`] / 1,000, split between the two;
//! one outcome changes the sum by at most 10,000 bp and the count by 1).
//! The noise is drawn from the run's seed and the aggregate's size, so the
//! same aggregate always reads the same, and a replay chooses the same. It
//! is computed in integers ([`laplace_q32`]: fixed point with 32 fractional
//! bits, the logarithm by repeated squaring), never in platform floating
//! point, so a recorded choice is the same on every machine.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::draw::draw;
use super::event::{Event, LearningIntensity, Params};
use super::ids::{TaskId, TenantId};
use super::journal::{Journaled, Undo};
use super::money::Micros;
use super::policy::Policy;

/// The privacy parameter of meta-learning, in thousandths: ε (here 1) of
/// the ε-differentially private release of one aggregate (per arm).
pub const META_EPSILON_MILLI: i64 = 1_000;
/// The most one outcome moves an arm's reward sum (bp): the sensitivity of
/// the sum.
const REWARD_BP_MAX: i64 = 10_000;
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

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Learning {
    profiles: Journaled<FxHashMap<TenantId, LearningProfile>>,
    /// Choices awaiting their outcome, by task.
    pending: Journaled<FxHashMap<TaskId, Pending>>,
    /// Per arm, the outcomes of every tenant that opted into meta-learning.
    meta: Journaled<BTreeMap<String, ArmStats>>,
}

impl Undo for Learning {
    fn record(&mut self, on: bool) {
        self.profiles.record(on);
        self.pending.record(on);
        self.meta.record(on);
    }
    fn mark(&mut self) {
        self.profiles.mark();
        self.pending.mark();
        self.meta.mark();
    }
    fn undo(&mut self) {
        self.profiles.undo();
        self.pending.undo();
        self.meta.undo();
    }
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

/// Fractional bits of the fixed-point numbers of the noise: a value `v`
/// stands for `v / 2^32`.
const FRAC_BITS: u32 = 32;
/// ln 2 with 64 fractional bits, rounded to nearest
/// (0.693147180559945309417… × 2^64).
const LN2_Q64: u128 = 0xB172_17F7_D1CF_79AC;

/// log2(`x`) with [`FRAC_BITS`] fractional bits, for `x ≥ 1`: the integer
/// part is the position of the top bit; the fraction comes a bit at a time
/// by repeated squaring (the classic binary-logarithm algorithm, e.g. C. S.
/// Turner, "A fast binary logarithm algorithm", IEEE Signal Processing
/// Magazine, 2010): with `y = x / 2^⌊log2 x⌋` in [1, 2), squaring `y`
/// doubles its logarithm, so the next bit is 1 exactly when `y²` reaches 2
/// (and `y²` is halved). `y` is held with 62 fractional bits, its square in
/// a u128; each result is below the true value by less than 2^-31.
fn log2_q32(x: u64) -> u64 {
    assert_ne!(x, 0, "log2 of 0");
    let int = 63 - x.leading_zeros();
    let mut y = if int <= 62 {
        u128::from(x) << (62 - int)
    } else {
        u128::from(x) >> (int - 62)
    };
    let mut frac = 0u64;
    for bit in (0..FRAC_BITS).rev() {
        y = (y * y) >> 62;
        if y >= 2 << 62 {
            y >>= 1;
            frac |= 1 << bit;
        }
    }
    (u64::from(int) << FRAC_BITS) | frac
}

/// An Exponential(1) sample with [`FRAC_BITS`] fractional bits from `m`,
/// uniform in [0, 2^63): `-ln w` for `w = (2m + 1) / 2^64`, uniform in
/// (0, 1) and never an end, so the result is finite: at most 64 ln 2.
/// `-ln w = ln 2 × (64 − log2(2m + 1))`.
fn exponential_q32(m: u64) -> u64 {
    assert!(
        m < 1 << 63,
        "the uniform draw {m} of an exponential has 63 bits"
    );
    let log2_inverse = (64 << FRAC_BITS) - log2_q32((m << 1) | 1);
    // < 2^38 × 2^64: no overflow; the product keeps 64 + 32 bits.
    u64::try_from((u128::from(log2_inverse) * LN2_Q64) >> 64).unwrap_or(u64::MAX)
}

/// A Laplace(0, b) sample with [`FRAC_BITS`] fractional bits, `b =
/// scale_num / scale_den`, from a uniform `draw`. The inverse CDF,
/// `-b·sgn(u)·ln(1 − 2|u|)` for `u` uniform in (−½, ½), is a fair random
/// sign times an Exponential(b), since `1 − 2|u|` is uniform in (0, 1):
/// the top bit of `draw` is the sign, the other 63 bits the exponential.
/// Integer arithmetic only: the same on every machine.
pub fn laplace_q32(scale_num: i64, scale_den: i64, draw: u64) -> i128 {
    assert!(
        scale_num >= 0,
        "a Laplace scale numerator {scale_num} below 0"
    );
    assert!(
        scale_den > 0,
        "a Laplace scale denominator {scale_den} not above 0"
    );
    let magnitude = i128::from(exponential_q32(draw & (u64::MAX >> 1))) * i128::from(scale_num)
        / i128::from(scale_den);
    if draw >> 63 == 1 {
        -magnitude
    } else {
        magnitude
    }
}

/// `n / d` rounded to the nearest integer, halves away from zero; `d > 0`.
fn div_round(n: i128, d: i128) -> i128 {
    assert!(d > 0, "a rounded division by {d}");
    let q = (n.unsigned_abs() * 2 + d.unsigned_abs()) / (d.unsigned_abs() * 2);
    let q = i128::try_from(q).unwrap_or(i128::MAX);
    if n < 0 { -q } else { q }
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
        // Scales 2 × sensitivity / ε, with ε in thousandths; both in Q32.
        let sum = (i128::from(stats.reward_bp_sum) << FRAC_BITS)
            + laplace_q32(
                2 * REWARD_BP_MAX * 1_000,
                META_EPSILON_MILLI,
                draw(seed, "meta-sum", arm, size),
            );
        let count = (i128::from(stats.pulls) << FRAC_BITS)
            + laplace_q32(
                2 * 1_000,
                META_EPSILON_MILLI,
                draw(seed, "meta-count", arm, size),
            );
        let mean = div_round(sum, count.max(1 << FRAC_BITS));
        Some(i64::try_from(mean.clamp(0, REWARD_BP_MAX.into())).unwrap_or(0))
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
                            .get_or_insert_with(arm, ArmStats::default)
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
    fn laplace_is_symmetric_and_scaled() {
        const ONE: i128 = 1 << FRAC_BITS;
        let n = 20_000i128;
        let samples: Vec<i128> = (0..n as u32)
            .map(|i| laplace_q32(1, 1, draw(7, "t", "x", i)))
            .collect();
        let sum: i128 = samples.iter().sum();
        let sum_abs: i128 = samples.iter().map(|x| x.abs()).sum();
        // Laplace(0, 1): mean 0, mean absolute deviation 1 (within 0.05).
        assert!((sum * 20).abs() < n * ONE, "mean {}", sum / n);
        assert!(
            ((sum_abs - n * ONE) * 20).abs() < n * ONE,
            "mad {}",
            sum_abs / n
        );
        // The ends of the draw stay finite: ±64 ln 2 at most.
        assert!(laplace_q32(1, 1, 0) > 0);
        assert!(laplace_q32(1, 1, u64::MAX) <= 0);
        assert!(laplace_q32(1, 1, 0) <= 45 * ONE);
        assert!(laplace_q32(1, 1, u64::MAX) >= -45 * ONE);
    }

    #[test]
    fn laplace_gives_the_same_numbers_everywhere() {
        // Pinned: a change here changes recorded meta-learning choices.
        // The largest: 64 ln 2 = 44.36141955583649…, × 2^32 = 190530846196.45…
        assert_eq!(laplace_q32(1, 1, 0), 190_530_846_196);
        assert_eq!(laplace_q32(1, 1, 1 << 63), -190_530_846_196);
        assert_eq!(laplace_q32(1, 1, u64::MAX), 0);
        assert_eq!(laplace_q32(20_000_000, 1_000, 0), 3_810_616_923_920_000);
        assert_eq!(laplace_q32(1, 1, draw(7, "t", "x", 0)), -7_731_073_147);
        assert_eq!(log2_q32(1), 0);
        assert_eq!(log2_q32(2), 1 << FRAC_BITS);
        // log2 3 = 1.58496250072115…, × 2^32 = 6807362105.98…
        assert_eq!(log2_q32(3), 6_807_362_105);
        assert_eq!(log2_q32(u64::MAX), (64 << FRAC_BITS) - 1);
    }

    #[test]
    #[allow(clippy::float_arithmetic)]
    fn log2_is_within_two_units_of_the_last_bit() {
        // The float logarithm only checks the integer one here; nothing
        // recorded depends on it.
        let mut x = 1u64;
        for i in 0..2_000u64 {
            let exact = (x as f64).log2() * (1u64 << FRAC_BITS) as f64;
            let got = log2_q32(x) as f64;
            assert!((got - exact).abs() <= 2.0, "log2({x}): {got} vs {exact}");
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i) | 1;
        }
    }
}
