//! The processes' logs: `--log-format json` (or `EZONE_LOG_FORMAT`) writes
//! one JSON object a line on stderr, the filter comes from `RUST_LOG` or its
//! alias `EZONE_LOG` (`RUST_LOG` wins), nothing is coloured when stderr is a
//! pipe, and stdout keeps only the ready line.
//!
//! Each test runs `ezone router` on a one-site file topology, reads its
//! ready line, stops it with SIGTERM and reads everything it wrote on stderr.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ezone_chaos::ports::free_port;
use ezone_tests::ezone_bin;
use ezone_topology::starter::starter;

/// What a router run wrote.
struct Run {
    /// The first stdout line (the ready line).
    ready: String,
    /// Everything else on stdout.
    rest_of_stdout: String,
    stderr: Vec<u8>,
}

impl Run {
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs `ezone ARGS --config FILE` (ARGS hold `router`) with `env` set (and every logging
/// variable not in `env` removed), waits for the ready line, sends SIGTERM
/// and collects the output.
fn run_router(args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let mut t = starter(&["beijing"], 1);
    let s = t.sites.get_mut("beijing").expect("site");
    s.router = format!("127.0.0.1:{port}");
    s.upstreams = vec!["127.0.0.1:1".into()];
    let topology = dir.path().join("topology.json");
    let doc = ezone_topology::doc::TopologyDoc::from(&t);
    std::fs::write(&topology, serde_json::to_string(&doc).expect("json")).expect("write");
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"beijing\"\n[listen]\nhttp = \"127.0.0.1:{port}\"\n[topology]\nfile = {:?}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            topology.display().to_string()
        ),
    )
    .expect("write config");

    let mut cmd = Command::new(ezone_bin());
    cmd.args(args)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in ["RUST_LOG", "EZONE_LOG", "EZONE_LOG_FORMAT", "NO_COLOR"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ezone router");
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut ready = String::new();
    let _ = stdout.read_line(&mut ready);

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    let mut rest_of_stdout = String::new();
    let _ = stdout.read_to_string(&mut rest_of_stdout);
    let stderr = stderr_reader.join().expect("stderr reader");
    let run = Run {
        ready,
        rest_of_stdout,
        stderr,
    };
    assert!(
        serde_json::from_str::<serde_json::Value>(&run.ready).is_ok_and(|v| v["http"].is_string()),
        "the ready line: {:?}\nstderr:\n{}",
        run.ready,
        run.stderr_text()
    );
    assert_eq!(run.rest_of_stdout, "", "stdout holds only the ready line");
    run
}

/// Every stderr line as JSON, checked for the fields of tracing-subscriber's
/// JSON layout.
fn json_lines(run: &Run) -> Vec<serde_json::Value> {
    let text = run.stderr_text();
    assert!(!text.trim().is_empty(), "no log lines at all");
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nstderr:\n{text}"));
            assert!(v["level"].is_string(), "no level: {line}");
            assert!(v["fields"]["message"].is_string(), "no message: {line}");
            assert!(v["timestamp"].is_string(), "no timestamp: {line}");
            assert!(v["target"].is_string(), "no target: {line}");
            v
        })
        .collect()
}

