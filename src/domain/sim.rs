//! The `sim` handler: a deterministic simulated agent step (retrieve,
//! rerank, generate, evaluate, tool) priced by the cost model
//! ([`super::cost`]: tokens × the price of the model named in its params,
//! in micros), with a simulated latency and a failure rate, every number
//! drawn from the run's seed.
//!
//! Params (all optional): `step` (default `generate`), `model`
//! (`large` | `medium` | `small`, default `medium`), `depth` (retrieval
//! depth, default 5), `candidates` (generations, default 1),
//! `failure_rate_bp` (default 200 = 2 %), `latency_ms` (overrides the
//! step's typical latency), and `learn` (an offer of `step` or `model`
//! values to the learning policy). [`check_params`] is the handler's
//! strict schema: unknown keys, unknown values and wrong types are refused
//! before anything runs.

use super::cost::{int_param, model_price_micros_per_1k};
use super::draw::draw;
use super::event::{Category, ParamError, Params};
use super::money::Micros;

/// What one simulated attempt does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOutcome {
    pub latency_micros: i64,
    /// `Err(message)` for a simulated failure.
    pub result: Result<Params, String>,
    pub costs: Vec<(Category, Micros)>,
    /// A reward for the learning policy, in basis points (0 on failure).
    pub reward_bp: i32,
}

/// The steps the `sim` handler simulates (`generate` is the default).
pub const STEPS: [&str; 6] = [
    "retrieve", "rerank", "generate", "evaluate", "tool", "store",
];

/// The models it prices (`medium` is the default).
pub const MODELS: [&str; 3] = ["large", "medium", "small"];

/// Every key its params may hold.
const KEYS: [&str; 7] = [
    "candidates",
    "depth",
    "failure_rate_bp",
    "latency_ms",
    "learn",
    "model",
    "step",
];

/// The `sim` handler's params schema: a table of the keys above, each of
/// its type and range; `learn` offers values of one of them.
pub fn check_params(params: &serde_json::Value) -> Result<(), ParamError> {
    if params.is_null() {
        return Ok(());
    }
    let Some(map) = params.as_object() else {
        return Err(ParamError::new(
            "",
            format!("expected a table such as {{ step = \"generate\" }} (got {params})"),
        ));
    };
    for (key, value) in map {
        if key != "learn" {
            check_value(key, value).map_err(|message| ParamError::new(key, message))?;
            continue;
        }
        let Some(offer) = value.as_object() else {
            return Err(ParamError::new(
                "learn",
                "expected a table such as { model = [\"large\", \"small\"] }",
            ));
        };
        for (param, values) in offer {
            let key = format!("learn.{param}");
            let Some(values) = values.as_array() else {
                return Err(ParamError::new(key, "expected an array of values"));
            };
            if param == "learn" {
                return Err(ParamError::new(key, "an offer cannot offer offers"));
            }
            for v in values {
                check_value(param, v).map_err(|message| ParamError::new(&key, message))?;
            }
        }
    }
    Ok(())
}

/// Why `value` does not fit sim param `key`.
fn check_value(key: &str, value: &serde_json::Value) -> Result<(), String> {
    let one_of = |known: &[&str]| match value.as_str() {
        Some(v) if known.contains(&v) => Ok(()),
        Some(v) => Err(format!(
            "unknown {key} `{v}` (expected one of {})",
            known.join(", ")
        )),
        None => Err(format!(
            "expected one of {} as a string (got {value})",
            known.join(", ")
        )),
    };
    let integer = |min: i64, max: i64| match value.as_i64() {
        Some(v) if (min..=max).contains(&v) => Ok(()),
        _ => Err(format!(
            "expected an integer from {min} to {max} (got {value})"
        )),
    };
    match key {
        "step" => one_of(&STEPS),
        "model" => one_of(&MODELS),
        "depth" | "candidates" => integer(1, 1_000_000),
        "failure_rate_bp" => integer(0, 10_000),
        "latency_ms" => integer(0, 1_000_000),
        _ => Err(format!(
            "unknown key (the sim handler knows {})",
            KEYS.join(", ")
        )),
    }
}

/// `base` varied by ±`spread_bp` with a draw.
fn vary(base: i64, spread_bp: i64, draw: u64) -> i64 {
    if spread_bp == 0 {
        return base;
    }
    let offset = (draw % (2 * spread_bp as u64 + 1)) as i64 - spread_bp;
    base + base * offset / 10_000
}

