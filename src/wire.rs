//! The JSON line format shared by `ingest` and `log --json`.
//!
//! A line is either an event (`{"type": "task_acked", ...}`) or a whole
//! record as `log --json` prints it (`{"seq", "recorded_at", "prev_hash",
//! "hash", "event"}`); a record keeps its `recorded_at` and must hash to its
//! own `hash`, so an edited export is refused rather than re-signed.
//!
//! Limits: a line is read bounded ([`lines`]: at most
//! `INGEST_LINE_BYTES_MAX` bytes are ever buffered), and a parsed line is
//! refused when its ids, params, times or encoding break a limit of
//! `domain::limits`, so nothing `ingest` accepts can brick the ledger.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

use crate::domain::limits::{self, INGEST_LINE_BYTES_MAX};
use crate::domain::{Event, Timestamp};
use crate::log::Append;
use crate::log::codec::encode_event;
use crate::log::record::{Record, record_hash};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordJson {
    pub seq: u64,
    pub recorded_at: Timestamp,
    pub prev_hash: String,
    pub hash: String,
    pub event: Event,
}

impl From<&Record> for RecordJson {
    fn from(record: &Record) -> Self {
        RecordJson {
            seq: record.seq,
            recorded_at: record.recorded_at,
            prev_hash: record.prev_hash.to_hex().to_string(),
            hash: record.hash.to_hex().to_string(),
            event: record.event.clone(),
        }
    }
}

/// One `log --json` line.
pub fn record_line(record: &Record) -> String {
    serde_json::to_string(&RecordJson::from(record)).unwrap_or_default()
}

/// Drops serde_json's " at line 1 column 17" suffix: the caller names the
/// line, and the column of a one-line document adds nothing.
fn clean(error: serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn parse_hash(field: &str, text: &str) -> Result<blake3::Hash, String> {
    blake3::Hash::from_hex(text).map_err(|_| format!("`{field}` is not a 64-digit hex hash"))
}

/// The lines of an ingest file, numbered from 1, without their line end.
/// A line longer than `INGEST_LINE_BYTES_MAX` is an error at its number,
/// found after reading one byte past the limit (a 2 GB line is never
/// buffered); after an error the iterator ends.
pub fn lines<R: BufRead>(reader: R) -> Lines<R> {
    Lines {
        reader,
        number: 0,
        failed: false,
    }
}

pub struct Lines<R> {
    reader: R,
    number: usize,
    failed: bool,
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = (usize, Result<String, String>);

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::Read;
        if self.failed {
            return None;
        }
        self.number += 1;
        let mut line = Vec::new();
        let limit = INGEST_LINE_BYTES_MAX as u64 + 1;
        let read = (&mut self.reader).take(limit).read_until(b'\n', &mut line);
        let result = match read {
            Ok(0) => return None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if line.len() > INGEST_LINE_BYTES_MAX {
                    Err(format!(
                        "the line is longer than INGEST_LINE_BYTES_MAX ({INGEST_LINE_BYTES_MAX} bytes)"
                    ))
                } else {
                    String::from_utf8(line)
                        .map_err(|_| "cannot read: the line is not valid UTF-8".to_owned())
                }
            }
            Err(e) => Err(format!("cannot read: {e}")),
        };
        self.failed = result.is_err();
        Some((self.number, result))
    }
}

/// Parses one line of an ingest file and checks it against the limits.
pub fn parse_line(text: &str) -> Result<Append, String> {
    let append = parse_unchecked(text)?;
    let bytes = encode_event(&append.event).len();
    limits::check_event(&append.event)
        .and_then(|()| limits::check_event_bytes(bytes))
        .map_err(|rejection| rejection.to_string())?;
    Ok(append)
}

