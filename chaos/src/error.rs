//! The lab's error type: every failure of a lab part (a port, a process,
//! etcd, Postgres, the WAN proxy, the state file) names the thing, the value
//! and the fix, and carries the tail of the relevant log when there is one,
//! so a failed test or `ezone lab up` says why without a second look.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// An error from the lab or one of its parts.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A file-system or socket operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// No free loopback port could be found.
    #[error("cannot find a free port on 127.0.0.1: {reason}; free some ports or raise the ephemeral range (sysctl net.ipv4.ip_local_port_range)")]
    NoFreePort { reason: String },

    /// A program could not be started at all.
    #[error("cannot start {name} ({}): {source}; {hint}", program.display())]
    Spawn {
        name: String,
        program: PathBuf,
        hint: String,
        #[source]
        source: io::Error,
    },

    /// A program ran to completion but failed (initdb, psql, ...).
    #[error("{name} failed ({status}); see its log at {}:\n{tail}", log.display())]
    Failed {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    /// A process exited while it was expected to come up.
    #[error("{name} exited during startup ({status}); see its log at {}:\n{tail}", log.display())]
    Exited {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    /// A process did not become ready before its deadline.
    #[error("{name} did not become ready within {within:?} ({last}); see its log at {}:\n{tail}", log.display())]
    NotReady {
        name: String,
        within: Duration,
        last: String,
        log: PathBuf,
        tail: String,
    },

    /// A process did not exit before its deadline, even after SIGKILL.
    #[error("{name} (pid {pid}) is still running {within:?} after SIGKILL; it may be stuck in the kernel (state D): check `cat /proc/{pid}/stack`")]
    StillRunning {
        name: String,
        pid: u32,
        within: Duration,
    },

    /// An operation needs a running process and this one is not running.
    #[error("cannot {op} {name} (pid {pid}): it is not running ({status}); restart it first")]
    NotRunning {
        op: &'static str,
        name: String,
        pid: u32,
        status: String,
    },

    /// A signal could not be delivered.
    #[error("cannot send {signal} to {name} (pid {pid}): {source}")]
    Signal {
        name: String,
        pid: u32,
        signal: &'static str,
        #[source]
        source: nix::errno::Errno,
    },

    /// The OS user a process should run as does not exist.
    #[error("OS user {user:?} not found ({reason}); install postgresql-15 (it creates the user) or run the lab as a non-root user")]
    NoSuchUser { user: String, reason: String },

    /// A directory the `postgres` user must reach is closed to it.
    #[error("the {user:?} OS user cannot reach {} ({reason}); use a directory whose parents are all world-searchable (chmod o+x), for example one under /tmp", path.display())]
    DirNotReachable {
        user: String,
        path: PathBuf,
        reason: String,
    },

    /// The Postgres 15 server binaries are not installed.
    #[error("Postgres 15 server binaries not found (looked for initdb in: {tried}); install them with `apt-get install postgresql-15`, or set EZONE_PG_BIN to the directory holding initdb and postgres")]
    PgNotFound { tried: String },

    /// The etcd server binary is not installed.
    #[error("etcd not found (looked for: {tried}); install it with `apt-get install etcd-server`, or set EZONE_ETCD_BIN to the etcd binary")]
    EtcdNotFound { tried: String },

    /// libfaketime is not installed (a lab with clock skew on needs it).
    #[error("libfaketime not found (looked for: {tried}); install it with `apt-get install faketime libfaketime`, or set EZONE_LIBFAKETIME to libfaketimeMT.so.1")]
    FaketimeNotFound { tried: String },

    /// Clock skew asked of a lab started without it.
    #[error("site {site:?} has no skewable clock: the lab was not started with clock skew on (LabSpec::clock_skew)")]
    ClockSkewOff { site: String },

    /// A SQL statement run through psql failed.
    #[error("psql against {target} failed ({status}) running {sql:?}: {stderr}")]
    Psql {
        target: String,
        sql: String,
        status: String,
        stderr: String,
    },

    /// Setting up the lab's network (namespaces, veths) failed.
    #[error("cannot set up the lab's network: `{command}` failed ({status}): {stderr}; the lab needs root and iproute2, and removes what it made")]
    Network {
        command: String,
        status: String,
        stderr: String,
    },

    /// A lab spec that cannot work.
    #[error("invalid lab spec: {field} = {value}: {why}")]
    InvalidSpec {
        field: &'static str,
        value: String,
        why: String,
    },

    /// A lab part that does not exist (a site, a member, a link).
    #[error("no {what} named {name:?} in this lab; known: [{known}]")]
    Unknown {
        what: &'static str,
        name: String,
        known: String,
    },

    /// The in-process fault proxy refused something.
    #[error("fault proxy: {0}")]
    Proxy(#[from] crate::proxy::ProxyError),

    /// The external fault proxy process said something unexpected.
    #[error("fault proxy process: {message}; see its log at {}:\n{tail}", log.display())]
    ProxyProcess {
        message: String,
        log: PathBuf,
        tail: String,
    },

    /// A lab is already running in the directory.
    #[error("a lab is already running in {} (pids {pids}); stop it first with `ezone lab down --dir {}`", dir.display(), dir.display())]
    AlreadyRunning { dir: PathBuf, pids: String },

    /// The lab state file is unreadable or not ours.
    #[error("lab state file {} is invalid: {reason}; if no lab runs there, remove the file (and the lab directory's contents) by hand", path.display())]
    BadState { path: PathBuf, reason: String },
}

impl LabError {
    /// An [`LabError::Io`] for `path`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LabError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// Whether this startup failure looks like a lost port race (another
    /// process took the port between our probe and the child's bind), which
    /// is worth one more try on fresh ports.
    pub fn is_port_clash(&self) -> bool {
        let tail = match self {
            LabError::Exited { tail, .. } | LabError::NotReady { tail, .. } => tail,
            LabError::Proxy(crate::proxy::ProxyError::Bind { source, .. }) => {
                return source.kind() == io::ErrorKind::AddrInUse
            }
            LabError::ProxyProcess { tail, .. } => tail,
            _ => return false,
        };
        let t = tail.to_ascii_lowercase();
        t.contains("address already in use") || t.contains("could not bind")
    }
}
