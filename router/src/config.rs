//! The router's configuration: one TOML file (`ezone router --config
//! router.toml`), serde structs with named defaults and a `validate()` whose
//! errors name the field and the fix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::policy::decide::FallbackAction;
use crate::policy::extract::{KeyKind, KeySource};

/// Defaults, named so that docs and code agree.
pub mod defaults {
    pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
    pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
    pub const IDLE_TIMEOUT_MS: u64 = 60_000;
    pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
    pub const BODY_READ_TIMEOUT_MS: u64 = 60_000;
    pub const SEND_TIMEOUT_MS: u64 = 60_000;
    pub const UPSTREAM_READ_TIMEOUT_MS: u64 = 60_000;
    pub const KEEPALIVE_TIMEOUT_MS: u64 = 75_000;
    pub const DRAIN_TIMEOUT_MS: u64 = 10_000;
    pub const MAX_HEADER_BYTES: usize = 16 * 1024;
    pub const MAX_HEADERS: usize = 100;
    pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    pub const MAX_HELD: usize = 1_000;
    pub const REPLAY_BODY_BYTES: u64 = 64 * 1024;
    /// File descriptors kept out of the default connection cap (listeners,
    /// the runtime's own, etcd, logs, health checks).
    pub const RESERVED_FDS: u64 = 64;
    pub const HEALTH_PATH: &str = "/healthz";
    pub const HEALTH_INTERVAL_MS: u64 = 1_000;
    pub const EJECT_AFTER_FAILURES: u32 = 3;
    pub const EJECT_MS: u64 = 5_000;
    pub const RETRY_BUDGET_PERCENT: u32 = 20;
    pub const MAX_RETRIES: u32 = 1;
    /// Access log lines waiting for the writer at most (then dropped and
    /// counted): at the writer's pace of a drain every 100 ms, room for
    /// 160k requests a second, far above what one router serves.
    pub const ACCESS_LOG_BUFFER_LINES: usize = 16 * 1024;
    /// The DNS domain under which a router's peer certificate names its
    /// site: `<site>.ezone.internal` (`peer_tls.domain`).
    pub const PEER_TLS_DOMAIN: &str = "ezone.internal";
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// This router's site (must be a site in the topology).
    pub site: String,
    pub listen: ListenConfig,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    pub topology: TopologySource,
    /// Key sources, tried in order.
    #[serde(default = "default_keys")]
    pub keys: Vec<KeySource>,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// One JSON line per request (`docs/router.md`, "Access log"). Absent:
    /// no access log.
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    /// Mutual TLS between sites' routers (`docs/router.md`, "Peer TLS"),
    /// with `listen.peer`. Absent: peers are told from clients by
    /// `routing.peer_secret`.
    #[serde(default)]
    pub peer_tls: Option<PeerTlsConfig>,
}

fn default_keys() -> Vec<KeySource> {
    vec![
        KeySource::Header {
            name: "x-city-id".into(),
            kind: KeyKind::City,
        },
        KeySource::Header {
            name: "x-user-id".into(),
            kind: KeyKind::User,
        },
    ]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Plain HTTP listener (HTTP/1.1, and HTTP/2 prior knowledge if `h2c`).
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plain listener.
    #[serde(default = "yes")]
    pub h2c: bool,
    /// Data-plane threads (each with its own runtime, listener socket and
    /// upstream pools). Default: the number of CPUs.
    #[serde(default)]
    pub workers: Option<usize>,
    /// HTTPS listener (rustls; ALPN h2 and http/1.1).
    #[serde(default)]
    pub https: Option<SocketAddr>,
    /// PEM certificate chain and key for `https`; reloaded when they change.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTP/1.1 requests without a body (plain, or TLS unless ALPN
    /// chose h2) with the router's own HTTP/1 server (`http1::server`); from the
    /// first other request on, the connection is hyper's. `false`: hyper
    /// serves all.
    #[serde(default = "yes")]
    pub own_http1: bool,
    /// The peer listener (with `[peer_tls]`): other sites' routers only,
    /// over TLS with a client certificate signed by `peer_tls.ca_file`
    /// (ALPN h2 and http/1.1). The topology's `router` and `more_routers`
    /// addresses of this site must name it: they are what the others dial.
    #[serde(default)]
    pub peer: Option<SocketAddr>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `/metrics`, `/healthz`, `/readyz`, `/topology`.
    pub listen: SocketAddr,
}

