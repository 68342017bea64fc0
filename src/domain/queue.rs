//! The queue projection: every task, its lifecycle, and the ready set.
//!
//! Lifecycle: `waiting` (a parent is not yet ACKed) → `pending` (ready, FIFO
//! per priority) → `leased` (a worker holds it until ACK, NACK or lease
//! expiry) → back to `pending` for a retry, or `done` / `dead_lettered` /
//! `cancelled`. Pure: no clock, no I/O; ordering uses the seq of the record
//! that made a task ready.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::cost::{Plan, degraded_ceiling};
use super::event::{Event, Params, Priority};
use super::ids::{PipelineId, RunId, TaskId, TenantId, WorkerId};
use super::journal::{Journaled, Kept, Undo};
use super::money::Micros;
use super::rejection::Rejection;
use super::time::Timestamp;

pub use super::task_status::TaskStatus;

/// One task as the ledger knows it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Encode, Decode)]
pub struct Task {
    pub run: RunId,
    pub tenant: TenantId,
    /// The pipeline instance; `None`: the task is a pipeline of its own.
    pub pipeline: Option<PipelineId>,
    pub priority: Priority,
    pub deps: Vec<TaskId>,
    /// Parents not yet ACKed.
    pub deps_open: u32,
    /// Tasks that list this one as a parent.
    pub dependants: Vec<TaskId>,
    pub status: TaskStatus,
    pub attempts: u32,
    pub max_attempts: u32,
    pub worker: Option<WorkerId>,
    pub lease_deadline: Option<Timestamp>,
    pub retry_at: Option<Timestamp>,
    /// Seq of the record that last made the task ready (FIFO key).
    pub ready_seq: u64,
    pub cost_ceiling_micros: Micros,
    /// The ceiling under the cost agent's standard degradation plan,
    /// derived once at submission (see `cost::degraded_ceiling`).
    pub degraded_ceiling_micros: Micros,
    pub reserved_micros: Micros,
    pub spent_micros: Micros,
    pub handler: String,
    pub params: Params,
    pub optional: bool,
    pub output: Params,
    pub last_error: String,
}

/// Counts of tasks by status.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Encode, Decode)]
pub struct QueueCounts {
    pub waiting: u64,
    pub pending: u64,
    pub leased: u64,
    pub done: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    /// NACKs and lease expiries that sent a task back for another attempt.
    pub retries: u64,
    pub skipped: u64,
}

impl QueueCounts {
    fn slot(&mut self, status: TaskStatus) -> &mut u64 {
        match status {
            TaskStatus::Waiting => &mut self.waiting,
            TaskStatus::Pending => &mut self.pending,
            TaskStatus::Leased => &mut self.leased,
            TaskStatus::Done => &mut self.done,
            TaskStatus::DeadLettered => &mut self.dead_lettered,
            TaskStatus::Cancelled => &mut self.cancelled,
            TaskStatus::Skipped => &mut self.skipped,
        }
    }

    pub fn total(&self) -> u64 {
        self.waiting
            + self.pending
            + self.leased
            + self.done
            + self.dead_lettered
            + self.cancelled
            + self.skipped
    }
}

/// A node's share of the remaining DAG, remembered between decisions (see
/// [`Queue::remaining`]).
#[derive(Clone, Debug, Default)]
struct Below {
    /// The ceilings (declared, degraded) of the node and of its region
    /// below it — the descendants reached through nodes of one parent
    /// only — that have not started.
    full: i64,
    degraded: i64,
    /// The nodes of several parents directly below the region (each is
    /// the top of a region of its own).
    joins: Vec<TaskId>,
}

