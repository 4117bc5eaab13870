//! Log sequence numbers: byte positions in a Postgres server's WAL.
//!
//! An LSN is a 64-bit byte offset into the write-ahead log. Everything the
//! replicator tracks is an LSN: where a transaction commits, how far a slot has
//! been confirmed, how far a target has applied, and how many bytes a link
//! lags behind (the difference of two LSNs).
//!
//! Postgres writes an LSN as two hexadecimal numbers, the high and the low 32
//! bits, separated by a slash: `16/B374D848`. PostgreSQL 15 prints them without
//! zero padding (`%X/%X`, e.g. `0/16B3748`), and that is what [`Lsn`]'s
//! `Display` produces, so a value compares equal as text with what
//! `pg_current_wal_lsn()` returns. Parsing follows `pg_lsn_in`: one to eight hex
//! digits on each side (so zero-padded forms such as `0/016B3748` are accepted),
//! nothing else, in either case.
//!
//! The text form itself is tokio-postgres' [`PgLsn`]'s (its `Display` and
//! `FromStr`); `Lsn` adds what `PgLsn` lacks: serde in that text form, the
//! arithmetic of lag, and `pg_lsn_in`'s strictness (PgLsn also takes more
//! than eight digits, or a sign).
//!
//! `Lsn(0)` is `InvalidXLogRecPtr`: Postgres uses it for "no position", for
//! example `START_REPLICATION ... LOGICAL 0/0` means "from the slot's confirmed
//! position".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_postgres::types::PgLsn;

/// A position in the WAL, in bytes (Postgres' `XLogRecPtr` / `pg_lsn`).
///
/// Ordered like the WAL: a later position compares greater. Serialized (serde)
/// in the Postgres text form, so persisted state and status output read like
/// `psql` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`: no position.
    pub const INVALID: Lsn = Lsn(0);
    /// The largest representable position (`FFFFFFFF/FFFFFFFF`).
    pub const MAX: Lsn = Lsn(u64::MAX);

    /// Whether this is a real position (not [`Lsn::INVALID`]).
    pub const fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// The position `bytes` further on, or `None` past [`Lsn::MAX`].
    pub const fn checked_add(self, bytes: u64) -> Option<Lsn> {
        match self.0.checked_add(bytes) {
            Some(v) => Some(Lsn(v)),
            None => None,
        }
    }

    /// The position `bytes` further on, stopping at [`Lsn::MAX`].
    pub const fn saturating_add(self, bytes: u64) -> Lsn {
        Lsn(self.0.saturating_add(bytes))
    }

    /// The number of WAL bytes from `earlier` to `self`, or `None` if `earlier`
    /// is in fact later.
    pub const fn checked_sub(self, earlier: Lsn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }

    /// The number of WAL bytes from `earlier` to `self`, 0 if `earlier` is
    /// later. This is the lag in bytes: `source_end.bytes_since(applied)`.
    pub const fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}

impl From<PgLsn> for Lsn {
    fn from(lsn: PgLsn) -> Self {
        Lsn(u64::from(lsn))
    }
}

impl From<Lsn> for PgLsn {
    fn from(lsn: Lsn) -> Self {
        PgLsn::from(lsn.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        PgLsn::from(*self).fmt(f)
    }
}

/// A string that is not an LSN in Postgres' `X/X` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid LSN {input:?}: expected two groups of 1 to 8 hexadecimal digits \
     separated by '/', like \"16/B374D848\""
)]
pub struct ParseLsnError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError {
            input: s.to_owned(),
        };
        // pg_lsn_in's rule first: 1 to 8 hex digits on each side.
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half_ok = |part: &str| {
            (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if !(half_ok(hi) && half_ok(lo)) {
            return Err(err());
        }
        s.parse::<PgLsn>().map(Lsn::from).map_err(|_| err())
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn displays_like_postgres_15() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::MAX.to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_like_pg_lsn_in() {
        assert_eq!("0/0".parse(), Ok(Lsn(0)));
        assert_eq!("16/b374d848".parse(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("0/016B3748".parse(), Ok(Lsn(0x16B3748)));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse(), Ok(Lsn::MAX));
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0//0",
            "0/0/0",
            "g/0",
            "0/x",
            " 0/0",
            "0/0 ",
            "+1/0",
            "-1/0",
            "123456789/0",
            "0/123456789",
            "0x1/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn error_names_the_input_and_the_form() {
        let err = "nope".parse::<Lsn>().unwrap_err().to_string();
        assert!(err.contains("\"nope\""), "{err}");
        assert!(err.contains("16/B374D848"), "{err}");
    }

    #[test]
    fn arithmetic() {
        let a = Lsn(0x1_0000_0000);
        assert_eq!(a.checked_add(16), Some(Lsn(0x1_0000_0010)));
        assert_eq!(Lsn::MAX.checked_add(1), None);
        assert_eq!(Lsn::MAX.saturating_add(1), Lsn::MAX);
        assert_eq!(Lsn(100).checked_sub(Lsn(40)), Some(60));
        assert_eq!(Lsn(40).checked_sub(Lsn(100)), None);
        assert_eq!(Lsn(100).bytes_since(Lsn(40)), 60);
        assert_eq!(Lsn(40).bytes_since(Lsn(100)), 0);
        assert!(Lsn(1) < Lsn(0x1_0000_0000));
        assert!(!Lsn::INVALID.is_valid());
        assert!(Lsn(1).is_valid());
    }

    #[test]
    fn deserializes_from_the_text_form() {
        use serde::de::value::{Error, StrDeserializer};
        let ok = Lsn::deserialize(StrDeserializer::<Error>::new("16/B374D848"));
        assert_eq!(ok, Ok(Lsn(0x16_B374_D848)));
        let bad = Lsn::deserialize(StrDeserializer::<Error>::new("16-B374D848"));
        assert!(bad.is_err());
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(v in any::<u64>()) {
            let text = Lsn(v).to_string();
            prop_assert_eq!(text.parse::<Lsn>(), Ok(Lsn(v)));
        }

        #[test]
        fn zero_padded_and_lowercase_forms_parse(v in any::<u64>()) {
            let text = format!("{:08x}/{:08x}", v >> 32, v & 0xFFFF_FFFF);
            prop_assert_eq!(text.parse::<Lsn>(), Ok(Lsn(v)));
        }

        #[test]
        fn parse_never_panics(s in ".{0,24}") {
            let _ = s.parse::<Lsn>();
        }

        #[test]
        fn order_is_numeric_order(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(Lsn(a).cmp(&Lsn(b)), a.cmp(&b));
        }
    }
}