/// The `[topology]` table: etcd (with TLS and a user) or a file.
pub use ezone_topology::store::TopologySource;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default = "default_missing")]
    pub on_missing_key: FallbackAction,
    #[serde(default = "default_unknown")]
    pub on_unknown_city: FallbackAction,
    /// Overrides the topology's `settings.write_hold_ms` for this router.
    #[serde(default)]
    pub write_hold_ms: Option<u64>,
    /// A secret every router of the deployment shares: sent with requests
    /// forwarded to another site's router, and required before a request's
    /// hop list, decided epoch and `X-Forwarded-Proto` are believed. Unset:
    /// no request is believed as a router's, nothing is forwarded to another
    /// site, and a router whose topology has other sites refuses to start
    /// (docs/router.md, "Trust") unless `[peer_tls]` is set, which replaces
    /// the secret (the two are refused together).
    #[serde(default)]
    pub peer_secret: Option<Secret>,
}

/// A secret from the config, kept out of `Debug` output and logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

fn default_missing() -> FallbackAction {
    FallbackAction::DefaultSite
}
fn default_unknown() -> FallbackAction {
    FallbackAction::Reject
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            on_missing_key: default_missing(),
            on_unknown_city: default_unknown(),
            write_hold_ms: None,
            peer_secret: None,
        }
    }
}

macro_rules! ms_field {
    ($name:ident, $default:path) => {
        fn $name() -> u64 {
            $default
        }
    };
}
ms_field!(d_connect, defaults::CONNECT_TIMEOUT_MS);
ms_field!(d_request, defaults::REQUEST_TIMEOUT_MS);
ms_field!(d_idle, defaults::IDLE_TIMEOUT_MS);
ms_field!(d_header, defaults::HEADER_READ_TIMEOUT_MS);
ms_field!(d_body_read, defaults::BODY_READ_TIMEOUT_MS);
ms_field!(d_send, defaults::SEND_TIMEOUT_MS);
ms_field!(d_upstream_read, defaults::UPSTREAM_READ_TIMEOUT_MS);
ms_field!(d_keepalive, defaults::KEEPALIVE_TIMEOUT_MS);
ms_field!(d_drain, defaults::DRAIN_TIMEOUT_MS);
ms_field!(d_health_interval, defaults::HEALTH_INTERVAL_MS);
ms_field!(d_eject, defaults::EJECT_MS);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect to an upstream or a peer router.
    #[serde(default = "d_connect")]
    pub connect_ms: u64,
    /// From sending the request upstream to its response head.
    #[serde(default = "d_request")]
    pub request_ms: u64,
    /// How long an idle pooled upstream connection is kept.
    #[serde(default = "d_idle")]
    pub idle_ms: u64,
    /// How long a client may take to send its request head (slow clients):
    /// the first from when the connection was accepted, a later one from
    /// its first byte.
    #[serde(default = "d_header")]
    pub header_read_ms: u64,
    /// How long the client's request body may go without sending a byte
    /// while the router waits for it (then 408, the client's fault).
    #[serde(default = "d_body_read")]
    pub body_read_ms: u64,
    /// How long an answer may wait for the client to take any of it (a
    /// client that does not read is dropped).
    #[serde(default = "d_send")]
    pub send_ms: u64,
    /// How long an upstream's response body may go without a byte while
    /// the router waits for it (then the answer is cut off, and it counts
    /// against the upstream).
    #[serde(default = "d_upstream_read")]
    pub upstream_read_ms: u64,
    /// How long a client connection may sit idle: HTTP/1.1 between an
    /// answer and the first byte of the next request, HTTP/2 with no
    /// stream open (then GOAWAY).
    #[serde(default = "d_keepalive")]
    pub keepalive_ms: u64,
    /// On SIGTERM, how long in-flight requests may take to finish (also:
    /// a connection asked to close, shed or idle, finishing its requests).
    #[serde(default = "d_drain")]
    pub drain_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: d_connect(),
            request_ms: d_request(),
            idle_ms: d_idle(),
            header_read_ms: d_header(),
            body_read_ms: d_body_read(),
            send_ms: d_send(),
            upstream_read_ms: d_upstream_read(),
            keepalive_ms: d_keepalive(),
            drain_ms: d_drain(),
        }
    }
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    pub fn request(&self) -> Duration {
        Duration::from_millis(self.request_ms)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
    pub fn header_read(&self) -> Duration {
        Duration::from_millis(self.header_read_ms)
    }
    pub fn body_read(&self) -> Duration {
        Duration::from_millis(self.body_read_ms)
    }
    pub fn send(&self) -> Duration {
        Duration::from_millis(self.send_ms)
    }
    pub fn upstream_read(&self) -> Duration {
        Duration::from_millis(self.upstream_read_ms)
    }
    pub fn keepalive(&self) -> Duration {
        Duration::from_millis(self.keepalive_ms)
    }
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }
}

