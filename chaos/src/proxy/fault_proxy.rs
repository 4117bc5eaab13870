//! [`FaultProxy`]: the owner of a set of links and of the admin API, and of
//! every task they run.
//!
//! Ownership, so that nothing outlives the proxy: all tasks watch one
//! `CancellationToken` (the stop signal) and hold a [`TaskToken`] until they
//! return. `shutdown()` cancels and waits for every token to come back;
//! dropping the last `FaultProxy` handle cancels through a drop guard (without
//! waiting, as drop cannot). The tasks themselves hold only the [`Core`],
//! never a `FaultProxy`, so they cannot keep the proxy alive.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::info;

use super::admin;
use super::config::LinkSpec;
use super::error::ProxyError;
use super::link::{self, LinkHandle, LinkStatus};
use super::tasks::{TaskSet, TaskToken};

/// What the proxy's handles and its admin tasks share.
#[derive(Debug)]
pub(crate) struct Core {
    links: Mutex<BTreeMap<String, LinkHandle>>,
    stop: CancellationToken,
    tasks: TaskSet,
}

impl Core {
    fn links_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LinkHandle>> {
        self.links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn stop_signal(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// A token for a new task, refused once the proxy is stopping.
    pub(crate) fn task_token(&self) -> Result<TaskToken, ProxyError> {
        if self.stop.is_cancelled() {
            return Err(ProxyError::ShutDown);
        }
        self.tasks.token().ok_or(ProxyError::ShutDown)
    }

    pub(crate) async fn add_link(&self, spec: LinkSpec) -> Result<LinkHandle, ProxyError> {
        link::validate_spec(&spec)?;
        if self.links_map().contains_key(&spec.name) {
            return Err(ProxyError::LinkExists { name: spec.name });
        }
        let task = self.task_token()?;
        let name = spec.name.clone();
        // The listener stops with `link_stop` if the name was taken while we bound.
        let link_stop = self.stop.child_token();
        let handle = link::start(spec, link_stop.clone(), task).await?;
        let mut links = self.links_map();
        if links.contains_key(&name) {
            link_stop.cancel();
            return Err(ProxyError::LinkExists { name });
        }
        links.insert(name, handle.clone());
        Ok(handle)
    }

    pub(crate) fn link(&self, name: &str) -> Option<LinkHandle> {
        self.links_map().get(name).cloned()
    }

    /// The link named `name`, or an error that lists the known ones.
    pub(crate) fn link_or_error(&self, name: &str) -> Result<LinkHandle, ProxyError> {
        let links = self.links_map();
        links
            .get(name)
            .cloned()
            .ok_or_else(|| ProxyError::UnknownLink {
                name: name.to_owned(),
                known: links.keys().cloned().collect(),
            })
    }

    pub(crate) fn links(&self) -> Vec<LinkStatus> {
        let handles: Vec<LinkHandle> = self.links_map().values().cloned().collect();
        handles.iter().map(LinkHandle::status).collect()
    }
}

/// A TCP fault proxy in the model of Toxiproxy: named links, each listening
/// on one address and forwarding to one upstream, with faults (latency,
/// jitter, bandwidth, partition, reset, slow close) changed at run time
/// through [`LinkHandle`] or the admin HTTP API.
///
/// A cheap `Clone` handle. [`shutdown`](Self::shutdown) stops every listener,
/// connection and admin task and waits for them; dropping the last handle
/// stops them too.
#[derive(Debug, Clone)]
pub struct FaultProxy {
    core: Arc<Core>,
    /// Cancels the stop signal when the last handle goes.
    _stop_on_drop: Arc<DropGuard>,
}

impl Default for FaultProxy {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultProxy {
    /// A proxy with no links yet. Needs no runtime; `add_link` does.
    pub fn new() -> Self {
        let stop = CancellationToken::new();
        let guard = stop.clone().drop_guard();
        let core = Core {
            links: Mutex::new(BTreeMap::new()),
            stop,
            tasks: TaskSet::new(),
        };
        Self {
            core: Arc::new(core),
            _stop_on_drop: Arc::new(guard),
        }
    }

    /// Binds `spec.listen` (port 0 picks a free port; the handle tells which)
    /// and starts forwarding to `spec.upstream` with the spec's toxics.
    /// Fails if the name is taken, the spec is invalid, the address cannot be
    /// bound or the proxy was shut down.
    pub async fn add_link(&self, spec: LinkSpec) -> Result<LinkHandle, ProxyError> {
        self.core.add_link(spec).await
    }

    /// The link named `name`, if any.
    pub fn link(&self, name: &str) -> Option<LinkHandle> {
        self.core.link(name)
    }

    /// Every link's status, sorted by name.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.core.links()
    }

    /// Serves the admin HTTP API (see [`api`](super::api)) on `addr` (port 0
    /// picks a free port) until the proxy stops; returns the bound address.
    pub async fn serve_admin(&self, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
        admin::serve(Arc::clone(&self.core), addr).await
    }

    /// Stops every listener, connection (closing its sockets) and admin task,
    /// and returns once they have all ended. Idempotent.
    pub async fn shutdown(&self) {
        self.core.stop.cancel();
        self.core.tasks.close_and_wait().await;
        info!("Fault proxy stopped.");
    }
}
