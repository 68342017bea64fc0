//! The entry points of the fuzz targets: one function per untrusted-input
//! decoder, bytes in, nothing out.
//!
//! The coverage-guided targets in `fuzz/` (cargo-fuzz, see fuzz/README.md)
//! and the stable replay of their corpus and crash regressions
//! (`tests/fuzz_corpus.rs`) call these same functions, so CI checks what
//! was fuzzed without a nightly toolchain. Each must return for every
//! input: a decoder answers bad bytes with an error value, never a panic,
//! an abort or an allocation the input's size does not justify.
//!
//! [`TARGETS`] names every target with its function; the fuzz crate has one
//! binary per name.

use crate::audit::verify_export::verify_export;
use crate::log::codec::decode_event;
use crate::log::frame::{OwnedFrame, TAG_LEN, decode_header, walk_frame};
use crate::log::record::record_hash;
use crate::log::store::decode_record;
use crate::runtime::redis::envelope::{decode_result, decode_task};
use crate::workload::Workload;

/// A fuzz target's entry point: it must return for every input.
pub type Entry = fn(&[u8]);

/// Every fuzz target: its name (the binary in `fuzz/`, the directory under
/// `fuzz/corpus/` and `fuzz/regressions/`) and its entry point.
pub const TARGETS: &[(&str, Entry)] = &[
    ("wire_line", wire_line),
    ("frame", frame),
    ("event", event),
    ("workload", workload),
    ("verify_export", verify_export_file),
    ("redis_envelope", redis_envelope),
];

/// One `ingest` line ([`crate::wire::parse_line`]); the CLI hands it text,
/// so bytes that are not UTF-8 never reach it.
pub fn wire_line(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::wire::parse_line(text);
    }
}

/// One stored frame (a sled value of the `log` tree) as a walk reads it:
/// the header, every entry's hash checked against its tag, every event
/// decoded ([`decode_record`]); as a repair tool reads it
/// ([`OwnedFrame::decode`]); and, since anyone can recompute an unkeyed
/// chain, once more with every tag and the last hash made to match, so the
/// walk goes past the tags with the input's seqs, times and events.
pub fn frame(data: &[u8]) {
    walk(data);
    let Ok(mut frame) = OwnedFrame::decode(data) else {
        return;
    };
    let mut prev = blake3::Hash::from_bytes(frame.header.prev_hash);
    let mut seq = frame.header.first_seq;
    for (recorded_at, tag, event) in &mut frame.entries {
        let hash = record_hash(seq, *recorded_at, &prev, event);
        tag.copy_from_slice(&hash.as_bytes()[..TAG_LEN]);
        prev = hash;
        seq = seq.wrapping_add(1);
    }
    frame.header.last_hash = *prev.as_bytes();
    walk(&frame.encode());
}

fn walk(data: &[u8]) {
    if let Ok((header, entries)) = decode_header(data) {
        let _ = walk_frame(&header, entries, |raw| {
            let _ = decode_record(raw);
        });
    }
}

/// The canonical bytes of one event ([`decode_event`]).
pub fn event(data: &[u8]) {
    let _ = decode_event(data);
}

/// A workload file: parsed and checked ([`Workload::parse`]), not expanded
/// into tasks.
pub fn workload(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Workload::parse("fuzz.toml", text);
    }
}

/// An export file, JSON lines or CSV ([`verify_export`]).
pub fn verify_export_file(data: &[u8]) {
    let _ = verify_export(&mut &data[..], None);
}

/// A Redis entry's payload, read as a task envelope (a worker's claim) and
/// as a result (the coordinator's read), and what each side derives from
/// it at once.
pub fn redis_envelope(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(envelope) = decode_task(text) {
        let _ = serde_json::to_string(&envelope);
    }
    if let Ok(result) = decode_result(text) {
        let _ = serde_json::to_string(&result);
    }
}
