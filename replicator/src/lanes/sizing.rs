//! How many lanes a link applies over when `apply_workers = "auto"`. Pure:
//! the link reports each batch it starts and asks, with the time, whether
//! to add or give back a lane ([`Sizer::tick`]).
//!
//! What more lanes buy depends on the target and on the workload, neither
//! of which the replicator can read from a setting: a target across a WAN
//! spends most of a batch on round trips, which lanes overlap; a target on
//! the source's cores has nothing to spare; a workload whose every batch
//! touches the same rows (TPC-B's branches) cannot run two batches at once
//! at all, and extra lanes only start batches earlier and smaller. So the
//! link starts with one lane and adds one only when it has seen, in a
//! window of [`WINDOW`], that the lanes held it back:
//!
//! - **wanted**: most batches ([`WANT`]) found every lane busy while their
//!   rows met none of the batches in flight, so another lane would have
//!   started them. Batches that met a batch in flight would have waited
//!   anyway and do not count.
//! - **tried**: a lane added is kept only if the next window applied at
//!   least [`GAIN`] times the rows a second of the window that asked for it
//!   (the target had something to spare). Else it is given back and the next
//!   try waits, twice as long each time ([`BACKOFF_FIRST`] up to
//!   [`BACKOFF_MAX`]): on a target that is already busy the link settles
//!   where the target stops giving more.
//! - **given back**: a lane goes when most batches that found a lane free
//!   could not use it because their rows met a batch in flight ([`MEET`]),
//!   or when for [`QUIET_WINDOWS`] windows hardly any batch waited for a
//!   lane (the load fell; the connection is the target's again).
//!
//! Never more than the ceiling the link gives it (a share of the target's
//! free connections, see `link.rs`), never fewer than one.

use std::time::{Duration, Instant};

use crate::config::defaults::{AUTO_APPLY_WORKERS_MAX, AUTO_SHARE_OF_FREE_CONNECTIONS};

/// How long the link watches before it decides: a window lasts this long
/// and until [`MIN_BATCHES`] batches started (a target far away applies
/// few, large batches a second), but no longer than [`LONGEST_WINDOW`].
pub const WINDOW: Duration = Duration::from_secs(1);
/// A window with fewer batches started says nothing about the lanes (a
/// window of quiet, see [`QUIET_WINDOWS`]).
pub const MIN_BATCHES: u64 = 8;
/// A window ends by then whatever it saw.
pub const LONGEST_WINDOW: Duration = Duration::from_secs(5);
/// The share of a window's batches that must have wanted a lane (every lane
/// busy, rows disjoint from those in flight) for the link to try one more.
pub const WANT: f64 = 0.5;
/// The share of a window's batches held back by shared rows (a lane free,
/// their rows met a batch in flight) that gives a lane back.
pub const MEET: f64 = 0.5;
/// A window whose batches waited for a lane less often than this is quiet.
pub const QUIET: f64 = 0.1;
/// The gain in rows a second a lane added must bring to stay.
pub const GAIN: f64 = 1.15;
/// The wait before trying a lane again after one did not pay, doubled each
/// time it does not, up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Quiet windows in a row after which a lane is given back.
pub const QUIET_WINDOWS: u32 = 30;

/// The most lanes `auto` opens for a link on a target with `free`
/// connections free when the link starts: a share of them
/// ([`AUTO_SHARE_OF_FREE_CONNECTIONS`]), at least one, at most
/// [`AUTO_APPLY_WORKERS_MAX`].
pub fn ceiling(free: i64) -> usize {
    let share = usize::try_from(free.max(0)).unwrap_or(usize::MAX) / AUTO_SHARE_OF_FREE_CONNECTIONS;
    share.clamp(1, AUTO_APPLY_WORKERS_MAX)
}

/// How a batch started, as the link saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Start {
    /// Its row changes.
    pub rows: u64,
    /// It found every lane busy while its rows met none of the batches in
    /// flight: another lane would have started it.
    pub wanted_lane: bool,
    /// It found every lane busy (whatever its rows).
    pub waited: bool,
    /// It found a lane free but its rows met a batch in flight.
    pub held_back: bool,
}

