//! Replay: fold a stored log back into the projections, checking the chain
//! on the way.
//!
//! The fold calls the same `State::evolve` as the live writer, so a live
//! state and its replay have equal digests. Replay never validates: the log
//! is the truth, and validation already happened before each append.

use rustc_hash::FxHashSet;

use crate::domain::{Event, RunId, State, TaskId};
use crate::log::store::{
    ChainBreak, Head, IndexBuilder, IndexEntry, IndexKind, Store, WalkError, decode_record,
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

/// Compares the derived indices with what the log gives, record by
/// record: `Ok(Err(..))` names the index, the id and the first seq where
/// they differ (what `verify` reports). The chain is read and checked
/// again on the way.
pub fn check_index(store: &Store) -> Result<Result<(), ChainBreak>, WalkError> {
    let (folded, entries) = fold_inner(store, None, Some(0))?;
    Ok(store.compare_index(entries, folded.head.seq)?)
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
    let head = store.read_chain(decode_record, |frames| {
        for record in frames.into_iter().flatten() {
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
    state.seq = head.seq;
    let folded = Folded {
        state,
        head,
        records,
    };
    Ok((folded, index.take()))
}
