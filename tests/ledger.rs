//! The ledger end to end on disk: appends are all-or-nothing, survive a
//! reopen, fold to the same digests live and from disk (property test), and
//! the derived indices are rebuilt from the log when they fall behind.

mod support;

use runledger::domain::command::{Command, Outcome};
use runledger::domain::decide::Rules;
use runledger::domain::scheduler::QueuePolicy;
use std::ops::ControlFlow;

use proptest::prelude::*;
use runledger::domain::*;
use runledger::log::codec::decode_event;
use runledger::log::replay;
use runledger::log::store::IndexKind;
use runledger::log::{Append, AppendError, Durability, Ledger, LedgerOptions, Store};

use support::events;
use support::ledger::{open_ledger, open_store, options};

/// A conservative tenant with a monthly budget, at most 4 concurrent runs.
fn tenant(id: &str, budget: i64) -> Event {
    events::tenant(id, budget)
        .intensity(LearningIntensity::Conservative)
        .period(BudgetPeriod::Monthly)
        .into()
}

/// A task with no handler named and three attempts.
fn submit(run: &str, task: &str, tenant: &str, deps: Vec<TaskId>) -> Event {
    events::submit(task, tenant)
        .run(run)
        .deps(deps)
        .handler("")
        .max_attempts(3)
        .into()
}

/// Turns random choices into a sequence of events that are each valid in
/// the state left by the ones before (invalid picks are skipped).
fn valid_sequence(ops: &[(u8, u8, u8)]) -> Vec<Event> {
    let mut state = State::new();
    let mut out = Vec::new();
    let tenants = ["t0", "t1", "t2"];
    let push = |state: &mut State, out: &mut Vec<Event>, event: Event| {
        if state.validate(&event).is_ok() {
            state.evolve(
                out.len() as u64 + 1,
                Timestamp(out.len() as i64),
                event.clone(),
            );
            out.push(event);
        }
    };
    push(
        &mut state,
        &mut out,
        Event::RunStarted {
            run: "r".into(),
            seed: 1,
            config_hash: String::new(),
        },
    );
    for &(kind, a, b) in ops {
        let tenant_id = tenants[usize::from(a) % 3];
        let task = format!("k{}", b % 24);
        let worker = format!("w{}", a % 3);
        let attempt = state
            .queue
            .get(&task.as_str().into())
            .map_or(1, |t| t.attempts + 1);
        let event = match kind % 14 {
            0 => tenant(tenant_id, i64::from(b) * 1_000),
            1 | 2 => {
                let deps = if b % 3 == 0 {
                    vec![TaskId(format!("k{}", a % 24))]
                } else {
                    Vec::new()
                };
                submit("r", &task, tenant_id, deps)
            }
            3 | 4 => Event::TaskDequeued {
                task: task.into(),
                worker: worker.into(),
                attempt,
                lease_deadline: None,
            },
            5 | 6 => Event::TaskAcked {
                task: task.into(),
                worker: worker.into(),
                output: Params::null(),
            },
            7 => Event::TaskNacked {
                task: task.into(),
                worker: worker.into(),
                error: "x".into(),
                retry_at: None,
                timed_out: a % 2 == 0,
            },
            8 => Event::CostReserved {
                tenant: tenant_id.into(),
                task: task.into(),
                amount_micros: Micros(i64::from(a) * 10),
            },
            9 => Event::CostIncurred {
                tenant: tenant_id.into(),
                task: (b % 2 == 0).then(|| task.into()),
                category: Category::ALL[usize::from(a) % 6],
                amount_micros: Micros(i64::from(a)),
            },
            10 => Event::ReservationReleased {
                tenant: tenant_id.into(),
                task: task.into(),
                amount_micros: Micros(i64::from(a)),
            },
            11 => Event::TaskDeadLettered {
                task: task.into(),
                reason: "x".into(),
            },
            12 => Event::LeaseExpired {
                task: task.into(),
                worker: worker.into(),
            },
            _ => Event::LearningOutcome {
                tenant: tenant_id.into(),
                task: None,
                arm: format!("arm{}", a % 3),
                reward_bp: i32::from(b) * 10,
                cost_micros: Micros(1),
            },
        };
        push(&mut state, &mut out, event);
    }
    out
}

