//! The sled store: one database per data directory, with trees for the log
//! (frames keyed by their first seq), metadata, derived indices (by run, by
//! tenant) and checkpoints.
//!
//! Only the log tree is truth. Indices carry a high-water mark in the
//! metadata and are rebuilt from the log when they fall behind; checkpoints
//! are checked against the chain, never trusted over it. Reading walks the
//! chain and checks every hash on the way, so no command ever shows a
//! record the chain does not vouch for.
//!
//! Each id's index entries have a summary in the metadata (how many
//! records they list and a digest of them), written after the entries in
//! one atomic batch with the high-water mark. A read through an
//! index checks the entries it uses against the summary (a deleted, edited
//! or forged entry is refused, not silently skipped) and every frame it
//! reads against its key and the frame before it; an id without a summary
//! is read by walking the log. `replay::check_index` compares the indices
//! with the log record by record (what `verify` reports).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use bincode::{Decode, Encode};

use super::codec::CONFIG;
use super::dir::{self, Contents, dir_size};
use super::frame::{self, FrameHeader, decode_header, frame_key, key_seq, walk_frame};
use super::record::{RawRecord, ZERO_HASH};

const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &[u8] = dir::FORMAT.as_bytes();
const LEDGER_ID_KEY: &[u8] = b"ledger_id";
const INDEX_HWM_KEY: &[u8] = b"index_hwm";
/// Present once the indices have summaries (ledgers before them count as
/// unindexed until a writable open rebuilds the indices).
const INDEX_FORMAT_KEY: &[u8] = b"index_format";
const INDEX_FORMAT: &[u8] = b"2";
/// Prefix of the summary keys in `meta`: then the kind's tag and the id.
const SUMMARY_PREFIX: &[u8] = b"index_sum\0";
const INDEX_SEPARATOR: u8 = 0xFF; // never part of UTF-8 text

pub use super::dir::StoreError;

/// The first place where the chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("seq {seq}: {what}")]
pub struct ChainBreak {
    pub seq: u64,
    pub what: String,
}

/// An index disagrees with the summary kept beside it: an entry was
/// deleted, edited or forged behind the ledger's back. The log itself may
/// be intact; `verify` names the seq, `verify --repair-indices` rebuilds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {index} index of `{id}` is damaged: {what}")]
pub struct IndexBreak {
    /// The index's tree: `by_run` or `by_tenant`.
    pub index: &'static str,
    pub id: String,
    pub what: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Break(#[from] ChainBreak),
    #[error(transparent)]
    Index(#[from] IndexBreak),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
}

/// The order of records read back from the chain, asserted as they come:
/// each record's seq is the one before it plus one, from seq 1, and at the
/// end the last record's hash (re-derived by the walk from its bytes) is
/// the head the chain's last frame links to. A read that checked the chain
/// hands records this way; anything else is a bug of the reader (a lost,
/// repeated or reordered frame between the threads that hash and the one
/// that folds), and folding past it would build a wrong state.
#[derive(Clone, Copy, Debug)]
pub struct ReadBack {
    seq: u64,
    hash: blake3::Hash,
}

impl Default for ReadBack {
    fn default() -> Self {
        ReadBack {
            seq: 0,
            hash: ZERO_HASH,
        }
    }
}

impl ReadBack {
    /// Takes the record read next.
    pub fn next(&mut self, seq: u64, hash: &blake3::Hash) {
        assert_eq!(
            seq,
            self.seq + 1,
            "record {seq} was read back after record {}",
            self.seq
        );
        self.seq = seq;
        self.hash = *hash;
    }

    /// Asserts that the records taken end at `head`, the read's end.
    pub fn finish(&self, head: &Head) {
        assert_eq!(
            self.seq, head.seq,
            "the records read back end at seq {} but the chain at seq {}",
            self.seq, head.seq
        );
        assert_eq!(
            self.hash, head.hash,
            "the hash of record {} read back is not the chain's last link",
            self.seq
        );
    }
}

/// Where a walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: blake3::Hash,
}

impl Head {
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: ZERO_HASH,
    };
}

/// `(seq, head hash, projection digest)` recorded by the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Checkpoint {
    pub seq: u64,
    pub head: [u8; 32],
    pub digest: [u8; 32],
}

/// The roots at `seq` that `runledger checkpoint` records for tenants and
/// auditors to keep: the Merkle root over the record hashes `1..=seq`
/// (see `audit::merkle`), the tenants root over every tenant's export rows
/// (see `audit::tenants`), and the checkpoint root combining both, with
/// the head hash at `seq`. Stored in the `published` tree, apart from the
/// writer's `checkpoints`, whose layout stays as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PublishedCheckpoint {
    pub seq: u64,
    pub head: [u8; 32],
    pub records_root: [u8; 32],
    pub tenants_root: [u8; 32],
    /// `checkpoint_root(records_root, tenants_root)`: what a holder keeps.
    pub root: [u8; 32],
}

const PUBLISHED_TREE: &[u8] = b"published";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndexKind {
    Run,
    Tenant,
}

impl IndexKind {
    pub const ALL: [IndexKind; 2] = [IndexKind::Run, IndexKind::Tenant];

    /// The index's tree.
    pub fn tree_name(self) -> &'static str {
        match self {
            IndexKind::Run => "by_run",
            IndexKind::Tenant => "by_tenant",
        }
    }

    /// What its ids are.
    pub fn noun(self) -> &'static str {
        match self {
            IndexKind::Run => "run",
            IndexKind::Tenant => "tenant",
        }
    }

    fn tag(self) -> u8 {
        match self {
            IndexKind::Run => b'r',
            IndexKind::Tenant => b't',
        }
    }
}

/// One index entry: the records of `id` in the frame starting at
/// `frame_seq`, as offsets in the frame (ascending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub kind: IndexKind,
    pub id: String,
    pub frame_seq: u64,
    pub offsets: Vec<u32>,
}

/// What an id's index entries add up to: the records they list and a
/// blake3 chain over them in frame order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexSummary {
    pub records: u64,
    pub digest: [u8; 32],
}

impl IndexSummary {
    /// Adds the next entry (entries come in frame order).
    pub fn push(&mut self, frame_seq: u64, offsets: &[u32]) {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"runledger.index.v1\0");
        hasher.update(&self.digest);
        hasher.update(&frame_seq.to_be_bytes());
        hasher.update(&(offsets.len() as u64).to_be_bytes());
        for offset in offsets {
            hasher.update(&offset.to_be_bytes());
        }
        self.digest = *hasher.finalize().as_bytes();
        self.records += offsets.len() as u64;
    }

    fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(&self.records.to_be_bytes());
        out[8..].copy_from_slice(&self.digest);
        out
    }

    fn decode(bytes: &[u8]) -> Option<IndexSummary> {
        let records = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let digest = bytes.get(8..)?.try_into().ok()?;
        Some(IndexSummary { records, digest })
    }
}

