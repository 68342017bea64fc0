//! The deciders: one pure function per decision an executor makes about a
//! task, each a function of the state just before its records, the
//! decision's inputs and the run's [`Rules`].
//!
//! - [`start`]: the gate in front of an attempt — the cost agent's verdict,
//!   a skip or a cancellation, the learning policy's choice, admission with
//!   the node's reservation, and the lease when there is a worker for it.
//! - [`end_attempt`]: the end of an attempt — settlement of its costs
//!   (overrun, release, status change), the learning outcome and profile
//!   adjustment, then the ACK, or the NACK with its retry schedule or the
//!   dead letter and its cascade.
//!
//! The simulated executor, the in-memory and Redis queues and
//! `replay --check` all call these same functions; the other decisions
//! (`governance::period_resets`, `governance::admit_run`,
//! `scheduler::expire_lease`) each have one implementation too. Nothing
//! here reads a clock or draws unseeded randomness: a recorded decision is
//! re-made exactly from the state before it.

use std::collections::BTreeSet;

use super::cost_agent;
use super::draw::draw;
use super::event::{Category, Decision, Event, Params};
use super::governance::{Admitter, Settler, node_ceiling, period_resets};
use super::ids::{RunId, TaskId, WorkerId};
use super::learning::Learner;
use super::limits::ERROR_BYTES_MAX;
use super::money::Micros;
use super::policy::Policy;
use super::queue::{Task, TaskStatus};
use super::scheduler::{Lost, QueuePolicy, dependants_to_cancel, expire_lease};
use super::state::State;
use super::time::Timestamp;

/// A decision step in progress: the state as the step's events so far
/// left it, and where its next event goes (applied at once, so the next
/// decision of the step sees it). The writer's `Draft` is one; the
/// simulated executor is another.
pub trait Step {
    type Error;
    fn state(&self) -> &State;
    fn record(&mut self, event: Event) -> Result<(), Self::Error>;
}

/// Records the budget period resets due at `now` ([`period_resets`]):
/// every executor does so first in each step, so no decision of the step
/// is made on a period that is over.
pub fn turn_periods<S: Step>(step: &mut S, now: Timestamp) -> Result<(), S::Error> {
    for event in period_resets(step.state(), now) {
        step.record(event)?;
    }
    Ok(())
}

/// Records the loss of every lease `which` picks among the leased tasks
/// (in id order), each decided on the state the ones before it left — the
/// attempt is lost, the task goes back or, after its last attempt, to the
/// dead letters — doing with the attempts' reservations what `lost` says;
/// how many.
pub fn expire_leases<S: Step>(
    step: &mut S,
    lost: Lost,
    which: impl Fn(&Task) -> bool,
) -> Result<usize, S::Error> {
    let leased: Vec<TaskId> = (step.state().queue.leased())
        .filter(|(_, t)| which(t))
        .map(|(id, _)| id.clone())
        .collect();
    for task in &leased {
        for event in expire_lease(step.state(), task, lost) {
            step.record(event)?;
        }
    }
    Ok(leased.len())
}

/// What a run's decisions depend on besides the state: the thresholds, the
/// retry policy and the seed its draws derive from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rules {
    pub policy: Policy,
    pub queue: QueuePolicy,
    pub seed: u64,
}

impl Rules {
    /// The standard thresholds with the run's retry policy and seed.
    pub fn new(queue: QueuePolicy, seed: u64) -> Self {
        Rules {
            policy: Policy::STANDARD,
            queue,
            seed,
        }
    }
}

/// What to do with a ready task about to be handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Run it with these params (a degradation plan or a learning choice may
    /// have changed them), reserving this much.
    Run { params: Params, reserve: Micros },
    /// Not now: its budget is busy; it stays ready.
    Wait,
    /// It ended without running (terminated, skipped or refused), or it is
    /// not ready; the events say how.
    Ended,
}

