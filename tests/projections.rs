//! Given / when / then tests of every projection: each starts from a list
//! of recorded events, applies one more, and checks the verdict and the
//! state that follows. No disk, no runtime.

mod support;

use runledger::domain::queue::TaskStatus;
use runledger::domain::*;

use support::events::{self, run_started};

/// A tenant of at most 2 concurrent runs.
fn tenant(id: &str, budget: i64) -> Event {
    events::tenant(id, budget).max_runs(2).into()
}

/// A task of run `r1` with two attempts.
fn submit(task: &str, tenant: &str, priority: Priority, deps: &[&str]) -> Event {
    events::submit(task, tenant)
        .run("r1")
        .priority(priority)
        .deps(deps.iter().copied())
        .max_attempts(2)
        .into()
}

fn dequeue(task: &str, worker: &str, attempt: u32) -> Event {
    Event::TaskDequeued {
        task: task.into(),
        worker: worker.into(),
        attempt,
        lease_deadline: None,
    }
}

fn ack(task: &str, worker: &str) -> Event {
    Event::TaskAcked {
        task: task.into(),
        worker: worker.into(),
        output: Params::null(),
    }
}

fn nack(task: &str, worker: &str) -> Event {
    Event::TaskNacked {
        task: task.into(),
        worker: worker.into(),
        error: "boom".into(),
        retry_at: None,
        timed_out: false,
    }
}

fn cost(tenant: &str, task: Option<&str>, category: Category, amount: i64) -> Event {
    Event::CostIncurred {
        tenant: tenant.into(),
        task: task.map(TaskId::from),
        category,
        amount_micros: Micros(amount),
    }
}

fn reserve(tenant: &str, task: &str, amount: i64) -> Event {
    Event::CostReserved {
        tenant: tenant.into(),
        task: task.into(),
        amount_micros: Micros(amount),
    }
}

fn release(tenant: &str, task: &str, amount: i64) -> Event {
    Event::ReservationReleased {
        tenant: tenant.into(),
        task: task.into(),
        amount_micros: Micros(amount),
    }
}

/// Folds `given` (each must be accepted), then applies `when` and returns
/// its verdict with the state after it.
#[track_caller]
fn check(given: &[Event], when: Event) -> (Result<(), Rejection>, State) {
    let mut state = State::new();
    for (i, event) in given.iter().enumerate() {
        if let Err(rejection) = state.apply(i as u64 + 1, Timestamp(i as i64 * 1_000), event) {
            panic!("given event {i} ({event}) was rejected: {rejection}");
        }
    }
    let verdict = state.apply(
        given.len() as u64 + 1,
        Timestamp(given.len() as i64 * 1_000),
        &when,
    );
    (verdict, state)
}

fn base() -> Vec<Event> {
    vec![
        tenant("acme", 10_000),
        tenant("globex", 5_000),
        run_started("r1", 7),
    ]
}

fn status(state: &State, task: &str) -> TaskStatus {
    state.queue.get(&task.into()).unwrap().status
}

#[test]
fn tenant_register_twice_rejected() {
    let (verdict, _) = check(&base(), tenant("acme", 1));
    assert_eq!(verdict, Err(Rejection::DuplicateTenant("acme".into())));
}

#[test]
fn tenant_register_negative_budget_rejected() {
    let (verdict, _) = check(&[], tenant("acme", -1));
    assert_eq!(
        verdict,
        Err(Rejection::Negative {
            field: "budget_micros",
            value: -1
        })
    );
}

#[test]
fn tenant_update_changes_only_given_fields() {
    let update = Event::TenantUpdated {
        tenant: "acme".into(),
        budget_micros: Some(Micros(20_000)),
        max_concurrent_runs: None,
        learning_intensity: Some(LearningIntensity::Aggressive),
        meta_learning: None,
        budget_period: None,
    };
    let (verdict, state) = check(&base(), update);
    verdict.unwrap();
    let t = state.tenants.get(&"acme".into()).unwrap();
    assert_eq!(t.budget_micros, Micros(20_000));
    assert_eq!(t.max_concurrent_runs, 2);
    assert_eq!(
        state.learning.get(&"acme".into()).unwrap().exploration_bp,
        2_000
    );
}

