//! Postgres timestamps as they travel in the replication protocol.
//!
//! The walsender and pgoutput send a `TimestampTz` as a signed 64-bit count of
//! microseconds since the Postgres epoch, 2000-01-01 00:00:00 UTC (not the Unix
//! epoch). Commit times in Begin/Commit, `send_time` in XLogData and keepalives,
//! and the client's clock in a standby status update all use it. Keeping it as
//! the raw integer loses nothing; [`PgTimestamp::to_system_time`] converts when
//! a caller wants wall-clock time (for lag in seconds, for logs).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the Unix epoch (1970-01-01) to the Postgres epoch (2000-01-01).
pub const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// A `TimestampTz`: microseconds since 2000-01-01 00:00:00 UTC.
///
/// Postgres reserves `i64::MIN` and `i64::MAX` for `-infinity` and `infinity`;
/// they never appear as commit or send times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// 2000-01-01 00:00:00 UTC.
    pub const EPOCH: PgTimestamp = PgTimestamp(0);

    /// The Postgres epoch as a `SystemTime`.
    pub fn epoch_system_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS)
    }

    /// The wall-clock time this timestamp denotes, or `None` if the platform's
    /// `SystemTime` cannot represent it (never for real commit times).
    pub fn to_system_time(self) -> Option<SystemTime> {
        let epoch = Self::epoch_system_time();
        let micros = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            epoch.checked_add(micros)
        } else {
            epoch.checked_sub(micros)
        }
    }

    /// The timestamp of a wall-clock time, truncated to microseconds and
    /// clamped to the `i64` range.
    pub fn from_system_time(time: SystemTime) -> PgTimestamp {
        let clamp = |micros: u128| i64::try_from(micros).unwrap_or(i64::MAX);
        match time.duration_since(Self::epoch_system_time()) {
            Ok(after) => PgTimestamp(clamp(after.as_micros())),
            Err(before) => PgTimestamp(-clamp(before.duration().as_micros())),
        }
    }

    /// The current wall-clock time, for the `now` field of a standby status
    /// update.
    pub fn now() -> PgTimestamp {
        Self::from_system_time(SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_2000_01_01() {
        assert_eq!(
            PgTimestamp::EPOCH.to_system_time(),
            Some(UNIX_EPOCH + Duration::from_secs(946_684_800))
        );
    }

    #[test]
    fn converts_both_ways() {
        // 2024-01-02 03:04:05.000006 UTC.
        let unix = UNIX_EPOCH + Duration::from_micros(1_704_164_645_000_006);
        let ts = PgTimestamp::from_system_time(unix);
        assert_eq!(ts, PgTimestamp(757_479_845_000_006));
        assert_eq!(ts.to_system_time(), Some(unix));
        // Before 2000 is negative.
        let ts = PgTimestamp::from_system_time(UNIX_EPOCH);
        assert_eq!(ts, PgTimestamp(-946_684_800_000_000));
        assert_eq!(ts.to_system_time(), Some(UNIX_EPOCH));
    }

    #[test]
    fn extremes_do_not_panic() {
        let _ = PgTimestamp(i64::MAX).to_system_time();
        let _ = PgTimestamp(i64::MIN).to_system_time();
        assert!(PgTimestamp::now() > PgTimestamp(757_479_845_000_006));
    }
}
