//! Real etcd for the lab: a cluster of 1 or 3 members on free loopback
//! ports, each in its own data directory, that a test can kill (-9), pause,
//! resume and restart, one member or all of them.
//!
//! Members run with fast raft timings (`--heartbeat-interval 50
//! --election-timeout 500`), so a leader is elected within a second and a
//! killed leader is replaced quickly. A restarted member reuses its data
//! directory and ports: etcd ignores the `--initial-cluster*` flags once its
//! data directory holds a WAL, so the same command line rejoins the cluster.
//!
//! Readiness is etcd's own `/health` endpoint on the client URL (true once
//! the member sees a leader and can serve a read), fetched with a minimal
//! HTTP/1.0 GET so no HTTP client is needed.
//!
//! With [`EtcdOptions::tls`] the members serve their client URLs over TLS
//! (`https://127.0.0.1:PORT`, with `--client-cert-auth` if asked), and
//! `/health` is read from a plain-http `--listen-metrics-urls` port instead.
//! Peers stay plain http on loopback. Certificates come from
//! [`crate::certs::LabCerts`]:
//!
//! ```no_run
//! # async fn f() -> Result<(), ezone_chaos::error::LabError> {
//! use ezone_chaos::certs::{LabCerts, LOOPBACK_SANS};
//! use ezone_chaos::etcd::{EtcdCluster, EtcdOptions, EtcdServerTls};
//! let certs = LabCerts::generate(std::path::Path::new("/tmp/certs"))?;
//! let server = certs.issue_server("etcd", LOOPBACK_SANS)?;
//! let etcd = EtcdCluster::start_with(EtcdOptions {
//!     tls: Some(EtcdServerTls::new(&server, certs.ca_file())),
//!     ..EtcdOptions::default()
//! })
//! .await?;
//! assert!(etcd.client_urls()[0].starts_with("https://"));
//! # Ok(()) }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::LabError;
use crate::ports;
use crate::process::{ChildProcess, ProcessRecord, ProcessSpec, Supervision};
use crate::scratch::ScratchDir;

/// How long a cluster (or a restarted member) may take to become healthy.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Raft heartbeat interval, in ms.
const HEARTBEAT_MS: u32 = 50;
/// Raft election timeout, in ms (10 heartbeats, as etcd recommends).
const ELECTION_MS: u32 = 500;
/// Tries on fresh ports when a member loses the port race at start.
const START_ATTEMPTS: usize = 3;
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);
/// Per-probe timeout of a `/health` request (a paused member never answers).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How to start an [`EtcdCluster`].
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Number of members: 1 or 3 (any of 1..=7 works).
    pub members: usize,
    /// Parent directory; `None` uses a fresh temp dir. The cluster lives in
    /// `<dir>/etcd`, removed when the cluster is dropped (or torn down)
    /// unless `keep_files`.
    pub dir: Option<PathBuf>,
    pub supervision: Supervision,
    pub ready_timeout: Duration,
    /// Leave the cluster's directory (data and each member's `etcd.log`) on
    /// disk when the cluster is dropped or torn down.
    pub keep_files: bool,
    /// Serve clients over TLS. `None` (the default): plain http.
    pub tls: Option<EtcdServerTls>,
    /// etcd's `--auth-token-ttl`: how long a simple auth token lives unused.
    /// `None` (the default): etcd's own, 300 s.
    pub auth_token_ttl: Option<Duration>,
    /// The address every member listens on (clients, peers, metrics):
    /// 127.0.0.1 by default. Its certificate must name it.
    pub host: IpAddr,
}

/// TLS for the members' client URLs (`--cert-file`, `--key-file`,
/// `--trusted-ca-file`, `--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdServerTls {
    /// PEM: the server certificate, for 127.0.0.1 (every member uses it).
    pub cert_file: PathBuf,
    /// PEM: its key.
    pub key_file: PathBuf,
    /// PEM: the CA(s) that client certificates must be signed by.
    pub trusted_ca_file: PathBuf,
    /// `--client-cert-auth`: refuse clients without a certificate signed by
    /// `trusted_ca_file`. Default (from [`EtcdServerTls::new`]): true.
    pub client_cert_auth: bool,
}

