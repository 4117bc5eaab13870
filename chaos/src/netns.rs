//! Where the lab's parts live on the network: all on this host's loopback
//! (the default), or each site as a host of its own, in a Linux network
//! namespace with its own address.
//!
//! ```text
//!   this namespace ("the WAN"): etcd, the fault proxy, the tests' clients
//!     bridge ezw<pid>  10.N.0.1/32   (no ports: it only holds the address)
//!     veth ezv<pid>x1  10.N.1.1/24 ─── eth0 10.N.1.2/24  namespace ezone-<pid>-beijing
//!     veth ezv<pid>x2  10.N.2.1/24 ─── eth0 10.N.2.2/24  namespace ezone-<pid>-shanghai
//! ```
//!
//! Each site's namespace has its own loopback (up, as on a real host, and
//! so useless for reaching any other site), one veth to this namespace and a
//! default route through it. No forwarding is switched on: a site reaches
//! only what lives in this namespace (etcd, the proxy's links, the address
//! 10.N.0.1 they listen on), so everything between sites crosses the fault
//! proxy, as it crosses the WAN in a deployment. This namespace reaches
//! every site directly, the way a test (or an operator's CLI) reaches each
//! host's address.
//!
//! A site's processes are started inside its namespace (the spawner enters
//! it before exec: [`crate::process::ProcessSpec::netns`]) and listen on the
//! site's address. The namespaces, the veths and the bridge are removed
//! when the [`Namespaces`] are dropped; ones left by a process that died
//! without dropping them (kill -9 of a test) are swept at the next start.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip` from iproute2.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::LabError;

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Every namespace this module makes is named `ezone-<pid>-<site>`.
const NS_PREFIX: &str = "ezone-";
/// The bridge holding the WAN address: `ezw<pid>`.
const BRIDGE_PREFIX: &str = "ezw";
/// The second octets tried for a lab's `10.N.0.0/16`.
const OCTETS: std::ops::RangeInclusive<u8> = 200..=250;
/// The most sites a namespaced lab holds (one /24 each).
const MAX_SITES: usize = 99;

/// How the lab lays out its network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// Every part on 127.0.0.1 in this namespace.
    #[default]
    Loopback,
    /// Each site in a network namespace of its own (see the module docs).
    Namespaces,
}

/// Where a lab process runs and listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The address its servers listen on and are reached at.
    pub addr: IpAddr,
    /// The network namespace it runs in (`/run/netns/NAME`); `None`: this
    /// process's own.
    pub netns: Option<PathBuf>,
}

impl Host {
    /// 127.0.0.1 in this namespace.
    pub fn loopback() -> Self {
        Host {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
        }
    }
}

/// The lab's network plan: where the WAN side (etcd, the fault proxy) and
/// each site live, and the namespaces made for it (if any).
#[derive(Debug)]
pub struct Hosts {
    wan: Host,
    sites: BTreeMap<String, Host>,
    clients: Vec<String>,
    // Dropped last: the namespaces outlive nothing that runs in them only
    // because the lab drops its processes first.
    namespaces: Option<Namespaces>,
}

impl Hosts {
    /// Lay out `sites` on `network`, making the namespaces if asked.
    pub fn new(network: Network, sites: &[String]) -> Result<Hosts, LabError> {
        match network {
            Network::Loopback => Ok(Hosts {
                wan: Host::loopback(),
                sites: sites
                    .iter()
                    .map(|s| (s.clone(), Host::loopback()))
                    .collect(),
                clients: vec!["127.0.0.1/32".to_string(), "::1/128".to_string()],
                namespaces: None,
            }),
            Network::Namespaces => {
                let ns = Namespaces::create(sites)?;
                let wan = Host {
                    addr: ns.wan_addr(),
                    netns: None,
                };
                let sites = ns
                    .sites
                    .iter()
                    .map(|s| {
                        let host = Host {
                            addr: s.addr,
                            netns: Some(s.path()),
                        };
                        (s.site.clone(), host)
                    })
                    .collect();
                Ok(Hosts {
                    wan,
                    sites,
                    clients: vec![
                        "127.0.0.1/32".to_string(),
                        "::1/128".to_string(),
                        ns.subnet(),
                    ],
                    namespaces: Some(ns),
                })
            }
        }
    }

    /// Where etcd and the fault proxy listen.
    pub fn wan(&self) -> &Host {
        &self.wan
    }

    /// Site `site`'s host (loopback for a site not laid out).
    pub fn site(&self, site: &str) -> Host {
        self.sites.get(site).cloned().unwrap_or_else(Host::loopback)
    }

