//! The on-disk frame: consecutive records stored as one sled value.
//!
//! One sled key per record costs ~5x the time and twice the disk of one key
//! per ~50 records, so the writer packs each commit group into frames of at
//! most [`MAX_FRAME_BYTES`]. A frame is the bincode encoding of a
//! [`FrameHeader`] followed by `count` entries. Each entry stores the time
//! delta to the previous record, the first [`TAG_LEN`] bytes of the record's
//! hash (enough to name the first bad seq when a record is edited) and the
//! canonical event bytes; the header stores the full 32-byte hash before the
//! frame and at its end, which carry the chain's cryptographic strength.
//!
//! Frames stay small (a sled leaf holds up to 17 of them) so that sled
//! pages stay under its blob threshold (segment size / 4 = 128 KiB). A
//! record larger than that (an event up to `EVENT_BYTES_MAX`, e.g. a big
//! recorded workload) makes its frame, and the leaf holding it, a sled
//! blob: a file of its own that sled writes without syncing, so the store
//! fsyncs new blob files on every durable flush (`Store::flush`).

use bincode::{BorrowDecode, Encode};

use super::codec::CONFIG;
use super::record::{RawRecord, record_hash};
use crate::domain::Timestamp;

pub const FRAME_VERSION: u8 = 1;
pub const TAG_LEN: usize = 8;
/// A frame is closed once its entries reach this many bytes.
pub const MAX_FRAME_BYTES: usize = 4 * 1024;

#[derive(Clone, PartialEq, Eq, Debug, Encode, BorrowDecode)]
pub struct FrameHeader {
    pub version: u8,
    pub first_seq: u64,
    pub count: u32,
    /// `recorded_at` of the first record, in micros.
    pub base_time: i64,
    pub prev_hash: [u8; 32],
    pub last_hash: [u8; 32],
}

#[derive(Clone, PartialEq, Eq, Debug, Encode, BorrowDecode)]
pub struct Entry<'a> {
    pub time_delta: i64,
    pub tag: [u8; TAG_LEN],
    pub event: &'a [u8],
}

/// The sled key of the frame whose first record is `seq`.
pub fn frame_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn key_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Why a frame could not be read; `seq` is the first record affected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    pub seq: u64,
    pub what: String,
    /// Every record matched its tag but the frame's last hash did not: a
    /// tag was forged, or records were cut from the end of the frame (the
    /// caller can tell by the seq of the next frame).
    pub end_mismatch: bool,
}

/// Decodes the header and returns it with the bytes of the entries. A
/// header whose records would run past `u64::MAX` is refused.
pub fn decode_header(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), String> {
    let (header, used): (FrameHeader, usize) = bincode::borrow_decode_from_slice(bytes, CONFIG)
        .map_err(|e| format!("frame header: {e}"))?;
    if header.version != FRAME_VERSION {
        return Err(format!("unknown frame version {}", header.version));
    }
    // Every seq of the frame and the one after it must exist (an empty
    // frame's is `first_seq + 1`), so that no reader's seq arithmetic can
    // overflow.
    if header
        .first_seq
        .checked_add(u64::from(header.count.max(1)))
        .is_none()
    {
        return Err(format!(
            "{} records from seq {} run past the largest seq",
            header.count, header.first_seq
        ));
    }
    Ok((header, &bytes[used..]))
}

