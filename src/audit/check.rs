//! `replay --check`: run every recorded decision again on the state just
//! before it and compare.
//!
//! The executors decide in steps, each on the state the records before it
//! left (`Ledger::commands`, the simulated executor's lent state), and
//! record what they decided together with its inputs. So a fold of the log
//! can stop before each decision, call the same decider on the folded
//! state with the recorded inputs, and compare what it returns with what
//! the ledger holds, field by field.
//!
//! A decision's records come in a group, and the checker collects each
//! group before folding it, so the decider sees the state before the first
//! of them:
//! - the gate in front of an attempt (`Gate::start`): the cost agent's
//!   verdict, a skip or a cancellation, the learning policy's choice, the
//!   admission and its reservation, ending with the lease;
//! - the end of an attempt: the settlement of its costs (the costs are the
//!   input; overrun, release and status change are decided), the learning
//!   outcome (the reward is the input) and profile adjustment, and for a
//!   failure the retry schedule or the dead letter;
//! - a lease expiry, a budget period reset, a pipeline run's admission
//!   denial.
//!
//! Only runs that runledger executed (those with a `workload_recorded`)
//! were decided by these deciders: events ingested from elsewhere are
//! counted as not re-checkable. The deciders run under a [`Policy`]: the
//! standard one re-checks a ledger against today's code; another one shows
//! what a proposed change of thresholds would have decided differently.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::domain::decide::{self, Answer, Attempt, LeaseTo, Recorded, Rules, Start};
use crate::domain::governance::{admit_run, period_resets};
use crate::domain::scheduler::{Lost, QueuePolicy, expire_lease};
use crate::domain::{Category, Event, Micros, Policy, RunId, State, TaskId, TenantId, Timestamp};
use crate::log::store::{Store, WalkError, decode_record};
use crate::workload::Workload;

/// At most this many divergences are kept in a report (all are counted).
pub const KEPT_DIVERGENCES: usize = 20;

#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// The thresholds to decide with.
    pub policy: Policy,
    /// Only the decisions of this run (the state is still folded whole:
    /// other runs share the tenants' budgets).
    pub run: Option<RunId>,
    /// Go on after a divergence (the fold follows the ledger) and count
    /// them all.
    pub keep_going: bool,
}

/// One field a recomputed decision disagrees on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldDiff {
    /// A dotted path into the event's JSON, e.g. `details.plan.depth`.
    pub field: String,
    pub recorded: serde_json::Value,
    pub recomputed: serde_json::Value,
}

/// A decision the deciders make differently today.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Divergence {
    pub seq: u64,
    /// The decision's event type, e.g. `degradation_decided`.
    pub decision: String,
    /// The task (or tenant) decided for.
    pub subject: String,
    /// What happened, in a sentence.
    pub what: String,
    pub fields: Vec<FieldDiff>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Records folded.
    pub records: u64,
    /// The combined digest of the projections rebuilt on the way (hex).
    pub digest: String,
    /// Decisions run again and compared.
    pub decisions: u64,
    /// Of those, per event type.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Decision events of runs runledger did not execute (ingested).
    pub not_recheckable: u64,
    /// Decision events of other runs, left out by `--run`.
    pub out_of_scope: u64,
    /// Decisions that came out differently.
    pub divergences: u64,
    /// The first of them (at most [`KEPT_DIVERGENCES`]).
    pub first: Vec<Divergence>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.divergences == 0
    }
}

/// Reads a policy from TOML (any threshold left out keeps its standard
/// value); `file` names it in errors, with the line.
pub fn parse_policy(file: &str, text: &str) -> Result<Policy, String> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim();
        // An unknown key's span is the whole table: find the key's line.
        let key_line = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .and_then(|key| {
                text.lines().position(|l| {
                    l.trim_start()
                        .strip_prefix(key)
                        .is_some_and(|r| r.trim_start().starts_with('='))
                })
            })
            .map(|i| i + 1);
        let line = key_line.unwrap_or_else(|| {
            e.span().map_or(1, |s| {
                text[..s.start.min(text.len())].lines().count().max(1)
            })
        });
        format!("{file}:{line}: {message}")
    })
}