/// Who takes a task that passes the gate, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTo {
    pub worker: WorkerId,
    pub deadline: Option<Timestamp>,
}

/// The gate's decision for ready `task`: the events to record, in order,
/// and what it led to. A task that runs gets its reservation
/// (`cost_reserved`) and, with `lease`, its lease (`task_dequeued`, attempt
/// = attempts so far + 1); without one it is admitted and waits for a
/// worker to claim it (the Redis queue). A task that is not pending is not
/// looked at (`Ended`, nothing recorded).
pub fn start(
    state: &State,
    task: &TaskId,
    lease: Option<LeaseTo>,
    rules: &Rules,
) -> (Vec<Event>, Start) {
    start_after(state, task, lease, rules, Recorded::of(state, task))
}

/// What the ledger already holds about a task's wait at the gate: the gate
/// records a verdict when it changes, and a wait for admission once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub verdict: Option<Decision>,
    pub wait: bool,
}

impl Recorded {
    /// Nothing: every event of the decision is made.
    pub const NOTHING: Recorded = Recorded {
        verdict: None,
        wait: false,
    };

    /// What `state` holds about `task`.
    pub fn of(state: &State, task: &TaskId) -> Self {
        Recorded {
            verdict: state.last_verdict(task),
            wait: state.wait_recorded(task),
        }
    }
}

/// [`start`] given what is `recorded` about the task's wait (`replay
/// --check` asks for every event, to accept a ledger that recorded one again).
pub fn start_after(
    state: &State,
    task: &TaskId,
    lease: Option<LeaseTo>,
    rules: &Rules,
    recorded: Recorded,
) -> (Vec<Event>, Start) {
    let mut events = Vec::new();
    let Some(t) = state.queue.get(task) else {
        return (events, Start::Ended);
    };
    if t.status != TaskStatus::Pending {
        return (events, Start::Ended);
    }
    // The cost agent decides before the node runs; a verdict is recorded
    // when it differs from the task's last one.
    let verdict = cost_agent::decide_under(&rules.policy, state, task);
    if let Some(v) = &verdict {
        if recorded.verdict != Some(v.decision) {
            events.extend(v.event(state, task));
        }
    }
    let (decision, plan, why) = match &verdict {
        Some(v) => (v.decision, v.plan.as_ref(), v.reason.as_str()),
        None => (Decision::Continue, None, ""),
    };
    if decision == Decision::Terminate {
        cancel(
            state,
            task,
            format!("terminated by the cost agent: {why}"),
            &mut events,
        );
        return (events, Start::Ended);
    }
    if t.optional && plan.is_some_and(|p| p.skip_optional) {
        events.push(Event::TaskSkipped {
            task: task.clone(),
            reason: format!("skipped by the degradation plan: {why}"),
        });
        return (events, Start::Ended);
    }
    // The learning policy picks among the values the node offers (and does
    // not explore under a degradation), then the plan applies.
    let choice = super::learning::offered(&t.params).map(|(param, values)| {
        let budget = state
            .tenants
            .get(&t.tenant)
            .map_or(Micros::ZERO, |x| x.budget_micros);
        state.learning.choose(
            &t.tenant,
            budget,
            t.cost_ceiling_micros,
            &param,
            &values,
            decision == Decision::Continue,
            rules.seed,
            task.draw_key(&t.run),
            t.attempts + 1,
        )
    });
    let mut params = match &choice {
        Some(c) => c.apply(&t.params),
        None => t.params.clone(),
    };
    if let Some(plan) = plan {
        params = plan.apply(&params);
    }
    // What runs is what the policy learns about: a value the plan changed is
    // recorded as run.
    let choice = choice.map(|mut c| {
        let ran = params
            .to_value()
            .get(&c.param)
            .and_then(|v| v.as_str().map(str::to_owned));
        if let Some(ran) = ran.filter(|ran| *ran != c.value) {
            c.reason = format!(
                "{}; the degradation plan runs `{ran}` instead of `{}`",
                c.reason, c.value
            );
            c.value = ran;
        }
        c
    });
    match Admitter::new(state).admit_at(task, node_ceiling(t, &params)) {
        Ok(reserve) => {
            events.extend(choice.map(|c| c.event(&t.tenant, task)));
            if reserve > Micros::ZERO {
                events.push(Event::CostReserved {
                    tenant: t.tenant.clone(),
                    task: task.clone(),
                    amount_micros: reserve,
                });
            }
            if let Some(lease) = lease {
                events.push(Event::TaskDequeued {
                    task: task.clone(),
                    worker: lease.worker,
                    attempt: t.attempts + 1,
                    lease_deadline: lease.deadline,
                });
            }
            (events, Start::Run { params, reserve })
        }
        Err(denial) if denial.may_wait() => {
            // Recorded once per wait; the task stays ready.
            if !recorded.wait {
                events.push(Event::AdmissionDenied {
                    tenant: t.tenant.clone(),
                    task: Some(task.clone()),
                    reason: denial.reason().to_owned(),
                });
            }
            (events, Start::Wait)
        }
        Err(denial) => {
            let reason = denial.reason().to_owned();
            events.push(Event::AdmissionDenied {
                tenant: t.tenant.clone(),
                task: Some(task.clone()),
                reason: reason.clone(),
            });
            cancel(state, task, format!("not admitted: {reason}"), &mut events);
            (events, Start::Ended)
        }
    }
}