/// Walks the entries of a frame, recomputing each record's hash from
/// `header.prev_hash` and checking it against the stored tag and the
/// frame's last hash. Calls `visit` for each good record.
pub fn walk_frame<'a>(
    header: &FrameHeader,
    mut entries: &'a [u8],
    mut visit: impl FnMut(RawRecord<'a>),
) -> Result<blake3::Hash, FrameError> {
    let mut prev = blake3::Hash::from_bytes(header.prev_hash);
    let mut time = header.base_time;
    for i in 0..u64::from(header.count) {
        let seq = header.first_seq + i;
        let (entry, used): (Entry<'a>, usize) = bincode::borrow_decode_from_slice(entries, CONFIG)
            .map_err(|e| FrameError {
                seq,
                what: format!("record cannot be decoded: {e}"),
                end_mismatch: false,
            })?;
        entries = &entries[used..];
        time = time.wrapping_add(entry.time_delta);
        let recorded_at = Timestamp(time);
        let hash = record_hash(seq, recorded_at, &prev, entry.event);
        if hash.as_bytes()[..TAG_LEN] != entry.tag {
            return Err(FrameError {
                seq,
                what: "hash mismatch: the record was edited, removed or reordered".to_owned(),
                end_mismatch: false,
            });
        }
        visit(RawRecord {
            seq,
            frame_seq: header.first_seq,
            recorded_at,
            prev_hash: prev,
            hash,
            event_bytes: entry.event,
        });
        prev = hash;
    }
    let last_seq = header.first_seq + u64::from(header.count).saturating_sub(1);
    if !entries.is_empty() {
        return Err(FrameError {
            seq: last_seq + 1,
            what: format!(
                "{} unexpected bytes after the last record of its frame",
                entries.len()
            ),
            end_mismatch: false,
        });
    }
    if prev.as_bytes() != &header.last_hash {
        return Err(FrameError {
            seq: last_seq,
            what: "frame hash mismatch: a record of this frame was edited".to_owned(),
            end_mismatch: true,
        });
    }
    Ok(prev)
}

/// Builds frames from records appended in seq order.
pub struct FrameBuilder {
    first_seq: u64,
    count: u32,
    base_time: i64,
    last_time: i64,
    prev_hash: blake3::Hash,
    last_hash: blake3::Hash,
    /// The hash before the last record pushed: what its hash chains from.
    before_last: blake3::Hash,
    entries: Vec<u8>,
}

impl FrameBuilder {
    pub fn new(first_seq: u64, prev_hash: blake3::Hash) -> Self {
        FrameBuilder {
            first_seq,
            count: 0,
            base_time: 0,
            last_time: 0,
            prev_hash,
            last_hash: prev_hash,
            before_last: prev_hash,
            entries: Vec::with_capacity(MAX_FRAME_BYTES + 256),
        }
    }

    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= MAX_FRAME_BYTES
    }

    /// The seq the next record pushed gets.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// Asserts that the builder stands where the writer's head is: its next
    /// record is `head_seq + 1` (seqs follow one another across records,
    /// frames and commit groups) and its last hash is `head_hash` (the
    /// chain link the next record hashes from).
    pub fn assert_at(&self, head_seq: u64, head_hash: &blake3::Hash) {
        assert_eq!(
            self.next_seq(),
            head_seq + 1,
            "the frame builder's next seq {} does not follow the head's seq {head_seq}",
            self.next_seq()
        );
        assert_eq!(
            self.last_hash, *head_hash,
            "the frame builder's last hash is not the head's hash at seq {head_seq}"
        );
    }

    pub fn push(&mut self, recorded_at: Timestamp, hash: blake3::Hash, event_bytes: &[u8]) {
        if self.count == 0 {
            self.base_time = recorded_at.0;
            self.last_time = recorded_at.0;
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&hash.as_bytes()[..TAG_LEN]);
        let entry = Entry {
            time_delta: recorded_at.0.wrapping_sub(self.last_time),
            tag,
            event: event_bytes,
        };
        let _ = bincode::encode_into_std_write(entry, &mut self.entries, CONFIG);
        self.last_time = recorded_at.0;
        self.before_last = self.last_hash;
        self.last_hash = hash;
        self.count += 1;
    }

    /// The frame's bytes, read back once and checked
    /// ([`assert_built`]); the builder is ready for the next frame.
    pub fn finish(&mut self) -> Vec<u8> {
        assert!(
            self.count > 0,
            "an empty frame at seq {} is never written",
            self.first_seq
        );
        let header = FrameHeader {
            version: FRAME_VERSION,
            first_seq: self.first_seq,
            count: self.count,
            base_time: self.base_time,
            prev_hash: *self.prev_hash.as_bytes(),
            last_hash: *self.last_hash.as_bytes(),
        };
        let mut out = Vec::with_capacity(self.entries.len() + 96);
        let _ = bincode::encode_into_std_write(&header, &mut out, CONFIG);
        out.extend_from_slice(&self.entries);
        assert_built(&out, &header, &self.before_last);
        self.entries.clear();
        self.first_seq += u64::from(self.count);
        self.count = 0;
        self.prev_hash = self.last_hash;
        out
    }
}

