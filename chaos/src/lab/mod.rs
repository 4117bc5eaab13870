//! The local multi-site lab: a real etcd cluster, one real Postgres per
//! site, and a WAN between the sites made of fault-proxy links, all on
//! loopback, all killable, and all cleaned up.
//!
//! ```text
//!             etcd (1 or 3 members)
//!   beijing                              shanghai
//!   postgres :P1 <── link beijing->shanghai ── (what shanghai dials for beijing)
//!   (what beijing dials for shanghai) ── link shanghai->beijing ──> postgres :P2
//! ```
//!
//! A link `a->b` is site `a`'s Postgres as reached from site `b`: `b`'s
//! replicator dials it to read `a`'s changes. Each link starts with half the
//! WAN round trip as latency in each direction.
//!
//! Two ways to run it:
//! - **Tests**: [`Lab::start`] with the default [`LabSpec`]: processes tied
//!   to the test (see [`crate::process`]), the proxy in process, everything
//!   in a temp dir. [`Lab::teardown`] (or dropping the lab, also during a
//!   panic) kills every process and removes the directory.
//! - **`ezone lab up`**: [`Supervision::Detached`] processes, the proxy as
//!   an `ezone chaos proxy serve` process, a given directory; then
//!   [`Lab::disown`] lets them run on and returns the [`LabState`] written to
//!   `DIR/lab.json`, from which `ezone lab down` stops them.
//!
//! Dropping a [`Lab`] drops its parts in field order: the WAN, then the
//! Postgres clusters, then etcd (each killing its processes and removing its
//! directory), then the sites' clock offset files (with
//! [`LabSpec::clock_skew`]), then the lab's root directory.
//!
//! With [`LabSpec::keep_files`] (`ezone demo --dir`), teardown and drop
//! stop every process the same way but remove nothing: the data
//! directories, the logs, the clock files and the lab's directory stay for
//! the operator, and the lab's [`LabState`] lists nothing for
//! `ezone lab down` to remove.

mod info;
mod state;
mod wan;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::error::LabError;
pub use info::{link_name, LabInfo, SiteInfo};
pub use state::{LabProcess, LabState, Role, StopReport, STATE_FILE};
pub use wan::ProxyLaunch;

use crate::certs::{server_names, LabCerts};
use crate::clock::{self, SiteClock};
use crate::etcd::{EtcdCluster, EtcdOptions, EtcdServerTls};
use crate::netns::{Hosts, Network};
use crate::postgres::{self, PgCluster, PgOptions};
use crate::process::{self, Supervision};
use crate::proxy::{AdminClient, FaultProxy, LinkHandle};
use crate::scratch::ScratchDir;
use wan::Wan;