fn d_max_header_bytes() -> usize {
    defaults::MAX_HEADER_BYTES
}
fn d_max_headers() -> usize {
    defaults::MAX_HEADERS
}
fn d_max_body() -> u64 {
    defaults::MAX_BODY_BYTES
}
fn d_max_held() -> usize {
    defaults::MAX_HELD
}
fn d_replay_body() -> u64 {
    defaults::REPLAY_BODY_BYTES
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request head (request line + headers) in bytes.
    #[serde(default = "d_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request headers.
    #[serde(default = "d_max_headers")]
    pub max_headers: usize,
    /// Largest request body in bytes (streamed; cut off with 413 when exceeded).
    #[serde(default = "d_max_body")]
    pub max_body_bytes: u64,
    /// Most writes held at once for frozen shards (more get 503).
    #[serde(default = "d_max_held")]
    pub max_held: usize,
    /// Writes for a shard with a body of at most this many bytes (declared
    /// by `Content-Length`) are read whole before they are sent, so that one
    /// the database fence refused (`503` with `X-Ezone-Fenced`: a flip began
    /// while it was on its way) can be held and sent again to the shard's
    /// new home instead of failing. Larger or chunked bodies stream, and a
    /// fenced refusal of one reaches the client. `0`: only writes without a
    /// body are sent again. (Bodies over `max_body_bytes` are refused
    /// first, whatever this says.)
    #[serde(default = "d_replay_body")]
    pub replay_body_bytes: u64,
    /// Most client connections open at once (all workers together). At
    /// the cap the router stops accepting and closes the connections idle
    /// the longest to make room. Default: from the file descriptor limit
    /// (raised to its hard limit at start): (limit - 64) / 2, as each
    /// client connection may take an upstream connection too.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: d_max_header_bytes(),
            max_headers: d_max_headers(),
            max_body_bytes: d_max_body(),
            max_held: d_max_held(),
            replay_body_bytes: d_replay_body(),
            max_connections: None,
        }
    }
}

impl Limits {
    /// The connection cap: `max_connections`, else derived from the file
    /// descriptor limit `fds` (none known: no cap).
    pub fn connection_cap(&self, fds: Option<u64>) -> usize {
        if let Some(n) = self.max_connections {
            return n;
        }
        match fds {
            Some(fds) => {
                let n = fds.saturating_sub(defaults::RESERVED_FDS) / 2;
                usize::try_from(n).unwrap_or(usize::MAX).max(16)
            }
            None => usize::MAX,
        }
    }
}

fn d_health_path() -> String {
    defaults::HEALTH_PATH.to_string()
}
fn d_eject_after() -> u32 {
    defaults::EJECT_AFTER_FAILURES
}
fn d_budget() -> u32 {
    defaults::RETRY_BUDGET_PERCENT
}
fn d_retries() -> u32 {
    defaults::MAX_RETRIES
}