impl EtcdServerTls {
    /// TLS with `server`'s certificate and key, requiring client
    /// certificates signed by `trusted_ca_file`.
    pub fn new(server: &crate::certs::IssuedCert, trusted_ca_file: &Path) -> Self {
        EtcdServerTls {
            cert_file: server.cert_file.clone(),
            key_file: server.key_file.clone(),
            trusted_ca_file: trusted_ca_file.to_path_buf(),
            client_cert_auth: true,
        }
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            members: 1,
            dir: None,
            supervision: Supervision::Tied,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            keep_files: false,
            tls: None,
            auth_token_ttl: None,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// A running etcd cluster. Dropping it kills every member and removes its
/// directory (unless [`EtcdOptions::keep_files`]).
#[derive(Debug)]
pub struct EtcdCluster {
    // Field order matters: members (processes) drop before their directory.
    members: Vec<EtcdMember>,
    ready_timeout: Duration,
    dir: ScratchDir,
}

/// One etcd member: its ports, data directory and process.
#[derive(Debug)]
pub struct EtcdMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Where `/health` is served over plain http: the client port, or with
    /// TLS a `--listen-metrics-urls` port.
    health_port: u16,
    /// The address it listens on.
    host: IpAddr,
    tls: bool,
    dir: PathBuf,
    process: ChildProcess,
}

impl EtcdCluster {
    /// Start `members` members in a temp dir and wait until all are healthy.
    pub async fn start(members: usize) -> Result<Self, LabError> {
        Self::start_with(EtcdOptions {
            members,
            ..EtcdOptions::default()
        })
        .await
    }

    /// Start a cluster as `opts` says and wait until all members are healthy.
    pub async fn start_with(opts: EtcdOptions) -> Result<Self, LabError> {
        if !(1..=7).contains(&opts.members) {
            return Err(LabError::InvalidSpec {
                field: "etcd members",
                value: opts.members.to_string(),
                why: "use 1 or 3".to_string(),
            });
        }
        let program = find_etcd()?;
        let dir =
            ScratchDir::temp_or_under(opts.dir.as_deref(), "etcd")?.keep_files(opts.keep_files);
        let mut attempt = 1;
        loop {
            match start_members(&program, dir.path(), &opts).await {
                Ok(members) => {
                    tracing::info!(members = members.len(), dir = %dir.path().display(), "Etcd cluster is healthy.");
                    return Ok(EtcdCluster {
                        members,
                        ready_timeout: opts.ready_timeout,
                        dir,
                    });
                }
                Err(e) if e.is_port_clash() && attempt < START_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "Etcd lost a port race; retrying on fresh ports.");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The client URLs (`http://127.0.0.1:PORT`, or `https://` with TLS),
    /// one per member.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }

    /// The members, in start order (`etcd0`, `etcd1`, ...).
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// The cluster's directory (one subdirectory per member).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Wait until every member is healthy.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), LabError> {
        futures::future::try_join_all(self.members.iter().map(|m| m.wait_healthy(timeout))).await?;
        Ok(())
    }

    /// Restart member `index` (killing it first if it runs), with the same
    /// data directory and ports, and wait until it is healthy again.
    pub async fn restart_member(&self, index: usize) -> Result<(), LabError> {
        let m = self.members.get(index).ok_or_else(|| LabError::Unknown {
            what: "etcd member index",
            name: index.to_string(),
            known: format!("0..{}", self.members.len()),
        })?;
        m.restart()?;
        m.wait_healthy(self.ready_timeout).await
    }

    /// Kill every member (SIGKILL).
    pub fn kill(&self) -> Result<(), LabError> {
        for m in &self.members {
            m.kill()?;
        }
        Ok(())
    }

    /// Restart the whole cluster (kill -9 every member, start them all
    /// again on their data) and wait until it is healthy.
    pub async fn restart(&self) -> Result<(), LabError> {
        self.kill()?;
        for m in &self.members {
            m.restart()?;
        }
        self.wait_healthy(self.ready_timeout).await
    }

    /// Stop every member politely (SIGTERM, then SIGKILL after `timeout`).
    pub async fn terminate(&self, timeout: Duration) -> Result<(), LabError> {
        futures::future::try_join_all(self.members.iter().map(|m| m.process.terminate(timeout)))
            .await?;
        Ok(())
    }

    /// kill -9 every member and remove the cluster's directory (unless
    /// [`EtcdOptions::keep_files`]), reporting failures (dropping it does the
    /// same, failures only logged).
    pub fn teardown(self) -> Result<(), LabError> {
        let EtcdCluster { members, dir, .. } = self;
        for m in &members {
            m.kill()?;
        }
        drop(members);
        dir.remove()
    }

    /// Process records, for a lab's state file.
    pub fn records(&self) -> Vec<ProcessRecord> {
        self.members.iter().map(|m| m.process.record()).collect()
    }

    /// Let the members outlive this handle (detached labs); returns their
    /// records and the directory, which is kept.
    pub fn disown(self) -> (Vec<ProcessRecord>, PathBuf) {
        let records = self
            .members
            .into_iter()
            .map(|m| m.process.disown())
            .collect();
        (records, self.dir.keep())
    }
}

impl EtcdMember {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://HOST:PORT`, or `https://HOST:PORT` with TLS (HOST is
    /// [`EtcdOptions::host`], 127.0.0.1 by default).
    pub fn client_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!(
            "{scheme}://{}",
            SocketAddr::new(self.host, self.client_port)
        )
    }