/// A decision: the lanes the link should apply over from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    pub to: usize,
    pub why: Why,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Batches waited for a lane with rows nothing in flight touched.
    Wanted,
    /// The lane tried did not raise the rows applied a second.
    NoGain,
    /// Batches that found a lane free met a batch in flight.
    SharedRows,
    /// Hardly any batch waited for a lane for a while.
    Quiet,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Wanted => "batches waited for a lane with rows nothing in flight touched",
            Why::NoGain => "the lane added did not raise the rows applied a second",
            Why::SharedRows => "batches that found a lane free touched rows of a batch in flight",
            Why::Quiet => "hardly any batch waited for a lane",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    batches: u64,
    rows: u64,
    wanted: u64,
    waited: u64,
    held_back: u64,
}

impl Window {
    fn share(&self, n: u64) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            n as f64 / self.batches as f64
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Steady,
    /// A lane was added; `before` is the rows a second of the window that
    /// asked for it.
    Trial {
        before: f64,
    },
}

/// The lane count of one link in `auto` mode.
#[derive(Debug)]
pub struct Sizer {
    lanes: usize,
    ceiling: usize,
    state: State,
    window: Window,
    window_start: Instant,
    quiet: u32,
    backoff: Duration,
    /// No lane is tried before this (after one did not pay).
    retry_at: Option<Instant>,
}

impl Sizer {
    /// One lane, at most `ceiling` (at least one).
    pub fn new(ceiling: usize, now: Instant) -> Sizer {
        Sizer {
            lanes: 1,
            ceiling: ceiling.max(1),
            state: State::Steady,
            window: Window::default(),
            window_start: now,
            quiet: 0,
            backoff: BACKOFF_FIRST,
            retry_at: None,
        }
    }

    /// The lanes the link applies over now.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// The link has carried out the last decision (a lane opened takes a
    /// connection, which can take a while across a WAN): the window that
    /// judges it starts now, without that wait.
    pub fn resized(&mut self, now: Instant) {
        self.window = Window::default();
        self.window_start = now;
    }

    /// The link started a batch.
    pub fn started(&mut self, s: Start) {
        let w = &mut self.window;
        w.batches += 1;
        w.rows += s.rows;
        w.wanted += u64::from(s.wanted_lane);
        w.waited += u64::from(s.waited || s.wanted_lane);
        w.held_back += u64::from(s.held_back);
    }

    /// The lane last added could not be opened (the target refused the
    /// connection, or still held the lane's origin for a connection just
    /// closed): the link stays where it was and tries again after the
    /// backoff, as after a lane that did not pay.
    pub fn grow_failed(&mut self, now: Instant) {
        if let State::Trial { .. } = self.state {
            self.give_back(now, Why::NoGain, true);
        }
    }

    /// Whether the link should change its lane count, at `now`: decided
    /// once a window, at the first call after it ends.
    pub fn tick(&mut self, now: Instant) -> Option<Resize> {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW || (self.window.batches < MIN_BATCHES && elapsed < LONGEST_WINDOW) {
            return None;
        }
        let w = std::mem::take(&mut self.window);
        self.window_start = now;
        // A long gap between calls (nothing streamed) is that many quiet
        // windows.
        let windows = u32::try_from(elapsed.as_millis() / WINDOW.as_millis().max(1))
            .unwrap_or(u32::MAX)
            .max(1);
        let rate = w.rows as f64 / elapsed.as_secs_f64();
        let counts = w.batches >= MIN_BATCHES;
        let quiet = !counts || w.share(w.waited) < QUIET;
        self.quiet = if quiet {
            self.quiet.saturating_add(windows)
        } else {
            0
        };

        if let State::Trial { before } = self.state {
            if counts && w.share(w.waited) >= WANT {
                if rate >= before * GAIN {
                    // The target gave more: keep it; the next window may
                    // ask for another.
                    self.state = State::Steady;
                    self.backoff = BACKOFF_FIRST;
                    self.quiet = 0;
                    return None;
                }
                return Some(self.give_back(now, Why::NoGain, true));
            }
            // The load fell while trying: nothing learnt, no longer a wait
            // than the first.
            return Some(self.give_back(now, Why::Quiet, false));
        }

        if self.lanes > 1 && counts && w.share(w.held_back) >= MEET {
            return Some(self.give_back(now, Why::SharedRows, true));
        }
        if self.lanes > 1 && self.quiet >= QUIET_WINDOWS {
            self.quiet = 0;
            self.lanes -= 1;
            return Some(Resize {
                to: self.lanes,
                why: Why::Quiet,
            });
        }
        let may_try = self.retry_at.is_none_or(|at| now >= at);
        if counts && self.lanes < self.ceiling && may_try && w.share(w.wanted) >= WANT {
            self.lanes += 1;
            self.state = State::Trial { before: rate };
            return Some(Resize {
                to: self.lanes,
                why: Why::Wanted,
            });
        }
        None
    }

