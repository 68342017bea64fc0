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
//!
//! Record lines must also continue the chain where they land ([`Batch`]):
//! the first one the ledger's head (its seq is the head's + 1, its
//! `prev_hash` the head's hash), each next one the record line before it.
//! Appended, they get back exactly their seq, `recorded_at` and hash. A
//! bare event is stamped and chained by the ledger when appended, so its
//! hash is unknown before: bare events may follow record lines, but a
//! record line after a bare event is refused.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

use crate::domain::limits::{self, INGEST_LINE_BYTES_MAX};
use crate::domain::{Event, Timestamp};
use crate::log::codec::encode_event;
use crate::log::record::{Record, record_hash};
use crate::log::{Append, Head};

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

/// One line of an ingest file.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// A bare event: the ledger stamps and chains it when appended.
    Event(Event),
    /// A whole record, its own hash checked: it must continue the chain.
    Record(RecordLine),
}

/// A record line whose `hash` matches its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordLine {
    pub seq: u64,
    pub recorded_at: Timestamp,
    pub prev_hash: blake3::Hash,
    pub hash: blake3::Hash,
    pub event: Event,
}

/// What a record line is checked against: the record line before it, or
/// the ledger's head.
#[derive(Clone, Copy)]
enum After {
    Line(usize),
    Ledger,
}

/// Does a record of `seq` naming `prev_hash` continue the chain at `after`?
fn link(seq: u64, prev_hash: &blake3::Hash, after: Head, place: After) -> Result<(), String> {
    let expected = after.seq + 1;
    if seq != expected {
        return Err(match place {
            After::Line(line) => format!(
                "record seq {seq} does not continue the chain: the record on line {line} is seq {}, \
                 so seq {expected} is expected (a line deleted, moved or repeated?)",
                after.seq
            ),
            After::Ledger => format!(
                "record seq {seq} does not continue the ledger: its head is seq {}, so seq \
                 {expected} is expected",
                after.seq
            ),
        });
    }
    if *prev_hash != after.hash {
        return Err(match place {
            After::Line(line) => format!(
                "record seq {seq}: `prev_hash` is not the hash of seq {} (line {line})",
                after.seq
            ),
            After::Ledger => format!(
                "record seq {seq}: `prev_hash` is not the hash of the ledger's head (seq {}): the \
                 record comes from another ledger or another history",
                after.seq
            ),
        });
    }
    Ok(())
}

/// Parses one line of an ingest file and checks its event against the
/// limits (ids, params, times, its encoding).
pub fn parse_line(text: &str) -> Result<Line, String> {
    let line = parse_unchecked(text)?;
    let event = match &line {
        Line::Event(event) => event,
        Line::Record(record) => &record.event,
    };
    let bytes = encode_event(event).len();
    limits::check_event(event)
        .and_then(|()| limits::check_event_bytes(bytes))
        .map_err(|rejection| rejection.to_string())?;
    Ok(line)
}

fn parse_unchecked(text: &str) -> Result<Line, String> {
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
        return Ok(Line::Record(RecordLine {
            seq: record.seq,
            recorded_at: record.recorded_at,
            prev_hash: prev,
            hash,
            event: record.event,
        }));
    }
    if !object.contains_key("type") {
        return Err("missing field `type` (the event kind, e.g. \"task_submitted\")".to_owned());
    }
    let event: Event = serde_json::from_value(value).map_err(clean)?;
    Ok(Line::Event(event))
}

/// The lines of an ingest file, checked as they come to form one chain
/// among themselves; [`Batch::attach`] then checks that the first record
/// line continues the ledger's head and gives what to append.
#[derive(Default)]
pub struct Batch {
    appends: Vec<Append>,
    lines: Vec<usize>,
    /// The first record line: its line number, seq and `prev_hash`.
    first: Option<(usize, u64, blake3::Hash)>,
    /// The last record line: its line number and where it leaves the chain.
    last: Option<(usize, Head)>,
    /// The first bare event's line.
    first_event: Option<usize>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds line `number`; `Err` says why it cannot follow the lines before.
    pub fn push(&mut self, number: usize, line: Line) -> Result<(), String> {
        let append = match line {
            Line::Event(event) => {
                self.first_event.get_or_insert(number);
                Append {
                    recorded_at: None,
                    event,
                }
            }
            Line::Record(record) => {
                if let Some(event_line) = self.first_event {
                    return Err(format!(
                        "a record cannot follow the event on line {event_line}: that event's hash \
                         is known only once it is appended (put the record lines first, or \
                         ingest the events on their own)"
                    ));
                }
                match self.last {
                    Some((line, head)) => {
                        link(record.seq, &record.prev_hash, head, After::Line(line))?;
                    }
                    None => self.first = Some((number, record.seq, record.prev_hash)),
                }
                self.last = Some((
                    number,
                    Head {
                        seq: record.seq,
                        hash: record.hash,
                    },
                ));
                Append {
                    recorded_at: Some(record.recorded_at),
                    event: record.event,
                }
            }
        };
        self.appends.push(append);
        self.lines.push(number);
        Ok(())
    }

