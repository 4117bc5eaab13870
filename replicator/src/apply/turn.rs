//! A batch's place in its link's commit order, when the link applies over
//! several lanes ([`crate::lanes`]): it commits only after the batch before
//! it has, so what is committed is always a prefix of the source's order.

use super::error::ApplyError;

/// A batch's place in its link's commit order.
#[derive(Debug)]
pub struct Turn {
    /// Fires when the batch before this one has committed; `None`: there is
    /// none in flight, or it was already awaited.
    prev: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Fired once this batch has committed; dropped unfired if it does not,
    /// which stops the batches after it from committing.
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Turn {
    pub fn new(
        prev: Option<tokio::sync::oneshot::Receiver<()>>,
        done: tokio::sync::oneshot::Sender<()>,
    ) -> Turn {
        Turn {
            prev,
            done: Some(done),
        }
    }

    /// Whether the batch before this one may still be in flight: it has
    /// not been seen to commit (or to fail) yet. A batch started after the
    /// one before it landed (always, with one lane) has nothing to wait for.
    pub(super) fn waits(&mut self) -> bool {
        use tokio::sync::oneshot::error::TryRecvError;
        match self.prev.as_mut().map(|p| p.try_recv()) {
            None => false,
            // Committed: nothing left to wait for.
            Some(Ok(())) => {
                self.prev = None;
                false
            }
            // Still in flight, or failed: `wait_turn` says which.
            Some(Err(TryRecvError::Empty | TryRecvError::Closed)) => true,
        }
    }
}

/// Waits for the batch before this one to commit (at most once).
pub(super) async fn wait_turn(turn: &mut Option<Turn>, target: &str) -> Result<(), ApplyError> {
    let Some(prev) = turn.as_mut().and_then(|t| t.prev.take()) else {
        return Ok(());
    };
    prev.await.map_err(|_| ApplyError::Transient {
        target: target.to_string(),
        detail: "an earlier batch of this link did not commit, so this one is not committed \
                 either (the link restarts from its progress)"
            .to_string(),
    })
}

/// This batch committed: the next one may.
pub(super) fn turn_done(turn: Option<Turn>) {
    if let Some(done) = turn.and_then(|t| t.done) {
        let _ = done.send(());
    }
}
