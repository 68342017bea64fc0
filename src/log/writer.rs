//! The ledger: one writer thread that owns the sled store and the live
//! projection, validates appends, chains and frames them, and commits them
//! in groups.
//!
//! Appenders send `(events, reply)` over a channel. The writer takes every
//! request waiting (up to [`MAX_GROUP_EVENTS`]), validates each batch
//! against the live state (a batch is all-or-nothing), assigns seqs, hashes,
//! packs frames and writes them in one sled batch. Under
//! [`Durability::Always`] it hands the group's replies to a syncer thread,
//! which flushes sled and fsyncs its data file once for every group that
//! arrived meanwhile, then answers them: one fsync covers many groups (group
//! commit), and the writer prepares the next group while the disk syncs.
//! Under [`Durability::Batch`] the writer answers at once and the same
//! thread flushes at most once an interval: the writer never waits for the
//! disk.
//!
//! Reads are typed too: a [`Query`] is data, answered by the writer's own
//! code on the live state (`query::answer`) and, under `always`, handed
//! over by the syncer once every group before it is durable. No caller
//! code runs on the writer's thread.
//!
//! Every event is checked against `domain::limits` before it is chained
//! (ids, params, times, and its encoding against `EVENT_BYTES_MAX`), so no
//! record the decoder would refuse can ever be written.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::codec::encode_event_into;
use super::frame::FrameBuilder;
use super::query::{self, Answer, Query};
use super::record::record_hash;
use super::store::{
    Checkpoint, Head, IndexBuilder, IndexEntry, IndexKind, Store, StoreError, WalkError,
};
use crate::domain::budget::OverrunCover;
use crate::domain::command::{self, Command, Outcome};
use crate::domain::decide::{self as decider, Rules};
use crate::domain::journal::Undo;
use crate::domain::{Event, Micros, Rejection, State, Timestamp, limits};
use crate::log::replay;

/// Most events one commit group takes before writing.
pub const MAX_GROUP_EVENTS: usize = 64 * 1024;

/// Messages the writer's inbox holds: a sender past it waits (a blocking
/// call blocks, an async one yields) until the writer catches up. The
/// capacity is the backpressure on everything that appends.
pub const INBOX_MESSAGES: usize = 1024;

/// Records whose index entries the writer gathers before it writes them:
/// the indices are a projection that may lag the log (a reader walks the
/// log past their mark, and a writable open indexes what they miss), so a
/// group does not pay the index trees' and summaries' writes of its own.
const INDEX_WRITE_RECORDS: u64 = 32 * 1024;

/// Groups handed to the syncer and not yet flushed: past it the writer
/// waits for the disk.
const SYNC_GROUPS: usize = 64;

/// When an append counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After the flush and fsync that cover it (survives `kill -9` and power loss).
    Always,
    /// Flushed (with fsync) at most `interval` after it returns.
    Batch { interval: Duration },
    /// Flushed when the ledger closes.
    None,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(Durability::Always),
            "batch" => Ok(Durability::Batch {
                interval: Duration::from_millis(10),
            }),
            "none" => Ok(Durability::None),
            other => Err(format!(
                "unknown durability `{other}` (expected always, batch or none)"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LedgerOptions {
    pub durability: Durability,
    /// Record a checkpoint every this many records (0: only on close).
    pub checkpoint_every: u64,
    /// Create the ledger if the directory holds none.
    pub create: bool,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            durability: Durability::Always,
            checkpoint_every: 1_000_000,
            create: true,
        }
    }
}

/// An event to append, with the time to record (`None`: the writer stamps
/// the wall clock, never earlier than the previous record).
#[derive(Clone, Debug)]
pub struct Append {
    pub recorded_at: Option<Timestamp>,
    pub event: Event,
}

impl From<Event> for Append {
    fn from(event: Event) -> Self {
        Append {
            recorded_at: None,
            event,
        }
    }
}

/// What an append returns: the seqs it got and the head after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub first_seq: u64,
    pub last_seq: u64,
    pub head: blake3::Hash,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// Event `index` of the batch (of the command, in a step) is
    /// impossible; nothing of the batch (the command) was appended.
    #[error("event {index} of the batch: {rejection}")]
    Rejected { index: usize, rejection: Rejection },
    #[error("the ledger cannot write: {0}")]
    Storage(String),
    #[error("the ledger is closed")]
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the ledger is damaged at {0}")]
    Damaged(#[from] WalkError),
}

/// What one command of a step decided, or why it was rejected (its events
/// dropped, the step's other commands kept).
pub type Decided = Result<Outcome, AppendError>;

enum Msg {
    Append {
        entries: Vec<Append>,
        reply: Replier,
    },
    /// Make the decisions these commands name and append them in one step.
    Commands {
        commands: Vec<Command>,
        rules: Rules,
        reply: oneshot::Sender<Result<(Receipt, Vec<Decided>), AppendError>>,
    },
    /// A read of the live state ([`Ledger::query`]): answered with
    /// [`query::answer`] when handled, handed over at once, or under
    /// `always` once every group it saw is durable (nothing outside learns
    /// of a record before it is on disk).
    Query {
        query: Query,
        reply: oneshot::Sender<Answer>,
    },
    /// Hand the live state to one caller ([`Ledger::lend`]).
    Lend {
        reply: oneshot::Sender<Result<(State, Head), AppendError>>,
    },
    /// Records the borrower decided, validated and applied on the lent state.
    AppendLent { batch: LentBatch, reply: Replier },
    /// The lent state comes back: `None` when the borrower stopped without
    /// sending all it applied (the writer refolds).
    Return(Option<Box<State>>),
    Checkpoint {
        reply: oneshot::Sender<Result<Checkpoint, AppendError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), AppendError>>,
        /// Remove the ledger if this open created it and it is still empty.
        discard: bool,
    },
}