/// Simulates attempt `attempt` of `task` under `seed`.
pub fn simulate(seed: u64, task: &str, attempt: u32, params: &Params) -> SimOutcome {
    let params = params.to_value();
    let step = params
        .get("step")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("generate")
        .to_owned();
    let model = params
        .get("model")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("medium")
        .to_owned();
    let depth = int_param(&params, "depth", 5).max(1);
    let candidates = int_param(&params, "candidates", 1).max(1);
    let failure_rate_bp = int_param(&params, "failure_rate_bp", 200).clamp(0, 10_000) as u64;
    let d = |purpose: &str| draw(seed, purpose, task, attempt);

    let (typical_ms, category, amount) = match step.as_str() {
        "retrieve" => (40, Category::Retrieval, 40 * depth),
        "rerank" => (60, Category::Rerank, 25 * depth.max(5)),
        "evaluate" => {
            let tokens = vary(600, 2_000, d("tokens"));
            (
                200,
                Category::Llm,
                tokens * model_price_micros_per_1k("small") / 1_000,
            )
        }
        "tool" => (100, Category::Tool, 300),
        "store" => (20, Category::Storage, 50),
        _ => {
            let tokens = vary(900 + 150 * depth, 2_000, d("tokens")) * candidates;
            (
                600 + 150 * candidates,
                Category::Llm,
                tokens * model_price_micros_per_1k(&model) / 1_000,
            )
        }
    };
    let latency_ms = int_param(&params, "latency_ms", typical_ms).max(0);
    let latency_micros = vary(latency_ms * 1_000, 3_000, d("latency")).max(1);
    let failed = d("failure") % 10_000 < failure_rate_bp;
    // The quality of the step's result: a larger model, more candidates or
    // deeper retrieval do better on average, ±15 %.
    let quality = match step.as_str() {
        "generate" => {
            let base = match model.as_str() {
                "large" => 8_000,
                "small" => 5_000,
                _ => 7_000,
            };
            base + 300 * (candidates - 1).min(2)
        }
        "retrieve" => 5_000 + 400 * depth.min(8),
        _ => 7_000,
    };
    let reward_bp = if failed {
        0
    } else {
        vary(quality, 1_500, d("reward")).clamp(0, 10_000) as i32
    };
    let result = if failed {
        Err(format!("simulated {step} failure"))
    } else {
        Ok(Params::from_value(
            &serde_json::json!({ "step": step, "amount_micros": amount }),
        ))
    };
    // A failed attempt still spends what it used up to the failure.
    let spent = if failed { amount / 2 } else { amount };
    SimOutcome {
        latency_micros,
        result,
        costs: vec![(category, Micros(spent))],
        reward_bp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cost::cost_ceiling;

    fn params(json: &str) -> Params {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn sim_is_deterministic_per_seed_task_and_attempt() {
        let p = params(r#"{"step":"generate","model":"large","candidates":3}"#);
        assert_eq!(simulate(1, "t", 1, &p), simulate(1, "t", 1, &p));
        assert_ne!(
            simulate(1, "t", 1, &p).latency_micros,
            simulate(2, "t", 1, &p).latency_micros
        );
    }

    #[test]
    fn sim_cost_scales_with_model_price_and_candidates() {
        let large = simulate(
            1,
            "t",
            1,
            &params(r#"{"step":"generate","model":"large","failure_rate_bp":0}"#),
        );
        let small = simulate(
            1,
            "t",
            1,
            &params(r#"{"step":"generate","model":"small","failure_rate_bp":0}"#),
        );
        let three = simulate(
            1,
            "t",
            1,
            &params(r#"{"step":"generate","model":"large","candidates":3,"failure_rate_bp":0}"#),
        );
        assert_eq!(large.costs[0].0, Category::Llm);
        assert_eq!(large.costs[0].1.0, small.costs[0].1.0 * 30);
        assert_eq!(three.costs[0].1.0 / large.costs[0].1.0, 3);
    }

    #[test]
    fn sim_cost_never_exceeds_its_ceiling() {
        for json in [
            r#"{"step":"generate","model":"large","candidates":3}"#,
            r#"{"step":"generate","model":"small","depth":2}"#,
            r#"{"step":"retrieve","depth":7}"#,
            r#"{"step":"rerank"}"#,
            r#"{"step":"evaluate"}"#,
            r#"{"step":"tool"}"#,
        ] {
            let p = params(json);
            let ceiling = cost_ceiling(&p);
            let most = (0..500)
                .map(|seed| simulate(seed, "t", 1, &p).costs[0].1)
                .max()
                .unwrap();
            assert!(most <= ceiling, "{json}: {most} > {ceiling}");
            assert!(
                most.0 * 10 >= ceiling.0 * 8,
                "{json}: the ceiling {ceiling} is loose for {most}"
            );
        }
    }

    #[test]
    fn sim_params_schema_refuses_typos_with_the_key() {
        let check = |json: &str| {
            check_params(&serde_json::from_str(json).unwrap())
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(check("null"), None);
        assert_eq!(
            check(
                r#"{"step":"generate","model":"large","depth":3,"candidates":2,"failure_rate_bp":0,"latency_ms":0,"learn":{"model":["small","large"]}}"#
            ),
            None
        );
        let step = check(r#"{"step":"rerankk"}"#).unwrap();
        assert!(
            step.starts_with("params.step: unknown step `rerankk`"),
            "{step}"
        );
        let model = check(r#"{"model":["larg"]}"#).unwrap();
        assert!(
            model.starts_with("params.model: expected one of large"),
            "{model}"
        );
        let dept = check(r#"{"dept":5}"#).unwrap();
        assert!(dept.starts_with("params.dept: unknown key"), "{dept}");
        let depth = check(r#"{"depth":"5"}"#).unwrap();
        assert!(
            depth.starts_with("params.depth: expected an integer"),
            "{depth}"
        );
        assert!(check(r#"{"failure_rate_bp":10001}"#).is_some());
        let learn = check(r#"{"learn":{"model":["larg"]}}"#).unwrap();
        assert!(
            learn.starts_with("params.learn.model: unknown model `larg`"),
            "{learn}"
        );
        assert!(
            check(r#"{"learn":{"dept":["a"]}}"#)
                .unwrap()
                .starts_with("params.learn.dept: unknown key")
        );
        assert!(
            check("[1]")
                .unwrap()
                .starts_with("params: expected a table")
        );
    }

    #[test]
    fn sim_failure_rate_is_respected() {
        let always = params(r#"{"step":"tool","failure_rate_bp":10000}"#);
        let never = params(r#"{"step":"tool","failure_rate_bp":0}"#);
        assert!((0..50).all(|n| simulate(n, "t", 1, &always).result.is_err()));
        assert!((0..50).all(|n| simulate(n, "t", 1, &never).result.is_ok()));
    }
}