#[test]
fn run_start_twice_rejected_and_finish_closes_it() {
    let (verdict, _) = check(&base(), run_started("r1", 7));
    assert_eq!(verdict, Err(Rejection::DuplicateRun("r1".into())));
    let mut given = base();
    given.push(Event::RunFinished { run: "r1".into() });
    let (verdict, _) = check(&given, submit("t1", "acme", Priority::Normal, &[]));
    assert_eq!(verdict, Err(Rejection::RunFinished("r1".into())));
}

#[test]
fn task_submit_unknown_tenant_or_run_rejected() {
    let (verdict, _) = check(&base(), submit("t1", "nobody", Priority::Normal, &[]));
    assert_eq!(verdict, Err(Rejection::UnknownTenant("nobody".into())));
    let (verdict, _) = check(
        &[tenant("acme", 1)],
        submit("t1", "acme", Priority::Normal, &[]),
    );
    assert_eq!(verdict, Err(Rejection::UnknownRun("r1".into())));
}

#[test]
fn task_submit_unknown_or_self_dependency_rejected() {
    let (verdict, _) = check(&base(), submit("t1", "acme", Priority::Normal, &["ghost"]));
    assert_eq!(
        verdict,
        Err(Rejection::UnknownDependency {
            task: "t1".into(),
            dep: "ghost".into()
        })
    );
    let (verdict, _) = check(&base(), submit("t1", "acme", Priority::Normal, &["t1"]));
    assert_eq!(verdict, Err(Rejection::SelfDependency("t1".into())));
}

#[test]
fn task_submit_duplicate_rejected() {
    let mut given = base();
    given.push(submit("t1", "acme", Priority::Normal, &[]));
    let (verdict, _) = check(&given, submit("t1", "acme", Priority::Normal, &[]));
    assert_eq!(verdict, Err(Rejection::DuplicateTask("t1".into())));
}

#[test]
fn queue_ready_set_is_fifo_within_priority_and_ordered_by_priority() {
    let mut given = base();
    given.push(submit("low-1", "acme", Priority::Low, &[]));
    given.push(submit("crit-1", "acme", Priority::Critical, &[]));
    given.push(submit("low-2", "acme", Priority::Low, &[]));
    let (verdict, state) = check(&given, submit("crit-2", "acme", Priority::Critical, &[]));
    verdict.unwrap();
    let crit: Vec<_> = state
        .queue
        .ready(Priority::Critical)
        .map(|t| t.as_str())
        .collect();
    let low: Vec<_> = state
        .queue
        .ready(Priority::Low)
        .map(|t| t.as_str())
        .collect();
    assert_eq!(crit, ["crit-1", "crit-2"]);
    assert_eq!(low, ["low-1", "low-2"]);
    assert_eq!(state.queue.ready_by_priority(), [2, 0, 0, 2, 0]);
}

#[test]
fn task_with_open_parent_waits_until_parent_acked() {
    let mut given = base();
    given.push(submit("parent", "acme", Priority::Normal, &[]));
    given.push(submit("child", "acme", Priority::Normal, &["parent"]));
    let (_, state) = check(&given, dequeue("parent", "w1", 1));
    assert_eq!(status(&state, "child"), TaskStatus::Waiting);
    let (verdict, _) = check(&given, dequeue("child", "w1", 1));
    assert_eq!(
        verdict,
        Err(Rejection::InvalidTransition {
            task: "child".into(),
            action: "dequeue",
            status: TaskStatus::Waiting
        })
    );
    given.push(dequeue("parent", "w1", 1));
    let (verdict, state) = check(&given, ack("parent", "w1"));
    verdict.unwrap();
    assert_eq!(status(&state, "child"), TaskStatus::Pending);
    assert_eq!(state.queue.counts().done, 1);
}

#[test]
fn task_ack_without_dequeue_rejected() {
    let mut given = base();
    given.push(submit("t1", "acme", Priority::Normal, &[]));
    let (verdict, _) = check(&given, ack("t1", "w1"));
    assert_eq!(
        verdict,
        Err(Rejection::InvalidTransition {
            task: "t1".into(),
            action: "ack",
            status: TaskStatus::Pending
        })
    );
}

