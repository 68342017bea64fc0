//! The data directory on disk, before sled sees it: what it holds (nothing,
//! a runledger ledger, something else), the `RUNLEDGER` marker that names a
//! ledger even when sled cannot read it, whether sled may open it in place,
//! and the scratch copy a read opens when it may not.
//!
//! sled 0.34 has no read-only mode: opening a database runs its recovery,
//! which writes (the tail of the last segment, a new `snap.<lsn>` file).
//! On a full disk that snapshot is left torn as `snap.<lsn>.generating`,
//! and sled's next open takes the torn file for its newest snapshot and
//! refuses the database for good ("Read corrupted data"). So a ledger is
//! opened in place only on a writable filesystem with at least
//! [`DISK_FREE_BYTES_MIN`] free: below that a write is refused before sled
//! runs, and a read opens a private copy in the temporary directory (under
//! the original's lock), so the original is never written. sled renames a
//! snapshot into place once it is complete, so a `.generating` file is one
//! that never was: it is removed before an open in place, and never copied.
//!
//! A directory is never taken over: sled opens only an empty directory, one
//! with the marker, or (a ledger from before the marker) one holding sled's
//! `conf` beside its `db`.
//!
//! Every open locks the directory itself ([`DirLock`], a `flock`) before
//! looking at it and holds it while sled is open, so two commands never
//! both take an empty directory for theirs. A new ledger that is discarded
//! (its command refused before the first append) loses only the names
//! runledger and sled make, and the directories its open made, each while
//! empty; a command that lost sled's lock to another removes nothing.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::domain::limits::DISK_FREE_BYTES_MIN;

/// Why a ledger directory cannot be opened or read, from its inspection
/// here to sled's own errors ([`super::store`] opens with it).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no ledger at {0}")]
    Missing(PathBuf),
    #[error("{path} is not a runledger ledger: {why}")]
    Foreign { path: PathBuf, why: String },
    /// Ours (the marker, or sled's files) but unreadable: a failed check.
    #[error("the ledger at {path} is damaged ({known}): {why}")]
    Damaged {
        path: PathBuf,
        known: String,
        why: String,
    },
    #[error(
        "no space to write the ledger at {path}: its disk is full ({} free, at least {} needed); free some space and retry",
        bytes(*free),
        bytes(*need)
    )]
    NoSpace { path: PathBuf, free: u64, need: u64 },
    #[error("the ledger at {path} is read-only ({why}): it can be read, not written")]
    ReadOnly { path: PathBuf, why: String },
    #[error("cannot read the ledger at {path} without writing to it: {why}")]
    Scratch { path: PathBuf, why: String },
    #[error("the ledger at {0} is in use by another process")]
    Locked(PathBuf),
    #[error("storage error in {path}: {source}")]
    Sled { path: PathBuf, source: sled::Error },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The bytes under `dir`, every file of every directory below it.
pub(crate) fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The marker file a ledger directory holds: the format and the ledger id.
pub const MARKER: &str = "RUNLEDGER";

/// The marker being written, renamed over [`MARKER`] once whole.
const MARKER_TEMP: &str = "RUNLEDGER.new";

/// The format of the ledger (the marker's first line, and `meta`'s).
pub const FORMAT: &str = "runledger-ledger/1";

/// What the marker says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub format: String,
    pub ledger_id: Option<String>,
}

impl Marker {
    fn text(ledger_id: &str) -> String {
        format!("{FORMAT}\nledger {ledger_id}\n")
    }

    fn parse(text: &str) -> Marker {
        let mut lines = text.lines();
        let format = lines.next().unwrap_or_default().trim().to_owned();
        let ledger_id = lines
            .find_map(|l| l.trim().strip_prefix("ledger "))
            .map(|id| id.trim().to_owned());
        Marker { format, ledger_id }
    }
}

/// What a data directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    /// No directory there.
    Absent,
    /// An empty directory.
    Empty,
    /// A runledger ledger: with its marker, or (older ledgers) recognised
    /// by sled's `conf` and `db`.
    Ledger { marker: Option<Marker> },
}

