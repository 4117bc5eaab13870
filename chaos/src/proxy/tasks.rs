//! Knowing when every task of a proxy has finished, so `shutdown()` can
//! return only once no listener, connection or admin task is left.
//!
//! The mini-redis pattern: each spawned task holds a clone of a
//! [`TaskToken`] (an `mpsc::Sender` that never sends) until it returns;
//! `close_and_wait` drops the original sender and waits for the channel to
//! report that every clone is gone. Tokens are refused once closing started,
//! so nothing new can be spawned behind the waiter's back.

use std::sync::Mutex;

use tokio::sync::mpsc;

/// Held by a running task; dropping it says "this task is done".
#[derive(Debug, Clone)]
pub(crate) struct TaskToken {
    _alive: mpsc::Sender<()>,
}

/// The set of a proxy's tasks; see the module doc.
#[derive(Debug)]
pub(crate) struct TaskSet {
    /// `None` once closing started.
    sender: Mutex<Option<mpsc::Sender<()>>>,
    done: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl TaskSet {
    pub(crate) fn new() -> Self {
        let (sender, done) = mpsc::channel(1);
        Self {
            sender: Mutex::new(Some(sender)),
            done: tokio::sync::Mutex::new(done),
        }
    }

    /// A token for a task about to be spawned; `None` once closing started.
    pub(crate) fn token(&self) -> Option<TaskToken> {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sender.as_ref().map(|s| TaskToken { _alive: s.clone() })
    }

    /// Refuses new tokens and waits until every token handed out is dropped.
    /// Safe to call more than once and from several handles at once.
    pub(crate) async fn close_and_wait(&self) {
        drop(
            self.sender
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
        let mut done = self.done.lock().await;
        while done.recv().await.is_some() {}
    }
}
