//! Helpers shared by the end-to-end tests in `tests/tests/`: where the built
//! `ezone` binary is, and polling with a deadline instead of sleeping.

use std::path::PathBuf;
use std::time::Duration;

/// The `ezone` binary built from this workspace (`cargo build -p ezone` first;
/// `make test` does). `EZONE_BIN` overrides.
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

pub mod router;
pub mod upstream;