/// Re-checks every decision in `store`.
pub fn check(store: &Store, options: CheckOptions) -> Result<CheckReport, WalkError> {
    let mut checker = Checker::new(options);
    let mut stopped = false;
    store.read_chain(decode_record, |frames| {
        for record in frames.into_iter().flatten() {
            if !stopped {
                stopped = checker
                    .feed(record.seq, record.recorded_at, record.event)
                    .is_break();
            }
        }
    })?;
    Ok(checker.finish())
}

/// A run runledger executed: what its deciders drew from.
struct Executed {
    seed: u64,
    /// The retry policy of its workload (`None` if the recorded workload
    /// no longer parses, e.g. it names handlers this binary lacks).
    queue: Option<QueuePolicy>,
    finished: bool,
}

impl Executed {
    /// The run's rules under `policy`'s thresholds.
    fn rules(&self, policy: Policy) -> Rules {
        Rules {
            policy,
            queue: self.queue.unwrap_or_default(),
            seed: self.seed,
        }
    }
}

struct Rec {
    seq: u64,
    at: Timestamp,
    event: Event,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Group {
    /// The gate in front of an attempt of the task.
    Gate(TaskId),
    /// The end of an attempt of the task (of this tenant).
    End(TaskId, TenantId),
    /// A lease of the task expired.
    Expire(TaskId),
    /// The lease of a task the gate already admitted (the Redis queue
    /// dispatches through the gate first; the lease follows when a worker
    /// claims it).
    Lease(TaskId),
    /// The tenant's budget period turned.
    Reset(TenantId),
}

struct Open {
    group: Group,
    records: Vec<Rec>,
    /// No further record belongs to it.
    done: bool,
}

/// How a recomputed event is compared with the recorded one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compare {
    /// Every field: a decision.
    Decision,
    /// Every field, but it only carries inputs (a cost as reported).
    Input,
    /// The lease: task and attempt (worker and deadline are the executor's).
    Lease,
    /// Taken from the record (a handler's output, a cascade).
    Copied,
}

struct Expect {
    event: Event,
    /// The deciders would not record it again (an unchanged verdict, a
    /// denial already recorded for this wait).
    optional: bool,
    compare: Compare,
}

impl Expect {
    fn decision(event: Event) -> Self {
        Expect {
            event,
            optional: false,
            compare: Compare::Decision,
        }
    }
}

/// Folds records one at a time and re-runs the decisions among them.
pub struct Checker {
    policy: Policy,
    only_run: Option<RunId>,
    keep_going: bool,
    state: State,
    executed: FxHashMap<RunId, Executed>,
    open: Option<Open>,
    report: CheckReport,
}

impl Checker {
    pub fn new(options: CheckOptions) -> Self {
        Checker {
            policy: options.policy,
            only_run: options.run,
            keep_going: options.keep_going,
            state: State::new(),
            executed: FxHashMap::default(),
            open: None,
            report: CheckReport::default(),
        }
    }

    /// Takes the next record; `Break` once a divergence ends the check.
    pub fn feed(&mut self, seq: u64, at: Timestamp, event: Event) -> ControlFlow<()> {
        let record = Rec { seq, at, event };
        if let Some(open) = &mut self.open {
            if !open.done && belongs(&open.group, &open.records, &record.event) {
                open.done = ends(&open.group, &record.event);
                open.records.push(record);
                return ControlFlow::Continue(());
            }
            self.close()?;
        }
        if let Some(group) = self.starts(&record.event) {
            let done = ends(&group, &record.event);
            self.open = Some(Open {
                group,
                records: vec![record],
                done,
            });
            return ControlFlow::Continue(());
        }
        let verdict = self.standalone(&record);
        self.fold(record);
        verdict
    }

    /// Checks what is still open and returns the report.
    pub fn finish(mut self) -> CheckReport {
        if self.open.is_some() {
            let _ = self.close();
        }
        self.report.digest = self.state.digests().combined.to_hex().to_string();
        self.report
    }

