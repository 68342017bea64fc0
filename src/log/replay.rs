//! Replay: fold a stored log back into the projections, checking the chain
//! on the way.
//!
//! The fold calls the same `State::evolve` as the live writer, so a live
//! state and its replay have equal digests. Replay never validates: the log
//! is the truth, and validation already happened before each append.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::domain::state::scope_of;
use crate::domain::{Event, RunId, State, TaskId, TenantId};
use crate::log::store::{
    ChainBreak, Head, IndexBuilder, IndexEntry, IndexKind, IndexSummary, ReadBack, Store,
    WalkError, decode_record,
};

/// The result of a fold.
#[derive(Clone, Debug)]
pub struct Folded {
    pub state: State,
    pub head: Head,
    /// Records folded in (with a run filter: those of the run and the global ones).
    pub records: u64,
}

/// Which records a fold takes.
#[derive(Default)]
struct RunFilter {
    run: Option<RunId>,
    tasks: FxHashSet<TaskId>,
}

impl RunFilter {
    fn takes(&mut self, event: &Event) -> bool {
        let Some(run) = &self.run else { return true };
        if let Some(r) = event.run() {
            let ours = r == run;
            if ours {
                if let Event::TaskSubmitted { task, .. } = event {
                    self.tasks.insert(task.clone());
                }
            }
            return ours;
        }
        match event.task() {
            Some(task) => self.tasks.contains(task),
            None => true,
        }
    }
}

/// Folds the whole log (or, with `run`, the records of that run plus the
/// global ones such as tenant registrations) into a fresh state.
pub fn fold(store: &Store, run: Option<&RunId>) -> Result<Folded, WalkError> {
    Ok(fold_inner(store, run, None)?.0)
}

/// Folds the whole log and rebuilds the derived indices above their
/// high-water mark (what `Ledger::open` does); indices without a mark (or
/// from before summaries) are dropped and rebuilt whole.
pub(crate) fn fold_and_index(store: &Store) -> Result<Folded, WalkError> {
    let hwm = store.index_hwm();
    if hwm == 0 {
        store.clear_index()?;
    }
    let (folded, entries) = fold_inner(store, None, Some(hwm))?;
    if folded.head.seq > hwm {
        store.write_index(entries, folded.head.seq)?;
    }
    Ok(folded)
}

/// Drops the derived indices and rebuilds them from the log (`verify
/// --repair-indices`); returns the head they now reach.
pub fn rebuild_index(store: &Store) -> Result<Head, WalkError> {
    store.clear_index()?;
    Ok(fold_and_index(store)?.head)
}

/// Compares the derived indices with what the log gives: `Ok(Err(..))`
/// names the index, the id and the first seq where they differ. Reads and
/// checks the chain again (`runledger verify` does the first pass within
/// its own, through [`ExpectedIndex`]).
pub fn check_index(store: &Store) -> Result<Result<(), ChainBreak>, WalkError> {
    let mut expected = ExpectedIndex::default();
    let head = read_keys(store, |seq, key| expected.push(seq, key))?;
    expected.finish_check(store, head.seq)
}

/// Reads the chain (every hash checked) handing each record's
/// [`IndexKey`] to `visit` in seq order.
fn read_keys(store: &Store, mut visit: impl FnMut(u64, IndexKey)) -> Result<Head, WalkError> {
    store.read_chain(
        |raw| {
            let event = crate::log::codec::decode_event(raw.event_bytes)
                .map_err(|what| format!("event cannot be decoded: {what}"))?;
            Ok((raw.seq, IndexKey::of(raw.frame_seq, &event)))
        },
        |frames| {
            for (seq, key) in frames.into_iter().flatten() {
                visit(seq, key);
            }
        },
    )
}

/// What indexing a record needs of its event, taken on the thread that
/// decoded it: the frame, the event's own run and tenant, and its task when
/// one of them must come from the task (or when it submits the task).
#[derive(Debug)]
pub struct IndexKey {
    frame_seq: u64,
    run: Option<RunId>,
    tenant: Option<TenantId>,
    task: Option<TaskId>,
    submits: bool,
}

impl IndexKey {
    pub fn of(frame_seq: u64, event: &Event) -> IndexKey {
        let (run, tenant) = (event.run().cloned(), event.tenant().cloned());
        let submits = matches!(event, Event::TaskSubmitted { .. });
        let needs_task = submits || run.is_none() || tenant.is_none();
        IndexKey {
            frame_seq,
            run,
            tenant,
            task: if needs_task {
                event.task().cloned()
            } else {
                None
            },
            submits,
        }
    }
}

/// One id's index as the log gives it, grown record by record.
struct Growing {
    kind: IndexKind,
    id: String,
    /// The frame being filled and the id's offsets in it so far.
    frame: u64,
    offsets: Vec<u32>,
    summary: IndexSummary,
    /// Every entry, for the ids whose stored index failed the first check.
    entries: Option<Vec<IndexEntry>>,
}

impl Growing {
    fn close_frame(&mut self) {
        if self.offsets.is_empty() {
            return;
        }
        self.summary.push(self.frame, &self.offsets);
        let offsets = std::mem::take(&mut self.offsets);
        if let Some(entries) = self.entries.as_mut() {
            entries.push(IndexEntry {
                kind: self.kind,
                id: self.id.clone(),
                frame_seq: self.frame,
                offsets,
            });
        }
    }
}

