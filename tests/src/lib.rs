//! Helpers shared by the end-to-end tests in `tests/tests/`: where the built
//! `ezone` binary is, and polling with a deadline instead of sleeping.

use std::path::PathBuf;
use std::time::Duration;

/// The `ezone` binary built from this workspace (`cargo build -p ezone` first;
/// `make test` does). `EZONE_BIN` overrides.
/// Runs `ezone ARGS ETCD_ARGS` (`--etcd ENDPOINTS` and, for an etcd with
/// TLS, its flags: `Ensemble::etcd_cli_args`) with stdin closed and
/// `RUST_LOG` set (never the caller's), and waits for it (at most 90 s).
pub async fn ezone_against(
    etcd_args: &[String],
    args: &[&str],
    rust_log: &str,
) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(ezone_bin())
            .args(args)
            .args(etcd_args)
            .env("RUST_LOG", rust_log)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("finished within 90 s")
    .expect("run ezone")
}

/// Panics, saying how to fix it, unless the `ezone` binary was built with
/// failpoints (`FAILPOINTS=...`), which the calling test needs.
pub fn require_failpoints() {
    let out = std::process::Command::new(ezone_bin())
        .arg("--version")
        .output()
        .expect("run ezone --version");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains("(failpoints)"),
        "this test needs an ezone built with failpoints ({} says {:?}): run `make test`, or build with \
         `cargo build --workspace --bins --features ezone/failpoints`",
        ezone_bin().display(),
        version.trim()
    );
}

pub fn ezone_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EZONE_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug").join("ezone");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p ezone` (make test does)",
        bin.display()
    );
    bin
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`
/// with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An `ezone` process started with a config file, whose first stdout line
/// (JSON) says it is ready and where it listens; killed when dropped.
pub struct Configured {
    pub child: std::process::Child,
    /// The ready line.
    pub ready: serde_json::Value,
    _dir: tempfile::TempDir,
}

impl Configured {
    /// Writes `config` to `file` in a temp dir, runs `ezone ARGS --config
    /// FILE`, and waits for the ready line (panics with it if it is not JSON).
    pub fn start(args: &[&str], file: &str, config: &str) -> Configured {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(file);
        std::fs::write(&path, config).expect("write config");
        let mut child = std::process::Command::new(ezone_bin())
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("EZONE_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ezone {args:?}: {e}"));
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let ready = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!("ezone {args:?} did not start: {line:?} {status:?}");
            }
        };
        Configured {
            child,
            ready,
            _dir: dir,
        }
    }

    /// A socket address from the ready line.
    pub fn addr(&self, key: &str) -> Option<std::net::SocketAddr> {
        self.ready[key].as_str().and_then(|s| s.parse().ok())
    }
}

impl Drop for Configured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub mod router;
pub mod upstream;