    /// The networks a server's clients come from, as CIDR (for
    /// `pg_hba.conf`).
    pub fn clients(&self) -> &[String] {
        &self.clients
    }

    /// Whether the sites run in namespaces of their own.
    pub fn is_namespaced(&self) -> bool {
        self.namespaces.is_some()
    }

    /// The names of the namespaces, by site (empty on loopback).
    pub fn namespace_names(&self) -> BTreeMap<String, String> {
        self.namespaces
            .iter()
            .flat_map(|n| n.sites.iter())
            .map(|s| (s.site.clone(), s.name.clone()))
            .collect()
    }
}

/// One site's namespace.
#[derive(Debug)]
struct SiteNs {
    site: String,
    /// `ezone-<pid>-<site>`.
    name: String,
    addr: IpAddr,
}

impl SiteNs {
    fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }
}

/// The namespaces, veths and bridge of one lab; removed on drop.
#[derive(Debug)]
pub struct Namespaces {
    ip: PathBuf,
    octet: u8,
    bridge: String,
    sites: Vec<SiteNs>,
}

impl Namespaces {
    /// Make a namespace per site, wired to this one (see the module docs).
    /// On failure whatever was made is removed again.
    pub fn create(sites: &[String]) -> Result<Namespaces, LabError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::InvalidSpec {
                field: "network",
                value: "namespaces".to_string(),
                why: "network namespaces need root (CAP_NET_ADMIN); run as root, or use the \
                      loopback network"
                    .to_string(),
            });
        }
        if sites.len() > MAX_SITES {
            return Err(LabError::InvalidSpec {
                field: "sites",
                value: sites.len().to_string(),
                why: format!("a namespaced lab holds at most {MAX_SITES} sites"),
            });
        }
        let ip = find_ip()?;
        sweep_stale(&ip);
        let octet = free_octet(&ip)?;
        let pid = std::process::id();
        let mut ns = Namespaces {
            ip,
            octet,
            bridge: format!("{BRIDGE_PREFIX}{pid}"),
            sites: Vec::new(),
        };
        // On an early return `ns` drops and removes what was made.
        let wan = format!("{}/32", ns.wan_addr());
        ns.run(&["link", "add", &ns.bridge.clone(), "type", "bridge"])?;
        ns.run(&["addr", "add", &wan, "dev", &ns.bridge.clone()])?;
        ns.run(&["link", "set", &ns.bridge.clone(), "up"])?;
        for (i, site) in sites.iter().enumerate() {
            let n = i + 1;
            let name = format!("{NS_PREFIX}{pid}-{site}");
            let outer = format!("ezv{pid}x{n}");
            let inner = format!("ezp{pid}x{n}");
            let outer_addr = format!("10.{octet}.{n}.1");
            let inner_addr = Ipv4Addr::new(10, octet, n as u8, 2);
            ns.run(&["netns", "add", &name])?;
            ns.sites.push(SiteNs {
                site: site.clone(),
                name: name.clone(),
                addr: IpAddr::V4(inner_addr),
            });
            ns.run(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ns.run(&["link", "set", &inner, "netns", &name])?;
            ns.run(&["addr", "add", &format!("{outer_addr}/24"), "dev", &outer])?;
            ns.run(&["link", "set", &outer, "up"])?;
            // Inside the site's namespace (`ip -n NAME ...`).
            let cidr = format!("{inner_addr}/24");
            ns.run(&["-n", &name, "link", "set", &inner, "name", "eth0"])?;
            ns.run(&["-n", &name, "addr", "add", &cidr, "dev", "eth0"])?;
            ns.run(&["-n", &name, "link", "set", "eth0", "up"])?;
            ns.run(&["-n", &name, "link", "set", "lo", "up"])?;
            ns.run(&["-n", &name, "route", "add", "default", "via", &outer_addr])?;
        }
        tracing::info!(
            bridge = %ns.bridge,
            wan = %ns.wan_addr(),
            sites = ?ns.sites.iter().map(|s| (&s.site, s.addr)).collect::<Vec<_>>(),
            "Network namespaces are up: each site is a host of its own."
        );
        Ok(ns)
    }

    /// `10.N.0.1`: the address on the bridge in this namespace.
    fn wan_addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.octet, 0, 1))
    }

    /// `10.N.0.0/16`: every address of the lab.
    fn subnet(&self) -> String {
        format!("10.{}.0.0/16", self.octet)
    }

    fn run(&self, args: &[&str]) -> Result<(), LabError> {
        run_ip(&self.ip, args)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the
        // other end. A namespace some process still runs in lives on
        // (unnamed) until that process exits.
        for s in &self.sites {
            if let Err(e) = run_ip(&self.ip, &["netns", "delete", &s.name]) {
                tracing::warn!(namespace = %s.name, error = %e, "Cannot delete a lab network namespace.");
            }
        }
        if let Err(e) = run_ip(&self.ip, &["link", "delete", &self.bridge]) {
            tracing::warn!(bridge = %self.bridge, error = %e, "Cannot delete the lab's bridge.");
        }
    }
}

