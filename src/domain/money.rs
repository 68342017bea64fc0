//! Money as integer micro-units of the tenant's currency.
//!
//! No floats: every amount is an `i64` count of micros and every operation is
//! checked, so an overflow is a rejection instead of a silent wrap.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// An amount of money in micros (1 unit of currency = 1,000,000 micros).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    Serialize,
    Deserialize,
    Encode,
    Decode,
)]
#[serde(transparent)]
pub struct Micros(pub i64);

impl Micros {
    pub const ZERO: Micros = Micros(0);
    pub const PER_UNIT: i64 = 1_000_000;

    pub fn checked_add(self, other: Micros) -> Option<Micros> {
        self.0.checked_add(other.0).map(Micros)
    }

    pub fn checked_sub(self, other: Micros) -> Option<Micros> {
        self.0.checked_sub(other.0).map(Micros)
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// `self / whole` in basis points (1 bp = 0.01 %), rounded down; a zero
    /// `whole` counts any positive amount as 100 %.
    pub fn basis_points_of(self, whole: Micros) -> i64 {
        if whole.0 <= 0 {
            return if self.0 > 0 { 10_000 } else { 0 };
        }
        let bp = i128::from(self.0) * 10_000 / i128::from(whole.0);
        i64::try_from(bp).unwrap_or(i64::MAX)
    }
}

/// Shows `12.345678` (currency units with six decimals), exact.
impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let per = Self::PER_UNIT.unsigned_abs();
        write!(f, "{sign}{}.{:06}", abs / per, abs % per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_display_is_exact() {
        assert_eq!(Micros(1_500_000).to_string(), "1.500000");
        assert_eq!(Micros(-7).to_string(), "-0.000007");
        assert_eq!(Micros(i64::MIN).to_string(), "-9223372036854.775808");
    }

    #[test]
    fn micros_basis_points_round_down_and_handle_zero_budget() {
        assert_eq!(Micros(8_000).basis_points_of(Micros(10_000)), 8_000);
        assert_eq!(Micros(7_999).basis_points_of(Micros(10_000)), 7_999);
        assert_eq!(Micros(1).basis_points_of(Micros(3)), 3_333);
        assert_eq!(Micros(1).basis_points_of(Micros(0)), 10_000);
        assert_eq!(Micros(0).basis_points_of(Micros(0)), 0);
        assert_eq!(Micros(i64::MAX).basis_points_of(Micros(1)), i64::MAX);
    }

    #[test]
    fn micros_checked_arithmetic_reports_overflow() {
        assert_eq!(Micros(i64::MAX).checked_add(Micros(1)), None);
        assert_eq!(Micros(5).checked_sub(Micros(7)), Some(Micros(-2)));
    }
}
