//! The ensemble's long-running processes (`ezone orders serve`, `ezone
//! router`, `ezone replicator`): started with a config file, stdout to a
//! file of its own (where each prints one JSON ready line with its bound
//! addresses), stderr to a log; killed, paused, resumed and restarted with
//! the same config.
//!
//! Restart is [`ChildProcess::restart`], with its caveat: the child is tied
//! to the calling thread, so call it from a test's thread or a runtime
//! worker, never from `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::error::EnsembleError;
use crate::clock::SiteClock;
use crate::process::{self, ChildProcess, ProcessSpec, Supervision};

/// How often a ready file is polled.
const POLL: Duration = Duration::from_millis(20);

/// How to run one ezone subcommand.
#[derive(Debug, Clone)]
pub(crate) struct Launch<'a> {
    /// Human name: `router beijing`.
    pub name: String,
    pub bin: &'a Path,
    /// The subcommand words (`["orders", "serve"]`).
    pub command: &'a [&'a str],
    /// The directory for its config, log and ready file.
    pub dir: &'a Path,
    /// File stem: `router` gives `router.toml`, `router.log`, `router.out`.
    pub stem: &'a str,
    /// `RUST_LOG` of the process.
    pub log_filter: &'a str,
    pub supervision: Supervision,
    pub ready_timeout: Duration,
    /// The site's clock, when the lab skews clocks: the process runs under
    /// libfaketime reading the site's offset file ([`crate::clock`]).
    pub clock: Option<&'a SiteClock>,
    /// The site's network namespace, when it is a host of its own
    /// ([`crate::netns`]).
    pub netns: Option<PathBuf>,
}

impl Launch<'_> {
    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.join(format!("{}.toml", self.stem))
    }
}

/// A running service process and where its ready line appears.
#[derive(Debug)]
pub(crate) struct Service {
    process: ChildProcess,
    config: PathBuf,
    ready_file: PathBuf,
    ready_timeout: Duration,
}

impl Service {
    /// Start the process on the config already written at
    /// [`Launch::config_path`]. Returns at once: see [`Service::ready`].
    pub(crate) fn spawn(l: &Launch<'_>) -> Result<Service, EnsembleError> {
        let config = l.config_path();
        let ready_file = l.dir.join(format!("{}.out", l.stem));
        let spec = ProcessSpec::new(&l.name, l.bin, l.dir, &format!("{}.log", l.stem))
            .args(l.command.iter().copied())
            .arg("--config")
            .arg(&config)
            // RUST_LOG, not EZONE_LOG: a RUST_LOG inherited from whoever
            // started the ensemble would win over EZONE_LOG (and this wins
            // over both).
            .env("RUST_LOG", l.log_filter)
            .stdout_file(ready_file.clone())
            .netns(l.netns.clone())
            .supervision(l.supervision);
        let spec = spec.clock(l.clock);
        let process = ChildProcess::spawn(spec)?;
        Ok(Service {
            process,
            config,
            ready_file,
            ready_timeout: l.ready_timeout,
        })
    }

    pub(crate) fn config_path(&self) -> &Path {
        &self.config
    }

    pub(crate) fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// Wait for the process's one JSON ready line and parse it.
    pub(crate) async fn ready<T: DeserializeOwned>(&self) -> Result<T, EnsembleError> {
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            let text = std::fs::read_to_string(&self.ready_file).unwrap_or_default();
            if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
                return serde_json::from_str(line).map_err(|e| {
                    self.error(format!(
                        "its ready line {line:?} is not the expected JSON: {e}"
                    ))
                });
            }
            if let Some(status) = self.process.exit_status() {
                return Err(self.error(format!("it exited during startup ({status})")));
            }
            if Instant::now() >= deadline {
                return Err(self.error(format!(
                    "it printed no ready line within {:?}",
                    self.ready_timeout
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Kill -9 (the process and anything it started).
    pub(crate) fn kill(&self) -> Result<(), EnsembleError> {
        Ok(self.process.kill()?)
    }

    /// SIGSTOP: it keeps its sockets but stops answering.
    pub(crate) fn pause(&self) -> Result<(), EnsembleError> {
        Ok(self.process.pause()?)
    }

    /// SIGCONT.
    pub(crate) fn resume(&self) -> Result<(), EnsembleError> {
        Ok(self.process.resume()?)
    }

    /// Kill (if running) and start again with the same config; waits for the
    /// ready line and returns it.
    pub(crate) async fn restart<T: DeserializeOwned>(&self) -> Result<T, EnsembleError> {
        self.process.restart()?;
        self.ready().await
    }

    /// An error about this process, with its log's tail.
    pub(crate) fn error(&self, message: String) -> EnsembleError {
        EnsembleError::Process {
            name: self.process.name().to_string(),
            message,
            log: self.process.log_path().to_path_buf(),
            tail: self.process.log_tail(),
        }
    }
}

/// Run a one-shot subcommand to completion (`ezone orders install`).
pub(crate) async fn run_once(
    name: String,
    bin: &Path,
    args: &[String],
    dir: &Path,
    log_name: &str,
    supervision: Supervision,
    timeout: Duration,
) -> Result<(), EnsembleError> {
    let spec = ProcessSpec::new(name, bin, dir, log_name)
        .args(args.iter().cloned())
        .supervision(supervision);
    process::run_to_completion(spec, timeout).await?;
    Ok(())
}
