//! Given / when / then tests of the learning policy: the greedy choice, the
//! exploration rate and its budget, the adjustment thresholds at their
//! exact edges, isolation between tenants, opt-in meta-learning, and the
//! policy at work in a simulated run (recorded, replayed, deterministic).

mod support;

use runledger::domain::learning::{self, Learner};
use runledger::domain::*;
use runledger::runtime::{RunOptions, run_simulated};
use runledger::workload::Workload;

use support::events::{self, given, submit};
use support::ledger::{events, open_ledger, open_store};

/// A tenant of at most 4 concurrent runs, learning at `intensity`.
fn tenant(id: &str, budget: i64, intensity: LearningIntensity, meta: bool) -> Event {
    events::tenant(id, budget)
        .intensity(intensity)
        .meta(meta)
        .into()
}

fn outcome(tenant: &str, arm: &str, reward_bp: i32, cost: i64) -> Event {
    Event::LearningOutcome {
        tenant: tenant.into(),
        task: None,
        arm: arm.into(),
        reward_bp,
        cost_micros: Micros(cost),
    }
}

fn models() -> Vec<String> {
    ["large", "medium", "small"].map(str::to_owned).to_vec()
}

fn choose(state: &State, tenant: &str, may_explore: bool, n: u32) -> learning::Choice {
    choose_at(state, tenant, may_explore, n, Micros(1_000))
}

fn choose_at(
    state: &State,
    tenant: &str,
    may_explore: bool,
    n: u32,
    ceiling: Micros,
) -> learning::Choice {
    state.learning.choose(
        &tenant.into(),
        Micros(1_000_000),
        ceiling,
        "model",
        &models(),
        may_explore,
        7,
        &format!("task-{n}"),
        1,
    )
}

#[test]
fn without_outcomes_the_first_listed_value_runs() {
    let state = given(&[tenant(
        "acme",
        1_000_000,
        LearningIntensity::Balanced,
        false,
    )]);
    let choice = choose(&state, "acme", false, 0);
    assert_eq!(choice.value, "large");
    assert!(!choice.explored);
    assert!(
        choice.reason.contains("no outcomes yet"),
        "{}",
        choice.reason
    );
}

#[test]
fn the_greedy_choice_is_the_best_mean_reward_of_the_tenants_own_outcomes() {
    let state = given(&[
        tenant("acme", 1_000_000, LearningIntensity::Balanced, false),
        outcome("acme", "model=large", 6_000, 100),
        outcome("acme", "model=large", 7_000, 100),
        outcome("acme", "model=medium", 8_000, 10),
        outcome("acme", "model=small", 2_000, 1),
    ]);
    let choice = choose(&state, "acme", false, 0);
    assert_eq!(choice.value, "medium");
    assert!(
        choice.reason.contains("8000 bp over 1 outcomes"),
        "{}",
        choice.reason
    );
    let profile = state.learning.get(&"acme".into()).unwrap();
    assert_eq!(profile.arms["model=large"].pulls, 2);
    assert_eq!(profile.arms["model=large"].mean_bp(), Some(6_500));
    assert_eq!(profile.outcomes, 4);
}