/// The default WAN round-trip time between two sites.
pub const DEFAULT_WAN_RTT: Duration = Duration::from_millis(30);
/// The default sites.
pub const DEFAULT_SITES: &[&str] = &["beijing", "shanghai"];
/// How long teardown waits for killed processes to vanish.
const VANISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What lab to start.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Site names (`a-z`, `0-9`, `_`, `-`), at least one, no duplicates.
    pub sites: Vec<String>,
    /// 1 or 3.
    pub etcd_members: usize,
    /// Round-trip time of every WAN link (half each way).
    pub wan_rtt: Duration,
    /// Where the lab lives; `None` is a fresh temp dir. A given directory is
    /// created if missing; the lab creates `etcd/`, `pg-<site>/` (and
    /// `proxy/`) in it, which must not exist yet.
    pub dir: Option<PathBuf>,
    pub supervision: Supervision,
    pub proxy: ProxyLaunch,
    /// Give each site a skewable clock ([`crate::clock`]): an offset file
    /// `clock-<site>` in the lab's directory (`+0` at start), and the
    /// site's Postgres run under libfaketime reading it; an ensemble on
    /// the lab runs the site's processes the same way. Off by default
    /// (chaos runs turn it on for the `clock-skew` fault); on, it needs
    /// libfaketime (`apt-get install faketime libfaketime`).
    pub clock_skew: bool,
    /// Leave everything the lab wrote on disk when it stops (teardown or
    /// drop): etcd's and each Postgres's directory (data and logs), the
    /// proxy's directory, the clock files, and the lab's directory itself;
    /// an ensemble on the lab keeps its directory too. Processes are
    /// stopped all the same. Off by default; `ezone demo --dir` turns it on.
    pub keep_files: bool,
    /// Every site's Postgres requires this password over TCP (SCRAM), and
    /// every DSN the lab hands out carries it ([`PgOptions::password`]);
    /// `None` (the default): `trust`.
    pub pg_password: Option<String>,
    /// Every site's Postgres takes TCP only over TLS with a client
    /// certificate, and every DSN the lab hands out verifies it
    /// ([`PgOptions::tls`]). On by default; off only for a test that speaks
    /// the wire protocol by hand.
    pub pg_tls: bool,
    /// etcd serves its clients over TLS only and requires a client
    /// certificate (`--client-cert-auth`) signed by the lab's CA;
    /// [`Lab::etcd_options`] says how to reach it. On by default.
    pub etcd_tls: bool,
    /// All on this host's loopback (the default), or each site a host of
    /// its own in a network namespace, reached from the others only across
    /// the WAN proxy ([`crate::netns`]; needs root and iproute2).
    pub network: Network,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            sites: DEFAULT_SITES.iter().map(|s| s.to_string()).collect(),
            etcd_members: 1,
            wan_rtt: DEFAULT_WAN_RTT,
            dir: None,
            supervision: Supervision::Tied,
            proxy: ProxyLaunch::InProcess,
            clock_skew: false,
            keep_files: false,
            pg_password: None,
            pg_tls: true,
            etcd_tls: true,
            network: Network::Loopback,
        }
    }
}

impl LabSpec {
    /// The default spec with these sites.
    pub fn new(sites: &[&str]) -> Self {
        LabSpec {
            sites: sites.iter().map(|s| s.to_string()).collect(),
            ..LabSpec::default()
        }
    }

    /// Refuse specs that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), LabError> {
        if self.sites.is_empty() {
            return Err(LabError::InvalidSpec {
                field: "sites",
                value: "[]".to_string(),
                why: "name at least one site, e.g. beijing,shanghai".to_string(),
            });
        }
        for (i, s) in self.sites.iter().enumerate() {
            let plain = !s.is_empty()
                && s.len() <= 32
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !plain {
                return Err(LabError::InvalidSpec {
                    field: "sites",
                    value: format!("{s:?}"),
                    why: "a site name is 1 to 32 of a-z, 0-9, '_' and '-'".to_string(),
                });
            }
            if self.sites[..i].contains(s) {
                return Err(LabError::InvalidSpec {
                    field: "sites",
                    value: format!("{s:?}"),
                    why: "listed twice".to_string(),
                });
            }
        }
        if self.etcd_members != 1 && self.etcd_members != 3 {
            return Err(LabError::InvalidSpec {
                field: "etcd_members",
                value: self.etcd_members.to_string(),
                why: "use 1 or 3".to_string(),
            });
        }
        if self.supervision == Supervision::Detached && matches!(self.proxy, ProxyLaunch::InProcess)
        {
            return Err(LabError::InvalidSpec {
                field: "proxy",
                value: "in process".to_string(),
                why: "a detached lab outlives this process, so its proxy must be a process of \
                      its own (ProxyLaunch::Command)"
                    .to_string(),
            });
        }
        if self.network == Network::Namespaces && self.supervision == Supervision::Detached {
            return Err(LabError::InvalidSpec {
                field: "network",
                value: "namespaces".to_string(),
                why: "the namespaces are removed with the lab's handle, so a detached lab \
                      cannot use them"
                    .to_string(),
            });
        }
        Ok(())
    }
}

