//! The etcd store: the topology as JSON keys under a prefix (see
//! [`crate::store::layout`]), read at one revision, changed by transactions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tonic::Code as tonic_code;

use crate::history::{self, EpochEntry, Transition};
use crate::model::{Epoch, Shard, Topology};
use crate::store::etcd_options::EtcdOptions;
use crate::store::layout::Layout;
use crate::store::lock::{EtcdHeld, Held, LockGuard, LockInfo};
use crate::store::{cas_successor, Snapshot, StoreError, TopologyStore, Version};

/// How long to wait for a TCP connection to an etcd member.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 keep-alive: how often to ping, and how long without an answer before
/// the connection is declared dead. This is what notices a paused (SIGSTOP) or
/// partitioned member under a long-lived watch.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A repeatable request gives one member at most this long (a hung member
/// takes as long as it is given) before it is tried again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause before a request is tried again, doubled each time up to the max.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(50);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// Whether a request may be tried again after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Reads, and writes that set a value outright: always.
    Always,
    /// A compare-and-swap: only if it certainly never reached a leader
    /// (one that timed out or was cut may have been applied).
    IfUnsent,
}

/// True if a failed request certainly was not applied: no connection could
/// be made, or the member refused it for want of a leader (`require_leader`
/// makes it refuse before anything is proposed).
fn never_applied(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic_code::Unavailable
                && (s.message().contains("tcp connect error")
                    || s.message().contains("etcdserver: no leader"))
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// True if `e` says etcd was not reached at all (TCP), or had no leader:
/// nothing about TLS.
fn unreached(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("tcp connect error") || text.contains("no leader")
}

/// Classifies an etcd error for `store` (see [`EtcdStore::unavailable`]).
fn classify(store: &str, options: &EtcdOptions, what: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    if let Some(fix) = refused_credentials(options, &e) {
        return StoreError::Misconfigured {
            store: store.to_string(),
            detail: format!("{what}: {fix}"),
        };
    }
    let definite = match &e {
        E::GRpcStatus(status) => matches!(
            status.code(),
            tonic_code::InvalidArgument
                | tonic_code::FailedPrecondition
                | tonic_code::OutOfRange
                | tonic_code::PermissionDenied
                | tonic_code::Unauthenticated
                | tonic_code::AlreadyExists
        ),
        E::InvalidArgs(_) | E::InvalidUri(_) => true,
        _ => false,
    };
    let mut detail = format!("{what}: {e}");
    if let (E::GRpcStatus(status), Some(auth)) = (&e, &options.auth) {
        if status.code() == tonic_code::PermissionDenied {
            detail.push_str(&format!(
                "; etcd user {:?} needs a role with readwrite on the prefix \
                 (etcdctl role grant-permission ROLE readwrite --prefix PREFIX; \
                 etcdctl user grant-role {} ROLE)",
                auth.user, auth.user
            ));
        }
    }
    if definite {
        StoreError::Rejected {
            store: store.to_string(),
            detail,
        }
    } else {
        StoreError::Unavailable {
            store: store.to_string(),
            detail,
        }
    }
}

/// If `e` is etcd (or the TLS handshake) refusing our credentials, what is
/// wrong and the fix; such a failure repeats until the configuration (ours
/// or etcd's) changes.
fn refused_credentials(options: &EtcdOptions, e: &etcd_client::Error) -> Option<String> {
    if let etcd_client::Error::GRpcStatus(status) = e {
        let message = status.message();
        if message.contains("authentication failed, invalid user ID or password") {
            let user = options.auth.as_ref().map(|a| a.user.as_str()).unwrap_or("");
            let source = match options.auth.as_ref().and_then(|a| a.password_file.as_ref()) {
                Some(path) => format!("auth.password_file {}", path.display()),
                None => format!("${}", super::etcd_options::PASSWORD_ENV),
            };
            return Some(format!(
                "etcd refused user {user:?}: wrong password or no such user ({message}); \
                 check the password in {source} and that the user exists (etcdctl user get {user})"
            ));
        }
        if message.contains("user name is empty") && options.auth.is_none() {
            return Some(format!(
                "etcd has auth enabled and no etcd user is configured ({message}): \
                 add auth.user and its password (auth.password_file or ${})",
                super::etcd_options::PASSWORD_ENV
            ));
        }
    }
    let failure = tls_failure(e)?;
    Some(tls_fix(options, failure))
}

/// What is wrong when a TLS session with etcd failed as `failure`, and the fix.
fn tls_fix(options: &EtcdOptions, failure: TlsFailure) -> String {
    let tls = options.tls.as_ref();
    let ca = tls
        .map(|t| t.ca_file.display().to_string())
        .unwrap_or_else(|| "(none)".into());
    let refused = |how: String| match tls.and_then(|t| t.cert_file.as_ref()) {
        None => format!(
            "etcd {how} and no client certificate is configured: etcd probably runs with \
             --client-cert-auth; set tls.cert_file and tls.key_file to a certificate signed by \
             a CA in etcd's --trusted-ca-file"
        ),
        Some(cert) => format!(
            "etcd {how}: check that tls.cert_file {} is signed by a CA in etcd's \
             --trusted-ca-file, is valid now and is for client authentication",
            cert.display()
        ),
    };
    match failure {
        TlsFailure::ServerCertificate(why) => {
            let name = tls
                .and_then(|t| t.domain.clone())
                .map(|d| format!("tls.domain {d:?}"))
                .unwrap_or_else(|| "the endpoint's host".into());
            format!(
                "etcd's server certificate was not accepted ({why}): check that tls.ca_file {ca} \
                 is the CA that signed it, that it is valid now, and that it names {name}"
            )
        }
        TlsFailure::Alert(alert) => refused(format!("refused the TLS session ({alert})")),
        TlsFailure::Closed => {
            refused("closed the connection right after the TLS handshake".to_string())
        }
        TlsFailure::Other(why) => format!(
            "the TLS handshake with etcd failed ({why}): is it serving TLS on that port \
             (else use http://), and do tls.ca_file {ca} and the client certificate match it?"
        ),
    }
}

/// How a TLS handshake failed.
enum TlsFailure {
    /// We did not accept etcd's certificate.
    ServerCertificate(String),
    /// etcd ended the handshake with an alert (it did not accept ours, or
    /// we sent none).
    Alert(String),
    /// etcd closed the connection after the handshake, before answering.
    Closed,
    /// Anything else rustls refused (not TLS on the other side, ...).
    Other(String),
}

impl From<&rustls::Error> for TlsFailure {
    fn from(e: &rustls::Error) -> Self {
        match e {
            rustls::Error::InvalidCertificate(why) => {
                TlsFailure::ServerCertificate(format!("{why:?}"))
            }
            rustls::Error::AlertReceived(alert) => TlsFailure::Alert(format!("alert {alert:?}")),
            other => TlsFailure::Other(other.to_string()),
        }
    }
}

/// The TLS failure somewhere in `e`'s chain of sources. rustls's error
/// arrives typed from the handshake itself, but an alert etcd sends after
/// it (TLS 1.3 refuses a client certificate only then) passes through h2,
/// which keeps only its text, so the text is matched too.
fn tls_failure(e: &etcd_client::Error) -> Option<TlsFailure> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return Some(tls.into());
            }
        }
        if let Some(inner) = inner {
            // rustls's Display for the errors above.
            let text = inner.to_string();
            if let Some(why) = text.strip_prefix("invalid peer certificate: ") {
                return Some(TlsFailure::ServerCertificate(why.to_string()));
            }
            if let Some(alert) = text.strip_prefix("received fatal alert: ") {
                return Some(TlsFailure::Alert(format!("alert {alert}")));
            }
            if text.starts_with("peer sent no certificates")
                || text.starts_with("peer is incompatible")
                || text.starts_with("peer misbehaved")
                || text.starts_with("received corrupt message")
            {
                return Some(TlsFailure::Other(text));
            }
        }
        next = err.source();
    }
    None
}

