//! Bringing the ensemble up, phase by phase (the steps in the module docs):
//! install the schema, start each site's front (order service, router, the
//! WAN link in front of the router), then, once the topology is written,
//! the replicators. Each process starts on port 0; its config is rewritten
//! with the ports it reports, so a restart binds the same ones.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::config::{self, OrdersToml, PeerTls, PeerTrust, ReplicatorToml, RouterToml, Source};
use super::error::EnsembleError;
use super::procs::{self, Launch, Service};
use super::topology::{self, RouterLink, SiteAddrs, TOPOLOGY_PREFIX};
use super::EnsembleSpec;
use crate::certs::LabCerts;
use crate::clock::SiteClock;
use crate::lab::Lab;
use crate::netns::Host;

/// How long `ezone orders install` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The domain of the routers' certificate names (`<site>.ezone.internal`,
/// the router's default `peer_tls.domain`).
const PEER_DOMAIN: &str = "ezone.internal";

/// `ezone orders serve`'s ready line.
#[derive(Debug, Deserialize)]
pub(super) struct OrdersReady {
    pub listen: SocketAddr,
}

/// `ezone router`'s ready line.
#[derive(Debug, Deserialize)]
pub(super) struct RouterReady {
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    #[serde(default)]
    pub peer: Option<SocketAddr>,
}

/// `ezone replicator`'s ready line.
#[derive(Debug, Deserialize)]
pub(super) struct ReplicatorReady {
    pub admin: Option<String>,
}

/// Where and how the ensemble's processes run: one directory per site.
pub(super) struct Layout<'a> {
    spec: &'a EnsembleSpec,
    dirs: BTreeMap<String, PathBuf>,
    topology: config::Topology,
    /// Each site's clock, when the lab skews clocks (else empty).
    clocks: BTreeMap<String, SiteClock>,
    /// Each site's host: its address and network namespace.
    hosts: BTreeMap<String, Host>,
}