    /// The group `event` begins, if it begins one.
    fn starts(&self, event: &Event) -> Option<Group> {
        match event {
            Event::DegradationDecided { task: Some(t), .. }
            | Event::LearningArmChosen { task: t, .. }
            | Event::CostReserved { task: t, .. }
            | Event::AdmissionDenied { task: Some(t), .. }
            | Event::TaskSkipped { task: t, .. } => Some(Group::Gate(t.clone())),
            Event::TaskDequeued { task: t, .. } if self.admitted(t) => {
                Some(Group::Lease(t.clone()))
            }
            Event::TaskDequeued { task: t, .. } => Some(Group::Gate(t.clone())),
            Event::TaskCancelled { task: t, reason }
                if reason.starts_with("terminated by the cost agent")
                    || reason.starts_with("not admitted") =>
            {
                Some(Group::Gate(t.clone()))
            }
            Event::BudgetOverrun { task: Some(t), .. }
            | Event::CostIncurred { task: Some(t), .. }
            | Event::ReservationReleased { task: t, .. }
            | Event::LearningOutcome { task: Some(t), .. }
            | Event::TaskAcked { task: t, .. }
            | Event::TaskNacked { task: t, .. } => {
                let tenant = self.state.queue.get(t)?.tenant.clone();
                Some(Group::End(t.clone(), tenant))
            }
            Event::LeaseExpired { task: t, .. } => Some(Group::Expire(t.clone())),
            Event::BudgetPeriodReset { tenant } => Some(Group::Reset(tenant.clone())),
            _ => None,
        }
    }

    /// Whether `task` already went through the gate for its next attempt:
    /// it holds a reservation or a learning choice and waits for its lease.
    fn admitted(&self, task: &TaskId) -> bool {
        crate::domain::governance::admitted(&self.state, task)
    }

    /// Checks a decision that is a group of its own: a pipeline run's
    /// admission denial.
    fn standalone(&mut self, record: &Rec) -> ControlFlow<()> {
        let Event::AdmissionDenied {
            tenant, task: None, ..
        } = &record.event
        else {
            return ControlFlow::Continue(());
        };
        if !self.tenant_scope() {
            if self.executed.values().any(|r| !r.finished) {
                self.report.out_of_scope += 1;
            } else {
                self.report.not_recheckable += 1;
            }
            return ControlFlow::Continue(());
        }
        self.reset_recorded(tenant, record)?;
        let expected = match admit_run(&self.state, tenant) {
            Err(denial) => Expect::decision(Event::AdmissionDenied {
                tenant: tenant.clone(),
                task: None,
                reason: denial.reason().to_owned(),
            }),
            Ok(()) => {
                return self.diverged(Divergence {
                    seq: record.seq,
                    decision: record.event.kind().to_owned(),
                    subject: tenant.to_string(),
                    what: format!(
                        "the ledger denies a pipeline run of `{tenant}`, but admission admits it"
                    ),
                    fields: Vec::new(),
                });
            }
        };
        self.compare(&[expected], std::slice::from_ref(record), tenant.as_str())
    }

    /// Checks the open group on the state before it, then folds it.
    fn close(&mut self) -> ControlFlow<()> {
        let Some(open) = self.open.take() else {
            return ControlFlow::Continue(());
        };
        let verdict = match self.expected(&open) {
            Some((expected, subject)) => match self.group_tenant(&open.group) {
                Some(tenant) if !matches!(open.group, Group::Reset(_)) => {
                    match self.reset_recorded(&tenant, &open.records[0]) {
                        ControlFlow::Continue(()) => {
                            self.compare(&expected, &open.records, &subject)
                        }
                        stop => stop,
                    }
                }
                _ => self.compare(&expected, &open.records, &subject),
            },
            None => {
                let decisions = open
                    .records
                    .iter()
                    .filter(|r| is_decision(&r.event))
                    .count() as u64;
                if self.executed_elsewhere(&open.group) {
                    self.report.out_of_scope += decisions;
                } else {
                    self.report.not_recheckable += decisions;
                }
                ControlFlow::Continue(())
            }
        };
        for record in open.records {
            self.fold(record);
        }
        verdict
    }

