//! The learning projection: each tenant's profile (intensity, exploration
//! share) and the history of its own learning outcomes, per arm.
//!
//! A tenant's profile changes only through its own events.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::event::{Event, LearningIntensity};
use super::ids::TenantId;
use super::money::Micros;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Encode, Decode)]
pub struct ArmStats {
    pub pulls: u64,
    pub reward_bp_sum: i64,
    pub cost_micros: Micros,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Encode, Decode)]
pub struct LearningProfile {
    pub tenant: TenantId,
    pub intensity: LearningIntensity,
    /// Share of budget the policy may explore with, in basis points.
    pub exploration_bp: u32,
    pub meta_learning: bool,
    pub adjustments: u32,
    pub outcomes: u64,
    pub reward_bp_sum: i64,
    pub cost_micros: Micros,
    pub arms: BTreeMap<String, ArmStats>,
}

#[derive(Clone, Debug, Default)]
pub struct Learning {
    profiles: FxHashMap<TenantId, LearningProfile>,
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
                    LearningProfile {
                        tenant: tenant.clone(),
                        intensity: *learning_intensity,
                        exploration_bp: learning_intensity.exploration_bp(),
                        meta_learning: *meta_learning,
                        adjustments: 0,
                        outcomes: 0,
                        reward_bp_sum: 0,
                        cost_micros: Micros::ZERO,
                        arms: BTreeMap::new(),
                    },
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
            Event::LearningOutcome {
                tenant,
                arm,
                reward_bp,
                cost_micros,
                ..
            } => {
                if let Some(p) = self.profiles.get_mut(tenant) {
                    p.outcomes += 1;
                    p.reward_bp_sum = p.reward_bp_sum.saturating_add(i64::from(*reward_bp));
                    p.cost_micros.0 = p.cost_micros.0.saturating_add(cost_micros.0);
                    let a = p.arms.entry(arm.clone()).or_default();
                    a.pulls += 1;
                    a.reward_bp_sum = a.reward_bp_sum.saturating_add(i64::from(*reward_bp));
                    a.cost_micros.0 = a.cost_micros.0.saturating_add(cost_micros.0);
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
            _ => {}
        }
    }
}