#[test]
fn task_second_ack_rejected() {
    let mut given = base();
    given.extend([
        submit("t1", "acme", Priority::Normal, &[]),
        dequeue("t1", "w1", 1),
        ack("t1", "w1"),
    ]);
    let (verdict, _) = check(&given, ack("t1", "w1"));
    assert_eq!(
        verdict,
        Err(Rejection::InvalidTransition {
            task: "t1".into(),
            action: "ack",
            status: TaskStatus::Done
        })
    );
}

#[test]
fn task_ack_by_other_worker_rejected() {
    let mut given = base();
    given.extend([
        submit("t1", "acme", Priority::Normal, &[]),
        dequeue("t1", "w1", 1),
    ]);
    let (verdict, _) = check(&given, ack("t1", "w2"));
    assert_eq!(
        verdict,
        Err(Rejection::WrongWorker {
            task: "t1".into(),
            holder: "w1".into(),
            worker: "w2".into()
        })
    );
}

#[test]
fn task_nack_returns_it_for_retry_and_attempts_are_counted() {
    let mut given = base();
    given.extend([
        submit("t1", "acme", Priority::Normal, &[]),
        dequeue("t1", "w1", 1),
    ]);
    let (verdict, state) = check(&given, nack("t1", "w1"));
    verdict.unwrap();
    assert_eq!(status(&state, "t1"), TaskStatus::Pending);
    assert_eq!(state.queue.counts().retries, 1);
    given.push(nack("t1", "w1"));
    let (verdict, _) = check(&given, dequeue("t1", "w2", 1));
    assert_eq!(
        verdict,
        Err(Rejection::WrongAttempt {
            task: "t1".into(),
            expected: 2,
            got: 1
        })
    );
    given.extend([dequeue("t1", "w2", 2), nack("t1", "w2")]);
    let (verdict, _) = check(&given, dequeue("t1", "w2", 3));
    assert_eq!(
        verdict,
        Err(Rejection::AttemptsExhausted {
            task: "t1".into(),
            attempt: 3,
            max_attempts: 2
        })
    );
    let (verdict, state) = check(
        &given,
        Event::TaskDeadLettered {
            task: "t1".into(),
            reason: "2 attempts".into(),
        },
    );
    verdict.unwrap();
    assert_eq!(status(&state, "t1"), TaskStatus::DeadLettered);
    let workers = state.workers.get(&"w2".into()).unwrap();
    assert_eq!(
        (workers.executed, workers.failed, workers.success_rate_bp()),
        (1, 1, 0)
    );
}

#[test]
fn lease_expiry_returns_task_to_pending() {
    let mut given = base();
    given.extend([
        submit("t1", "acme", Priority::Normal, &[]),
        dequeue("t1", "w1", 1),
    ]);
    let (verdict, state) = check(
        &given,
        Event::LeaseExpired {
            task: "t1".into(),
            worker: "w1".into(),
        },
    );
    verdict.unwrap();
    assert_eq!(status(&state, "t1"), TaskStatus::Pending);
    assert_eq!(state.runs.get(&"r1".into()).unwrap().leases_expired, 1);
}

#[test]
fn task_cancel_only_before_it_runs() {
    let mut given = base();
    given.extend([
        submit("t1", "acme", Priority::Normal, &[]),
        dequeue("t1", "w1", 1),
    ]);
    let (verdict, _) = check(
        &given,
        Event::TaskCancelled {
            task: "t1".into(),
            reason: "parent dead".into(),
        },
    );
    assert_eq!(
        verdict,
        Err(Rejection::InvalidTransition {
            task: "t1".into(),
            action: "cancel",
            status: TaskStatus::Leased
        })
    );
}