/// A handle on an open ledger. Cloning is cheap; the writer stops when
/// [`Ledger::close`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Ledger {
    tx: flume::Sender<Msg>,
    thread: std::sync::Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir` (see [`Store::open`]: never a
    /// directory that holds something else, never on a full or read-only
    /// disk), checks its whole chain and folds it into the live projection.
    pub fn open(dir: &Path, options: LedgerOptions) -> Result<Ledger, OpenError> {
        let store = Arc::new(Store::open(dir, options.create)?);
        let folded = replay::fold_and_index(&store)?;
        let (tx, rx) = flume::bounded(INBOX_MESSAGES);
        let io_error = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let pace = match options.durability {
            Durability::Always => Some(Duration::ZERO),
            Durability::Batch { interval } => Some(interval),
            Durability::None => None,
        };
        let syncer = match pace {
            Some(pace) => Some(Syncer::start(Arc::clone(&store), pace).map_err(io_error)?),
            None => None,
        };
        let mut state = folded.state;
        // A rejected command is undone, never refolded.
        state.record(true);
        let writer = Writer {
            syncer,
            store,
            state,
            head: folded.head,
            last_wall: Timestamp::EPOCH,
            options,
            since_checkpoint: 0,
            poisoned: None,
            lent: false,
            held: std::collections::VecDeque::new(),
            unindexed: (Vec::new(), 0),
        };
        let thread = std::thread::Builder::new()
            .name("runledger-writer".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(io_error)?;
        Ok(Ledger {
            tx,
            thread: std::sync::Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Sends `msg`, blocking while the inbox is full.
    fn send(&self, msg: Msg) -> Result<(), AppendError> {
        self.tx.send(msg).map_err(|_| AppendError::Closed)
    }

    /// Sends `msg`, yielding while the inbox is full.
    async fn send_async(&self, msg: Msg) -> Result<(), AppendError> {
        self.tx
            .send_async(msg)
            .await
            .map_err(|_| AppendError::Closed)
    }

    /// Appends a batch atomically; returns once it is as durable as the
    /// ledger's durability mode promises. Blocks: from async code use
    /// [`Ledger::append_async`].
    pub fn append(
        &self,
        entries: impl IntoIterator<Item = impl Into<Append>>,
    ) -> Result<Receipt, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Append {
            entries: entries.into_iter().map(Into::into).collect(),
            reply: replier(reply),
        })?;
        rx.blocking_recv().map_err(|_| AppendError::Closed)?
    }

    /// Sends a batch to append atomically without waiting for its answer,
    /// so that the caller can prepare the next while the writer commits
    /// this one; [`PendingAppend::wait`] gives the answer. Batches are
    /// appended in the order they are sent. A caller that must never see
    /// a later batch appended after an earlier one failed waits for each
    /// before it sends the next (one in flight).
    pub fn append_pipelined(&self, entries: Vec<Append>) -> Result<PendingAppend, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Append {
            entries,
            reply: replier(reply),
        })?;
        Ok(PendingAppend(rx))
    }

    pub async fn append_async(&self, entries: Vec<Append>) -> Result<Receipt, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.send_async(Msg::Append {
            entries,
            reply: replier(reply),
        })
        .await?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Makes the decisions `commands` name, in order, each on the state the
    /// ones before it left (after the budget periods due now turn), and
    /// appends their events in one step: what each decided, once the step
    /// is as durable as the ledger promises. Each command is all or
    /// nothing: a rejected event drops its command's events (undone on the
    /// live state) and the others stand. The step fails whole only when the
    /// ledger cannot write, or the period turns due before it are refused
    /// (the error's index is then the turns' event).
    pub async fn commands(
        &self,
        rules: Rules,
        commands: Vec<Command>,
    ) -> Result<(Receipt, Vec<Decided>), AppendError> {
        let (reply, rx) = oneshot::channel();
        self.send_async(Msg::Commands {
            commands,
            rules,
            reply,
        })
        .await?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// [`Ledger::commands`] of one command, whose rejection is the error.
    pub async fn command(
        &self,
        rules: Rules,
        command: Command,
    ) -> Result<(Receipt, Outcome), AppendError> {
        let (receipt, mut decided) = self.commands(rules, vec![command]).await?;
        let outcome = decided.pop().expect("a step answers each of its commands");
        Ok((receipt, outcome?))
    }

    /// Lends the live state to the caller, who decides, validates and
    /// applies events on it itself and sends them with [`Lent::send`]; the
    /// writer only chains and writes them. Meanwhile every other message is
    /// held, and handled once the state is back ([`Lent::give_back`], or the
    /// `Lent` dropped, after which the writer refolds): there is one live
    /// state, never a mirror of it.
    pub fn lend(&self) -> Result<Lent, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Lend { reply })?;
        let (state, _) = rx.blocking_recv().map_err(|_| AppendError::Closed)??;
        Ok(Lent {
            ledger: self.clone(),
            state,
            batch: LentBatch::default(),
            cover: OverrunCover::new(),
        })
    }

    /// Answers `query` on the live projection, after every append sent
    /// before (the typed reads in [`super::query`] ask through this).
    pub fn query(&self, query: Query) -> Result<Answer, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Query { query, reply })?;
        rx.blocking_recv().map_err(|_| AppendError::Closed)
    }

    /// [`Ledger::query`] for async code.
    pub async fn query_async(&self, query: Query) -> Result<Answer, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.send_async(Msg::Query { query, reply }).await?;
        rx.await.map_err(|_| AppendError::Closed)
    }

    /// Records a checkpoint of the current head and projection digest.
    pub fn checkpoint(&self) -> Result<Checkpoint, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Checkpoint { reply })?;
        rx.blocking_recv().map_err(|_| AppendError::Closed)?
    }

    /// Flushes, records a checkpoint and stops the writer.
    pub fn close(self) -> Result<(), AppendError> {
        self.stop(false)
    }

    /// Closes the ledger, and if this open created it and nothing was
    /// appended, removes it (the directory it made, or the files it put in
    /// an empty one): a command refused before its first append leaves no
    /// ledger behind.
    pub fn discard_if_new(self) -> Result<(), AppendError> {
        self.stop(true)
    }

    fn stop(self, discard: bool) -> Result<(), AppendError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Close { reply, discard })?;
        let result = rx.blocking_recv().map_err(|_| AppendError::Closed)?;
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
        result
    }
}

/// A record of the batch being accepted, before it joins the group.
struct Staged {
    recorded_at: Timestamp,
    hash: blake3::Hash,
    bytes: std::ops::Range<usize>,
    /// Index slots of the record's run and tenant.
    run: Option<u32>,
    tenant: Option<u32>,
}

/// A decision step in progress on the writer's live state: each pushed
/// event is validated and applied at once, so the next decision of the
/// step sees it.
struct Draft<'w> {
    writer: &'w mut Writer,
    group: &'w mut Group,
    now: Timestamp,
    pushed: usize,
    /// Where the present command began: its events are undone together.
    unit: Unit,
    /// A push of the present command was rejected: the rest of the
    /// command fails too, and its events are undone.
    failed: Option<(usize, Rejection)>,
    /// The command's overruns and the spend behind them.
    cover: OverrunCover,
}

/// Where a command began: the head, the events pushed, and the group's
/// staged records and bytes.
#[derive(Clone, Copy)]
struct Unit {
    head: Head,
    pushed: usize,
    staged: usize,
    scratch: usize,
}

impl Draft<'_> {
    /// The live state with every event pushed so far applied.
    pub fn state(&self) -> &State {
        &self.writer.state
    }

    /// Validates `event` on the current state and applies it. After a
    /// rejection every later push of the command fails too.
    pub fn push(&mut self, event: Event) -> Result<(), AppendError> {
        if let Some((index, rejection)) = &self.failed {
            return Err(AppendError::Rejected {
                index: *index,
                rejection: rejection.clone(),
            });
        }
        let entry = Append {
            recorded_at: Some(self.now),
            event,
        };
        // The event's place in its command.
        let index = self.pushed - self.unit.pushed;
        match self.writer.stage(self.group, entry, index, &mut self.cover) {
            Ok(()) => {
                self.pushed += 1;
                Ok(())
            }
            Err(rejection) => {
                self.failed = Some((index, rejection.clone()));
                Err(AppendError::Rejected { index, rejection })
            }
        }
    }

    /// A command begins: what it pushes is undone together.
    fn open_unit(&mut self) {
        self.writer.state.mark();
        self.unit = Unit {
            head: self.writer.head,
            pushed: self.pushed,
            staged: self.group.staged.len(),
            scratch: self.group.scratch.len(),
        };
        self.failed = None;
        self.cover = OverrunCover::new();
    }

    /// The command ended with `result`: kept if it and all it pushed
    /// stand (each overrun with the spend behind it), else undone.
    fn close_unit<T>(&mut self, result: Result<T, AppendError>) -> Result<T, AppendError> {
        let covered = std::mem::replace(&mut self.cover, OverrunCover::new()).check();
        // A push refused is the command's rejection, even if the decider
        // went on without it.
        let failed = self.failed.take().map_or(Ok(()), Err);
        let result = result.and_then(|value| match failed.and(covered) {
            Ok(()) => Ok(value),
            Err((index, rejection)) => Err(AppendError::Rejected { index, rejection }),
        });
        if result.is_err() {
            self.undo_unit();
        }
        result
    }

    /// Drops what the present command pushed: the live state returns to
    /// its mark, and the head and the group to where the command began.
    fn undo_unit(&mut self) {
        self.writer.state.undo();
        self.writer.head = self.unit.head;
        self.pushed = self.unit.pushed;
        self.group.staged.truncate(self.unit.staged);
        self.group.scratch.truncate(self.unit.scratch);
    }
}

/// Records decided on a lent state: their canonical bytes back to back,
/// each with its time and the run and tenant it is indexed under (each id
/// listed once per batch: a batch names few).
#[derive(Default)]
pub struct LentBatch {
    bytes: Vec<u8>,
    records: Vec<LentRecord>,
    ids: Vec<String>,
    slots: rustc_hash::FxHashMap<String, u32>,
}

impl LentBatch {
    /// An empty batch with room for one like `last`.
    fn like(last: &LentBatch) -> Self {
        LentBatch {
            bytes: Vec::with_capacity(last.bytes.len()),
            records: Vec::with_capacity(last.records.len()),
            ..LentBatch::default()
        }
    }

    /// The slot of `id` in this batch's list.
    fn slot(&mut self, id: &str) -> u32 {
        if let Some(&slot) = self.slots.get(id) {
            return slot;
        }
        let slot = self.ids.len() as u32;
        self.ids.push(id.to_owned());
        self.slots.insert(id.to_owned(), slot);
        slot
    }
}

struct LentRecord {
    recorded_at: Timestamp,
    end: usize,
    run: Option<u32>,
    tenant: Option<u32>,
}

/// An event [`Lent::record`] refused, and why.
#[derive(Debug, thiserror::Error)]
#[error("{event}: {rejection}")]
pub struct Refused {
    pub rejection: Rejection,
    pub event: Event,
}

/// The ledger's live state, lent to one caller by [`Ledger::lend`]. Each
/// event [`Lent::record`] takes gets the writer's own checks (the limits,
/// the encoding, validation, and per batch the overrun cover) before it is
/// applied; [`Lent::send`] hands the batch to the writer to chain.
pub struct Lent {
    ledger: Ledger,
    state: State,
    batch: LentBatch,
    cover: OverrunCover,
}

impl Lent {
    /// The live state, with every recorded event applied.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Events recorded and not yet sent.
    pub fn pending(&self) -> usize {
        self.batch.records.len()
    }

    /// Checks `event` as the writer checks an append, applies it and queues
    /// it, stamped `at`. A refused event changes nothing and comes back.
    pub fn record(&mut self, at: Timestamp, event: Event) -> Result<(), Box<Refused>> {
        let checked = limits::check_event(&event)
            .and_then(|()| limits::check_time("recorded_at", at))
            .and_then(|()| self.state.validate(&event));
        if let Err(rejection) = checked {
            return Err(Box::new(Refused { rejection, event }));
        }
        let from = self.batch.bytes.len();
        encode_event_into(&event, &mut self.batch.bytes);
        if let Err(rejection) = check_encoded(&self.batch.bytes[from..]) {
            self.batch.bytes.truncate(from);
            return Err(Box::new(Refused { rejection, event }));
        }
        let task_reserved = (event.task())
            .and_then(|t| self.state.queue.get(t))
            .map_or(Micros::ZERO, |t| t.reserved_micros);
        self.cover
            .note(self.batch.records.len(), &event, task_reserved);
        let (run, tenant) = self.state.scope(&event);
        let run = run.map(|r| self.batch.slot(r.as_str()));
        let tenant = tenant.map(|t| self.batch.slot(t.as_str()));
        let record = LentRecord {
            recorded_at: at,
            end: self.batch.bytes.len(),
            run,
            tenant,
        };
        self.batch.records.push(record);
        let seq = self.state.seq + 1;
        self.state.evolve(seq, at, event);
        Ok(())
    }

    /// Sends what was recorded since the last send, checked whole (an
    /// overrun has the spend behind it), without waiting for the writer.
    /// A refusal leaves the state ahead of the ledger: the borrower stops
    /// and drops the `Lent`.
    pub fn send(&mut self) -> Result<PendingAppend, AppendError> {
        let cover = std::mem::replace(&mut self.cover, OverrunCover::new());
        cover
            .check()
            .map_err(|(index, rejection)| AppendError::Rejected { index, rejection })?;
        let next = LentBatch::like(&self.batch);
        let batch = std::mem::replace(&mut self.batch, next);
        let (reply, rx) = oneshot::channel();
        self.ledger.send(Msg::AppendLent {
            batch,
            reply: replier(reply),
        })?;
        Ok(PendingAppend(rx))
    }

    /// Gives the state back to the writer (what dropping the `Lent` does).
    pub fn give_back(self) {}
}

impl Drop for Lent {
    /// The state goes back whole when everything recorded was sent: the
    /// writer takes it if its head is where the state is (every batch
    /// appended), else refolds from the log.
    fn drop(&mut self) {
        let whole = self.batch.records.is_empty();
        let state = whole.then(|| Box::new(std::mem::take(&mut self.state)));
        let _ = self.ledger.send(Msg::Return(state));
    }
}

/// The checks of an event's canonical bytes: the size limit, and for a
/// large event a decode back (the decoder reserves memory per listed id,
/// so size alone does not tell).
fn check_encoded(bytes: &[u8]) -> Result<(), Rejection> {
    limits::check_event_bytes(bytes.len())?;
    if bytes.len() < limits::DECODE_CHECK_BYTES_MIN {
        return Ok(());
    }
    crate::log::codec::decode_event(bytes)
        .map(drop)
        .map_err(|what| Rejection::Undecodable { what })
}

impl crate::domain::decide::Step for Draft<'_> {
    type Error = AppendError;
    fn state(&self) -> &State {
        Draft::state(self)
    }
    fn record(&mut self, event: Event) -> Result<(), AppendError> {
        self.push(event)
    }
}

struct Writer {
    store: Arc<Store>,
    state: State,
    head: Head,
    /// The latest wall-clock stamp this writer gave: stamps never go back.
    /// Explicit `recorded_at`s (virtual time, imports) do not move it, so a
    /// simulated run stamped in the future cannot freeze the clock.
    last_wall: Timestamp,
    options: LedgerOptions,
    since_checkpoint: u64,
    poisoned: Option<String>,
    syncer: Option<Syncer>,
    /// The state is lent ([`Ledger::lend`]): `state` is a placeholder.
    lent: bool,
    /// Messages that arrived while the state was lent, in order.
    held: std::collections::VecDeque<Msg>,
    /// Index entries of the records written since the indices' mark, and
    /// how many records (written every [`INDEX_WRITE_RECORDS`], at a
    /// checkpoint and on close).
    unindexed: (Vec<IndexEntry>, u64),
}

/// Answers one append once its fate is known.
pub(crate) type Replier = Box<dyn FnOnce(Result<Receipt, AppendError>) + Send>;

/// An append sent by [`Ledger::append_pipelined`], its answer not yet
/// awaited.
#[must_use = "an append's failure is only known by waiting for it"]
pub struct PendingAppend(oneshot::Receiver<Result<Receipt, AppendError>>);

impl PendingAppend {
    /// Blocks until the batch is as durable as the ledger's durability mode
    /// promises, or refused.
    pub fn wait(self) -> Result<Receipt, AppendError> {
        self.0.blocking_recv().map_err(|_| AppendError::Closed)?
    }
}

fn replier(tx: oneshot::Sender<Result<Receipt, AppendError>>) -> Replier {
    Box::new(move |result| {
        let _ = tx.send(result);
    })
}

type Reply = (Replier, Receipt);

/// What the syncer is handed, in the order the writer made it.
enum Durable {
    /// A group written to sled: its replies, answered once it is flushed
    /// (under `batch` the writer has answered them: the list is empty).
    Group(Vec<Reply>),
    /// A read made on a state that holds every group sent before it:
    /// delivered once they are flushed.
    Read(Box<Read>),
}

/// A read's answer, computed, and where it goes.
struct Read {
    answer: Answer,
    reply: oneshot::Sender<Answer>,
}

impl Read {
    /// Hands the answer over (a caller that stopped waiting loses it).
    fn deliver(self) {
        let _ = self.reply.send(self.answer);
    }
}

/// The thread that makes groups durable: under `always` it answers them
/// once flushed; under `batch` the writer has answered them and sends an
/// empty list, and the thread flushes at most once a `pace`.
struct Syncer {
    tx: mpsc::SyncSender<Durable>,
    thread: JoinHandle<()>,
    /// Set when a flush failed: the writer refuses further appends.
    failed: Arc<Mutex<Option<String>>>,
}

impl Syncer {
    fn start(store: Arc<Store>, pace: Duration) -> std::io::Result<Syncer> {
        let (tx, rx) = mpsc::sync_channel::<Durable>(SYNC_GROUPS);
        let failed = Arc::new(Mutex::new(None));
        let flag = Arc::clone(&failed);
        let thread = std::thread::Builder::new()
            .name("runledger-sync".to_owned())
            .spawn(move || {
                let mut last = Instant::now();
                while let Ok(first) = rx.recv() {
                    let mut items = vec![first];
                    items.extend(rx.try_iter());
                    // Only reads: every group sent before them was flushed
                    // by an earlier round.
                    let mut result = Ok(());
                    if items.iter().any(|i| matches!(i, Durable::Group(_))) {
                        std::thread::sleep(pace.saturating_sub(last.elapsed()));
                        items.extend(rx.try_iter());
                        // Every group here was written to sled before it was
                        // sent, so this flush covers all of them.
                        result = store.flush(true).map_err(|e| e.to_string());
                        last = Instant::now();
                    }
                    if let Err(why) = &result {
                        if let Ok(mut f) = flag.lock() {
                            *f = Some(why.clone());
                        }
                    }
                    for item in items {
                        match item {
                            Durable::Group(replies) => {
                                for (reply, receipt) in replies {
                                    let answer = result.clone().map(|()| receipt);
                                    reply(answer.map_err(AppendError::Storage));
                                }
                            }
                            Durable::Read(read) => read.deliver(),
                        }
                    }
                }
            })?;
        Ok(Syncer { tx, thread, failed })
    }

    /// Waits until every group sent so far is durable and answered.
    fn stop(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// The group being built: records, frames and replies.
struct Group {
    builder: FrameBuilder,
    frames: Vec<(u64, Vec<u8>)>,
    index: IndexBuilder,
    records: u64,
    replies: Vec<Reply>,
    staged: Vec<Staged>,
    scratch: Vec<u8>,
}

impl Group {
    fn new(head: Head) -> Self {
        Group {
            builder: FrameBuilder::new(head.seq + 1, head.hash),
            frames: Vec::new(),
            index: IndexBuilder::default(),
            records: 0,
            replies: Vec::new(),
            staged: Vec::new(),
            scratch: Vec::with_capacity(4096),
        }
    }
}

fn wall_clock() -> Timestamp {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    Timestamp(micros)
}

impl Writer {
    fn run(mut self, rx: flume::Receiver<Msg>) {
        loop {
            let held = if self.lent {
                None
            } else {
                self.held.pop_front()
            };
            let first = match held {
                Some(msg) => msg,
                None => match rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                },
            };
            let mut group = Group::new(self.head);
            let mut next = Some(first);
            let mut taken = 0usize;
            while let Some(msg) = next.take() {
                match msg {
                    // While the state is lent, only its borrower appends.
                    Msg::AppendLent { batch, reply } => {
                        taken += self.accept_lent(&mut group, batch, reply);
                    }
                    msg if self.lent && !matches!(msg, Msg::Return(_)) => {
                        self.held.push_back(msg);
                    }
                    Msg::Append { entries, reply } => {
                        taken += entries.len();
                        self.accept(&mut group, entries, reply);
                    }
                    Msg::Commands {
                        commands,
                        rules,
                        reply,
                    } => {
                        taken += self.commands(&mut group, commands, &rules, reply);
                    }
                    other => {
                        self.commit(&mut group);
                        if self.control(other) {
                            return;
                        }
                    }
                }
                if taken < MAX_GROUP_EVENTS {
                    next = match self.held.pop_front() {
                        Some(msg) if !self.lent => Some(msg),
                        Some(msg) => {
                            self.held.push_front(msg);
                            rx.try_recv().ok()
                        }
                        None => rx.try_recv().ok(),
                    };
                }
            }
            self.commit(&mut group);
        }
        let _ = self.finish();
    }

    /// Chains and stages the records a borrower of the state decided and
    /// checked ([`Lent::record`]); returns how many.
    fn accept_lent(&mut self, group: &mut Group, batch: LentBatch, reply: Replier) -> usize {
        if !self.begin(group) {
            self.refuse(reply);
            return 0;
        }
        let start = self.head;
        let count = batch.records.len();
        let ids = batch.ids;
        group.scratch = batch.bytes;
        let mut from = 0;
        for record in batch.records {
            let bytes = from..record.end;
            from = record.end;
            let seq = self.head.seq + 1;
            let hash = record_hash(
                seq,
                record.recorded_at,
                &self.head.hash,
                &group.scratch[bytes.clone()],
            );
            let id = |slot: u32| ids[slot as usize].as_str();
            let run = (record.run).map(|r| group.index.slot(IndexKind::Run, id(r)));
            let tenant = (record.tenant).map(|t| group.index.slot(IndexKind::Tenant, id(t)));
            group.staged.push(Staged {
                recorded_at: record.recorded_at,
                hash,
                bytes,
                run,
                tenant,
            });
            self.head = Head { seq, hash };
        }
        self.take_staged(group, start, count, reply);
        count
    }

    /// Handles a non-append message; returns true when the writer must stop.
    fn control(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Append { .. } | Msg::Commands { .. } | Msg::AppendLent { .. } => false,
            Msg::Lend { reply } => {
                let lent = match &self.poisoned {
                    Some(why) => Err(AppendError::Storage(why.clone())),
                    None => {
                        self.lent = true;
                        // The borrower checks each event before it applies
                        // it: nothing of it is ever undone.
                        self.state.record(false);
                        Ok((std::mem::take(&mut self.state), self.head))
                    }
                };
                let _ = reply.send(lent);
                false
            }
            Msg::Return(state) => {
                self.lent = false;
                match state {
                    Some(state) if state.seq == self.head.seq => {
                        self.state = *state;
                        self.state.record(true);
                    }
                    // The borrower stopped midway, or a batch of it was
                    // refused: the state is what the log says.
                    _ => self.refold(),
                }
                false
            }
            Msg::Query { query, reply } => {
                let read = Read {
                    answer: query::answer(&self.state, self.head, query),
                    reply,
                };
                match &self.syncer {
                    Some(syncer) if matches!(self.options.durability, Durability::Always) => {
                        if let Err(mpsc::SendError(Durable::Read(read))) =
                            syncer.tx.send(Durable::Read(Box::new(read)))
                        {
                            read.deliver();
                        }
                    }
                    _ => read.deliver(),
                }
                false
            }
            Msg::Checkpoint { reply } => {
                let result = self.checkpoint();
                let _ = reply.send(result);
                false
            }
            Msg::Close { reply, discard }
                if discard && self.head.seq == 0 && self.store.is_new() =>
            {
                if let Some(syncer) = self.syncer.take() {
                    syncer.stop();
                }
                // Removed while sled still holds the lock: no other process
                // can have opened it meanwhile.
                let result = self
                    .store
                    .discard_created()
                    .map_err(|e| AppendError::Storage(e.to_string()));
                let _ = reply.send(result);
                true
            }
            Msg::Close { reply, .. } => {
                let result = self.finish();
                let _ = reply.send(result);
                true
            }
        }
    }

    fn finish(&mut self) -> Result<(), AppendError> {
        if let Some(syncer) = self.syncer.take() {
            syncer.stop();
        }
        self.check_syncer();
        if self.poisoned.is_none() && (self.since_checkpoint > 0 || self.unindexed.1 > 0) {
            self.checkpoint()?;
        }
        self.store
            .flush(true)
            .map_err(|e| AppendError::Storage(e.to_string()))
    }

    fn checkpoint(&mut self) -> Result<Checkpoint, AppendError> {
        if let Some(why) = &self.poisoned {
            return Err(AppendError::Storage(why.clone()));
        }
        let checkpoint = Checkpoint {
            seq: self.head.seq,
            head: *self.head.hash.as_bytes(),
            digest: *self.state.digests().combined.as_bytes(),
        };
        if self.unindexed.1 > 0 {
            self.write_index()
                .map_err(|e| AppendError::Storage(e.to_string()))?;
        }
        self.store
            .write_checkpoint(checkpoint)
            .map_err(|e| AppendError::Storage(e.to_string()))?;
        self.store
            .flush(true)
            .map_err(|e| AppendError::Storage(e.to_string()))?;
        self.since_checkpoint = 0;
        Ok(checkpoint)
    }

    /// Validates and evolves one batch into the group. A batch is
    /// all-or-nothing: its records are staged and join the group only when
    /// every event passed; a rejection undoes what the batch did to the
    /// live state.
    fn accept(&mut self, group: &mut Group, entries: Vec<Append>, reply: Replier) {
        if !self.begin(group) {
            self.refuse(reply);
            return;
        }
        self.state.mark();
        let start = (self.head, self.last_wall);
        let count = entries.len();
        let mut cover = OverrunCover::new();
        for (index, entry) in entries.into_iter().enumerate() {
            if let Err(rejection) = self.stage(group, entry, index, &mut cover) {
                self.abort(group, start);
                reply(Err(AppendError::Rejected { index, rejection }));
                return;
            }
        }
        if let Err((index, rejection)) = cover.check() {
            self.abort(group, start);
            reply(Err(AppendError::Rejected { index, rejection }));
            return;
        }
        self.take_staged(group, start.0, count, reply);
    }

    /// Makes the decisions `commands` name on the live state, after the
    /// budget periods due now turn, and answers with what each decided;
    /// returns how many events they pushed. Each command is all or
    /// nothing: a rejected one is undone on the live state and answered
    /// with its rejection, the others stand.
    fn commands(
        &mut self,
        group: &mut Group,
        commands: Vec<Command>,
        rules: &Rules,
        reply: oneshot::Sender<Result<(Receipt, Vec<Decided>), AppendError>>,
    ) -> usize {
        if !self.begin(group) {
            let why = self.poisoned.clone().unwrap_or_default();
            let _ = reply.send(Err(AppendError::Storage(why)));
            return 0;
        }
        let start = self.head;
        let now = wall_clock().max(self.last_wall);
        self.last_wall = now;
        let unit = Unit {
            head: start,
            pushed: 0,
            staged: 0,
            scratch: 0,
        };
        let mut draft = Draft {
            writer: self,
            group,
            now,
            pushed: 0,
            unit,
            failed: None,
            cover: OverrunCover::new(),
        };
        // The turns due now come first; the commands decide after them.
        draft.open_unit();
        let turned = decider::turn_periods(&mut draft, now);
        if let Err(e) = draft.close_unit(turned) {
            let _ = reply.send(Err(e));
            return 0;
        }
        let mut decided = Vec::with_capacity(commands.len());
        for command in commands {
            draft.open_unit();
            let outcome = command::apply(&mut draft, now, command, rules);
            decided.push(draft.close_unit(outcome));
        }
        let pushed = draft.pushed;
        let reply: Replier = Box::new(move |result: Result<Receipt, AppendError>| {
            let _ = reply.send(result.map(|receipt| (receipt, decided)));
        });
        self.take_staged(group, start, pushed, reply);
        pushed
    }

    /// Prepares the group for a batch; false when the ledger cannot write.
    fn begin(&mut self, group: &mut Group) -> bool {
        self.check_syncer();
        group.staged.clear();
        group.scratch.clear();
        self.poisoned.is_none()
    }

    /// Answers an append the poisoned ledger cannot take.
    fn refuse(&self, reply: Replier) {
        let why = self.poisoned.clone().unwrap_or_default();
        reply(Err(AppendError::Storage(why)));
    }

    /// Checks one event against the limits and validates it (the
    /// `index`-th of its append, noted in `cover`), then evolves the live
    /// state and stages its record. Nothing the decoder could not read back
    /// is ever chained: an event over a limit is refused here.
    fn stage(
        &mut self,
        group: &mut Group,
        entry: Append,
        index: usize,
        cover: &mut OverrunCover,
    ) -> Result<(), Rejection> {
        limits::check_event(&entry.event)?;
        if let Some(at) = entry.recorded_at {
            limits::check_time("recorded_at", at)?;
        }
        self.state.validate(&entry.event)?;
        let task_reserved = (entry.event.task())
            .and_then(|t| self.state.queue.get(t))
            .map_or(Micros::ZERO, |t| t.reserved_micros);
        cover.note(index, &entry.event, task_reserved);
        let seq = self.head.seq + 1;
        assert_eq!(
            seq,
            self.state.seq + 1,
            "record {seq} does not follow the live state's seq {}",
            self.state.seq
        );
        let recorded_at = match entry.recorded_at {
            Some(at) => at,
            None => {
                let now = wall_clock().max(self.last_wall);
                self.last_wall = now;
                now
            }
        };
        let from = group.scratch.len();
        encode_event_into(&entry.event, &mut group.scratch);
        if let Err(rejection) = check_encoded(&group.scratch[from..]) {
            group.scratch.truncate(from);
            return Err(rejection);
        }
        let hash = record_hash(seq, recorded_at, &self.head.hash, &group.scratch[from..]);
        let (run, tenant) = self.state.scope(&entry.event);
        let run = run.map(|r| group.index.slot(IndexKind::Run, r.as_str()));
        let tenant = tenant.map(|t| group.index.slot(IndexKind::Tenant, t.as_str()));
        let reserved_by = match &entry.event {
            Event::CostReserved { tenant, .. } => Some(tenant.clone()),
            _ => None,
        };
        self.state.evolve(seq, recorded_at, entry.event);
        // Validated, so it holds: spent + reserved never passes the budget
        // by a reservation. Checked here, not in the fold, so that a
        // forged ledger is reported by replay, never a panic.
        if let Some(t) = reserved_by.and_then(|t| self.state.tenants.get(&t)) {
            t.assert_reservation_fits(t.reserved_micros);
        }
        group.staged.push(Staged {
            recorded_at,
            hash,
            bytes: from..group.scratch.len(),
            run,
            tenant,
        });
        self.head = Head { seq, hash };
        Ok(())
    }

    /// Drops a rejected batch: the live state returns to its mark (the
    /// batch's start) and the head to `start`.
    fn abort(&mut self, group: &mut Group, start: (Head, Timestamp)) {
        self.state.undo();
        (self.head, self.last_wall) = start;
        group.staged.clear();
    }

    /// Moves the staged records of an accepted batch into the group's
    /// frames and queues the reply with its receipt.
    fn take_staged(&mut self, group: &mut Group, start: Head, count: usize, reply: Replier) {
        for staged in group.staged.drain(..) {
            if group.builder.is_full() {
                let first = group.builder.first_seq();
                group.frames.push((first, group.builder.finish()));
            }
            let frame = group.builder.first_seq();
            group.builder.push(
                staged.recorded_at,
                staged.hash,
                &group.scratch[staged.bytes],
            );
            let place = (frame, group.builder.len() - 1);
            if let Some(slot) = staged.run {
                group.index.push(slot, place);
            }
            if let Some(slot) = staged.tenant {
                group.index.push(slot, place);
            }
            group.records += 1;
        }
        group.builder.assert_at(self.head.seq, &self.head.hash);
        let receipt = Receipt {
            first_seq: start.seq + 1,
            last_seq: self.head.seq,
            head: self.head.hash,
        };
        if count == 0 {
            reply(Ok(receipt));
        } else {
            group.replies.push((reply, receipt));
        }
    }

    /// Rebuilds the live state from the log (after a borrower stopped
    /// midway).
    fn refold(&mut self) {
        match replay::fold_and_index(&self.store) {
            Ok(folded) => {
                self.state = folded.state;
                self.state.record(true);
            }
            Err(e) => self.poisoned = Some(format!("cannot refold the ledger: {e}")),
        }
    }

    /// Writes the group, makes it durable per the mode and answers its
    /// appenders. Returns true if unflushed data remains.
    fn commit(&mut self, group: &mut Group) {
        if group.records == 0 && group.replies.is_empty() {
            return;
        }
        if !group.builder.is_empty() {
            let first = group.builder.first_seq();
            group.frames.push((first, group.builder.finish()));
        }
        let frames = std::mem::take(&mut group.frames);
        let mut result = self.store.write_frames(frames).map_err(|e| e.to_string());
        if result.is_ok() {
            self.unindexed.0.append(&mut group.index.take());
            self.unindexed.1 += group.records;
            if self.unindexed.1 >= INDEX_WRITE_RECORDS {
                result = self.write_index().map_err(|e| e.to_string());
            }
        }
        if let Err(why) = result {
            self.poisoned = Some(why.clone());
            for (reply, _) in group.replies.drain(..) {
                reply(Err(AppendError::Storage(why.clone())));
            }
            return;
        }
        let mut replies = std::mem::take(&mut group.replies);
        if !matches!(self.options.durability, Durability::Always) {
            // Answered now; under `batch` the syncer flushes soon.
            for (reply, receipt) in replies.drain(..) {
                reply(Ok(receipt));
            }
        }
        if let Some(syncer) = &self.syncer {
            let sent = if replies.is_empty() {
                // Under `batch`: a flush already due covers this group too.
                match syncer.tx.try_send(Durable::Group(replies)) {
                    Err(mpsc::TrySendError::Disconnected(item)) => Err(item),
                    _ => Ok(()),
                }
            } else {
                (syncer.tx.send(Durable::Group(replies))).map_err(|mpsc::SendError(item)| item)
            };
            if let Err(Durable::Group(replies)) = sent {
                for (reply, _) in replies {
                    reply(Err(AppendError::Storage("the syncer stopped".to_owned())));
                }
            }
        }
        self.since_checkpoint += group.records;
        group.records = 0;
        group.builder = FrameBuilder::new(self.head.seq + 1, self.head.hash);
        // A lent state is the borrower's: checkpoints wait for its return.
        if !self.lent
            && self.options.checkpoint_every > 0
            && self.since_checkpoint >= self.options.checkpoint_every
        {
            if let Err(e) = self.checkpoint() {
                self.poisoned = Some(e.to_string());
            }
        }
    }

    /// Writes the index entries gathered since the last write, with the
    /// head as their mark.
    fn write_index(&mut self) -> Result<(), sled::Error> {
        let entries = std::mem::take(&mut self.unindexed.0);
        self.unindexed.1 = 0;
        self.store.write_index(entries, self.head.seq)
    }

    fn check_syncer(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        if let Some(why) = self
            .syncer
            .as_ref()
            .and_then(|s| s.failed.lock().ok().and_then(|f| f.clone()))
        {
            self.poisoned = Some(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BudgetPeriod, LearningIntensity, TenantId};

    fn tenant(id: &str) -> Append {
        Append::from(Event::TenantRegistered {
            tenant: TenantId::from(id),
            budget_micros: Micros(1_000),
            max_concurrent_runs: 1,
            learning_intensity: LearningIntensity::Balanced,
            meta_learning: false,
            budget_period: BudgetPeriod::None,
        })
    }

    /// Under `always`, a read sent right behind appends not yet answered
    /// sees them, and its answer comes only once they are durable: by then
    /// every append's own answer (sent after the flush) has arrived.
    #[test]
    fn query_under_always_answered_after_the_appends_before_it_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let options = LedgerOptions {
            durability: Durability::Always,
            checkpoint_every: 0,
            create: true,
        };
        let ledger = Ledger::open(dir.path(), options).unwrap();
        let pending: Vec<PendingAppend> = (0..3)
            .map(|k| {
                let entries = vec![tenant(&format!("t{k}"))];
                ledger.append_pipelined(entries).unwrap()
            })
            .collect();
        let head = ledger.head().unwrap();
        let receipts: Vec<Receipt> = pending
            .into_iter()
            .map(|mut p| p.0.try_recv().expect("answered before the read").unwrap())
            .collect();
        assert_eq!(head.seq, 3);
        assert_eq!(
            receipts.last().map(|r| (r.last_seq, r.head)),
            Some((3, head.hash))
        );
        // The same on the async path, and for a read of more than the head.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut pending = ledger.append_pipelined(vec![tenant("t3")]).unwrap();
        let counted = rt
            .block_on(ledger.tenant_async(&TenantId::from("t3")))
            .unwrap();
        let receipt = pending.0.try_recv().expect("answered before the read");
        assert_eq!(receipt.unwrap().last_seq, 4);
        assert_eq!(counted.map(|t| t.budget_micros), Some(Micros(1_000)));
        ledger.close().unwrap();
    }
}
