//! `RedisQueue`: the [`TaskQueue`] on Redis Streams, with the coordinator's
//! side and the worker's side in one process.
//!
//! The ledger stays the truth and the coordinator's deciders stay where
//! they are: a dequeue first *dispatches* — the ready tasks of the run, in
//! the ledger scheduler's order, go through the gate (cost agent, learning
//! choice, admission with its reservation) in one ledger step, and their
//! envelopes go onto the priority streams — then *claims* from Redis as any
//! worker would, and records each claimed attempt as `task_dequeued` in a
//! second step (the lease is the worker's, known only when it claims). An
//! ACK or NACK is reported through the results stream and then *applied*:
//! the coordinator reads the results, decides settlement, learning, retry
//! or dead letter exactly as the in-memory queue does, deduplicated by
//! (task, attempt), and acknowledges them in Redis only once they are in
//! the ledger. A redelivery (a lease that ran out in Redis, its worker dead
//! or stuck) is the next attempt: the ledger records the lost lease, then
//! the new one.

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::{
    Claimed, Outcome, Receipt, RedisError, RedisStreams, ResultEntry, TaskEnvelope, TaskResult,
};
use crate::domain::command::{
    Command, Heard, Outcome as CommandOutcome, Progress, Reported, Ticket,
};
use crate::domain::decide::{Answer, Rules};
use crate::domain::limits::check_id;
use crate::domain::queue::QueueCounts;
use crate::domain::scheduler::{Lost, QueuePolicy};
use crate::domain::{Category, Event, Micros, RunId, TaskId, WorkerId};
use crate::log::Ledger;
use crate::runtime::queue::{
    Done, Lease, NackOutcome, QueueError, Report, TaskQueue, nack_outcome, success,
};

/// The coordinator's consumer name on the results stream.
const COORDINATOR: &str = "coordinator";
/// Results applied per ledger step at most.
const RESULTS_PER_STEP: usize = 1_024;

#[derive(Clone)]
pub struct RedisQueue {
    ledger: Ledger,
    streams: RedisStreams,
    policy: QueuePolicy,
    seed: u64,
    poll: Duration,
    /// Tasks dispatched and not yet started, with when: an envelope whose
    /// claimer died before announcing it, and whose redelivery was
    /// refused, is dispatched again after twice the lease.
    dispatched: Arc<Mutex<FxHashMap<TaskId, std::time::Instant>>>,
    /// The ledger's attempt for each (task, claim attempt) started.
    claims: Arc<Mutex<FxHashMap<(TaskId, u32), u32>>>,
    /// Claimed entries by (task, attempt), to report on.
    receipts: Arc<Mutex<FxHashMap<(TaskId, u32), Receipt>>>,
    /// Envelopes admitted in the ledger and not yet on the streams (Redis
    /// was away): sent first by the next dispatch, never admitted twice.
    unsent: Arc<tokio::sync::Mutex<Vec<TaskEnvelope>>>,
    /// One dispatch at a time: each passes over what the last handed out.
    dispatching: Arc<tokio::sync::Mutex<()>>,
    /// One reader of the results at a time: a worker's announcement and
    /// its result must be recorded in the order they were reported.
    applying: Arc<tokio::sync::Mutex<()>>,
    /// Whether results may have been read and not acknowledged (at start,
    /// after a failure or a cut-short read): then the next read takes the
    /// pending ones first.
    unacknowledged: Arc<AtomicBool>,
    /// Signalled when results are recorded: room for more dispatches.
    recorded: Arc<tokio::sync::Notify>,
    /// The run's attempt timeout, sent with every envelope (ms; 0: none).
    timeout_ms: u64,
}

impl From<RedisError> for QueueError {
    fn from(error: RedisError) -> Self {
        QueueError::Transport(crate::runtime::queue::TransportError {
            permanent: error.is_permanent(),
            message: error.to_string(),
        })
    }
}

impl RedisQueue {
    /// A queue over `streams` (its consumer groups are created if needed).
    pub async fn new(
        ledger: Ledger,
        streams: RedisStreams,
        policy: QueuePolicy,
        seed: u64,
    ) -> Result<Self, QueueError> {
        streams.ensure_groups().await?;
        Ok(RedisQueue {
            ledger,
            streams,
            policy,
            seed,
            poll: Duration::from_millis(2),
            dispatched: Arc::default(),
            claims: Arc::default(),
            receipts: Arc::default(),
            unsent: Arc::default(),
            dispatching: Arc::default(),
            applying: Arc::default(),
            unacknowledged: Arc::new(AtomicBool::new(true)),
            recorded: Arc::default(),
            timeout_ms: 0,
        })
    }