impl Contents {
    /// What is known of the ledger without opening it, for a "damaged"
    /// message.
    pub fn known(&self) -> String {
        match self {
            Contents::Ledger {
                marker: Some(marker),
            } => format!(
                "format {}, ledger id {}",
                marker.format,
                marker.ledger_id.as_deref().unwrap_or("unknown")
            ),
            _ => format!(
                "no {MARKER} marker: a ledger from before markers, recognised by sled's conf and db; format and ledger id unknown"
            ),
        }
    }
}

/// Looks at `dir` without writing: a foreign directory is an error, and so
/// is a marked one without its sled database (damaged).
pub fn inspect(dir: &Path) -> Result<Contents, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let foreign = |why: &str| StoreError::Foreign {
        path: dir.to_path_buf(),
        why: why.to_owned(),
    };
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contents::Absent),
        Err(e) => return Err(io(e)),
    };
    if !meta.is_dir() {
        return Err(foreign("it is not a directory"));
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        names.push(entry.map_err(io)?.file_name());
    }
    if names.is_empty() {
        return Ok(Contents::Empty);
    }
    let has = |name: &str| names.iter().any(|n| n == name);
    if has(MARKER) {
        let text = std::fs::read(dir.join(MARKER)).map_err(io)?;
        let marker = Marker::parse(&String::from_utf8_lossy(&text));
        if marker.format != FORMAT {
            return Err(foreign(&format!(
                "its {MARKER} file names the format `{}`, not {FORMAT}",
                marker.format
            )));
        }
        let contents = Contents::Ledger {
            marker: Some(marker),
        };
        if !has("db") {
            return Err(StoreError::Damaged {
                path: dir.to_path_buf(),
                known: contents.known(),
                why: "its sled database (db) is missing".to_owned(),
            });
        }
        return Ok(contents);
    }
    match (has("db"), has("conf")) {
        (true, true) if is_sled_conf(&dir.join("conf")) => Ok(Contents::Ledger { marker: None }),
        (true, true) => Err(foreign(
            "its `conf` is not sled's, so its `db` is not a sled database",
        )),
        (true, false) => Err(foreign(
            "its `db` is not a sled database (there is no sled `conf` beside it)",
        )),
        _ => Err(foreign(
            "the directory is not empty and holds no runledger ledger",
        )),
    }
}

/// sled's `conf`: `segment_size: N` … as text, then a 4-byte checksum.
fn is_sled_conf(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    bytes.len() > 4
        && bytes.len() < 4096
        && std::str::from_utf8(&bytes[..bytes.len() - 4])
            .is_ok_and(|t| t.starts_with("segment_size: ") && t.contains("\nversion: "))
}

/// Why a ledger may not be written in place.
#[derive(Clone, Debug)]
pub enum Unwritable {
    /// Less than the margin free.
    NoSpace { free: u64, need: u64 },
    /// A read-only filesystem or files we may not write.
    ReadOnly(String),
}

impl Unwritable {
    pub fn into_error(self, dir: &Path) -> StoreError {
        match self {
            Unwritable::NoSpace { free, need } => StoreError::NoSpace {
                path: dir.to_path_buf(),
                free,
                need,
            },
            Unwritable::ReadOnly(why) => StoreError::ReadOnly {
                path: dir.to_path_buf(),
                why,
            },
        }
    }
}

impl std::fmt::Display for Unwritable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unwritable::NoSpace { free, need } => write!(
                f,
                "its disk is full: {} free, {} needed",
                bytes(*free),
                bytes(*need)
            ),
            Unwritable::ReadOnly(why) => write!(f, "it is read-only ({why})"),
        }
    }
}

/// Bytes for people: `0 bytes`, `12.0 KiB`, `64.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The nearest existing directory at or above `path`.
fn existing_ancestor(path: &Path) -> &Path {
    let mut at = path;
    while !at.exists() {
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => return Path::new("."),
        }
    }
    at
}