#[test]
fn exploration_runs_at_the_intensity_rate_and_stops_when_its_budget_is_spent() {
    for (intensity, rate_bp) in [
        (LearningIntensity::Conservative, 500),
        (LearningIntensity::Balanced, 1_000),
        (LearningIntensity::Aggressive, 2_000),
    ] {
        let state = given(&[tenant("acme", 1_000_000, intensity, false)]);
        let n = 20_000;
        let explored = (0..n)
            .filter(|&i| choose(&state, "acme", true, i).explored)
            .count() as i64;
        // Within 15 % of the rate over 20,000 seeded draws.
        let expected = n as i64 * rate_bp / 10_000;
        assert!(
            (explored - expected).abs() * 100 < expected * 15,
            "{intensity:?}: explored {explored} of {n}, expected about {expected}"
        );
        // Never under a degradation.
        assert!((0..2_000).all(|i| !choose(&state, "acme", false, i).explored));
    }
    // With the exploration budget (10 % of 1,000,000) spent, no more.
    let mut events = vec![
        tenant("acme", 1_000_000, LearningIntensity::Balanced, false),
        Event::RunStarted {
            run: "r".into(),
            seed: 1,
            config_hash: String::new(),
        },
    ];
    for i in 0..2 {
        let task = format!("t{i}");
        events.push(submit(&task, "acme").into());
        events.push(Event::LearningArmChosen {
            tenant: "acme".into(),
            task: task.as_str().into(),
            param: "model".into(),
            arm: "small".into(),
            explored: true,
            reason: String::new(),
        });
        events.push(Event::LearningOutcome {
            tenant: "acme".into(),
            task: Some(task.as_str().into()),
            arm: "model=small".into(),
            reward_bp: 5_000,
            cost_micros: Micros(50_000),
        });
    }
    let state = given(&events[..events.len() - 3]);
    assert_eq!(
        state
            .learning
            .get(&"acme".into())
            .unwrap()
            .exploration_spent_micros,
        Micros(50_000)
    );
    assert!((0..2_000).any(|i| choose(&state, "acme", true, i).explored));
    // An explored attempt still running counts at the ceiling: with 50,000
    // spent and one in flight, a 30,000 attempt would not fit 100,000.
    let running = given(&events[..events.len() - 1]);
    assert_eq!(
        running
            .learning
            .get(&"acme".into())
            .unwrap()
            .explorations_in_flight,
        1
    );
    assert!((0..2_000).all(|i| !choose_at(&running, "acme", true, i, Micros(30_000)).explored));
    assert!((0..2_000).any(|i| choose_at(&running, "acme", true, i, Micros(20_000)).explored));
    let state = given(&events);
    let profile = state.learning.get(&"acme".into()).unwrap();
    assert_eq!(profile.explorations_in_flight, 0);
    assert_eq!(profile.exploration_spent_micros, Micros(100_000));
    assert_eq!(profile.explorations, 2);
    assert!((0..2_000).all(|i| !choose(&state, "acme", true, i).explored));
}

#[test]
fn adjustments_at_the_exact_edges_of_fifty_and_ninety_percent() {
    let base = LearningIntensity::Balanced.exploration_bp();
    let adjust = |current: u32, utilisation: i64| {
        learning::adjustment(LearningIntensity::Balanced, current, utilisation).map(|a| a.0)
    };
    assert_eq!(adjust(base, 4_999), Some(1_500));
    assert_eq!(adjust(base, 5_000), None);
    assert_eq!(adjust(base, 9_000), None);
    assert_eq!(adjust(base, 9_001), Some(500));
    assert_eq!(adjust(1_500, 5_000), Some(base));
    assert_eq!(adjust(500, 9_000), Some(base));
    assert_eq!(adjust(500, 9_500), None);
    assert_eq!(
        learning::adjustment(LearningIntensity::Aggressive, 2_000, 0).map(|a| a.0),
        Some(3_000)
    );
}

#[test]
fn an_adjustment_event_changes_only_its_tenants_profile() {
    let mut state = given(&[
        tenant("acme", 1_000, LearningIntensity::Balanced, false),
        tenant("globex", 1_000, LearningIntensity::Balanced, false),
    ]);
    let before = state.learning.get(&"globex".into()).unwrap().clone();
    let adjusted = Event::LearningProfileAdjusted {
        tenant: "acme".into(),
        intensity: None,
        exploration_bp: 500,
        reason: "test".into(),
    };
    state.apply(state.seq + 1, Timestamp(0), &adjusted).unwrap();
    let acme = state.learning.get(&"acme".into()).unwrap();
    assert_eq!((acme.exploration_bp, acme.adjustments), (500, 1));
    assert_eq!(state.learning.get(&"globex".into()).unwrap(), &before);
}

