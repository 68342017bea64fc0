//! The commands an executor sends the ledger: each names a decision, and
//! [`apply`] makes it on the state just before its records (through the
//! [`decide`](super::decide) functions) and records what it decided. The
//! writer runs a batch of them in one step, one group commit; nothing but
//! these values crosses into it.

use super::decide::{self, Answer, Attempt, Ended, LeaseTo, Rules, Start, Step};
use super::event::{Category, Event, Params, Priority};
use super::governance::{Denial, admit_run, admitted};
use super::ids::{RunId, TaskId, TenantId, WorkerId};
use super::money::Micros;
use super::queue::Task;
use super::scheduler::{Lost, next_ready_many};
use super::state::State;
use super::time::Timestamp;

/// A decision to make and record.
#[derive(Clone, Debug)]
pub enum Command {
    /// Pipeline runs arriving, in order: each is admitted under its
    /// tenant's limits and its tasks recorded, or denied
    /// (`admission_denied`). A run its tenant may never start (blocked) is
    /// dropped and the next one looked at; one that may start later stops
    /// the command there, so no later arrival passes it. Its denial is
    /// recorded once: `denial_recorded` says the caller's earlier try at
    /// the first run already did.
    SubmitRuns {
        runs: Vec<Submission>,
        denial_recorded: bool,
    },
    /// Facts to record as they are (a run's task submissions).
    Record(Vec<Event>),
    /// Put ready tasks of `run` through the gate, best first, until each of
    /// `workers` holds one lease (until `lease_micros` from now) or none
    /// is left.
    Lease {
        run: RunId,
        workers: Vec<WorkerId>,
        lease_micros: i64,
    },
    /// The end of an attempt: what it answered and what it cost.
    Settle {
        attempt: OwnedAttempt,
        answer: Answer,
        costs: Vec<(Category, Micros)>,
    },
    /// Return the leases `which` names, doing with their reservations what
    /// `lost` says.
    ExpireLeases { which: Expiring, lost: Lost },
    /// Put up to `max` ready tasks of `run` through the gate without a
    /// lease, best first, for workers on a transport (Redis) to claim:
    /// each admitted with its reservation, or — admitted by an earlier
    /// step whose ticket was lost — handed out again, nothing recorded.
    /// Tasks in `skip` (handed out and not yet claimed) are passed over.
    Admit {
        run: RunId,
        max: usize,
        skip: Vec<TaskId>,
    },
    /// Claims of admitted tasks by `worker` on the transport, each
    /// recorded as its lease until `lease_micros` from now ([`decide::claim`]).
    Claim {
        worker: WorkerId,
        claims: Vec<(TaskId, u32)>,
        lease_micros: i64,
    },
    /// What workers on the transport reported, in the order they reported
    /// it: a claim they started (its lease until `lease_micros` from now),
    /// or the end of an attempt. Each (task, claim attempt) counts once.
    Heard {
        reports: Vec<Reported>,
        lease_micros: i64,
    },
}

/// A task handed to a transport's workers: what its envelope carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub task: TaskId,
    pub run: RunId,
    pub tenant: TenantId,
    pub priority: Priority,
    pub handler: String,
    /// The attempt a claim of it starts.
    pub attempt: u32,
    pub params: Params,
    pub inputs: Vec<(TaskId, Params)>,
}

/// One report of a worker on a transport about its claim `claimed` (the
/// claim attempt) of `task`.
#[derive(Clone, Debug)]
pub struct Reported {
    pub task: TaskId,
    pub run: RunId,
    pub worker: WorkerId,
    pub claimed: u32,
    /// The ledger's attempt for this claim, when an earlier step recorded
    /// its start (the caller's memory of [`Heard::Started`]).
    pub known: Option<u32>,
    pub what: Progress,
}

/// What a [`Reported`] says.
#[derive(Clone, Debug)]
pub enum Progress {
    Started,
    Ended {
        answer: Answer,
        costs: Vec<(Category, Micros)>,
    },
}