/// May sled write in `dir` (or, when it does not exist yet, create it)
/// with `extra` bytes to spare on top of the margin?
pub fn writable(dir: &Path, extra: u64) -> Result<(), Unwritable> {
    use rustix::fs::{Access, StatVfsMountFlags, access, statvfs};
    let at = existing_ancestor(dir);
    let stat = statvfs(at).map_err(|e| Unwritable::ReadOnly(format!("statvfs: {e}")))?;
    if stat.f_flag.contains(StatVfsMountFlags::RDONLY) {
        return Err(Unwritable::ReadOnly("read-only filesystem".to_owned()));
    }
    let mut paths = vec![at.to_path_buf()];
    if at == dir {
        for name in ["db", "conf", MARKER] {
            let path = dir.join(name);
            if path.exists() {
                paths.push(path);
            }
        }
    }
    for path in paths {
        if let Err(e) = access(&path, Access::WRITE_OK) {
            let e = std::io::Error::from(e);
            return Err(Unwritable::ReadOnly(format!("{}: {e}", path.display())));
        }
    }
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let need = DISK_FREE_BYTES_MIN.saturating_add(extra);
    if free < need {
        return Err(Unwritable::NoSpace { free, need });
    }
    Ok(())
}

/// Removes sled's `snap.*.generating` files (snapshots it never finished),
/// under sled's lock, so never a snapshot another process is writing; the
/// lock is released for sled to take.
pub fn remove_unfinished_snapshots(dir: &Path) -> Result<(), StoreError> {
    let _sled = lock(dir)?;
    remove_unfinished_snapshots_locked(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn remove_unfinished_snapshots_locked(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if is_unfinished_snapshot(&entry.file_name().to_string_lossy()) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn is_unfinished_snapshot(name: &str) -> bool {
    name.starts_with("snap.") && name.ends_with(".generating")
}

/// The names runledger and sled make in a ledger's directory: all that
/// discarding a new ledger removes from it.
fn is_ledger_file(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs" | MARKER | MARKER_TEMP) || name.starts_with("snap.")
}

/// An exclusive `flock` on the data directory itself, taken before
/// [`inspect`] looks at it and held until the store is dropped, so that no
/// other runledger process opens, creates or discards a ledger there
/// meanwhile; with the directories this process made for a new ledger.
pub struct DirLock {
    _file: File,
    /// The directories this process made (the deepest first).
    made: Vec<PathBuf>,
}

impl DirLock {
    /// Locks `dir`, waiting up to a second; with `create`, makes it (and
    /// its missing parents) first when it is absent. Without `create` an
    /// absent directory is [`StoreError::Missing`].
    pub fn take(dir: &Path, create: bool) -> Result<DirLock, StoreError> {
        use rustix::fs::{Mode, OFlags, fstat, open, stat};
        use rustix::io::Errno;
        let io = |source: std::io::Error| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        // A holder that discarded a new ledger removed the directory it had
        // locked: then lock the one at the path now.
        for _ in 0..10 {
            let made = if create { make_dirs(dir)? } else { Vec::new() };
            let file = match open(
                dir,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            ) {
                Ok(fd) => File::from(fd),
                Err(Errno::NOENT) if create => continue,
                Err(Errno::NOENT) => return Err(StoreError::Missing(dir.to_path_buf())),
                Err(Errno::NOTDIR) => {
                    return Err(StoreError::Foreign {
                        path: dir.to_path_buf(),
                        why: "it is not a directory".to_owned(),
                    });
                }
                Err(e) => return Err(io(e.into())),
            };
            match flock_waiting(&file) {
                Ok(()) => {}
                Err(None) => return Err(StoreError::Locked(dir.to_path_buf())),
                Err(Some(e)) => return Err(io(e)),
            }
            let held = fstat(&file).map_err(|e| io(e.into()))?;
            match stat(dir) {
                Ok(now) if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino) => {
                    return Ok(DirLock { _file: file, made });
                }
                Ok(_) | Err(Errno::NOENT) => {}
                Err(e) => return Err(io(e.into())),
            }
        }
        Err(StoreError::Locked(dir.to_path_buf()))
    }

    /// Removes the directories this process made, the deepest first, each
    /// only while empty: whatever another process put there stays.
    pub fn remove_made(&self) {
        remove_empty_dirs(&self.made);
    }
}

fn remove_empty_dirs(deepest_first: &[PathBuf]) {
    for dir in deepest_first {
        if std::fs::remove_dir(dir).is_err() {
            break;
        }
    }
}

/// Makes `dir` and its missing parents one by one; returns those this
/// process made, the deepest first (one another process made meanwhile
/// is not ours).
fn make_dirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    let mut made = Vec::new();
    for path in missing.into_iter().rev() {
        match std::fs::create_dir(&path) {
            Ok(()) => made.insert(0, path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                remove_empty_dirs(&made);
                return Err(StoreError::Io { path, source });
            }
        }
    }
    Ok(made)
}

/// Removes a new ledger from `dir`: the files runledger and sled make
/// there, nothing else, then the directories `lock` made while empty.
/// Only for a ledger this process created under `lock`, while it holds
/// sled's lock (or nobody does).
pub fn remove_new(dir: &Path, lock: &DirLock) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !is_ledger_file(&entry.file_name().to_string_lossy()) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    lock.remove_made();
    Ok(())
}