fn fold_in_memory(events: &[Event]) -> State {
    let mut state = State::new();
    for (i, event) in events.iter().enumerate() {
        state.evolve(i as u64 + 1, Timestamp(i as i64), event.clone());
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Live state after appending == fold of the same events in memory ==
    /// fold from disk after reopening.
    #[test]
    fn ledger_live_state_equals_rebuild_from_disk(
        ops in prop::collection::vec(any::<(u8, u8, u8)>(), 1..160),
        chunk in 1usize..9,
    ) {
        let events = valid_sequence(&ops);
        let dir = tempfile::tempdir().unwrap();
        let ledger = open_ledger(dir.path());
        let timed: Vec<Append> = events
            .iter()
            .enumerate()
            .map(|(i, e)| Append { recorded_at: Some(Timestamp(i as i64)), event: e.clone() })
            .collect();
        for (n, batch) in timed.chunks(chunk).enumerate() {
            if n % 3 == 1 {
                // A batch that ends in an impossible event leaves no trace.
                let mut bad = batch.to_vec();
                bad.push(Append::from(Event::TaskAcked { task: "never".into(), worker: "w".into(), output: Params::null() }));
                let rejected = ledger.append(bad);
                let rejected_at_end = matches!(rejected, Err(AppendError::Rejected { index, .. }) if index == batch.len());
                prop_assert!(rejected_at_end);
            }
            ledger.append(batch.to_vec()).unwrap();
        }
        let (state, head) = ledger.state().unwrap();
        ledger.close().unwrap();
        let digests = state.digests();
        prop_assert_eq!(head.seq, events.len() as u64);
        prop_assert_eq!(digests, fold_in_memory(&events).digests());
        let store = open_store(dir.path());
        let folded = replay::fold(&store, None).unwrap();
        prop_assert_eq!(folded.state.digests(), digests);
        prop_assert_eq!(folded.head, head);
    }
}

#[test]
fn ledger_append_rejected_batch_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    ledger.append([tenant("acme", 100)]).unwrap();
    let batch = vec![
        Event::RunStarted {
            run: "r1".into(),
            seed: 1,
            config_hash: String::new(),
        },
        submit("r1", "a", "acme", vec![]),
        submit("r1", "b", "nobody", vec![]),
    ];
    match ledger.append(batch) {
        Err(AppendError::Rejected { index, rejection }) => {
            assert_eq!(index, 2);
            assert_eq!(rejection, Rejection::UnknownTenant("nobody".into()));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let (state, head) = ledger.state().unwrap();
    let (seq, runs) = (head.seq, state.runs.len());
    assert_eq!(
        (seq, runs),
        (1, 0),
        "the rejected batch's run must not be live"
    );
    // The same run can be started now: nothing of the batch survived.
    let receipt = ledger
        .append([Event::RunStarted {
            run: "r1".into(),
            seed: 1,
            config_hash: String::new(),
        }])
        .unwrap();
    assert_eq!((receipt.first_seq, receipt.last_seq), (2, 2));
    ledger.close().unwrap();
}

#[test]
fn ledger_reopen_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let ledger = open_ledger(dir.path());
        let receipt = ledger
            .append([tenant("acme", 100), tenant("globex", 50)])
            .unwrap();
        ledger.close().unwrap();
        receipt
    };
    let ledger = open_ledger(dir.path());
    assert_eq!(ledger.head().unwrap().hash, first.head);
    let receipt = ledger
        .append([Event::CostIncurred {
            tenant: "acme".into(),
            task: None,
            category: Category::Llm,
            amount_micros: Micros(7),
        }])
        .unwrap();
    assert_eq!(receipt.first_seq, 3);
    ledger.close().unwrap();
    let store = open_store(dir.path());
    let report = runledger::log::verify::verify(&store).unwrap().unwrap();
    assert_eq!((report.records, report.head.hash), (3, receipt.head));
    assert!(report.checkpoints >= 1, "close records a checkpoint");
}

