//! TLS termination for the router's HTTPS listener, with certificate reload.
//!
//! [`load_server_config`] turns a PEM certificate chain and private key into a
//! [`rustls::ServerConfig`] that offers ALPN `h2` and `http/1.1` (so one
//! listener serves both HTTP versions, see `docs/design.md`, "Routing").
//! The `ring` crypto provider is passed explicitly: nothing here depends on a
//! process-wide default provider having been installed.
//!
//! [`ReloadingAcceptor`] keeps the current config in an [`ArcSwap`] and every
//! handshake takes whatever config is current at that moment, so a rotated
//! certificate is picked up without a restart and without dropping the
//! connections already open (they keep the config they were accepted with).
//! It is a [`Reloading`] of a [`ServerConfig`]; the peer TLS configs
//! ([`peer`]: the peer listener's and the peer client's, from a
//! certificate, a key and a CA file) are another, reloaded the same way.
//!
//! # Why polling
//!
//! A background task looks at the files' metadata (modification time, length
//! and, on Unix, device and inode) every `poll` interval and reloads when any
//! of it changed. We poll rather than subscribe to file events because:
//!
//! - it needs no inotify/kqueue dependency and behaves the same on every
//!   platform and filesystem (network mounts and overlay filesystems often
//!   deliver no events at all);
//! - it is cheap: two `stat` calls per interval, and certificates change on a
//!   scale of weeks, so a few seconds of delay is irrelevant;
//! - it works with the way certificates are actually rotated: certbot and
//!   cert-manager write a new file and rename it over the old one, and
//!   Kubernetes secret volumes swap a symlink. An event watch on the old file
//!   (or inode) misses that; a `stat` that follows the path sees a new inode
//!   at once.
//!
//! A reload that fails (a half-written file, a key that does not match the
//! certificate, garbage) is logged as a warning with the reason, counted
//! ([`ReloadingAcceptor::reload_failures`]), and the previous config keeps
//! serving. The failed file state is remembered so the warning is not
//! repeated every interval; the next change to either file tries again.
//! [`ReloadingAcceptor::reload_now`] forces a reload (tests, SIGHUP).
//!
//! The watcher task lives exactly as long as the acceptor: the last dropped
//! handle drops a oneshot sender, which ends the task promptly.

pub mod peer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Instrument};

/// ALPN protocol id for HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id for HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// A sensible interval for [`ReloadingAcceptor::start`] in production.
pub const DEFAULT_RELOAD_POLL: Duration = Duration::from_secs(5);

/// Why a certificate or key could not be loaded. Each message names the
/// config field, the file and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field} {}: cannot read the file: {source}; check the path and its permissions", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{field} {}: not valid PEM: {source}; the file may be truncated or half-written", path.display())]
    Pem {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{field} {} holds no certificate: expected one or more PEM 'CERTIFICATE' blocks, leaf first", path.display())]
    NoCertificate { field: &'static str, path: PathBuf },
    #[error(
        "{field} {} holds no private key: expected a PEM 'PRIVATE KEY' block \
         (PKCS#8), or 'RSA PRIVATE KEY' / 'EC PRIVATE KEY'",
        path.display()
    )]
    NoPrivateKey { field: &'static str, path: PathBuf },
    #[error(
        "{cert_field} {} with {key_field} {} was rejected: {source}; check that the key belongs to \
         the first (leaf) certificate and is RSA, ECDSA or Ed25519",
        cert.display(),
        key.display()
    )]
    Rejected {
        cert_field: &'static str,
        cert: PathBuf,
        key_field: &'static str,
        key: PathBuf,
        #[source]
        source: Box<rustls::Error>,
    },
    /// A CA file with no certificate rustls can use as a trust anchor.
    #[error("{field} {}: {problem}", path.display())]
    Ca {
        field: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// This router's own peer certificate does not name its site
    /// (`crate::tls::peer`).
    #[error(
        "peer_tls.cert_file {}: the certificate does not name this router's site {site:?}: \
         a router's peer certificate must carry exactly one DNS name of the form \
         <site>.{domain}, here {expected:?} (found {found}); issue one with the \
         subject alternative name {expected} (and both the serverAuth and clientAuth \
         extended key usages)",
        path.display(),
        found = if found.is_empty() { "none".to_string() } else { found.join(", ") }
    )]
    NotNamed {
        path: PathBuf,
        site: String,
        domain: String,
        expected: String,
        found: Vec<String>,
    },
    /// This router's own peer certificate fails the checks its peers will
    /// make of it (signed by the CA, in its validity period, usable for
    /// the role).
    #[error(
        "peer_tls.cert_file {}: other sites' routers would refuse it {role}: {source}; \
         it must be signed by the CA in peer_tls.ca_file {}, be within its validity \
         period, and carry both the serverAuth and clientAuth extended key usages",
        cert.display(),
        ca.display()
    )]
    PeerUnusable {
        cert: PathBuf,
        ca: PathBuf,
        role: &'static str,
        #[source]
        source: Box<rustls::Error>,
    },
    #[error("TLS certificate reload poll interval must be greater than zero (try {DEFAULT_RELOAD_POLL:?})")]
    ZeroPoll,
    #[error("ReloadingAcceptor::start must be called from within a tokio runtime")]
    NoRuntime,
}