/// Run `ip ARGS`; an error with what it said.
fn run_ip(ip: &Path, args: &[&str]) -> Result<(), LabError> {
    let out = Command::new(ip)
        .args(args)
        .output()
        .map_err(|e| LabError::io("run", ip, e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(LabError::Network {
        command: format!("ip {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// `ip ARGS`'s output, or empty.
fn ip_output(ip: &Path, args: &[&str]) -> String {
    Command::new(ip)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The `ip` binary of iproute2 (not looked up on `PATH`, which often lacks
/// the sbin directories for a non-login shell).
pub fn find_ip() -> Result<PathBuf, LabError> {
    const PLACES: &[&str] = &["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"];
    PLACES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| LabError::InvalidSpec {
            field: "network",
            value: "namespaces".to_string(),
            why: format!(
                "`ip` not found (looked in {}); install it with `apt-get install iproute2`",
                PLACES.join(", ")
            ),
        })
}

/// A second octet whose `10.N.0.0/16` no interface here uses.
fn free_octet(ip: &Path) -> Result<u8, LabError> {
    let used = ip_output(ip, &["-o", "-4", "addr", "show"]);
    let start = (std::process::id() % (*OCTETS.end() - *OCTETS.start() + 1) as u32) as u8;
    let span = *OCTETS.end() - *OCTETS.start() + 1;
    (0..span)
        .map(|k| *OCTETS.start() + (start + k) % span)
        .find(|n| !used.contains(&format!(" 10.{n}.")))
        .ok_or_else(|| LabError::InvalidSpec {
            field: "network",
            value: "namespaces".to_string(),
            why: format!(
                "every 10.N.0.0/16 with N in {}..={} is in use here; remove stale lab \
                 interfaces (`ip -o addr show`)",
                OCTETS.start(),
                OCTETS.end()
            ),
        })
}

/// The pid in a name `<prefix><pid>[-...]` made by this module.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Remove namespaces and bridges left by labs whose process is gone.
fn sweep_stale(ip: &Path) {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    for line in ip_output(ip, &["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = owner_pid(name, NS_PREFIX).filter(|p| !alive(*p)) {
            tracing::info!(
                namespace = name,
                pid,
                "Removing a stale lab network namespace."
            );
            let _ = run_ip(ip, &["netns", "delete", name]);
        }
    }
    for line in ip_output(ip, &["-o", "link", "show", "type", "bridge"]).lines() {
        // "12: ezw1234: <...>"
        let name = line.split(": ").nth(1).unwrap_or("");
        let name = name.split('@').next().unwrap_or(name);
        if let Some(pid) = owner_pid(name, BRIDGE_PREFIX).filter(|p| !alive(*p)) {
            tracing::info!(bridge = name, pid, "Removing a stale lab bridge.");
            let _ = run_ip(ip, &["link", "delete", name]);
        }
    }
}

/// The inode of a network namespace (`/proc/PID/ns/net` or
/// `/run/netns/NAME`): two processes share a network namespace exactly when
/// these are equal.
pub fn netns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_our_names() {
        assert_eq!(owner_pid("ezone-1234-beijing", NS_PREFIX), Some(1234));
        assert_eq!(owner_pid("ezw77", BRIDGE_PREFIX), Some(77));
        assert_eq!(owner_pid("docker0", BRIDGE_PREFIX), None);
        assert_eq!(owner_pid("ezone-x", NS_PREFIX), None);
    }

    #[test]
    fn loopback_hosts_are_all_127_0_0_1_here() {
        let sites = vec!["a".to_string(), "b".to_string()];
        let hosts = Hosts::new(Network::Loopback, &sites).expect("loopback");
        assert_eq!(hosts.wan(), &Host::loopback());
        assert_eq!(hosts.site("a"), Host::loopback());
        assert!(!hosts.is_namespaced());
        assert!(hosts.clients().contains(&"127.0.0.1/32".to_string()));
    }
}
