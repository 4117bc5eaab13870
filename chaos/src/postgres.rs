//! Real Postgres 15 for the lab: one cluster per site, on a free loopback
//! port, in its own directory, ready for logical replication, that a test
//! can kill (-9), pause, resume and restart.
//!
//! - **Binaries**: `$EZONE_PG_BIN`, else `/usr/lib/postgresql/15/bin`, else
//!   wherever `dpkg -L postgresql-15` put `initdb`.
//! - **As root**, Postgres refuses to run, so `initdb` and `postgres` run as
//!   the `postgres` OS user, in a directory chowned to it (every parent must
//!   be searchable by it; temp dirs are opened to `0755`).
//! - **The postmaster is our child** (no `pg_ctl`), so kill -9 hits it. A
//!   kill takes its backends with it (see [`crate::process`]: Postgres puts
//!   each backend in its own session, so the tree is walked), which is what a
//!   crashed server looks like; the restart then runs crash recovery.
//! - **`fsync=off`** is safe for the chaos suite's purpose: it only loses
//!   data when the *kernel* crashes. A killed postmaster's writes are already
//!   in the page cache, so kill -9 loses nothing that was committed.
//! - **Where**: on 127.0.0.1 by default, or on a site's own address inside
//!   its network namespace ([`PgOptions::host`], [`crate::netns`]); the
//!   clients `pg_hba.conf` admits are [`PgOptions::clients`].
//! - Authentication is `trust` on 127.0.0.1 for the `postgres` superuser
//!   (a throwaway test cluster), or, with [`PgOptions::password`], SCRAM
//!   over TCP with that password (the Unix socket stays `trust`). The
//!   password is in a password file in the cluster's directory (`pgpass`,
//!   0600), and every DSN the cluster hands out names that file
//!   (`passfile=`), never the password: an ensemble on it authenticates as
//!   production does, with the secret out of the topology and the configs,
//!   and a test can look for the password where it must never appear.
//! - **TLS** is on by default ([`PgOptions::tls`]): the cluster makes its own
//!   CA ([`crate::certs`]), a server certificate for the loopback names, and
//!   a client certificate for the `postgres` role. `pg_hba.conf` accepts TCP
//!   only over TLS and only with that client certificate
//!   (`hostssl ... clientcert=verify-full`), for SQL and replication
//!   connections alike; a plain TCP connection finds no `pg_hba.conf` entry.
//!   Every DSN the cluster hands out says `sslmode=verify-full` with the CA
//!   and the client certificate, so every test talks to it as a WAN
//!   deployment should. The Unix socket stays `trust` (the lab's own psql
//!   and pg_isready use TCP with the same files).

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::certs::{server_names, IssuedCert, LabCerts};
use crate::clock::SiteClock;
use crate::error::LabError;
use crate::netns::Host;
use crate::ports;
use crate::process::{self, ChildProcess, ProcessRecord, ProcessSpec, Supervision};
use crate::scratch::ScratchDir;
use crate::sysv_shm;

/// How long a start (or crash recovery) may take.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The database every lab cluster gets.
pub const DEFAULT_DATABASE: &str = "ezone";
/// The OS user Postgres runs as when we are root, and the superuser name.
pub const PG_USER: &str = "postgres";
/// The Debian package that holds the server binaries.
const PG_PACKAGE: &str = "postgresql-15";
/// The default bin dir of that package.
const PG_DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long initdb may take (two run at once on a small machine).
const INITDB_TIMEOUT: Duration = Duration::from_secs(90);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);
/// Tries on fresh ports when the postmaster loses the port race at start.
const START_ATTEMPTS: usize = 3;
/// Longest Unix socket path (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Server settings: logical replication on, small and fast for tests
/// (`listen_addresses` is the cluster's [`PgOptions::host`]).
const SETTINGS: &[(&str, &str)] = &[
    ("wal_level", "logical"),
    ("max_wal_senders", "20"),
    ("max_replication_slots", "20"),
    ("wal_sender_timeout", "10s"),
    ("fsync", "off"),
    ("max_connections", "200"),
    ("shared_buffers", "64MB"),
];