/// Upstream protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default = "d_protocol")]
    pub protocol: UpstreamProtocol,
    /// Active health check: GET this path on each endpoint.
    #[serde(default = "d_health_path")]
    pub health_path: String,
    #[serde(default = "d_health_interval")]
    pub health_interval_ms: u64,
    /// Passive ejection: this many consecutive failures eject an endpoint...
    #[serde(default = "d_eject_after")]
    pub eject_after_failures: u32,
    /// ...for this long (then it is tried again).
    #[serde(default = "d_eject")]
    pub eject_ms: u64,
    /// Retries may add at most this percentage to the request rate.
    #[serde(default = "d_budget")]
    pub retry_budget_percent: u32,
    /// At most this many retries per request.
    #[serde(default = "d_retries")]
    pub max_retries: u32,
}

fn d_protocol() -> UpstreamProtocol {
    UpstreamProtocol::Http1
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            protocol: d_protocol(),
            health_path: d_health_path(),
            health_interval_ms: d_health_interval(),
            eject_after_failures: d_eject_after(),
            eject_ms: d_eject(),
            retry_budget_percent: d_budget(),
            max_retries: d_retries(),
        }
    }
}

fn d_peer_domain() -> String {
    defaults::PEER_TLS_DOMAIN.to_string()
}

/// `[peer_tls]`: mutual TLS between sites' routers. Every router has a
/// certificate, signed by one CA, that names its site as the DNS name
/// `<site>.<domain>` (a subject alternative name) and serves as both its
/// server certificate (on `listen.peer`) and its client certificate (when
/// it forwards to another site's router). The three files are re-read when
/// they change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsConfig {
    /// This router's certificate chain (PEM, leaf first): exactly one DNS
    /// name `<site>.<domain>` for this router's site; both the serverAuth
    /// and clientAuth extended key usages.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The CA (PEM; several during a CA rotation) that signs every site's
    /// router certificate: peers' certificates must chain to it, both ways.
    pub ca_file: PathBuf,
    /// The domain of the sites' names in certificates.
    #[serde(default = "d_peer_domain")]
    pub domain: String,
}

impl PeerTlsConfig {
    /// The DNS name a certificate of `site` carries, and that a router
    /// dialing that site's router expects: `<site>.<domain>`.
    pub fn site_name(&self, site: &str) -> String {
        format!("{site}.{}", self.domain)
    }

    fn validate(&self, site: &str) -> Result<(), ConfigError> {
        for (field, path) in [
            ("peer_tls.cert_file", &self.cert_file),
            ("peer_tls.key_file", &self.key_file),
            ("peer_tls.ca_file", &self.ca_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err(err(field, "empty: set the path of a PEM file"));
            }
        }
        if !valid_domain(&self.domain) {
            return Err(err(
                "peer_tls.domain",
                format!(
                    "{:?} is not a DNS domain: use lowercase labels of a-z, 0-9 and '-' separated by dots, without a leading or trailing dot (the default is {:?})",
                    self.domain,
                    defaults::PEER_TLS_DOMAIN
                ),
            ));
        }
        let name = self.site_name(site);
        if site.len() > 63 || rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err(err(
                "site",
                format!(
                    "{site:?} does not make the DNS name {name:?} that a router certificate names its site by ([peer_tls]): a site name must be at most 63 characters and not start or end with '-'"
                ),
            ));
        }
        Ok(())
    }
}

/// A DNS domain as `peer_tls.domain` takes it: lowercase LDH labels.
fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 180
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && !domain
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}

fn d_access_log_buffer() -> usize {
    defaults::ACCESS_LOG_BUFFER_LINES
}

/// `[access_log]`: where the access log goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file, appended to (created with mode 0640 if missing; its
    /// directory must exist), or `-` (or `stdout`) for standard output.
    pub path: PathBuf,
    /// Lines waiting to be written at most; past it a line is dropped and
    /// counted (`ezone_router_access_log_dropped_total`) rather than make
    /// a request wait for the disk.
    #[serde(default = "d_access_log_buffer")]
    pub buffer_lines: usize,
}