/// Loads a PEM certificate chain (leaf first) and private key (PKCS#8,
/// PKCS#1 RSA or SEC1 EC) into a server config offering ALPN `h2` and
/// `http/1.1`, using the `ring` provider. Each file is read once, whole.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let chain = read_certs("tls_cert", cert)?;
    let private_key = read_key("tls_key", key)?;
    let rejected = |source| TlsError::Rejected {
        cert_field: "tls_cert",
        cert: cert.to_path_buf(),
        key_field: "tls_key",
        key: key.to_path_buf(),
        source: Box::new(source),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(rejected)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(config)
}

/// The crypto provider every config here is built with.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.to_path_buf(),
        source,
    })
}

/// The PEM certificates in the file `field` names: at least one.
pub(crate) fn read_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(field, path)?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            field,
            path: path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            field,
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// The PEM private key in the file `field` names.
pub(crate) fn read_key(
    field: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(field, path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Pem {
            field,
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            field,
            path: path.to_path_buf(),
        })
}

/// True when ALPN on this connection chose HTTP/2.
pub fn negotiated_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(ALPN_H2)
}

/// A TLS acceptor whose certificate follows the files on disk.
pub type ReloadingAcceptor = Reloading<ServerConfig>;

/// Something loaded from files (a TLS config) that follows them on disk:
/// [`ReloadingAcceptor`] for the HTTPS listener, and the peer listener's
/// and peer client's configs (`crate::tls::peer`), loaded together.
///
/// Cheap to clone; all clones share one value and one watcher task, which
/// ends when the last clone is dropped.
pub struct Reloading<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Reloading {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<T> {
    state: Arc<State<T>>,
    /// Dropped with the last handle; the watcher task sees the channel close
    /// and returns.
    _stop: oneshot::Sender<()>,
}

/// Loads the value from the files (each read once, whole).
type Loader<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// What the handles and the watcher task share.
struct State<T> {
    /// What is loaded, for the log ("TLS certificate").
    what: &'static str,
    /// The files the value is loaded from: a change to any reloads it.
    files: Vec<PathBuf>,
    load: Loader<T>,
    current: ArcSwap<T>,
    /// The file metadata of the last load attempt, good or bad. Held while
    /// reloading, so the watcher and `reload_now` never load concurrently.
    seen: Mutex<Fingerprint>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

/// Metadata of every file; a change in any field means "reload".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<Option<FileStamp>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    /// (device, inode) on Unix: an atomic rename changes it even when the
    /// new file has the same length and a coarse mtime. (0, 0) elsewhere.
    id: (u64, u64),
}

impl FileStamp {
    /// `None` when the file cannot be stat'ed (missing mid-rotation, say);
    /// that is itself a state, compared like any other.
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let id = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let id = (0, 0);
        Some(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            id,
        })
    }
}