fn messages(lines: &[serde_json::Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|v| {
            (
                v["level"].as_str().unwrap_or_default().to_string(),
                v["fields"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn has(msgs: &[(String, String)], level: &str, message: &str) -> bool {
    msgs.iter().any(|(l, m)| l == level && m == message)
}

#[test]
fn json_lines_on_stderr_with_rust_log() {
    let run = run_router(&["--log-format", "json", "router"], &[("RUST_LOG", "info")]);
    assert!(!run.stderr.contains(&0x1b), "{}", run.stderr_text());
    let msgs = messages(&json_lines(&run));
    assert!(has(&msgs, "INFO", "Router listening."), "{msgs:?}");
    assert!(
        has(&msgs, "INFO", "Shutting down: draining in-flight requests."),
        "{msgs:?}"
    );
}

#[test]
fn the_format_option_also_works_after_the_subcommand_and_from_the_environment() {
    let run = run_router(
        &["router"],
        &[("EZONE_LOG_FORMAT", "json"), ("EZONE_LOG", "info")],
    );
    let msgs = messages(&json_lines(&run));
    assert!(has(&msgs, "INFO", "Router listening."), "{msgs:?}");

    // The option is global (after the subcommand too) and wins over the
    // variable.
    let run = run_router(
        &["router", "--log-format", "json"],
        &[("EZONE_LOG_FORMAT", "text"), ("RUST_LOG", "info")],
    );
    let msgs = messages(&json_lines(&run));
    assert!(has(&msgs, "INFO", "Router listening."), "{msgs:?}");
}

#[test]
fn ezone_log_alone_is_the_filter_and_text_has_no_colours_in_a_pipe() {
    let run = run_router(&["router"], &[("EZONE_LOG", "info")]);
    let text = run.stderr_text();
    assert!(!run.stderr.contains(&0x1b), "{text:?}");
    let line = text
        .lines()
        .find(|l| l.contains("Router listening."))
        .unwrap_or_else(|| panic!("no info line:\n{text}"));
    assert!(line.contains(" INFO "), "{line}");
}

#[test]
fn rust_log_wins_over_ezone_log() {
    let run = run_router(
        &["--log-format", "json", "router"],
        &[("RUST_LOG", "warn"), ("EZONE_LOG", "info")],
    );
    // "Router listening." is logged before the ready line is printed.
    let text = run.stderr_text();
    assert!(!text.contains("Router listening."), "{text}");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        assert!(
            matches!(v["level"].as_str(), Some("WARN" | "ERROR")),
            "{line}"
        );
    }
}

#[test]
fn an_invalid_filter_is_said_once_and_the_default_used() {
    let run = run_router(&["router"], &[("RUST_LOG", "ezone_router=loud")]);
    let text = run.stderr_text();
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("ezone: RUST_LOG=\"ezone_router=loud\" is not a valid log filter")
            && first.ends_with("using \"warn\" instead"),
        "{text}"
    );
    assert_eq!(text.matches("not a valid log filter").count(), 1, "{text}");
    assert!(!text.contains("Router listening."), "{text}");
}

/// The cause chain the replicator and the order service log: a Postgres
/// error's SQLSTATE and message, which `tokio_postgres::Error`'s own text
/// ("db error") leaves out, and the socket error under a failed connect.
#[tokio::test]
async fn error_chains_carry_the_sqlstate_and_the_cause() {
    use ezone_replicator::chain;

    let port = free_port().expect("port");
    let refused = ezone_pg::connect(&format!(
        "host=127.0.0.1 port={port} user=ezone dbname=ezone connect_timeout=5"
    ))
    .await
    .err()
    .expect("nothing listens there");
    let text = chain(&refused);
    assert!(
        text.starts_with("error connecting to server: ") && text.len() > 28,
        "{text}"
    );

    let pg = ezone_chaos::postgres::PgCluster::start("logging")
        .await
        .expect("pg");
    let (client, conn) = ezone_pg::connect(&pg.dsn("ezone")).await.expect("connect");
    let conn = tokio::spawn(conn);
    let e = client
        .simple_query("SELECT * FROM no_such_table")
        .await
        .expect_err("no such table");
    assert_eq!(e.to_string(), "db error");
    assert_eq!(
        chain(&e),
        "db error: SQLSTATE 42P01: relation \"no_such_table\" does not exist"
    );
    let fence = ezone_replicator::fence::FenceError {
        target: "logging".into(),
        what: "reading the shard fences".into(),
        source: e,
    };
    assert_eq!(
        chain(&fence),
        "fence at logging: reading the shard fences: db error: \
         SQLSTATE 42P01: relation \"no_such_table\" does not exist"
    );
    drop(client);
    let _ = conn.await;
}