impl AccessLogConfig {
    /// Whether `path` names standard output rather than a file.
    pub fn is_stdout(&self) -> bool {
        self.path.as_os_str() == "-" || self.path.as_os_str() == "stdout"
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(err(
                "access_log.path",
                "empty: set a file path, or \"-\" for standard output (or remove [access_log] for no access log)",
            ));
        }
        if self.buffer_lines == 0 {
            return Err(err(
                "access_log.buffer_lines",
                "must be at least 1 (or remove it for the default)",
            ));
        }
        if self.is_stdout() {
            return Ok(());
        }
        // Checked here rather than at the first request: a typo in the
        // directory should stop `config validate` and the start, not
        // silently log nowhere.
        if self.path.is_dir() {
            return Err(err(
                "access_log.path",
                format!(
                    "{} is a directory: name a file in it, e.g. {}",
                    self.path.display(),
                    self.path.join("access.log").display()
                ),
            ));
        }
        // A bare file name's parent is "": the working directory.
        let parent = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if !parent.is_dir() {
            return Err(err(
                "access_log.path",
                format!(
                    "the directory {} does not exist: create it (writable by the router), or point access_log.path into an existing one",
                    parent.display()
                ),
            ));
        }
        Ok(())
    }
}

/// A config problem, naming the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("router config: {field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

fn err(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        problem: problem.into(),
    }
}

