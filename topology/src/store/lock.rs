//! The operator lock: two operators cannot change the same thing at once.
//!
//! In etcd the lock is a key under `{prefix}/locks/{name}` attached to a lease
//! that a background task keeps alive; if the holder dies the lease expires
//! (after its TTL) and the key goes with it. For a file store it is an
//! advisory `flock` on a sibling file, which the kernel drops when the holder
//! dies.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::StoreError;

/// Who holds a lock: stored as the lock's value, shown to whoever is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub holder: String,
    pub pid: u32,
    /// Seconds since the Unix epoch when the lock was taken.
    pub since: u64,
}

impl LockInfo {
    pub fn now(holder: &str) -> LockInfo {
        LockInfo {
            holder: holder.to_string(),
            pid: std::process::id(),
            since: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} (pid {}, since unix time {})",
            self.holder, self.pid, self.since
        )
    }
}

pub(crate) struct EtcdHeld {
    pub(crate) client: etcd_client::Client,
    pub(crate) lease: i64,
    pub(crate) keeper: JoinHandle<()>,
}

pub(crate) enum Held {
    Etcd(Box<EtcdHeld>),
    File {
        _flock: nix::fcntl::Flock<std::fs::File>,
        /// Kept so that `lost()` never fires: the kernel holds the lock for as
        /// long as we live.
        _never_lost: watch::Sender<bool>,
    },
}

/// A held lock. Dropping it releases the lock (best effort for etcd: the lease
/// is revoked in the background, and expires anyway).
pub struct LockGuard {
    name: String,
    held: Option<Held>,
    lost: watch::Receiver<bool>,
}

impl LockGuard {
    pub(crate) fn new(name: &str, held: Held, lost: watch::Receiver<bool>) -> LockGuard {
        LockGuard {
            name: name.to_string(),
            held: Some(held),
            lost,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True once the lock can no longer be trusted (its lease could not be
    /// kept alive). The holder must stop acting on what the lock protects.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lock is lost.
    pub async fn lost(&mut self) {
        // An error means the keeper is gone, which also means lost.
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Releases the lock now and waits for the store to confirm.
    pub async fn release(mut self) -> Result<(), StoreError> {
        match self.held.take() {
            Some(Held::Etcd(held)) => {
                let EtcdHeld {
                    mut client,
                    lease,
                    keeper,
                } = *held;
                keeper.abort();
                client
                    .lease_revoke(lease)
                    .await
                    .map(|_| ())
                    .map_err(|e| StoreError::Unavailable {
                        store: "etcd".into(),
                        detail: format!("revoking the lease of lock {:?}: {e}", self.name),
                    })
            }
            Some(Held::File { .. }) | None => Ok(()),
        }
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(Held::Etcd(held)) = self.held.take() {
            let EtcdHeld {
                mut client,
                lease,
                keeper,
            } = *held;
            keeper.abort();
            // Revoke in the background if a runtime is still there; if not, the
            // lease expires after its TTL, which is the same outcome, later.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = client.lease_revoke(lease).await;
                });
            }
        }
    }
}