#[test]
fn a_tenant_learns_only_from_its_own_outcomes_unless_both_opt_into_meta_learning() {
    // Private tenants: globex's outcomes change nothing of acme's.
    let private = given(&[
        tenant("acme", 1_000_000, LearningIntensity::Balanced, false),
        tenant("globex", 1_000_000, LearningIntensity::Balanced, false),
        outcome("globex", "model=small", 9_900, 1),
        outcome("globex", "model=small", 9_900, 1),
    ]);
    let alone = given(&[tenant(
        "acme",
        1_000_000,
        LearningIntensity::Balanced,
        false,
    )]);
    assert_eq!(
        private.learning.get(&"acme".into()),
        alone.learning.get(&"acme".into())
    );
    assert_eq!(choose(&private, "acme", false, 0).value, "large");
    assert_eq!(private.learning.meta_estimate("model=small", 7), None);

    // Opted in: acme sees the noisy aggregate for arms it never tried.
    let mut events = vec![
        tenant("acme", 1_000_000, LearningIntensity::Balanced, true),
        tenant("globex", 1_000_000, LearningIntensity::Balanced, true),
    ];
    events.extend((0..200).map(|_| outcome("globex", "model=small", 9_900, 1)));
    events.extend((0..200).map(|_| outcome("globex", "model=large", 1_000, 1)));
    let shared = given(&events);
    let estimate = shared.learning.meta_estimate("model=small", 7).unwrap();
    assert!(
        (estimate - 9_900).abs() < 2_000,
        "noisy estimate {estimate} strays too far"
    );
    assert_eq!(
        shared.learning.meta_estimate("model=small", 7),
        Some(estimate),
        "the same aggregate reads the same"
    );
    let choice = choose(&shared, "acme", false, 0);
    assert_eq!(choice.value, "small");
    assert!(choice.reason.contains("meta-learning"), "{}", choice.reason);
    // acme's own profile is untouched by globex.
    assert_eq!(shared.learning.get(&"acme".into()).unwrap().outcomes, 0);
}

#[test]
fn the_noise_of_one_outcome_hides_it() {
    // With one outcome in the aggregate, the noise (scale 20,000 bp on the
    // sum) dominates: the estimate varies widely across seeds.
    let state = given(&[
        tenant("acme", 1_000_000, LearningIntensity::Balanced, true),
        outcome("acme", "model=small", 5_000, 1),
    ]);
    let estimates: std::collections::BTreeSet<i64> = (0..50)
        .filter_map(|seed| state.learning.meta_estimate("model=small", seed))
        .collect();
    assert!(estimates.len() > 10, "{estimates:?}");
}

#[test]
fn the_learner_records_the_outcome_of_a_chosen_attempt_then_adjusts() {
    let mut events = vec![
        tenant("acme", 1_000, LearningIntensity::Balanced, false),
        Event::RunStarted {
            run: "r".into(),
            seed: 1,
            config_hash: String::new(),
        },
    ];
    for task in ["a", "b"] {
        events.push(submit(task, "acme").into());
    }
    events.push(Event::LearningArmChosen {
        tenant: "acme".into(),
        task: "a".into(),
        param: "model".into(),
        arm: "medium".into(),
        explored: false,
        reason: String::new(),
    });
    let state = given(&events);
    let mut learner = Learner::new(&state.learning);
    // No choice was made for `b`: nothing to learn.
    assert!(
        learner
            .after_attempt(&"b".into(), 9_000, Micros(5), |_| 0)
            .is_empty()
    );
    let got = learner.after_attempt(&"a".into(), 9_000, Micros(5), |_| 100);
    assert_eq!(
        got,
        vec![
            Event::LearningOutcome {
                tenant: "acme".into(),
                task: Some("a".into()),
                arm: "model=medium".into(),
                reward_bp: 9_000,
                cost_micros: Micros(5),
            },
            Event::LearningProfileAdjusted {
                tenant: "acme".into(),
                intensity: None,
                exploration_bp: 1_500,
                reason: "utilisation 100 bp < 5000 bp: room to explore".into(),
            },
        ]
    );
}

const WORKLOAD: &str = r#"
seed = 11
[execution.pool]
max_concurrency = 8
[[pipelines]]
id = "rag"
mode = "serial"
nodes = [
  { id = "retrieve", params = { step = "retrieve" } },
  { id = "generate", params = { step = "generate", learn = { model = ["medium", "large", "small"] }, failure_rate_bp = 0 } },
]
[[tenants]]
id = "acme"
budget_micros = 80000
max_concurrent_runs = 4
learning_intensity = "aggressive"
[[tenants]]
id = "globex"
budget_micros = 50000000
max_concurrent_runs = 100
learning_intensity = "aggressive"
[[submissions]]
tenant = "acme"
pipeline = "rag"
runs = 60
interval_ms = 100
[[submissions]]
tenant = "globex"
pipeline = "rag"
runs = 60
interval_ms = 100
"#;

