//! What a link confirms to its source, and when. Pure: the link tells it
//! what happened, it answers the position to confirm now.
//!
//! Confirming a position tells the source's slot that everything before it
//! is durably applied at the target (`walsender/progress.rs`: the source
//! may then throw that WAL away, and a new stream starts after it). So a
//! position is confirmed only once nothing the link received before it is
//! still uncommitted:
//!
//! ```text
//!  event                        confirms
//!  batch committed              its last transaction's end, in commit order
//!                               (batches commit one after the other, lanes.rs)
//!  keepalive between txns,      its position at once: the stream is in order,
//!    nothing pending or in        so the source had nothing more to send
//!    flight                       before it
//!  keepalive between txns,      its position with the commit of the batch that
//!    work before it uncommitted   holds the last of that work (the next batch to
//!                                 start, or the last in flight)
//!  keepalive inside a txn       never: that transaction's commit is not applied
//! ```
//!
//! Keepalives matter for an idle link: with no transaction of interest (or
//! only filtered ones) the source's WAL still moves, and confirming the
//! keepalives lets the slot release it. A position lower than one already
//! confirmed is never answered: the link's position only moves forward.

use std::collections::VecDeque;

use crate::lsn::Lsn;

/// The confirm bookkeeping of one link's stream (a new one for each
/// stream: the source starts from the target's progress).
#[derive(Debug, Default)]
pub struct ConfirmTracker {
    /// The furthest position answered so far.
    confirmed: Lsn,
    /// Whole transactions received and not yet in a batch that started.
    pending: bool,
    /// The batches started and not yet committed, oldest first: what each
    /// one's commit confirms (its last end, or a keepalive after it).
    in_flight: VecDeque<Option<Lsn>>,
    /// A keepalive between transactions, seen while work received before it
    /// was not committed: it goes with the next batch to start, or is
    /// confirmed once nothing is pending or in flight.
    idle_at: Option<Lsn>,
}

impl ConfirmTracker {
    pub fn new() -> ConfirmTracker {
        ConfirmTracker::default()
    }

    /// The furthest position answered so far.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// A whole transaction was received and waits in the pending batch.
    pub fn received(&mut self) {
        self.pending = true;
    }

    /// A keepalive at `wal_end`, received `in_transaction` or between
    /// transactions: the position to confirm now, if any.
    pub fn keepalive(&mut self, wal_end: Lsn, in_transaction: bool) -> Option<Lsn> {
        if in_transaction {
            return None;
        }
        if !self.pending && self.in_flight.is_empty() {
            return self.advance(Some(wal_end));
        }
        self.idle_at = self.idle_at.max(Some(wal_end));
        None
    }

    /// The pending batch started, its last transaction ending at
    /// `last_end`; it commits after every batch started before it.
    pub fn started(&mut self, last_end: Option<Lsn>) {
        self.pending = false;
        let idle_at = self.idle_at.take();
        self.in_flight.push_back(last_end.max(idle_at));
    }

    /// The oldest batch in flight committed: the position to confirm now,
    /// if any.
    pub fn committed(&mut self) -> Option<Lsn> {
        let mut to = self.in_flight.pop_front().flatten();
        if !self.pending && self.in_flight.is_empty() {
            to = to.max(self.idle_at.take());
        }
        self.advance(to)
    }

