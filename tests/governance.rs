//! Given / when / then tests of the tenant budget controller: admission at
//! the exact edge of the budget, reservation posting and release, overruns,
//! status changes at their thresholds, concurrency limits, isolation.

mod support;

use runledger::domain::governance::{Denial, admit_run, admit_task, settle, status_of};
use runledger::domain::*;

use support::events::{self, given, run_started, tenant};

/// A task of run `r` with its ceiling and two attempts.
fn submit(task: &str, tenant: &str, ceiling: i64) -> Event {
    events::submit(task, tenant)
        .ceiling(ceiling)
        .max_attempts(2)
        .into()
}

fn apply_all(state: &mut State, events: &[Event]) {
    for e in events {
        state
            .apply(state.seq + 1, Timestamp(0), e)
            .unwrap_or_else(|r| panic!("{e}: {r}"));
    }
}

fn base() -> Vec<Event> {
    vec![
        tenant("acme", 1_000).max_runs(2).into(),
        tenant("globex", 1_000).max_runs(2).into(),
        run_started("r", 1),
    ]
}

#[test]
fn admission_reserves_exactly_up_to_the_budget_edge() {
    let mut events = base();
    events.extend([
        submit("a", "acme", 600),
        submit("b", "acme", 400),
        submit("c", "acme", 1),
    ]);
    let mut state = given(&events);
    assert_eq!(admit_task(&state, &"a".into()), Ok(Micros(600)));
    apply_all(
        &mut state,
        &[Event::CostReserved {
            tenant: "acme".into(),
            task: "a".into(),
            amount_micros: Micros(600),
        }],
    );
    assert_eq!(
        admit_task(&state, &"b".into()),
        Ok(Micros(400)),
        "exactly the rest fits"
    );
    apply_all(
        &mut state,
        &[Event::CostReserved {
            tenant: "acme".into(),
            task: "b".into(),
            amount_micros: Micros(400),
        }],
    );
    match admit_task(&state, &"c".into()) {
        Err(Denial::BudgetBusy(reason)) => {
            assert!(reason.contains("0.000000 available"), "{reason}")
        }
        other => panic!("one micro over must wait while reservations are open: {other:?}"),
    }
}

#[test]
fn admission_with_nothing_reserved_and_no_room_is_exhausted() {
    let mut events = base();
    events.extend([
        Event::CostIncurred {
            tenant: "acme".into(),
            task: None,
            category: Category::Llm,
            amount_micros: Micros(950),
        },
        submit("a", "acme", 51),
    ]);
    let state = given(&events);
    let denial = admit_task(&state, &"a".into()).unwrap_err();
    assert!(
        matches!(denial, Denial::BudgetExhausted(_)) && !denial.may_wait(),
        "{denial:?}"
    );
}

#[test]
fn settlement_posts_costs_releases_the_rest_and_changes_status_at_the_threshold() {
    let mut events = base();
    events.extend([
        submit("a", "acme", 900),
        Event::CostReserved {
            tenant: "acme".into(),
            task: "a".into(),
            amount_micros: Micros(900),
        },
    ]);
    let mut state = given(&events);
    let settled = settle(
        &state,
        &"a".into(),
        &[
            (Category::Llm, Micros(700)),
            (Category::Rerank, Micros(100)),
        ],
    );
    let kinds: Vec<&str> = settled.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        [
            "cost_incurred",
            "cost_incurred",
            "reservation_released",
            "budget_status_changed"
        ]
    );
    assert!(matches!(
        &settled[2],
        Event::ReservationReleased {
            amount_micros: Micros(100),
            ..
        }
    ));
    assert!(
        matches!(
            &settled[3],
            Event::BudgetStatusChanged {
                to: BudgetStatus::Warning,
                ..
            }
        ),
        "800 of 1000 is WARNING"
    );
    apply_all(&mut state, &settled);
    let t = state.tenants.get(&"acme".into()).unwrap();
    assert_eq!(
        (t.spent_micros(), t.reserved_micros, t.status()),
        (Micros(800), Micros(0), BudgetStatus::Warning)
    );
}