    /// What the deciders make of the group's situation, or `None` when it is
    /// not theirs to re-check.
    fn expected(&self, open: &Open) -> Option<(Vec<Expect>, String)> {
        match &open.group {
            Group::Gate(task) => {
                let run = self.task_scope(task)?;
                Some((self.gate(task, run, &open.records)?, task.to_string()))
            }
            Group::End(task, _) => {
                let run = self.task_scope(task)?;
                Some((self.end(task, run, &open.records)?, task.to_string()))
            }
            Group::Expire(task) => {
                self.task_scope(task)?;
                let expected: Vec<Event> = expire_lease(&self.state, task, Lost::Release);
                // The Redis queue carries a lost attempt's reservation to
                // the task's next envelope: returning it is then optional,
                // unless the task ends here.
                let ends = expected
                    .iter()
                    .any(|e| matches!(e, Event::TaskDeadLettered { .. }));
                let expected = expected
                    .into_iter()
                    .map(|event| Expect {
                        optional: !ends && matches!(event, Event::ReservationReleased { .. }),
                        ..Expect::decision(event)
                    })
                    .collect();
                Some((expected, task.to_string()))
            }
            Group::Lease(task) => {
                self.task_scope(task)?;
                let t = self.state.queue.get(task)?;
                let worker = open.records.iter().find_map(|r| match &r.event {
                    Event::TaskDequeued { worker, .. } => Some(worker.clone()),
                    _ => None,
                });
                let lease = Expect {
                    event: Event::TaskDequeued {
                        task: task.clone(),
                        worker: worker.unwrap_or_default(),
                        attempt: t.attempts + 1,
                        lease_deadline: None,
                    },
                    optional: false,
                    compare: Compare::Lease,
                };
                Some((vec![lease], task.to_string()))
            }
            Group::Reset(tenant) => {
                if !self.tenant_scope() {
                    return None;
                }
                let at = open.records[0].at;
                let expected = period_resets(&self.state, at)
                    .into_iter()
                    .filter(|e| e.tenant() == Some(tenant))
                    .map(Expect::decision)
                    .collect();
                Some((expected, tenant.to_string()))
            }
        }
    }

    /// The gate's decision for `task` about to run: every event the gate
    /// makes, a verdict it already recorded and a wait it already recorded
    /// optional (recorded again by an executor that restarted).
    fn gate(&self, task: &TaskId, run: &Executed, records: &[Rec]) -> Option<Vec<Expect>> {
        let state = &self.state;
        let recorded = Recorded::of(state, task);
        // The lease follows at once (in-memory queue, simulated executor)
        // or when a worker claims the task (Redis queue): optional, on its
        // task and attempt.
        let worker = records.iter().find_map(|r| match &r.event {
            Event::TaskDequeued { worker, .. } => Some(worker.clone()),
            _ => None,
        });
        let lease = LeaseTo {
            worker: worker.unwrap_or_default(),
            deadline: None,
        };
        let (events, start) = decide::start_after(
            state,
            task,
            Some(lease),
            &run.rules(self.policy),
            Recorded::NOTHING,
        );
        let waits = matches!(start, Start::Wait);
        let expected = events
            .into_iter()
            .map(|event| {
                let (optional, compare) = match &event {
                    Event::DegradationDecided { decision, .. } => {
                        (recorded.verdict == Some(*decision), Compare::Decision)
                    }
                    Event::AdmissionDenied { .. } => (waits && recorded.wait, Compare::Decision),
                    Event::TaskDequeued { .. } => (true, Compare::Lease),
                    _ => (false, Compare::Decision),
                };
                Expect {
                    event,
                    optional,
                    compare,
                }
            })
            .collect();
        Some(expected)
    }