    /// Checks that the first record line continues `head` (the ledger's),
    /// and gives the appends with the file line of each. `Err` names the
    /// line and why.
    pub fn attach(self, head: Head) -> Result<(Vec<Append>, Vec<usize>), (usize, String)> {
        if let Some((line, seq, prev_hash)) = self.first {
            link(seq, &prev_hash, head, After::Ledger).map_err(|why| (line, why))?;
        }
        Ok((self.appends, self.lines))
    }

    pub fn len(&self) -> usize {
        self.appends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.appends.is_empty()
    }
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
        let Line::Record(parsed) = parse_line(&line).unwrap() else {
            panic!("a record line parses as a record");
        };
        assert_eq!(
            (
                parsed.seq,
                parsed.recorded_at,
                parsed.prev_hash,
                parsed.hash
            ),
            (1, at, prev, hash)
        );
        assert_eq!(parsed.event, event);
        let edited = line.replace("r1", "r2");
        assert!(
            parse_line(&edited)
                .err()
                .unwrap()
                .contains("does not match")
        );
    }

    fn record(seq: u64, prev: blake3::Hash) -> RecordLine {
        let event = Event::RunFinished { run: "r1".into() };
        let at = Timestamp(1_700_000_000_000_000);
        let hash = record_hash(seq, at, &prev, &encode_event(&event));
        RecordLine {
            seq,
            recorded_at: at,
            prev_hash: prev,
            hash,
            event,
        }
    }

    #[test]
    fn a_batch_links_record_lines_and_attaches_to_the_head() {
        let one = record(1, crate::log::ZERO_HASH);
        let two = record(2, one.hash);
        let mut batch = Batch::new();
        batch.push(1, Line::Record(one.clone())).unwrap();
        batch.push(2, Line::Record(two.clone())).unwrap();
        let bare = Event::RunFinished { run: "r2".into() };
        batch.push(4, Line::Event(bare.clone())).unwrap();
        let err = batch
            .push(5, Line::Record(record(3, two.hash)))
            .unwrap_err();
        assert!(
            err.starts_with("a record cannot follow the event on line 4"),
            "{err}"
        );
        let (appends, lines) = batch.attach(Head::EMPTY).unwrap();
        assert_eq!(lines, [1, 2, 4]);
        assert_eq!(appends[1].recorded_at, Some(two.recorded_at));
        assert_eq!((appends[2].recorded_at, &appends[2].event), (None, &bare));

        let mut batch = Batch::new();
        batch.push(1, Line::Record(one.clone())).unwrap();
        let err = batch
            .push(2, Line::Record(record(3, two.hash)))
            .unwrap_err();
        assert!(err.contains("so seq 2 is expected"), "{err}");
        let err = batch
            .push(2, Line::Record(record(2, one.prev_hash)))
            .unwrap_err();
        assert_eq!(
            err,
            "record seq 2: `prev_hash` is not the hash of seq 1 (line 1)"
        );

        let at_head = Head {
            seq: 1,
            hash: one.hash,
        };
        let mut batch = Batch::new();
        batch.push(7, Line::Record(one)).unwrap();
        let (line, err) = batch.attach(at_head).unwrap_err();
        assert_eq!(line, 7);
        assert!(
            err.contains("its head is seq 1, so seq 2 is expected"),
            "{err}"
        );
        let mut batch = Batch::new();
        batch
            .push(1, Line::Record(record(2, blake3::hash(b"x"))))
            .unwrap();
        let (_, err) = batch.attach(at_head).unwrap_err();
        assert!(
            err.contains("not the hash of the ledger's head (seq 1)"),
            "{err}"
        );
    }
}