/// A running lab; see the module docs.
#[derive(Debug)]
pub struct Lab {
    sites: Vec<String>,
    wan_rtt: Duration,
    keep_files: bool,
    // Field order is drop order: WAN, Postgres, etcd, the clock files, then
    // the root dir.
    /// A client's TLS for etcd, when [`LabSpec::etcd_tls`].
    etcd_client: Option<ezone_topology::store::EtcdTls>,
    wan: Wan,
    postgres: BTreeMap<String, PgCluster>,
    etcd: EtcdCluster,
    clocks: Clocks,
    root: LabRoot,
    /// Where each part lives on the network; with namespaces, removed last,
    /// once nothing runs in them.
    hosts: Hosts,
}

impl Lab {
    /// Start etcd and every site's Postgres (at once), then the WAN.
    /// On failure, whatever was started is stopped and removed again.
    pub async fn start(spec: LabSpec) -> Result<Lab, LabError> {
        spec.validate()?;
        let began = Instant::now();
        let root = LabRoot::new(spec.dir.as_deref(), spec.keep_files)?;
        let clocks = Clocks::new(spec.clock_skew, &spec.sites, root.path(), spec.keep_files)?;
        let hosts = Hosts::new(spec.network, &spec.sites)?;
        let wan_addr = hosts.wan().addr;
        // Beside the loopback names, the WAN address (where etcd and the
        // proxy in front of each Postgres listen), which clients verify.
        let wan_name = wan_addr.to_string();
        let (etcd_server_tls, etcd_client) = if spec.etcd_tls {
            let certs = LabCerts::generate(&root.path().join("etcd-certs"))?;
            let server = certs.issue_server("etcd", &server_names([wan_name.as_str()]))?;
            let client = certs.issue_client("ezone")?;
            let tls = ezone_topology::store::EtcdTls::new(certs.ca_file())
                .with_identity(&client.cert_file, &client.key_file);
            (
                Some(EtcdServerTls::new(&server, certs.ca_file())),
                Some(tls),
            )
        } else {
            (None, None)
        };
        let etcd = EtcdCluster::start_with(EtcdOptions {
            members: spec.etcd_members,
            dir: Some(root.path().to_path_buf()),
            supervision: spec.supervision,
            keep_files: spec.keep_files,
            tls: etcd_server_tls,
            host: wan_addr,
            ..EtcdOptions::default()
        });
        let pgs = futures::future::try_join_all(spec.sites.iter().map(|site| {
            PgCluster::start_with(PgOptions {
                dir: Some(root.path().to_path_buf()),
                supervision: spec.supervision,
                clock: clocks.sites.get(site).cloned(),
                keep_files: spec.keep_files,
                password: spec.pg_password.clone(),
                tls: spec.pg_tls,
                host: hosts.site(site),
                clients: hosts.clients().to_vec(),
                server_names: vec![wan_name.clone()],
                ..PgOptions::new(site.clone())
            })
        }));
        let (etcd, pgs) = futures::future::try_join(etcd, pgs).await?;
        let postgres: BTreeMap<String, PgCluster> =
            pgs.into_iter().map(|p| (p.name().to_string(), p)).collect();
        let wan = Wan::start(
            &spec.proxy,
            spec.supervision,
            &postgres,
            spec.wan_rtt,
            wan_addr,
            root.path(),
            spec.keep_files,
        )
        .await?;
        tracing::info!(
            sites = ?spec.sites,
            etcd_members = spec.etcd_members,
            dir = %root.path().display(),
            elapsed = ?began.elapsed(),
            "Lab is up."
        );
        Ok(Lab {
            etcd_client,
            sites: spec.sites,
            wan_rtt: spec.wan_rtt,
            keep_files: spec.keep_files,
            wan,
            postgres,
            etcd,
            clocks,
            root,
            hosts,
        })
    }

    /// Where each part lives on the network ([`LabSpec::network`]).
    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// The sites, in the order given.
    pub fn sites(&self) -> &[String] {
        &self.sites
    }

    /// The lab's directory.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// The WAN round trip the links started with.
    pub fn wan_rtt(&self) -> Duration {
        self.wan_rtt
    }

    /// Whether the lab leaves its files on disk when it stops
    /// ([`LabSpec::keep_files`]).
    pub fn keep_files(&self) -> bool {
        self.keep_files
    }

    pub fn etcd(&self) -> &EtcdCluster {
        &self.etcd
    }