#[test]
fn budget_reserve_rejected_when_it_would_exceed_budget() {
    let mut given = base();
    given.extend([
        submit("t1", "acme", Priority::Normal, &[]),
        cost("acme", None, Category::Llm, 6_000),
    ]);
    let (verdict, state) = check(&given, reserve("acme", "t1", 4_000));
    verdict.unwrap();
    assert_eq!(
        state
            .tenants
            .get(&"acme".into())
            .unwrap()
            .available_micros(),
        Micros(0)
    );
    let (verdict, _) = check(&given, reserve("acme", "t1", 4_001));
    assert!(
        matches!(verdict, Err(Rejection::BudgetExceeded { .. })),
        "{verdict:?}"
    );
}

#[test]
fn budget_cost_posting_consumes_reservation_then_release_returns_rest() {
    let mut given = base();
    given.extend([
        submit("t1", "acme", Priority::Normal, &[]),
        reserve("acme", "t1", 3_000),
    ]);
    given.push(cost("acme", Some("t1"), Category::Llm, 1_200));
    let (_, state) = check(&given, cost("acme", Some("t1"), Category::Rerank, 300));
    let t = state.tenants.get(&"acme".into()).unwrap();
    assert_eq!(
        (t.spent_micros(), t.reserved_micros),
        (Micros(1_500), Micros(1_500))
    );
    given.push(cost("acme", Some("t1"), Category::Rerank, 300));
    let (verdict, _) = check(&given, release("acme", "t1", 1_501));
    assert_eq!(
        verdict,
        Err(Rejection::ReleaseExceedsReservation {
            task: "t1".into(),
            amount: Micros(1_501),
            reserved: Micros(1_500)
        })
    );
    let (verdict, state) = check(&given, release("acme", "t1", 1_500));
    verdict.unwrap();
    let t = state.tenants.get(&"acme".into()).unwrap();
    assert_eq!(
        (t.spent_micros(), t.reserved_micros),
        (Micros(1_500), Micros(0))
    );
    assert_eq!(
        state.queue.get(&"t1".into()).unwrap().spent_micros,
        Micros(1_500)
    );
}

#[test]
fn budget_cost_for_foreign_task_rejected() {
    let mut given = base();
    given.push(submit("t1", "acme", Priority::Normal, &[]));
    let (verdict, _) = check(&given, cost("globex", Some("t1"), Category::Llm, 1));
    assert_eq!(
        verdict,
        Err(Rejection::ForeignTask {
            task: "t1".into(),
            owner: "acme".into(),
            tenant: "globex".into()
        })
    );
}

#[test]
fn budget_external_cost_is_accepted_beyond_budget() {
    let (verdict, state) = check(&base(), cost("globex", None, Category::Other, 9_000));
    verdict.unwrap();
    let t = state.tenants.get(&"globex".into()).unwrap();
    assert_eq!(t.spent_micros(), Micros(9_000));
    assert_eq!(
        t.status(),
        BudgetStatus::Critical,
        "EXCEEDED needs a recorded overrun"
    );
}

#[test]
fn budget_status_thresholds_at_exact_edges() {
    let cases = [
        (7_999, BudgetStatus::Healthy),
        (8_000, BudgetStatus::Warning),
        (8_999, BudgetStatus::Warning),
        (9_000, BudgetStatus::Critical),
        (10_000, BudgetStatus::Critical),
    ];
    for (spent, expected) in cases {
        let (_, state) = check(&base(), cost("acme", None, Category::Llm, spent));
        assert_eq!(
            state.tenants.get(&"acme".into()).unwrap().status(),
            expected,
            "spent {spent} of 10000"
        );
    }
}

#[test]
fn budget_overrun_is_the_only_way_to_exceeded_and_reset_clears_it() {
    let mut given = base();
    given.push(cost("acme", None, Category::Llm, 10_500));
    let (_, state) = check(
        &given,
        Event::BudgetOverrun {
            tenant: "acme".into(),
            task: None,
            amount_micros: Micros(500),
        },
    );
    assert_eq!(
        state.tenants.get(&"acme".into()).unwrap().status(),
        BudgetStatus::Exceeded
    );
    given.push(Event::BudgetOverrun {
        tenant: "acme".into(),
        task: None,
        amount_micros: Micros(500),
    });
    let (verdict, state) = check(
        &given,
        Event::BudgetPeriodReset {
            tenant: "acme".into(),
        },
    );
    verdict.unwrap();
    let t = state.tenants.get(&"acme".into()).unwrap();
    assert_eq!(
        (t.status(), t.spent_micros(), t.lifetime_spent_micros),
        (BudgetStatus::Healthy, Micros(0), Micros(10_500))
    );
}

