//! Readiness of a bench target: poll until a real request through it gets a
//! 200, or its process exits, or a deadline passes.
//!
//! An open port is not enough: the ezone router listens before it may have a
//! topology (then it answers 503), and nginx answers 502 until its upstream
//! does. So the probe sends the very request wrk will send (`GET /` with the
//! routing header) and waits for a 200. It speaks just enough HTTP/1.1 to
//! read a status line, over a fresh connection each time (`Connection:
//! close`), so it needs no HTTP client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use ezone_chaos::process::ChildProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Pause between probes.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// One probe's own deadline (connect, send, read the status line).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most response bytes read to find the status line.
const MAX_HEAD: usize = 1024;

/// The status code of one `GET /` with `X-City-Id: city`.
pub async fn get_status(addr: SocketAddr, city: &str) -> Result<u16, String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nX-City-Id: {city}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::with_capacity(MAX_HEAD);
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') && buf.len() < MAX_HEAD {
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        parse_status_line(&buf)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// The status code of an HTTP/1.x response head.
fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/1.") => Ok(code),
        _ if line.is_empty() => Err("connection closed without a response".to_string()),
        _ => Err(format!("not an HTTP/1.x status line: {line:?}")),
    }
}

/// Polls `addr` until it answers 200; fails early, with the log's tail, if
/// `process` exits, and after `within` with the last probe's outcome.
pub async fn wait_ready(
    process: &ChildProcess,
    addr: SocketAddr,
    city: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut last;
    loop {
        if let Some(status) = process.exit_status() {
            bail!(
                "{} exited during start-up ({status}): {}",
                process.name(),
                one_line(&process.log_tail())
            );
        }
        last = match get_status(addr, city).await {
            Ok(200) => return Ok(()),
            Ok(code) => format!("answered {code}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!(
                "{} at {addr} did not answer GET / with 200 within {within:?} (last: {last}); its log {}: {}",
                process.name(),
                process.log_path().display(),
                one_line(&process.log_tail())
            );
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// A log tail folded onto one line and bounded, for a table cell or an error.
pub fn one_line(text: &str) -> String {
    const MAX: usize = 400;
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    if joined.chars().count() <= MAX {
        return joined;
    }
    let cut: String = joined.chars().take(MAX).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nx"),
            Ok(503)
        );
        assert!(parse_status_line(b"").is_err());
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc\r\n").is_err());
    }

    #[test]
    fn one_line_folds_and_bounds() {
        assert_eq!(one_line("a\n\n  b  \nc"), "a | b | c");
        let long = "x".repeat(1000);
        assert_eq!(one_line(&long).chars().count(), 403);
    }
}
