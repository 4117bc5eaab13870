//! The planned switchover of one shard from site A to site B, as a pure
//! state machine (see `docs/design.md`, "Failover"). No I/O: the operator
//! command feeds it what happened (a CAS landed, a fence closed, the marker
//! was applied, a step failed or timed out) and it answers with the next
//! action. Its state is a plain serde value, persisted under
//! `{prefix}/ops/...` so a crashed command can be re-run and continue from
//! where it stopped.
//!
//! ```text
//!  Start ──CAS frozen(e+1)──▶ Frozen ──fence A closed──▶ Fenced ──marker in A's WAL──▶ CatchingUp
//!    │                          │                          │                             │ marker applied at B
//!    │                          └────────── failure / timeout / abort ──────────┐        ▼
//!    │                                                                           ├──▶ RollingBack ──CAS A active(e+2)──▶ RolledBack
//!    │                                                                           │
//!    └─ (already home B: nothing to do)    Opening ◀─────────┤ (not after the flip CAS)
//!                                            │ B's fence opened ahead at e+2
//!                                            ▼
//!                                          Flipping ──CAS home B active(e+2)──▶ Done (B's fence confirmed)
//!
//! RolledBack reconciles both fences: A reopens, a fence opened ahead at B closes.
//! ```
//!
//! A CAS whose answer was lost (a timeout after it landed) shows up on the
//! next attempt as a stale epoch: the caller then reads the shard and feeds
//! `CasLanded` if it is already in the state asked for. A rollback CAS that
//! finds the shard active at `to` with `epoch + 2` means the flip landed
//! after all: the switchover is done, not rolled back.
//!
//! Invariants the transitions keep: every change of the shard is a CAS with a
//! strictly greater epoch; writes for the shard are accepted at B only after
//! B has applied everything A accepted (the marker) and A's fence is closed;
//! once the flip CAS has landed there is no rollback (B is the home; the old
//! home stays fenced). B's fence opens just before the flip (no router sends
//! the shard to B before it), so the writes the routers release when they
//! see the flip are not refused.

use serde::{Deserialize, Serialize};

use crate::model::{Epoch, ShardId, ShardState};

pub mod batch;
pub mod close;
pub mod driver;
pub mod dry_run;
pub mod operations;
pub mod plan;

/// Where a switchover is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Nothing done yet; the shard is at `from`, active, at `epoch`.
    Start,
    /// The shard is frozen at `from` with epoch `epoch + 1`.
    Frozen,
    /// `from`'s database refuses the shard's writes.
    Fenced,
    /// A marker was emitted in `from`'s WAL at this LSN (text form).
    CatchingUp { marker_lsn: String },
    /// The marker is applied at `to`: `to`'s fence is opened ahead of the
    /// flip, at `epoch + 2`, so writes the routers release on seeing the
    /// flip find it open. Safe: `from` is fenced and has nothing `to` lacks,
    /// and no router sends the shard to `to` before the flip.
    Opening,
    /// `to`'s fence is open: the flip CAS may be made.
    Flipping,
    /// The shard is active at `to` with epoch `epoch + 2`.
    Done,
    /// Undoing: the shard goes back to `from`, active, epoch `epoch + 2`.
    RollingBack { reason: String },
    /// Undone.
    RolledBack { reason: String },
}

/// A switchover's persisted record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    pub shard: ShardId,
    pub from: String,
    pub to: String,
    /// The shard's epoch when the switchover started.
    pub epoch: Epoch,
    pub step: Step,
}

/// What happened since the last step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The CAS asked for by the last action landed.
    CasLanded,
    /// `from`'s fence is closed (in-flight writes finished).
    FenceClosed,
    /// The marker was written at `from`, at this LSN.
    MarkerEmitted { lsn: String },
    /// Link `from->to` applied the marker.
    MarkerApplied,
    /// `to`'s fence is open.
    FenceOpened,
    /// A step failed, timed out or the operator aborted.
    Failed { reason: String },
    /// The rollback CAS found the shard already active at `to` with
    /// `epoch + 2`: the flip landed after all (its answer was lost).
    FlipFound,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// CAS the shard from `expected` to (`home`, `state`, `epoch`).
    Cas {
        expected: Epoch,
        home: String,
        state: ShardState,
        epoch: Epoch,
    },
    /// Close `site`'s fence for the shard (waits for in-flight writes).
    CloseFence { site: String },
    /// Emit a marker in `site`'s WAL.
    EmitMarker { site: String },
    /// Wait until link `from->to` has applied the marker at `lsn`.
    AwaitMarker { link: String, lsn: String },
    /// Open `site`'s fence for the shard at `epoch`, ahead of the topology.
    OpenFenceAhead { site: String, epoch: Epoch },
    /// Open `site`'s fence for the shard (reconcile it with the topology).
    OpenFence { site: String },
    /// After a rollback: reconcile both sites' fences with the topology
    /// (reopens `from`, closes a fence opened ahead at `to`).
    RestoreFences { sites: Vec<String> },
    /// Nothing more: the switchover is over (done or rolled back).
    Finished,
}

