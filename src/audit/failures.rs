//! Why a run's tasks failed: its dead-lettered tasks grouped by their last
//! error, most common first, read from the log (`run` and `resume` print
//! them under the summary).
//!
//! The reasons are not kept in any projection: they are read back through
//! the by-run index (only the frames holding the run's records), or, when
//! the indices lag behind the log, one walk of the chain.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;

use serde::Serialize;

use crate::domain::{Event, RunId, TaskId};
use crate::log::store::{DecodedRecord, IndexKind, decode_record};
use crate::log::{ChainBreak, Store, WalkError};

/// The longest reason shown; longer ones are cut at a character boundary.
pub const REASON_CHARS_MAX: usize = 160;

/// One reason and how many dead-lettered tasks gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailureReason {
    pub reason: String,
    pub tasks: u64,
}

/// The `limit` most common last errors of run `run`'s dead-lettered tasks
/// (ties by reason), or nothing when none was dead-lettered.
pub fn top_reasons(
    store: &Store,
    run: &RunId,
    limit: usize,
) -> Result<Vec<FailureReason>, WalkError> {
    let mut last_error: HashMap<TaskId, String> = HashMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    run_records(store, run, |event| {
        match event {
            Event::TaskNacked { task, error, .. } => {
                last_error.insert(task, error);
            }
            Event::TaskDeadLettered { task, reason } => {
                let why = last_error.remove(&task).unwrap_or(reason);
                *counts.entry(shorten(&why)).or_default() += 1;
            }
            _ => {}
        }
        ControlFlow::Continue(())
    })?;
    let mut reasons: Vec<FailureReason> = counts
        .into_iter()
        .map(|(reason, tasks)| FailureReason { reason, tasks })
        .collect();
    reasons.sort_by(|a, b| b.tasks.cmp(&a.tasks).then_with(|| a.reason.cmp(&b.reason)));
    reasons.truncate(limit);
    Ok(reasons)
}

/// The first line of `text`, at most [`REASON_CHARS_MAX`] characters.
fn shorten(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(REASON_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// Hands every event of run `run` to `visit`, in seq order: through the
/// by-run index when it is current, else by one walk of the chain that
/// follows which tasks the run submitted. Hashes are checked on the way.
pub fn run_records(
    store: &Store,
    run: &RunId,
    mut visit: impl FnMut(Event) -> ControlFlow<()>,
) -> Result<(), WalkError> {
    let mut bad: Option<ChainBreak> = None;
    let mut decoded = |raw: crate::log::record::RawRecord<'_>| match decode_record(raw) {
        Ok(DecodedRecord { event, .. }) => Some(event),
        Err(what) => {
            bad = Some(ChainBreak { seq: raw.seq, what });
            None
        }
    };
    let indexed =
        store.walk_indexed(&[(IndexKind::Run, run.as_str())], 1, |raw| {
            match decoded(raw) {
                Some(event) => visit(event),
                None => ControlFlow::Break(()),
            }
        })?;
    if indexed.is_none() {
        let mut tasks: HashSet<TaskId> = HashSet::new();
        store.walk(1, |raw| {
            let Some(event) = decoded(raw) else {
                return ControlFlow::Break(());
            };
            if let Event::TaskSubmitted { run: r, task, .. } = &event {
                if r == run {
                    tasks.insert(task.clone());
                }
            }
            let ours = match event.run() {
                Some(r) => r == run,
                None => event.task().is_some_and(|t| tasks.contains(t)),
            };
            if ours {
                visit(event)
            } else {
                ControlFlow::Continue(())
            }
        })?;
    }
    match bad {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_keeps_the_first_line_and_cuts_long_ones() {
        assert_eq!(shorten("boom\nstack trace"), "boom");
        let long = "é".repeat(REASON_CHARS_MAX + 5);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), REASON_CHARS_MAX + 1);
        assert!(cut.ends_with('…'));
    }
}