/// Cancels `task` and its dependants, each once.
fn cancel(state: &State, task: &TaskId, reason: String, events: &mut Vec<Event>) {
    let mut gone = BTreeSet::from([task.clone()]);
    events.push(Event::TaskCancelled {
        task: task.clone(),
        reason: reason.clone(),
    });
    for child in dependants_to_cancel(state, task) {
        if gone.insert(child.clone()) {
            events.push(Event::TaskCancelled {
                task: child,
                reason: reason.clone(),
            });
        }
    }
}

/// The params a task admitted by an earlier step, and never started, runs
/// with when it is handed out again (its ticket was lost on the way to the
/// workers): its recorded learning choice and the cost agent's plan on
/// `state`. Nothing is decided again: the reservation stands.
pub fn admitted_params(state: &State, task: &TaskId) -> Option<Params> {
    let t = state.queue.get(task)?;
    let mut params = match state.learning.pending_arm(task) {
        Some((param, value)) => super::learning::with_value(&t.params, param, value),
        None => t.params.clone(),
    };
    if let Some(plan) = cost_agent::decide(state, task).and_then(|v| v.plan) {
        params = plan.apply(&params);
    }
    Some(params)
}

/// A worker's claim of admitted `task` on a transport (Redis), claim
/// attempt `claimed` — the dispatched attempt plus its redeliveries —
/// recorded as its lease until `deadline`: the events and the ledger's
/// attempt number; `None` when the ledger no longer wants it (a duplicate,
/// or an attempt already past). A pending task takes its next attempt; a
/// leased one — redelivered after its lease ran out on the transport —
/// first records the lost lease, its reservation carried to the new
/// attempt (or its dead letter, when that was the last attempt). A claim
/// attempt past the ledger's next one means earlier deliveries died before
/// announcing themselves: the ledger counts the attempts it saw.
pub fn claim(
    state: &State,
    task: &TaskId,
    claimed: u32,
    worker: &WorkerId,
    deadline: Timestamp,
) -> Option<(Vec<Event>, u32)> {
    let t = state.queue.get(task)?;
    let attempt = t.attempts + 1;
    if claimed < attempt {
        return None;
    }
    let mut events = Vec::new();
    match t.status {
        TaskStatus::Pending => {}
        TaskStatus::Leased => {
            let lost = expire_lease(state, task, Lost::Carry);
            let dead = (lost.iter()).any(|e| matches!(e, Event::TaskDeadLettered { .. }));
            events.extend(lost);
            if dead {
                return Some((events, attempt));
            }
        }
        _ => return None,
    }
    events.push(Event::TaskDequeued {
        task: task.clone(),
        worker: worker.clone(),
        attempt,
        lease_deadline: Some(deadline),
    });
    Some((events, attempt))
}

