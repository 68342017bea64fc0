//! Every limit on what enters the ledger, in one place.
//!
//! A limit the decoder enforces must be enforced before an append, or an
//! event could be written that can never be read back (a bricked ledger).
//! So each entry point (workload files, `ingest` lines, handler answers,
//! HTTP bodies) checks its input against these constants and refuses with
//! the limit's name, and the writer refuses any event whose canonical bytes
//! exceed [`EVENT_BYTES_MAX`] before it is chained. The decoder's own
//! allocation limit ([`DECODE_BYTES_MAX`]) is larger than every one of them.
//!
//! The README's "Limits" section lists these values; keep the two in step.

/// The decoder refuses to allocate more than this for one event: a corrupt
/// length can never ask for more. Never lower it: old ledgers must decode.
pub const DECODE_BYTES_MAX: usize = 16 << 20;

/// The canonical (bincode) bytes of one event.
pub const EVENT_BYTES_MAX: usize = 4 << 20;

/// A tenant, run, task, worker or pipeline id, in UTF-8 bytes.
pub const ID_BYTES_MAX: usize = 256;

/// One task's `params` (its JSON text).
pub const PARAMS_BYTES_MAX: usize = 64 << 10;

/// A workload file (it is recorded whole in `workload_recorded`).
pub const WORKLOAD_FILE_BYTES_MAX: usize = 2 << 20;

/// What an `exec` step may write to stdout (its answer) and to stderr
/// (kept for the error reason); past this the attempt is NACKed.
pub const EXEC_OUTPUT_BYTES_MAX: usize = 1 << 20;

/// A failed attempt's reason, as recorded in `task_nacked` (a handler's
/// error, a worker's report): a longer one is cut to this, saying so.
pub const ERROR_BYTES_MAX: usize = 4 << 10;

/// The tasks one workload expands to (`runs × tasks per run`, counting
/// every `fan_out` map).
pub const WORKLOAD_TASKS_MAX: u64 = 2_000_000;

/// One line of an `ingest` file (an event or a record as JSON).
pub const INGEST_LINE_BYTES_MAX: usize = 2 * EVENT_BYTES_MAX;

/// The earliest time a record or a workload may carry: 1970-01-01T00:00:00Z.
pub const TIME_MICROS_MIN: i64 = 0;

/// The latest: 9999-12-31T23:59:59.999999Z (RFC 3339 has four-digit years).
pub const TIME_MICROS_MAX: i64 = 253_402_300_799_999_999;

/// The shortest attempt timeout a workload may set.
pub const TIMEOUT_MS_MIN: u64 = 1;

/// The free space a ledger's filesystem must have before the ledger is
/// opened in place. sled writes whenever it opens a database (the tail of
/// its last segment, up to 512 KiB; a new snapshot file, about 150 bytes
/// per thousand records), and a full disk tears that write; a command that
/// appends needs room for its records too. Below this margin, commands
/// that write refuse to start and commands that read open a scratch copy.
pub const DISK_FREE_BYTES_MIN: u64 = 64 << 20;

const _: () = assert!(EVENT_BYTES_MAX < DECODE_BYTES_MAX);
const _: () = assert!(WORKLOAD_FILE_BYTES_MAX < EVENT_BYTES_MAX);
const _: () = assert!(EXEC_OUTPUT_BYTES_MAX < EVENT_BYTES_MAX);
const _: () = assert!(PARAMS_BYTES_MAX < EVENT_BYTES_MAX);
const _: () = assert!(ERROR_BYTES_MAX < EVENT_BYTES_MAX);