/// How to start a [`PgCluster`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The site name, used in directory names and messages.
    pub name: String,
    /// Parent directory; `None` uses a fresh temp dir. The cluster lives in
    /// `<dir>/pg-<name>`, removed when the cluster is dropped (or torn down)
    /// unless `keep_files`.
    pub dir: Option<PathBuf>,
    /// Leave the cluster's directory (`data/`, `postgres.log`,
    /// `initdb.log`) on disk when the cluster is dropped or torn down.
    pub keep_files: bool,
    pub supervision: Supervision,
    pub ready_timeout: Duration,
    /// Database created after initdb.
    pub database: String,
    /// Run the postmaster (and so every backend, forked from it) under
    /// libfaketime with this site clock ([`crate::clock`]); `None`: the
    /// real clock. `initdb` and the clients always run on the real clock.
    pub clock: Option<SiteClock>,
    /// The superuser's password, required over TCP (SCRAM-SHA-256); `None`:
    /// `trust`.
    pub password: Option<String>,
    /// TCP only over TLS with a client certificate (see the module docs).
    /// On by default.
    pub tls: bool,
    /// Where the cluster runs and listens: 127.0.0.1 here by default, or a
    /// site's own address in its network namespace ([`crate::netns`]).
    pub host: Host,
    /// The networks clients connect from, as CIDR (`pg_hba.conf`); by
    /// default loopback.
    pub clients: Vec<String>,
    /// More names (IP addresses) the server certificate carries, besides
    /// the loopback names and the host's address: where a proxy in front
    /// of it listens, since a client verifies the address it dials.
    pub server_names: Vec<String>,
    /// Server settings besides the lab's own (`-c key=value`, given after
    /// them, so one here wins): an extension to preload, say.
    pub settings: Vec<(String, String)>,
}

/// The files a client presents to a lab cluster with TLS on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The cluster's CA: `sslrootcert`.
    pub ca_file: PathBuf,
    /// The `postgres` role's certificate: `sslcert`.
    pub cert_file: PathBuf,
    /// Its key: `sslkey`.
    pub key_file: PathBuf,
}

impl ClientTls {
    /// The DSN keys: `sslmode=verify-full` and the three files.
    pub fn dsn_keys(&self) -> String {
        format!(
            "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            ezone_pg::dsn::quote_value(&self.ca_file.to_string_lossy()),
            ezone_pg::dsn::quote_value(&self.cert_file.to_string_lossy()),
            ezone_pg::dsn::quote_value(&self.key_file.to_string_lossy()),
        )
    }

    /// The same as libpq's environment variables, for its tools (psql,
    /// pgbench).
    pub fn env(&self) -> [(&'static str, PathBuf); 4] {
        [
            ("PGSSLMODE", PathBuf::from("verify-full")),
            ("PGSSLROOTCERT", self.ca_file.clone()),
            ("PGSSLCERT", self.cert_file.clone()),
            ("PGSSLKEY", self.key_file.clone()),
        ]
    }

    fn apply(&self, cmd: &mut tokio::process::Command) {
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
    }
}

impl PgOptions {
    pub fn new(name: impl Into<String>) -> Self {
        PgOptions {
            name: name.into(),
            dir: None,
            supervision: Supervision::Tied,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            database: DEFAULT_DATABASE.to_string(),
            clock: None,
            keep_files: false,
            password: None,
            tls: true,
            host: Host::loopback(),
            clients: vec!["127.0.0.1/32".to_string(), "::1/128".to_string()],
            server_names: Vec::new(),
            settings: Vec::new(),
        }
    }
}

/// A running Postgres cluster. Dropping it kills the postmaster and its
/// backends and removes its directory (unless [`PgOptions::keep_files`]).
#[derive(Debug)]
pub struct PgCluster {
    name: String,
    bin: PathBuf,
    host: IpAddr,
    port: u16,
    data_dir: PathBuf,
    database: String,
    ready_timeout: Duration,
    password: Option<String>,
    passfile: Option<PathBuf>,
    tls: Option<ClientTls>,
    // Field order matters: the process drops first, then its shared memory
    // segment is released, then the directory goes.
    process: ChildProcess,
    shm: ShmRelease,
    dir: ScratchDir,
}

/// Releases the cluster's System V segment when dropped (after the
/// postmaster is killed, before its data directory goes): see
/// [`crate::sysv_shm`]. Disarmed for a cluster that outlives its handle.
#[derive(Debug)]
struct ShmRelease {
    data_dir: PathBuf,
    armed: bool,
}

impl Drop for ShmRelease {
    fn drop(&mut self) {
        if self.armed {
            sysv_shm::release(&self.data_dir);
        }
    }
}

impl PgCluster {
    /// initdb and start a cluster for site `name` in a temp dir, create the
    /// `ezone` database, and wait until it accepts connections.
    pub async fn start(name: &str) -> Result<Self, LabError> {
        Self::start_with(PgOptions::new(name)).await
    }