/// A transition that does not fit the current step: a bug or a corrupted
/// record, never guessed around.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("switchover of shard {shard}: event {event} does not fit step {step}")]
pub struct Unexpected {
    pub shard: ShardId,
    pub step: String,
    pub event: String,
}

impl Switchover {
    pub fn new(shard: ShardId, from: &str, to: &str, epoch: Epoch) -> Switchover {
        Switchover {
            shard,
            from: from.into(),
            to: to.into(),
            epoch,
            step: Step::Start,
        }
    }

    /// The action the current step calls for (also what a re-run does first).
    pub fn action(&self) -> Action {
        match &self.step {
            Step::Start => Action::Cas {
                expected: self.epoch,
                home: self.from.clone(),
                state: ShardState::Frozen,
                epoch: self.epoch + 1,
            },
            Step::Frozen => Action::CloseFence {
                site: self.from.clone(),
            },
            Step::Fenced => Action::EmitMarker {
                site: self.from.clone(),
            },
            Step::CatchingUp { marker_lsn } => Action::AwaitMarker {
                link: format!("{}->{}", self.from, self.to),
                lsn: marker_lsn.clone(),
            },
            Step::Opening => Action::OpenFenceAhead {
                site: self.to.clone(),
                epoch: self.epoch + 2,
            },
            Step::Flipping => Action::Cas {
                expected: self.epoch + 1,
                home: self.to.clone(),
                state: ShardState::Active,
                epoch: self.epoch + 2,
            },
            Step::RollingBack { .. } => Action::Cas {
                expected: self.epoch + 1,
                home: self.from.clone(),
                state: ShardState::Active,
                epoch: self.epoch + 2,
            },
            Step::Done => Action::OpenFence {
                site: self.to.clone(),
            },
            Step::RolledBack { .. } => Action::RestoreFences {
                sites: vec![self.from.clone(), self.to.clone()],
            },
        }
    }

    /// Advances on `event`; the caller persists the result, then performs
    /// [`Switchover::action`].
    pub fn on(&self, event: Event) -> Result<Switchover, Unexpected> {
        let mut next = self.clone();
        next.step = match (&self.step, &event) {
            // A failure before the flip rolls back; after it, there is no
            // going back (B is the home and A stays fenced).
            (
                Step::Frozen
                | Step::Fenced
                | Step::CatchingUp { .. }
                | Step::Opening
                | Step::Flipping,
                Event::Failed { reason },
            ) => Step::RollingBack {
                reason: reason.clone(),
            },
            // Failing before anything changed: nothing to undo.
            (Step::Start, Event::Failed { reason }) => Step::RolledBack {
                reason: reason.clone(),
            },
            (Step::Start, Event::CasLanded) => Step::Frozen,
            (Step::Frozen, Event::FenceClosed) => Step::Fenced,
            (Step::Fenced, Event::MarkerEmitted { lsn }) => Step::CatchingUp {
                marker_lsn: lsn.clone(),
            },
            (Step::CatchingUp { .. }, Event::MarkerApplied) => Step::Opening,
            (Step::Opening, Event::FenceOpened) => Step::Flipping,
            (Step::Flipping, Event::CasLanded) => Step::Done,
            (Step::RollingBack { reason }, Event::CasLanded) => Step::RolledBack {
                reason: reason.clone(),
            },
            (Step::RollingBack { .. } | Step::Flipping, Event::FlipFound) => Step::Done,
            // Opening the final fence is idempotent and ends nothing new.
            (Step::Done, Event::FenceOpened) => Step::Done,
            (Step::RolledBack { reason }, Event::FenceOpened) => Step::RolledBack {
                reason: reason.clone(),
            },
            (step, event) => {
                return Err(Unexpected {
                    shard: self.shard,
                    step: format!("{step:?}"),
                    event: format!("{event:?}"),
                })
            }
        };
        Ok(next)
    }

    /// The names ([`Switchover::step_name`]) of the steps a planned
    /// switchover goes through when nothing fails, in order: where a
    /// crash failpoint (`switchover.<step>`) can stop the command.
    pub const FORWARD_STEPS: [&'static str; 7] = [
        "start",
        "frozen",
        "fenced",
        "catching_up",
        "opening",
        "flipping",
        "done",
    ];