fn run(dir: &std::path::Path) -> (Vec<Event>, runledger::runtime::RunReport) {
    let workload = Workload::parse("learn.toml", WORKLOAD).unwrap();
    let ledger = open_ledger(dir);
    let report = run_simulated(&ledger, &workload, &RunOptions::default(), &mut |_, _| {}).unwrap();
    ledger.close().unwrap();
    (events(dir), report)
}

#[test]
fn a_simulated_run_chooses_learns_and_adjusts_and_replays_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (events, report) = run(dir.path());
    let chosen: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::LearningArmChosen {
                tenant,
                arm,
                explored,
                ..
            } => Some((tenant.as_str().to_owned(), arm.clone(), *explored)),
            _ => None,
        })
        .collect();
    let outcomes = events
        .iter()
        .filter(|e| matches!(e, Event::LearningOutcome { .. }))
        .count();
    // Every generate attempt chose, and every choice that ran reported.
    assert!(chosen.len() >= 100, "{} choices", chosen.len());
    assert_eq!(outcomes, chosen.len());
    assert!(chosen.iter().any(|c| c.2), "some choices explore");
    // globex, never degraded, explores and learns that `large` does best;
    // acme, degraded when it runs at its concurrency limit, records what
    // the plan ran.
    let globex_last = chosen.iter().rev().find(|c| c.0 == "globex").unwrap();
    assert_eq!((globex_last.1.as_str(), globex_last.2), ("large", false));
    assert!(
        chosen
            .iter()
            .any(|c| c.0 == "acme" && c.1 == "small" && !c.2),
        "a degraded choice records the cheaper model that ran"
    );
    // acme spends past half its budget: its exploration grows while it
    // has room, then comes back to the aggressive share.
    let acme_adjustments: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::LearningProfileAdjusted {
                tenant,
                exploration_bp,
                ..
            } if tenant.as_str() == "acme" => Some(*exploration_bp),
            _ => None,
        })
        .collect();
    assert_eq!(
        acme_adjustments.first(),
        Some(&3_000),
        "{acme_adjustments:?}"
    );
    assert_eq!(
        acme_adjustments.get(1),
        Some(&2_000),
        "{acme_adjustments:?}"
    );
    // No learning event of one tenant names a task of the other.
    for e in &events {
        if let (Event::LearningArmChosen { tenant, task, .. }, true) =
            (e, e.kind().starts_with("learning_"))
        {
            assert!(task.as_str().contains(tenant.as_str()), "{e}");
        }
    }
    // Same workload and seed in a fresh directory: the same ledger.
    let again = tempfile::tempdir().unwrap();
    let (events_again, report_again) = run(again.path());
    assert_eq!(events, events_again);
    assert_eq!(report.digest, report_again.digest);
    // Replaying the ledger rebuilds the same learning state.
    let folded = runledger::log::replay::fold(&open_store(dir.path()), None).unwrap();
    assert_eq!(
        folded.state.digests().combined.to_hex().as_str(),
        report.digest
    );
    assert!(folded.state.learning.get(&"acme".into()).unwrap().outcomes > 0);
}

#[test]
fn a_malformed_learn_offer_is_refused_with_its_line() {
    for (bad, expect) in [
        ("learn = \"model\"", "learn must be a table"),
        ("learn = { model = [] }", "needs 1 to 16 values"),
        ("learn = { model = [\"a\", \"a\"] }", "lists `a` twice"),
        ("learn = { model = [1, 2] }", "non-empty strings"),
        (
            "learn = { model = [\"a\"], depth = [\"3\"] }",
            "learn must be a table",
        ),
    ] {
        let text = format!(
            "[[pipelines]]\nid = \"p\"\nnodes = [\n  {{ id = \"n\", params = {{ {bad} }} }},\n]\n"
        );
        let err = Workload::parse("w.toml", &text).unwrap_err().to_string();
        assert!(err.contains("w.toml:4"), "{bad}: {err}");
        assert!(err.contains(expect), "{bad}: {err}");
    }
}
