//! Identifiers: tenants, runs, tasks, workers and pipeline instances.
//!
//! Ids are arbitrary UTF-8 strings chosen by the user; they are newtypes so a
//! task id can never be passed where a tenant id is expected. They know
//! nothing of storage beyond their derived codecs.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default,
            Serialize, Deserialize, Encode, Decode,
        )]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A tenant: the customer whose budget pays for tasks.
    TenantId
);
id_type!(
    /// A run: one execution of a workload (everything between `run_started`
    /// and `run_finished`).
    RunId
);
id_type!(
    /// A task: one step of a pipeline, the unit the queue moves.
    TaskId
);
impl TaskId {
    /// What a run's seeded draws for this task are keyed by: the id
    /// without its run's prefix (`demo-42/acme/rag#0/retrieve` draws as
    /// `acme/rag#0/retrieve`), so two runs of one workload with one seed
    /// draw the same numbers whatever their names.
    pub fn draw_key<'a>(&'a self, run: &RunId) -> &'a str {
        self.0
            .strip_prefix(run.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or(&self.0)
    }
}

id_type!(
    /// A worker that dequeues and executes tasks.
    WorkerId
);
id_type!(
    /// One instance of a pipeline inside a run; a tenant's concurrent-run
    /// limit counts these.
    PipelineId
);