/// What one [`Reported`] led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A start: recorded as the lease of this ledger attempt, or `None`
    /// (already recorded, or no longer wanted).
    Started(Option<u32>),
    /// An end: what it led to, or `None` when the attempt was no longer
    /// current (nothing recorded).
    Ended(Option<Ended>),
}

/// A pipeline run to submit: its tenant and its `task_submitted` events.
#[derive(Clone, Debug)]
pub struct Submission {
    pub tenant: TenantId,
    pub events: Vec<Event>,
}

/// Which leases [`Command::ExpireLeases`] returns.
#[derive(Clone, Debug)]
pub enum Expiring {
    /// Those whose deadline has passed.
    Due,
    /// Every lease of the run (resuming it: no attempt of an earlier
    /// process is still running).
    Run(RunId),
}

/// An [`Attempt`] that owns its ids, to travel in a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedAttempt {
    pub task: TaskId,
    pub run: RunId,
    pub worker: WorkerId,
    pub attempt: u32,
}

impl OwnedAttempt {
    pub fn borrow(&self) -> Attempt<'_> {
        Attempt {
            task: &self.task,
            run: &self.run,
            worker: &self.worker,
            attempt: self.attempt,
        }
    }
}

/// A task handed to a worker until its deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub task: TaskId,
    pub run: RunId,
    pub tenant: TenantId,
    pub worker: WorkerId,
    pub attempt: u32,
    pub deadline: Timestamp,
    pub handler: String,
    pub params: Params,
    /// Outputs of the task's parents, for reduce steps.
    pub inputs: Vec<(TaskId, Params)>,
}

impl Lease {
    pub fn attempt_of(&self) -> Attempt<'_> {
        Attempt {
            task: &self.task,
            run: &self.run,
            worker: &self.worker,
            attempt: self.attempt,
        }
    }

    pub fn owned_attempt(&self) -> OwnedAttempt {
        OwnedAttempt {
            task: self.task.clone(),
            run: self.run.clone(),
            worker: self.worker.clone(),
            attempt: self.attempt,
        }
    }
}

/// What a command decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// How many of the runs were taken (submitted, or dropped as their
    /// tenant is blocked), and the denial that stopped the rest.
    Submitted {
        taken: usize,
        waiting: Option<Denial>,
    },
    Recorded,
    /// The leases taken, in the order of the workers that got them.
    Leased(Vec<Lease>),
    /// What the end of the attempt led to; `None` when it was no longer
    /// current (nothing recorded).
    Settled(Option<Ended>),
    /// How many leases were returned.
    Expired(usize),
    /// The tasks handed out, best first.
    Admitted(Vec<Ticket>),
    /// For each claim, in order: the ledger's attempt it runs and its
    /// lease deadline, or `None` when the ledger no longer wants it.
    Claimed(Vec<Option<(u32, Timestamp)>>),
    /// What each report led to, in order.
    Heard(Vec<Heard>),
}