/// An id's index entries: `(frame seq, offsets in the frame)`, in order.
pub type IndexedFrames = Vec<(u64, Vec<u32>)>;

fn summary_key(kind: IndexKind, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(SUMMARY_PREFIX.len() + 1 + id.len());
    key.extend_from_slice(SUMMARY_PREFIX);
    key.push(kind.tag());
    key.extend_from_slice(id.as_bytes());
    key
}

/// `(id, frame seq)` of an index key, if it is one.
fn parse_index_key(key: &[u8]) -> Option<(&str, u64)> {
    let split = key.len().checked_sub(9)?;
    if key[split] != INDEX_SEPARATOR {
        return None;
    }
    let id = std::str::from_utf8(&key[..split]).ok()?;
    Some((id, key_seq(&key[split + 1..])?))
}

fn decode_offsets(value: &[u8]) -> Option<Vec<u32>> {
    match bincode::decode_from_slice::<Vec<u32>, _>(value, CONFIG) {
        Ok((offsets, used)) if used == value.len() => Some(offsets),
        _ => None,
    }
}

pub struct Store {
    /// The ledger's directory (also when a scratch copy is open).
    dir: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    by_run: sled::Tree,
    by_tenant: sled::Tree,
    checkpoints: sled::Tree,
    data_file: std::fs::File,
    /// Whether this open created the ledger.
    new: bool,
    /// The copy sled opened instead of `dir`; dropped after sled.
    scratch: Option<dir::Scratch>,
    /// The sled blob files already fsynced (see [`Store::sync_blobs`]).
    synced_blobs: std::sync::Mutex<std::collections::BTreeSet<std::ffi::OsString>>,
    /// The lock on `dir` (and what this open made), held while sled is
    /// open: dropped last.
    dir_lock: Option<dir::DirLock>,
}

impl Store {
    /// Opens the ledger in `dir` in place, to read and write; with
    /// `create`, makes a new one when the directory is absent or empty.
    /// Refuses, before sled writes a byte, a directory that holds anything
    /// else (see [`dir::inspect`]) and a disk that is read-only or has less
    /// than the margin free (see [`dir::writable`]). The marker is written
    /// once the ledger exists; a ledger from before markers gets one.
    pub fn open(dir: &Path, create: bool) -> Result<Store, StoreError> {
        Store::open_with(dir, create, || {})
    }

