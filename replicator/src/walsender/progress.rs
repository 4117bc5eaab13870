//! The positions a stream reports back to the server, which only ever move
//! forward.
//!
//! # Why they never go backwards
//!
//! The `flushed` position of a standby status update is what a logical slot
//! takes as *confirmed*: the server may then throw away the WAL before it
//! (and the catalog rows needed to decode it), and a new stream on the slot
//! starts after it. Confirming a position therefore says "everything before
//! this is durably applied at the target; never send it again". Two rules
//! follow:
//!
//! - confirm only what the target has durably committed (a Commit's
//!   `end_lsn` after the target transaction committed), never what was merely
//!   received: a crash in between would lose those transactions for good;
//! - never report a *lower* position than before. A position we confirmed
//!   earlier was already durable, so going back can only re-send what was
//!   applied and make progress reporting lie. Older PostgreSQL 15 minor
//!   releases take the reported value as is (`LogicalConfirmReceivedLocation`
//!   did not compare), which moves the slot's `confirmed_flush_lsn` back; the
//!   15.18 the lab runs keeps the slot from going back but still shows the
//!   lower value in `pg_stat_replication.flush_lsn` (the walsender tests saw
//!   both). We rely on neither: a lower value is ignored here.
//!
//! `written` is what was received (the largest XLogData position seen), for
//! the server's lag columns in `pg_stat_replication`; it is never below
//! `flushed`. `applied` equals `flushed`: the target applies a transaction and
//! makes it durable in one commit, so nothing is applied but not durable.

use crate::lsn::Lsn;
use crate::pgoutput::{PgTimestamp, StandbyStatusUpdate};

/// The three positions of a standby status update. Each only increases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Received (and handed to the caller).
    pub written: Lsn,
    /// Durably applied at the target: the slot's confirmed position.
    pub flushed: Lsn,
    /// Applied at the target (same as `flushed`, see the module docs).
    pub applied: Lsn,
}

impl Progress {
    /// Everything before `lsn` is durably applied. A position not above the
    /// current one is ignored; returns whether anything moved.
    pub fn confirm(&mut self, lsn: Lsn) -> bool {
        if lsn <= self.flushed {
            return false;
        }
        self.flushed = lsn;
        self.applied = lsn;
        self.written = self.written.max(lsn);
        true
    }

    /// Data up to `lsn` was received (an XLogData's position; 0 is ignored).
    pub fn receive(&mut self, lsn: Lsn) {
        self.written = self.written.max(lsn);
    }

    /// The status update reporting these positions at `now`.
    pub fn status_update(&self, now: PgTimestamp, reply_requested: bool) -> StandbyStatusUpdate {
        StandbyStatusUpdate {
            written: self.written,
            flushed: self.flushed,
            applied: self.applied,
            now,
            reply_requested,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirm_only_moves_forward() {
        let mut p = Progress::default();
        assert!(p.confirm(Lsn(100)));
        assert!(!p.confirm(Lsn(50)), "a lower confirm is ignored");
        assert!(!p.confirm(Lsn(100)), "an equal confirm changes nothing");
        assert_eq!(
            p,
            Progress {
                written: Lsn(100),
                flushed: Lsn(100),
                applied: Lsn(100)
            }
        );
        assert!(p.confirm(Lsn(200)));
        assert_eq!(p.flushed, Lsn(200));
    }

    #[test]
    fn written_runs_ahead_but_never_below_flushed() {
        let mut p = Progress::default();
        p.receive(Lsn(300));
        p.receive(Lsn(0));
        p.receive(Lsn(250));
        assert_eq!(p.written, Lsn(300));
        p.confirm(Lsn(200));
        assert_eq!(
            (p.written, p.flushed, p.applied),
            (Lsn(300), Lsn(200), Lsn(200))
        );
        p.confirm(Lsn(400));
        assert_eq!(p.written, Lsn(400));
    }

    #[test]
    fn status_update_carries_the_positions() {
        let mut p = Progress::default();
        p.receive(Lsn(0x20));
        p.confirm(Lsn(0x10));
        let bytes = p.status_update(PgTimestamp(7), true).encode();
        let back = StandbyStatusUpdate::decode(&bytes).unwrap();
        assert_eq!(back.written, Lsn(0x20));
        assert_eq!(back.flushed, Lsn(0x10));
        assert_eq!(back.applied, Lsn(0x10));
        assert_eq!(back.now, PgTimestamp(7));
        assert!(back.reply_requested);
    }
}