impl RouterConfig {
    /// The number of data-plane threads: `listen.workers`, else the number
    /// of CPUs.
    pub fn worker_count(&self) -> usize {
        self.listen
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<RouterConfig, ConfigError> {
        let cfg: RouterConfig = toml::from_str(text).map_err(|e| err("(file)", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.site.trim().is_empty() {
            return Err(err("site", "empty: set this router's site name"));
        }
        if self.listen.http.is_none() && self.listen.https.is_none() {
            return Err(err(
                "listen",
                "no listener: set listen.http and/or listen.https",
            ));
        }
        match (&self.peer_tls, self.listen.peer) {
            (Some(tls), Some(peer)) => {
                tls.validate(&self.site)?;
                // Port 0 asks the system for a free port: never the same one.
                if peer.port() != 0
                    && (Some(peer) == self.listen.http || Some(peer) == self.listen.https)
                {
                    return Err(err(
                        "listen.peer",
                        format!("{peer} is also listen.http or listen.https: the peer listener needs an address of its own"),
                    ));
                }
                if self.routing.peer_secret.is_some() {
                    return Err(err(
                        "routing.peer_secret",
                        "remove it: with [peer_tls] a peer router is known by its certificate on listen.peer, and a secret still believed on the public listeners would let whoever holds it pose as a router there",
                    ));
                }
            }
            (Some(_), None) => {
                return Err(err(
                    "listen.peer",
                    "[peer_tls] is set but listen.peer is not: set it (e.g. \"0.0.0.0:8444\"), and point this site's router address in the topology at it: it is what other sites' routers dial",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "peer_tls",
                    "listen.peer is set but [peer_tls] is not: the peer listener takes only TLS with a client certificate; set peer_tls.cert_file, key_file and ca_file (or remove listen.peer)",
                ))
            }
            (None, None) => {}
        }
        if self.listen.https.is_some()
            && (self.listen.tls_cert.is_none() || self.listen.tls_key.is_none())
        {
            return Err(err(
                "listen.tls_cert",
                "listen.https needs tls_cert and tls_key (PEM files)",
            ));
        }
        let t = &self.topology;
        match (t.etcd.is_empty(), &t.file) {
            (true, None) => {
                return Err(err(
                    "topology",
                    "no source: set topology.etcd = [\"http://HOST:PORT\"] or topology.file",
                ))
            }
            (false, Some(_)) => {
                return Err(err(
                    "topology",
                    "set either topology.etcd or topology.file, not both",
                ))
            }
            _ => {}
        }
        if self.keys.is_empty() {
            return Err(err(
                "keys",
                "no key sources: add at least one [[keys]] entry",
            ));
        }
        for (i, k) in self.keys.iter().enumerate() {
            let field = format!("keys[{i}]");
            match k {
                KeySource::Header { name, .. } => {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(err(&field, format!("{name:?} is not a valid header name")));
                    }
                }
                KeySource::Query { name, .. } | KeySource::Cookie { name, .. } => {
                    if name.is_empty() {
                        return Err(err(&field, "empty name"));
                    }
                }
                KeySource::Path { segment, after, .. } => {
                    if segment.is_none() == after.is_none() {
                        return Err(err(
                            &field,
                            "a path source needs exactly one of `segment` or `after`",
                        ));
                    }
                }
            }
        }
        let nonzero = [
            ("timeouts.connect_ms", self.timeouts.connect_ms),
            ("timeouts.request_ms", self.timeouts.request_ms),
            ("timeouts.header_read_ms", self.timeouts.header_read_ms),
            ("timeouts.body_read_ms", self.timeouts.body_read_ms),
            ("timeouts.send_ms", self.timeouts.send_ms),
            ("timeouts.upstream_read_ms", self.timeouts.upstream_read_ms),
            ("timeouts.keepalive_ms", self.timeouts.keepalive_ms),
            (
                "upstream.health_interval_ms",
                self.upstream.health_interval_ms,
            ),
            ("upstream.eject_ms", self.upstream.eject_ms),
        ];
        for (field, v) in nonzero {
            if v == 0 {
                return Err(err(field, "must be at least 1"));
            }
        }
        if let Some(Secret(secret)) = &self.routing.peer_secret {
            if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(
                    "routing.peer_secret",
                    "must be at least 16 visible ASCII characters (no spaces); set the same on every router",
                ));
            }
        }
        if self.routing.write_hold_ms == Some(0) {
            return Err(err(
                "routing.write_hold_ms",
                "must be at least 1 (or remove it to use the topology's)",
            ));
        }
        if self.limits.max_header_bytes < 1024 {
            return Err(err("limits.max_header_bytes", "must be at least 1024"));
        }
        if self.limits.max_headers == 0 {
            return Err(err("limits.max_headers", "must be at least 1"));
        }
        if self.limits.max_connections == Some(0) {
            return Err(err(
                "limits.max_connections",
                "must be at least 1 (or remove it to derive it from the file descriptor limit)",
            ));
        }
        if !self.upstream.health_path.starts_with('/') {
            return Err(err("upstream.health_path", "must start with '/'"));
        }
        if self.upstream.eject_after_failures == 0 {
            return Err(err("upstream.eject_after_failures", "must be at least 1"));
        }
        if let Some(log) = &self.access_log {
            log.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
site = "beijing"
[listen]
http = "127.0.0.1:8080"
[topology]
etcd = ["http://127.0.0.1:2379"]
"#;

    #[test]
    fn minimal_gets_defaults() {
        let c = RouterConfig::from_toml(MIN).unwrap();
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.limits.max_held, defaults::MAX_HELD);
        assert_eq!(c.timeouts.connect(), Duration::from_secs(1));
        assert_eq!(c.routing.on_unknown_city, FallbackAction::Reject);
        assert_eq!(c.timeouts.body_read(), Duration::from_secs(60));
        assert_eq!(c.timeouts.send(), Duration::from_secs(60));
        assert_eq!(c.timeouts.upstream_read(), Duration::from_secs(60));
        assert_eq!(c.timeouts.keepalive(), Duration::from_secs(75));
        assert_eq!(c.limits.max_connections, None);
        assert!(c.access_log.is_none(), "no access log unless asked for");
    }

    #[test]
    fn the_access_log_needs_an_existing_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("access.log");
        let c = RouterConfig::from_toml(&format!(
            "{MIN}[access_log]\npath = {:?}\n",
            file.display().to_string()
        ))
        .expect("a file in an existing directory");
        let log = c.access_log.expect("access_log set");
        assert_eq!(log.path, file);
        assert_eq!(log.buffer_lines, defaults::ACCESS_LOG_BUFFER_LINES);
        assert!(!log.is_stdout());
        for stdout in ["-", "stdout"] {
            let c = RouterConfig::from_toml(&format!("{MIN}[access_log]\npath = {stdout:?}\n"))
                .expect("standard output");
            assert!(c.access_log.expect("set").is_stdout());
        }

        let missing = dir.path().join("no-such-dir").join("access.log");
        let e = RouterConfig::from_toml(&format!(
            "{MIN}[access_log]\npath = {:?}\n",
            missing.display().to_string()
        ))
        .unwrap_err();
        assert_eq!(e.field, "access_log.path");
        assert!(
            e.problem.contains("no-such-dir"),
            "names the directory: {e}"
        );
        assert!(e.problem.contains("create it"), "says the fix: {e}");

        let e = RouterConfig::from_toml(&format!(
            "{MIN}[access_log]\npath = {:?}\n",
            dir.path().display().to_string()
        ))
        .unwrap_err();
        assert_eq!(e.field, "access_log.path");
        assert!(e.problem.contains("is a directory"), "{e}");

        let e = RouterConfig::from_toml(&format!("{MIN}[access_log]\npath = \"\"\n")).unwrap_err();
        assert_eq!(e.field, "access_log.path");
        let e = RouterConfig::from_toml(&format!(
            "{MIN}[access_log]\npath = \"-\"\nbuffer_lines = 0\n"
        ))
        .unwrap_err();
        assert_eq!(e.field, "access_log.buffer_lines");
        let e = RouterConfig::from_toml(&format!(
            "{MIN}[access_log]\npath = \"-\"\nformat = \"combined\"\n"
        ))
        .unwrap_err();
        assert!(
            e.problem.contains("format"),
            "unknown keys are refused: {e}"
        );
    }

