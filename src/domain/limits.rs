//! Every limit on what enters the ledger, in one place: the constants and
//! the checks of an event against them.
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
//!
//! [`check_event`] is the one check of an event's ids, params and times:
//! `ingest` runs it on each line before anything is appended, and the
//! writer runs it (with [`check_event_bytes`] on the encoding) on every
//! event before it is chained.

use super::event::{Event, Params};
use super::rejection::Rejection;
use super::time::Timestamp;

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

/// One line of an `ingest` file (an event or a record as JSON). JSON can
/// take six bytes for one byte of an event (a control character in a
/// string is `\u00XX`), and a record adds its seq, time and hashes: so any
/// event the ledger holds can leave as a `log --json` line and come back.
pub const INGEST_LINE_BYTES_MAX: usize = 6 * EVENT_BYTES_MAX + (64 << 10);

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

/// An id entering the ledger: at most [`ID_BYTES_MAX`] bytes, no control
/// characters (they would break every table and log line that shows it).
pub fn check_id(field: &'static str, id: &str) -> Result<(), Rejection> {
    if id.len() > ID_BYTES_MAX {
        return Err(Rejection::IdTooLong {
            field,
            bytes: id.len(),
            max: ID_BYTES_MAX,
        });
    }
    // The control characters (`char::is_control`) are U+0000..=U+001F,
    // U+007F and U+0080..=U+009F, the last encoded as 0xC2 0x80..=0x9F: a
    // scan of the bytes finds them without decoding (the writer runs this
    // on every id it chains).
    let bytes = id.as_bytes();
    let control = bytes.iter().enumerate().find_map(|(i, &b)| match b {
        0x00..=0x1f | 0x7f => Some(u32::from(b)),
        0xc2 => bytes
            .get(i + 1)
            .filter(|next| (0x80..=0x9f).contains(*next))
            .map(|next| u32::from(*next)),
        _ => None,
    });
    match control {
        Some(code) => Err(Rejection::ControlCharacter { field, code }),
        None => Ok(()),
    }
}

/// A task's params: at most [`PARAMS_BYTES_MAX`] bytes of canonical JSON.
pub fn check_params(field: &'static str, params: &Params) -> Result<(), Rejection> {
    let bytes = params.as_json().len();
    if bytes > PARAMS_BYTES_MAX {
        return Err(Rejection::ParamsTooLarge {
            field,
            bytes,
            max: PARAMS_BYTES_MAX,
        });
    }
    Ok(())
}

/// A time entering the ledger: within years 1970..=9999.
pub fn check_time(field: &'static str, at: Timestamp) -> Result<(), Rejection> {
    if (TIME_MICROS_MIN..=TIME_MICROS_MAX).contains(&at.as_micros()) {
        Ok(())
    } else {
        Err(Rejection::TimeOutOfRange { field, at })
    }
}

/// The dependencies one task may name. The decoder reserves the memory of
/// a whole list (24 bytes a task id) before it reads it, against
/// [`DECODE_BYTES_MAX`]: this keeps that reservation far below it.
pub const DEPS_MAX: usize = 100_000;

/// An event whose canonical bytes pass this size is decoded back before it
/// is chained: the decoder's reservations for lists can pass
/// [`DECODE_BYTES_MAX`] before the bytes do (24 reserved bytes for a
/// one-byte id), and a record that cannot be read back would brick the
/// ledger. Below it, no event can reach the decoder's limit.
pub const DECODE_CHECK_BYTES_MIN: usize = DECODE_BYTES_MAX / 32;

/// The canonical bytes of one event: at most [`EVENT_BYTES_MAX`].
pub fn check_event_bytes(bytes: usize) -> Result<(), Rejection> {
    if bytes > EVENT_BYTES_MAX {
        return Err(Rejection::EventTooLarge {
            bytes,
            max: EVENT_BYTES_MAX,
        });
    }
    Ok(())
}