    /// The decisions at the end of an attempt of `task`, made by
    /// `decide::end_attempt` from the inputs the records hold: the costs,
    /// the reward, the answer (output, or error and whether it timed out).
    fn end(&self, task: &TaskId, run: &Executed, records: &[Rec]) -> Option<Vec<Expect>> {
        let state = &self.state;
        let t = state.queue.get(task)?;
        let costs: Vec<(Category, Micros)> = records
            .iter()
            .filter_map(|r| match &r.event {
                Event::CostIncurred {
                    category,
                    amount_micros,
                    ..
                } => Some((*category, *amount_micros)),
                _ => None,
            })
            .collect();
        let reward_bp = records
            .iter()
            .find_map(|r| match &r.event {
                Event::LearningOutcome { reward_bp, .. } => Some(*reward_bp),
                _ => None,
            })
            .unwrap_or(0);
        let (answer, worker, at, recorded_retry) = records.iter().find_map(|r| match &r.event {
            Event::TaskAcked { worker, output, .. } => Some((
                Answer::Done {
                    output: output.clone(),
                    reward_bp,
                },
                worker,
                r.at,
                None,
            )),
            Event::TaskNacked {
                worker,
                error,
                timed_out,
                retry_at,
                ..
            } => Some((
                Answer::Failed {
                    error: error.clone(),
                    timed_out: *timed_out,
                },
                worker,
                r.at,
                *retry_at,
            )),
            _ => None,
        })?;
        let attempt = Attempt {
            task,
            run: &t.run,
            worker,
            attempt: t.attempts,
        };
        let rules = run.rules(self.policy);
        // An attempt that is not the task's current one records nothing:
        // whatever the ledger holds diverges.
        let Some((events, _)) = decide::end_attempt(state, attempt, answer, &costs, at, &rules)
        else {
            return Some(Vec::new());
        };
        let expected = events
            .into_iter()
            .map(|event| match event {
                // The costs are the attempt's input, its output too.
                Event::CostIncurred { .. } => Expect {
                    event,
                    optional: false,
                    compare: Compare::Input,
                },
                Event::TaskAcked { .. } => Expect {
                    event,
                    optional: false,
                    compare: Compare::Copied,
                },
                // The schedule cannot be recomputed without the workload's
                // retry policy: take it.
                Event::TaskNacked {
                    task,
                    worker,
                    error,
                    retry_at: Some(_),
                    timed_out,
                } if run.queue.is_none() => Expect::decision(Event::TaskNacked {
                    task,
                    worker,
                    error,
                    retry_at: recorded_retry,
                    timed_out,
                }),
                event => Expect::decision(event),
            })
            .collect();
        Some(expected)
    }

    /// Matches the recomputed events against the recorded ones in order;
    /// an optional event the ledger lacks is skipped.
    fn compare(&mut self, expected: &[Expect], records: &[Rec], subject: &str) -> ControlFlow<()> {
        let mut next = records.iter().peekable();
        for expect in expected {
            let Some(record) = next.peek() else {
                if expect.optional {
                    continue;
                }
                let seq = records.last().map_or(0, |r| r.seq);
                return self.diverged(Divergence {
                    seq,
                    decision: expect.event.kind().to_owned(),
                    subject: subject.to_owned(),
                    what: format!(
                        "the deciders make a `{}` after seq {seq} that the ledger does not hold",
                        expect.event.kind()
                    ),
                    fields: field_diffs(&serde_json::Value::Null, &expect.event),
                });
            };
            // An optional event the ledger lacks (an event of another
            // kind stands there) is skipped without a field by field look,
            // which would only find their `type` fields differ.
            if expect.optional
                && std::mem::discriminant(&record.event) != std::mem::discriminant(&expect.event)
            {
                continue;
            }
            let fields = match expect.compare {
                // Equal events need no field by field look.
                _ if record.event == expect.event => Vec::new(),
                Compare::Decision | Compare::Input | Compare::Copied => {
                    let recorded = serde_json::to_value(&record.event).unwrap_or_default();
                    field_diffs(&recorded, &expect.event)
                }
                Compare::Lease => lease_diffs(&record.event, &expect.event),
            };
            if fields.is_empty() {
                if expect.compare == Compare::Decision {
                    self.report.decisions += 1;
                    *self.report.by_kind.entry(expect.event.kind()).or_default() += 1;
                }
                next.next();
                continue;
            }
            if expect.optional {
                continue;
            }
            let what = if record.event.kind() == expect.event.kind() {
                format!(
                    "`{}` recorded at seq {} is decided differently",
                    record.event.kind(),
                    record.seq
                )
            } else {
                format!(
                    "the ledger holds `{}` at seq {} where the deciders make `{}`",
                    record.event.kind(),
                    record.seq,
                    expect.event.kind()
                )
            };
            return self.diverged(Divergence {
                seq: record.seq,
                decision: expect.event.kind().to_owned(),
                subject: subject.to_owned(),
                what,
                fields,
            });
        }
        if let Some(record) = next.next() {
            return self.diverged(Divergence {
                seq: record.seq,
                decision: record.event.kind().to_owned(),
                subject: subject.to_owned(),
                what: format!(
                    "the ledger holds `{}` at seq {} that the deciders do not make",
                    record.event.kind(),
                    record.seq
                ),
                fields: Vec::new(),
            });
        }
        ControlFlow::Continue(())
    }

    /// The tenant whose money a group decides about.
    fn group_tenant(&self, group: &Group) -> Option<TenantId> {
        match group {
            Group::Gate(task) | Group::Expire(task) | Group::Lease(task) => {
                self.state.queue.get(task).map(|t| t.tenant.clone())
            }
            Group::End(_, tenant) | Group::Reset(tenant) => Some(tenant.clone()),
        }
    }