    /// Answers `to` if it is past what was answered before.
    fn advance(&mut self, to: Option<Lsn>) -> Option<Lsn> {
        let to = to.filter(|&to| to > self.confirmed)?;
        self.confirmed = to;
        Some(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_keepalive_with_nothing_pending_or_in_flight_is_confirmed_at_once() {
        let mut c = ConfirmTracker::new();
        assert_eq!(c.keepalive(Lsn(100), false), Some(Lsn(100)));
        assert_eq!(c.keepalive(Lsn(150), false), Some(Lsn(150)));
        assert_eq!(c.confirmed(), Lsn(150));
    }

    #[test]
    fn a_keepalive_inside_a_transaction_is_never_confirmed() {
        let mut c = ConfirmTracker::new();
        assert_eq!(c.keepalive(Lsn(500), true), None);
        // Not later either: the transaction (ending at 300) is what commits.
        c.received();
        c.started(Some(Lsn(300)));
        assert_eq!(c.committed(), Some(Lsn(300)));
        assert_eq!(c.confirmed(), Lsn(300));
    }

    #[test]
    fn a_batch_confirms_its_last_end_once_committed() {
        let mut c = ConfirmTracker::new();
        c.received();
        c.received();
        c.started(Some(Lsn(200)));
        assert_eq!(c.confirmed(), Lsn(0));
        assert_eq!(c.committed(), Some(Lsn(200)));
    }

    #[test]
    fn a_keepalive_while_a_batch_is_in_flight_waits_for_its_commit() {
        let mut c = ConfirmTracker::new();
        c.received();
        c.started(Some(Lsn(200)));
        assert_eq!(c.keepalive(Lsn(250), false), None);
        assert_eq!(c.committed(), Some(Lsn(250)));
    }

    #[test]
    fn a_keepalive_while_transactions_are_pending_goes_with_their_batch() {
        let mut c = ConfirmTracker::new();
        c.received();
        c.started(Some(Lsn(200)));
        c.received(); // ends at 300, waits for a lane
        assert_eq!(c.keepalive(Lsn(350), false), None);
        // The first batch's commit: 300 is not applied yet.
        assert_eq!(c.committed(), Some(Lsn(200)));
        c.started(Some(Lsn(300)));
        assert_eq!(c.committed(), Some(Lsn(350)));
    }

    #[test]
    fn a_keepalive_before_a_transaction_received_later_waits_for_that_too() {
        let mut c = ConfirmTracker::new();
        c.received();
        c.started(Some(Lsn(200)));
        assert_eq!(c.keepalive(Lsn(250), false), None);
        c.received(); // ends at 300
                      // Something is pending: the keepalive goes with it.
        assert_eq!(c.committed(), Some(Lsn(200)));
        c.started(Some(Lsn(300)));
        assert_eq!(c.committed(), Some(Lsn(300)));
        assert_eq!(c.confirmed(), Lsn(300));
    }

    #[test]
    fn several_batches_in_flight_confirm_in_commit_order() {
        let mut c = ConfirmTracker::new();
        for end in [100, 200, 300] {
            c.received();
            c.started(Some(Lsn(end)));
        }
        // After the last start, between transactions.
        assert_eq!(c.keepalive(Lsn(400), false), None);
        assert_eq!(c.committed(), Some(Lsn(100)));
        assert_eq!(c.committed(), Some(Lsn(200)));
        // The last one out: the keepalive is caught up with it.
        assert_eq!(c.committed(), Some(Lsn(400)));
    }

    #[test]
    fn a_keepalive_between_two_batches_in_flight_goes_with_the_younger() {
        let mut c = ConfirmTracker::new();
        c.received();
        c.started(Some(Lsn(100)));
        assert_eq!(c.keepalive(Lsn(150), false), None);
        c.received();
        c.started(Some(Lsn(200)));
        assert_eq!(c.committed(), Some(Lsn(100)));
        assert_eq!(c.committed(), Some(Lsn(200)));
        assert_eq!(c.confirmed(), Lsn(200));
    }

    #[test]
    fn nothing_is_ever_confirmed_backwards() {
        let mut c = ConfirmTracker::new();
        assert_eq!(c.keepalive(Lsn(500), false), Some(Lsn(500)));
        assert_eq!(c.keepalive(Lsn(400), false), None);
        assert_eq!(c.keepalive(Lsn(500), false), None);
        // A batch of transactions replayed from another site, say, that
        // ended before the keepalive.
        c.received();
        c.started(Some(Lsn(450)));
        assert_eq!(c.committed(), None);
        assert_eq!(c.confirmed(), Lsn(500));
    }

    #[test]
    fn an_empty_batch_confirms_what_waited_for_it() {
        let mut c = ConfirmTracker::new();
        c.received();
        c.started(Some(Lsn(100)));
        c.keepalive(Lsn(120), false);
        c.started(None);
        assert_eq!(c.committed(), Some(Lsn(100)));
        assert_eq!(c.committed(), Some(Lsn(120)));
    }

    /// What the source sends, as the model link receives it.
    #[derive(Debug, Clone)]
    enum Sent {
        /// A whole transaction ending at this position.
        Txn(u64),
        /// A keepalive at this position, inside a transaction or not.
        Keepalive { at: u64, in_transaction: bool },
    }

    /// A source's stream: transactions at growing positions, keepalives
    /// between them (at or past the last end, before the next) and inside
    /// them (up to far past the open transaction's end, as the source's WAL
    /// end may be).
    fn stream() -> impl Strategy<Value = Vec<Sent>> {
        prop::collection::vec((0u8..4, 1u64..50), 1..80).prop_map(|steps| {
            let mut at = 0;
            let mut out = Vec::new();
            for (kind, gap) in steps {
                match kind {
                    0 | 1 => {
                        at += gap;
                        out.push(Sent::Txn(at));
                    }
                    2 => {
                        // The source has sent all before it: what comes
                        // next ends after it.
                        at += gap / 2;
                        out.push(Sent::Keepalive {
                            at,
                            in_transaction: false,
                        });
                    }
                    _ => out.push(Sent::Keepalive {
                        at: at + gap * 3,
                        in_transaction: true,
                    }),
                }
            }
            out
        })
    }

    /// The model link: what it received and has not committed.
    #[derive(Default)]
    struct Model {
        c: ConfirmTracker,
        /// Ends of the pending transactions, and of each batch's in flight.
        pending: Vec<u64>,
        in_flight: VecDeque<Vec<u64>>,
        last: Lsn,
    }

    impl Model {
        fn receive(&mut self, sent: &Sent) {
            match *sent {
                Sent::Txn(end) => {
                    self.pending.push(end);
                    self.c.received();
                }
                Sent::Keepalive { at, in_transaction } => {
                    let answer = self.c.keepalive(Lsn(at), in_transaction);
                    self.check(answer);
                }
            }
        }

        fn start(&mut self) {
            self.c.started(self.pending.last().map(|&e| Lsn(e)));
            self.in_flight.push_back(std::mem::take(&mut self.pending));
        }

        fn commit(&mut self) {
            self.in_flight.pop_front();
            let answer = self.c.committed();
            self.check(answer);
        }

        /// Forward only, and never past a transaction not committed.
        fn check(&mut self, answer: Option<Lsn>) {
            if let Some(to) = answer {
                assert!(to > self.last, "{to} after {}", self.last);
                self.last = to;
                for end in self.pending.iter().chain(self.in_flight.iter().flatten()) {
                    assert!(
                        *end > to.0,
                        "confirmed {to} before the transaction ending at {end}"
                    );
                }
            }
            assert_eq!(self.c.confirmed(), self.last);
        }
    }

    proptest! {
        /// A link receiving `sent`, starting batches on `lanes` lanes and
        /// committing them in order, in whatever interleaving `picks` says:
        /// every answer moves forward and none passes a transaction not yet
        /// committed; once all is committed, the link is caught up to the
        /// last transaction, and to a keepalive between transactions at once.
        #[test]
        fn never_confirms_past_an_uncommitted_transaction(
            sent in stream(),
            lanes in 1usize..4,
            picks in prop::collection::vec(0u8..3, 1..300),
        ) {
            let mut m = Model::default();
            let mut next = sent.iter().peekable();
            let mut picks = picks.into_iter().cycle();
            loop {
                let may_receive = next.peek().is_some();
                let may_start = !m.pending.is_empty() && m.in_flight.len() < lanes;
                let may_commit = !m.in_flight.is_empty();
                match picks.next().unwrap_or(0) {
                    0 if may_receive => m.receive(next.next().unwrap_or(&Sent::Txn(0))),
                    1 if may_start => m.start(),
                    2 if may_commit => m.commit(),
                    _ if may_commit => m.commit(),
                    _ if !m.pending.is_empty() => m.start(),
                    _ => match next.next() {
                        Some(sent) => m.receive(sent),
                        None => break,
                    },
                }
            }
            let last_end = sent.iter().filter_map(|s| match s {
                Sent::Txn(end) => Some(*end),
                Sent::Keepalive { .. } => None,
            }).max().unwrap_or(0);
            prop_assert!(m.c.confirmed().0 >= last_end);
            let idle = Lsn(m.c.confirmed().0 + 1);
            prop_assert_eq!(m.c.keepalive(idle, false), Some(idle));
        }
    }
}