    /// Start a cluster as `opts` says.
    pub async fn start_with(opts: PgOptions) -> Result<Self, LabError> {
        check_name("postgres site name", &opts.name)?;
        check_name("postgres database", &opts.database)?;
        let bin = find_pg_bin()?;
        let os_user = nix::unistd::geteuid()
            .is_root()
            .then(|| PG_USER.to_string());
        let dir = ScratchDir::temp_or_under(opts.dir.as_deref(), &format!("pg-{}", opts.name))?
            .keep_files(opts.keep_files);
        if let Some(user) = &os_user {
            hand_over(dir.path(), user)?;
        }
        sysv_shm::sweep_orphans(match &os_user {
            Some(user) => process::lookup_user(user)?.uid.as_raw(),
            None => nix::unistd::geteuid().as_raw(),
        });
        let data_dir = dir.path().join("data");
        // Declared before any postmaster: an error below drops the process
        // first, then this releases its segment.
        let shm = ShmRelease {
            data_dir: data_dir.clone(),
            armed: true,
        };
        // With a password, initdb reads it from a file (never a command
        // line, which `ps` shows), removed once initdb is done.
        let pwfile = dir.path().join("initdb.pw");
        let auth: Vec<String> = match &opts.password {
            None => vec!["-A".into(), "trust".into()],
            Some(pw) => {
                write_private(&pwfile, pw, os_user.as_deref())?;
                vec![
                    "--auth-local=trust".into(),
                    "--auth-host=scram-sha-256".into(),
                    format!("--pwfile={}", pwfile.display()),
                ]
            }
        };
        let initdb = ProcessSpec::new(
            format!("initdb for site {}", opts.name),
            bin.join("initdb"),
            dir.path(),
            "initdb.log",
        )
        .arg("-D")
        .arg(&data_dir)
        .args(auth)
        .args(["-U", PG_USER, "--no-sync", "-E", "UTF8", "--locale=C"])
        .env_remove_prefix("PG")
        .user(os_user.clone());
        let ran = process::run_to_completion(initdb, INITDB_TIMEOUT).await;
        if opts.password.is_some() {
            let _ = std::fs::remove_file(&pwfile);
        }
        ran?;
        let passfile = match &opts.password {
            Some(pw) => {
                let path = dir.path().join("pgpass");
                // Ours, not the postgres user's: the clients read it.
                write_private(&path, &passfile_line(pw), None)?;
                Some(path)
            }
            None => None,
        };
        let tls = if opts.tls {
            Some(set_up_tls(
                &opts,
                dir.path(),
                &data_dir,
                os_user.as_deref(),
            )?)
        } else {
            None
        };

        let mut attempt = 1;
        let (port, process) = loop {
            let port = ports::free_port()?;
            let spec = postmaster_spec(&opts, &bin, dir.path(), &data_dir, port, os_user.clone());
            let process = ChildProcess::spawn(spec)?;
            let addr = SocketAddr::new(opts.host.addr, port);
            match wait_postmaster(&bin, addr, &process, opts.ready_timeout).await {
                Ok(()) => break (port, process),
                Err(e) if e.is_port_clash() && attempt < START_ATTEMPTS => {
                    tracing::warn!(site = %opts.name, port, attempt, "Postgres lost a port race; retrying on a fresh port.");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let cluster = PgCluster {
            name: opts.name.clone(),
            bin,
            host: opts.host.addr,
            port,
            data_dir,
            database: opts.database.clone(),
            ready_timeout: opts.ready_timeout,
            password: opts.password.clone(),
            passfile,
            tls,
            process,
            shm,
            dir,
        };
        cluster
            .psql_db(
                "postgres",
                &format!("CREATE DATABASE \"{}\"", opts.database),
            )
            .await?;
        tracing::info!(site = %cluster.name, port = cluster.port, pid = cluster.pid(), "Postgres is ready.");
        Ok(cluster)
    }

    /// The site name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `HOST:PORT`: `127.0.0.1:PORT` unless the cluster runs on a host of
    /// its own ([`PgOptions::host`]).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// libpq DSN: `host=127.0.0.1 port=P user=postgres dbname=DB`, with
    /// the password and the TLS files when the cluster has them.
    pub fn dsn(&self, db: &str) -> String {
        self.dsn_at(self.addr(), db)
    }

    /// [`PgCluster::dsn`] for reaching the cluster at another address (a
    /// proxy in front of it).
    pub fn dsn_at(&self, addr: SocketAddr, db: &str) -> String {
        dsn_with(addr, db, self.passfile.as_deref(), self.tls.as_ref())
    }

    /// The password file the DSNs name, when the cluster has a password.
    pub fn passfile(&self) -> Option<&Path> {
        self.passfile.as_deref()
    }

    /// The client's TLS files, when TLS is on.
    pub fn client_tls(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    /// The superuser's password, when the cluster requires one.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The database created at start (`ezone`).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The cluster's directory (`data/`, `postgres.log`, the socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// The postmaster process, for anything not wrapped here.
    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// Run `sql` in the `ezone` database with `psql -XAtq`; its output with
    /// the trailing newline removed.
    pub async fn psql(&self, sql: &str) -> Result<String, LabError> {
        self.psql_db(&self.database, sql).await
    }

    /// Run `sql` in database `db`.
    pub async fn psql_db(&self, db: &str, sql: &str) -> Result<String, LabError> {
        psql_as(
            &self.bin,
            self.addr(),
            db,
            self.password.as_deref(),
            self.tls.as_ref(),
            sql,
        )
        .await
    }

    /// kill -9 the postmaster and its backends: a crash.
    pub fn kill(&self) -> Result<(), LabError> {
        self.process.kill()
    }

    /// SIGSTOP the postmaster and its backends: connections hang.
    pub fn pause(&self) -> Result<(), LabError> {
        self.process.pause()
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<(), LabError> {
        self.process.resume()
    }

    /// Kill (if running), start again on the same data and port, and wait
    /// until it accepts connections (after a kill, crash recovery runs first).
    ///
    /// The old server's `postmaster.pid` is left for the new postmaster to
    /// judge: Postgres takes a lock file whose pid is gone for stale and
    /// starts, and refuses only while that pid exists. The postmaster is
    /// our child and is reaped as soon as it dies, also when it was killed
    /// from outside ([`crate::process`]), so its pid never lingers as a
    /// zombie that would keep the new one from starting. (Removing the file
    /// ourselves would be unsafe: Postgres also finds the old shared memory
    /// through it, to refuse while old backends still use it.)
    pub async fn restart(&self) -> Result<(), LabError> {
        self.process.restart()?;
        self.wait_ready(self.ready_timeout).await
    }

    /// Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit),
    /// SIGKILL after `timeout`.
    pub async fn stop(&self, timeout: Duration) -> Result<(), LabError> {
        self.process.terminate(timeout).await
    }

    /// Poll `pg_isready` until the server accepts connections, the
    /// postmaster exits, or `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), LabError> {
        wait_postmaster(&self.bin, self.addr(), &self.process, timeout).await
    }

    /// kill -9 the cluster and remove its directory (unless
    /// [`PgOptions::keep_files`]), reporting failures (dropping it does the
    /// same, failures only logged).
    pub fn teardown(self) -> Result<(), LabError> {
        let PgCluster {
            process, shm, dir, ..
        } = self;
        process.kill()?;
        drop(process);
        drop(shm);
        dir.remove()
    }

    /// The postmaster's record, for a lab's state file.
    pub fn record(&self) -> ProcessRecord {
        self.process.record()
    }

    /// Let the postmaster outlive this handle (detached labs); returns its
    /// record and the directory, which is kept.
    pub fn disown(mut self) -> (ProcessRecord, PathBuf) {
        self.shm.armed = false;
        (self.process.disown(), self.dir.keep())
    }
}

/// Poll `pg_isready` until the postmaster accepts connections, exits, or
/// `timeout` passes.
async fn wait_postmaster(
    bin: &Path,
    addr: SocketAddr,
    process: &ChildProcess,
    timeout: Duration,
) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match pg_isready(bin, addr).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if let Some(status) = process.exit_status() {
            return Err(LabError::Exited {
                name: process.name().to_string(),
                status: status.to_string(),
                log: process.log_path().to_path_buf(),
                tail: process.log_tail(),
            });
        }
        if Instant::now() >= deadline {
            return Err(LabError::NotReady {
                name: process.name().to_string(),
                within: timeout,
                last,
                log: process.log_path().to_path_buf(),
                tail: process.log_tail(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// libpq DSN for the `postgres` superuser at `addr`, without TLS (a cluster
/// started with [`PgOptions::tls`] off).
pub fn dsn(addr: SocketAddr, db: &str) -> String {
    dsn_with(addr, db, None, None)
}

/// [`dsn`] naming the password file with the superuser's password, if any,
/// and the TLS keys, if any.
pub fn dsn_with(
    addr: SocketAddr,
    db: &str,
    passfile: Option<&Path>,
    tls: Option<&ClientTls>,
) -> String {
    let mut s = format!(
        "host={} port={} user={PG_USER} dbname={db}",
        addr.ip(),
        addr.port()
    );
    if let Some(path) = passfile {
        s.push_str(&format!(
            " passfile={}",
            ezone_pg::dsn::quote_value(&path.to_string_lossy())
        ));
    }
    if let Some(tls) = tls {
        s.push(' ');
        s.push_str(&tls.dsn_keys());
    }
    s
}

/// The cluster's certificates, `ssl=on` and a `pg_hba.conf` that takes TCP
/// only over TLS with the client certificate. Written after initdb (which
/// writes its own `pg_hba.conf`), before the first start.
fn set_up_tls(
    opts: &PgOptions,
    dir: &Path,
    data_dir: &Path,
    os_user: Option<&str>,
) -> Result<ClientTls, LabError> {
    let certs_dir = dir.join("certs");
    let certs = LabCerts::generate(&certs_dir)?;
    let host = opts.host.addr.to_string();
    let names = server_names(
        std::iter::once(host.as_str()).chain(opts.server_names.iter().map(String::as_str)),
    );
    let server = certs.issue_server("postgres-server", &names)?;
    let client = certs.issue_client(PG_USER)?;
    if let Some(user) = os_user {
        // The server reads its key as the postgres OS user, and refuses a
        // key others may read: hand the key over, keeping 0600.
        hand_over(&server.key_file, user)?;
        // The client key stays ours (libpq takes a key owned by the user it
        // runs as, or by root with mode 0640) and its group becomes the
        // postgres user's, so that a server-side client (a native
        // subscription in the benchmarks) can read it too.
        share_with_group(&client.key_file, user)?;
    }
    let IssuedCert {
        cert_file: server_cert,
        key_file: server_key,
        ..
    } = server;
    let method = if opts.password.is_some() {
        "scram-sha-256"
    } else {
        "trust"
    };
    let mut hba = String::from(
        "# Written by the ezone lab: TCP only over TLS with a client certificate\n\
         # whose name is the role (clientcert=verify-full); no hostnossl line, so\n\
         # a plain TCP connection finds no entry and is refused.\n\
         local all all trust\n\
         local replication all trust\n",
    );
    for db in ["all", "replication"] {
        for net in &opts.clients {
            hba.push_str(&format!(
                "hostssl {db} all {net} {method} clientcert=verify-full\n"
            ));
        }
    }
    let hba_path = data_dir.join("pg_hba.conf");
    std::fs::write(&hba_path, hba).map_err(|e| LabError::io("writing", &hba_path, e))?;
    let conf = format!(
        "\n# ezone lab: TLS\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
        server_cert.display(),
        server_key.display(),
        certs.ca_file().display()
    );
    let conf_path = data_dir.join("postgresql.conf");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .map_err(|e| LabError::io("opening", &conf_path, e))?;
        f.write_all(conf.as_bytes())
            .map_err(|e| LabError::io("writing", &conf_path, e))?;
    }
    Ok(ClientTls {
        ca_file: certs.ca_file().to_path_buf(),
        cert_file: client.cert_file,
        key_file: client.key_file,
    })
}

/// A password file line for the superuser on any host, port and database,
/// escaped as libpq's password file wants (`\\` and `\:`).
fn passfile_line(password: &str) -> String {
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{PG_USER}:{escaped}\n")
}

/// Writes `content` to a new file only its owner reads (`0600`), owned by
/// `user` when given (initdb runs as that user and must read it).
fn write_private(path: &Path, content: &str, user: Option<&str>) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| LabError::io("writing the initdb password file", path, e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(content.as_bytes()).map_err(io)?;
    if let Some(user) = user {
        hand_over(path, user)?;
    }
    Ok(())
}

/// The postmaster's command line.
fn postmaster_spec(
    opts: &PgOptions,
    bin: &Path,
    dir: &Path,
    data_dir: &Path,
    port: u16,
    os_user: Option<String>,
) -> ProcessSpec {
    let socket_dir = dir.display().to_string();
    // A socket path that is too long fails the start; go TCP-only instead.
    let socket_dir = if socket_dir.len() + format!("/.s.PGSQL.{port}").len() <= MAX_SOCKET_PATH {
        socket_dir
    } else {
        tracing::warn!(site = %opts.name, dir = %socket_dir, "Directory too long for a Unix socket; Postgres listens on TCP only.");
        String::new()
    };
    let mut spec = ProcessSpec::new(
        format!("postgres for site {}", opts.name),
        bin.join("postgres"),
        dir,
        "postgres.log",
    )
    .arg("-D")
    .arg(data_dir)
    .args(["-c", &format!("port={port}")])
    .args(["-c", &format!("listen_addresses={}", opts.host.addr)])
    .args(["-c", &format!("unix_socket_directories={socket_dir}")]);
    for (k, v) in SETTINGS {
        spec = spec.args(["-c", &format!("{k}={v}")]);
    }
    for (k, v) in &opts.settings {
        spec = spec.args(["-c", &format!("{k}={v}")]);
    }
    let spec = spec
        .env_remove_prefix("PG")
        .user(os_user)
        .netns(opts.host.netns.clone())
        .supervision(opts.supervision)
        .stop_signal(Signal::SIGINT);
    // The environment reaches the postmaster as is: it is exec'd directly,
    // with only its uid and gid changed when we are root (no runuser/su
    // in between to filter it).
    spec.clock(opts.clock.as_ref())
}

/// `pg_isready`: `Ok` when the server accepts connections, else what it said.
async fn pg_isready(bin: &Path, addr: SocketAddr) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(bin.join("pg_isready"));
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", PG_USER])
        .args(["-d", "postgres", "-t", "2"]);
    let out = run_client(cmd, None, None)
        .await
        .map_err(|e| format!("cannot run pg_isready: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Err(format!("pg_isready: {said} ({})", out.status))
}

/// Run `sql` with psql against `addr`/`db`.
pub async fn psql(bin: &Path, addr: SocketAddr, db: &str, sql: &str) -> Result<String, LabError> {
    psql_as(bin, addr, db, None, None, sql).await
}

/// [`psql`] with the superuser's password (in psql's environment, never on
/// its command line).
pub async fn psql_as(
    bin: &Path,
    addr: SocketAddr,
    db: &str,
    password: Option<&str>,
    tls: Option<&ClientTls>,
    sql: &str,
) -> Result<String, LabError> {
    let mut cmd = tokio::process::Command::new(bin.join("psql"));
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", PG_USER, "-d", db, "-c", sql]);
    let target = format!("{addr}/{db}");
    let out = run_client(cmd, password, tls)
        .await
        .map_err(|e| LabError::Psql {
            target: target.clone(),
            sql: sql.to_string(),
            status: "not started".to_string(),
            stderr: format!("cannot run {}: {e}", bin.join("psql").display()),
        })?;
    if !out.status.success() {
        return Err(LabError::Psql {
            target,
            sql: sql.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    while s.ends_with('\n') {
        s.pop();
    }
    Ok(s)
}

/// Run a short-lived client (psql, pg_isready) with a clean `PG*`
/// environment; killed if the caller stops waiting (e.g. a timeout).
async fn run_client(
    mut cmd: tokio::process::Command,
    password: Option<&str>,
    tls: Option<&ClientTls>,
) -> std::io::Result<std::process::Output> {
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(&k);
        }
    }
    // In the environment, never on the command line (which `ps` shows).
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    if let Some(tls) = tls {
        tls.apply(&mut cmd);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
}

/// Where the Postgres 15 server binaries are.
pub fn find_pg_bin() -> Result<PathBuf, LabError> {
    let mut tried = Vec::new();
    if let Some(dir) = std::env::var_os("EZONE_PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        tried.push(format!("{} (from EZONE_PG_BIN)", dir.display()));
    }
    let default = PathBuf::from(PG_DEFAULT_BIN);
    if default.join("initdb").is_file() {
        return Ok(default);
    }
    tried.push(PG_DEFAULT_BIN.to_string());
    match std::process::Command::new("dpkg")
        .args(["-L", PG_PACKAGE])
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            let listing = String::from_utf8_lossy(&out.stdout);
            let found = listing
                .lines()
                .find(|l| l.ends_with("/bin/initdb"))
                .and_then(|l| Path::new(l).parent().map(Path::to_path_buf));
            if let Some(dir) = found.filter(|d| d.join("initdb").is_file()) {
                return Ok(dir);
            }
            tried.push(format!("`dpkg -L {PG_PACKAGE}` (no bin/initdb listed)"));
        }
        Ok(_) => tried.push(format!("`dpkg -L {PG_PACKAGE}` (package not installed)")),
        Err(e) => tried.push(format!("`dpkg -L {PG_PACKAGE}` ({e})")),
    }
    Err(LabError::PgNotFound {
        tried: tried.join(", "),
    })
}

/// Make `dir` owned by `user` after checking the user can reach it.
fn hand_over(dir: &Path, user: &str) -> Result<(), LabError> {
    let u = process::lookup_user(user)?;
    check_reachable(dir, user, u.uid.as_raw(), u.gid.as_raw())?;
    nix::unistd::chown(dir, Some(u.uid), Some(u.gid))
        .map_err(|e| LabError::io("chown to the postgres user", dir, std::io::Error::from(e)))
}

/// Gives `path` to `user`'s group, mode 0640 (owner unchanged).
fn share_with_group(path: &Path, user: &str) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    let u = process::lookup_user(user)?;
    nix::unistd::chown(path, None, Some(u.gid))
        .map_err(|e| LabError::io("chgrp to the postgres group", path, std::io::Error::from(e)))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640))
        .map_err(|e| LabError::io("chmod 0640", path, e))
}

/// Every parent of `dir` must be searchable by `uid`/`gid`.
fn check_reachable(dir: &Path, user: &str, uid: u32, gid: u32) -> Result<(), LabError> {
    for parent in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(parent).map_err(|e| LabError::io("stat", parent, e))?;
        let mode = meta.mode();
        let searchable = if meta.uid() == uid {
            mode & 0o100 != 0
        } else if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !searchable {
            return Err(LabError::DirNotReachable {
                user: user.to_string(),
                path: dir.to_path_buf(),
                reason: format!(
                    "{} has mode {:o} and is owned by uid {}",
                    parent.display(),
                    mode & 0o7777,
                    meta.uid()
                ),
            });
        }
    }
    Ok(())
}

/// Site and database names go into paths and SQL identifiers: keep them
/// plain.
fn check_name(field: &'static str, name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(LabError::InvalidSpec {
            field,
            value: format!("{name:?}"),
            why: "use 1 to 48 of a-z, 0-9, '_' and '-'".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal;
    use nix::unistd::Pid;

    /// A postmaster killed from outside (not through its handle) is reaped
    /// at once, and a restart on its data then works: its `postmaster.pid`
    /// names a pid that is gone, which Postgres takes for stale.
    #[tokio::test]
    async fn a_postmaster_killed_from_outside_is_reaped_and_restarts() {
        let pg = PgCluster::start("reaped").await.expect("start postgres");
        pg.psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')")
            .await
            .expect("create and insert");
        let pid = pg.pid();
        signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9 the postmaster");
        // Nobody asks the handle: the pid must vanish (reaped), not linger
        // as a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(s) = process::proc_stat(pid) {
            assert!(
                Instant::now() < deadline,
                "postmaster {pid} still in /proc 5 s after kill -9 (state {})",
                s.state
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let lock = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
            .expect("the killed postmaster left its lock file");
        assert_eq!(lock.lines().next(), Some(pid.to_string().as_str()));

        pg.restart()
            .await
            .expect("restart after an outside kill -9");
        assert_ne!(pg.pid(), pid);
        assert_eq!(pg.psql("SELECT v FROM t").await.expect("select"), "kept");
        pg.teardown().expect("teardown");
    }
}