/// Writes the marker whole (a temporary file renamed over it, synced).
pub fn write_marker(dir: &Path, ledger_id: &str) -> Result<(), StoreError> {
    let path = dir.join(MARKER);
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let temp = dir.join(MARKER_TEMP);
    let mut file = File::create(&temp).map_err(io)?;
    file.write_all(Marker::text(ledger_id).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    std::fs::rename(&temp, &path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// Takes sled's lock on `dir`'s `db` (an exclusive `flock`), as sled
/// itself would, waiting up to a second: sled's background threads hold
/// it for a few ms after a database in this process is dropped.
pub fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("db");
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(io)?;
    match flock_waiting(&file) {
        Ok(()) => Ok(file),
        Err(None) => Err(StoreError::Locked(dir.to_path_buf())),
        Err(Some(e)) => Err(io(e)),
    }
}

/// An exclusive `flock` on `file`, waiting up to a second; `Err(None)`
/// when another still holds it.
fn flock_waiting(file: &File) -> Result<(), Option<std::io::Error>> {
    use rustix::fs::{FlockOperation, flock};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(None),
            Err(e) => return Err(Some(e.into())),
        }
    }
}

/// A private copy of a ledger directory, removed on drop, made under the
/// original's lock (held as long as the copy lives).
pub struct Scratch {
    _lock: File,
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies `dir` (sled's files and the marker, not its unfinished
    /// snapshots) into a new directory under the temporary directory,
    /// which must have the copy's size and the margin free. `why` is why
    /// the original cannot be opened in place, for the message.
    pub fn copy(dir: &Path, why: &Unwritable) -> Result<Scratch, StoreError> {
        let lock = lock(dir)?;
        let temp = std::env::temp_dir();
        let fail = |what: String| StoreError::Scratch {
            path: dir.to_path_buf(),
            why: format!("{why}, and {what}"),
        };
        let size = dir_size(dir);
        match writable(&temp, size) {
            Ok(()) => {}
            Err(Unwritable::NoSpace { free, need }) => {
                return Err(fail(format!(
                    "there is no space for a scratch copy in {}: {} free, {} needed",
                    temp.display(),
                    bytes(free),
                    bytes(need)
                )));
            }
            Err(Unwritable::ReadOnly(what)) => {
                return Err(fail(format!(
                    "no scratch copy can be made in {}: {what}",
                    temp.display()
                )));
            }
        }
        let scratch = tempfile::Builder::new()
            .prefix("runledger-read-")
            .tempdir_in(&temp)
            .map_err(|e| {
                fail(format!(
                    "no scratch copy can be made in {}: {e}",
                    temp.display()
                ))
            })?;
        copy_tree(dir, scratch.path()).map_err(|e| {
            fail(format!(
                "the scratch copy in {} failed: {e}",
                temp.display()
            ))
        })?;
        Ok(Scratch {
            _lock: lock,
            dir: scratch,
        })
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if is_unfinished_snapshot(&name.to_string_lossy()) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            std::fs::create_dir(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::store::Store;
    use super::*;

    /// sled, opened by "another process" (its background threads keep the
    /// lock of a database this process just dropped for a few ms).
    fn sled_elsewhere(dir: &Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => return db,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("sled cannot open {}: {e}", dir.display()),
            }
        }
    }

    /// Review finding 2: two commands both find no ledger; the other one's
    /// sled takes the lock first. The loser is refused and removes none of
    /// the winner's files (it used to remove the directories it had made,
    /// or everything in the empty one it found).
    #[test]
    fn the_loser_of_the_lock_removes_nothing_of_the_winners() {
        for absent in [true, false] {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("out").join("x");
            if !absent {
                std::fs::create_dir_all(&dir).unwrap();
            }
            let mut winner = None;
            let refused = Store::open_with(&dir, true, || winner = Some(sled_elsewhere(&dir)));
            let err = refused.err().expect("the loser is refused");
            assert!(
                matches!(err, StoreError::Locked(_)),
                "absent {absent}: {err}"
            );
            let winner = winner.expect("the winner stepped in");
            for name in ["db", "conf"] {
                assert!(
                    dir.join(name).exists(),
                    "absent {absent}: {name} was removed"
                );
            }
            winner.insert(b"k", b"v").unwrap();
            winner.flush().unwrap();
            drop(winner);
            assert_eq!(
                sled_elsewhere(&dir).get(b"k").unwrap().as_deref(),
                Some(&b"v"[..])
            );
        }
    }

    /// Review, lower finding: sled's unfinished snapshots are removed only
    /// under its lock; while another process holds the ledger, its
    /// `snap.*.generating` may be a snapshot being written.
    #[test]
    fn another_process_s_snapshot_in_progress_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ledger");
        drop(Store::open(&dir, true).unwrap());
        let other = sled_elsewhere(&dir);
        let generating = dir.join("snap.7FFFFFFFFFFFFFFF.generating");
        std::fs::write(&generating, b"being written").unwrap();
        let read = Store::open_read(&dir).err().expect("the ledger is in use");
        assert!(matches!(read, StoreError::Locked(_)), "{read}");
        let write = Store::open(&dir, false)
            .err()
            .expect("the ledger is in use");
        assert!(matches!(write, StoreError::Locked(_)), "{write}");
        assert!(
            generating.exists(),
            "another process's snapshot was removed"
        );
        drop(other);
    }