/// One attempt of a task by a worker: what a result is about.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    pub task: &'a TaskId,
    pub run: &'a RunId,
    pub worker: &'a WorkerId,
    pub attempt: u32,
}

/// Whether `attempt` is still the task's current one: leased, by this
/// worker, at this attempt. A result of any other attempt is a duplicate or
/// comes too late (its lease expired, the task was leased again) and is
/// dropped: results count once per (task, attempt).
pub fn is_current(state: &State, attempt: Attempt<'_>) -> bool {
    state.queue.get(attempt.task).is_some_and(|t| {
        t.status == TaskStatus::Leased
            && t.attempts == attempt.attempt
            && t.worker.as_ref() == Some(attempt.worker)
    })
}

/// What an attempt answered, as the ledger can record it (the shell cuts
/// an answer past the ledger's limits into a failure first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It succeeded with this output, earning this reward (0 to 10,000 bp)
    /// for the learning policy.
    Done { output: Params, reward_bp: i32 },
    /// It failed (or timed out) with this error.
    Failed { error: String, timed_out: bool },
}

/// What the end of an attempt led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Acked,
    /// Failed, to be retried at this time.
    RetryAt(Timestamp),
    /// Out of attempts: dead-lettered, with the dependants it cancelled.
    DeadLettered {
        cancelled: usize,
    },
}

/// The events that record the end of `attempt` at `now`, given what it
/// answered and what it cost, and what that led to; `None` when the attempt
/// is no longer current (nothing is recorded).
///
/// Settlement comes first (an overrun before the costs that cause it, the
/// costs, the release of what stays reserved, a status change), then the
/// learning outcome and profile adjustment (a failure teaches reward 0),
/// then the ACK, or the NACK with the retry time drawn from the seed, or
/// the dead letter and the cancellation of its dependants. Costs the ledger
/// cannot take (past 64-bit micros) make a success a failure, and are not
/// recorded for a failure, which says so: the events always pass the
/// ledger's validation on `state`.
pub fn end_attempt(
    state: &State,
    attempt: Attempt<'_>,
    answer: Answer,
    costs: &[(Category, Micros)],
    now: Timestamp,
    rules: &Rules,
) -> Option<(Vec<Event>, Ended)> {
    if !is_current(state, attempt) {
        return None;
    }
    let refused = cost_refusal(state, attempt.task, costs);
    let (error, timed_out) = match answer {
        Answer::Done { output, reward_bp } if refused.is_none() => {
            let mut settler = Settler::under(rules.policy, state);
            let mut events = settler.settle(attempt.task, costs);
            events.extend(Learner::under(rules.policy, &state.learning).after_attempt(
                attempt.task,
                reward_bp,
                total(costs),
                |tenant| settler.utilisation_bp(tenant),
            ));
            events.push(Event::TaskAcked {
                task: attempt.task.clone(),
                worker: attempt.worker.clone(),
                output,
            });
            return Some((events, Ended::Acked));
        }
        Answer::Done { .. } => ("the result was refused".to_owned(), false),
        Answer::Failed { error, timed_out } => (error, timed_out),
    };
    // Costs the ledger cannot take are not recorded, saying so: the failure is.
    let (error, costs) = match refused {
        Some(rejection) => (
            format!("{error} (its costs were not recorded: {rejection})"),
            &[][..],
        ),
        None => (error, costs),
    };
    let error = bounded_error(error);
    let mut settler = Settler::under(rules.policy, state);
    let mut events = settler.settle(attempt.task, costs);
    // A failed attempt teaches the policy too: reward 0.
    events.extend(Learner::under(rules.policy, &state.learning).after_attempt(
        attempt.task,
        0,
        total(costs),
        |tenant| settler.utilisation_bp(tenant),
    ));
    let max_attempts = state.queue.get(attempt.task).map_or(1, |t| t.max_attempts);
    if attempt.attempt < max_attempts {
        let at = retry_at(attempt, now, rules);
        events.push(Event::TaskNacked {
            task: attempt.task.clone(),
            worker: attempt.worker.clone(),
            error,
            retry_at: Some(at),
            timed_out,
        });
        return Some((events, Ended::RetryAt(at)));
    }
    let reason = format!(
        "{} of {max_attempts} attempts failed, last: {error}",
        attempt.attempt
    );
    events.push(Event::TaskNacked {
        task: attempt.task.clone(),
        worker: attempt.worker.clone(),
        error,
        retry_at: None,
        timed_out,
    });
    events.push(Event::TaskDeadLettered {
        task: attempt.task.clone(),
        reason,
    });
    // Dependants of the task as it is now (the NACK changes nothing about them).
    let doomed = dependants_to_cancel(state, attempt.task);
    let cancelled = doomed.len();
    for child in doomed {
        events.push(Event::TaskCancelled {
            task: child,
            reason: format!("parent `{}` was dead-lettered", attempt.task),
        });
    }
    Some((events, Ended::DeadLettered { cancelled }))
}

