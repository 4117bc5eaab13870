//! `ezone replicator --config replicator.toml`: apply every other site's
//! changes into this site's Postgres until SIGTERM/SIGINT, or until a link
//! stops with an error an operator must fix (then exit non-zero, naming it).
//!
//! Once running it prints one JSON line: `{"links": [...], "admin": ...}`.

use std::path::PathBuf;

use anyhow::Context;
use ezone_replicator::config::ReplicatorConfig;
use ezone_replicator::service::Service;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, clap::Args)]
pub struct ReplicatorArgs {
    /// The replicator's TOML config file.
    #[arg(long, short = 'c')]
    config: PathBuf,
}

/// Reads and checks the config. `main` reads it before the runtime starts,
/// since its `worker_threads` sizes the runtime.
pub fn load(args: &ReplicatorArgs) -> anyhow::Result<ReplicatorConfig> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read replicator config {}", args.config.display()))?;
    ReplicatorConfig::from_toml(&text).with_context(|| format!("in {}", args.config.display()))
}

pub async fn run(cfg: ReplicatorConfig) -> anyhow::Result<()> {
    // Failpoints from FAILPOINTS (the chaos suite's tests plant a bug with
    // them; unset, nothing changes).
    // FAILPOINTS=... (a build with the `failpoints` feature only).
    #[cfg(feature = "failpoints")]
    let _scenario = fail::FailScenario::setup();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut service = Service::start(cfg).await?;
    println!(
        "{}",
        serde_json::json!({
            "links": service.links.names(),
            "admin": service.admin.map(|a| a.to_string()),
        })
    );
    let failed = tokio::select! {
        _ = term.recv() => None,
        _ = int.recv() => None,
        f = service.wait_failure() => f,
    };
    service.shutdown().await;
    match failed {
        Some((part, e)) => Err(anyhow::anyhow!("{part} stopped: {e}")),
        None => Ok(()),
    }
}