    #[test]
    fn marker_round_trips_and_tolerates_a_missing_id() {
        let parsed = Marker::parse(&Marker::text("abc123"));
        assert_eq!(parsed.format, FORMAT);
        assert_eq!(parsed.ledger_id.as_deref(), Some("abc123"));
        assert_eq!(Marker::parse(FORMAT).ledger_id, None);
    }

    #[test]
    fn bytes_are_readable() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
    }

    #[test]
    fn a_marked_directory_is_a_ledger_unless_its_db_is_gone_or_its_format_unknown() {
        let dir = tempfile::tempdir().unwrap();
        write_marker(dir.path(), "0123").unwrap();
        let err = inspect(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("ledger id 0123"), "{err}");
        std::fs::write(dir.path().join("db"), b"").unwrap();
        assert_eq!(
            inspect(dir.path()).unwrap(),
            Contents::Ledger {
                marker: Some(Marker {
                    format: FORMAT.to_owned(),
                    ledger_id: Some("0123".to_owned())
                })
            }
        );
        std::fs::write(dir.path().join(MARKER), "someone-else/3\n").unwrap();
        let err = inspect(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    }

    #[test]
    fn a_directory_with_a_foreign_db_is_foreign() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(inspect(&dir.path().join("x")).unwrap(), Contents::Absent);
        assert_eq!(inspect(dir.path()).unwrap(), Contents::Empty);
        std::fs::write(dir.path().join("db"), b"SQLite format 3\0").unwrap();
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a sled database"), "{err}");
        std::fs::write(
            dir.path().join("conf"),
            b"segment_size: 524288\nversion: 0.34\n\0\0\0\0",
        )
        .unwrap();
        assert_eq!(
            inspect(dir.path()).unwrap(),
            Contents::Ledger { marker: None }
        );
    }
}
