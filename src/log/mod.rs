//! The ledger: records, the hash chain, the versioned codec, the data
//! directory, the sled store, the group-commit writer and the typed reads
//! it answers, replay (folding the stored log back into projections) and
//! chain verification.
//!
//! This is the shell around the pure `domain`: it owns the disk and the wall
//! clock. The codec (events ⇄ bytes) and the frame layout are a contract:
//! a ledger written today must verify and replay forever.

pub mod codec;
pub mod dir;
pub mod frame;
pub mod query;
pub mod record;
pub mod replay;
pub mod store;
pub mod verify;
pub mod writer;

pub use query::Query;
pub use record::{Record, ZERO_HASH};
pub use store::{ChainBreak, Checkpoint, Head, Store, StoreError, WalkError};
pub use writer::{Append, AppendError, Durability, Ledger, LedgerOptions, OpenError, Receipt};
