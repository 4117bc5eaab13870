//! Who may write a shard, judged by the epoch a write was accepted under.
//!
//! A change replicated from site X for shard S carries the epoch X's fence
//! held for S when X accepted it (the fence trigger's stamp, see
//! [`crate::fence::EPOCH_MESSAGE_PREFIX`]). The change is X's to make only if
//! X was S's home at that epoch. Judging it by the applier's *current* view
//! instead would turn a legitimate write into a conflict whenever the view
//! lags the data stream: the old home of a shard that just moved receives
//! the new home's first writes, possibly before its own watch has seen the
//! flip. So:
//!
//! - a change stamped with an epoch newer than the view waits for the view
//!   (bounded, by the caller) instead of being decided;
//! - a change stamped with the view's epoch is X's if X is the home now;
//! - a change stamped with an older epoch is judged by the shard's history
//!   ([`ezone_topology::history`]): X must have been the home at that epoch,
//!   and if X lost the shard since, it must have handed it over in a planned
//!   flip (the new home then had every write X accepted). A shard X lost in
//!   a forced failover makes X's late changes the unreplicated tail of a lost
//!   site: conflicts, as the forced failover promised;
//! - an unstamped change (an unfenced table, a transaction written before
//!   fences stamped) is judged by the view, as before stamps existed.
//!
//! Pure: the view's shard, the stamp and the history in, a verdict out.

use ezone_topology::history::{ShardHistory, Tenure, Transition};
use ezone_topology::{Epoch, Shard};

/// What the judge says about one row change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The source site may write the row's shard under the change's epoch.
    Owner,
    /// It may not; `reason` says why (recorded with the conflict). `home` is
    /// the shard's home in the judge's view, for the record only: it may be
    /// the source itself (a site's tail from a tenure it lost in a forced
    /// failover, arriving after the shard came back to it), so a caller
    /// decides by the variant, never by comparing `home` with the source.
    Foreign { home: String, reason: String },
    /// The change's epoch is newer than the view: wait for the view to
    /// reach `epoch`, then judge again.
    AwaitView { epoch: Epoch },
    /// The change's epoch is older than the view and the home has moved:
    /// the shard's history (with an entry at or after the view's epoch) is
    /// needed.
    NeedHistory,
}

/// Judges a change from `source` for the shard `view` (the applier's
/// current view of it), stamped with `stamp`, with the shard's `history`
/// if the caller has it. A history older than the view is completed with
/// the view itself (as a move of no named kind).
pub fn judge(
    source: &str,
    view: &Shard,
    stamp: Option<Epoch>,
    history: Option<&ShardHistory>,
) -> Verdict {
    let Some(epoch) = stamp else {
        return by_view(source, view);
    };
    if epoch > view.epoch {
        return Verdict::AwaitView { epoch };
    }
    if epoch == view.epoch {
        return if view.home == source {
            Verdict::Owner
        } else {
            Verdict::Foreign {
                home: view.home.clone(),
                reason: format!(
                    "shard {} was homed at {} at epoch {epoch}, not at {source} where the change was made",
                    view.id, view.home
                ),
            }
        };
    }
    let Some(history) = history else {
        return Verdict::NeedHistory;
    };
    // A history behind the view is completed by it (a copy, only then:
    // the caller caches histories read at the view's epoch).
    let completed;
    let history = if history.latest() >= Some(view.epoch) {
        history
    } else {
        let mut h = history.clone();
        h.learn(ezone_topology::history::EpochEntry {
            epoch: view.epoch,
            home: view.home.clone(),
            state: view.state,
            how: Transition::Other,
            at_ms: 0,
        });
        completed = h;
        &completed
    };
    match history.tenure(source, epoch) {
        // Epochs from before the history was kept: the view decides.
        Tenure::Unknown => by_view(source, view),
        Tenure::NotHome { home } => Verdict::Foreign {
            reason: format!(
                "shard {} was homed at {home} at epoch {epoch}, not at {source} where the change was made",
                view.id
            ),
            home,
        },
        Tenure::Current => Verdict::Owner,
        Tenure::Ended {
            how: Transition::Flip,
            ..
        } => Verdict::Owner,
        Tenure::Ended {
            epoch: lost,
            to,
            how,
        } => Verdict::Foreign {
            reason: format!(
                "written at {source} under epoch {epoch}, but shard {} moved to {to} at epoch {lost} by a {} \
                 before this change arrived: it is part of {source}'s unreplicated tail",
                view.id,
                move_name(how)
            ),
            home: view.home.clone(),
        },
    }
}

fn move_name(how: Transition) -> &'static str {
    match how {
        Transition::Forced => "forced failover",
        Transition::Flip => "planned flip",
        Transition::Rollback => "rollback",
        Transition::Init => "topology rewrite (`topo init`)",
        Transition::Freeze => "freeze",
        Transition::Other => "change outside a switchover",
    }
}

