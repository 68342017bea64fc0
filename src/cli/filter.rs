//! The `--run` / `--tenant` filters of `log` and `decisions`: which
//! records a filter takes during a full walk, and the refusal of a filter
//! that names nothing in the ledger.

use std::ops::ControlFlow;

use anyhow::bail;

use super::open::walk_error;
use crate::domain::{Event, RunId, TaskId, TenantId};
use crate::log::Store;
use crate::log::codec::decode_event;
use crate::log::store::IndexKind;

/// Follows which run and tenant each task belongs to during a full walk.
#[derive(Default)]
pub(super) struct Scopes {
    pub(super) tasks: rustc_hash::FxHashMap<TaskId, (RunId, TenantId)>,
}

impl Scopes {
    pub(super) fn matches(
        &mut self,
        event: &Event,
        run: Option<&str>,
        tenant: Option<&str>,
    ) -> bool {
        if let Event::TaskSubmitted {
            task, run, tenant, ..
        } = event
        {
            self.tasks
                .insert(task.clone(), (run.clone(), tenant.clone()));
        }
        let owner = event.task().and_then(|t| self.tasks.get(t));
        let event_run = event.run().or(owner.map(|o| &o.0));
        let event_tenant = event.tenant().or(owner.map(|o| &o.1));
        run.is_none_or(|r| event_run.is_some_and(|x| x.as_str() == r))
            && tenant.is_none_or(|t| event_tenant.is_some_and(|x| x.as_str() == t))
    }
}

/// Refuses (exit 2) a `--run` or `--tenant` filter that names nothing in
/// the ledger, so a typo is not mistaken for an empty history.
pub(super) fn require_known(
    store: &Store,
    run: Option<&str>,
    tenant: Option<&str>,
) -> anyhow::Result<()> {
    let filters = run
        .map(|r| (IndexKind::Run, r, "run"))
        .into_iter()
        .chain(tenant.map(|t| (IndexKind::Tenant, t, "tenant")));
    for (kind, id, what) in filters {
        let indexed = store.indexed_frames(kind, id).map_err(walk_error)?;
        let known = if let Some(frames) = indexed {
            !frames.is_empty()
        } else {
            let mut seen = false;
            let mut scopes = Scopes::default();
            store
                .walk(1, |raw| {
                    if let Ok(event) = decode_event(raw.event_bytes) {
                        let (r, t) = match kind {
                            IndexKind::Run => (Some(id), None),
                            IndexKind::Tenant => (None, Some(id)),
                        };
                        seen = scopes.matches(&event, r, t);
                    }
                    if seen {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .map_err(walk_error)?;
            seen
        };
        if !known {
            bail!("{what} `{id}` is not in the ledger");
        }
    }
    Ok(())
}