#[test]
fn a_tenant_wide_overrun_needs_the_tenant_past_its_budget_by_its_amount() {
    let overrun = |amount| Event::BudgetOverrun {
        tenant: "acme".into(),
        task: None,
        amount_micros: Micros(amount),
    };
    let (verdict, _) = check(&base(), overrun(1));
    assert!(
        matches!(verdict, Err(Rejection::TenantOverrunWithoutCost { .. })),
        "{verdict:?}"
    );
    let mut given = base();
    given.push(cost("acme", None, Category::Llm, 10_500));
    let (verdict, _) = check(&given, overrun(501));
    assert!(
        matches!(
            verdict,
            Err(Rejection::TenantOverrunWithoutCost {
                behind: Micros(500),
                ..
            })
        ),
        "{verdict:?}"
    );
    check(&given, overrun(500)).0.unwrap();
}

#[test]
fn budget_status_change_must_match_the_numbers() {
    let mut given = base();
    given.push(cost("acme", None, Category::Llm, 8_000));
    let warn = Event::BudgetStatusChanged {
        tenant: "acme".into(),
        from: BudgetStatus::Healthy,
        to: BudgetStatus::Warning,
    };
    let (verdict, state) = check(&given, warn.clone());
    verdict.unwrap();
    assert_eq!(
        state.tenants.get(&"acme".into()).unwrap().recorded_status,
        BudgetStatus::Warning
    );
    let lie = Event::BudgetStatusChanged {
        tenant: "acme".into(),
        from: BudgetStatus::Healthy,
        to: BudgetStatus::Critical,
    };
    let (verdict, _) = check(&given, lie);
    assert!(
        matches!(verdict, Err(Rejection::StatusMismatch { .. })),
        "{verdict:?}"
    );
    given.push(warn.clone());
    let (verdict, _) = check(&given, warn);
    assert!(
        matches!(verdict, Err(Rejection::StatusMismatch { .. })),
        "from must be the recorded status"
    );
}

#[test]
fn tenant_events_never_touch_another_tenant() {
    let mut given = base();
    given.extend([
        submit("a1", "acme", Priority::Normal, &[]),
        reserve("acme", "a1", 2_000),
    ]);
    let before = check(&given, cost("acme", Some("a1"), Category::Llm, 100)).1;
    let globex_before = before.tenants.get(&"globex".into()).unwrap().clone();
    let mut more = given.clone();
    more.extend([
        cost("acme", Some("a1"), Category::Llm, 100),
        // Past the budget, so a tenant-wide overrun has spend behind it.
        cost("acme", None, Category::Llm, 10_000),
        Event::BudgetOverrun {
            tenant: "acme".into(),
            task: None,
            amount_micros: Micros(1),
        },
        Event::BudgetPeriodReset {
            tenant: "acme".into(),
        },
    ]);
    let (_, after) = check(
        &more,
        Event::LearningOutcome {
            tenant: "acme".into(),
            task: None,
            arm: "gpt-small".into(),
            reward_bp: 9_000,
            cost_micros: Micros(10),
        },
    );
    assert_eq!(after.tenants.get(&"globex".into()).unwrap(), &globex_before);
    assert_eq!(after.learning.get(&"globex".into()).unwrap().outcomes, 0);
    assert_eq!(after.learning.get(&"acme".into()).unwrap().outcomes, 1);
}

