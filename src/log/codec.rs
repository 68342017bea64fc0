//! The canonical bytes of an event: the bincode encoding of a versioned
//! envelope.
//!
//! `Envelope::V1` wraps today's [`Event`]. When an existing variant gains or
//! loses a field, the old definition is frozen as `v1::Event`, a `V2` is
//! added, and decoding converts V1 into the current type, so a ledger
//! written years ago still decodes and still hashes to the same values.
//! Decoding never panics: bad bytes are an error and the caller names the
//! seq.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};

use crate::domain::Event;

/// Varint little-endian bincode with a 16 MiB allocation limit so that
/// corrupted lengths cannot ask for absurd allocations.
pub type Config =
    Configuration<LittleEndian, Varint, Limit<{ crate::domain::limits::DECODE_BYTES_MAX }>>;

pub const CONFIG: Config =
    bincode::config::standard().with_limit::<{ crate::domain::limits::DECODE_BYTES_MAX }>();

#[derive(Encode)]
enum EnvelopeRef<'a> {
    V1(&'a Event),
}

#[derive(Decode)]
enum Envelope {
    V1(Event),
}

/// Appends the canonical bytes of `event` to `out`.
pub fn encode_event_into(event: &Event, out: &mut Vec<u8>) {
    // Encoding into a Vec cannot fail: every field type encodes infallibly.
    let _ = bincode::encode_into_std_write(EnvelopeRef::V1(event), out, CONFIG);
}

pub fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_event_into(event, &mut out);
    out
}

/// Decodes canonical bytes; every byte must be used.
pub fn decode_event(bytes: &[u8]) -> Result<Event, String> {
    let (envelope, used): (Envelope, usize) =
        bincode::decode_from_slice(bytes, CONFIG).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the event",
            bytes.len() - used
        ));
    }
    match envelope {
        Envelope::V1(event) => Ok(event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Category, Micros};

    #[test]
    fn codec_round_trips_and_rejects_garbage() {
        let event = Event::CostIncurred {
            tenant: "acme".into(),
            task: None,
            category: Category::Rerank,
            amount_micros: Micros(42),
        };
        let bytes = encode_event(&event);
        assert_eq!(bytes[0], 0, "envelope version V1 is variant 0");
        assert_eq!(decode_event(&bytes).unwrap(), event);
        assert!(decode_event(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_event(&longer).unwrap_err().contains("trailing"));
        assert!(decode_event(&[7, 255, 255, 255]).is_err());
        assert!(decode_event(&[]).is_err());
    }
}
