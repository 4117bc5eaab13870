//! The lab's WAN: one fault-proxy link per ordered pair of sites, so that
//! whatever runs "at" site `b` reaches site `a`'s Postgres across a slow,
//! breakable network (link `a->b`), while `a`'s own processes use the direct
//! address. Each link starts with half the round-trip time as latency in
//! each direction.
//!
//! The proxy runs in-process for tests (a [`FaultProxy`] with its admin API
//! on a free port, so tests get [`LinkHandle`]s) or as a separate
//! `ezone chaos proxy serve` process for a detached lab, which must outlive
//! the CLI that started it. That process is given port 0 everywhere (no port
//! race), reports the bound addresses in its one ready line, and its config
//! file is then rewritten with those addresses so a manual restart of the
//! proxy keeps them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::info::link_name;
use super::LabError;
use crate::postgres::PgCluster;
use crate::process::{ChildProcess, ProcessRecord, ProcessSpec, Supervision};
use crate::proxy::{FaultProxy, LinkHandle, LinkSpec, ProxyConfig, Toxics};
use crate::scratch::ScratchDir;

/// How long the proxy process may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How often its output is polled.
const POLL: Duration = Duration::from_millis(20);
/// Tries when the proxy process fails to bind.
const START_ATTEMPTS: usize = 3;

/// How the lab runs its fault proxy.
#[derive(Debug, Clone, Default)]
pub enum ProxyLaunch {
    /// A [`FaultProxy`] inside this process (tests).
    #[default]
    InProcess,
    /// `program args... --config FILE` as a child process (`ezone lab up`
    /// runs `ezone chaos proxy serve --config FILE`).
    Command {
        program: PathBuf,
        args: Vec<OsString>,
    },
}

/// The running WAN.
#[derive(Debug)]
pub(crate) enum Wan {
    InProcess {
        proxy: FaultProxy,
        links: BTreeMap<String, LinkHandle>,
        admin: SocketAddr,
    },
    External {
        links: BTreeMap<String, SocketAddr>,
        admin: SocketAddr,
        // Field order matters: the process drops before its directory.
        // Boxed: a process handle is much larger than the in-process variant.
        process: Box<ChildProcess>,
        dir: ScratchDir,
    },
}

/// The ready line of `ezone chaos proxy serve`.
#[derive(Debug, Deserialize)]
struct Ready {
    admin: SocketAddr,
    links: BTreeMap<String, SocketAddr>,
}

