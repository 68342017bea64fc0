//! Scheduling decisions over the queue projection: which ready task runs
//! next (priority with aging), when a failed task may run again (exponential
//! backoff with seeded jitter), and which dependants a dead task cancels.
//!
//! Pure: the time and the seq come in as values, randomness is a seeded
//! draw derived from (seed, purpose, task, attempt) (see [`super::draw`]),
//! so a replay decides the same way. The thresholds it applies
//! ([`QueuePolicy`]) live in [`super::policy`].

use super::ids::TaskId;
use super::queue::TaskStatus;
use super::state::State;
use super::time::Timestamp;

pub use super::policy::QueuePolicy;

/// The ready task that should run next at `now`, `seq` being the last seq
/// of the ledger. Each candidate is ranked by its priority level in units of
/// `aging_records`, minus the records it has waited since it became ready:
/// a BATCH task waiting 4 × `aging_records` records outranks a HIGH task
/// that just arrived, so a flood of higher priorities never starves it.
/// Ties go to the higher priority, then the oldest. Tasks whose retry time
/// lies after `now` wait.
pub fn next_ready<'s>(
    state: &'s State,
    now: Timestamp,
    seq: u64,
    policy: &QueuePolicy,
) -> Option<&'s TaskId> {
    next_ready_many(state, now, seq, policy, 1, |_| true)
        .into_iter()
        .next()
}

/// Up to `max` ready tasks in the order [`next_ready`] would hand them out
/// one by one (optionally only those `keep` accepts).
pub fn next_ready_many<'s>(
    state: &'s State,
    now: Timestamp,
    seq: u64,
    policy: &QueuePolicy,
    max: usize,
    keep: impl Fn(&super::queue::Task) -> bool,
) -> Vec<&'s TaskId> {
    // Within one priority, older tasks rank better, so the best `max`
    // overall are among the first `max` eligible of each priority.
    let mut candidates: Vec<(i128, usize, u64, &TaskId)> = Vec::new();
    for priority in super::event::Priority::ALL {
        let eligible = state.queue.ready_entries(priority).filter(|(_, id)| {
            state
                .queue
                .get(id)
                .is_some_and(|t| t.retry_at.is_none_or(|at| at <= now) && keep(t))
        });
        for (ready_seq, id) in eligible.take(max) {
            let waited = i128::from(seq.saturating_sub(ready_seq));
            let rank = priority.index() as i128 * i128::from(policy.aging_records.max(1)) - waited;
            candidates.push((rank, priority.index(), ready_seq, id));
        }
    }
    candidates.sort_unstable_by_key(|c| (c.0, c.1, c.2));
    candidates.into_iter().take(max).map(|c| c.3).collect()
}

/// The earliest retry time among ready tasks (that `keep` accepts) still
/// waiting for it, if any.
pub fn next_retry_at(
    state: &State,
    now: Timestamp,
    keep: impl Fn(&super::queue::Task) -> bool,
) -> Option<Timestamp> {
    super::event::Priority::ALL
        .iter()
        .flat_map(|p| state.queue.ready_entries(*p))
        .filter_map(|(_, id)| {
            state
                .queue
                .get(id)
                .filter(|t| keep(t))
                .and_then(|t| t.retry_at)
        })
        .filter(|at| *at > now)
        .min()
}

/// Every task that can no longer run because `task` died: its waiting or
/// pending dependants, transitively, in a stable order.
pub fn dependants_to_cancel(state: &State, task: &TaskId) -> Vec<TaskId> {
    let mut out = Vec::new();
    let mut stack = vec![task.clone()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(current) = stack.pop() {
        let Some(t) = state.queue.get(&current) else {
            continue;
        };
        for child in &t.dependants {
            if !seen.insert(child.clone()) {
                continue;
            }
            if let Some(c) = state.queue.get(child) {
                if matches!(c.status, TaskStatus::Waiting | TaskStatus::Pending) {
                    out.push(child.clone());
                    stack.push(child.clone());
                }
            }
        }
    }
    out
}

/// What a lost lease does with the reservation of its attempt, which will
/// never settle (the worker or the process died, its result is dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// Return it: the task's next attempt passes the gate and reserves
    /// afresh (the in-memory queue, the simulated executor, `resume`).
    Release,
    /// Keep it for the task's next envelope, sent again as admitted
    /// without passing the gate again (the Redis queue). A task that is
    /// dead-lettered returns it all the same.
    Carry,
}

/// The events that return a lost lease: `lease_expired`, the release of
/// the lost attempt's reservation (unless [`Lost::Carry`]), and when that
/// was the task's last attempt, `task_dead_lettered` (after the release)
/// and the cancellation of its dependants. So an ended task holds no
/// reservation.
pub fn expire_lease(state: &State, task: &TaskId, lost: Lost) -> Vec<super::event::Event> {
    use super::event::Event;
    let Some(t) = state.queue.get(task) else {
        return Vec::new();
    };
    if t.status != TaskStatus::Leased {
        return Vec::new();
    }
    let mut events = vec![Event::LeaseExpired {
        task: task.clone(),
        worker: t.worker.clone().unwrap_or_default(),
    }];
    let last = t.attempts >= t.max_attempts;
    if t.reserved_micros > super::money::Micros::ZERO && (last || lost == Lost::Release) {
        events.push(Event::ReservationReleased {
            tenant: t.tenant.clone(),
            task: task.clone(),
            amount_micros: t.reserved_micros,
        });
    }
    if last {
        events.push(Event::TaskDeadLettered {
            task: task.clone(),
            reason: format!("lease lost on attempt {} of {}", t.attempts, t.max_attempts),
        });
        for child in dependants_to_cancel(state, task) {
            events.push(Event::TaskCancelled {
                task: child,
                reason: format!("parent `{task}` was dead-lettered"),
            });
        }
    }
    events
}