/// Makes the decision `command` names at `now` on `step`'s state and
/// records its events there, each applied before the next decision.
pub fn apply<S: Step>(
    step: &mut S,
    now: Timestamp,
    command: Command,
    rules: &Rules,
) -> Result<Outcome, S::Error> {
    match command {
        Command::SubmitRuns {
            runs,
            denial_recorded,
        } => submit_runs(step, runs, denial_recorded),
        Command::Record(events) => {
            for event in events {
                step.record(event)?;
            }
            Ok(Outcome::Recorded)
        }
        Command::Lease {
            run,
            workers,
            lease_micros,
        } => lease(step, now, &run, workers, lease_micros, rules).map(Outcome::Leased),
        Command::Settle {
            attempt,
            answer,
            costs,
        } => {
            let ended =
                decide::end_attempt(step.state(), attempt.borrow(), answer, &costs, now, rules);
            let Some((events, ended)) = ended else {
                return Ok(Outcome::Settled(None));
            };
            for event in events {
                step.record(event)?;
            }
            Ok(Outcome::Settled(Some(ended)))
        }
        Command::ExpireLeases { which, lost } => {
            let picks = |t: &Task| match &which {
                Expiring::Due => t.lease_deadline.is_some_and(|d| d < now),
                Expiring::Run(run) => &t.run == run,
            };
            decide::expire_leases(step, lost, picks).map(Outcome::Expired)
        }
        Command::Admit { run, max, skip } => {
            admit(step, now, &run, max, skip, rules).map(Outcome::Admitted)
        }
        Command::Claim {
            worker,
            claims,
            lease_micros,
        } => {
            let deadline = now.saturating_add_micros(lease_micros);
            let mut claimed = Vec::with_capacity(claims.len());
            for (task, attempt) in claims {
                let Some((events, attempt)) =
                    decide::claim(step.state(), &task, attempt, &worker, deadline)
                else {
                    claimed.push(None);
                    continue;
                };
                for event in events {
                    step.record(event)?;
                }
                claimed.push(Some((attempt, deadline)));
            }
            Ok(Outcome::Claimed(claimed))
        }
        Command::Heard {
            reports,
            lease_micros,
        } => heard(step, now, reports, lease_micros, rules).map(Outcome::Heard),
    }
}

/// [`Command::Admit`].
fn admit<S: Step>(
    step: &mut S,
    now: Timestamp,
    run: &RunId,
    max: usize,
    skip: Vec<TaskId>,
    rules: &Rules,
) -> Result<Vec<Ticket>, S::Error> {
    let max = max.max(1);
    // Looked up, never iterated: its order decides nothing.
    let skip: rustc_hash::FxHashSet<TaskId> = skip.into_iter().collect();
    let state = step.state();
    let window = max * 2 + 16 + skip.len();
    let picked: Vec<TaskId> = next_ready_many(state, now, state.seq, &rules.queue, window, |t| {
        &t.run == run
    })
    .into_iter()
    .filter(|task| !skip.contains(*task))
    .cloned()
    .collect();
    let mut tickets = Vec::new();
    for task in &picked {
        if tickets.len() >= max {
            break;
        }
        let state = step.state();
        let (events, params) = if admitted(state, task) {
            (Vec::new(), decide::admitted_params(state, task))
        } else {
            match decide::start(state, task, None, rules) {
                (events, Start::Run { params, .. }) => (events, Some(params)),
                (events, _) => (events, None),
            }
        };
        let ticket = match (params, state.queue.get(task)) {
            (Some(params), Some(t)) => Some(Ticket {
                task: task.clone(),
                run: t.run.clone(),
                tenant: t.tenant.clone(),
                priority: t.priority,
                handler: t.handler.clone(),
                attempt: t.attempts + 1,
                params,
                inputs: inputs_of(state, &t.deps),
            }),
            _ => None,
        };
        for event in events {
            step.record(event)?;
        }
        tickets.extend(ticket);
    }
    Ok(tickets)
}

/// [`Command::Heard`]: each report decided on the state the ones before it
/// left. The ledger's attempt for a claim is the one its start recorded —
/// in this step or, per the caller, an earlier one — or the claim attempt.
fn heard<S: Step>(
    step: &mut S,
    now: Timestamp,
    reports: Vec<Reported>,
    lease_micros: i64,
    rules: &Rules,
) -> Result<Vec<Heard>, S::Error> {
    let deadline = now.saturating_add_micros(lease_micros);
    // (task, claim attempt) → ledger attempt, for the starts of this step
    // (looked up, never iterated: its order decides nothing).
    let mut started: rustc_hash::FxHashMap<(TaskId, u32), u32> = Default::default();
    let mut heard = Vec::with_capacity(reports.len());
    for report in reports {
        let key = (report.task.clone(), report.claimed);
        let known = started.get(&key).copied().or(report.known);
        let (events, outcome) = match report.what {
            // Read again after a restart or a failed acknowledgement.
            Progress::Started if known.is_some() => (Vec::new(), Heard::Started(None)),
            Progress::Started => {
                let state = step.state();
                match decide::claim(
                    state,
                    &report.task,
                    report.claimed,
                    &report.worker,
                    deadline,
                ) {
                    Some((events, attempt)) => {
                        started.insert(key, attempt);
                        (events, Heard::Started(Some(attempt)))
                    }
                    None => (Vec::new(), Heard::Started(None)),
                }
            }
            Progress::Ended { answer, costs } => {
                let attempt = Attempt {
                    task: &report.task,
                    run: &report.run,
                    worker: &report.worker,
                    attempt: known.unwrap_or(report.claimed),
                };
                match decide::end_attempt(step.state(), attempt, answer, &costs, now, rules) {
                    Some((events, ended)) => (events, Heard::Ended(Some(ended))),
                    None => (Vec::new(), Heard::Ended(None)),
                }
            }
        };
        for event in events {
            step.record(event)?;
        }
        heard.push(outcome);
    }
    Ok(heard)
}