impl Wan {
    /// Start the proxy with a link per ordered pair of sites. With
    /// `keep_files`, an external proxy's directory (config, log) stays on
    /// disk when the WAN stops.
    pub(crate) async fn start(
        launch: &ProxyLaunch,
        supervision: Supervision,
        postgres: &BTreeMap<String, PgCluster>,
        rtt: Duration,
        host: IpAddr,
        root: &Path,
        keep_files: bool,
    ) -> Result<Wan, LabError> {
        let specs = link_specs(postgres, rtt, host);
        match launch {
            ProxyLaunch::InProcess => {
                let proxy = FaultProxy::new();
                let mut links = BTreeMap::new();
                for spec in specs {
                    let handle = proxy.add_link(spec).await?;
                    links.insert(handle.name().to_string(), handle);
                }
                let admin = proxy.serve_admin(any_port(host)).await?;
                tracing::info!(links = links.len(), admin = %admin, "WAN fault proxy is up (in process).");
                Ok(Wan::InProcess {
                    proxy,
                    links,
                    admin,
                })
            }
            ProxyLaunch::Command { program, args } => {
                let dir = ScratchDir::create(&root.join("proxy"))?.keep_files(keep_files);
                let mut attempt = 1;
                loop {
                    match start_external(program, args, supervision, dir.path(), &specs, host).await
                    {
                        Ok((process, ready)) => {
                            tracing::info!(links = ready.links.len(), admin = %ready.admin, pid = process.pid(), "WAN fault proxy is up.");
                            return Ok(Wan::External {
                                links: ready.links,
                                admin: ready.admin,
                                process: Box::new(process),
                                dir,
                            });
                        }
                        Err(e) if e.is_port_clash() && attempt < START_ATTEMPTS => {
                            tracing::warn!(attempt, error = %e, "Fault proxy could not bind; retrying.");
                            attempt += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    pub(crate) fn admin(&self) -> SocketAddr {
        match self {
            Wan::InProcess { admin, .. } | Wan::External { admin, .. } => *admin,
        }
    }

    /// Link name -> listen address.
    pub(crate) fn addrs(&self) -> BTreeMap<String, SocketAddr> {
        match self {
            Wan::InProcess { links, .. } => links
                .iter()
                .map(|(n, h)| (n.clone(), h.listen_addr()))
                .collect(),
            Wan::External { links, .. } => links.clone(),
        }
    }

    /// The proxy process, when it runs out of process.
    pub(crate) fn process(&self) -> Option<&ChildProcess> {
        match self {
            Wan::InProcess { .. } => None,
            Wan::External { process, .. } => Some(process.as_ref()),
        }
    }

    /// Stop the proxy (in process: every task, awaited; out of process:
    /// kill -9) and remove its directory (unless kept).
    pub(crate) async fn shutdown(self) -> Result<(), LabError> {
        match self {
            Wan::InProcess { proxy, links, .. } => {
                drop(links);
                proxy.shutdown().await;
                Ok(())
            }
            Wan::External { process, dir, .. } => {
                process.kill()?;
                drop(process);
                dir.remove()
            }
        }
    }

    /// Let an external proxy outlive this handle (detached labs).
    pub(crate) fn disown(self) -> Option<ProcessRecord> {
        match self {
            Wan::InProcess { .. } => None,
            Wan::External { process, dir, .. } => {
                let record = (*process).disown();
                dir.keep();
                Some(record)
            }
        }
    }
}

/// `HOST:0`.
fn any_port(host: IpAddr) -> SocketAddr {
    SocketAddr::new(host, 0)
}

/// One link per ordered pair (a, b), a != b: `a->b` forwards to a's Postgres
/// with rtt/2 of latency each way.
/// Each listens on `host` (where the WAN lives: 127.0.0.1, or the lab's
/// WAN address with sites in namespaces).
fn link_specs(
    postgres: &BTreeMap<String, PgCluster>,
    rtt: Duration,
    host: IpAddr,
) -> Vec<LinkSpec> {
    let one_way = Toxics {
        latency: rtt / 2,
        ..Toxics::default()
    };
    let mut specs = Vec::new();
    for (a, pg) in postgres {
        for b in postgres.keys().filter(|b| *b != a) {
            specs.push(LinkSpec {
                name: link_name(a, b),
                listen: any_port(host),
                upstream: pg.addr(),
                upstream_toxics: one_way.clone(),
                downstream_toxics: one_way.clone(),
            });
        }
    }
    specs
}

/// Write the config, start the proxy process and wait for its ready line.
async fn start_external(
    program: &Path,
    args: &[OsString],
    supervision: Supervision,
    dir: &Path,
    specs: &[LinkSpec],
    host: IpAddr,
) -> Result<(ChildProcess, Ready), LabError> {
    let config_path = dir.join("proxy.json");
    let mut config = ProxyConfig {
        admin: any_port(host),
        links: specs.to_vec(),
    };
    write_json(&config_path, &config)?;
    let ready_path = dir.join("ready.json");
    let spec = ProcessSpec::new("fault proxy", program, dir, "proxy.log")
        .args(args.iter().cloned())
        .arg("--config")
        .arg(&config_path)
        .stdout_file(ready_path.clone())
        .supervision(supervision);
    let process = ChildProcess::spawn(spec)?;
    let ready = wait_ready_line(&process, &ready_path).await?;
    if let Some(missing) = specs.iter().find(|s| !ready.links.contains_key(&s.name)) {
        return Err(proxy_error(
            &process,
            format!("its ready line lists no link {:?}", missing.name),
        ));
    }
    // Pin the bound addresses so a manual restart of the proxy keeps them.
    config.admin = ready.admin;
    for link in &mut config.links {
        if let Some(addr) = ready.links.get(&link.name) {
            link.listen = *addr;
        }
    }
    write_json(&config_path, &config)?;
    Ok((process, ready))
}

/// Poll the proxy's stdout for one complete JSON line.
async fn wait_ready_line(process: &ChildProcess, path: &Path) -> Result<Ready, LabError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(LabError::io("read the proxy's output", path, e)),
        };
        if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
            return serde_json::from_str(line).map_err(|e| {
                proxy_error(
                    process,
                    format!("its ready line {line:?} is not the expected JSON: {e}"),
                )
            });
        }
        if let Some(status) = process.exit_status() {
            return Err(proxy_error(
                process,
                format!("it exited during startup ({status})"),
            ));
        }
        if Instant::now() >= deadline {
            return Err(proxy_error(
                process,
                format!("it printed no ready line within {READY_TIMEOUT:?}"),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn proxy_error(process: &ChildProcess, message: String) -> LabError {
    LabError::ProxyProcess {
        message,
        log: process.log_path().to_path_buf(),
        tail: process.log_tail(),
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), LabError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| LabError::io("serialize", path, std::io::Error::other(e.to_string())))?;
    std::fs::write(path, text).map_err(|e| LabError::io("write", path, e))
}