impl<'a> Layout<'a> {
    /// Create `root/<site>` for every site of `lab`.
    pub(super) fn new(
        spec: &'a EnsembleSpec,
        root: &Path,
        lab: &Lab,
    ) -> Result<Layout<'a>, EnsembleError> {
        let mut dirs = BTreeMap::new();
        for site in lab.sites() {
            let d = root.join(site);
            std::fs::create_dir_all(&d).map_err(|source| EnsembleError::Io {
                path: d.clone(),
                source,
            })?;
            dirs.insert(site.clone(), d);
        }
        Ok(Layout {
            spec,
            dirs,
            topology: config::Topology {
                etcd: lab.etcd().client_urls(),
                prefix: TOPOLOGY_PREFIX.to_string(),
                etcd_tls: lab.etcd_options().tls,
            },
            clocks: lab.clocks().clone(),
            hosts: lab
                .sites()
                .iter()
                .map(|s| (s.clone(), lab.hosts().site(s)))
                .collect(),
        })
    }

    fn dir(&self, site: &str) -> &Path {
        &self.dirs[site]
    }

    /// The address `site`'s processes listen on.
    fn addr(&self, site: &str) -> IpAddr {
        self.hosts
            .get(site)
            .map_or_else(|| Host::loopback().addr, |h| h.addr)
    }

    /// How to run `command` at `site`, its files named `<stem>.*`.
    fn launch(&self, site: &str, stem: &'a str, command: &'a [&'a str]) -> Launch<'_> {
        Launch {
            name: format!("{stem} {site}"),
            bin: &self.spec.ezone_bin,
            command,
            dir: self.dir(site),
            stem,
            log_filter: &self.spec.log_filter,
            supervision: self.spec.supervision,
            ready_timeout: self.spec.ready_timeout,
            clock: self.clocks.get(site),
            netns: self.hosts.get(site).and_then(|h| h.netns.clone()),
        }
    }
}

/// `site`'s own Postgres DSN (direct, on its LAN).
pub(super) fn site_dsn(lab: &Lab, site: &str) -> Result<String, EnsembleError> {
    let pg = lab.postgres(site)?;
    Ok(pg.dsn(pg.database()))
}

/// Step 1: `ezone orders install` at every site, at once.
pub(super) async fn install(lab: &Lab, layout: &Layout<'_>) -> Result<(), EnsembleError> {
    let installs = lab.sites().iter().map(|site| async move {
        let dsn = site_dsn(lab, site)?;
        let args = ["orders", "install", "--dsn", &dsn].map(String::from);
        procs::run_once(
            format!("orders install {site}"),
            &layout.spec.ezone_bin,
            &args,
            layout.dir(site),
            "install.log",
            layout.spec.supervision,
            INSTALL_TIMEOUT,
        )
        .await
    });
    futures::future::try_join_all(installs).await?;
    if layout.spec.bulk {
        for site in lab.sites() {
            let pg = lab.postgres(site)?;
            let db = pg.database();
            pg.psql_db(db, super::BULK_TABLE_SQL).await?;
            // One statement a call: ALTER SYSTEM refuses a transaction block.
            pg.psql_db(
                db,
                &format!(
                    "ALTER SYSTEM SET logical_decoding_work_mem = '{}'",
                    super::BULK_STREAM_AFTER
                ),
            )
            .await?;
            pg.psql_db(db, "SELECT pg_reload_conf()").await?;
        }
    }
    Ok(())
}

/// A site's order service and router, up, and the WAN link in front of the
/// router.
#[derive(Debug)]
pub(super) struct Front {
    pub orders: Service,
    pub orders_addr: SocketAddr,
    pub router: Service,
    pub router_http: SocketAddr,
    pub router_admin: SocketAddr,
    pub router_link: RouterLink,
}

/// How the ensemble's routers trust each other: certificates from one CA,
/// or one shared secret.
enum Trust {
    Ca(Box<LabCerts>),
    Secret(String),
}

/// Steps 2 and 3: every site's front. All processes are spawned first,
/// then their ready lines read.
pub(super) async fn fronts(
    lab: &Lab,
    layout: &Layout<'_>,
) -> Result<BTreeMap<String, Front>, EnsembleError> {
    let mut spawned = Vec::new();
    // Peer TLS: one CA for the ensemble's routers, a certificate per site
    // naming it (the router's rule: `<site>.ezone.internal`); else the
    // routers' shared secret: a client cannot pose as one of them.
    let router_ca = if layout.spec.peer_tls {
        let dir = layout
            .dir(&lab.sites()[0])
            .parent()
            .unwrap_or(Path::new("."))
            .join("router-certs");
        Trust::Ca(Box::new(LabCerts::generate(&dir)?))
    } else {
        use rand::Rng;
        Trust::Secret(
            rand::thread_rng()
                .sample_iter(&rand::distributions::Alphanumeric)
                .take(32)
                .map(char::from)
                .collect::<String>(),
        )
    };
    for site in lab.sites() {
        let l = layout.launch(site, "orders", &["orders", "serve"]);
        let orders_cfg = OrdersToml::new(
            site,
            layout.addr(site),
            site_dsn(lab, site)?,
            layout.spec.pool_size,
        );
        config::write(&l.config_path(), &orders_cfg)?;
        let orders = Service::spawn(&l)?;
        let l = layout.launch(site, "router", &["router"]);
        let trust = match &router_ca {
            Trust::Ca(ca) => {
                let cert = ca.issue_peer(site, PEER_DOMAIN)?;
                PeerTrust::Tls(PeerTls {
                    cert_file: cert.cert_file,
                    key_file: cert.key_file,
                    ca_file: ca.ca_file().to_path_buf(),
                })
            }
            Trust::Secret(secret) => PeerTrust::Secret(secret.clone()),
        };
        let router_cfg = RouterToml::new(site, layout.addr(site), layout.topology.clone(), &trust);
        config::write(&l.config_path(), &router_cfg)?;
        let router = Service::spawn(&l)?;
        spawned.push((site, orders, orders_cfg, router, router_cfg));
    }
    let mut fronts = BTreeMap::new();
    for (site, orders, mut orders_cfg, router, mut router_cfg) in spawned {
        let ready: OrdersReady = orders.ready().await?;
        orders_cfg.listen = ready.listen;
        config::write(orders.config_path(), &orders_cfg)?;

        let ready: RouterReady = router.ready().await?;
        let (Some(http), Some(admin)) = (ready.http, ready.admin) else {
            return Err(router.error(format!(
                "its ready line lacks the http or admin address: {ready:?}"
            )));
        };
        router_cfg.listen.http = http;
        router_cfg.admin.listen = admin;
        // Other sites' routers dial the peer listener when there is one.
        let for_peers = match (router_cfg.listen.peer, ready.peer) {
            (None, _) => http,
            (Some(_), Some(peer)) => {
                router_cfg.listen.peer = Some(peer);
                peer
            }
            (Some(_), None) => {
                return Err(
                    router.error(format!("its ready line lacks the peer address: {ready:?}"))
                )
            }
        };
        config::write(router.config_path(), &router_cfg)?;

        let router_link = topology::add_router_link(lab, site, for_peers).await?;
        fronts.insert(
            site.clone(),
            Front {
                orders,
                orders_addr: orders_cfg.listen,
                router,
                router_http: http,
                router_admin: admin,
                router_link,
            },
        );
    }
    Ok(fronts)
}

/// What the topology says about each site, given its front.
pub(super) fn site_addrs(
    lab: &Lab,
    fronts: &BTreeMap<String, Front>,
) -> Result<BTreeMap<String, SiteAddrs>, EnsembleError> {
    fronts
        .iter()
        .map(|(site, f)| {
            let addrs = SiteAddrs {
                router: f.router_link.listen,
                upstreams: vec![f.orders_addr],
                postgres: site_dsn(lab, site)?,
            };
            Ok((site.clone(), addrs))
        })
        .collect()
}

/// Step 5 (after the topology is written): every site's replicator, with
/// every other site's Postgres read across the WAN; each with its admin
/// address.
pub(super) async fn replicators(
    lab: &Lab,
    layout: &Layout<'_>,
) -> Result<BTreeMap<String, (Service, SocketAddr)>, EnsembleError> {
    let mut spawned = Vec::new();
    for site in lab.sites() {
        let mut sources = BTreeMap::new();
        for other in lab.sites().iter().filter(|o| *o != site) {
            let db = lab.postgres(other)?.database().to_string();
            let dsn = lab.wan_dsn(other, site, &db)?;
            sources.insert(other.clone(), Source { dsn });
        }
        let l = layout.launch(site, "replicator", &["replicator"]);
        let mut topology = layout.topology.clone();
        if layout.spec.replicator_etcd_links {
            topology.etcd = super::topology::add_etcd_links(lab, site).await?;
        }
        let mut cfg = ReplicatorToml::new(site, layout.addr(site), topology, sources);
        if layout.spec.bulk {
            cfg.tables.push(super::BULK_TABLE.to_string());
            cfg.streaming = true;
        }
        cfg.apply_workers = layout.spec.apply_workers.clone();
        config::write(&l.config_path(), &cfg)?;
        spawned.push((site, Service::spawn(&l)?, cfg));
    }
    let mut out = BTreeMap::new();
    for (site, svc, mut cfg) in spawned {
        let ready: ReplicatorReady = svc.ready().await?;
        let admin: SocketAddr = match ready.admin.as_deref().map(str::parse) {
            Some(Ok(a)) => a,
            other => {
                return Err(svc.error(format!("its ready line has no admin address: {other:?}")))
            }
        };
        cfg.admin.listen = admin;
        config::write(svc.config_path(), &cfg)?;
        out.insert(site.clone(), (svc, admin));
    }
    Ok(out)
}
