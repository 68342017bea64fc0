//! The statuses a task moves through (see [`super::queue`] for the
//! lifecycle). Defined apart from the queue projection so that a
//! [`super::rejection::Rejection`] can name one without importing the
//! queue, which imports rejections.

use bincode::{Decode, Encode};
use serde::Serialize;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Waiting,
    Pending,
    Leased,
    Done,
    DeadLettered,
    Cancelled,
    /// Ended without running (an optional node a degradation plan skipped).
    Skipped,
}

impl TaskStatus {
    pub fn name(self) -> &'static str {
        [
            "waiting",
            "pending",
            "leased",
            "done",
            "dead_lettered",
            "cancelled",
            "skipped",
        ][self as usize]
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Done
                | TaskStatus::DeadLettered
                | TaskStatus::Cancelled
                | TaskStatus::Skipped
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