    /// [`Store::open`], running `before_sled` between looking at the
    /// directory and sled's opening it: where another process may step in
    /// (the tests make one step in there).
    pub(super) fn open_with(
        dir: &Path,
        create: bool,
        before_sled: impl FnOnce(),
    ) -> Result<Store, StoreError> {
        // Nothing is made on a disk sled may not write.
        let lock = match dir::DirLock::take(dir, false) {
            Err(StoreError::Missing(_)) if create => {
                dir::writable(dir, 0).map_err(|why| why.into_error(dir))?;
                dir::DirLock::take(dir, true)?
            }
            taken => taken?,
        };
        let contents = match dir::inspect(dir) {
            Ok(contents) => contents,
            Err(e) => {
                lock.remove_made();
                return Err(e);
            }
        };
        let new = matches!(contents, Contents::Absent | Contents::Empty);
        let checked = if new && !create {
            Err(StoreError::Missing(dir.to_path_buf()))
        } else {
            dir::writable(dir, 0).map_err(|why| why.into_error(dir))
        }
        .and_then(|()| {
            before_sled();
            match new {
                true => Ok(()),
                false => dir::remove_unfinished_snapshots(dir),
            }
        });
        if let Err(e) = checked {
            lock.remove_made();
            return Err(e);
        }
        // Unmarked: new, from before markers, or a creation interrupted
        // before its marker; with `create`, an empty sled database there
        // becomes the ledger.
        let unmarked = match &contents {
            Contents::Ledger { marker } => marker.is_none(),
            _ => true,
        };
        let init = (create && unmarked).then(new_ledger_id);
        let opened = Store::open_sled(dir, dir, &contents, init).and_then(|store| {
            // Written last: a marker always names a ledger that exists.
            if unmarked {
                dir::write_marker(dir, &store.ledger_id())?;
            }
            Ok(store)
        });
        match opened {
            Ok(mut store) => {
                store.new = new;
                store.dir_lock = Some(lock);
                Ok(store)
            }
            // Another process's sled holds the lock: its files, not ours.
            Err(e @ StoreError::Locked(_)) => Err(e),
            Err(e) if new => {
                // sled's files are ours to remove only if it failed after
                // this process held its lock, or made no `db`.
                match dir::lock(dir) {
                    Ok(_sled) => drop(dir::remove_new(dir, &lock)),
                    Err(StoreError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        drop(dir::remove_new(dir, &lock));
                    }
                    Err(_) => {}
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the ledger in `dir` to read it, never damaging it: in place
    /// when sled may write there (a writable disk with the margin free),
    /// else a private copy in the temporary directory, made under the
    /// ledger's lock and removed when the store is dropped. Fails with the
    /// reason, the original untouched, when neither is possible.
    pub fn open_read(dir: &Path) -> Result<Store, StoreError> {
        let lock = dir::DirLock::take(dir, false)?;
        let contents = dir::inspect(dir)?;
        if matches!(contents, Contents::Absent | Contents::Empty) {
            return Err(StoreError::Missing(dir.to_path_buf()));
        }
        let mut store = match dir::writable(dir, 0) {
            Ok(()) => {
                dir::remove_unfinished_snapshots(dir)?;
                Store::open_sled(dir, dir, &contents, None)?
            }
            Err(why) => {
                let scratch = dir::Scratch::copy(dir, &why)?;
                let mut store = Store::open_sled(dir, scratch.path(), &contents, None)?;
                store.scratch = Some(scratch);
                store
            }
        };
        store.dir_lock = Some(lock);
        Ok(store)
    }

    /// Whether `dir` holds a ledger (`false` when absent or empty; an error
    /// when it holds something else).
    pub fn exists(dir: &Path) -> Result<bool, StoreError> {
        Ok(matches!(dir::inspect(dir)?, Contents::Ledger { .. }))
    }

    /// Opens sled at `at` (`dir` itself, or a scratch copy of it) and
    /// checks the metadata; with `init`, a database without metadata and
    /// without data becomes a new ledger with that id.
    fn open_sled(
        dir: &Path,
        at: &Path,
        contents: &Contents,
        init: Option<String>,
    ) -> Result<Store, StoreError> {
        let marker = match contents {
            Contents::Ledger { marker } => marker.as_ref(),
            _ => None,
        };
        let damaged = |why: String| StoreError::Damaged {
            path: dir.to_path_buf(),
            known: contents.known(),
            why,
        };
        let db_path = at.join("db");
        let config = sled::Config::new()
            .path(at)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput);
        // sled's background threads hold the file lock for a few ms after a
        // `Db` in this process is dropped: retry a lock error for a second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let opened = loop {
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
            match attempt {
                Ok(Err(sled::Error::Io(e)))
                    if is_lock_error(&e) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => break other,
            }
        };
        let sled_err = |source| StoreError::Sled {
            path: dir.to_path_buf(),
            source,
        };
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(e))) if is_lock_error(&e) => {
                return Err(StoreError::Locked(dir.to_path_buf()));
            }
            // Space, permissions, a failing disk: not the ledger's fault.
            Ok(Err(e @ sled::Error::Io(_))) => return Err(sled_err(e)),
            Ok(Err(e)) => return Err(damaged(format!("sled cannot open it: {e}"))),
            Err(_) => {
                return Err(damaged(
                    "sled cannot open it (it panicked reading its files)".to_owned(),
                ));
            }
        };
        let meta = db.open_tree("meta").map_err(sled_err)?;
        let ledger_id = match meta.get(FORMAT_KEY).map_err(sled_err)? {
            Some(format) if format.as_ref() == FORMAT => meta
                .get(LEDGER_ID_KEY)
                .map_err(sled_err)?
                .map(|id| String::from_utf8_lossy(&id).into_owned()),
            Some(format) => {
                let why = format!("unknown format `{}`", String::from_utf8_lossy(&format));
                return Err(match marker {
                    Some(_) => damaged(format!("its database names an {why}")),
                    None => StoreError::Foreign {
                        path: dir.to_path_buf(),
                        why,
                    },
                });
            }
            None => {
                let foreign_trees = db
                    .tree_names()
                    .iter()
                    .any(|n| n.as_ref() != b"__sled__default" && n.as_ref() != b"meta");
                match init {
                    Some(id) if !foreign_trees && db.is_empty() => {
                        meta.insert(LEDGER_ID_KEY, id.as_bytes())
                            .map_err(sled_err)?;
                        meta.insert(FORMAT_KEY, FORMAT).map_err(sled_err)?;
                        db.flush().map_err(sled_err)?;
                        Some(id)
                    }
                    _ if marker.is_some() => {
                        return Err(damaged(
                            "its sled database holds no runledger metadata".to_owned(),
                        ));
                    }
                    _ => {
                        return Err(StoreError::Foreign {
                            path: dir.to_path_buf(),
                            why: "a sled database without runledger metadata".to_owned(),
                        });
                    }
                }
            }
        };
        if let (Some(named), Some(held)) = (marker.and_then(|m| m.ledger_id.as_ref()), &ledger_id) {
            if named != held {
                return Err(damaged(format!(
                    "its {} marker names ledger {named}, its database ledger {held}",
                    dir::MARKER
                )));
            }
        }
        let log = db.open_tree("log").map_err(sled_err)?;
        let by_run = db.open_tree("by_run").map_err(sled_err)?;
        let by_tenant = db.open_tree("by_tenant").map_err(sled_err)?;
        let checkpoints = db.open_tree("checkpoints").map_err(sled_err)?;
        let data_file = std::fs::File::open(&db_path).map_err(|source| StoreError::Io {
            path: db_path.clone(),
            source,
        })?;
        Ok(Store {
            dir: dir.to_path_buf(),
            db,
            log,
            meta,
            by_run,
            by_tenant,
            checkpoints,
            data_file,
            new: false,
            scratch: None,
            synced_blobs: std::sync::Mutex::default(),
            dir_lock: None,
        })
    }

    /// Whether this open created the ledger.
    pub fn is_new(&self) -> bool {
        self.new
    }

    /// If this open created the ledger, removes it while sled's lock is
    /// still held, for a command refused before its first append: the
    /// files runledger and sled made, then the directories this open made,
    /// each only while empty. Anything else there stays.
    pub fn discard_created(&self) -> std::io::Result<()> {
        match (&self.dir_lock, self.new) {
            (Some(lock), true) => dir::remove_new(&self.dir, lock),
            _ => Ok(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ledger_id(&self) -> String {
        match self.meta.get(LEDGER_ID_KEY) {
            Ok(Some(id)) => String::from_utf8_lossy(&id).into_owned(),
            _ => String::new(),
        }
    }

    /// The raw log tree, for tools that inspect or (in tests) damage frames.
    pub fn log_tree(&self) -> &sled::Tree {
        &self.log
    }

    /// The last record's seq and hash, read from the last frame's header.
    pub fn head(&self) -> Result<Head, WalkError> {
        let Some((key, value)) = self.log.last()? else {
            return Ok(Head::EMPTY);
        };
        let seq = key_seq(&key).unwrap_or(0);
        let (header, _) = decode_header(&value).map_err(|what| ChainBreak { seq, what })?;
        Ok(Head {
            seq: header.first_seq + u64::from(header.count).saturating_sub(1),
            hash: blake3::Hash::from_bytes(header.last_hash),
        })
    }

    /// Visits every record from `from_seq` on in order, checking every hash
    /// and the links between frames. From seq 1 the whole chain is checked
    /// from the zero hash; from a later seq the chain is trusted up to the
    /// frame that holds it.
    pub fn walk(
        &self,
        from_seq: u64,
        mut visit: impl FnMut(RawRecord<'_>) -> ControlFlow<()>,
    ) -> Result<Head, WalkError> {
        let from_seq = from_seq.max(1);
        let start = match self.log.range(..=frame_key(from_seq)).next_back() {
            Some(item) => item?.0,
            None => sled::IVec::from(&frame_key(1)),
        };
        let mut expected: Option<(u64, blake3::Hash)> =
            (key_seq(&start) == Some(1) || from_seq == 1).then_some((1, ZERO_HASH));
        let mut head = Head::EMPTY;
        let mut frames = self.log.range(start..).peekable();
        while let Some(item) = frames.next() {
            let (key, value) = item?;
            let next = expected.map_or(0, |e| e.0);
            let Some(seq) = key_seq(&key) else {
                return Err(ChainBreak {
                    seq: next,
                    what: "a log key is not a seq".to_owned(),
                }
                .into());
            };
            check_gap(seq, expected)?;
            let (header, entries) = decode_header(&value).map_err(|what| ChainBreak {
                seq,
                what: format!("frame cannot be decoded: {what}"),
            })?;
            check_link(&header, seq, expected)?;
            let mut stop = false;
            let walked = walk_frame(&header, entries, |record| {
                if !stop && record.seq >= from_seq && visit(record).is_break() {
                    stop = true;
                }
            });
            let last = match walked {
                Ok(last) => last,
                Err(e) => {
                    let next_key = frames
                        .peek()
                        .and_then(|i| i.as_ref().ok())
                        .and_then(|(k, _)| key_seq(k));
                    return Err(frame_break(e, next_key).into());
                }
            };
            let last_seq = header.first_seq + u64::from(header.count) - 1;
            head = Head {
                seq: last_seq,
                hash: last,
            };
            if stop {
                break;
            }
            expected = Some((last_seq + 1, last));
        }
        Ok(head)
    }

    /// Writes frames (already chained) in one atomic sled batch.
    pub fn write_frames(&self, frames: Vec<(u64, Vec<u8>)>) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for (seq, bytes) in frames {
            batch.insert(&frame_key(seq), bytes);
        }
        self.log.apply_batch(batch)
    }

    /// Writes index entries (each id's in frame order), then adds them to
    /// their ids' summaries and moves the index high-water mark to `hwm` in
    /// one atomic batch of `meta`: a crash between the two leaves the mark
    /// and the summaries where they were, and the rebuild on open rewrites
    /// the entries past the mark (identical) and adds them once.
    pub fn write_index(&self, entries: Vec<IndexEntry>, hwm: u64) -> Result<(), sled::Error> {
        let mut runs = sled::Batch::default();
        let mut tenants = sled::Batch::default();
        let mut meta = sled::Batch::default();
        let mut summaries: rustc_hash::FxHashMap<(IndexKind, &str), IndexSummary> =
            rustc_hash::FxHashMap::default();
        for entry in &entries {
            let batch = match entry.kind {
                IndexKind::Run => &mut runs,
                IndexKind::Tenant => &mut tenants,
            };
            batch.insert(
                index_key(&entry.id, entry.frame_seq),
                index_value(&entry.offsets),
            );
            let summary = match summaries.entry((entry.kind, &entry.id)) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let stored = self.meta.get(summary_key(entry.kind, &entry.id))?;
                    v.insert(
                        stored
                            .and_then(|v| IndexSummary::decode(&v))
                            .unwrap_or_default(),
                    )
                }
            };
            summary.push(entry.frame_seq, &entry.offsets);
        }
        for ((kind, id), summary) in summaries {
            meta.insert(summary_key(kind, id), &summary.encode()[..]);
        }
        meta.insert(INDEX_HWM_KEY, &hwm.to_be_bytes());
        meta.insert(INDEX_FORMAT_KEY, INDEX_FORMAT);
        self.by_run.apply_batch(runs)?;
        self.by_tenant.apply_batch(tenants)?;
        self.meta.apply_batch(meta)
    }

    /// The seq up to which the indices list every record: 0 when they
    /// predate summaries (rebuilt on the next writable open).
    pub fn index_hwm(&self) -> u64 {
        match self.meta.get(INDEX_FORMAT_KEY) {
            Ok(Some(v)) if v.as_ref() == INDEX_FORMAT => {}
            _ => return 0,
        }
        match self.meta.get(INDEX_HWM_KEY) {
            Ok(Some(v)) => key_seq(&v).unwrap_or(0),
            _ => 0,
        }
    }

    /// Drops every index entry and summary (rebuilt from the log on the
    /// next writable open, or by [`crate::log::replay::rebuild_index`]).
    pub fn clear_index(&self) -> Result<(), sled::Error> {
        self.meta.remove(INDEX_FORMAT_KEY)?;
        self.meta.remove(INDEX_HWM_KEY)?;
        self.by_run.clear()?;
        self.by_tenant.clear()?;
        for key in self.meta.scan_prefix(SUMMARY_PREFIX).keys() {
            self.meta.remove(key?)?;
        }
        Ok(())
    }

    /// The raw index tree of `kind`, for tools that inspect or (in tests)
    /// damage it.
    pub fn index_tree(&self, kind: IndexKind) -> &sled::Tree {
        match kind {
            IndexKind::Run => &self.by_run,
            IndexKind::Tenant => &self.by_tenant,
        }
    }

    fn summary(&self, kind: IndexKind, id: &str) -> Result<Option<IndexSummary>, WalkError> {
        match self.meta.get(summary_key(kind, id))? {
            None => Ok(None),
            Some(v) => match IndexSummary::decode(&v) {
                Some(summary) => Ok(Some(summary)),
                None => Err(IndexBreak {
                    index: kind.tree_name(),
                    id: id.to_owned(),
                    what: "its summary cannot be decoded".to_owned(),
                }
                .into()),
            },
        }
    }

    /// Frames holding records of `id`, with the offsets of those records in
    /// each frame, in seq order, checked against the id's summary. `None`
    /// when the indices cannot answer — they lag behind the log or predate
    /// summaries, or `id` has no summary (never indexed, or its entries and
    /// summary were all removed) — and the caller must walk the log.
    pub fn indexed_frames(
        &self,
        kind: IndexKind,
        id: &str,
    ) -> Result<Option<IndexedFrames>, WalkError> {
        if self.index_hwm() < self.head()?.seq {
            return Ok(None);
        }
        let tree = self.index_tree(kind);
        let summary = self.summary(kind, id)?;
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(INDEX_SEPARATOR);
        let broken = |what: String| IndexBreak {
            index: kind.tree_name(),
            id: id.to_owned(),
            what,
        };
        let mut out = Vec::new();
        let mut found = IndexSummary::default();
        for item in tree.scan_prefix(&prefix) {
            let (key, value) = item?;
            let Some(seq) = key_seq(&key[prefix.len()..]) else {
                return Err(broken("a key does not end in a seq".to_owned()).into());
            };
            let Some(offsets) = decode_offsets(&value) else {
                return Err(broken(format!("its entry for frame {seq} cannot be decoded")).into());
            };
            found.push(seq, &offsets);
            out.push((seq, offsets));
        }
        match summary {
            None if out.is_empty() => Ok(None),
            None => Err(broken("its entries have no summary".to_owned()).into()),
            Some(summary) if summary != found => Err(broken(format!(
                "its entries list {} records where its summary counts {}{}",
                found.records,
                summary.records,
                if found.records == summary.records {
                    " but other ones"
                } else {
                    ""
                }
            ))
            .into()),
            Some(_) => Ok(Some(out)),
        }
    }

    pub fn write_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), sled::Error> {
        let bytes = bincode::encode_to_vec(checkpoint, CONFIG).unwrap_or_default();
        self.checkpoints.insert(frame_key(checkpoint.seq), bytes)?;
        Ok(())
    }

    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, ChainBreak> {
        let mut out = Vec::new();
        for item in self.checkpoints.iter() {
            let (key, value) = item.map_err(|e| ChainBreak {
                seq: 0,
                what: format!("cannot read checkpoints: {e}"),
            })?;
            let seq = key_seq(&key).unwrap_or(0);
            let (checkpoint, _): (Checkpoint, usize) = bincode::decode_from_slice(&value, CONFIG)
                .map_err(|e| ChainBreak {
                seq,
                what: format!("checkpoint cannot be decoded: {e}"),
            })?;
            out.push(checkpoint);
        }
        Ok(out)
    }

    /// Records a published checkpoint (replacing one at the same seq).
    pub fn write_published(&self, checkpoint: PublishedCheckpoint) -> Result<(), sled::Error> {
        let bytes = bincode::encode_to_vec(checkpoint, CONFIG).unwrap_or_default();
        let tree = self.db.open_tree(PUBLISHED_TREE)?;
        tree.insert(frame_key(checkpoint.seq), bytes)?;
        Ok(())
    }

    /// The published checkpoints in seq order (none in a ledger that never
    /// had one: the tree is not created by reading).
    pub fn published(&self) -> Result<Vec<PublishedCheckpoint>, ChainBreak> {
        let unreadable = |seq, what: String| ChainBreak { seq, what };
        if !self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == PUBLISHED_TREE)
        {
            return Ok(Vec::new());
        }
        let tree = self
            .db
            .open_tree(PUBLISHED_TREE)
            .map_err(|e| unreadable(0, format!("cannot read published checkpoints: {e}")))?;
        let mut out = Vec::new();
        for item in tree.iter() {
            let (key, value) =
                item.map_err(|e| unreadable(0, format!("cannot read published checkpoints: {e}")))?;
            let seq = key_seq(&key).unwrap_or(0);
            let (checkpoint, used): (PublishedCheckpoint, usize) =
                bincode::decode_from_slice(&value, CONFIG).map_err(|e| {
                    unreadable(seq, format!("published checkpoint cannot be decoded: {e}"))
                })?;
            if used != value.len() {
                return Err(unreadable(
                    seq,
                    format!(
                        "published checkpoint cannot be decoded: {} bytes where its layout has {used}",
                        value.len()
                    ),
                ));
            }
            if checkpoint.seq != seq {
                return Err(unreadable(
                    seq,
                    format!(
                        "the published checkpoint stored at seq {seq} names seq {}",
                        checkpoint.seq
                    ),
                ));
            }
            out.push(checkpoint);
        }
        Ok(out)
    }

    /// The raw `published` tree, for tests that damage it.
    pub fn published_tree(&self) -> Result<sled::Tree, sled::Error> {
        self.db.open_tree(PUBLISHED_TREE)
    }

    /// Flushes sled's buffers and, with `sync`, fsyncs its data file: sled's
    /// own flush ends in `sync_file_range`, which leaves the drive cache and
    /// the file's metadata unflushed.
    pub fn flush(&self, sync: bool) -> Result<(), StoreError> {
        self.db.flush().map_err(|source| StoreError::Sled {
            path: self.dir.clone(),
            source,
        })?;
        if sync {
            self.sync_blobs().map_err(|source| StoreError::Io {
                path: self.dir.join("blobs"),
                source,
            })?;
            self.data_file
                .sync_data()
                .map_err(|source| StoreError::Io {
                    path: self.dir.join("db"),
                    source,
                })?;
        }
        Ok(())
    }

    /// Fsyncs the blob files sled wrote since the last call, and their
    /// directory. sled stores a page over its blob threshold (segment size
    /// / 4 = 128 KiB: a frame holding a large event, or a leaf holding
    /// one) in a file of its own under `blobs/`, written without fsync;
    /// the segment that points at it is made durable by the flush, so the
    /// blob must be too. Blob files are written before the flush that
    /// covers them, so after it every blob a durable record needs is here.
    /// Costs one directory read when there are none.
    fn sync_blobs(&self) -> std::io::Result<()> {
        let dir = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut present = std::collections::BTreeSet::new();
        let mut new = false;
        for entry in entries {
            let name = entry?.file_name();
            if !synced.contains(&name) {
                match std::fs::File::open(dir.join(&name)) {
                    Ok(file) => file.sync_all()?,
                    // Collected by sled's GC meanwhile: nothing points at it.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            std::fs::File::open(&dir)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }

    /// Bytes the database occupies on disk.
    pub fn disk_bytes(&self) -> u64 {
        dir_size(&self.dir)
    }
}

/// A new ledger's id: 32 hex digits, random.
fn new_ledger_id() -> String {
    let id: [u8; 16] = rand::random();
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_lock_error(error: &std::io::Error) -> bool {
    error.to_string().contains("lock")
}

/// Is the frame stored at `key_seq` the one expected next?
fn check_gap(key_seq: u64, expected: Option<(u64, blake3::Hash)>) -> Result<(), ChainBreak> {
    let Some((next, _)) = expected else {
        return Ok(());
    };
    if key_seq > next {
        let what = if key_seq == next + 1 {
            format!("record {next} is missing")
        } else {
            format!("records {next}..{} are missing", key_seq - 1)
        };
        return Err(ChainBreak { seq: next, what });
    }
    if key_seq < next {
        return Err(ChainBreak {
            seq: key_seq,
            what: format!("seq {key_seq} appears twice"),
        });
    }
    Ok(())
}

/// Does the frame's header fit its key and the hash before it?
fn check_link(
    header: &FrameHeader,
    key_seq: u64,
    expected: Option<(u64, blake3::Hash)>,
) -> Result<(), ChainBreak> {
    if header.first_seq != key_seq {
        return Err(ChainBreak {
            seq: key_seq,
            what: format!(
                "the frame stored at seq {key_seq} holds seq {} (records were moved)",
                header.first_seq
            ),
        });
    }
    if header.count == 0 {
        return Err(ChainBreak {
            seq: key_seq,
            what: "empty frame".to_owned(),
        });
    }
    let Some((_, prev)) = expected else {
        return Ok(());
    };
    if header.prev_hash != *prev.as_bytes() {
        return Err(ChainBreak {
            seq: key_seq,
            what: format!(
                "prev_hash does not match the hash of seq {}",
                key_seq.saturating_sub(1)
            ),
        });
    }
    Ok(())
}

/// Turns a frame's inner error into the first bad seq. A frame whose records
/// all match their tags but whose end hash does not, followed by a frame
/// that starts past its end, lost records from its end.
fn frame_break(error: super::frame::FrameError, next_key: Option<u64>) -> ChainBreak {
    if error.end_mismatch {
        if let Some(next) = next_key {
            if next > error.seq + 1 {
                return ChainBreak {
                    seq: error.seq + 1,
                    what: format!(
                        "record {} is missing (cut from the end of its frame)",
                        error.seq + 1
                    ),
                };
            }
        }
    }
    ChainBreak {
        seq: error.seq,
        what: error.what,
    }
}

pub(crate) fn index_key(id: &str, frame_seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 9);
    key.extend_from_slice(id.as_bytes());
    key.push(INDEX_SEPARATOR);
    key.extend_from_slice(&frame::frame_key(frame_seq));
    key
}

pub(crate) fn index_value(offsets: &[u32]) -> Vec<u8> {
    bincode::encode_to_vec(offsets, CONFIG).unwrap_or_default()
}

/// Collects index entries: for each run and tenant id, the `(frame seq,
/// offset in frame)` of its records, in seq order. Ids are interned into
/// slots, so a record costs no allocation unless its id is new.
#[derive(Default)]
pub(crate) struct IndexBuilder {
    runs: rustc_hash::FxHashMap<String, u32>,
    tenants: rustc_hash::FxHashMap<String, u32>,
    slots: Vec<IndexSlot>,
}

/// One id's index entries: `(frame seq, offset in frame)` per record.
type IndexSlot = (IndexKind, String, Vec<(u64, u32)>);

impl IndexBuilder {
    /// The slot of `id`, created if new.
    pub(crate) fn slot(&mut self, kind: IndexKind, id: &str) -> u32 {
        let map = match kind {
            IndexKind::Run => &mut self.runs,
            IndexKind::Tenant => &mut self.tenants,
        };
        if let Some(&slot) = map.get(id) {
            return slot;
        }
        let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        map.insert(id.to_owned(), slot);
        self.slots.push((kind, id.to_owned(), Vec::new()));
        slot
    }

    pub(crate) fn push(&mut self, slot: u32, place: (u64, u32)) {
        if let Some(entry) = self.slots.get_mut(slot as usize) {
            entry.2.push(place);
        }
    }

    pub(crate) fn add(&mut self, kind: IndexKind, id: &str, place: (u64, u32)) {
        let slot = self.slot(kind, id);
        self.push(slot, place);
    }

    /// The index entries (one per id and frame, each id's in frame order),
    /// leaving the builder empty.
    pub(crate) fn take(&mut self) -> Vec<IndexEntry> {
        let mut out = Vec::new();
        for (kind, id, places) in self.slots.drain(..) {
            for chunk in places.chunk_by(|a, b| a.0 == b.0) {
                out.push(IndexEntry {
                    kind,
                    id: id.clone(),
                    frame_seq: chunk[0].0,
                    offsets: chunk.iter().map(|p| p.1).collect(),
                });
            }
        }
        self.runs.clear();
        self.tenants.clear();
        out
    }
}

impl Store {
    /// Visits, in seq order from `from_seq`, the records that every filter's
    /// index lists. Each filter's entries are checked against its summary
    /// (a damaged index is an [`IndexBreak`]); each frame read is checked
    /// against its key and linked to the frame before it, and its hashes
    /// inside. Returns `None` when an index cannot answer (the indices lag
    /// behind the log after a crash between the two writes, predate
    /// summaries, or know nothing of an id): the caller then walks the
    /// whole log instead.
    pub fn walk_indexed(
        &self,
        filters: &[(IndexKind, &str)],
        from_seq: u64,
        mut visit: impl FnMut(RawRecord<'_>) -> ControlFlow<()>,
    ) -> Result<Option<()>, WalkError> {
        if filters.is_empty() {
            return Ok(None);
        }
        let mut lists = Vec::with_capacity(filters.len());
        for (kind, id) in filters {
            let Some(frames) = self.indexed_frames(*kind, id)? else {
                return Ok(None);
            };
            lists.push(
                frames
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            );
        }
        let (first, rest) = lists
            .split_first()
            .unwrap_or_else(|| unreachable!("filters is not empty"));
        // The end of the frame read last: the next frame read, if it is the
        // one right after, links to it without reading the one before.
        let mut after: Option<(u64, blake3::Hash)> = None;
        for (frame_seq, offsets) in first {
            let mut wanted: Vec<u32> = offsets.clone();
            for other in rest {
                let theirs = other.get(frame_seq).map(Vec::as_slice).unwrap_or(&[]);
                wanted.retain(|o| theirs.contains(o));
            }
            if wanted.is_empty() {
                continue;
            }
            let value = self.linked_frame(*frame_seq, &mut after)?;
            let (header, entries) = decode_header(&value).map_err(|what| ChainBreak {
                seq: *frame_seq,
                what: format!("frame cannot be decoded: {what}"),
            })?;
            if let Some(past) = wanted.iter().find(|o| **o >= header.count) {
                let (kind, id) = filters[0];
                return Err(IndexBreak {
                    index: kind.tree_name(),
                    id: id.to_owned(),
                    what: format!(
                        "it lists seq {}, past the end of the frame at seq {frame_seq}",
                        frame_seq + u64::from(*past)
                    ),
                }
                .into());
            }
            let mut stop = false;
            walk_frame(&header, entries, |record| {
                let offset = u32::try_from(record.seq - record.frame_seq).unwrap_or(u32::MAX);
                if !stop
                    && record.seq >= from_seq
                    && wanted.contains(&offset)
                    && visit(record).is_break()
                {
                    stop = true;
                }
            })
            .map_err(|e| ChainBreak {
                seq: e.seq,
                what: e.what,
            })?;
            if stop {
                break;
            }
        }
        Ok(Some(()))
    }

    /// Reads the frame stored at `frame_seq` for an indexed read and checks
    /// that it is the chain's: its header names that seq, and it links to
    /// the frame before it (`after`, the end of the frame read last, when
    /// that is the one right before; else read here). Leaves its end in
    /// `after`.
    fn linked_frame(
        &self,
        frame_seq: u64,
        after: &mut Option<(u64, blake3::Hash)>,
    ) -> Result<sled::IVec, WalkError> {
        let Some(value) = self.log.get(frame_key(frame_seq))? else {
            return Err(ChainBreak {
                seq: frame_seq,
                what: "an indexed frame is missing from the log".to_owned(),
            }
            .into());
        };
        let expected = match *after {
            Some((next, hash)) if next == frame_seq => (next, hash),
            _ if frame_seq <= 1 => (1, ZERO_HASH),
            _ => match self.log.range(..frame_key(frame_seq)).next_back() {
                None => (1, ZERO_HASH),
                Some(item) => {
                    let (key, before) = item?;
                    let seq = key_seq(&key).unwrap_or(0);
                    let (header, _) = decode_header(&before).map_err(|what| ChainBreak {
                        seq,
                        what: format!("frame cannot be decoded: {what}"),
                    })?;
                    (
                        header.first_seq + u64::from(header.count),
                        blake3::Hash::from_bytes(header.last_hash),
                    )
                }
            },
        };
        check_gap(frame_seq, Some(expected))?;
        let (header, _) = decode_header(&value).map_err(|what| ChainBreak {
            seq: frame_seq,
            what: format!("frame cannot be decoded: {what}"),
        })?;
        check_link(&header, frame_seq, Some(expected))?;
        *after = Some((
            frame_seq + u64::from(header.count),
            blake3::Hash::from_bytes(header.last_hash),
        ));
        Ok(value)
    }

    /// The first check of the indices against the log: `expected` is the
    /// summary the log gives each id (with the id's first seq). Every
    /// stored summary must equal it, and every id's stored entries must
    /// add up to its stored summary — together, the entries are the log's
    /// (up to a blake3 collision). Returns the ids that fail, for
    /// [`Store::compare_index`] to name the seq; an index key that is not
    /// `id ‖ 0xFF ‖ seq` is a break of its own. Indices that lag behind
    /// `head` or predate summaries are not used by reads (they are rebuilt
    /// on the next writable open) and pass.
    pub fn check_summaries(
        &self,
        expected: &std::collections::BTreeMap<(IndexKind, String), IndexSummary>,
        head: u64,
    ) -> Result<Result<Vec<(IndexKind, String)>, ChainBreak>, sled::Error> {
        let mut bad = std::collections::BTreeSet::new();
        if self.index_hwm() < head || head == 0 {
            return Ok(Ok(Vec::new()));
        }
        for kind in IndexKind::ALL {
            let mut stored = std::collections::BTreeMap::new();
            for item in self.meta.scan_prefix(summary_prefix(kind)) {
                let (key, value) = item?;
                let id = String::from_utf8_lossy(&key[SUMMARY_PREFIX.len() + 1..]).into_owned();
                stored.insert(id, IndexSummary::decode(&value));
            }
            // Each id's entries are consecutive in key order.
            let mut current: Option<(String, IndexSummary)> = None;
            let mut close = |current: Option<(String, IndexSummary)>| {
                if let Some((id, found)) = current {
                    if stored.get(&id) != Some(&Some(found)) {
                        bad.insert((kind, id));
                    }
                }
            };
            for item in self.index_tree(kind).iter() {
                let (key, value) = item?;
                let Some((id, frame_seq)) = parse_index_key(&key) else {
                    return Ok(Err(ChainBreak {
                        seq: 0,
                        what: format!(
                            "the {} index holds a key that is not an id and a seq",
                            kind.tree_name()
                        ),
                    }));
                };
                if current.as_ref().is_none_or(|(c, _)| c != id) {
                    close(current.take());
                    current = Some((id.to_owned(), IndexSummary::default()));
                }
                if let Some((_, summary)) = current.as_mut() {
                    match decode_offsets(&value) {
                        Some(offsets) => summary.push(frame_seq, &offsets),
                        None => summary.records = u64::MAX,
                    }
                }
            }
            close(current);
            for (id, summary) in &stored {
                if expected.get(&(kind, id.clone())) != summary.as_ref() {
                    bad.insert((kind, id.clone()));
                }
            }
            for (k, id) in expected.keys() {
                if *k == kind && !stored.contains_key(id) {
                    bad.insert((kind, id.clone()));
                }
            }
        }
        Ok(Ok(bad.into_iter().collect()))
    }

    /// Compares the stored entries and summaries of `ids` with `expected`
    /// (every entry the log gives those ids, as [`IndexBuilder`] makes
    /// them from seq 1): `Err` names the index, the id and the first seq
    /// where they differ.
    pub fn compare_index(
        &self,
        expected: Vec<IndexEntry>,
        ids: &[(IndexKind, String)],
    ) -> Result<Result<(), ChainBreak>, sled::Error> {
        type Key = (IndexKind, String, u64);
        let mut want: std::collections::BTreeMap<Key, Vec<u32>> = std::collections::BTreeMap::new();
        let mut summaries: std::collections::BTreeMap<(IndexKind, String), (IndexSummary, u64)> =
            std::collections::BTreeMap::new();
        for e in expected {
            let first = e.frame_seq + u64::from(e.offsets.first().copied().unwrap_or(0));
            let (summary, _) = summaries
                .entry((e.kind, e.id.clone()))
                .or_insert((IndexSummary::default(), first));
            summary.push(e.frame_seq, &e.offsets);
            want.insert((e.kind, e.id, e.frame_seq), e.offsets);
        }
        // Every difference as (seq, what); the first by seq is reported.
        let mut found: Option<(u64, String)> = None;
        let mut note = |seq: u64, what: String| {
            if found.as_ref().is_none_or(|(s, _)| seq < *s) {
                found = Some((seq, what));
            }
        };
        for (kind, id) in ids {
            let (index, noun) = (kind.tree_name(), kind.noun());
            let mut prefix = id.as_bytes().to_vec();
            prefix.push(INDEX_SEPARATOR);
            for item in self.index_tree(*kind).scan_prefix(&prefix) {
                let (key, value) = item?;
                let Some((_, frame_seq)) = parse_index_key(&key) else {
                    continue;
                };
                let expected = want
                    .remove(&(*kind, id.clone(), frame_seq))
                    .unwrap_or_default();
                let Some(offsets) = decode_offsets(&value) else {
                    note(
                        frame_seq,
                        format!(
                            "the {index} entry of {noun} `{id}` for the frame at this seq cannot be decoded"
                        ),
                    );
                    continue;
                };
                if let Some(extra) = offsets.iter().find(|o| !expected.contains(o)) {
                    note(
                        frame_seq + u64::from(*extra),
                        format!(
                            "the {index} index lists this record under {noun} `{id}`, which the log does not"
                        ),
                    );
                }
                if let Some(missing) = expected.iter().find(|o| !offsets.contains(o)) {
                    note(
                        frame_seq + u64::from(*missing),
                        format!("the {index} index does not list this record of {noun} `{id}`"),
                    );
                }
            }
            let (expected, first) = summaries
                .remove(&(*kind, id.clone()))
                .unwrap_or((IndexSummary::default(), 0));
            let stored = self.meta.get(summary_key(*kind, id))?;
            let stored = stored.as_deref().map(IndexSummary::decode);
            let what = match stored {
                None if expected.records > 0 => Some("is missing"),
                Some(s) if s != Some(expected) => Some("does not match the log"),
                _ => None,
            };
            if let Some(what) = what {
                note(
                    first,
                    format!("the {index} summary of {noun} `{id}` {what}"),
                );
            }
        }
        for ((kind, id, frame_seq), offsets) in want {
            let seq = frame_seq + u64::from(offsets.first().copied().unwrap_or(0));
            note(
                seq,
                format!(
                    "the {} index does not list this record of {} `{id}`",
                    kind.tree_name(),
                    kind.noun()
                ),
            );
        }
        Ok(match found {
            None => Ok(()),
            Some((seq, what)) => Err(ChainBreak { seq, what }),
        })
    }
}

fn summary_prefix(kind: IndexKind) -> Vec<u8> {
    let mut prefix = SUMMARY_PREFIX.to_vec();
    prefix.push(kind.tag());
    prefix
}

/// A record read back with its event decoded.
#[derive(Clone, Debug)]
pub struct DecodedRecord {
    pub seq: u64,
    pub frame_seq: u64,
    pub recorded_at: crate::domain::Timestamp,
    pub hash: blake3::Hash,
    pub event: crate::domain::Event,
}

/// Frames read per parallel step (about 70 records each).
const CHUNK_FRAMES: usize = 512;

/// A frame read on a worker thread: its header, then its records.
struct FrameRead<T> {
    header: Result<FrameHeader, ChainBreak>,
    records: Result<Vec<T>, super::frame::FrameError>,
}

fn decode_frame<T>(
    seq: u64,
    value: &[u8],
    map: &(impl Fn(RawRecord<'_>) -> Result<T, String> + Sync),
) -> FrameRead<T> {
    let (header, entries) = match decode_header(value) {
        Ok(decoded) => decoded,
        Err(what) => {
            return FrameRead {
                header: Err(ChainBreak {
                    seq,
                    what: format!("frame cannot be decoded: {what}"),
                }),
                records: Ok(Vec::new()),
            };
        }
    };
    // The count is untrusted until the frame verifies: an entry takes at
    // least ten bytes, so never reserve more than the bytes allow.
    let mut records = Vec::with_capacity((header.count as usize).min(entries.len() / 10));
    let mut bad: Option<super::frame::FrameError> = None;
    let walked = walk_frame(&header, entries, |raw| {
        if bad.is_some() {
            return;
        }
        match map(raw) {
            Ok(item) => records.push(item),
            Err(what) => {
                bad = Some(super::frame::FrameError {
                    seq: raw.seq,
                    what,
                    end_mismatch: false,
                })
            }
        }
    });
    let records = match (walked, bad) {
        (_, Some(bad)) => Err(bad),
        (Err(e), None) => Err(e),
        (Ok(_), None) => Ok(records),
    };
    FrameRead {
        header: Ok(header),
        records,
    }
}

/// Decodes a record's event: the `map` of [`Store::read_chain`] for folds.
pub fn decode_record(raw: RawRecord<'_>) -> Result<DecodedRecord, String> {
    let event = super::codec::decode_event(raw.event_bytes)
        .map_err(|what| format!("event cannot be decoded: {what}"))?;
    Ok(DecodedRecord {
        seq: raw.seq,
        frame_seq: raw.frame_seq,
        recorded_at: raw.recorded_at,
        hash: raw.hash,
        event,
    })
}

impl Store {
    /// Reads the whole chain from seq 1 with every hash and link checked.
    /// Frames are hashed on all cores and each record goes through `map`
    /// there (an `Err` is a break at that seq); `sink` gets the results on
    /// the calling thread, in seq order, one `Vec` per frame. Stops at the
    /// first break, after handing `sink` the good frames before it.
    pub fn read_chain<T: Send>(
        &self,
        map: impl Fn(RawRecord<'_>) -> Result<T, String> + Sync,
        mut sink: impl FnMut(Vec<Vec<T>>),
    ) -> Result<Head, WalkError> {
        use rayon::prelude::*;
        let (tx, rx) = mpsc::sync_channel::<Result<Vec<Vec<T>>, WalkError>>(2);
        let map = &map;
        std::thread::scope(|scope| {
            let producer = scope.spawn(move || -> Head {
                let mut expected = Some((1u64, ZERO_HASH));
                let mut head = Head::EMPTY;
                let mut frames = self.log.iter().peekable();
                loop {
                    let mut chunk = Vec::with_capacity(CHUNK_FRAMES);
                    for item in frames.by_ref().take(CHUNK_FRAMES) {
                        match item {
                            Ok((key, value)) => match key_seq(&key) {
                                Some(seq) => chunk.push((seq, value)),
                                None => {
                                    let what = "a log key is not a seq".to_owned();
                                    let seq = expected.map_or(0, |e| e.0);
                                    let _ = tx.send(Err(ChainBreak { seq, what }.into()));
                                    return head;
                                }
                            },
                            Err(e) => {
                                let _ = tx.send(Err(e.into()));
                                return head;
                            }
                        }
                    }
                    if chunk.is_empty() {
                        return head;
                    }
                    let after = frames
                        .peek()
                        .and_then(|i| i.as_ref().ok())
                        .and_then(|(k, _)| key_seq(k));
                    let decoded: Vec<FrameRead<T>> = chunk
                        .par_iter()
                        .map(|(seq, v)| decode_frame(*seq, v, map))
                        .collect();
                    let mut good = Vec::new();
                    let mut failure = None;
                    for (i, frame) in decoded.into_iter().enumerate() {
                        let seq = chunk[i].0;
                        let next_key = chunk.get(i + 1).map(|c| c.0).or(after);
                        let checked = check_gap(seq, expected).and_then(|()| {
                            let header = frame.header?;
                            check_link(&header, seq, expected)?;
                            let records = frame.records.map_err(|e| frame_break(e, next_key))?;
                            Ok((header, records))
                        });
                        match checked {
                            Ok((header, records)) => {
                                let last_seq = header.first_seq + u64::from(header.count) - 1;
                                head = Head {
                                    seq: last_seq,
                                    hash: blake3::Hash::from_bytes(header.last_hash),
                                };
                                expected = Some((last_seq + 1, head.hash));
                                good.push(records);
                            }
                            Err(b) => {
                                failure = Some(b);
                                break;
                            }
                        }
                    }
                    if !good.is_empty() && tx.send(Ok(good)).is_err() {
                        return head;
                    }
                    if let Some(b) = failure {
                        let _ = tx.send(Err(b.into()));
                        return head;
                    }
                }
            });
            let mut failure = None;
            for item in rx {
                match item {
                    Ok(records) => sink(records),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let head = producer.join().unwrap_or(Head::EMPTY);
            match failure {
                Some(e) => Err(e),
                None => Ok(head),
            }
        })
    }
}
