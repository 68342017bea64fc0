//! Long pipelines cost linear work: the remaining DAG the cost agent
//! projects (`Queue::remaining`) equals a plain walk of the node and
//! everything downstream of it on random DAGs through random lifecycles,
//! yet each node's share is computed once over a serial pipeline, not once
//! per decision upstream; the workload checker sorts and cycle-checks a
//! pipeline of any depth (in the order a plain repeated scan gives) without
//! recursion.

mod support;

use proptest::prelude::*;
use runledger::domain::queue::TaskStatus;
use runledger::domain::{Event, Params, State, TaskId, Timestamp};

use support::events::{self, run_started, tenant};

fn setup() -> Vec<Event> {
    vec![
        tenant("acme", 1_000_000_000).max_runs(1_000_000).into(),
        run_started("r", 1),
    ]
}

fn submit(task: &str, deps: &[String], ceiling: i64, optional: bool, model: &str) -> Event {
    events::submit(task, "acme")
        .deps(deps.iter().cloned())
        .pipeline("acme/p#0")
        .ceiling(ceiling)
        .params(&serde_json::json!({ "step": "generate", "model": model }))
        .max_attempts(1_000)
        .optional(optional)
        .into()
}

/// The remaining DAG as the cost agent first computed it: a walk from the
/// node over every dependant, each node once, summing the ceilings of the
/// nodes that have not started.
fn walk(state: &State, task: &TaskId) -> (i64, i64) {
    let (mut full, mut degraded) = (0i64, 0i64);
    let mut stack = vec![task.clone()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(t) = state.queue.get(&id) else {
            continue;
        };
        if matches!(t.status, TaskStatus::Waiting | TaskStatus::Pending) {
            full = full.saturating_add(t.cost_ceiling_micros.0);
            degraded = degraded.saturating_add(t.degraded_ceiling_micros.0);
        }
        stack.extend(t.dependants.iter().cloned());
    }
    (full, degraded)
}

struct Fold {
    state: State,
}

impl Fold {
    fn apply(&mut self, event: &Event) -> bool {
        let seq = self.state.seq + 1;
        self.state.apply(seq, Timestamp(0), event).is_ok()
    }
}