/// [`Command::SubmitRuns`].
fn submit_runs<S: Step>(
    step: &mut S,
    runs: Vec<Submission>,
    mut denial_recorded: bool,
) -> Result<Outcome, S::Error> {
    let mut taken = 0;
    for Submission { tenant, events } in runs {
        match admit_run(step.state(), &tenant) {
            Ok(()) => {
                for event in events {
                    step.record(event)?;
                }
            }
            Err(denial) => {
                if !denial_recorded {
                    step.record(Event::AdmissionDenied {
                        tenant,
                        task: None,
                        reason: denial.reason().to_owned(),
                    })?;
                }
                if denial.may_wait() {
                    return Ok(Outcome::Submitted {
                        taken,
                        waiting: Some(denial),
                    });
                }
            }
        }
        taken += 1;
        denial_recorded = false;
    }
    Ok(Outcome::Submitted {
        taken,
        waiting: None,
    })
}

/// [`Command::Lease`]: each ready task decided on the state the ones
/// before it left, the best first; a task that waits or ends at the gate
/// gives its place to the next.
fn lease<S: Step>(
    step: &mut S,
    now: Timestamp,
    run: &RunId,
    workers: Vec<WorkerId>,
    lease_micros: i64,
    rules: &Rules,
) -> Result<Vec<Lease>, S::Error> {
    let deadline = now.saturating_add_micros(lease_micros);
    let window = workers.len() * 2 + 16;
    let state = step.state();
    let picked: Vec<TaskId> = next_ready_many(state, now, state.seq, &rules.queue, window, |t| {
        &t.run == run
    })
    .into_iter()
    .cloned()
    .collect();
    let mut workers = workers.into_iter();
    let mut leases = Vec::new();
    let Some(mut worker) = workers.next() else {
        return Ok(leases);
    };
    for task in &picked {
        let to = LeaseTo {
            worker: worker.clone(),
            deadline: Some(deadline),
        };
        let state = step.state();
        let (events, start) = decide::start(state, task, Some(to), rules);
        let leased = match (start, state.queue.get(task)) {
            (Start::Run { params, .. }, Some(t)) => Some(Lease {
                task: task.clone(),
                run: t.run.clone(),
                tenant: t.tenant.clone(),
                worker: worker.clone(),
                attempt: t.attempts + 1,
                deadline,
                handler: t.handler.clone(),
                params,
                inputs: inputs_of(state, &t.deps),
            }),
            _ => None,
        };
        for event in events {
            step.record(event)?;
        }
        if let Some(leased) = leased {
            leases.push(leased);
            match workers.next() {
                Some(next) => worker = next,
                None => break,
            }
        }
    }
    Ok(leases)
}

/// The outputs of `deps`, for a reduce step's attempt.
pub fn inputs_of(state: &State, deps: &[TaskId]) -> Vec<(TaskId, Params)> {
    deps.iter()
        .filter_map(|d| state.queue.get(d).map(|p| (d.clone(), p.output.clone())))
        .collect()
}