    #[test]
    fn the_connection_cap_comes_from_the_fd_limit_unless_set() {
        let mut l = Limits::default();
        assert_eq!(l.connection_cap(Some(1024)), 480);
        assert_eq!(l.connection_cap(Some(256)), 96);
        assert_eq!(l.connection_cap(Some(10)), 16, "never below a few");
        assert_eq!(l.connection_cap(None), usize::MAX);
        l.max_connections = Some(20);
        assert_eq!(l.connection_cap(Some(1024)), 20);
    }

    #[test]
    fn errors_name_the_field() {
        let e = RouterConfig::from_toml(&MIN.replace("etcd = [\"http://127.0.0.1:2379\"]", ""))
            .unwrap_err();
        assert_eq!(e.field, "topology");
        let e = RouterConfig::from_toml(&format!("{MIN}[timeouts]\nconnect_ms = 0\n")).unwrap_err();
        assert_eq!(e.field, "timeouts.connect_ms");
        for field in [
            "body_read_ms",
            "send_ms",
            "upstream_read_ms",
            "keepalive_ms",
        ] {
            let e =
                RouterConfig::from_toml(&format!("{MIN}[timeouts]\n{field} = 0\n")).unwrap_err();
            assert_eq!(e.field, format!("timeouts.{field}"));
        }
        let e =
            RouterConfig::from_toml(&format!("{MIN}[limits]\nmax_connections = 0\n")).unwrap_err();
        assert_eq!(e.field, "limits.max_connections");
        let e = RouterConfig::from_toml(&format!(
            "{MIN}[[keys]]\nsource = \"path\"\nkind = \"city\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.field, "keys[0]");
        let e = RouterConfig::from_toml(&format!("{MIN}[limits]\nmax_body = 5\n")).unwrap_err();
        assert!(e.problem.contains("max_body"), "{e}");
        for weak in ["short", "has a space in it, long enough"] {
            let e = RouterConfig::from_toml(&format!("{MIN}[routing]\npeer_secret = {weak:?}\n"))
                .unwrap_err();
            assert_eq!(e.field, "routing.peer_secret");
        }
        let c = RouterConfig::from_toml(&format!(
            "{MIN}[routing]\npeer_secret = \"0123456789abcdef\"\n"
        ))
        .unwrap();
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "kept out of Debug"
        );
    }

    const PEER_TLS: &str = "[peer_tls]\ncert_file = \"/etc/ezone/peer.crt\"\nkey_file = \"/etc/ezone/peer.key\"\nca_file = \"/etc/ezone/peer-ca.crt\"\n";

    /// `MIN` with the peer listener at `peer` and `rest` appended.
    fn with_peer(peer: &str, rest: &str) -> String {
        let listen = format!("http = \"127.0.0.1:8080\"\npeer = {peer:?}");
        format!(
            "{}{rest}",
            MIN.replace("http = \"127.0.0.1:8080\"", &listen)
        )
    }

    #[test]
    fn peer_tls_needs_its_listener_and_replaces_the_secret() {
        let c = RouterConfig::from_toml(&with_peer("127.0.0.1:8444", PEER_TLS)).expect("valid");
        let tls = c.peer_tls.expect("[peer_tls]");
        assert_eq!(tls.domain, defaults::PEER_TLS_DOMAIN);
        assert_eq!(tls.site_name("beijing"), "beijing.ezone.internal");
        assert_eq!(c.listen.peer, Some("127.0.0.1:8444".parse().expect("addr")));

        // One without the other.
        let e = RouterConfig::from_toml(&format!("{MIN}{PEER_TLS}")).unwrap_err();
        assert_eq!(e.field, "listen.peer");
        assert!(e.problem.contains("topology"), "says what dials it: {e}");
        let e = RouterConfig::from_toml(&with_peer("127.0.0.1:8444", "")).unwrap_err();
        assert_eq!(e.field, "peer_tls");
        // Its own address.
        let e = RouterConfig::from_toml(&with_peer("127.0.0.1:8080", PEER_TLS)).unwrap_err();
        assert_eq!(e.field, "listen.peer");
        // Not beside the secret.
        let e = RouterConfig::from_toml(&with_peer(
            "127.0.0.1:8444",
            &format!("{PEER_TLS}[routing]\npeer_secret = \"0123456789abcdef\"\n"),
        ))
        .unwrap_err();
        assert_eq!(e.field, "routing.peer_secret");
        assert!(e.problem.contains("remove it"), "{e}");
        // Files named, and nothing unknown.
        let e = RouterConfig::from_toml(&with_peer(
            "127.0.0.1:8444",
            &PEER_TLS.replace("\"/etc/ezone/peer.key\"", "\"\""),
        ))
        .unwrap_err();
        assert_eq!(e.field, "peer_tls.key_file");
        let e = RouterConfig::from_toml(&with_peer(
            "127.0.0.1:8444",
            &PEER_TLS.replace("ca_file", "ca"),
        ))
        .unwrap_err();
        assert!(e.problem.contains("ca"), "{e}");
    }

    #[test]
    fn the_peer_tls_domain_and_the_site_make_a_dns_name() {
        for good in ["ezone.internal", "corp.example", "a-1.b2.example"] {
            let c = RouterConfig::from_toml(&with_peer(
                "127.0.0.1:8444",
                &format!("{PEER_TLS}domain = {good:?}\n"),
            ))
            .unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(
                c.peer_tls.expect("set").site_name("beijing"),
                format!("beijing.{good}")
            );
        }
        for bad in [
            "",
            ".ezone.internal",
            "ezone.internal.",
            "Ezone.internal",
            "ezone..internal",
            "-ezone.internal",
            "ezone.123",
            "ezone internal",
            "*.internal",
        ] {
            let e = RouterConfig::from_toml(&with_peer(
                "127.0.0.1:8444",
                &format!("{PEER_TLS}domain = {bad:?}\n"),
            ))
            .unwrap_err();
            assert_eq!(e.field, "peer_tls.domain", "{bad:?}: {e}");
        }
        let long = "s".repeat(64);
        let e = RouterConfig::from_toml(
            &with_peer("127.0.0.1:8444", PEER_TLS)
                .replace("site = \"beijing\"", &format!("site = {long:?}")),
        )
        .unwrap_err();
        assert_eq!(e.field, "site");
        assert!(e.problem.contains("63"), "{e}");
    }

    /// The example in docs/router.md is a valid config (the docs cannot drift).
    #[test]
    fn the_documented_example_parses() {
        let c = RouterConfig::from_toml(documented("## Config")).unwrap();
        assert!(c.peer_tls.is_none() && c.routing.peer_secret.is_some());
        let c = RouterConfig::from_toml(documented("## Peer TLS")).unwrap();
        let tls = c.peer_tls.expect("[peer_tls]");
        assert_eq!(tls.site_name(&c.site), "beijing.ezone.internal");
        assert!(c.listen.peer.is_some());
    }

    /// The first TOML block of the docs/router.md section `heading`.
    fn documented(heading: &str) -> &'static str {
        let doc = include_str!("../../docs/router.md");
        let start = doc.find(&format!("{heading}\n")).expect("the section");
        let block = &doc[start..];
        let toml_start = block.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let toml_end = block[toml_start..].find("```").expect("end of block") + toml_start;
        &block[toml_start..toml_end]
    }
}