#[test]
fn ledger_many_appenders_get_disjoint_gapless_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(
        dir.path(),
        LedgerOptions {
            durability: Durability::Always,
            ..options()
        },
    )
    .unwrap();
    ledger.append([tenant("acme", i64::MAX / 2)]).unwrap();
    let receipts: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|k| {
                let ledger = ledger.clone();
                s.spawn(move || {
                    (0..50)
                        .map(|n| {
                            let events: Vec<Event> = (0..(n % 5 + 1))
                                .map(|i| Event::CostIncurred {
                                    tenant: "acme".into(),
                                    task: None,
                                    category: Category::Tool,
                                    amount_micros: Micros(k * 1_000 + i),
                                })
                                .collect();
                            ledger.append(events).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut ranges: Vec<(u64, u64)> = receipts.iter().map(|r| (r.first_seq, r.last_seq)).collect();
    ranges.sort_unstable();
    let mut next = 2;
    for (first, last) in ranges {
        assert_eq!(first, next, "seqs must be gapless and disjoint");
        next = last + 1;
    }
    let head = ledger.head().unwrap();
    assert_eq!(head.seq, next - 1);
    ledger.close().unwrap();
    let store = open_store(dir.path());
    assert_eq!(
        runledger::log::verify::verify(&store)
            .unwrap()
            .unwrap()
            .head,
        head
    );
}

fn events_of(store: &Store, filters: &[(IndexKind, &str)]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let used = store
        .walk_indexed(filters, 1, |r| {
            out.push((
                r.seq,
                decode_event(r.event_bytes).unwrap().kind().to_owned(),
            ));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(used.is_some(), "the index should be current");
    out
}

#[test]
fn index_lists_records_by_run_and_tenant_and_is_rebuilt_after_loss() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    ledger
        .append([tenant("acme", 1_000), tenant("globex", 1_000)])
        .unwrap();
    ledger
        .append([Event::RunStarted {
            run: "r1".into(),
            seed: 1,
            config_hash: String::new(),
        }])
        .unwrap();
    ledger
        .append([Event::RunStarted {
            run: "r2".into(),
            seed: 2,
            config_hash: String::new(),
        }])
        .unwrap();
    ledger
        .append([
            submit("r1", "a", "acme", vec![]),
            submit("r2", "b", "globex", vec![]),
        ])
        .unwrap();
    ledger
        .append([Event::TaskDequeued {
            task: "b".into(),
            worker: "w".into(),
            attempt: 1,
            lease_deadline: None,
        }])
        .unwrap();
    ledger.close().unwrap();

    let store = open_store(dir.path());
    let globex = events_of(&store, &[(IndexKind::Tenant, "globex")]);
    assert_eq!(
        globex,
        vec![
            (2, "tenant_registered".into()),
            (6, "task_submitted".into()),
            (7, "task_dequeued".into())
        ]
    );
    let r1 = events_of(&store, &[(IndexKind::Run, "r1")]);
    assert_eq!(
        r1,
        vec![(3, "run_started".into()), (5, "task_submitted".into())]
    );
    let both = events_of(
        &store,
        &[(IndexKind::Run, "r2"), (IndexKind::Tenant, "globex")],
    );
    assert_eq!(
        both,
        vec![(6, "task_submitted".into()), (7, "task_dequeued".into())]
    );

    // Lose the index (as after a crash between the log write and the index
    // write): reads fall back to the log, and the next open rebuilds it.
    store.clear_index().unwrap();
    assert!(
        store
            .walk_indexed(&[(IndexKind::Tenant, "globex")], 1, |_| {
                ControlFlow::Continue(())
            })
            .unwrap()
            .is_none()
    );
    drop(store);
    Ledger::open(dir.path(), options())
        .unwrap()
        .close()
        .unwrap();
    let store = open_store(dir.path());
    assert_eq!(events_of(&store, &[(IndexKind::Tenant, "globex")]), globex);
    assert_eq!(events_of(&store, &[(IndexKind::Run, "r1")]), r1);
}

#[test]
fn replay_of_one_run_keeps_global_events_and_drops_other_runs() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    ledger
        .append([
            tenant("acme", 1_000),
            Event::RunStarted {
                run: "r1".into(),
                seed: 1,
                config_hash: String::new(),
            },
            Event::RunStarted {
                run: "r2".into(),
                seed: 2,
                config_hash: String::new(),
            },
            submit("r1", "a", "acme", vec![]),
            submit("r2", "b", "acme", vec![]),
            Event::CostIncurred {
                tenant: "acme".into(),
                task: Some("b".into()),
                category: Category::Llm,
                amount_micros: Micros(30),
            },
            Event::CostIncurred {
                tenant: "acme".into(),
                task: None,
                category: Category::Other,
                amount_micros: Micros(5),
            },
        ])
        .unwrap();
    ledger.close().unwrap();
    let store = open_store(dir.path());
    let r1 = replay::fold(&store, Some(&"r1".into())).unwrap().state;
    assert!(r1.runs.get(&"r2".into()).is_none());
    assert!(r1.queue.get(&"b".into()).is_none());
    assert_eq!(r1.queue.len(), 1);
    assert_eq!(
        r1.tenants.get(&"acme".into()).unwrap().spent_micros(),
        Micros(5),
        "only the global cost"
    );
}

#[test]
fn wall_clock_stamps_are_not_frozen_by_records_stamped_in_the_future() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    let future = Timestamp::parse("2099-01-01T00:00:00Z").unwrap();
    ledger
        .append([Append {
            recorded_at: Some(future),
            event: tenant("acme", 10),
        }])
        .unwrap();
    ledger.append([tenant("globex", 10)]).unwrap();
    ledger.append([tenant("initech", 10)]).unwrap();
    let (last_at, seq) = ledger.state().map(|(s, _)| (s.last_at, s.seq)).unwrap();
    ledger.close().unwrap();
    assert_eq!(seq, 3);
    assert!(
        last_at < future,
        "wall-clock records after a future-stamped one use the wall clock ({last_at})"
    );
}

/// The settler's overrun, recorded before its costs, must have them in the
/// same command: a command with the overrun alone is dropped whole, and the
/// live state is as before it (the next step sees no overrun).
#[test]
fn a_command_recording_an_overrun_without_its_cost_is_dropped_whole() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    let mut governed = submit("r", "t1", "acme", Vec::new());
    if let Event::TaskSubmitted {
        cost_ceiling_micros,
        ..
    } = &mut governed
    {
        *cost_ceiling_micros = Micros(100);
    }
    ledger
        .append([
            tenant("acme", 1_000),
            Event::RunStarted {
                run: "r".into(),
                seed: 1,
                config_hash: String::new(),
            },
            governed,
            Event::CostReserved {
                tenant: "acme".into(),
                task: "t1".into(),
                amount_micros: Micros(100),
            },
        ])
        .unwrap();
    let overrun = Event::BudgetOverrun {
        tenant: "acme".into(),
        task: Some("t1".into()),
        amount_micros: Micros(50),
    };
    let cost = |amount| Event::CostIncurred {
        tenant: "acme".into(),
        task: Some("t1".into()),
        category: Category::Llm,
        amount_micros: Micros(amount),
    };
    let lone = overrun.clone();
    let rules = || Rules::new(QueuePolicy::default(), 1);
    let refused = rt.block_on(ledger.command(rules(), Command::Record(vec![lone])));
    assert!(
        matches!(
            &refused,
            Err(AppendError::Rejected {
                index: 0,
                rejection: Rejection::OverrunWithoutCost { .. }
            })
        ),
        "{refused:?}"
    );
    let head = ledger.head().unwrap().seq;
    let overrun_seen = ledger.tenant(&"acme".into()).unwrap().unwrap().overrun;
    assert_eq!((head, overrun_seen), (4, false));
    let step = Command::Record(vec![overrun, cost(150)]);
    let (receipt, outcome) = rt.block_on(ledger.command(rules(), step)).unwrap();
    assert_eq!(outcome, Outcome::Recorded);
    assert_eq!((receipt.first_seq, receipt.last_seq), (5, 6));
    ledger.close().unwrap();
}

/// A command rejected inside a step drops its own events only, even those
/// the live state already took before the rejected one: the writer undoes
/// them (no fold of the ledger), the step's other commands are appended,
/// later steps decide on the undone state, and the live state is what a
/// fold of the log gives.
#[test]
fn a_rejected_command_drops_only_its_own_events_from_the_step() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    ledger
        .append([
            tenant("acme", 1_000),
            Event::RunStarted {
                run: "r".into(),
                seed: 1,
                config_hash: String::new(),
            },
            submit("r", "t1", "acme", Vec::new()),
        ])
        .unwrap();
    let rules = || Rules::new(QueuePolicy::default(), 1);
    let record = |tasks: &[&str]| {
        let events = tasks.iter().map(|t| submit("r", t, "acme", Vec::new()));
        Command::Record(events.collect())
    };
    // t3 is valid and applied; t1 again is refused, so t3 goes too.
    let step = vec![record(&["t2"]), record(&["t3", "t1"]), record(&["t4"])];
    let (receipt, decided) = rt.block_on(ledger.commands(rules(), step)).unwrap();
    assert!(matches!(decided[0], Ok(Outcome::Recorded)), "{decided:?}");
    assert!(
        matches!(&decided[1], Err(AppendError::Rejected { index: 1, .. })),
        "{decided:?}"
    );
    assert!(matches!(decided[2], Ok(Outcome::Recorded)), "{decided:?}");
    assert_eq!((receipt.first_seq, receipt.last_seq), (4, 5));
    // The undone submission can be made again.
    let (receipt, _) = rt
        .block_on(ledger.command(rules(), record(&["t3"])))
        .unwrap();
    assert_eq!(receipt.last_seq, 6);
    let live = ledger.state().unwrap().0;
    ledger.close().unwrap();
    let folded = replay::fold(&Store::open(dir.path(), false).unwrap(), None).unwrap();
    assert!(live == folded.state, "the live state differs from the fold");
    let ids: Vec<_> = live
        .queue
        .sorted()
        .into_iter()
        .map(|(id, _)| id.0.clone())
        .collect();
    assert_eq!(ids, ["t1", "t2", "t3", "t4"]);
}

/// A lent state ([`Ledger::lend`]) is the ledger's one live state: what the
/// borrower records is chained exactly as an append of the same events at
/// the same times, indexed the same, and what another handle asks meanwhile
/// waits for the state to come back.
#[test]
fn a_lent_state_records_what_an_append_would_and_holds_other_callers() {
    let events: Vec<Event> = vec![
        tenant("t0", 1_000),
        Event::RunStarted {
            run: "r".into(),
            seed: 1,
            config_hash: String::new(),
        },
        submit("r", "r/a", "t0", vec![]),
        submit("r", "r/b", "t0", vec!["r/a".into()]),
    ];
    let at = |i: usize| Timestamp(1_000 + i as i64);

    let appended = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(appended.path(), options()).unwrap();
    let entries: Vec<Append> = (events.iter().enumerate())
        .map(|(i, e)| Append {
            recorded_at: Some(at(i)),
            event: e.clone(),
        })
        .collect();
    let receipt = ledger.append(entries).unwrap();
    ledger.close().unwrap();

    let lent_dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(lent_dir.path(), options()).unwrap();
    let mut lent = ledger.lend().unwrap();
    // Another caller's query and append wait for the state.
    let other = ledger.clone();
    let waiting = std::thread::spawn(move || {
        other
            .append([Event::RunFinished { run: "r".into() }])
            .unwrap();
        let (state, head) = other.state().unwrap();
        (state.queue.counts(), head.seq)
    });
    for (i, event) in events.iter().enumerate() {
        lent.record(at(i), event.clone()).unwrap();
    }
    // A refused event changes nothing and comes back.
    let refused = lent
        .record(at(9), submit("r", "r/a", "t0", vec![]))
        .unwrap_err();
    assert!(matches!(refused.event, Event::TaskSubmitted { .. }));
    assert_eq!(lent.state().seq, events.len() as u64);
    let sent = lent.send().unwrap().wait().unwrap();
    assert_eq!(sent, receipt, "same seqs and head as the plain append");
    lent.give_back();
    let (counts, seq) = waiting.join().unwrap();
    assert_eq!(seq, events.len() as u64 + 1, "the held append came after");
    assert_eq!(counts.pending + counts.waiting, 2);
    ledger.close().unwrap();

    let store = Store::open(lent_dir.path(), false).unwrap();
    assert_eq!(
        events_of(&store, &[(IndexKind::Tenant, "t0")]),
        events_of(
            &Store::open(appended.path(), false).unwrap(),
            &[(IndexKind::Tenant, "t0")]
        ),
    );
    assert_eq!(events_of(&store, &[(IndexKind::Run, "r")]).len(), 4);
}

/// A borrower that stops with events recorded but not sent leaves the
/// ledger as its log says: the writer refolds, the unsent events are in
/// neither the log nor the live state.
#[test]
fn a_lent_state_dropped_midway_is_refolded_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), options()).unwrap();
    let mut lent = ledger.lend().unwrap();
    lent.record(Timestamp(1), tenant("t0", 1_000)).unwrap();
    lent.send().unwrap().wait().unwrap();
    lent.record(Timestamp(2), tenant("t1", 1_000)).unwrap();
    drop(lent);
    let (state, head) = ledger.state().unwrap();
    let (tenants, seq) = (state.tenants.sorted().len(), head.seq);
    assert_eq!((tenants, seq), (1, 1));
    // And the ledger goes on from there.
    ledger.append([tenant("t1", 1_000)]).unwrap();
    ledger.close().unwrap();
    let folded = replay::fold(&Store::open(dir.path(), false).unwrap(), None).unwrap();
    assert_eq!(folded.state.tenants.sorted().len(), 2);
}

