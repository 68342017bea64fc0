//! Every node is governed. A node whose handler has no cost model (`exec`,
//! a user's handler) takes its own `cost_ceiling_micros` or the workload's
//! `[execution] default_cost_ceiling_micros`, and is refused at load with
//! neither; its attempts reserve that ceiling, and what they spend past it
//! — anything, for a node declared free — is a recorded `budget_overrun`.
//! So `spent + reserved ≤ budget` at every seq unless an overrun was
//! recorded.

mod support;

use std::path::Path;

use runledger::domain::{Event, Micros, State, TenantId, Timestamp};
use runledger::runtime::handler::Handlers;
use runledger::workload::Workload;

use support::ledger::events;
use support::live::script;

fn run(dir: &Path, w: &Workload) -> runledger::runtime::RunReport {
    support::live::run(dir, w, &Handlers::builtin())
}

/// A tenant of budget 1,000 running `runs` one-node pipelines whose `exec`
/// step reports `cost` each time; `execution` and `ceiling` are spliced
/// into the workload.
fn text(step: &str, execution: &str, ceiling: &str, runs: u32) -> String {
    format!(
        r#"seed = 2
[execution]
{execution}
[execution.pool]
max_concurrency = 1
[execution.workers]
num_workers = 1
[[tenants]]
id = "small"
budget_micros = 1000
max_concurrent_runs = 1
[[pipelines]]
id = "p"
nodes = [ {{ id = "a", handler = "exec"{ceiling}, params = {{ argv = ["{step}"] }} }} ]
[[submissions]]
tenant = "small"
pipeline = "p"
runs = {runs}
"#
    )
}

fn step(dir: &Path, cost: i64) -> String {
    script(
        dir,
        &format!("cost{cost}.sh"),
        &format!(
            r#"cat >/dev/null; echo '{{"costs":[{{"category":"llm","amount_micros":{cost}}}]}}'"#
        ),
    )
}

/// Folds `events` and fails at the first seq where a tenant's `spent +
/// reserved` passes its budget without a recorded overrun.
fn budget_holds_at_every_seq(events: &[Event]) {
    let mut state = State::new();
    for (i, e) in events.iter().enumerate() {
        state.evolve(i as u64 + 1, Timestamp(0), e.clone());
        for t in state.tenants.sorted() {
            assert!(
                t.spent_micros().0 + t.reserved_micros.0 <= t.budget_micros.0 || t.overrun,
                "seq {}: tenant {} spent {} + reserved {} > budget {} with no overrun recorded",
                i + 1,
                t.tenant,
                t.spent_micros(),
                t.reserved_micros,
                t.budget_micros
            );
        }
    }
}

fn tenant(events: &[Event]) -> runledger::domain::budget::Tenant {
    let mut state = State::new();
    for (i, e) in events.iter().enumerate() {
        state.evolve(i as u64 + 1, Timestamp(0), e.clone());
    }
    state
        .tenants
        .get(&TenantId("small".into()))
        .unwrap()
        .clone()
}

#[test]
fn a_node_without_a_cost_model_or_a_ceiling_is_refused_with_its_line() {
    let err = Workload::parse("w.toml", &text("/bin/true", "", "", 1))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("w.toml:14: node `a`: handler `exec` has no cost model"),
        "{err}"
    );
    assert!(err.contains("default_cost_ceiling_micros"), "{err}");
    // A user's handler too.
    let user = text("/bin/true", "", "", 1).replace("handler = \"exec\"", "handler = \"echo\"");
    let err = Workload::parse_for("w.toml", &user, &["echo", "sim"])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("w.toml:14: node `a`: handler `echo`"),
        "{err}"
    );
    // A negative default is named at its line.
    let err = Workload::parse(
        "w.toml",
        &text("/bin/true", "default_cost_ceiling_micros = -1", "", 1),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("w.toml:3: execution.default_cost_ceiling_micros must not be negative"),
        "{err}"
    );
    // Either ceiling is enough; `sim` nodes have their cost model.
    for (execution, ceiling) in [
        ("default_cost_ceiling_micros = 300", ""),
        ("", ", cost_ceiling_micros = 300"),
        ("", ", cost_ceiling_micros = 0"),
    ] {
        let w = Workload::parse("w.toml", &text("/bin/true", execution, ceiling, 1)).unwrap();
        let expected = if ceiling.ends_with(" 0") { 0 } else { 300 };
        assert_eq!(
            w.pipelines["p"].nodes[0].cost_ceiling_micros,
            Micros(expected)
        );
    }
}

#[test]
fn nodes_on_the_default_ceiling_are_admitted_up_to_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let step = step(dir.path(), 300);
    let w = Workload::parse(
        "w.toml",
        &text(&step, "default_cost_ceiling_micros = 300", "", 5),
    )
    .unwrap();
    let report = run(&dir.path().join("data"), &w);
    assert_eq!(
        (report.acked, report.cancelled),
        (3, 2),
        "three reservations of 300 fit a budget of 1,000, a fourth does not"
    );
    let evs = events(&dir.path().join("data"));
    let reserved = evs
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::CostReserved {
                    amount_micros: Micros(300),
                    ..
                }
            )
        })
        .count();
    assert_eq!(reserved, 3, "each attempt reserved the default ceiling");
    budget_holds_at_every_seq(&evs);
    let t = tenant(&evs);
    assert_eq!(t.spent_micros(), Micros(900));
    assert!(!t.overrun);
}

#[test]
fn spend_past_the_default_ceiling_is_an_overrun_and_stops_the_tenant() {
    let dir = tempfile::tempdir().unwrap();
    // Each attempt spends four times what it reserved: unguarded, five of
    // them would take the tenant to 400 % of its budget.
    let step = step(dir.path(), 800);
    let w = Workload::parse(
        "w.toml",
        &text(&step, "default_cost_ceiling_micros = 200", "", 5),
    )
    .unwrap();
    let report = run(&dir.path().join("data"), &w);
    assert_eq!(
        report.acked, 1,
        "after the overrun nothing more is admitted"
    );
    let evs = events(&dir.path().join("data"));
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::BudgetOverrun {
            amount_micros: Micros(600),
            ..
        }
    )));
    budget_holds_at_every_seq(&evs);
    let t = tenant(&evs);
    assert_eq!(t.spent_micros(), Micros(800));
    assert!(t.overrun);
}

#[test]
fn a_node_declared_free_that_spends_records_an_overrun() {
    let dir = tempfile::tempdir().unwrap();
    let step = step(dir.path(), 400);
    let w = Workload::parse("w.toml", &text(&step, "", ", cost_ceiling_micros = 0", 5)).unwrap();
    let report = run(&dir.path().join("data"), &w);
    assert_eq!(
        report.acked, 1,
        "after the overrun nothing more is admitted"
    );
    let evs = events(&dir.path().join("data"));
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::BudgetOverrun {
            amount_micros: Micros(400),
            ..
        }
    )));
    budget_holds_at_every_seq(&evs);
    assert_eq!(tenant(&evs).spent_micros(), Micros(400));
}