/// When a failed `attempt` at `now` is retried: the policy's backoff with
/// its jitter drawn from the seed, the task and the attempt.
pub fn retry_at(attempt: Attempt<'_>, now: Timestamp, rules: &Rules) -> Timestamp {
    let key = attempt.task.draw_key(attempt.run);
    let delay = rules.queue.retry_delay_micros(
        attempt.attempt,
        draw(rules.seed, "retry", key, attempt.attempt),
    );
    now.saturating_add_micros(delay)
}

/// Why the ledger cannot take `costs` as costs of `task`'s tenant, if it
/// cannot (an amount past 64-bit micros).
fn cost_refusal(
    state: &State,
    task: &TaskId,
    costs: &[(Category, Micros)],
) -> Option<super::Rejection> {
    let tenant = state
        .queue
        .get(task)
        .and_then(|t| state.tenants.get(&t.tenant))?;
    // What settlement posts: the positive amounts.
    let posted = costs.iter().copied().filter(|(_, amount)| amount.0 > 0);
    tenant.can_incur(posted).err()
}

/// What `costs` add up to (the positive amounts, saturating).
fn total(costs: &[(Category, Micros)]) -> Micros {
    Micros(
        costs
            .iter()
            .map(|c| c.1.0.max(0))
            .fold(0, i64::saturating_add),
    )
}

/// `error` cut to [`ERROR_BYTES_MAX`] bytes (on a character boundary),
/// saying so.
pub fn bounded_error(mut error: String) -> String {
    if error.len() <= ERROR_BYTES_MAX {
        return error;
    }
    let note = format!(" … (cut: {} bytes, more than ERROR_BYTES_MAX)", error.len());
    let mut cut = ERROR_BYTES_MAX - note.len();
    while !error.is_char_boundary(cut) {
        cut -= 1;
    }
    error.truncate(cut);
    error.push_str(&note);
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_on_a_character_boundary_saying_so() {
        assert_eq!(bounded_error("short".into()), "short");
        let exact = "x".repeat(ERROR_BYTES_MAX);
        assert_eq!(bounded_error(exact.clone()), exact);
        let cut = bounded_error("é".repeat(ERROR_BYTES_MAX));
        assert!(cut.len() <= ERROR_BYTES_MAX);
        assert!(cut.starts_with("éé"), "{cut}");
        assert!(cut.contains("ERROR_BYTES_MAX"), "{cut}");
    }
}