/// The writer's inbox is bounded ([`INBOX_MESSAGES`]): senders past it
/// wait for the writer instead of queueing without end, and every one of
/// them is appended, in the order sent — from blocking and async senders
/// at once.
#[test]
fn senders_past_the_inbox_capacity_wait_and_are_all_appended_in_order() {
    use runledger::log::writer::INBOX_MESSAGES;
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    let n = 3 * INBOX_MESSAGES;
    let pending: Vec<_> = (0..n)
        .map(|i| {
            let event = tenant(&format!("t{i}"), 1_000);
            ledger.append_pipelined(vec![event.into()]).unwrap()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let asynchronous = rt.spawn({
        let ledger = ledger.clone();
        async move {
            let sends = (0..n).map(|i| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    let event = tenant(&format!("a{i}"), 1_000);
                    ledger.append_async(vec![event.into()]).await
                })
            });
            let mut receipts = Vec::new();
            for send in sends.collect::<Vec<_>>() {
                receipts.push(send.await.unwrap().unwrap());
            }
            receipts
        }
    });
    let seqs: Vec<u64> = (pending.into_iter())
        .map(|p| p.wait().unwrap().first_seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "pipelined appends out of order"
    );
    let receipts = rt.block_on(asynchronous).unwrap();
    assert_eq!(receipts.len(), n);
    let (state, head) = ledger.state().unwrap();
    let (head, tenants) = (head.seq, state.tenants.sorted().len());
    assert_eq!((head, tenants), (2 * n as u64, 2 * n));
    ledger.close().unwrap();
}