impl Fingerprint {
    fn of(files: &[PathBuf]) -> Fingerprint {
        Fingerprint(files.iter().map(|f| FileStamp::of(f)).collect())
    }
}

impl<T> State<T> {
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.files)
    }

    fn seen(&self) -> MutexGuard<'_, Fingerprint> {
        // A panic while holding the lock cannot leave a Fingerprint half
        // written in a way that matters: at worst we reload once more.
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reloads unconditionally. The files are stat'ed before they are read,
    /// so a change that lands during the read shows up at the next poll.
    fn reload(&self, trigger: &'static str) -> Result<(), TlsError> {
        let mut seen = self.seen();
        *seen = self.fingerprint();
        self.load_and_swap(trigger)
    }

    /// Reloads if any file's metadata changed since the last attempt.
    fn poll_once(&self) {
        let mut seen = self.seen();
        let now = self.fingerprint();
        if *seen == now {
            return;
        }
        *seen = now;
        // The error has been logged and counted; the old config stays.
        let _ = self.load_and_swap("file change");
    }

    fn files(&self) -> String {
        let names: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        names.join(", ")
    }

    fn load_and_swap(&self, trigger: &'static str) -> Result<(), TlsError> {
        match (self.load)() {
            Ok(value) => {
                self.current.store(Arc::new(value));
                let reloads = self.reloads.fetch_add(1, Ordering::Relaxed) + 1;
                info!(
                    what = self.what,
                    files = %self.files(),
                    trigger,
                    reloads,
                    "TLS certificate reloaded."
                );
                Ok(())
            }
            Err(error) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(
                    what = self.what,
                    %error,
                    trigger,
                    failures,
                    "TLS certificate reload failed; still serving the previous certificate."
                );
                Err(error)
            }
        }
    }
}

impl ReloadingAcceptor {
    /// Loads `cert` and `key` once (failing if that fails) and starts a task
    /// that checks both files every `poll` and reloads them on change. Must be
    /// called within a tokio runtime.
    pub fn start(cert: PathBuf, key: PathBuf, poll: Duration) -> Result<Self, TlsError> {
        let files = vec![cert.clone(), key.clone()];
        Reloading::start_with(
            "TLS certificate",
            files,
            poll,
            Box::new(move || load_server_config(&cert, &key)),
        )
    }

    /// Runs the TLS handshake on `io` (a client's socket) with the config
    /// current right now. There is no timeout here: wrap the call in one (a
    /// client that never finishes its handshake would otherwise hold the
    /// task).
    pub async fn accept<IO>(&self, io: IO) -> io::Result<TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        TlsAcceptor::from(self.current()).accept(io).await
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads the value once with `load` (failing if that fails) and starts
    /// a task that checks `files` every `poll` and loads it again when any
    /// of them changed. Must be called within a tokio runtime.
    pub fn start_with(
        what: &'static str,
        files: Vec<PathBuf>,
        poll: Duration,
        load: Loader<T>,
    ) -> Result<Self, TlsError> {
        if poll.is_zero() {
            return Err(TlsError::ZeroPoll);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TlsError::NoRuntime)?;
        // Stat before reading, as in `State::reload`.
        let stamp = Fingerprint::of(&files);
        let value = load()?;
        let state = Arc::new(State {
            what,
            files,
            load,
            current: ArcSwap::from_pointee(value),
            seen: Mutex::new(stamp),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let span = tracing::info_span!("tls_reload", what, files = %state.files());
        runtime.spawn(watch(Arc::clone(&state), poll, stop_rx).instrument(span));
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                _stop: stop_tx,
            }),
        })
    }
}

impl<T> Reloading<T> {
    /// The value new handshakes use.
    pub fn current(&self) -> Arc<T> {
        self.inner.state.current.load_full()
    }

