//! The thresholds the deciders apply, in one value.
//!
//! The executors decide under [`Policy::STANDARD`]. `replay --check` re-runs
//! the deciders of a recorded ledger under the standard policy (does today's
//! code still decide what the ledger says?) or under another one read from a
//! TOML file (what would a proposed change have decided differently?).

use serde::{Deserialize, Serialize};

use super::{budget, cost_agent, learning};

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
        degrade_utilisation_bp: cost_agent::DEGRADE_UTILISATION_BP,
        degrade_concurrency_bp: cost_agent::DEGRADE_CONCURRENCY_BP,
        warning_bp: budget::WARNING_BP,
        critical_bp: budget::CRITICAL_BP,
        explore_shrink_above_bp: learning::SHRINK_ABOVE_BP,
        explore_grow_below_bp: learning::GROW_BELOW_BP,
    };
}

impl Default for Policy {
    fn default() -> Self {
        Policy::STANDARD
    }
}