/// Reads back the frame `bytes` just built from `header` and asserts it
/// holds what was meant, each check its own assert: the header decodes as
/// written (first seq, count, the hash before the frame and at its end),
/// the entries run to the end of the bytes, one per record, and the last
/// record's hash re-derived from its stored bytes — its seq, its time
/// summed from the stored deltas, `before_last` and its event — is the
/// frame's last hash, the link the next record chains from.
///
/// Cost: a decode of each entry (no hashing) and one blake3 per frame, not
/// one per record: a frame holds tens of records, and the walk of every
/// record's hash is what `verify` and every read already do.
pub fn assert_built(bytes: &[u8], header: &FrameHeader, before_last: &blake3::Hash) {
    let first_seq = header.first_seq;
    let (stored, mut entries) = match decode_header(bytes) {
        Ok(decoded) => decoded,
        Err(what) => panic!("the frame built at seq {first_seq} cannot be read back: {what}"),
    };
    assert_eq!(
        stored.first_seq, first_seq,
        "the frame built at seq {first_seq} reads back as starting at seq {}",
        stored.first_seq
    );
    assert_eq!(
        stored.count, header.count,
        "the frame built at seq {first_seq} with {} records reads back with {}",
        header.count, stored.count
    );
    assert_eq!(
        stored.prev_hash, header.prev_hash,
        "the frame built at seq {first_seq} reads back with another hash before it"
    );
    assert_eq!(
        stored.last_hash, header.last_hash,
        "the frame built at seq {first_seq} reads back with another last hash"
    );
    let mut time = stored.base_time;
    let mut last: Option<Entry<'_>> = None;
    for i in 0..u64::from(stored.count) {
        let (entry, used): (Entry<'_>, usize) =
            match bincode::borrow_decode_from_slice(entries, CONFIG) {
                Ok(decoded) => decoded,
                Err(e) => panic!(
                    "record {} of the frame built at seq {first_seq} cannot be read back: {e}",
                    first_seq + i
                ),
            };
        entries = &entries[used..];
        time = time.wrapping_add(entry.time_delta);
        last = Some(entry);
    }
    assert!(
        entries.is_empty(),
        "the frame built at seq {first_seq} has {} bytes after its last record",
        entries.len()
    );
    let Some(last) = last else {
        panic!("the frame built at seq {first_seq} has no record");
    };
    let last_seq = first_seq + u64::from(stored.count) - 1;
    let hash = record_hash(last_seq, Timestamp(time), before_last, last.event);
    assert_eq!(
        hash.as_bytes(),
        &stored.last_hash,
        "record {last_seq}'s hash re-derived from its frame is not the chain's link"
    );
    assert_eq!(
        hash.as_bytes()[..TAG_LEN],
        last.tag,
        "record {last_seq}'s hash re-derived from its frame does not match its tag"
    );
}

/// A decoded frame with owned entries: what a test or a repair tool edits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedFrame {
    pub header: FrameHeader,
    /// `(recorded_at, tag, event bytes)` per record.
    pub entries: Vec<(Timestamp, [u8; TAG_LEN], Vec<u8>)>,
}

impl OwnedFrame {
    /// Decodes without checking hashes.
    pub fn decode(bytes: &[u8]) -> Result<OwnedFrame, String> {
        let (header, mut rest) = decode_header(bytes)?;
        let mut entries = Vec::new();
        let mut time = header.base_time;
        for _ in 0..header.count {
            let (entry, used): (Entry<'_>, usize) =
                bincode::borrow_decode_from_slice(rest, CONFIG).map_err(|e| e.to_string())?;
            rest = &rest[used..];
            time = time.wrapping_add(entry.time_delta);
            entries.push((Timestamp(time), entry.tag, entry.event.to_vec()));
        }
        Ok(OwnedFrame { header, entries })
    }

    /// Encodes as stored, header fields taken as they are.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = bincode::encode_into_std_write(&self.header, &mut out, CONFIG);
        let mut last = self.header.base_time;
        for (time, tag, event) in &self.entries {
            let entry = Entry {
                time_delta: time.0.wrapping_sub(last),
                tag: *tag,
                event,
            };
            let _ = bincode::encode_into_std_write(entry, &mut out, CONFIG);
            last = time.0;
        }
        out
    }
}
