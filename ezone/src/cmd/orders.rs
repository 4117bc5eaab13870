//! `ezone orders`: the sample order service (docs/orders.md).
//!
//! - `ezone orders install --dsn DSN`: the orders table, the fence schema and
//!   the fence trigger on it, idempotently; prints one line saying what it did.
//! - `ezone orders serve --config orders.toml`: runs the service until SIGTERM
//!   or SIGINT, then finishes in-flight requests. Once listening it prints one
//!   JSON line, `{"listen":"127.0.0.1:PORT","site":"beijing"}`, so port 0
//!   works; logs go to stderr.

use std::path::PathBuf;

use anyhow::Context;
use ezone_orders::config::{redact_dsn, OrdersConfig};
use ezone_orders::schema;
use ezone_orders::RunningOrders;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, clap::Subcommand)]
pub enum OrdersCommand {
    /// Create the orders table and put the fence on it (idempotent).
    Install {
        /// The site's Postgres (libpq key=value DSN).
        #[arg(long)]
        dsn: String,
    },
    /// Run the order service.
    Serve {
        /// The service's TOML config file.
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
}

pub async fn run(c: OrdersCommand) -> anyhow::Result<()> {
    match c {
        OrdersCommand::Install { dsn } => {
            let shown = redact_dsn(&dsn);
            let client = ezone_pg::connect_spawned(&dsn)
                .await
                .with_context(|| format!("connecting to {shown}"))?;
            let done = schema::install(&client)
                .await
                .with_context(|| format!("at {shown}"))?;
            println!("orders: {done}");
            Ok(())
        }
        OrdersCommand::Serve { config } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("cannot read orders config {}", config.display()))?;
            let cfg = OrdersConfig::from_toml(&text)
                .with_context(|| format!("in {}", config.display()))?;
            let mut term =
                signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
            let mut int =
                signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
            let running = RunningOrders::start(cfg).await?;
            println!(
                "{}",
                serde_json::json!({"listen": running.addr.to_string(), "site": running.site})
            );
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!(site = %running.site, "Shutting down: finishing in-flight requests.");
            running.shutdown().await;
            Ok(())
        }
    }
}