    /// Successful reloads since `start` (the initial load is not counted).
    pub fn reloads(&self) -> u64 {
        self.inner.state.reloads.load(Ordering::Relaxed)
    }

    /// Reloads that failed and left the previous config serving.
    pub fn reload_failures(&self) -> u64 {
        self.inner.state.failures.load(Ordering::Relaxed)
    }

    /// Reloads every file now, whether or not they changed. On error the
    /// previous config keeps serving and the failure is counted. Blocking
    /// file I/O: fine for a signal handler or a test, not for a hot path.
    pub fn reload_now(&self) -> Result<(), TlsError> {
        self.inner.state.reload("reload_now")
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.inner.state.what)
            .field("files", &self.inner.state.files)
            .field("reloads", &self.reloads())
            .field("reload_failures", &self.reload_failures())
            .finish()
    }
}

/// The watcher: one `stat` per file per tick, on the blocking pool (file
/// systems can stall), until every handle is gone.
async fn watch<T: Send + Sync + 'static>(
    state: Arc<State<T>>,
    poll: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; the files were just loaded.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let polled = Arc::clone(&state);
        if let Err(error) = tokio::task::spawn_blocking(move || polled.poll_once()).await {
            // Only on runtime shutdown or a panic inside rustls; either way,
            // stop watching rather than spin.
            warn!(%error, "TLS certificate watcher stopped unexpectedly.");
            return;
        }
    }
    debug!("TLS certificate watcher stopped.");
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::sync::Weak;
    use std::time::Instant;

    use rcgen::{
        BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, SerialNumber,
    };
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;

    const POLL: Duration = Duration::from_millis(50);
    const DEADLINE: Duration = Duration::from_secs(10);

    /// A test CA and a directory holding the current leaf's PEM files.
    struct Pki {
        ca: Certificate,
        ca_key: KeyPair,
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Self {
            let ca_key = KeyPair::generate().expect("CA key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "ezone test CA");
            let ca = params.self_signed(&ca_key).expect("CA cert");
            Self {
                ca,
                ca_key,
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        fn cert_path(&self) -> PathBuf {
            self.dir.path().join("tls.crt")
        }

        fn key_path(&self) -> PathBuf {
            self.dir.path().join("tls.key")
        }

        /// Issues a leaf for localhost/127.0.0.1 with a fresh key, writes both
        /// files by write-temp-then-rename, and returns the leaf's DER.
        fn issue(&self, common_name: &str, serial: u64) -> Vec<u8> {
            let key = KeyPair::generate().expect("leaf key");
            let mut params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .expect("leaf params");
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.serial_number = Some(SerialNumber::from(serial));
            let leaf = params
                .signed_by(&key, &self.ca, &self.ca_key)
                .expect("leaf cert");
            write_atomically(&self.key_path(), key.serialize_pem().as_bytes());
            write_atomically(&self.cert_path(), leaf.pem().as_bytes());
            leaf.der().to_vec()
        }
    }

    fn write_atomically(path: &Path, contents: &[u8]) {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, contents).expect("write temp file");
        std::fs::rename(&tmp, path).expect("rename over");
    }

    /// Accepts TLS connections until the test ends; on each, writes one byte
    /// saying whether [`negotiated_h2`] is true.
    async fn serve(acceptor: ReloadingAcceptor) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let h2 = u8::from(negotiated_h2(&tls));
                        let _ = tls.write_all(&[h2]).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    struct Handshake {
        leaf: Vec<u8>,
        client_alpn: Option<Vec<u8>>,
        server_says_h2: bool,
    }

    async fn handshake(pki: &Pki, addr: SocketAddr, alpn: &[&[u8]]) -> io::Result<Handshake> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(pki.ca.der().clone())
            .expect("add CA to root store");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
            .expect("server presented a certificate");
        let client_alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        Ok(Handshake {
            leaf,
            client_alpn,
            server_says_h2: byte[0] == 1,
        })
    }

    /// Polls `check` until it is true or the deadline passes.
    async fn eventually<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + DEADLINE;
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn tls_handshake_alpn_rotation_and_bad_key() {
        let pki = Pki::new();
        let first = pki.issue("leaf-one", 1);
        let acceptor = ReloadingAcceptor::start(pki.cert_path(), pki.key_path(), POLL)
            .expect("start acceptor");
        let addr = serve(acceptor.clone()).await;

        // Handshake with the test CA as the only root; ALPN follows the offer.
        let h = handshake(&pki, addr, &[b"h2", b"http/1.1"])
            .await
            .expect("handshake offering h2");
        assert_eq!(h.leaf, first);
        assert_eq!(h.client_alpn.as_deref(), Some(ALPN_H2));
        assert!(h.server_says_h2);

        let h = handshake(&pki, addr, &[b"http/1.1"])
            .await
            .expect("handshake offering http/1.1");
        assert_eq!(h.client_alpn.as_deref(), Some(ALPN_HTTP11));
        assert!(!h.server_says_h2);

        let h = handshake(&pki, addr, &[])
            .await
            .expect("handshake without ALPN");
        assert_eq!(h.client_alpn, None);
        assert!(!h.server_says_h2);
        assert_eq!(acceptor.reloads(), 0);

        // Rotate: new key and leaf, each renamed into place.
        let second = pki.issue("leaf-two", 2);
        assert_ne!(first, second);
        eventually("the rotated certificate to be served", || async {
            matches!(handshake(&pki, addr, &[b"h2"]).await, Ok(h) if h.leaf == second)
        })
        .await;
        assert!(acceptor.reloads() >= 1);

        // A garbage key: the reload fails, is counted, the old cert serves on.
        let failures = acceptor.reload_failures();
        write_atomically(
            &pki.key_path(),
            b"-----BEGIN PRIVATE KEY-----\nnot base64!\n",
        );
        eventually("the bad key to be noticed", || async {
            acceptor.reload_failures() > failures
        })
        .await;
        let h = handshake(&pki, addr, &[b"h2"])
            .await
            .expect("handshake after a failed reload");
        assert_eq!(h.leaf, second);

        // reload_now fails the same way and counts once more.
        let failures = acceptor.reload_failures();
        let reloads = acceptor.reloads();
        let err = acceptor
            .reload_now()
            .expect_err("reload_now with a bad key");
        assert!(err.to_string().contains("tls_key"), "{err}");
        assert_eq!(acceptor.reload_failures(), failures + 1);
        assert_eq!(acceptor.reloads(), reloads);

        // Fixing the files recovers.
        let third = pki.issue("leaf-three", 3);
        acceptor.reload_now().expect("reload_now with good files");
        let h = handshake(&pki, addr, &[b"h2"]).await.expect("handshake");
        assert_eq!(h.leaf, third);
    }

    /// The watcher's decision, driven by hand: the task itself polls only
    /// once an hour here, so it cannot interfere.
    #[tokio::test]
    async fn tls_poll_reloads_on_change_and_reports_a_failure_once() {
        let pki = Pki::new();
        pki.issue("leaf", 1);
        let acceptor =
            ReloadingAcceptor::start(pki.cert_path(), pki.key_path(), Duration::from_secs(3600))
                .expect("start acceptor");
        let state = &acceptor.inner.state;

        state.poll_once();
        assert_eq!((acceptor.reloads(), acceptor.reload_failures()), (0, 0));

        write_atomically(&pki.key_path(), b"garbage");
        state.poll_once();
        state.poll_once();
        assert_eq!((acceptor.reloads(), acceptor.reload_failures()), (0, 1));

        pki.issue("leaf-two", 2);
        state.poll_once();
        state.poll_once();
        assert_eq!((acceptor.reloads(), acceptor.reload_failures()), (1, 1));

        std::fs::remove_file(pki.cert_path()).expect("remove cert");
        state.poll_once();
        state.poll_once();
        assert_eq!((acceptor.reloads(), acceptor.reload_failures()), (1, 2));
    }

    #[tokio::test]
    async fn tls_start_fails_naming_a_missing_file() {
        let pki = Pki::new();
        pki.issue("leaf", 1);
        let missing = pki.dir.path().join("nope.crt");
        let err = ReloadingAcceptor::start(missing.clone(), pki.key_path(), POLL)
            .expect_err("missing cert");
        assert!(
            matches!(
                err,
                TlsError::Read {
                    field: "tls_cert",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );

        let missing = pki.dir.path().join("nope.key");
        let err = ReloadingAcceptor::start(pki.cert_path(), missing.clone(), POLL)
            .expect_err("missing key");
        assert!(err.to_string().starts_with("tls_key "), "{err}");
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );

        let err = ReloadingAcceptor::start(pki.cert_path(), pki.key_path(), Duration::ZERO)
            .expect_err("zero poll");
        assert!(matches!(err, TlsError::ZeroPoll), "{err:?}");
    }

    #[test]
    fn tls_start_outside_a_runtime_is_an_error_not_a_panic() {
        let pki = Pki::new();
        pki.issue("leaf", 1);
        let err = ReloadingAcceptor::start(pki.cert_path(), pki.key_path(), POLL)
            .expect_err("no runtime");
        assert!(matches!(err, TlsError::NoRuntime), "{err:?}");
    }

    #[test]
    fn tls_load_errors_name_the_file_and_the_fix() {
        let pki = Pki::new();
        pki.issue("leaf", 1);

        // The certificate where the key should be.
        let err = load_server_config(&pki.cert_path(), &pki.cert_path()).expect_err("no key");
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&*pki.cert_path().to_string_lossy()), "{msg}");
        assert!(msg.contains("'PRIVATE KEY'"), "{msg}");

        // The key where the certificate should be.
        let err = load_server_config(&pki.key_path(), &pki.key_path()).expect_err("no cert");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("'CERTIFICATE'"), "{err}");

        // A truncated certificate, as a half-finished write leaves it.
        let pem = std::fs::read_to_string(pki.cert_path()).expect("read cert");
        let half = pki.dir.path().join("half.crt");
        std::fs::write(&half, &pem[..pem.len() / 2]).expect("write half");
        let err = load_server_config(&half, &pki.key_path()).expect_err("half cert");
        assert!(
            matches!(
                err,
                TlsError::Pem {
                    field: "tls_cert",
                    ..
                }
            ),
            "{err:?}"
        );

        // A key that belongs to another certificate.
        let other = KeyPair::generate().expect("other key");
        let other_path = pki.dir.path().join("other.key");
        std::fs::write(&other_path, other.serialize_pem()).expect("write other key");
        let err = load_server_config(&pki.cert_path(), &other_path).expect_err("mismatch");
        assert!(matches!(err, TlsError::Rejected { .. }), "{err:?}");

        // And the good pair loads, with both ALPN ids in preference order.
        let config = load_server_config(&pki.cert_path(), &pki.key_path()).expect("load");
        assert_eq!(
            config.alpn_protocols,
            vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
        );
    }

    #[tokio::test]
    async fn tls_watcher_ends_with_the_last_handle() {
        let pki = Pki::new();
        pki.issue("leaf", 1);
        let acceptor = ReloadingAcceptor::start(pki.cert_path(), pki.key_path(), POLL)
            .expect("start acceptor");
        let clone = acceptor.clone();
        let state: Weak<State<ServerConfig>> = Arc::downgrade(&acceptor.inner.state);
        drop(acceptor);
        // One handle left: the watcher still runs and still reloads.
        pki.issue("leaf-two", 2);
        eventually("a reload through the remaining handle", || async {
            clone.reloads() >= 1
        })
        .await;
        drop(clone);
        // The task held the last strong reference; it is gone once the task is.
        eventually("the watcher task to end", || async {
            state.upgrade().is_none()
        })
        .await;
    }
}