#[test]
fn settlement_above_the_ceiling_is_an_overrun_that_blocks_the_tenant() {
    let mut events = base();
    events.extend([
        submit("a", "acme", 100),
        submit("b", "acme", 100),
        Event::CostReserved {
            tenant: "acme".into(),
            task: "a".into(),
            amount_micros: Micros(100),
        },
    ]);
    let mut state = given(&events);
    let settled = settle(&state, &"a".into(), &[(Category::Llm, Micros(130))]);
    assert!(
        matches!(
            &settled[0],
            Event::BudgetOverrun {
                amount_micros: Micros(30),
                ..
            }
        ),
        "the overrun comes before its costs"
    );
    assert!(settled.iter().any(|e| matches!(
        e,
        Event::BudgetStatusChanged {
            to: BudgetStatus::Exceeded,
            ..
        }
    )));
    apply_all(&mut state, &settled);
    assert!(matches!(
        admit_task(&state, &"b".into()),
        Err(Denial::Blocked(_))
    ));
    assert!(matches!(
        admit_run(&state, &"acme".into()),
        Err(Denial::Blocked(_))
    ));
    assert_eq!(
        admit_run(&state, &"globex".into()),
        Ok(()),
        "another tenant is untouched"
    );
}

#[test]
fn failed_attempt_posts_what_it_spent_and_releases_the_rest() {
    let mut events = base();
    events.extend([
        submit("a", "acme", 300),
        Event::CostReserved {
            tenant: "acme".into(),
            task: "a".into(),
            amount_micros: Micros(300),
        },
    ]);
    let mut state = given(&events);
    let settled = settle(&state, &"a".into(), &[(Category::Tool, Micros(50))]);
    apply_all(&mut state, &settled);
    let t = state.tenants.get(&"acme".into()).unwrap();
    assert_eq!(
        (t.spent_micros(), t.reserved_micros),
        (Micros(50), Micros(0))
    );
    let nothing = settle(&state, &"a".into(), &[]);
    assert!(
        nothing.is_empty(),
        "nothing reserved, nothing spent: {nothing:?}"
    );
}

#[test]
fn concurrency_limit_counts_open_pipeline_runs() {
    let mut events = base();
    events.extend([submit("a", "acme", 0), submit("b", "acme", 0)]);
    let state = given(&events);
    assert!(
        matches!(admit_run(&state, &"acme".into()), Err(Denial::Concurrency(r)) if r.contains("2 of 2"))
    );
    assert_eq!(admit_run(&state, &"globex".into()), Ok(()));
}

#[test]
fn status_thresholds_at_exact_edges() {
    assert_eq!(status_of(7_999, 10_000, false), BudgetStatus::Healthy);
    assert_eq!(status_of(8_000, 10_000, false), BudgetStatus::Warning);
    assert_eq!(status_of(8_999, 10_000, false), BudgetStatus::Warning);
    assert_eq!(status_of(9_000, 10_000, false), BudgetStatus::Critical);
    assert_eq!(status_of(10_000, 10_000, false), BudgetStatus::Critical);
    assert_eq!(status_of(1, 10_000, true), BudgetStatus::Exceeded);
}