/// The topology in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    endpoints: Vec<String>,
    layout: Layout,
    /// As connected (endpoints trimmed); for messages. No password in it.
    options: Arc<EtcdOptions>,
    client: Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Connect options shared by the request client and the watcher: keep-alive so
/// dead members are noticed, and `require_leader` so a member cut off from the
/// quorum does not serve a stale view.
pub(crate) fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true)
}

impl EtcdStore {
    /// Connects to etcd over plain http, without a user: as
    /// [`EtcdStore::connect_with`] with [`EtcdOptions::new`]. The connection
    /// is lazy: an unreachable cluster shows up as
    /// [`StoreError::Unavailable`] on the first call, not here, except for
    /// malformed endpoints.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore, StoreError> {
        Self::connect_with(&EtcdOptions::new(endpoints), prefix).await
    }

    /// Connects to etcd as `options` say: TLS with a CA and optionally a
    /// client certificate, and optionally an etcd user.
    ///
    /// Options that [`EtcdOptions::validate`] refuses are a
    /// [`StoreError::Misconfigured`] naming the field and the fix, before
    /// anything is sent. Without a user the connection is lazy, as for
    /// [`EtcdStore::connect`]. With a user, etcd-client authenticates here:
    /// a wrong password (or an unknown user) is a `Misconfigured` naming the
    /// user; an unreachable etcd is tried again for up to
    /// [`super::DEFAULT_REQUEST_TIMEOUT`], then is `Unavailable`. The token
    /// is renewed whenever etcd says it expired (etcd-client's
    /// `with_auto_token_refresh`; etcd forgets a simple token left unused
    /// for `--auth-token-ttl`, 300 s, as under a long-lived watch), and the
    /// watcher renews it when etcd cancels a new watch for want of one.
    ///
    /// A TLS handshake that fails for a certificate (etcd's not signed by
    /// `tls.ca_file`, or not for the endpoint's name; ours missing or
    /// refused by etcd) is a `Misconfigured` naming the files, on the first
    /// request.
    pub async fn connect_with(
        options: &EtcdOptions,
        prefix: &str,
    ) -> Result<EtcdStore, StoreError> {
        let layout = Layout::new(prefix);
        let endpoints = options.endpoints();
        let mut options = options.clone();
        options.endpoints.clone_from(&endpoints);
        let store_name = |endpoints: &[String]| {
            format!("etcd {} prefix {}", endpoints.join(","), layout.prefix())
        };
        let loaded = options.load().map_err(|e| StoreError::Misconfigured {
            store: store_name(&endpoints),
            detail: e.to_string(),
        })?;
        let mut connect = connect_options();
        if let Some(tls) = loaded.tls {
            connect = connect.with_tls(tls);
        }
        if let Some((user, password)) = &loaded.user {
            connect = connect
                .with_user(user.clone(), password.expose().to_string())
                .with_auto_token_refresh(true);
        }
        let deadline = tokio::time::Instant::now() + super::DEFAULT_REQUEST_TIMEOUT;
        let mut pause = crate::backoff::Backoff::new(RETRY_PAUSE_MIN, RETRY_PAUSE_MAX);
        loop {
            // With a user this authenticates (one request); without, it
            // only checks the endpoints.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = tokio::time::timeout(
                left.min(ATTEMPT_TIMEOUT * 2),
                Client::connect(&endpoints, Some(connect.clone())),
            )
            .await;
            let failure = match attempt {
                Ok(Ok(client)) => {
                    tracing::debug!(
                        store = %store_name(&endpoints),
                        security = %options.security(),
                        "Connected to etcd."
                    );
                    return Ok(EtcdStore {
                        endpoints,
                        layout,
                        options: Arc::new(options),
                        client,
                    });
                }
                Ok(Err(e @ (etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_)))) => {
                    StoreError::Misconfigured {
                        store: store_name(&endpoints),
                        detail: format!(
                            "endpoints: {e}; give each as http://HOST:PORT, or https://HOST:PORT with tls"
                        ),
                    }
                }
                Ok(Err(e)) => classify(&store_name(&endpoints), &options, "connecting", e),
                Err(_) => StoreError::Unavailable {
                    store: store_name(&endpoints),
                    detail: format!(
                        "authenticating as etcd user {:?} timed out",
                        options.auth.as_ref().map(|a| a.user.as_str()).unwrap_or("")
                    ),
                },
            };
            let wait = pause.next_wait();
            if !matches!(failure, StoreError::Unavailable { .. })
                || deadline.saturating_duration_since(tokio::time::Instant::now()) <= wait
            {
                return Err(failure);
            }
            tracing::debug!(error = %failure, "Connecting to etcd failed; trying again.");
            tokio::time::sleep(wait).await;
        }
    }

    /// The options this store was connected with (no password in them).
    pub fn options(&self) -> &EtcdOptions {
        &self.options
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A clone of the underlying client (cheap; shares the connection).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Classifies an etcd error: a request etcd understood and refused is
    /// definite ([`StoreError::Rejected`]); our credentials refused (a
    /// certificate, the user's password) are [`StoreError::Misconfigured`];
    /// anything else about reaching etcd is transient.
    pub(crate) fn unavailable(&self, what: &str, e: etcd_client::Error) -> StoreError {
        classify(&self.describe(), &self.options, what, e)
    }

    /// As [`EtcdStore::unavailable`]; and when that says "unavailable" over
    /// TLS for a reason other than TCP (a connection closed, a transport
    /// error), probes the endpoints' TLS (see [`super::etcd_probe`]): if
    /// every endpoint that answers refuses our session, the error is
    /// [`StoreError::Misconfigured`], naming the files and the fix.
    pub(crate) async fn classify_probing(&self, what: &str, e: etcd_client::Error) -> StoreError {
        let worth_probing = self.options.tls.is_some() && !unreached(&e);
        let err = self.unavailable(what, e);
        if !worth_probing || !matches!(err, StoreError::Unavailable { .. }) {
            return err;
        }
        match self.probe_tls().await {
            Some(failure) => StoreError::Misconfigured {
                store: self.describe(),
                detail: format!("{what}: {}", tls_fix(&self.options, failure)),
            },
            None => err,
        }
    }

    /// The TLS failure every reachable endpoint shows (at least one), if any.
    async fn probe_tls(&self) -> Option<TlsFailure> {
        use super::etcd_probe::{probe, Probe};
        let tls = self.options.tls.as_ref()?;
        let probes = futures::future::join_all(self.endpoints.iter().map(|e| probe(e, tls))).await;
        let mut failure = None;
        for p in probes {
            match p {
                Probe::Accepted => return None,
                Probe::Unknown => {}
                Probe::Refused(e) => {
                    failure.get_or_insert(TlsFailure::from(&e));
                }
                Probe::Closed => {
                    failure.get_or_insert(TlsFailure::Closed);
                }
            }
        }
        failure
    }

    fn timed_out(&self, what: &str, after: Duration) -> StoreError {
        StoreError::Unavailable {
            store: self.describe(),
            detail: format!("{what} timed out after {after:?}"),
        }
    }

    /// Runs one request (`op`, given a client) until it succeeds or fails
    /// for good, within [`super::DEFAULT_REQUEST_TIMEOUT`] in all. The
    /// client balances over every member, so with one of three dead, hung
    /// or just deposed as leader some requests still go its way; those are
    /// tried again after a short pause (the balancer picks again), and an
    /// operator's command does not fail while a quorum serves. What may be
    /// tried again is `repeat`'s to say; a refusal (a definite error) never
    /// is.
    async fn request<T, F, Fut>(
        &self,
        what: &str,
        repeat: Repeat,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + super::DEFAULT_REQUEST_TIMEOUT;
        let mut pause = crate::backoff::Backoff::new(RETRY_PAUSE_MIN, RETRY_PAUSE_MAX);
        // TLS is probed after the first failure that may be about it, not
        // after each.
        let mut probed = false;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let budget = match repeat {
                Repeat::Always => left.min(ATTEMPT_TIMEOUT),
                Repeat::IfUnsent => left,
            };
            let failure = match tokio::time::timeout(budget, op(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let again = repeat == Repeat::Always || never_applied(&e);
                    let err = if probed {
                        self.unavailable(what, e)
                    } else {
                        probed = self.options.tls.is_some() && !unreached(&e);
                        self.classify_probing(what, e).await
                    };
                    if !again || !matches!(err, StoreError::Unavailable { .. }) {
                        return Err(err);
                    }
                    err
                }
                Err(_) if repeat == Repeat::IfUnsent => return Err(self.timed_out(what, budget)),
                Err(_) => self.timed_out(what, budget),
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait = pause.next_wait();
            if left <= wait {
                return Err(failure);
            }
            tracing::debug!(store = %self.describe(), error = %failure, "etcd request failed; trying again.");
            tokio::time::sleep(wait).await;
        }
    }

    /// Every key under the prefix, and the revision they were read at.
    pub(crate) async fn read_raw(
        &self,
    ) -> Result<(BTreeMap<String, Vec<u8>>, Version), StoreError> {
        let dir = self.layout.dir();
        let resp = self
            .request("reading the topology", Repeat::Always, |mut c| {
                let dir = dir.clone();
                async move { c.get(dir, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut raw = BTreeMap::new();
        for kv in resp.kvs() {
            raw.insert(
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            );
        }
        Ok((raw, revision))
    }

    async fn load_with_revisions(&self) -> Result<(Snapshot, i64), StoreError> {
        let (raw, revision) = self.read_raw().await?;
        match self.layout.assemble(&self.describe(), &raw)? {
            Some(t) => Ok((
                Snapshot {
                    version: revision,
                    topology: t.into(),
                },
                revision,
            )),
            None => Err(StoreError::NotInitialized {
                store: self.describe(),
            }),
        }
    }

    async fn txn(&self, txn: Txn, what: &str) -> Result<(bool, Version), StoreError> {
        let resp = self
            .request(what, Repeat::IfUnsent, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.succeeded(), revision))
    }

    /// Writes raw bytes to a key under the prefix, bypassing validation. For
    /// tests that need to put a bad value where a watcher sees it.
    pub async fn put_raw(&self, key: &str, value: &[u8]) -> Result<Version, StoreError> {
        let mut client = self.client.clone();
        let resp = client
            .put(key, value.to_vec(), None)
            .await
            .map_err(|e| self.unavailable("writing a raw key", e))?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }
}

impl TopologyStore for EtcdStore {
    fn describe(&self) -> String {
        format!(
            "etcd {} prefix {}",
            self.endpoints.join(","),
            self.layout.prefix()
        )
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(self.load_with_revisions().await?.0)
    }

    async fn init(&self, topology: &Topology, force: bool) -> Result<Version, StoreError> {
        crate::validate::validate(topology).map_err(StoreError::Invalid)?;
        let settings_key = self.layout.settings();
        let mut ops: Vec<TxnOp> = Vec::new();
        // Shard epochs already there keep their history entry.
        let mut kept_epochs = std::collections::BTreeSet::new();
        let guard = if force {
            // Replacing must not send epochs backwards: watchers would refuse it.
            match self.load().await {
                Ok(current) => {
                    crate::validate::validate_transition(&current.topology, topology)
                        .map_err(StoreError::Invalid)?;
                    kept_epochs = current
                        .topology
                        .shards
                        .values()
                        .map(|s| (s.id, s.epoch))
                        .collect();
                }
                Err(StoreError::NotInitialized { .. })
                | Err(StoreError::Invalid(_))
                | Err(StoreError::Corrupt { .. })
                | Err(StoreError::UnknownKey { .. }) => {}
                Err(e) => return Err(e),
            }
            // etcd refuses a transaction that deletes a range and puts keys
            // inside it, so delete only the keys the new topology drops.
            let (raw, _) = self.read_raw().await?;
            let keep: std::collections::BTreeSet<String> = self
                .layout
                .encode(topology)
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            for key in raw.keys() {
                let topology_key = !matches!(
                    self.layout.classify(key),
                    crate::store::layout::KeyKind::Reserved
                );
                if topology_key && !keep.contains(key) {
                    ops.push(TxnOp::delete(key.clone(), None));
                }
            }
            Vec::new()
        } else {
            vec![Compare::create_revision(
                settings_key.clone(),
                CompareOp::Equal,
                0,
            )]
        };
        for (key, value) in self.layout.encode(topology) {
            ops.push(TxnOp::put(key, value, None));
        }
        for shard in topology.shards.values() {
            if kept_epochs.contains(&(shard.id, shard.epoch)) {
                continue;
            }
            let entry = serde_json::to_vec(&EpochEntry::for_swap(shard, Transition::Init))
                .unwrap_or_default();
            let key = self.layout.op(&history::entry_name(shard.id, shard.epoch));
            ops.push(TxnOp::put(key, entry, None));
        }
        let (ok, revision) = self
            .txn(Txn::new().when(guard).and_then(ops), "writing the topology")
            .await?;
        if ok {
            Ok(revision)
        } else {
            Err(StoreError::AlreadyInitialized {
                store: self.describe(),
            })
        }
    }

    async fn cas_shard_as(
        &self,
        expected_epoch: Epoch,
        next: &Shard,
        how: Transition,
    ) -> Result<Version, StoreError> {
        let (raw, _) = self.read_raw().await?;
        let key = self.layout.shard(next.id);
        let current = self
            .layout
            .assemble(&self.describe(), &raw)?
            .ok_or_else(|| StoreError::NotInitialized {
                store: self.describe(),
            })?;
        cas_successor(&self.describe(), &current, expected_epoch, next)?;
        // The epoch we checked is the one in this exact value: compare it, so a
        // concurrent swap between our read and our write makes us lose.
        let observed = raw.get(&key).cloned().unwrap_or_default();
        // A newer writer's fields on this shard go back unchanged.
        let value = crate::doc::encode_piece(next, current.extras.shard(next.id)).map_err(|e| {
            StoreError::Corrupt {
                store: self.describe(),
                key: key.clone(),
                what: "shard",
                detail: e.to_string(),
            }
        })?;
        // The epoch's history entry goes in the same transaction: no reader
        // can see the epoch without it (see crate::history).
        let entry = serde_json::to_vec(&EpochEntry::for_swap(next, how)).unwrap_or_default();
        let entry_key = self.layout.op(&history::entry_name(next.id, next.epoch));
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, observed)])
            .and_then([
                TxnOp::put(key.clone(), value, None),
                TxnOp::put(entry_key, entry, None),
            ]);
        let (ok, revision) = self.txn(txn, "swapping a shard").await?;
        if ok {
            return Ok(revision);
        }
        // Lost the race: report what is there now.
        let now = self.load().await?;
        match now.topology.shards.get(&next.id) {
            Some(s) => Err(StoreError::StaleEpoch {
                shard: next.id,
                expected: expected_epoch,
                found: s.epoch,
                home: s.home.clone(),
                state: s.state.to_string(),
            }),
            None => Err(StoreError::UnknownShard {
                store: self.describe(),
                shard: next.id,
            }),
        }
    }

    async fn lock(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<LockGuard, StoreError> {
        let key = self.layout.lock(name);
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut client = self.client.clone();
        let lease = match client.lease_grant(ttl_secs, None).await {
            Ok(r) => r.id(),
            Err(e) => return Err(self.classify_probing("granting a lock lease", e).await),
        };
        let info = serde_json::to_vec(&LockInfo::now(holder)).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                info,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = client
            .txn(txn)
            .await
            .map_err(|e| self.unavailable("taking a lock", e))?;
        if !resp.succeeded() {
            let _ = client.lease_revoke(lease).await;
            let mut who = "someone (unknown)".to_string();
            for op in resp.op_responses() {
                if let etcd_client::TxnOpResponse::Get(get) = op {
                    if let Some(kv) = get.kvs().first() {
                        who = match serde_json::from_slice::<LockInfo>(kv.value()) {
                            Ok(info) => info.to_string(),
                            Err(_) => String::from_utf8_lossy(kv.value()).into_owned(),
                        };
                    }
                }
            }
            return Err(StoreError::Locked {
                name: name.to_string(),
                holder: who,
            });
        }
        let (keeper, mut responses) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| self.unavailable("keeping a lock lease alive", e))?;
        let (lost_tx, lost_rx) = watch::channel(false);
        let period = (ttl / 3).max(Duration::from_millis(200));
        let lock_name = name.to_string();
        let keeper_task = tokio::spawn(async move {
            let mut keeper = keeper;
            let deadline_after = ttl;
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(period).await;
                let ok = match keeper.keep_alive().await {
                    Ok(()) => matches!(
                        tokio::time::timeout(period, responses.message()).await,
                        Ok(Ok(Some(r))) if r.ttl() > 0
                    ),
                    Err(_) => false,
                };
                if ok {
                    last_ok = tokio::time::Instant::now();
                } else if last_ok.elapsed() >= deadline_after {
                    tracing::warn!(lock = %lock_name, "Operator lock lost: its lease could not be kept alive.");
                    let _ = lost_tx.send(true);
                    return;
                }
            }
        });
        Ok(LockGuard::new(
            name,
            Held::Etcd(Box::new(EtcdHeld {
                client,
                lease,
                keeper: keeper_task,
            })),
            lost_rx,
        ))
    }

    async fn read_op(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.layout.op(name);
        let resp = self
            .request("reading an operation record", Repeat::Always, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn write_op(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let key = self.layout.op(name);
        // Setting a value outright: writing it twice is writing it once.
        self.request("writing an operation record", Repeat::Always, |mut c| {
            let (key, value) = (key.clone(), value.to_vec());
            async move { c.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    async fn delete_op(&self, name: &str) -> Result<(), StoreError> {
        let key = self.layout.op(name);
        self.request("deleting an operation record", Repeat::Always, |mut c| {
            let key = key.clone();
            async move { c.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    async fn list_ops(&self, dir: &str) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let base = self.layout.ops_dir();
        let key = format!("{base}{dir}");
        let resp = self
            .request("listing operation records", Repeat::Always, |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                (
                    key.strip_prefix(base.as_str()).unwrap_or(&key).to_string(),
                    kv.value().to_vec(),
                )
            })
            .collect())
    }
}