    /// Sends `timeout` (the run's `worker_timeout_sec`) with every
    /// envelope, for the workers to run attempts under.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// After a coordinator restart: the run's tasks the last coordinator
    /// admitted and no worker has started yet are taken as dispatched (their
    /// envelopes are on the streams, or were lost with the coordinator:
    /// then they are sent again after twice the lease, never admitted again).
    pub async fn resume(&self, run: &RunId) -> Result<(), QueueError> {
        let admitted = self.ledger.admitted_tasks_async(run).await?;
        let now = std::time::Instant::now();
        let mut dispatched = lock(&self.dispatched);
        for task in admitted {
            dispatched.insert(task, now);
        }
        Ok(())
    }

    /// How long the ledger gives a lease, in micros: twice the transport's,
    /// so that a silent worker's task is normally taken over in Redis
    /// (recorded when the next worker starts it) and the ledger's own
    /// expiry only returns tasks no live worker reclaims.
    fn ledger_lease(&self) -> i64 {
        i64::try_from(self.streams.config().lease.as_micros())
            .unwrap_or(i64::MAX)
            .saturating_mul(2)
    }

    /// One round of the coordinator: keeps up to `max_in_flight` tasks of
    /// `run` dispatched or leased, then records what workers reported.
    pub async fn coordinate(
        &self,
        run: &RunId,
        max_in_flight: u32,
        lease: Duration,
    ) -> Result<(), QueueError> {
        self.fill(run, max_in_flight, 1, lease).await?;
        self.apply_results().await?;
        Ok(())
    }

    /// Keeps up to `max_in_flight` tasks of `run` dispatched or leased,
    /// dispatching more through the gate when there is room for at least
    /// `min_room` (a larger batch costs the gate less per task).
    pub async fn fill(
        &self,
        run: &RunId,
        max_in_flight: u32,
        min_room: u32,
        lease: Duration,
    ) -> Result<(), QueueError> {
        let leased = (self.ledger.run_progress_async(run).await?).map_or(0, |p| p.running);
        let dispatched = {
            let mut dispatched = lock(&self.dispatched);
            let stale = self.streams.config().lease * 2;
            dispatched.retain(|_, at| at.elapsed() < stale);
            dispatched.len()
        };
        let in_flight = dispatched.saturating_add(leased as usize);
        let room = (max_in_flight as usize).saturating_sub(in_flight);
        if room > 0 && room >= min_room as usize {
            self.dispatch(run, room, lease).await?;
        }
        Ok(())
    }

    /// Puts up to `max` ready tasks of `run` through the gate in one
    /// ledger step ([`Command::Admit`]) and their envelopes onto the
    /// streams.
    async fn dispatch(&self, run: &RunId, max: usize, lease: Duration) -> Result<(), QueueError> {
        // One dispatch at a time: the tasks handed out by one are passed
        // over by the next, never sent twice.
        let _one = self.dispatching.lock().await;
        // An envelope may not hold its entry longer than the transport's lease.
        let lease = lease.min(self.streams.config().lease);
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let skip = lock(&self.dispatched).keys().cloned().collect();
        let admit = Command::Admit {
            run: run.clone(),
            max,
            skip,
        };
        let tickets = match self.step(admit).await? {
            CommandOutcome::Admitted(tickets) => tickets,
            other => unreachable!("an admission answered {other:?}"),
        };
        let envelopes = {
            let mut dispatched = lock(&self.dispatched);
            let now = std::time::Instant::now();
            (tickets.into_iter())
                .map(|ticket| {
                    dispatched.insert(ticket.task.clone(), now);
                    self.envelope(ticket, lease_ms)
                })
                .collect::<Vec<_>>()
        };
        let mut unsent = self.unsent.lock().await;
        unsent.extend(envelopes);
        if !unsent.is_empty() {
            // Sent again after a failure, an envelope may land twice: the
            // second claim of one attempt is stale and dropped.
            self.streams.dispatch_many(&unsent).await?;
            unsent.clear();
        }
        Ok(())
    }

    /// The envelope that carries `ticket` to the workers.
    fn envelope(&self, ticket: Ticket, lease_ms: u64) -> TaskEnvelope {
        TaskEnvelope {
            task: ticket.task,
            attempt: ticket.attempt,
            run: ticket.run,
            tenant: ticket.tenant,
            priority: ticket.priority,
            handler: ticket.handler,
            params: ticket.params,
            inputs: ticket.inputs,
            lease_ms,
            seed: self.seed,
            timeout_ms: self.timeout_ms,
        }
    }