#[test]
fn budget_periods_turn_at_utc_midnight_and_month_start() {
    use runledger::domain::governance::{period_index, period_resets};
    let t = |s: &str| Timestamp::parse(s).unwrap();
    assert_eq!(
        period_index(BudgetPeriod::None, t("2026-01-01T00:00:00Z")),
        None
    );
    assert_eq!(
        period_index(BudgetPeriod::Daily, t("2026-01-01T23:59:59.999999Z")).map(|d| d + 1),
        period_index(BudgetPeriod::Daily, t("2026-01-02T00:00:00Z"))
    );
    assert_eq!(
        period_index(BudgetPeriod::Monthly, t("2026-01-31T23:00:00Z")),
        period_index(BudgetPeriod::Monthly, t("2026-01-01T00:00:00Z"))
    );
    assert_ne!(
        period_index(BudgetPeriod::Monthly, t("2026-01-31T23:00:00Z")),
        period_index(BudgetPeriod::Monthly, t("2026-02-01T00:00:00Z"))
    );

    let daily: Event = tenant("d", 100)
        .max_runs(1)
        .period(BudgetPeriod::Daily)
        .into();
    // Registered on 2026-01-01: that is the daily tenant's first period.
    let mut state = State::new();
    for (i, e) in [daily, tenant("forever", 100).max_runs(1).into()]
        .iter()
        .enumerate()
    {
        state
            .apply(i as u64 + 1, t("2026-01-01T09:00:00Z"), e)
            .unwrap();
    }
    apply_all(
        &mut state,
        &[
            Event::CostIncurred {
                tenant: "d".into(),
                task: None,
                category: Category::Llm,
                amount_micros: Micros(95),
            },
            Event::BudgetStatusChanged {
                tenant: "d".into(),
                from: BudgetStatus::Healthy,
                to: BudgetStatus::Critical,
            },
        ],
    );
    assert!(period_resets(&state, t("2026-01-01T20:00:00Z")).is_empty());
    // Periods only move forward: an earlier time resets nothing.
    assert!(period_resets(&state, t("2025-12-31T20:00:00Z")).is_empty());
    let resets = period_resets(&state, t("2026-01-02T00:00:01Z"));
    let kinds: Vec<&str> = resets.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        ["budget_period_reset", "budget_status_changed"],
        "only the daily tenant resets"
    );
    for (i, e) in resets.iter().enumerate() {
        state
            .apply(state.seq + 1 + i as u64, t("2026-01-02T00:00:01Z"), e)
            .unwrap();
    }
    assert_eq!(
        state.tenants.get(&"d".into()).unwrap().spent_micros(),
        Micros(0)
    );
    // The next period began with the reset: nothing is due until the next day.
    assert!(period_resets(&state, t("2026-01-02T23:59:59Z")).is_empty());
    assert_eq!(period_resets(&state, t("2026-01-03T00:00:00Z")).len(), 1);
}

/// A node of pipeline `p1` in run `r`, one attempt.
fn node(
    task: &str,
    tenant: &str,
    ceiling: i64,
    deps: &[&str],
    optional: bool,
    params: &str,
) -> Event {
    events::submit(task, tenant)
        .deps(deps.iter().copied())
        .pipeline("p1")
        .ceiling(ceiling)
        .params(&serde_json::from_str(params).unwrap())
        .optional(optional)
        .into()
}

fn agent(state: &State, task: &str) -> runledger::domain::cost_agent::CostDecision {
    runledger::domain::cost_agent::decide(state, &task.into()).unwrap()
}

