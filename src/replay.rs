//! Replay: fold a stored log back into the projections, checking the chain
//! on the way.
//!
//! The fold calls the same `State::evolve` as the live writer, so a live
//! state and its replay have equal digests. Replay never validates: the log
//! is the truth, and validation already happened before each append.

use rustc_hash::FxHashSet;

use crate::domain::{Event, RunId, State, TaskId};
use crate::log::store::{Head, IndexBuilder, IndexKind, Store, WalkError, decode_record};

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
    fold_inner(store, run, false)
}

/// Folds the whole log and rebuilds the derived indices above their
/// high-water mark (what `Ledger::open` does).
pub(crate) fn fold_and_index(store: &Store) -> Result<Folded, WalkError> {
    fold_inner(store, None, true)
}

fn fold_inner(store: &Store, run: Option<&RunId>, reindex: bool) -> Result<Folded, WalkError> {
    let mut state = State::new();
    let mut filter = RunFilter {
        run: run.cloned(),
        tasks: FxHashSet::default(),
    };
    let mut records = 0u64;
    let hwm = if reindex { store.index_hwm() } else { u64::MAX };
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
    if reindex && head.seq > hwm {
        store.write_index(index.take(), head.seq)?;
    }
    state.seq = head.seq;
    Ok(Folded {
        state,
        head,
        records,
    })
}