#[test]
fn pipeline_runs_count_as_concurrent_until_all_tasks_end() {
    let mut given = base();
    let in_pipeline = |task: &str, deps: &[&str]| match submit(task, "acme", Priority::Normal, deps)
    {
        Event::TaskSubmitted {
            run,
            task,
            tenant,
            priority,
            deps,
            cost_ceiling_micros,
            handler,
            params,
            max_attempts,
            optional,
            ..
        } => Event::TaskSubmitted {
            run,
            task,
            tenant,
            priority,
            deps,
            pipeline: Some("p1".into()),
            cost_ceiling_micros,
            handler,
            params,
            max_attempts,
            optional,
        },
        other => other,
    };
    given.extend([
        in_pipeline("p1-a", &[]),
        in_pipeline("p1-b", &["p1-a"]),
        submit("solo", "acme", Priority::Low, &[]),
    ]);
    let (_, state) = check(&given, dequeue("p1-a", "w", 1));
    assert_eq!(state.tenants.get(&"acme".into()).unwrap().active_runs, 2);
    given.extend([
        dequeue("p1-a", "w", 1),
        ack("p1-a", "w"),
        dequeue("p1-b", "w", 1),
    ]);
    let (_, state) = check(&given, ack("p1-b", "w"));
    let t = state.tenants.get(&"acme".into()).unwrap();
    assert_eq!((t.active_runs, t.peak_active_runs), (1, 2));
}

#[test]
fn learning_profile_tracks_outcomes_per_arm_and_adjustments() {
    let mut given = base();
    for reward in [8_000, 6_000] {
        given.push(Event::LearningOutcome {
            tenant: "acme".into(),
            task: None,
            arm: "small".into(),
            reward_bp: reward,
            cost_micros: Micros(5),
        });
    }
    let (verdict, state) = check(
        &given,
        Event::LearningProfileAdjusted {
            tenant: "acme".into(),
            intensity: None,
            exploration_bp: 500,
            reason: "utilisation above 90%".into(),
        },
    );
    verdict.unwrap();
    let p = state.learning.get(&"acme".into()).unwrap();
    assert_eq!(
        (p.outcomes, p.reward_bp_sum, p.exploration_bp, p.adjustments),
        (2, 14_000, 500, 1)
    );
    assert_eq!(p.arms["small"].pulls, 2);
}

#[test]
fn run_summary_counts_tasks_costs_and_peak() {
    let mut given = base();
    given.extend([
        submit("t1", "acme", Priority::Normal, &[]),
        submit("t2", "acme", Priority::Normal, &[]),
        dequeue("t1", "w1", 1),
        dequeue("t2", "w2", 1),
        cost("acme", Some("t1"), Category::Llm, 70),
        ack("t1", "w1"),
        Event::BackpressureEngaged {
            run: "r1".into(),
            running: 2,
            threshold: 2,
        },
    ]);
    let (_, state) = check(&given, nack("t2", "w2"));
    let r = state.runs.get(&"r1".into()).unwrap();
    assert_eq!(
        (
            r.tasks_submitted,
            r.tasks_acked,
            r.tasks_nacked,
            r.peak_running,
            r.running,
            r.cost_micros,
            r.backpressure_engaged
        ),
        (2, 1, 1, 2, 0, Micros(70), 1)
    );
}

#[test]
fn digests_do_not_depend_on_insertion_order_of_independent_tenants() {
    let a = check(&[tenant("a", 1), tenant("b", 2)], run_started("r1", 7))
        .1
        .digests();
    let b = check(&[tenant("b", 2), tenant("a", 1)], run_started("r1", 7))
        .1
        .digests();
    assert_eq!(a.tenants, b.tenants);
    let c = check(&[tenant("a", 1), tenant("b", 3)], run_started("r1", 7))
        .1
        .digests();
    assert_ne!(a.tenants, c.tenants);
    assert_ne!(a.combined, c.combined);
}

#[test]
fn ack_releasing_several_dependants_makes_each_ready() {
    let mut given = base();
    given.extend([
        submit("parent", "acme", Priority::Normal, &[]),
        submit("a", "acme", Priority::Normal, &["parent"]),
        submit("b", "acme", Priority::Normal, &["parent"]),
        submit("c", "acme", Priority::Normal, &["parent"]),
        dequeue("parent", "w", 1),
    ]);
    let (verdict, state) = check(&given, ack("parent", "w"));
    verdict.unwrap();
    let ready: Vec<_> = state
        .queue
        .ready(Priority::Normal)
        .map(|t| t.as_str())
        .collect();
    assert_eq!(
        ready,
        ["a", "b", "c"],
        "one record released three tasks: all ready, in order"
    );
    assert_eq!(state.queue.ready_by_priority()[Priority::Normal.index()], 3);
    given.push(ack("parent", "w"));
    let (_, state) = check(&given, dequeue("b", "w", 1));
    let ready: Vec<_> = state
        .queue
        .ready(Priority::Normal)
        .map(|t| t.as_str())
        .collect();
    assert_eq!(ready, ["a", "c"]);
}