/// Remembered shares and the work done computing them.
#[derive(Clone, Debug, Default)]
struct Memo {
    below: FxHashMap<TaskId, Below>,
    /// Nodes whose share was computed, over the queue's life.
    computed: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Queue {
    /// Boxed so the table holds 32-byte entries: growing it moves and
    /// faults in far less memory than inline 300-byte tasks would.
    tasks: Journaled<FxHashMap<TaskId, Box<Task>>>,
    /// What [`Queue::remaining`] computed, kept until a submission or a
    /// start changes it: a cache over `tasks`, outside the digests. A
    /// `RefCell` because the deciders read the queue through `&State`.
    memo: std::cell::RefCell<Memo>,
    /// Ready tasks per priority, keyed by `ready_seq` (FIFO); one record
    /// can make several tasks ready (an ACK releasing its dependants), kept
    /// in the order it released them.
    ready: [Journaled<BTreeMap<u64, Vec<TaskId>>>; 5],
    ready_len: Kept<[u64; 5]>,
    counts: Kept<QueueCounts>,
    /// The leased tasks, in id order: what lease expiry looks at, so that
    /// it costs the leases held, not every task ever submitted. An index
    /// over `tasks`, outside the digests.
    leased: Journaled<BTreeMap<TaskId, ()>>,
}

/// The memo of shares is a cache, not part of the value.
impl PartialEq for Queue {
    fn eq(&self, other: &Self) -> bool {
        self.tasks == other.tasks
            && self.ready == other.ready
            && *self.ready_len == *other.ready_len
            && *self.counts == *other.counts
            && self.leased == other.leased
    }
}

impl Undo for Queue {
    fn record(&mut self, on: bool) {
        self.tasks.record(on);
        for ready in &mut self.ready {
            ready.record(on);
        }
        self.ready_len.record(on);
        self.counts.record(on);
        self.leased.record(on);
    }

    fn mark(&mut self) {
        self.tasks.mark();
        for ready in &mut self.ready {
            ready.mark();
        }
        self.ready_len.mark();
        self.counts.mark();
        self.leased.mark();
    }

    /// Also forgets every remembered share: one may have been computed
    /// from a task as the undone events left it.
    fn undo(&mut self) {
        self.tasks.undo();
        for ready in &mut self.ready {
            ready.undo();
        }
        self.ready_len.undo();
        self.counts.undo();
        self.leased.undo();
        self.memo.get_mut().below.clear();
    }
}

impl Task {
    /// Whether the task has several parents (so it tops a region of the
    /// remaining DAG of its own).
    fn is_join(&self) -> bool {
        self.deps.len() > 1
    }

    /// The key of the pipeline instance the task belongs to.
    pub fn pipeline_key<'a>(&'a self, task: &'a TaskId) -> &'a str {
        self.pipeline
            .as_ref()
            .map_or(task.as_str(), PipelineId::as_str)
    }
}

impl Queue {
    pub fn get(&self, task: &TaskId) -> Option<&Task> {
        self.tasks.get(task).map(|t| &**t)
    }