/// The rule for changes without a stamp: the current home owns the shard.
fn by_view(source: &str, view: &Shard) -> Verdict {
    if view.home == source {
        Verdict::Owner
    } else {
        Verdict::Foreign {
            home: view.home.clone(),
            reason: format!(
                "the row's shard is homed at {}, not at {source} where the change was made",
                view.home
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ezone_topology::history::EpochEntry;
    use ezone_topology::ShardState::{self, Active, Frozen};
    use Transition::*;

    fn shard(home: &str, state: ShardState, epoch: Epoch) -> Shard {
        Shard {
            id: 1,
            home: home.into(),
            state,
            epoch,
        }
    }

    fn history(entries: &[(Epoch, &str, ShardState, Transition)]) -> ShardHistory {
        ShardHistory::new(
            entries
                .iter()
                .map(|(epoch, home, state, how)| EpochEntry {
                    epoch: *epoch,
                    home: home.to_string(),
                    state: *state,
                    how: *how,
                    at_ms: 0,
                })
                .collect(),
        )
    }

    fn foreign(v: &Verdict) -> bool {
        matches!(v, Verdict::Foreign { .. })
    }

    #[test]
    fn a_view_that_lags_the_change_waits_instead_of_deciding() {
        // The old home (beijing) still sees the freeze; shanghai's first
        // write under the flip's epoch arrives.
        let view = shard("beijing", Frozen, 2);
        assert_eq!(
            judge("shanghai", &view, Some(3), None),
            Verdict::AwaitView { epoch: 3 }
        );
        // Once the view has the flip, it is shanghai's.
        let view = shard("shanghai", Active, 3);
        assert_eq!(judge("shanghai", &view, Some(3), None), Verdict::Owner);
    }

    #[test]
    fn the_views_epoch_is_judged_by_the_view() {
        let view = shard("beijing", Active, 4);
        assert_eq!(judge("beijing", &view, Some(4), None), Verdict::Owner);
        // A site whose fence opened ahead of a flip that was then rolled
        // back (the epoch went to the old home): not its write.
        assert!(foreign(&judge("shanghai", &view, Some(4), None)));
    }

    #[test]
    fn older_epochs_need_the_history_once_the_home_moved() {
        let view = shard("shanghai", Active, 3);
        assert_eq!(judge("beijing", &view, Some(1), None), Verdict::NeedHistory);
    }

    #[test]
    fn a_planned_flip_hands_over_what_the_old_home_accepted() {
        let h = history(&[
            (2, "beijing", Frozen, Freeze),
            (3, "shanghai", Active, Flip),
        ]);
        let view = shard("shanghai", Active, 3);
        // Written at beijing at epoch 1 (before the history's first entry the
        // view decides: not beijing's) and at epoch 2 (beijing's, frozen:
        // in flight when the fence closed behind it).
        assert_eq!(judge("beijing", &view, Some(2), Some(&h)), Verdict::Owner);
        assert!(foreign(&judge("beijing", &view, Some(1), Some(&h))));
        // Shanghai never owned it at epoch 2.
        assert!(foreign(&judge("shanghai", &view, Some(2), Some(&h))));
    }

    #[test]
    fn a_forced_failover_makes_the_lost_sites_tail_foreign() {
        let h = history(&[
            (1, "beijing", Active, Other),
            (2, "shanghai", Active, Forced),
        ]);
        let view = shard("shanghai", Active, 2);
        let v = judge("beijing", &view, Some(1), Some(&h));
        let Verdict::Foreign { home, reason } = v else {
            panic!("foreign: {v:?}");
        };
        assert_eq!(home, "shanghai");
        assert!(reason.contains("forced failover"), "{reason}");
        // Still foreign after the shard came back to beijing by a planned
        // flip: the tail was written under the lost tenure.
        let h = history(&[
            (1, "beijing", Active, Other),
            (2, "shanghai", Active, Forced),
            (3, "shanghai", Frozen, Freeze),
            (4, "beijing", Active, Flip),
        ]);
        let view = shard("beijing", Active, 4);
        assert!(foreign(&judge("beijing", &view, Some(1), Some(&h))));
        // Beijing's writes since it is home again are its own.
        assert_eq!(judge("beijing", &view, Some(4), Some(&h)), Verdict::Owner);
    }

    #[test]
    fn a_rollback_keeps_the_old_homes_tenure() {
        let h = history(&[
            (1, "beijing", Active, Other),
            (2, "beijing", Frozen, Freeze),
            (3, "beijing", Active, Rollback),
        ]);
        let view = shard("beijing", Active, 3);
        assert_eq!(judge("beijing", &view, Some(1), Some(&h)), Verdict::Owner);
    }

    #[test]
    fn a_history_behind_the_view_is_completed_by_the_view() {
        // The history lacks the view's epoch (written by a tool that did
        // not record it): the move is of no named kind, so not a handover.
        let h = history(&[(1, "beijing", Active, Other)]);
        let view = shard("shanghai", Active, 5);
        assert!(foreign(&judge("beijing", &view, Some(1), Some(&h))));
    }

    #[test]
    fn unstamped_changes_are_judged_by_the_view() {
        let view = shard("beijing", Active, 9);
        assert_eq!(judge("beijing", &view, None, None), Verdict::Owner);
        assert!(foreign(&judge("shanghai", &view, None, None)));
    }
}
