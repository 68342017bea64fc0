//! Timestamps: microseconds since the Unix epoch, UTC.
//!
//! The core never reads a clock; a `Timestamp` arrives inside a record
//! (`recorded_at`) or a command. JSON shows RFC 3339 with microseconds
//! (`2026-11-28T03:36:15.123456Z`), the codec stores the integer.

use std::fmt;

use bincode::{Decode, Encode};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Encode, Decode)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const EPOCH: Timestamp = Timestamp(0);

    pub fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    pub fn saturating_add_micros(self, micros: i64) -> Self {
        Timestamp(self.0.saturating_add(micros))
    }

    /// Parses RFC 3339 (`2026-01-01T00:00:00Z`, any offset, up to
    /// nanoseconds; sub-microsecond digits are dropped).
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed = DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("invalid timestamp `{text}`: {e} (expected RFC 3339)"))?;
        Ok(Timestamp(parsed.timestamp_micros()))
    }

    fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::<Utc>::from_timestamp_micros(self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_datetime() {
            Some(dt) => f.write_str(&dt.to_rfc3339_opts(SecondsFormat::Micros, true)),
            None => write!(f, "@{}us", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_json_round_trips_with_microseconds() {
        let t = Timestamp::parse("2026-11-28T03:36:15.123456Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-28T03:36:15.123456Z");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn timestamp_parse_accepts_offsets_and_rejects_garbage() {
        let a = Timestamp::parse("2026-01-01T01:00:00+01:00").unwrap();
        let b = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(a, b);
        assert!(
            Timestamp::parse("yesterday")
                .unwrap_err()
                .contains("RFC 3339")
        );
    }
}