#[test]
fn ledger_typed_queries_answer_from_the_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(dir.path());
    let (r1, r2) = (RunId::from("r1"), RunId::from("r2"));
    ledger
        .append([
            tenant("acme", 100),
            events::run_started("r1", 11),
            events::run_started("r2", 22),
            submit("r1", "a", "acme", vec![]),
            submit("r1", "b", "acme", vec![]),
            Event::CostReserved {
                tenant: "acme".into(),
                task: "a".into(),
                amount_micros: Micros(5),
            },
        ])
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (state, head) = ledger.state().unwrap();
    assert_eq!(head.seq, 6);
    assert_eq!(ledger.head().unwrap(), head);
    assert_eq!(rt.block_on(ledger.head_async()).unwrap(), head);
    let counts = ledger.queue_counts().unwrap();
    assert_eq!((counts.pending, counts.done), (2, 0));
    assert_eq!(rt.block_on(ledger.queue_counts_async()).unwrap(), counts);
    let progress = runledger::domain::activity::RunProgress {
        tasks_submitted: 2,
        tasks_ended: 0,
        running: 0,
    };
    assert_eq!(ledger.run_progress(&r1).unwrap(), Some(progress));
    assert_eq!(ledger.run_progress(&"none".into()).unwrap(), None);
    assert_eq!(
        rt.block_on(ledger.run_progress_async(&r1)).unwrap(),
        Some(progress)
    );
    // Only `a` holds a reservation: only it is admitted.
    let admitted = rt.block_on(ledger.admitted_tasks_async(&r1)).unwrap();
    assert_eq!(admitted, vec![TaskId::from("a")]);
    assert!(
        rt.block_on(ledger.admitted_tasks_async(&r2))
            .unwrap()
            .is_empty()
    );
    let acme = ledger.tenant(&"acme".into()).unwrap().unwrap();
    assert_eq!(acme.reserved_micros, Micros(5));
    assert!(ledger.tenant(&"nobody".into()).unwrap().is_none());
    let async_acme = rt.block_on(ledger.tenant_async(&"acme".into())).unwrap();
    assert_eq!(async_acme, Some(acme));
    assert_eq!(ledger.unused_run_id("r1").unwrap(), RunId::from("r1-2"));
    assert_eq!(ledger.unused_run_id("r3").unwrap(), RunId::from("r3"));
    let end = rt.block_on(ledger.run_end_async(&r1)).unwrap();
    assert_eq!(end.summary.as_ref(), state.runs.get(&r1));
    assert_eq!(end.digests, state.digests());
    assert_eq!((end.head, end.last_at), (head, state.last_at));
    // The run to resume: the one named, else the running one started last.
    let target = |run: Option<&RunId>| ledger.resume_target(run).unwrap().map(|t| (t.run, t.seed));
    assert_eq!(target(None), Some((r2.clone(), 22)));
    assert_eq!(target(Some(&r1)), Some((r1.clone(), 11)));
    ledger
        .append([Event::RunFinished { run: r2.clone() }])
        .unwrap();
    assert_eq!(target(None), Some((r1.clone(), 11)));
    assert_eq!(target(Some(&"none".into())), None);
    ledger.close().unwrap();
}

/// Under `always`, a read sent behind an append that is not answered yet
/// sees it: the answer waits for the group to be durable.
#[test]
fn ledger_query_under_always_sees_the_append_sent_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = LedgerOptions {
        durability: Durability::Always,
        ..options()
    };
    let ledger = Ledger::open(dir.path(), options).unwrap();
    for k in 0..5u64 {
        let pending = ledger
            .append_pipelined(vec![tenant(&format!("t{k}"), 100).into()])
            .unwrap();
        let seen = ledger.head().unwrap();
        let receipt = pending.wait().unwrap();
        assert_eq!(seen.seq, k + 1);
        assert_eq!((receipt.last_seq, receipt.head), (seen.seq, seen.hash));
        assert!(ledger.tenant(&format!("t{k}").into()).unwrap().is_some());
    }
    ledger.close().unwrap();
}
