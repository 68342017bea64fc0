//! What a command's error means for the process: the error types that
//! carry exit code 1 (a failed check, a damaged ledger) or 3 (a run with
//! dead-lettered tasks), and [`exit_code`], the one mapping. The exit
//! codes are a **contract**.

use crate::log::ChainBreak;

/// A check failed (exit 1): the ledger is damaged at `0`.
#[derive(Debug, thiserror::Error)]
#[error("the ledger is damaged at {0}")]
pub struct Damaged(pub ChainBreak);

/// A check failed (exit 1) with this message, already explained.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

/// A run ended with dead-lettered tasks (exit 3): it was executed and
/// recorded, but not all of its work succeeded.
#[derive(Debug, thiserror::Error)]
#[error("run `{run}` finished with {dead_lettered} of {tasks} tasks dead-lettered")]
pub struct RunFailed {
    pub run: String,
    pub dead_lettered: u64,
    pub tasks: u64,
}

/// 1 for a failed check (a damaged chain or ledger), 3 for a run with
/// dead-lettered tasks, 0 for a closed pipe, 2 for everything else.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<RunFailed>().is_some() {
        return 3;
    }
    if error.downcast_ref::<Damaged>().is_some()
        || error.downcast_ref::<CheckFailed>().is_some()
        || matches!(
            error.downcast_ref::<crate::log::StoreError>(),
            Some(crate::log::StoreError::Damaged { .. })
        )
    {
        return 1;
    }
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::BrokenPipe {
            return 0;
        }
    }
    2
}