    /// How a client reaches the lab's etcd: its endpoints and, with
    /// [`LabSpec::etcd_tls`], the CA and a client certificate.
    pub fn etcd_options(&self) -> ezone_topology::store::EtcdOptions {
        ezone_topology::store::EtcdOptions {
            endpoints: self.etcd.client_urls(),
            tls: self.etcd_client.clone(),
            auth: None,
        }
    }

    /// The `ezone` command-line flags that reach the lab's etcd (TLS
    /// included), for running the CLI against the lab.
    pub fn etcd_cli_args(&self) -> Vec<String> {
        let options = self.etcd_options();
        let mut args = vec!["--etcd".to_string(), options.endpoints.join(",")];
        if let Some(tls) = &options.tls {
            args.push("--etcd-ca".into());
            args.push(tls.ca_file.display().to_string());
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                args.push("--etcd-cert".into());
                args.push(cert.display().to_string());
                args.push("--etcd-key".into());
                args.push(key.display().to_string());
            }
        }
        args
    }

    /// `etcdctl`'s flags for the lab's etcd: the endpoints and, with TLS,
    /// the CA and the client certificate.
    pub fn etcdctl_args(&self) -> Vec<String> {
        let options = self.etcd_options();
        let mut args = vec![format!("--endpoints={}", options.endpoints.join(","))];
        if let Some(tls) = &options.tls {
            args.push(format!("--cacert={}", tls.ca_file.display()));
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                args.push(format!("--cert={}", cert.display()));
                args.push(format!("--key={}", key.display()));
            }
        }
        args
    }

    /// Site `site`'s Postgres.
    pub fn postgres(&self, site: &str) -> Result<&PgCluster, LabError> {
        self.postgres.get(site).ok_or_else(|| LabError::Unknown {
            what: "site",
            name: site.to_string(),
            known: self.sites.join(", "),
        })
    }

    /// Whether the lab was started with clock skew on
    /// ([`LabSpec::clock_skew`]).
    pub fn clock_skew(&self) -> bool {
        !self.clocks.sites.is_empty()
    }

    /// Site `site`'s clock, to skew it; an error naming the fix when the lab
    /// was started without clock skew.
    pub fn clock(&self, site: &str) -> Result<&SiteClock, LabError> {
        if !self.clock_skew() {
            self.postgres(site)?;
            return Err(LabError::ClockSkewOff {
                site: site.to_string(),
            });
        }
        self.clocks
            .sites
            .get(site)
            .ok_or_else(|| LabError::Unknown {
                what: "site",
                name: site.to_string(),
                known: self.sites.join(", "),
            })
    }

    /// Every site's clock, by site name (empty without clock skew).
    pub fn clocks(&self) -> &BTreeMap<String, SiteClock> {
        &self.clocks.sites
    }

    /// Every site's Postgres, by site name.
    pub fn postgres_all(&self) -> &BTreeMap<String, PgCluster> {
        &self.postgres
    }

    /// Where `from_site` dials `pg_site`'s Postgres across the WAN.
    pub fn wan_addr(&self, pg_site: &str, from_site: &str) -> Result<SocketAddr, LabError> {
        let name = link_name(pg_site, from_site);
        let addrs = self.wan.addrs();
        addrs.get(&name).copied().ok_or_else(|| LabError::Unknown {
            what: "WAN link",
            name,
            known: addrs.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// DSN by which `from_site` reaches `pg_site`'s database `db` across
    /// the WAN.
    pub fn wan_dsn(&self, pg_site: &str, from_site: &str, db: &str) -> Result<String, LabError> {
        let pg = self.postgres.get(pg_site);
        Ok(postgres::dsn_with(
            self.wan_addr(pg_site, from_site)?,
            db,
            pg.and_then(|p| p.passfile()),
            pg.and_then(|p| p.client_tls()),
        ))
    }

    /// The in-process proxy's handle for link `name` (`a->b`), to add
    /// latency, partition, heal or reset it. `None` for an unknown name or
    /// when the proxy runs as a process (use [`Lab::admin_client`] then).
    pub fn link(&self, name: &str) -> Option<LinkHandle> {
        match &self.wan {
            Wan::InProcess { links, .. } => links.get(name).cloned(),
            Wan::External { .. } => None,
        }
    }

    /// The in-process fault proxy, if it runs in process.
    pub fn proxy(&self) -> Option<&FaultProxy> {
        match &self.wan {
            Wan::InProcess { proxy, .. } => Some(proxy),
            Wan::External { .. } => None,
        }
    }

    /// The fault proxy's admin API address.
    pub fn proxy_admin(&self) -> SocketAddr {
        self.wan.admin()
    }

    /// A client of the fault proxy's admin API (works in both modes).
    pub fn admin_client(&self) -> AdminClient {
        AdminClient::new(self.wan.admin())
    }

    /// The lab's addresses, as `ezone lab up` prints them.
    pub fn info(&self) -> LabInfo {
        LabInfo {
            etcd: self.etcd.client_urls(),
            sites: self
                .postgres
                .iter()
                .map(|(name, pg)| {
                    let site = SiteInfo {
                        postgres: pg.dsn(pg.database()),
                    };
                    (name.clone(), site)
                })
                .collect(),
            wan: self.wan.addrs(),
            proxy_admin: self.wan.admin(),
        }
    }

    /// Pids of the lab's own processes (etcd members, postmasters, the proxy
    /// process), not counting Postgres backends.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.etcd.members().iter().map(|m| m.pid()).collect();
        pids.extend(self.postgres.values().map(PgCluster::pid));
        pids.extend(self.wan.process().map(|p| p.pid()));
        pids
    }

    /// What `lab.json` records for this lab (processes stay owned by this
    /// handle; see [`Lab::disown`]). With [`LabSpec::keep_files`] it lists
    /// no entries to remove: `ezone lab down` then stops the processes and
    /// leaves every file.
    pub fn state(&self) -> LabState {
        let mut processes = Vec::new();
        if let Some(p) = self.wan.process() {
            processes.push(LabProcess {
                role: Role::Proxy,
                site: None,
                record: p.record(),
            });
        }
        for (site, pg) in &self.postgres {
            processes.push(LabProcess {
                role: Role::Postgres,
                site: Some(site.clone()),
                record: pg.record(),
            });
        }
        for record in self.etcd.records() {
            processes.push(LabProcess {
                role: Role::Etcd,
                site: None,
                record,
            });
        }
        let (created_dir, entries) = if self.keep_files {
            (false, Vec::new())
        } else {
            (self.root.created(), self.entries())
        };
        LabState::new(
            self.root.path().to_path_buf(),
            created_dir,
            entries,
            processes,
            self.info(),
            self.keep_files,
        )
    }

    /// Names the lab created directly in its directory.
    fn entries(&self) -> Vec<String> {
        let mut dirs: Vec<&Path> = vec![self.etcd.dir()];
        dirs.extend(self.postgres.values().map(PgCluster::dir));
        if let Some(p) = self.wan.process() {
            if let Some(d) = p.log_path().parent() {
                dirs.push(d);
            }
        }
        let mut names: Vec<String> = dirs
            .iter()
            .filter_map(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.extend(self.clocks.sites.keys().map(|s| clock::offset_file_name(s)));
        names
    }

    /// Let every process run on after this handle is gone (`ezone lab up`),
    /// keep the directory, and return what to record in `lab.json`.
    pub fn disown(self) -> LabState {
        let state = self.state();
        let Lab {
            wan,
            postgres,
            etcd,
            mut clocks,
            root,
            ..
        } = self;
        clocks.keep = true;
        let _ = wan.disown();
        for pg in postgres.into_values() {
            let _ = pg.disown();
        }
        let _ = etcd.disown();
        root.keep();
        state
    }

    /// Stop everything and remove the lab's directory, then check that every
    /// process (Postgres backends included) is gone. Dropping the lab does
    /// the same without reporting.
    pub async fn teardown(self) -> Result<(), LabError> {
        let mut watched = self.pids();
        for pg in self.postgres.values() {
            watched.extend(pg.process().descendants());
        }
        let Lab {
            wan,
            postgres,
            etcd,
            clocks,
            root,
            ..
        } = self;
        let mut first_error: Option<LabError> = None;
        let mut note = |r: Result<(), LabError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "Lab teardown step failed.");
                first_error.get_or_insert(e);
            }
        };
        note(wan.shutdown().await);
        for pg in postgres.into_values() {
            note(pg.teardown());
        }
        note(etcd.teardown());
        note(wait_vanished(&watched).await);
        drop(clocks);
        note(root.remove());
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// Wait until none of `pids` is alive.
async fn wait_vanished(pids: &[u32]) -> Result<(), LabError> {
    let deadline = Instant::now() + VANISH_TIMEOUT;
    loop {
        let Some(pid) = pids.iter().copied().find(|p| process::pid_alive(*p, None)) else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(LabError::StillRunning {
                name: "lab process".to_string(),
                pid,
                within: VANISH_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sites' clock offset files (with clock skew on), removed on drop
/// unless kept (a disowned lab's; `ezone lab down` removes them).
#[derive(Debug, Default)]
struct Clocks {
    sites: BTreeMap<String, SiteClock>,
    keep: bool,
}

impl Clocks {
    /// With `on`, find libfaketime and write `+0` to each site's file;
    /// with `keep`, the files stay when the lab stops.
    fn new(on: bool, sites: &[String], dir: &Path, keep: bool) -> Result<Clocks, LabError> {
        let mut clocks = Clocks::default();
        clocks.keep = keep;
        if !on {
            return Ok(clocks);
        }
        let lib = clock::find_libfaketime()?;
        for site in sites {
            // Inserted one by one: a failure drops (removes) those written.
            let c = SiteClock::create(dir, site, &lib)?;
            clocks.sites.insert(site.clone(), c);
        }
        tracing::info!(lib = %lib.display(), "Clock skew on: each site's processes run under libfaketime.");
        Ok(clocks)
    }
}

impl Drop for Clocks {
    fn drop(&mut self) {
        if !self.keep {
            for c in self.sites.values() {
                c.remove_file();
            }
        }
    }
}

/// The lab's own directory: a temp dir, or a given one (created if missing,
/// and then removed again when empty); with `keep`, left on disk.
#[derive(Debug)]
struct LabRoot {
    path: PathBuf,
    temp: Option<ScratchDir>,
    created: bool,
    keep: bool,
}

impl LabRoot {
    fn new(dir: Option<&Path>, keep: bool) -> Result<Self, LabError> {
        match dir {
            None => {
                let temp = ScratchDir::temp("lab")?.keep_files(keep);
                Ok(LabRoot {
                    path: temp.path().to_path_buf(),
                    temp: Some(temp),
                    created: true,
                    keep,
                })
            }
            Some(dir) => {
                let path = std::path::absolute(dir)
                    .map_err(|e| LabError::io("resolve directory", dir, e))?;
                let created = !path.exists();
                std::fs::create_dir_all(&path)
                    .map_err(|e| LabError::io("create directory", &path, e))?;
                Ok(LabRoot {
                    path,
                    temp: None,
                    created,
                    keep,
                })
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn created(&self) -> bool {
        self.created
    }

    fn keep(mut self) {
        self.keep = true;
        if let Some(t) = self.temp.take() {
            t.keep();
        }
    }

    /// Remove the directory now (a given one only if we created it and it
    /// is empty by now), reporting failures; a kept one is left.
    fn remove(mut self) -> Result<(), LabError> {
        if self.keep {
            return Ok(());
        }
        self.keep = true; // drop has nothing left to do
        match self.temp.take() {
            Some(t) => t.remove(),
            None if self.created => match std::fs::remove_dir(&self.path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other.map_err(|e| LabError::io("remove lab directory", &self.path, e)),
            },
            None => Ok(()),
        }
    }
}

impl Drop for LabRoot {
    fn drop(&mut self) {
        // A temp dir removes itself when `temp` drops.
        if !self.keep && self.temp.is_none() && self.created {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}