    pub fn counts(&self) -> QueueCounts {
        *self.counts
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Ready tasks of one priority, oldest first.
    pub fn ready(&self, priority: Priority) -> impl Iterator<Item = &TaskId> {
        self.ready[priority.index()].values().flatten()
    }

    /// Ready tasks of one priority with the seq that made each ready, oldest first.
    pub fn ready_entries(&self, priority: Priority) -> impl Iterator<Item = (u64, &TaskId)> {
        self.ready[priority.index()]
            .iter()
            .flat_map(|(seq, ids)| ids.iter().map(move |id| (*seq, id)))
    }

    /// Number of ready tasks per priority, highest priority first.
    pub fn ready_by_priority(&self) -> [u64; 5] {
        *self.ready_len
    }

    fn make_ready(&mut self, priority: Priority, seq: u64, task: TaskId) {
        self.ready[priority.index()]
            .get_or_insert_with(&seq, Vec::new)
            .push(task);
        self.ready_len.get_mut()[priority.index()] += 1;
    }

    fn unready(&mut self, priority: Priority, seq: u64, task: &TaskId) {
        let set = &mut self.ready[priority.index()];
        if let Some(ids) = set.get_mut(&seq) {
            if let Some(i) = ids.iter().position(|id| id == task) {
                ids.remove(i);
                self.ready_len.get_mut()[priority.index()] -= 1;
            }
            if ids.is_empty() {
                set.remove(&seq);
            }
        }
    }

    /// The cost ceilings (declared, and under the standard degradation
    /// plan) of `task` and of everything downstream of it, counting the
    /// nodes that have not started (waiting or pending) once each: what
    /// the cost agent projects. `(0, 0)` for an unknown task.
    ///
    /// Linear over a run: a node's share (itself and the nodes below it
    /// reached through single-parent nodes, plus the joins where that
    /// region ends) is computed once and remembered until a node in it
    /// starts, ends without running or gets a new child; so a serial
    /// pipeline of n nodes costs O(n) over all its decisions, not O(n²).
    pub fn remaining(&self, task: &TaskId) -> (i64, i64) {
        let (mut full, mut degraded) = (0i64, 0i64);
        if !self.tasks.contains_key(task) {
            return (full, degraded);
        }
        let mut memo = self.memo.borrow_mut();
        let memo = &mut *memo;
        // The node's region, then each join below it once (a DAG with
        // diamonds reaches a join by several paths).
        self.compute_below(memo, task);
        let Some(b) = memo.below.get(task) else {
            return (full, degraded);
        };
        full = b.full;
        degraded = b.degraded;
        if b.joins.is_empty() {
            return (full, degraded);
        }
        let mut tops = b.joins.clone();
        let mut seen: rustc_hash::FxHashSet<TaskId> = tops.iter().cloned().collect();
        while let Some(top) = tops.pop() {
            self.compute_below(memo, &top);
            let Some(b) = memo.below.get(&top) else {
                continue;
            };
            full = full.saturating_add(b.full);
            degraded = degraded.saturating_add(b.degraded);
            for join in &b.joins {
                if seen.insert(join.clone()) {
                    tops.push(join.clone());
                }
            }
        }
        (full, degraded)
    }

    /// Nodes whose share of the remaining DAG was computed so far: the work
    /// of [`Queue::remaining`], for tests that it stays linear.
    pub fn remaining_work(&self) -> u64 {
        self.memo.borrow().computed
    }

    /// Computes and remembers the shares of `top` and of its region below
    /// it that are not remembered, children first, without recursion (a
    /// serial pipeline may be hundreds of thousands of nodes deep).
    fn compute_below(&self, memo: &mut Memo, top: &TaskId) {
        if memo.below.contains_key(top) {
            return;
        }
        // (node, whether its children were pushed)
        let mut stack: Vec<(&TaskId, bool)> = vec![(top, false)];
        while let Some((id, expanded)) = stack.pop() {
            let Some((key, t)) = self.tasks.get_key_value(id) else {
                continue;
            };
            let in_region = |c: &&TaskId| self.tasks.get(*c).is_some_and(|c| !c.is_join());
            if !expanded {
                stack.push((key, true));
                for child in t.dependants.iter().filter(in_region) {
                    if !memo.below.contains_key(child) {
                        stack.push((child, false));
                    }
                }
                continue;
            }
            if memo.below.contains_key(key) {
                continue;
            }
            let mut below = Below::default();
            if matches!(t.status, TaskStatus::Waiting | TaskStatus::Pending) {
                below.full = t.cost_ceiling_micros.0;
                below.degraded = t.degraded_ceiling_micros.0;
            }
            for child in &t.dependants {
                if in_region(&child) {
                    if let Some(c) = memo.below.get(child) {
                        below.full = below.full.saturating_add(c.full);
                        below.degraded = below.degraded.saturating_add(c.degraded);
                        below.joins.extend(c.joins.iter().cloned());
                    }
                } else if self.tasks.contains_key(child) {
                    below.joins.push(child.clone());
                }
            }
            below.joins.sort_unstable();
            below.joins.dedup();
            memo.computed += 1;
            memo.below.insert(key.clone(), below);
        }
    }

    /// Forgets the shares that counted `task` as it was: its own, and up
    /// through single parents those of the region above it (each of which
    /// was computed from the one below; a node whose share is forgotten
    /// has no remembered ancestor in its region).
    fn forget_below(&mut self, task: &TaskId) {
        let memo = self.memo.get_mut();
        let mut id = task;
        loop {
            if memo.below.remove(id).is_none() {
                return;
            }
            match self.tasks.get(id) {
                Some(t) if !t.is_join() && t.deps.len() == 1 => id = &t.deps[0],
                _ => return,
            }
        }
    }

    /// All tasks in id order (for views and digests).
    pub fn sorted(&self) -> Vec<(&TaskId, &Task)> {
        let mut all: Vec<(&TaskId, &Task)> = self.tasks.iter().map(|(id, t)| (id, &**t)).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }

    fn task(&self, task: &TaskId) -> Result<&Task, Rejection> {
        self.get(task)
            .ok_or_else(|| Rejection::UnknownTask(task.clone()))
    }

    fn leased_by(
        &self,
        task: &TaskId,
        worker: &WorkerId,
        action: &'static str,
    ) -> Result<&Task, Rejection> {
        let t = self.task(task)?;
        if t.status != TaskStatus::Leased {
            return Err(Rejection::InvalidTransition {
                task: task.clone(),
                action,
                status: t.status,
            });
        }
        match &t.worker {
            Some(holder) if holder != worker => Err(Rejection::WrongWorker {
                task: task.clone(),
                holder: holder.clone(),
                worker: worker.clone(),
            }),
            _ => Ok(t),
        }
    }

    /// Checks a queue event against the current state.
    pub fn validate(&self, event: &Event) -> Result<(), Rejection> {
        match event {
            Event::TaskSubmitted {
                task,
                deps,
                max_attempts,
                ..
            } => {
                if task.as_str().is_empty() {
                    return Err(Rejection::Empty { field: "task" });
                }
                if self.tasks.contains_key(task) {
                    return Err(Rejection::DuplicateTask(task.clone()));
                }
                let mut named = std::collections::HashSet::with_capacity(deps.len());
                for dep in deps {
                    if dep == task {
                        return Err(Rejection::SelfDependency(task.clone()));
                    }
                    if !named.insert(dep) {
                        return Err(Rejection::DuplicateDependency {
                            task: task.clone(),
                            dep: dep.clone(),
                        });
                    }
                    if !self.tasks.contains_key(dep) {
                        return Err(Rejection::UnknownDependency {
                            task: task.clone(),
                            dep: dep.clone(),
                        });
                    }
                }
                if *max_attempts == 0 {
                    return Err(Rejection::AttemptsExhausted {
                        task: task.clone(),
                        attempt: 1,
                        max_attempts: 0,
                    });
                }
                Ok(())
            }
            Event::TaskDequeued {
                task,
                worker,
                attempt,
                ..
            } => {
                if worker.as_str().is_empty() {
                    return Err(Rejection::Empty { field: "worker" });
                }
                let t = self.task(task)?;
                if t.status != TaskStatus::Pending {
                    return Err(Rejection::InvalidTransition {
                        task: task.clone(),
                        action: "dequeue",
                        status: t.status,
                    });
                }
                if *attempt != t.attempts + 1 {
                    return Err(Rejection::WrongAttempt {
                        task: task.clone(),
                        expected: t.attempts + 1,
                        got: *attempt,
                    });
                }
                if *attempt > t.max_attempts {
                    return Err(Rejection::AttemptsExhausted {
                        task: task.clone(),
                        attempt: *attempt,
                        max_attempts: t.max_attempts,
                    });
                }
                Ok(())
            }
            Event::TaskAcked { task, worker, .. } => self.leased_by(task, worker, "ack").map(drop),
            Event::TaskNacked { task, worker, .. } => {
                self.leased_by(task, worker, "nack").map(drop)
            }
            Event::LeaseExpired { task, worker } => self
                .leased_by(task, worker, "expire the lease of")
                .map(drop),
            Event::TaskDeadLettered { task, .. } => {
                let t = self.task(task)?;
                match t.status {
                    TaskStatus::Pending | TaskStatus::Leased => Ok(()),
                    status => Err(Rejection::InvalidTransition {
                        task: task.clone(),
                        action: "dead-letter",
                        status,
                    }),
                }
            }
            Event::TaskCancelled { task, .. } => {
                let t = self.task(task)?;
                match t.status {
                    TaskStatus::Waiting | TaskStatus::Pending => Ok(()),
                    status => Err(Rejection::InvalidTransition {
                        task: task.clone(),
                        action: "cancel",
                        status,
                    }),
                }
            }
            Event::TaskSkipped { task, .. } => {
                let t = self.task(task)?;
                match t.status {
                    TaskStatus::Pending if t.optional => Ok(()),
                    TaskStatus::Pending => Err(Rejection::NotOptional(task.clone())),
                    status => Err(Rejection::InvalidTransition {
                        task: task.clone(),
                        action: "skip",
                        status,
                    }),
                }
            }
            _ => Ok(()),
        }
    }

    fn set_status(&mut self, task: &TaskId, to: TaskStatus, seq: u64) {
        let Some(from) = self.get(task).map(|t| t.status) else {
            return;
        };
        let open = |s: TaskStatus| matches!(s, TaskStatus::Waiting | TaskStatus::Pending);
        if open(from) != open(to) {
            self.forget_below(task);
        }
        let Some(t) = self.tasks.get_mut(task) else {
            return;
        };
        let (priority, ready_seq) = (t.priority, t.ready_seq);
        t.status = to;
        if to == TaskStatus::Pending {
            t.ready_seq = seq;
        }
        if from == TaskStatus::Pending {
            self.unready(priority, ready_seq, task);
        }
        if to == TaskStatus::Pending {
            self.make_ready(priority, seq, task.clone());
        }
        *self.counts.get_mut().slot(from) -= 1;
        *self.counts.get_mut().slot(to) += 1;
        if from == TaskStatus::Leased && to != TaskStatus::Leased {
            self.leased.remove(task);
        } else if to == TaskStatus::Leased && from != TaskStatus::Leased {
            self.leased.insert(task.clone(), ());
        }
    }

    /// The leased tasks, in id order.
    pub fn leased(&self) -> impl Iterator<Item = (&TaskId, &Task)> {
        (self.leased.keys()).filter_map(|id| self.get(id).map(|t| (id, t)))
    }

    /// Applies a queue event (assumed valid), taking its strings. Returns
    /// the task when it reached a terminal status, so that owners of
    /// per-pipeline counters can follow.
    pub fn evolve(&mut self, seq: u64, event: Event) -> Option<TaskId> {
        match event {
            Event::TaskSubmitted {
                run,
                task,
                tenant,
                priority,
                deps,
                pipeline,
                cost_ceiling_micros,
                handler,
                params,
                max_attempts,
                optional,
            } => {
                let mut deps_open = 0;
                // Each parent's share gets a node below it.
                for dep in &deps {
                    self.forget_below(dep);
                }
                for dep in &deps {
                    if let Some(parent) = self.tasks.get_mut(dep) {
                        parent.dependants.push(task.clone());
                        if !matches!(parent.status, TaskStatus::Done | TaskStatus::Skipped) {
                            deps_open += 1;
                        }
                    }
                }
                let status = if deps_open == 0 {
                    TaskStatus::Pending
                } else {
                    TaskStatus::Waiting
                };
                *self.counts.get_mut().slot(status) += 1;
                if status == TaskStatus::Pending {
                    self.make_ready(priority, seq, task.clone());
                }
                let mut entry = Box::new(Task {
                    run,
                    tenant,
                    pipeline,
                    priority,
                    deps,
                    deps_open,
                    dependants: Vec::new(),
                    status,
                    attempts: 0,
                    max_attempts,
                    worker: None,
                    lease_deadline: None,
                    retry_at: None,
                    ready_seq: seq,
                    cost_ceiling_micros,
                    reserved_micros: Micros::ZERO,
                    spent_micros: Micros::ZERO,
                    handler,
                    params,
                    optional,
                    output: Params::null(),
                    last_error: String::new(),
                    degraded_ceiling_micros: Micros::ZERO,
                });
                entry.degraded_ceiling_micros = degraded_ceiling(
                    &entry.handler,
                    &entry.params,
                    entry.optional,
                    entry.cost_ceiling_micros,
                    &Plan::STANDARD,
                );
                self.tasks.insert(task, entry);
                None
            }
            Event::TaskDequeued {
                task,
                worker,
                attempt,
                lease_deadline,
            } => {
                self.set_status(&task, TaskStatus::Leased, seq);
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.attempts = attempt;
                    t.worker = Some(worker);
                    t.lease_deadline = lease_deadline;
                    t.retry_at = None;
                }
                None
            }
            Event::TaskAcked { task, output, .. } => {
                self.set_status(&task, TaskStatus::Done, seq);
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.worker = None;
                    t.lease_deadline = None;
                    t.output = output;
                }
                self.release_dependants(&task, seq);
                Some(task)
            }
            Event::TaskSkipped { task, reason } => {
                self.set_status(&task, TaskStatus::Skipped, seq);
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.last_error = reason;
                }
                self.release_dependants(&task, seq);
                Some(task)
            }
            Event::TaskNacked {
                task,
                error,
                retry_at,
                ..
            } => {
                self.set_status(&task, TaskStatus::Pending, seq);
                self.counts.get_mut().retries += 1;
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.worker = None;
                    t.lease_deadline = None;
                    t.retry_at = retry_at;
                    t.last_error = error;
                }
                None
            }
            Event::LeaseExpired { task, .. } => {
                self.set_status(&task, TaskStatus::Pending, seq);
                self.counts.get_mut().retries += 1;
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.worker = None;
                    t.lease_deadline = None;
                    t.last_error = "lease expired".to_owned();
                }
                None
            }
            Event::TaskDeadLettered { task, reason } => {
                self.set_status(&task, TaskStatus::DeadLettered, seq);
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.worker = None;
                    t.lease_deadline = None;
                    if !reason.is_empty() {
                        t.last_error = reason;
                    }
                }
                Some(task)
            }
            Event::TaskCancelled { task, .. } => {
                self.set_status(&task, TaskStatus::Cancelled, seq);
                Some(task)
            }
            _ => None,
        }
    }

    /// A parent ended well (ACKed or skipped): its waiting children whose
    /// parents all ended become ready.
    fn release_dependants(&mut self, task: &TaskId, seq: u64) {
        let dependants = match self.tasks.get_mut(task) {
            Some(t) => std::mem::take(&mut t.dependants),
            None => return,
        };
        for child in &dependants {
            let ready = match self.tasks.get_mut(child) {
                Some(c) => {
                    c.deps_open = c.deps_open.saturating_sub(1);
                    c.deps_open == 0 && c.status == TaskStatus::Waiting
                }
                None => false,
            };
            if ready {
                self.set_status(child, TaskStatus::Pending, seq);
            }
        }
        if let Some(t) = self.tasks.get_mut(task) {
            t.dependants = dependants;
        }
    }

    pub(crate) fn task_mut(&mut self, task: &TaskId) -> Option<&mut Task> {
        self.tasks.get_mut(task).map(|t| &mut **t)
    }
}