fn parse_unchecked(text: &str) -> Result<Append, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {}", clean(e)))?;
    let Some(object) = value.as_object() else {
        return Err("expected a JSON object (an event or a record)".to_owned());
    };
    if object.contains_key("event") && !object.contains_key("type") {
        let record: RecordJson =
            serde_json::from_value(value).map_err(|e| format!("invalid record: {}", clean(e)))?;
        let prev = parse_hash("prev_hash", &record.prev_hash)?;
        let hash = parse_hash("hash", &record.hash)?;
        limits::check_time("recorded_at", record.recorded_at).map_err(|r| r.to_string())?;
        let bytes = encode_event(&record.event);
        if record_hash(record.seq, record.recorded_at, &prev, &bytes) != hash {
            return Err(format!(
                "record seq {}: `hash` does not match its fields (was it edited?)",
                record.seq
            ));
        }
        return Ok(Append {
            recorded_at: Some(record.recorded_at),
            event: record.event,
        });
    }
    if !object.contains_key("type") {
        return Err("missing field `type` (the event kind, e.g. \"task_submitted\")".to_owned());
    }
    let event: Event = serde_json::from_value(value).map_err(clean)?;
    Ok(Append {
        recorded_at: None,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_line_reports_json_errors_without_positions() {
        let err = parse_line(r#"{"type":"run_started","run":"r1"}"#)
            .err()
            .unwrap();
        assert_eq!(err, "missing field `seed`");
        assert!(
            parse_line("{not json")
                .err()
                .unwrap()
                .starts_with("invalid JSON")
        );
        assert!(parse_line("[1,2]").err().unwrap().contains("JSON object"));
        assert!(
            parse_line(r#"{"run":"r1"}"#)
                .err()
                .unwrap()
                .contains("missing field `type`")
        );
    }

    #[test]
    fn lines_are_read_bounded() {
        use std::io::Read;
        // An endless line: refused after INGEST_LINE_BYTES_MAX + 1 bytes.
        let endless = std::io::BufReader::new(std::io::repeat(b'x'));
        let mut endless = lines(endless);
        let (number, line) = endless.next().unwrap();
        assert_eq!(number, 1);
        assert!(line.unwrap_err().contains("INGEST_LINE_BYTES_MAX"));
        assert!(endless.next().is_none(), "nothing after an error");
        // A line exactly at the limit passes, CRLF and LF both end lines.
        let at_limit = "y".repeat(INGEST_LINE_BYTES_MAX);
        let text = format!("a\r\n{at_limit}\n\nb");
        let read: Vec<_> = lines(text.as_bytes().chain(&b""[..])).collect();
        assert_eq!(read.len(), 4);
        assert_eq!(read[0], (1, Ok("a".to_owned())));
        assert_eq!(
            read[1].1.as_ref().map(String::len),
            Ok(INGEST_LINE_BYTES_MAX)
        );
        assert_eq!(read[2], (3, Ok(String::new())));
        assert_eq!(read[3], (4, Ok("b".to_owned())));
        let bad = lines(&[0xffu8, b'\n'][..]).next().unwrap().1;
        assert!(bad.unwrap_err().contains("not valid UTF-8"));
    }

    #[test]
    fn parse_line_checks_the_limits() {
        let long = "t".repeat(crate::domain::limits::ID_BYTES_MAX + 1);
        let line = format!(r#"{{"type":"run_finished","run":"{long}"}}"#);
        assert!(parse_line(&line).err().unwrap().contains("ID_BYTES_MAX"));
    }

    #[test]
    fn parse_line_accepts_records_and_checks_their_hash() {
        let event = Event::RunFinished { run: "r1".into() };
        let at = Timestamp(1_700_000_000_000_000);
        let prev = crate::log::ZERO_HASH;
        let hash = record_hash(1, at, &prev, &encode_event(&event));
        let record = Record {
            seq: 1,
            recorded_at: at,
            prev_hash: prev,
            hash,
            event: event.clone(),
        };
        let line = record_line(&record);
        let parsed = parse_line(&line).unwrap();
        assert_eq!(parsed.recorded_at, Some(at));
        assert_eq!(parsed.event, event);
        let edited = line.replace("r1", "r2");
        assert!(
            parse_line(&edited)
                .err()
                .unwrap()
                .contains("does not match")
        );
    }
}
