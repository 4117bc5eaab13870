//! `ezone router --config router.toml`: run the edge router until SIGTERM or
//! SIGINT, then drain in-flight requests (up to `timeouts.drain_ms`).
//!
//! Once listening it prints one JSON line with the bound addresses, e.g.
//! `{"http":"127.0.0.1:8080","https":null,"admin":"127.0.0.1:9901"}`, so that
//! scripts and tests can use port 0.

use std::path::PathBuf;

use anyhow::Context;
use ezone_router::config::RouterConfig;
use ezone_router::server::RunningRouter;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, clap::Args)]
pub struct RouterArgs {
    /// The router's TOML config file.
    #[arg(long, short = 'c')]
    config: PathBuf,
}

pub async fn run(args: RouterArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read router config {}", args.config.display()))?;
    let cfg =
        RouterConfig::from_toml(&text).with_context(|| format!("in {}", args.config.display()))?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let running = RunningRouter::start(cfg).await?;
    println!(
        "{}",
        serde_json::json!({
            "http": running.http.map(|a| a.to_string()),
            "https": running.https.map(|a| a.to_string()),
            "admin": running.admin.map(|a| a.to_string()),
            "peer": running.peer.map(|a| a.to_string()),
        })
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("Shutting down: draining in-flight requests.");
    running.shutdown().await;
    Ok(())
}
