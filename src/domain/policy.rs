//! The thresholds the deciders apply, in one value.
//!
//! The executors decide under [`Policy::STANDARD`]. `replay --check` re-runs
//! the deciders of a recorded ledger under the standard policy (does today's
//! code still decide what the ledger says?) or under another one read from a
//! TOML file (what would a proposed change have decided differently?).
//!
//! Every threshold a decider applies is defined here, and the modules that
//! apply them import them from here: the cost agent's degrade limits, the
//! budget statuses, the learning policy's exploration bands, and the
//! queue's aging and retry backoff ([`QueuePolicy`], which a workload sets).
//! This module depends on nothing else in `domain`.

use serde::{Deserialize, Serialize};

/// The cost agent DEGRADEs above this utilisation (spent + reserved of
/// budget), in bp.
pub const DEGRADE_UTILISATION_BP: i64 = 9_000;
/// The cost agent DEGRADEs above this concurrency factor (runs of the
/// limit), in bp.
pub const DEGRADE_CONCURRENCY_BP: i64 = 8_000;

/// A budget is WARNING from this share of it spent, in basis points.
pub const WARNING_BP: i64 = 8_000;
/// A budget is CRITICAL from this share of it spent, in basis points.
pub const CRITICAL_BP: i64 = 9_000;

/// Above this utilisation (bp of budget spent) exploration is halved.
pub const SHRINK_ABOVE_BP: i64 = 9_000;
/// Below this utilisation exploration may grow by half.
pub const GROW_BELOW_BP: i64 = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The cost agent degrades above this utilisation (spent + reserved of
    /// budget), in bp.
    pub degrade_utilisation_bp: i64,
    /// The cost agent degrades above this concurrency factor (runs of the
    /// limit), in bp.
    pub degrade_concurrency_bp: i64,
    /// A budget is WARNING from this share spent, in bp.
    pub warning_bp: i64,
    /// A budget is CRITICAL from this share spent, in bp.
    pub critical_bp: i64,
    /// Exploration is halved above this utilisation, in bp.
    pub explore_shrink_above_bp: i64,
    /// Exploration grows by half below this utilisation, in bp.
    pub explore_grow_below_bp: i64,
}

impl Policy {
    pub const STANDARD: Policy = Policy {
        degrade_utilisation_bp: DEGRADE_UTILISATION_BP,
        degrade_concurrency_bp: DEGRADE_CONCURRENCY_BP,
        warning_bp: WARNING_BP,
        critical_bp: CRITICAL_BP,
        explore_shrink_above_bp: SHRINK_ABOVE_BP,
        explore_grow_below_bp: GROW_BELOW_BP,
    };
}

impl Default for Policy {
    fn default() -> Self {
        Policy::STANDARD
    }
}

/// How the queue orders and retries work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuePolicy {
    /// A ready task gains one priority level per this many records appended
    /// since it became ready (continuously), so BATCH work is never starved.
    pub aging_records: u64,
    /// Backoff before retry `n` is `base × 2^(n-1)`, capped at `max`...
    pub retry_base_micros: i64,
    pub retry_max_micros: i64,
    /// ...plus a seeded jitter of up to this share of it (basis points).
    pub jitter_bp: u32,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            aging_records: 2_000,
            retry_base_micros: 200_000,
            retry_max_micros: 30_000_000,
            jitter_bp: 5_000,
        }
    }
}

impl QueuePolicy {
    /// The delay before the retry that follows failed attempt `attempt`
    /// (1-based), jittered by `draw`.
    pub fn retry_delay_micros(&self, attempt: u32, draw: u64) -> i64 {
        let doublings = attempt.saturating_sub(1).min(40);
        let backoff = self
            .retry_base_micros
            .saturating_mul(1i64 << doublings)
            .min(self.retry_max_micros)
            .max(0);
        let jitter_bp = if self.jitter_bp == 0 {
            0
        } else {
            (draw % u64::from(self.jitter_bp)) as i64
        };
        backoff.saturating_add(backoff.saturating_mul(jitter_bp) / 10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_caps_and_jitters_within_bounds() {
        let policy = QueuePolicy {
            aging_records: 10,
            retry_base_micros: 100,
            retry_max_micros: 1_000,
            jitter_bp: 0,
        };
        let delays: Vec<i64> = (1..=6).map(|a| policy.retry_delay_micros(a, 0)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        let jittered = QueuePolicy {
            jitter_bp: 5_000,
            ..policy
        };
        for d in 0..200u64 {
            let delay = jittered.retry_delay_micros(2, d * 7919);
            assert!((200..300).contains(&delay), "{delay}");
        }
    }
}