    /// Makes the decision `command` names in one ledger step.
    async fn step(&self, command: Command) -> Result<CommandOutcome, QueueError> {
        let rules = Rules::new(self.policy, self.seed);
        let (_, outcome) = self.ledger.command(rules, command).await?;
        Ok(outcome)
    }

    /// Records the claimed attempts as leases of `worker` in one ledger
    /// step ([`Command::Claim`]); a claim the ledger no longer wants (a
    /// stale redelivery) is reported back so Redis forgets it.
    async fn start(
        &self,
        worker: &WorkerId,
        claimed: Vec<Claimed>,
    ) -> Result<Vec<Lease>, QueueError> {
        let claim = Command::Claim {
            worker: worker.clone(),
            claims: (claimed.iter())
                .map(|c| (c.envelope.task.clone(), c.attempt()))
                .collect(),
            lease_micros: self.ledger_lease(),
        };
        let answers = match self.step(claim).await? {
            CommandOutcome::Claimed(answers) => answers,
            other => unreachable!("a claim answered {other:?}"),
        };
        let mut leases = Vec::new();
        let mut stale = Vec::new();
        {
            let mut dispatched = lock(&self.dispatched);
            for (claim, answer) in claimed.into_iter().zip(answers) {
                let Some((attempt, deadline)) = answer else {
                    stale.push(claim);
                    continue;
                };
                dispatched.remove(&claim.envelope.task);
                let e = claim.envelope;
                let lease = Lease {
                    task: e.task,
                    run: e.run,
                    tenant: e.tenant,
                    worker: worker.clone(),
                    attempt,
                    deadline,
                    handler: e.handler,
                    params: e.params,
                    inputs: e.inputs,
                };
                leases.push((lease, claim.receipt));
            }
        }
        if !stale.is_empty() {
            let reports: Vec<(Receipt, TaskResult)> = stale
                .iter()
                .map(|c| {
                    let outcome = Outcome::Nack {
                        error: "stale redelivery".to_owned(),
                        timed_out: false,
                        costs: Vec::new(),
                    };
                    (
                        c.receipt.clone(),
                        c.result(&self_worker(&c.envelope), outcome),
                    )
                })
                .collect();
            self.streams.report_many(&reports).await?;
        }
        let mut receipts = lock(&self.receipts);
        Ok(leases
            .into_iter()
            .map(|(lease, receipt)| {
                receipts.insert((lease.task.clone(), lease.attempt), receipt);
                lease
            })
            .collect())
    }