/// One step of a random lifecycle, picked by `pick` among what the state
/// allows.
fn step(fold: &mut Fold, op: u8, pick: usize, new_id: &mut u32) {
    let tasks: Vec<(TaskId, TaskStatus, bool)> = fold
        .state
        .queue
        .sorted()
        .into_iter()
        .map(|(id, t)| (id.clone(), t.status, t.optional))
        .collect();
    let with = |f: &dyn Fn(TaskStatus, bool) -> bool| -> Option<TaskId> {
        let matching: Vec<&TaskId> = tasks
            .iter()
            .filter(|(_, s, o)| f(*s, *o))
            .map(|(id, _, _)| id)
            .collect();
        (!matching.is_empty()).then(|| matching[pick % matching.len()].clone())
    };
    let attempts = |id: &TaskId| fold.state.queue.get(id).map_or(0, |t| t.attempts);
    let event = match op % 7 {
        0 | 1 => with(&|s, _| s == TaskStatus::Pending).map(|task| Event::TaskDequeued {
            attempt: attempts(&task) + 1,
            task,
            worker: "w".into(),
            lease_deadline: None,
        }),
        2 | 3 => with(&|s, _| s == TaskStatus::Leased).map(|task| Event::TaskAcked {
            task,
            worker: "w".into(),
            output: Params::null(),
        }),
        4 => with(&|s, _| s == TaskStatus::Leased).map(|task| Event::TaskNacked {
            task,
            worker: "w".into(),
            error: "boom".into(),
            retry_at: None,
            timed_out: false,
        }),
        5 => with(&|s, o| s == TaskStatus::Pending && o).map(|task| Event::TaskSkipped {
            task,
            reason: "plan".into(),
        }),
        _ => {
            if pick % 3 == 0 {
                with(&|s, _| matches!(s, TaskStatus::Waiting | TaskStatus::Pending)).map(|task| {
                    Event::TaskCancelled {
                        task,
                        reason: "cancelled".into(),
                    }
                })
            } else {
                // A late node below one or two existing ones.
                *new_id += 1;
                let mut deps = vec![tasks[pick % tasks.len()].0.to_string()];
                if pick % 2 == 0 {
                    deps.push(tasks[(pick / 2) % tasks.len()].0.to_string());
                    deps.dedup();
                }
                Some(submit(
                    &format!("late{new_id}"),
                    &deps,
                    (pick % 9) as i64 * 100,
                    pick % 4 == 0,
                    "large",
                ))
            }
        }
    };
    if let Some(event) = event {
        assert!(fold.apply(&event), "{event:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn remaining_equals_a_walk_of_the_dag_at_every_step(
        nodes in prop::collection::vec(
            (prop::collection::vec(any::<prop::sample::Index>(), 0..4), 0i64..5_000, any::<bool>(), 0usize..3),
            1..40,
        ),
        ops in prop::collection::vec((any::<u8>(), any::<usize>(), any::<bool>()), 0..120),
    ) {
        let mut fold = Fold { state: State::new() };
        for event in setup() {
            prop_assert!(fold.apply(&event));
        }
        for (i, (deps, ceiling, optional, model)) in nodes.iter().enumerate() {
            let mut deps: Vec<String> = if i == 0 {
                Vec::new()
            } else {
                deps.iter().map(|d| format!("n{}", d.index(i))).collect()
            };
            deps.sort();
            deps.dedup();
            let model = ["large", "medium", "small"][*model];
            let event = submit(&format!("n{i}"), &deps, *ceiling, *optional, model);
            prop_assert!(fold.apply(&event));
        }
        let mut new_id = 0;
        for (op, pick, look_at_all) in ops {
            step(&mut fold, op, pick, &mut new_id);
            let state = &fold.state;
            let ids: Vec<TaskId> = state.queue.sorted().into_iter().map(|(id, _)| id.clone()).collect();
            // Sometimes ask for every node, sometimes for one: what is
            // remembered between steps varies.
            let asked: Vec<&TaskId> = if look_at_all {
                ids.iter().collect()
            } else {
                vec![&ids[pick % ids.len()]]
            };
            for id in asked {
                prop_assert_eq!(state.queue.remaining(id), walk(state, id), "task {} after op {}", id, op);
            }
        }
    }
}

/// A serial pipeline of n nodes run to its end, the cost agent deciding
/// before each node: the nodes whose share of the remaining DAG is computed
/// number O(n) in all (a walk per decision would visit n²/2).
#[test]
fn a_serial_pipeline_costs_the_cost_agent_linear_work() {
    let n = 3_000;
    let mut fold = Fold {
        state: State::new(),
    };
    for event in setup() {
        assert!(fold.apply(&event));
    }
    for i in 0..n {
        let deps = if i == 0 {
            Vec::new()
        } else {
            vec![format!("n{}", i - 1)]
        };
        assert!(fold.apply(&submit(&format!("n{i}"), &deps, 10, false, "small")));
    }
    for i in 0..n {
        let task = TaskId(format!("n{i}"));
        let decision = runledger::domain::cost_agent::decide(&fold.state, &task).unwrap();
        assert_eq!(decision.projection.remaining_micros, 10 * (n - i) as i64);
        assert!(fold.apply(&Event::TaskDequeued {
            task: task.clone(),
            worker: "w".into(),
            attempt: 1,
            lease_deadline: None,
        }));
        assert!(fold.apply(&Event::TaskAcked {
            task,
            worker: "w".into(),
            output: Params::null(),
        }));
    }
    let work = fold.state.queue.remaining_work();
    assert!(
        work <= 2 * n as u64,
        "{work} nodes computed for {n} decisions"
    );
}

fn serial_text(nodes: usize) -> String {
    let mut text = String::from(
        "[[tenants]]\nid = \"t\"\nbudget_micros = 1000000000\n[[pipelines]]\nid = \"p\"\nmode = \"serial\"\nnodes = [\n",
    );
    for i in 0..nodes {
        text.push_str(&format!("{{id=\"n{i}\"}},\n"));
    }
    text.push_str("]\n[[submissions]]\ntenant = \"t\"\npipeline = \"p\"\n");
    text
}

/// 60,000 nodes deep: the checker neither recursed through the chain (a
/// stack overflow) nor moved the rest of the list for each node placed.
#[test]
fn a_deep_serial_pipeline_is_checked_and_sorted_without_recursion() {
    let n = 60_000;
    let text = serial_text(n);
    let handle = std::thread::Builder::new()
        // The test harness's default, said out loud: the check must not
        // need more.
        .stack_size(2 << 20)
        .spawn(move || {
            runledger::workload::Workload::parse("deep.toml", &text)
                .map(|w| w.pipelines["p"].nodes.len())
        })
        .unwrap();
    assert_eq!(handle.join().unwrap().unwrap(), n);
    // A cycle at the end of the chain is still found.
    let mut cyclic = serial_text(n);
    cyclic = cyclic.replace(
        "{id=\"n0\"}",
        &format!("{{id=\"n0\", deps=[\"n{}\"]}}", n - 1),
    );
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || runledger::workload::Workload::parse("deep.toml", &cyclic).map(|_| ()))
        .unwrap();
    let err = handle.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("dependency cycle through node `n0`"), "{err}");
    assert!(err.starts_with("deep.toml:8:"), "{err}");
}

/// The order nodes are submitted in, on random DAGs written in random
/// order: of the nodes whose dependencies are placed, the first written
/// goes next — what a repeated scan from the front gives.
#[test]
fn nodes_are_sorted_parents_first_otherwise_in_written_order() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as usize
    };
    for _ in 0..200 {
        let n = 1 + next(25);
        // A DAG on 0..n (edges from lower to higher ranks), written in a
        // shuffled order.
        let mut written: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            written.swap(i, next(i + 1));
        }
        let deps: Vec<Vec<usize>> = (0..n)
            .map(|i| {
                (0..next(4))
                    .filter(|_| i > 0)
                    .map(|_| next(i.max(1)))
                    .collect()
            })
            .collect();
        let mut text = String::from(
            "[[tenants]]\nid = \"t\"\nbudget_micros = 1\n[[pipelines]]\nid = \"p\"\nnodes = [\n",
        );
        for &i in &written {
            let list: Vec<String> = deps[i].iter().map(|d| format!("\"n{d}\"")).collect();
            text.push_str(&format!("{{id=\"n{i}\", deps=[{}]}},\n", list.join(", ")));
        }
        text.push_str("]\n");
        let parsed = runledger::workload::Workload::parse("order.toml", &text).unwrap();
        let got: Vec<String> = parsed.pipelines["p"]
            .nodes
            .iter()
            .map(|n| n.id.clone())
            .collect();
        // The reference: scan the written order from the front each time.
        let mut rest: Vec<usize> = written.clone();
        let mut placed = std::collections::BTreeSet::new();
        let mut expected = Vec::new();
        while !rest.is_empty() {
            let k = rest
                .iter()
                .position(|i| deps[*i].iter().all(|d| placed.contains(d)))
                .unwrap();
            let i = rest.remove(k);
            placed.insert(i);
            expected.push(format!("n{i}"));
        }
        assert_eq!(got, expected, "{text}");
    }
}
