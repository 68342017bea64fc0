//! The commands an executor sends the ledger: each names a decision, and
//! [`apply`] makes it on the state just before its records (through the
//! [`decide`](super::decide) functions) and records what it decided. The
//! writer runs a batch of them in one step, one group commit; nothing but
//! these values crosses into it.

use super::decide::{self, Answer, Attempt, Ended, LeaseTo, Rules, Start, Step};
use super::event::{Category, Event, Params};
use super::governance::{Denial, admit_run};
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
    }
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
