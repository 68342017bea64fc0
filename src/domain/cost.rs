//! The cost model: what a step may cost. The price of each model's tokens,
//! the most one attempt of a `sim` step can cost (its ceiling when the
//! workload declares none), and the degradation plan — what DEGRADE changes
//! in the params of the nodes still to run — with the ceiling a node has
//! under it.
//!
//! The queue derives each task's degraded ceiling from it at submission,
//! governance sizes reservations with it, the cost agent projects with it
//! and the `sim` handler prices its tokens with it; none of them imports
//! another for it.

use serde::Serialize;

use super::event::Params;
use super::learning;
use super::money::Micros;

/// Price of 1,000 tokens in micros.
pub fn model_price_micros_per_1k(model: &str) -> i64 {
    match model {
        "large" => 15_000,
        "medium" => 3_000,
        "small" => 500,
        _ => 3_000,
    }
}

/// An integer param, clamped to what the cost model can compute with.
pub(super) fn int_param(params: &serde_json::Value, key: &str, default: i64) -> i64 {
    params
        .get(key)
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(default)
        .clamp(-1_000_000, 1_000_000)
}

/// The most one attempt of a `sim` step with these params can cost: its
/// cost ceiling when the workload declares none.
pub fn cost_ceiling(params: &Params) -> Micros {
    // A node that offers a choice costs at most its dearest value.
    if let Some((param, values)) = learning::offered(params) {
        return values
            .iter()
            .map(|v| cost_ceiling(&learning::with_value(params, &param, v)))
            .max()
            .unwrap_or(Micros::ZERO);
    }
    let params = params.to_value();
    let step = params
        .get("step")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("generate");
    let model = params
        .get("model")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("medium");
    let depth = int_param(&params, "depth", 5).max(1);
    let candidates = int_param(&params, "candidates", 1).max(1);
    // Token counts vary by at most ±20 % (see `vary`).
    let most = |base: i64| base + base * 2_000 / 10_000;
    Micros(match step {
        "retrieve" => 40 * depth,
        "rerank" => 25 * depth.max(5),
        "evaluate" => most(600) * model_price_micros_per_1k("small") / 1_000,
        "tool" => 300,
        "store" => 50,
        _ => most(900 + 150 * depth) * candidates * model_price_micros_per_1k(model) / 1_000,
    })
}

/// What a degradation changes in the nodes still to run. Fields in the
/// order of their names: serialized, the JSON is canonical as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub candidates: i64,
    pub depth: i64,
    pub model_step_down: bool,
    pub skip_optional: bool,
}

impl Plan {
    pub const STANDARD: Plan = Plan {
        skip_optional: true,
        candidates: 1,
        depth: 3,
        model_step_down: true,
    };

    /// The params a node runs with under this plan.
    pub fn apply(&self, params: &Params) -> Params {
        // The plan touches `candidates`, `depth` and models: params that
        // name none of them (canonical JSON text) run as they are.
        let text = params.as_json();
        if !["\"candidates\"", "\"depth\"", "\"model\""]
            .iter()
            .any(|key| text.contains(key))
        {
            return params.clone();
        }
        let mut value = params.to_value();
        let Some(map) = value.as_object_mut() else {
            return params.clone();
        };
        if map
            .get("candidates")
            .and_then(|v| v.as_i64())
            .is_some_and(|c| c > self.candidates)
        {
            map.insert("candidates".into(), self.candidates.into());
        }
        if map
            .get("depth")
            .and_then(|v| v.as_i64())
            .is_some_and(|d| d > self.depth)
        {
            map.insert("depth".into(), self.depth.into());
        }
        if self.model_step_down {
            if let Some(model) = map.get("model").and_then(|v| v.as_str()).map(step_down) {
                map.insert("model".into(), model.into());
            }
            // Models the learning policy may still choose step down too.
            if let Some(models) = map
                .get_mut("learn")
                .and_then(|l| l.get_mut("model"))
                .and_then(|m| m.as_array_mut())
            {
                let mut cheaper: Vec<serde_json::Value> = Vec::with_capacity(models.len());
                for m in models.iter() {
                    let v: serde_json::Value =
                        m.as_str().map_or(m.clone(), |s| step_down(s).into());
                    if !cheaper.contains(&v) {
                        cheaper.push(v);
                    }
                }
                *models = cheaper;
            }
        }
        Params::from_value(&value)
    }
}

/// The next cheaper model (`large` → `medium` → `small`).
fn step_down(model: &str) -> &str {
    match model {
        "large" => "medium",
        "medium" => "small",
        other => other,
    }
}

/// A node's ceiling under a degradation plan: nothing for an optional node
/// it skips, the cheaper step's most for `sim`, else the declared one. The
/// queue derives each task's ceiling under [`Plan::STANDARD`] once, at
/// submission.
pub fn degraded_ceiling(
    handler: &str,
    params: &Params,
    optional: bool,
    declared: Micros,
    plan: &Plan,
) -> Micros {
    if plan.skip_optional && optional {
        return Micros::ZERO;
    }
    if handler == "sim" {
        return cost_ceiling(&plan.apply(params)).min(declared);
    }
    declared
}