#[test]
fn scheduler_prefers_priority_then_age_and_ages_batch_work() {
    use runledger::domain::scheduler::{QueuePolicy, next_ready};
    let mut given = base();
    given.push(submit("batch-1", "acme", Priority::Batch, &[]));
    // Twenty records pass before a HIGH task arrives.
    for _ in 0..20 {
        given.push(cost("globex", None, Category::Other, 1));
    }
    given.push(submit("high-1", "acme", Priority::High, &[]));
    let (_, state) = check(&given, submit("high-2", "acme", Priority::High, &[]));
    let now = Timestamp(0);
    let patient = QueuePolicy {
        aging_records: 1_000,
        ..QueuePolicy::default()
    };
    assert_eq!(
        next_ready(&state, now, state.seq, &patient)
            .unwrap()
            .as_str(),
        "high-1",
        "priority first, then FIFO"
    );
    // With one level per 5 records, the batch task (waited 22) outranks a HIGH
    // task that waited 1: 4*5-22 < 1*5-1.
    let eager = QueuePolicy {
        aging_records: 5,
        ..QueuePolicy::default()
    };
    assert_eq!(
        next_ready(&state, now, state.seq, &eager).unwrap().as_str(),
        "batch-1"
    );
}

#[test]
fn scheduler_skips_tasks_waiting_for_their_retry_time() {
    use runledger::domain::scheduler::{QueuePolicy, next_ready, next_retry_at};
    let mut given = base();
    given.extend([
        submit("t1", "acme", Priority::Critical, &[]),
        submit("t2", "acme", Priority::Low, &[]),
        dequeue("t1", "w", 1),
    ]);
    let retry = Event::TaskNacked {
        task: "t1".into(),
        worker: "w".into(),
        error: "x".into(),
        retry_at: Some(Timestamp(5_000_000)),
        timed_out: false,
    };
    let (_, state) = check(&given, retry);
    let policy = QueuePolicy::default();
    assert_eq!(
        next_ready(&state, Timestamp(1), state.seq, &policy)
            .unwrap()
            .as_str(),
        "t2"
    );
    assert_eq!(
        next_ready(&state, Timestamp(5_000_000), state.seq, &policy)
            .unwrap()
            .as_str(),
        "t1"
    );
    assert_eq!(
        next_retry_at(&state, Timestamp(1), |_| true),
        Some(Timestamp(5_000_000))
    );
}

#[test]
fn lost_lease_on_last_attempt_dead_letters_and_cancels_dependants() {
    use runledger::domain::scheduler::{Lost, expire_lease};
    let fold = |events: &[Event]| {
        let mut state = State::new();
        for (i, e) in events.iter().enumerate() {
            state.apply(i as u64 + 1, Timestamp(0), e).unwrap();
        }
        state
    };
    let mut first = base();
    first.extend([
        submit("t1", "acme", Priority::Normal, &[]),
        submit("child", "acme", Priority::Normal, &["t1"]),
        dequeue("t1", "w", 1),
    ]);
    let kinds: Vec<&str> = expire_lease(&fold(&first), &"t1".into(), Lost::Release)
        .iter()
        .map(Event::kind)
        .collect();
    assert_eq!(
        kinds,
        ["lease_expired"],
        "attempt 1 of 2: the task goes back"
    );
    let mut last = first.clone();
    last.extend([nack("t1", "w"), dequeue("t1", "w", 2)]);
    let kinds: Vec<&str> = expire_lease(&fold(&last), &"t1".into(), Lost::Release)
        .iter()
        .map(Event::kind)
        .collect();
    assert_eq!(
        kinds,
        ["lease_expired", "task_dead_lettered", "task_cancelled"],
        "attempt 2 of 2 was the last"
    );
}

