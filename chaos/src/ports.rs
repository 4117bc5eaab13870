//! Free loopback ports for lab processes (etcd, Postgres, the WAN proxy).
//!
//! A port is found by binding `127.0.0.1:0`, reading the port the kernel
//! picked and closing the socket again, so the child process can bind it.
//! Ports handed out are remembered for the life of this process and never
//! handed out twice (a restarted member reuses *its* ports, and two lab parts
//! started at once never get the same one).
//!
//! **The small race:** between closing our probe socket and the child's own
//! bind, another process on the machine may take the port (the kernel hands
//! out ephemeral ports to outgoing connections too). The window is a few
//! milliseconds and the ports are spread over the ephemeral range, so it is
//! rare; the lab's start-up retries once on fresh ports when a child fails
//! with "address already in use" ([`crate::error::LabError::is_port_clash`]).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Mutex;

use crate::error::LabError;

/// Ports already handed out by this process.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// How many kernel picks to try before giving up on finding an unused one.
const MAX_ATTEMPTS: usize = 64;

/// A free TCP port on 127.0.0.1 that this process has not handed out before.
pub fn free_port() -> Result<u16, LabError> {
    let mut last = String::from("every port the kernel offered was already handed out");
    for _ in 0..MAX_ATTEMPTS {
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
            Ok(l) => l,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let port = match listener.local_addr() {
            Ok(a) => a.port(),
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if handed.insert(port) {
            return Ok(port);
        }
    }
    Err(LabError::NoFreePort { reason: last })
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> Result<Vec<u16>, LabError> {
    (0..n).map(|_| free_port()).collect()
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> Result<SocketAddr, LabError> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports = free_ports(200).expect("free ports");
        let unique: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| *p != 0));
    }

    #[test]
    fn a_handed_out_port_can_be_bound() {
        let port = free_port().expect("free port");
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind the handed-out port");
    }
}