    /// Reports results of this process's leases through Redis.
    async fn report(&self, results: Vec<(Lease, Outcome)>) -> Result<(), QueueError> {
        let reports: Vec<(Receipt, TaskResult)> = {
            let mut receipts = lock(&self.receipts);
            results
                .into_iter()
                .filter_map(|(lease, outcome)| {
                    let receipt = receipts.remove(&(lease.task.clone(), lease.attempt))?;
                    let result = TaskResult {
                        task: lease.task,
                        attempt: lease.attempt,
                        run: lease.run,
                        tenant: lease.tenant,
                        worker: lease.worker,
                        outcome,
                        // Its start is in the ledger already (the claim).
                        announces_start: false,
                    };
                    Some((receipt, result))
                })
                .collect()
        };
        if !reports.is_empty() {
            if let Err(e) = self.streams.report_many(&reports).await {
                // Not sent: keep the receipts, so the report can be retried.
                let mut receipts = lock(&self.receipts);
                for (receipt, result) in reports {
                    receipts.insert((result.task, result.attempt), receipt);
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The coordinator's side: reads the reported results and records
    /// them, each on the state the ones before it left, deduplicated by
    /// (task, attempt); acknowledges them in Redis once appended. Returns
    /// what each NACK led to.
    pub async fn apply_results(&self) -> Result<FxHashMap<(TaskId, u32), NackOutcome>, QueueError> {
        self.apply_results_within(Duration::ZERO).await
    }

    /// [`RedisQueue::apply_results`], first waiting up to `wait` for a
    /// result when none is there (a blocking read: it wakes as soon as one
    /// is reported).
    pub async fn apply_results_within(
        &self,
        wait: Duration,
    ) -> Result<FxHashMap<(TaskId, u32), NackOutcome>, QueueError> {
        let _one_reader = self.applying.lock().await;
        let mut outcomes = FxHashMap::default();
        let mut wait = wait;
        // Read while the batch before was being acknowledged.
        let mut next: Option<Vec<ResultEntry>> = None;
        loop {
            let entries = match next.take() {
                Some(entries) => entries,
                None => self.read_results(std::mem::take(&mut wait)).await?,
            };
            if entries.is_empty() {
                return Ok(outcomes);
            }
            let (ids, results): (Vec<String>, Vec<TaskResult>) = (entries.into_iter())
                .map(|e| (e.stream_id, e.result))
                .unzip();
            let decided = match self.record(&results).await {
                // The ledger refused one of them, which no result it can
                // be sent should do (a worker id it cannot take is dropped
                // first, an answer it would refuse is already a failed
                // attempt): record them one by one; a result that cannot be
                // recorded is dropped with a warning, never left to block
                // the results behind it.
                Err(QueueError::Ledger(crate::log::AppendError::Rejected { .. })) => {
                    let mut decided = Vec::new();
                    for result in &results {
                        match self.record(std::slice::from_ref(result)).await {
                            Ok(one) => decided.extend(one),
                            Err(QueueError::Ledger(crate::log::AppendError::Rejected {
                                rejection,
                                ..
                            })) => {
                                tracing::warn!(task = %result.task, %rejection, "result refused");
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    decided
                }
                other => other?,
            };
            outcomes.extend(decided);
            // Room for more: the dispatch loop may fill it.
            self.recorded.notify_one();
            // The acknowledgement and the next read in one round trip; the
            // read's entries stay unacknowledged until recorded in turn.
            let (acked, read) = tokio::join!(
                self.streams.ack_results(&ids),
                self.streams
                    .results(COORDINATOR, RESULTS_PER_STEP, Duration::ZERO)
            );
            acked?;
            let read = read?;
            if read.is_empty() {
                self.unacknowledged.store(false, AtomicOrdering::SeqCst);
            }
            next = Some(read);
        }
    }

    /// Results to record: first what was read before and not acknowledged
    /// (the acknowledgement failed, a read was cut short, or this
    /// coordinator restarted — applying a result twice records nothing the
    /// second time), else new ones, waiting up to `wait` for one.
    async fn read_results(&self, wait: Duration) -> Result<Vec<ResultEntry>, QueueError> {
        if self.unacknowledged.load(AtomicOrdering::SeqCst) {
            let pending = self
                .streams
                .pending_results(COORDINATOR, RESULTS_PER_STEP)
                .await?;
            if !pending.is_empty() {
                return Ok(pending);
            }
        }
        // Until the read answers, it may take entries this process never
        // sees (a read cut short): they are pending then.
        self.unacknowledged.store(true, AtomicOrdering::SeqCst);
        let read = self
            .streams
            .results(COORDINATOR, RESULTS_PER_STEP, wait)
            .await?;
        if read.is_empty() {
            self.unacknowledged.store(false, AtomicOrdering::SeqCst);
        }
        Ok(read)
    }

    /// Returns once results are recorded after the call (or were since
    /// the last call returned): room for more dispatches may have opened.
    pub async fn recorded(&self) {
        self.recorded.notified().await;
    }
}

impl RedisQueue {
    /// Records reported results in one ledger step ([`Command::Heard`]),
    /// each on the state the ones before it left, deduplicated by (task,
    /// attempt). The attempt bookkeeping changes only once the step is in
    /// the ledger.
    async fn record(
        &self,
        results: &[TaskResult],
    ) -> Result<Vec<((TaskId, u32), NackOutcome)>, QueueError> {
        // A worker id the ledger cannot take would refuse the whole step:
        // such a result is dropped here, with a warning, never sent.
        let results: Vec<&TaskResult> = (results.iter())
            .filter(|result| match check_id("worker", result.worker.as_str()) {
                Ok(()) => true,
                Err(rejection) => {
                    tracing::warn!(task = %result.task, %rejection, "result refused");
                    false
                }
            })
            .collect();
        // A report that announces its attempt's start stands for two: the
        // start, then the end.
        let reports = {
            let claims = lock(&self.claims);
            let mut reports = Vec::with_capacity(results.len());
            for &result in &results {
                let report = |what| Reported {
                    task: result.task.clone(),
                    run: result.run.clone(),
                    worker: result.worker.clone(),
                    claimed: result.attempt,
                    known: claims.get(&(result.task.clone(), result.attempt)).copied(),
                    what,
                };
                let ended = |answer, costs: &Vec<_>| Progress::Ended {
                    answer,
                    costs: costs.clone(),
                };
                match &result.outcome {
                    Outcome::Started => reports.push(report(Progress::Started)),
                    Outcome::Ack { output, costs } => {
                        if result.announces_start {
                            reports.push(report(Progress::Started));
                        }
                        let answer = success(result.attempt_of(), output.clone());
                        reports.push(report(ended(answer, costs)));
                    }
                    Outcome::Nack {
                        error,
                        timed_out,
                        costs,
                    } => {
                        if result.announces_start {
                            reports.push(report(Progress::Started));
                        }
                        let answer = Answer::Failed {
                            error: error.clone(),
                            timed_out: *timed_out,
                        };
                        reports.push(report(ended(answer, costs)));
                    }
                }
            }
            reports
        };
        let command = Command::Heard {
            reports,
            lease_micros: self.ledger_lease(),
        };
        let heard = match self.step(command).await? {
            CommandOutcome::Heard(heard) => heard,
            other => unreachable!("results answered {other:?}"),
        };
        let mut decided = Vec::new();
        let mut claims = lock(&self.claims);
        let mut dispatched = lock(&self.dispatched);
        let mut heard = heard.into_iter();
        for result in results {
            let key = (result.task.clone(), result.attempt);
            let failed = matches!(result.outcome, Outcome::Nack { .. });
            let starts = matches!(result.outcome, Outcome::Started) || result.announces_start;
            let ends = !matches!(result.outcome, Outcome::Started);
            if starts {
                if let Some(Heard::Started(Some(attempt))) = heard.next() {
                    dispatched.remove(&key.0);
                    claims.insert(key.clone(), attempt);
                }
            }
            if ends {
                if let Some(Heard::Ended(ended)) = heard.next() {
                    claims.remove(&key);
                    match ended.and_then(nack_outcome) {
                        Some(outcome) => decided.push((key, outcome)),
                        None if failed => decided.push((key, NackOutcome::Stale)),
                        None => {}
                    }
                }
            }
        }
        Ok(decided)
    }
}

/// A redelivery reported back by the coordinator is attributed to the
/// worker named in no lease: its result is dropped as stale.
fn self_worker(envelope: &TaskEnvelope) -> WorkerId {
    WorkerId(format!("stale:{}", envelope.task))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TaskQueue for RedisQueue {
    async fn enqueue(&self, tasks: Vec<Event>) -> Result<(), QueueError> {
        self.ledger
            .append_async(tasks.into_iter().map(Into::into).collect())
            .await?;
        Ok(())
    }

    async fn dequeue_many(
        &self,
        run: &RunId,
        worker: &WorkerId,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            self.dispatch(run, max, lease).await?;
            let claimed = self
                .streams
                .claim(worker.as_str(), max.max(1), Duration::ZERO)
                .await?;
            let leases = if claimed.is_empty() {
                Vec::new()
            } else {
                self.start(worker, claimed).await?
            };
            if !leases.is_empty() || tokio::time::Instant::now() >= give_up {
                return Ok(leases);
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn ack_many(&self, done: Vec<Done>) -> Result<(), QueueError> {
        let results = done
            .into_iter()
            .map(|(lease, output, costs)| (lease, Outcome::Ack { output, costs }))
            .collect();
        self.report(results).await?;
        self.apply_results().await?;
        Ok(())
    }

    async fn settle_many(&self, reports: &[(Lease, Report)]) -> Result<(), QueueError> {
        let results = reports
            .iter()
            .map(|(lease, report)| (lease.clone(), report.clone().into()))
            .collect();
        self.report(results).await?;
        self.apply_results().await?;
        Ok(())
    }

    async fn nack(
        &self,
        lease: &Lease,
        error: String,
        timed_out: bool,
        costs: Vec<(Category, Micros)>,
    ) -> Result<NackOutcome, QueueError> {
        let outcome = Outcome::Nack {
            error,
            timed_out,
            costs,
        };
        self.report(vec![(lease.clone(), outcome)]).await?;
        let mut outcomes = self.apply_results().await?;
        Ok(outcomes
            .remove(&(lease.task.clone(), lease.attempt))
            .unwrap_or(NackOutcome::Stale))
    }

    async fn expire_leases(&self) -> Result<usize, QueueError> {
        // A returned task is sent again as admitted, on its reservation.
        crate::runtime::queue::expire_due(
            &self.ledger,
            Rules::new(self.policy, self.seed),
            Lost::Carry,
        )
        .await
    }

    async fn depth(&self) -> Result<QueueCounts, QueueError> {
        Ok(self.ledger.queue_counts_async().await?)
    }
}