    /// A short name of the step, for records, failpoints and displays.
    pub fn step_name(&self) -> &'static str {
        match self.step {
            Step::Start => "start",
            Step::Frozen => "frozen",
            Step::Fenced => "fenced",
            Step::CatchingUp { .. } => "catching_up",
            Step::Opening => "opening",
            Step::Flipping => "flipping",
            Step::Done => "done",
            Step::RollingBack { .. } => "rolling_back",
            Step::RolledBack { .. } => "rolled_back",
        }
    }

    /// Over: nothing more to do after the final fence action.
    pub fn is_over(&self) -> bool {
        matches!(self.step, Step::Done | Step::RolledBack { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[Event]) -> (Switchover, Vec<Action>) {
        let mut s = Switchover::new(7, "beijing", "shanghai", 4);
        let mut actions = vec![s.action()];
        for e in events {
            s = s.on(e.clone()).unwrap();
            actions.push(s.action());
        }
        (s, actions)
    }

    #[test]
    fn the_happy_path() {
        let (s, actions) = run(&[
            Event::CasLanded,
            Event::FenceClosed,
            Event::MarkerEmitted {
                lsn: "0/16B3748".into(),
            },
            Event::MarkerApplied,
            Event::FenceOpened,
            Event::CasLanded,
        ]);
        assert_eq!(s.step, Step::Done);
        assert!(s.is_over());
        assert_eq!(
            actions,
            vec![
                Action::Cas {
                    expected: 4,
                    home: "beijing".into(),
                    state: ShardState::Frozen,
                    epoch: 5
                },
                Action::CloseFence {
                    site: "beijing".into()
                },
                Action::EmitMarker {
                    site: "beijing".into()
                },
                Action::AwaitMarker {
                    link: "beijing->shanghai".into(),
                    lsn: "0/16B3748".into()
                },
                Action::OpenFenceAhead {
                    site: "shanghai".into(),
                    epoch: 6
                },
                Action::Cas {
                    expected: 5,
                    home: "shanghai".into(),
                    state: ShardState::Active,
                    epoch: 6
                },
                Action::OpenFence {
                    site: "shanghai".into()
                },
            ]
        );
    }

    #[test]
    fn a_failure_before_the_flip_rolls_back_with_a_new_epoch() {
        for fail_after in 1..=5 {
            let happy = [
                Event::CasLanded,
                Event::FenceClosed,
                Event::MarkerEmitted { lsn: "0/1".into() },
                Event::MarkerApplied,
                Event::FenceOpened,
            ];
            let mut events: Vec<Event> = happy[..fail_after].to_vec();
            events.push(Event::Failed {
                reason: "timeout".into(),
            });
            let (s, actions) = run(&events);
            assert!(matches!(s.step, Step::RollingBack { .. }), "{fail_after}");
            assert_eq!(
                actions.last(),
                Some(&Action::Cas {
                    expected: 5,
                    home: "beijing".into(),
                    state: ShardState::Active,
                    epoch: 6
                })
            );
            let s = s.on(Event::CasLanded).unwrap();
            assert!(matches!(s.step, Step::RolledBack { .. }));
            assert_eq!(
                s.action(),
                Action::RestoreFences {
                    sites: vec!["beijing".into(), "shanghai".into()]
                }
            );
        }
    }

    #[test]
    fn no_rollback_after_the_flip_and_no_out_of_order_events() {
        let (s, _) = run(&[
            Event::CasLanded,
            Event::FenceClosed,
            Event::MarkerEmitted { lsn: "0/1".into() },
            Event::MarkerApplied,
            Event::FenceOpened,
            Event::CasLanded,
        ]);
        assert!(s
            .on(Event::Failed {
                reason: "late".into()
            })
            .is_err());
        let start = Switchover::new(1, "a", "b", 1);
        assert!(start.on(Event::MarkerApplied).is_err());
        assert!(start.on(Event::FenceClosed).is_err());
    }

    #[test]
    fn a_rollback_that_finds_the_flip_landed_is_done() {
        let (s, _) = run(&[
            Event::CasLanded,
            Event::FenceClosed,
            Event::MarkerEmitted { lsn: "0/1".into() },
            Event::MarkerApplied,
            Event::Failed {
                reason: "flip answer lost".into(),
            },
        ]);
        let s = s.on(Event::FlipFound).unwrap();
        assert_eq!(s.step, Step::Done);
        assert_eq!(
            s.action(),
            Action::OpenFence {
                site: "shanghai".into()
            }
        );
        assert!(Switchover::new(1, "a", "b", 1)
            .on(Event::FlipFound)
            .is_err());
    }

    #[test]
    fn epochs_only_grow_along_any_path() {
        let (_, actions) = run(&[
            Event::CasLanded,
            Event::FenceClosed,
            Event::Failed { reason: "x".into() },
        ]);
        let epochs: Vec<Epoch> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Cas { epoch, .. } => Some(*epoch),
                _ => None,
            })
            .collect();
        assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    }

    #[test]
    fn the_record_round_trips_as_json() {
        let s = Switchover::new(3, "a", "b", 9)
            .on(Event::CasLanded)
            .unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: Switchover = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert!(json.contains("\"step\":\"frozen\""), "{json}");
    }
}