/// The indices the log gives, built record by record in seq order with
/// the rule the writer indexes by (`scope_of`, as `State::scope`), knowing
/// of each task only whom it was submitted for — no fold. Keeps each id's
/// summary, not its entries (except for the ids it is told to keep).
#[derive(Default)]
pub struct ExpectedIndex {
    owners: FxHashMap<TaskId, (RunId, TenantId)>,
    slots: [FxHashMap<String, usize>; 2],
    ids: Vec<Growing>,
    keep: std::collections::BTreeSet<(IndexKind, String)>,
}

impl ExpectedIndex {
    /// Adds the record at `seq`.
    pub fn push(&mut self, seq: u64, key: IndexKey) {
        let owner = key.task.as_ref().and_then(|t| self.owners.get(t));
        let (run, tenant) = scope_of(
            (key.run.as_ref(), key.tenant.as_ref()),
            owner.map(|(r, t)| (r, t)),
        );
        let offset = u32::try_from(seq - key.frame_seq).unwrap_or(u32::MAX);
        let places = [
            (IndexKind::Run, run.map(RunId::as_str)),
            (IndexKind::Tenant, tenant.map(TenantId::as_str)),
        ];
        for (kind, id) in places {
            let Some(id) = id else { continue };
            let slots = &mut self.slots[kind as usize];
            let slot = match slots.get(id) {
                Some(&slot) => slot,
                None => {
                    let slot = self.ids.len();
                    slots.insert(id.to_owned(), slot);
                    let keep = self.keep.contains(&(kind, id.to_owned()));
                    self.ids.push(Growing {
                        kind,
                        id: id.to_owned(),
                        frame: key.frame_seq,
                        offsets: Vec::new(),
                        summary: IndexSummary::default(),
                        entries: keep.then(Vec::new),
                    });
                    slot
                }
            };
            let growing = &mut self.ids[slot];
            if growing.frame != key.frame_seq {
                growing.close_frame();
                growing.frame = key.frame_seq;
            }
            growing.offsets.push(offset);
        }
        if let (true, Some(task), Some(run), Some(tenant)) =
            (key.submits, key.task, key.run, key.tenant)
        {
            self.owners.insert(task, (run, tenant));
        }
    }

    /// Checks the stored indices against what was pushed (the whole log,
    /// up to `head`): first every summary and the entries behind it; for
    /// the ids that fail, a second read of the chain keeps their entries
    /// and names the first seq where they differ.
    pub fn finish_check(
        mut self,
        store: &Store,
        head: u64,
    ) -> Result<Result<(), ChainBreak>, WalkError> {
        let mut summaries = std::collections::BTreeMap::new();
        for growing in &mut self.ids {
            growing.close_frame();
            summaries.insert((growing.kind, growing.id.clone()), growing.summary);
        }
        let bad = match store.check_summaries(&summaries, head)? {
            Err(b) => return Ok(Err(b)),
            Ok(bad) if bad.is_empty() => return Ok(Ok(())),
            Ok(bad) => bad,
        };
        let mut again = ExpectedIndex {
            keep: bad.iter().cloned().collect(),
            ..ExpectedIndex::default()
        };
        read_keys(store, |seq, key| again.push(seq, key))?;
        let mut entries = Vec::new();
        for mut growing in again.ids {
            growing.close_frame();
            entries.extend(growing.entries.unwrap_or_default());
        }
        Ok(match store.compare_index(entries, &bad)? {
            Err(b) => Err(b),
            // The first check failed, so the second finds it too; should
            // it not, still name the index.
            Ok(()) => {
                let (kind, id) = &bad[0];
                Err(ChainBreak {
                    seq: 0,
                    what: format!(
                        "the {} index of {} `{id}` does not match the log",
                        kind.tree_name(),
                        kind.noun()
                    ),
                })
            }
        })
    }
}

/// Folds, and with `index_above`, collects the index entries of every
/// record past that seq.
fn fold_inner(
    store: &Store,
    run: Option<&RunId>,
    index_above: Option<u64>,
) -> Result<(Folded, Vec<IndexEntry>), WalkError> {
    let mut state = State::new();
    let mut filter = RunFilter {
        run: run.cloned(),
        tasks: FxHashSet::default(),
    };
    let mut records = 0u64;
    let hwm = index_above.unwrap_or(u64::MAX);
    let mut index = IndexBuilder::default();
    let mut read_back = ReadBack::default();
    let head = store.read_chain(decode_record, |frames| {
        for record in frames.into_iter().flatten() {
            read_back.next(record.seq, &record.hash);
            if record.seq > hwm {
                let (run, tenant) = state.scope(&record.event);
                let place = (
                    record.frame_seq,
                    u32::try_from(record.seq - record.frame_seq).unwrap_or(u32::MAX),
                );
                if let Some(run) = run {
                    index.add(IndexKind::Run, run.as_str(), place);
                }
                if let Some(tenant) = tenant {
                    index.add(IndexKind::Tenant, tenant.as_str(), place);
                }
            }
            if filter.takes(&record.event) {
                state.evolve(record.seq, record.recorded_at, record.event);
                records += 1;
            }
        }
    })?;
    read_back.finish(&head);
    state.seq = head.seq;
    let folded = Folded {
        state,
        head,
        records,
    };
    Ok((folded, index.take()))
}