#[test]
fn lost_lease_returns_its_reservation_unless_carried_and_always_when_the_task_ends() {
    use runledger::domain::scheduler::{Lost, expire_lease};
    let fold = |events: &[Event]| {
        let mut state = State::new();
        for (i, e) in events.iter().enumerate() {
            state.apply(i as u64 + 1, Timestamp(0), e).unwrap();
        }
        state
    };
    let mut first = base();
    first.extend([
        submit("t1", "acme", Priority::Normal, &[]),
        reserve("acme", "t1", 700),
        dequeue("t1", "w", 1),
    ]);
    let released = release("acme", "t1", 700);
    let events = expire_lease(&fold(&first), &"t1".into(), Lost::Release);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[1], released,
        "the lost attempt's reservation returns"
    );
    let mut after = first.clone();
    after.extend(events);
    let state = fold(&after);
    assert_eq!(
        state.tenants.get(&"acme".into()).unwrap().reserved_micros,
        Micros(0)
    );
    assert_eq!(
        state.queue.get(&"t1".into()).unwrap().reserved_micros,
        Micros(0)
    );
    // Carried (Redis): the task keeps it for its next envelope.
    let carried = expire_lease(&fold(&first), &"t1".into(), Lost::Carry);
    assert_eq!(
        carried.iter().map(Event::kind).collect::<Vec<_>>(),
        ["lease_expired"]
    );
    // The last attempt's is returned either way, before the dead letter.
    let mut last = first.clone();
    last.extend([
        Event::LeaseExpired {
            task: "t1".into(),
            worker: "w".into(),
        },
        dequeue("t1", "w", 2),
    ]);
    for lost in [Lost::Release, Lost::Carry] {
        let kinds: Vec<&str> = expire_lease(&fold(&last), &"t1".into(), lost)
            .iter()
            .map(Event::kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "lease_expired",
                "reservation_released",
                "task_dead_lettered"
            ],
            "{lost:?}"
        );
    }
}

#[test]
fn a_run_cannot_finish_while_its_tasks_hold_a_reservation() {
    let mut given = base();
    given.extend([
        submit("t1", "acme", Priority::Normal, &[]),
        reserve("acme", "t1", 700),
    ]);
    let mut state = State::new();
    for (i, e) in given.iter().enumerate() {
        state.apply(i as u64 + 1, Timestamp(0), e).unwrap();
    }
    let finish = Event::RunFinished { run: "r1".into() };
    let refused = state.validate(&finish).unwrap_err().to_string();
    assert_eq!(
        refused,
        "run `r1` cannot finish: its tasks still hold 0.000700 reserved"
    );
    let returned = release("acme", "t1", 700);
    state
        .apply(given.len() as u64 + 1, Timestamp(0), &returned)
        .unwrap();
    state.validate(&finish).unwrap();
}

#[test]
fn scheduler_batch_pick_matches_one_by_one_picks() {
    use runledger::domain::scheduler::{QueuePolicy, next_ready, next_ready_many};
    let mut given = base();
    let priorities = [
        Priority::Low,
        Priority::Critical,
        Priority::Batch,
        Priority::Normal,
        Priority::High,
    ];
    for i in 0..25 {
        given.push(submit(&format!("t{i:02}"), "acme", priorities[i % 5], &[]));
        given.push(cost("globex", None, Category::Other, 1));
    }
    let (_, mut state) = check(&given, cost("globex", None, Category::Other, 1));
    let policy = QueuePolicy {
        aging_records: 7,
        ..QueuePolicy::default()
    };
    let seq = state.seq;
    let batch: Vec<String> = next_ready_many(&state, Timestamp(0), seq, &policy, 12, |_| true)
        .into_iter()
        .map(|t| t.0.clone())
        .collect();
    let mut one_by_one = Vec::new();
    for _ in 0..12 {
        let task = next_ready(&state, Timestamp(0), seq, &policy)
            .unwrap()
            .clone();
        state.evolve(state.seq + 1, Timestamp(0), dequeue(task.as_str(), "w", 1));
        one_by_one.push(task.0);
    }
    assert_eq!(batch, one_by_one);
}