#[test]
fn cost_agent_continues_degrades_and_terminates_on_the_projection() {
    fn params(json: &str) -> (i64, &str) {
        (
            runledger::domain::cost::cost_ceiling(&serde_json::from_str(json).unwrap()).0,
            json,
        )
    }
    let retrieve = params(r#"{"step":"retrieve","depth":5}"#);
    let rerank = params(r#"{"step":"rerank"}"#);
    let generate = params(r#"{"step":"generate","model":"large","candidates":3}"#);
    // The ceilings the loader gives these sim steps: 200, 125, 89,100.
    assert_eq!((retrieve.0, rerank.0, generate.0), (200, 125, 89_100));
    let mut events = vec![
        tenant("acme", 100_000).max_runs(10).into(),
        run_started("r", 1),
    ];
    events.extend([
        node("retrieve", "acme", retrieve.0, &[], false, retrieve.1),
        node("rerank", "acme", rerank.0, &["retrieve"], true, rerank.1),
        node(
            "generate",
            "acme",
            generate.0,
            &["rerank"],
            false,
            generate.1,
        ),
    ]);
    let state = given(&events);
    // Under the plan: depth 5 → 3 (120), rerank skipped (0), one medium
    // candidate at depth 5 (5,940), derived once at submission.
    let degraded = |task: &str| {
        state
            .queue
            .get(&task.into())
            .unwrap()
            .degraded_ceiling_micros
            .0
    };
    assert_eq!(
        (
            degraded("retrieve"),
            degraded("rerank"),
            degraded("generate")
        ),
        (120, 0, 5_940)
    );
    // 200 + 125 + 89,100 = 89,425 of 100,000 with one run: continue.
    let d = agent(&state, "retrieve");
    assert_eq!(
        (
            d.decision,
            d.projection.remaining_micros,
            d.projection.projected_micros,
            d.projection.remaining_degraded_micros
        ),
        (Decision::Continue, 89_425, 89_425, 6_060)
    );
    // 20,000 already spent: 109,425 projected > 100,000; degraded 26,060 fits.
    let mut spent = state.clone();
    apply_all(
        &mut spent,
        &[Event::CostIncurred {
            tenant: "acme".into(),
            task: None,
            category: Category::Other,
            amount_micros: Micros(20_000),
        }],
    );
    let d = agent(&spent, "retrieve");
    assert_eq!(d.decision, Decision::Degrade, "{}", d.reason);
    assert_eq!(d.projection.projected_degraded_micros, 26_060);
    let plan = d.plan.unwrap();
    let degraded = plan.apply(
        &serde_json::from_str(r#"{"step":"generate","model":"large","candidates":3,"depth":5}"#)
            .unwrap(),
    );
    assert_eq!(
        degraded.as_json(),
        r#"{"candidates":1,"depth":3,"model":"medium","step":"generate"}"#
    );
    // Offered models step down too.
    let offer = plan
        .apply(&serde_json::from_str(r#"{"learn":{"model":["large","medium","small"]}}"#).unwrap());
    assert_eq!(offer.as_json(), r#"{"learn":{"model":["medium","small"]}}"#);
    // 96,000 spent: even degraded (96,000 + 6,060) does not fit: terminate.
    apply_all(
        &mut spent,
        &[Event::CostIncurred {
            tenant: "acme".into(),
            task: None,
            category: Category::Other,
            amount_micros: Micros(76_000),
        }],
    );
    let d = agent(&spent, "retrieve");
    assert_eq!(d.decision, Decision::Terminate, "{}", d.reason);
    assert_eq!(d.projection.projected_degraded_micros, 102_060);
}

#[test]
fn cost_agent_degrades_above_ninety_percent_utilisation_and_eighty_percent_concurrency() {
    let mut events = vec![
        tenant("acme", 10_000).max_runs(10).into(),
        run_started("r", 1),
    ];
    events.push(node("t", "acme", 10, &[], false, "{}"));
    let mut state = given(&events);
    apply_all(
        &mut state,
        &[Event::CostIncurred {
            tenant: "acme".into(),
            task: None,
            category: Category::Llm,
            amount_micros: Micros(9_000),
        }],
    );
    assert_eq!(
        agent(&state, "t").decision,
        Decision::Continue,
        "exactly 90 % is not above it"
    );
    apply_all(
        &mut state,
        &[Event::CostIncurred {
            tenant: "acme".into(),
            task: None,
            category: Category::Llm,
            amount_micros: Micros(1),
        }],
    );
    assert_eq!(agent(&state, "t").decision, Decision::Degrade);

    let mut busy = vec![
        tenant("b", 1_000_000).max_runs(10).into(),
        run_started("r", 1),
    ];
    for i in 0..8 {
        busy.push(submit(&format!("x{i}"), "b", 1));
    }
    let state = given(&busy);
    assert_eq!(
        agent(&state, "x0").decision,
        Decision::Continue,
        "8 of 10 runs is not above 80 %"
    );
    let mut more = busy.clone();
    more.push(submit("x8", "b", 1));
    assert_eq!(agent(&given(&more), "x0").decision, Decision::Degrade);
}