    /// A decision about `tenant`'s money at `record` must come after the
    /// reset of a budget period that is over: the executors record due
    /// resets first in every step.
    fn reset_recorded(&mut self, tenant: &TenantId, record: &Rec) -> ControlFlow<()> {
        let due = period_resets(&self.state, record.at)
            .iter()
            .any(|e| matches!(e, Event::BudgetPeriodReset { tenant: t } if t == tenant));
        if !due {
            return ControlFlow::Continue(());
        }
        self.diverged(Divergence {
            seq: record.seq,
            decision: "budget_period_reset".to_owned(),
            subject: tenant.to_string(),
            what: format!(
                "`{tenant}`'s budget period is over at seq {} but no `budget_period_reset` was recorded before this `{}`",
                record.seq,
                record.event.kind()
            ),
            fields: Vec::new(),
        })
    }

    fn diverged(&mut self, divergence: Divergence) -> ControlFlow<()> {
        self.report.divergences += 1;
        if self.report.first.len() < KEPT_DIVERGENCES {
            self.report.first.push(divergence);
        }
        if self.keep_going {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }

    /// Whether the group belongs to an executed run that `--run` leaves out.
    fn executed_elsewhere(&self, group: &Group) -> bool {
        let task = match group {
            Group::Gate(task) | Group::End(task, _) | Group::Expire(task) | Group::Lease(task) => {
                task
            }
            Group::Reset(_) => return self.executed.values().any(|r| !r.finished),
        };
        self.state
            .queue
            .get(task)
            .is_some_and(|t| self.executed.contains_key(&t.run))
    }

    /// The executed run `task` belongs to, if its decisions are to be
    /// re-checked.
    fn task_scope(&self, task: &TaskId) -> Option<&Executed> {
        let run = &self.state.queue.get(task)?.run;
        if self.only_run.as_ref().is_some_and(|only| only != run) {
            return None;
        }
        self.executed.get(run)
    }

    /// Whether tenant-wide decisions (period resets, pipeline run denials)
    /// now come from a run in scope that runledger is executing.
    fn tenant_scope(&self) -> bool {
        match &self.only_run {
            Some(run) => self.executed.get(run).is_some_and(|r| !r.finished),
            None => self.executed.values().any(|r| !r.finished),
        }
    }

    /// Folds `record` into the state and the checker's memory.
    fn fold(&mut self, record: Rec) {
        let Rec { seq, at, event } = record;
        match &event {
            Event::WorkloadRecorded { run, text, .. } => {
                if let Some(summary) = self.state.runs.get(run) {
                    let queue = Workload::parse_recorded("<recorded workload>", text)
                        .ok()
                        .map(|w| w.policy);
                    self.executed.insert(
                        run.clone(),
                        Executed {
                            seed: summary.seed,
                            queue,
                            finished: false,
                        },
                    );
                }
            }
            Event::RunFinished { run } => {
                if let Some(executed) = self.executed.get_mut(run) {
                    executed.finished = true;
                }
            }
            _ => {}
        }
        self.state.evolve(seq, at, event);
        self.report.records += 1;
    }
}

/// Whether `event` belongs to `group`, which holds `records` so far.
fn belongs(group: &Group, records: &[Rec], event: &Event) -> bool {
    match group {
        Group::Gate(task) => match event {
            Event::DegradationDecided { task: Some(t), .. }
            | Event::LearningArmChosen { task: t, .. }
            | Event::CostReserved { task: t, .. }
            | Event::AdmissionDenied { task: Some(t), .. }
            | Event::TaskSkipped { task: t, .. }
            | Event::TaskDequeued { task: t, .. } => t == task,
            // The task, and the dependants its end cancels with it.
            Event::TaskCancelled { task: t, reason } => {
                t == task
                    || records.iter().any(|r| {
                        matches!(&r.event, Event::TaskCancelled { task: x, reason: why } if x == task && why == reason)
                    })
            }
            _ => false,
        },
        Group::End(task, tenant) => match event {
            Event::BudgetOverrun { task: Some(t), .. }
            | Event::CostIncurred { task: Some(t), .. }
            | Event::ReservationReleased { task: t, .. }
            | Event::LearningOutcome { task: Some(t), .. }
            | Event::TaskAcked { task: t, .. }
            | Event::TaskNacked { task: t, .. }
            | Event::TaskDeadLettered { task: t, .. } => t == task,
            Event::BudgetStatusChanged { tenant: x, .. }
            | Event::LearningProfileAdjusted { tenant: x, .. } => x == tenant,
            Event::TaskCancelled { reason, .. } => {
                *reason == format!("parent `{task}` was dead-lettered")
            }
            _ => false,
        },
        Group::Expire(task) => match event {
            Event::TaskDeadLettered { task: t, .. }
            | Event::ReservationReleased { task: t, .. } => t == task,
            Event::TaskCancelled { reason, .. } => {
                *reason == format!("parent `{task}` was dead-lettered")
            }
            _ => false,
        },
        Group::Lease(_) => false,
        Group::Reset(tenant) => {
            records.len() == 1 && matches!(event, Event::BudgetStatusChanged { tenant: x, .. } if x == tenant)
        }
    }
}

/// Whether `event` is the last a group can hold.
fn ends(group: &Group, event: &Event) -> bool {
    match group {
        Group::Gate(_) => matches!(
            event,
            Event::TaskDequeued { .. } | Event::TaskSkipped { .. }
        ),
        Group::End(..) => matches!(
            event,
            Event::TaskAcked { .. }
                | Event::TaskNacked {
                    retry_at: Some(_),
                    ..
                }
        ),
        Group::Lease(_) => true,
        Group::Expire(_) | Group::Reset(_) => false,
    }
}

/// Whether `event` records a decision (for the count of those that cannot
/// be re-checked).
fn is_decision(event: &Event) -> bool {
    matches!(
        event,
        Event::DegradationDecided { .. }
            | Event::LearningArmChosen { .. }
            | Event::CostReserved { .. }
            | Event::AdmissionDenied { .. }
            | Event::TaskSkipped { .. }
            | Event::BudgetOverrun { .. }
            | Event::ReservationReleased { .. }
            | Event::BudgetStatusChanged { .. }
            | Event::BudgetPeriodReset { .. }
            | Event::LearningOutcome { .. }
            | Event::LearningProfileAdjusted { .. }
            | Event::TaskNacked { .. }
            | Event::TaskDeadLettered { .. }
    )
}

/// The fields where `recorded` (JSON) and `recomputed` differ, by dotted
/// path, in path order.
fn field_diffs(recorded: &serde_json::Value, recomputed: &Event) -> Vec<FieldDiff> {
    let recomputed = serde_json::to_value(recomputed).unwrap_or_default();
    let mut diffs = Vec::new();
    diff_values("", recorded, &recomputed, &mut diffs);
    diffs
}

fn diff_values(
    path: &str,
    recorded: &serde_json::Value,
    recomputed: &serde_json::Value,
    out: &mut Vec<FieldDiff>,
) {
    use serde_json::Value;
    if recorded == recomputed {
        return;
    }
    if let (Value::Object(a), Value::Object(b)) = (recorded, recomputed) {
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for key in keys {
            let path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            diff_values(
                &path,
                a.get(key).unwrap_or(&Value::Null),
                b.get(key).unwrap_or(&Value::Null),
                out,
            );
        }
        return;
    }
    out.push(FieldDiff {
        field: if path.is_empty() {
            "event".to_owned()
        } else {
            path.to_owned()
        },
        recorded: recorded.clone(),
        recomputed: recomputed.clone(),
    });
}

/// A lease is compared on its task and attempt.
fn lease_diffs(recorded: &Event, recomputed: &Event) -> Vec<FieldDiff> {
    if let (
        Event::TaskDequeued {
            task: a,
            attempt: x,
            ..
        },
        Event::TaskDequeued {
            task: b,
            attempt: y,
            ..
        },
    ) = (recorded, recomputed)
    {
        if a == b && x == y {
            return Vec::new();
        }
    }
    let key = |e: &Event| match e {
        Event::TaskDequeued { task, attempt, .. } => {
            serde_json::json!({ "type": "task_dequeued", "task": task, "attempt": attempt })
        }
        other => serde_json::to_value(other).unwrap_or_default(),
    };
    let mut diffs = Vec::new();
    diff_values("", &key(recorded), &key(recomputed), &mut diffs);
    diffs
}