/// Every id, params and time field of `event` against its limit; the error
/// names the field.
pub fn check_event(event: &Event) -> Result<(), Rejection> {
    let opt_task = |task: &Option<super::ids::TaskId>| match task {
        Some(task) => check_id("task", task.as_str()),
        None => Ok(()),
    };
    let opt_time = |field, at: &Option<Timestamp>| match at {
        Some(at) => check_time(field, *at),
        None => Ok(()),
    };
    // No catch-all arm: a new variant must say which of its fields are ids.
    match event {
        Event::TenantRegistered { tenant, .. }
        | Event::TenantUpdated { tenant, .. }
        | Event::BudgetStatusChanged { tenant, .. }
        | Event::BudgetPeriodReset { tenant }
        | Event::LearningProfileAdjusted { tenant, .. } => check_id("tenant", tenant.as_str()),
        Event::RunStarted { run, .. }
        | Event::RunFinished { run }
        | Event::BackpressureEngaged { run, .. }
        | Event::BackpressureReleased { run, .. }
        | Event::WorkloadRecorded { run, .. } => check_id("run", run.as_str()),
        Event::TaskSubmitted {
            run,
            task,
            tenant,
            deps,
            pipeline,
            params,
            ..
        } => {
            check_id("run", run.as_str())?;
            check_id("task", task.as_str())?;
            check_id("tenant", tenant.as_str())?;
            if deps.len() > DEPS_MAX {
                return Err(Rejection::TooManyDeps {
                    count: deps.len(),
                    max: DEPS_MAX,
                });
            }
            for dep in deps {
                check_id("deps", dep.as_str())?;
            }
            if let Some(pipeline) = pipeline {
                check_id("pipeline", pipeline.as_str())?;
            }
            check_params("params", params)
        }
        Event::TaskDequeued {
            task,
            worker,
            lease_deadline,
            ..
        } => {
            check_id("task", task.as_str())?;
            check_id("worker", worker.as_str())?;
            opt_time("lease_deadline", lease_deadline)
        }
        Event::TaskNacked {
            task,
            worker,
            retry_at,
            ..
        } => {
            check_id("task", task.as_str())?;
            check_id("worker", worker.as_str())?;
            opt_time("retry_at", retry_at)
        }
        Event::TaskAcked { task, worker, .. } | Event::LeaseExpired { task, worker } => {
            check_id("task", task.as_str())?;
            check_id("worker", worker.as_str())
        }
        Event::TaskDeadLettered { task, .. }
        | Event::TaskCancelled { task, .. }
        | Event::TaskSkipped { task, .. } => check_id("task", task.as_str()),
        Event::CostReserved { tenant, task, .. }
        | Event::ReservationReleased { tenant, task, .. }
        | Event::LearningArmChosen { tenant, task, .. } => {
            check_id("tenant", tenant.as_str())?;
            check_id("task", task.as_str())
        }
        Event::CostIncurred { tenant, task, .. }
        | Event::BudgetOverrun { tenant, task, .. }
        | Event::AdmissionDenied { tenant, task, .. }
        | Event::LearningOutcome { tenant, task, .. } => {
            check_id("tenant", tenant.as_str())?;
            opt_task(task)
        }
        Event::DegradationDecided {
            tenant, run, task, ..
        } => {
            check_id("tenant", tenant.as_str())?;
            check_id("run", run.as_str())?;
            opt_task(task)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_capped_and_printable() {
        assert!(check_id("tenant", &"a".repeat(ID_BYTES_MAX)).is_ok());
        let long = check_id("tenant", &"a".repeat(ID_BYTES_MAX + 1)).unwrap_err();
        assert_eq!(
            long.to_string(),
            "`tenant` is 257 bytes, over ID_BYTES_MAX (256 bytes)"
        );
        let control = check_id("task", "a\u{7}b").unwrap_err().to_string();
        assert!(control.contains("`task`"), "{control}");
        assert!(control.contains("U+0007"), "{control}");
        assert!(check_id("task", "ünïcødé/../#x\u{a0}\u{ff}").is_ok());
        let c1 = check_id("task", "a\u{85}").unwrap_err().to_string();
        assert!(c1.contains("U+0085"), "{c1}");
        assert!(check_id("task", "\u{7f}").is_err());
        // The byte scan agrees with `char::is_control` on every character
        // of the first two UTF-8 lengths.
        for c in (0..0x800).filter_map(char::from_u32) {
            assert_eq!(
                check_id("x", &c.to_string()).is_err(),
                c.is_control(),
                "{c:?}"
            );
        }
    }

    #[test]
    fn times_are_confined_to_years_1970_to_9999() {
        assert!(check_time("recorded_at", Timestamp(TIME_MICROS_MIN)).is_ok());
        assert!(check_time("recorded_at", Timestamp(TIME_MICROS_MAX)).is_ok());
        assert!(check_time("recorded_at", Timestamp(TIME_MICROS_MIN - 1)).is_err());
        let late = check_time("retry_at", Timestamp(TIME_MICROS_MAX + 1)).unwrap_err();
        assert!(late.to_string().starts_with("`retry_at` "), "{late}");
        assert_eq!(
            Timestamp(TIME_MICROS_MAX).to_string(),
            "9999-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn check_event_names_the_field() {
        let event = Event::TaskNacked {
            task: "t".into(),
            worker: "w".repeat(300).into(),
            error: String::new(),
            retry_at: None,
            timed_out: false,
        };
        assert!(
            check_event(&event)
                .unwrap_err()
                .to_string()
                .contains("`worker`")
        );
        let event = Event::TaskNacked {
            task: "t".into(),
            worker: "w".into(),
            error: String::new(),
            retry_at: Some(Timestamp(-1)),
            timed_out: false,
        };
        assert!(
            check_event(&event)
                .unwrap_err()
                .to_string()
                .contains("`retry_at`")
        );
    }
}