    /// Whether clients reach this member over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn peer_url(&self) -> String {
        format!("http://{}", SocketAddr::new(self.host, self.peer_port))
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The member's directory (its `data/` and `etcd.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// The member's process, for anything not wrapped here.
    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// kill -9.
    pub fn kill(&self) -> Result<(), LabError> {
        self.process.kill()
    }

    /// SIGSTOP: the member holds its sockets open but answers nothing.
    pub fn pause(&self) -> Result<(), LabError> {
        self.process.pause()
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<(), LabError> {
        self.process.resume()
    }

    /// Kill (if running) and start again on the same data and ports; does
    /// not wait (a member alone may not become healthy without a quorum).
    /// See [`EtcdCluster::restart_member`] for the waiting variant.
    pub fn restart(&self) -> Result<(), LabError> {
        self.process.restart()
    }

    /// Whether `/health` says true right now.
    pub async fn is_healthy(&self) -> bool {
        matches!(
            probe_health(SocketAddr::new(self.host, self.health_port)).await,
            Ok(())
        )
    }

    /// Poll `/health` until it says true, the process exits, or `timeout`.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match probe_health(SocketAddr::new(self.host, self.health_port)).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Some(status) = self.process.exit_status() {
                return Err(LabError::Exited {
                    name: self.process.name().to_string(),
                    status: status.to_string(),
                    log: self.log_path().to_path_buf(),
                    tail: self.process.log_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(LabError::NotReady {
                    name: self.process.name().to_string(),
                    within: timeout,
                    last,
                    log: self.log_path().to_path_buf(),
                    tail: self.process.log_tail(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Spawn all members on fresh ports and wait until all are healthy.
async fn start_members(
    program: &Path,
    dir: &Path,
    opts: &EtcdOptions,
) -> Result<Vec<EtcdMember>, LabError> {
    let n = opts.members;
    let names: Vec<String> = (0..n).map(|i| format!("etcd{i}")).collect();
    let client_ports = ports::free_ports(n)?;
    let peer_ports = ports::free_ports(n)?;
    let health_ports = match opts.tls {
        Some(_) => ports::free_ports(n)?,
        None => client_ports.clone(),
    };
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let initial_cluster = names
        .iter()
        .zip(&peer_ports)
        .map(|(name, p)| format!("{name}=http://{}", SocketAddr::new(opts.host, *p)))
        .collect::<Vec<_>>()
        .join(",");
    let token = format!(
        "ezone-lab-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );

    let mut members = Vec::with_capacity(n);
    for (i, name) in names.iter().enumerate() {
        let member_dir = dir.join(name);
        // A previous attempt (lost port race) may have left a data dir behind.
        crate::scratch::remove_dir_all_if_exists(&member_dir)
            .map_err(|e| LabError::io("clear directory", &member_dir, e))?;
        std::fs::create_dir_all(&member_dir)
            .map_err(|e| LabError::io("create directory", &member_dir, e))?;
        let client = format!("{scheme}://{}", SocketAddr::new(opts.host, client_ports[i]));
        let peer = format!("http://{}", SocketAddr::new(opts.host, peer_ports[i]));
        let mut spec = ProcessSpec::new(
            format!("etcd member {name}"),
            program,
            &member_dir,
            "etcd.log",
        )
        .args(["--name", name])
        .arg("--data-dir")
        .arg(member_dir.join("data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &initial_cluster])
        .args([
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &token,
        ])
        .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
        .args(["--election-timeout", &ELECTION_MS.to_string()])
        .args(["--logger", "zap", "--log-outputs", "stderr"])
        .env_remove_prefix("ETCD_")
        .supervision(opts.supervision);
        if let Some(tls) = &opts.tls {
            spec = spec
                .arg("--cert-file")
                .arg(&tls.cert_file)
                .arg("--key-file")
                .arg(&tls.key_file)
                .arg("--trusted-ca-file")
                .arg(&tls.trusted_ca_file)
                .args([
                    format!("--client-cert-auth={}", tls.client_cert_auth),
                    "--listen-metrics-urls".to_string(),
                    format!("http://{}", SocketAddr::new(opts.host, health_ports[i])),
                ]);
        }
        if let Some(ttl) = opts.auth_token_ttl {
            spec = spec.args([
                "--auth-token-ttl".to_string(),
                ttl.as_secs().max(1).to_string(),
            ]);
        }
        let process = ChildProcess::spawn(spec)?;
        tracing::debug!(member = %name, pid = process.pid(), client = %client, peer = %peer, "Etcd member started.");
        members.push(EtcdMember {
            name: name.clone(),
            client_port: client_ports[i],
            peer_port: peer_ports[i],
            health_port: health_ports[i],
            host: opts.host,
            tls: opts.tls.is_some(),
            dir: member_dir,
            process,
        });
    }
    futures::future::try_join_all(members.iter().map(|m| m.wait_healthy(opts.ready_timeout)))
        .await?;
    Ok(members)
}

/// `GET /health` on a member's plain-http port (client or metrics): `Ok`
/// if it says true, else what it said (or why it could not be asked).
async fn probe_health(addr: SocketAddr) -> Result<(), String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("cannot send /health request: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("cannot read /health answer: {e}"))?;
        Ok::<_, String>(String::from_utf8_lossy(&buf).into_owned())
    };
    let answer = tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("/health did not answer within {PROBE_TIMEOUT:?}"))??;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    if body.contains("\"health\":\"true\"") {
        Ok(())
    } else {
        Err(format!("/health says {body}"))
    }
}

/// The etcd binary: `$EZONE_ETCD_BIN`, else `etcd` on `PATH`, else
/// `/usr/bin/etcd`.
pub fn find_etcd() -> Result<PathBuf, LabError> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os("EZONE_ETCD_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    let path_dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    for d in path_dirs
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
    {
        let p = d.join("etcd");
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    Err(LabError::EtcdNotFound {
        tried: tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}