    /// One lane fewer; the next try waits (longer each time if `doubled`).
    fn give_back(&mut self, now: Instant, why: Why, doubled: bool) -> Resize {
        self.state = State::Steady;
        self.lanes = self.lanes.saturating_sub(1).max(1);
        self.retry_at = Some(now + self.backoff);
        if doubled {
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        } else {
            self.backoff = BACKOFF_FIRST;
        }
        Resize {
            to: self.lanes,
            why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of `batches` starts of `rows` rows each, then the tick at
    /// its end.
    fn window(
        s: &mut Sizer,
        now: &mut Instant,
        batches: u64,
        rows: u64,
        how: Start,
    ) -> Option<Resize> {
        for _ in 0..batches {
            s.started(Start { rows, ..how });
        }
        *now += WINDOW;
        s.tick(*now)
    }

    const WANTED: Start = Start {
        rows: 0,
        wanted_lane: true,
        waited: true,
        held_back: false,
    };
    const MET: Start = Start {
        rows: 0,
        wanted_lane: false,
        waited: true,
        held_back: false,
    };
    const HELD: Start = Start {
        rows: 0,
        wanted_lane: false,
        waited: false,
        held_back: true,
    };
    const FREE: Start = Start {
        rows: 0,
        wanted_lane: false,
        waited: false,
        held_back: false,
    };

    #[test]
    fn a_lane_is_added_while_it_pays_and_no_further() {
        let mut now = Instant::now();
        let mut s = Sizer::new(8, now);
        // A target that applies 1,000 rows a second a lane, up to three.
        let mut got = Vec::new();
        for _ in 0..40 {
            let rate = 1_000 * s.lanes().min(3) as u64;
            if let Some(r) = window(&mut s, &mut now, 10, rate / 10, WANTED) {
                got.push((r.to, r.why));
            }
        }
        assert_eq!(
            got[..4],
            [
                (2, Why::Wanted),
                (3, Why::Wanted),
                (4, Why::Wanted),
                (3, Why::NoGain)
            ]
        );
        assert_eq!(s.lanes(), 3);
        // Tries again only after the backoff, and gives back again.
        assert!(got.len() > 4 && got[4..].iter().all(|(to, _)| *to == 3 || *to == 4));
    }

    #[test]
    fn the_ceiling_is_a_share_of_the_free_connections() {
        // Postgres' default 100 connections, 3 reserved, a few in use.
        assert_eq!(ceiling(90), 8);
        assert_eq!(ceiling(20), 5);
        assert_eq!(ceiling(3), 1);
        assert_eq!(ceiling(-4), 1);
        assert_eq!(ceiling(i64::MAX), 8);
    }

    #[test]
    fn a_window_waits_for_enough_batches() {
        // A target far away: two batches a second, each wanting a lane.
        let mut now = Instant::now();
        let mut s = Sizer::new(8, now);
        let mut asked = None;
        for second in 1..=10 {
            if let Some(r) = window(&mut s, &mut now, 2, 500, WANTED) {
                asked = Some((second, r.to));
                break;
            }
        }
        assert_eq!(asked, Some((4, 2)), "decided once 8 batches had started");
    }

    #[test]
    fn batches_that_meet_never_ask_for_a_lane() {
        let mut now = Instant::now();
        let mut s = Sizer::new(8, now);
        for _ in 0..100 {
            assert_eq!(window(&mut s, &mut now, 50, 100, MET), None);
        }
        assert_eq!(s.lanes(), 1);
    }

    #[test]
    fn shared_rows_with_a_lane_free_give_a_lane_back() {
        let mut now = Instant::now();
        let mut s = Sizer::new(8, now);
        assert_eq!(
            window(&mut s, &mut now, 10, 100, WANTED).map(|r| r.to),
            Some(2)
        );
        assert_eq!(window(&mut s, &mut now, 10, 200, WANTED), None);
        assert_eq!(s.lanes(), 2);
        let r = window(&mut s, &mut now, 10, 100, HELD);
        assert_eq!(
            r,
            Some(Resize {
                to: 1,
                why: Why::SharedRows
            })
        );
        // Not tried again before the backoff.
        for _ in 0..(BACKOFF_FIRST.as_secs() - 2) {
            assert_eq!(window(&mut s, &mut now, 10, 100, WANTED), None);
        }
        now += Duration::from_secs(2);
        assert_eq!(
            window(&mut s, &mut now, 10, 100, WANTED).map(|r| r.to),
            Some(2)
        );
    }

    #[test]
    fn a_quiet_link_gives_lanes_back_one_at_a_time() {
        let mut now = Instant::now();
        let mut s = Sizer::new(8, now);
        window(&mut s, &mut now, 10, 100, WANTED);
        window(&mut s, &mut now, 10, 200, WANTED);
        window(&mut s, &mut now, 10, 400, WANTED);
        window(&mut s, &mut now, 10, 800, WANTED);
        assert_eq!(s.lanes(), 3);
        let mut given = Vec::new();
        for _ in 0..(2 * QUIET_WINDOWS) {
            if let Some(r) = window(&mut s, &mut now, 10, 100, FREE) {
                given.push(r);
            }
        }
        assert_eq!(
            given,
            [
                Resize {
                    to: 2,
                    why: Why::Quiet
                },
                Resize {
                    to: 1,
                    why: Why::Quiet
                }
            ]
        );
        // One lane stays.
        for _ in 0..QUIET_WINDOWS {
            assert_eq!(window(&mut s, &mut now, 0, 0, FREE), None);
        }
        // A long silence is as many quiet windows.
        let mut s = Sizer::new(8, now);
        window(&mut s, &mut now, 10, 100, WANTED);
        window(&mut s, &mut now, 10, 200, WANTED);
        now += WINDOW * QUIET_WINDOWS;
        assert_eq!(
            s.tick(now),
            Some(Resize {
                to: 1,
                why: Why::Quiet
            })
        );
    }

    #[test]
    fn the_ceiling_caps_the_lanes_and_a_refused_connection_waits() {
        let mut now = Instant::now();
        let mut s = Sizer::new(2, now);
        let mut rate = 100;
        for _ in 0..20 {
            rate *= 2;
            window(&mut s, &mut now, 10, rate, WANTED);
        }
        assert_eq!(s.lanes(), 2);
        let mut s = Sizer::new(8, now);
        assert_eq!(
            window(&mut s, &mut now, 10, 100, WANTED).map(|r| r.to),
            Some(2)
        );
        s.grow_failed(now);
        assert_eq!(s.lanes(), 1);
        for _ in 0..(BACKOFF_FIRST.as_secs() - 1) {
            assert_eq!(window(&mut s, &mut now, 10, 1000, WANTED), None);
        }
        assert_eq!(
            window(&mut s, &mut now, 10, 1000, WANTED).map(|r| r.to),
            Some(2)
        );
    }

    #[test]
    fn a_trial_the_load_left_is_given_back_without_a_longer_wait() {
        let mut now = Instant::now();
        let mut s = Sizer::new(8, now);
        assert_eq!(
            window(&mut s, &mut now, 10, 100, WANTED).map(|r| r.to),
            Some(2)
        );
        // The load fell: batches start on free lanes.
        let r = window(&mut s, &mut now, 10, 10, FREE);
        assert_eq!(
            r,
            Some(Resize {
                to: 1,
                why: Why::Quiet
            })
        );
        now += BACKOFF_FIRST;
        assert_eq!(
            window(&mut s, &mut now, 10, 100, WANTED).map(|r| r.to),
            Some(2)
        );
        // Too few batches to judge: the window goes on, up to its longest.
        let longest = LONGEST_WINDOW.as_secs();
        for _ in 1..longest {
            assert_eq!(window(&mut s, &mut now, 1, 10, WANTED), None);
        }
        assert_eq!(
            window(&mut s, &mut now, 1, 10, WANTED),
            Some(Resize {
                to: 1,
                why: Why::Quiet
            })
        );
    }
}
