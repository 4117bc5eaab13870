//! `ezone fence`: install the database fence on a site's Postgres and keep it
//! in line with the topology (see `replicator/src/fence.rs` for what it does).

use anyhow::{anyhow, Context};
use ezone_replicator::fence::{
    install_schema, install_table_sql, lease_until, reconcile, renew_lease, FenceKey,
};
use ezone_topology::{TopologyStore, Watcher};

use crate::cmd::redact::redact_dsn;
use crate::cmd::topo::StoreArgs;

#[derive(Debug, clap::Subcommand)]
pub enum FenceCommand {
    /// Put the fence on a table (one command per table; idempotent).
    Install {
        /// The site's Postgres (libpq key=value DSN).
        #[arg(long)]
        dsn: String,
        /// `schema.table`.
        #[arg(long)]
        table: String,
        /// The table's shard key column.
        #[arg(long)]
        column: String,
        /// What the column holds: a city id (mapped through the routing table's
        /// cities), a user id (mapped through the user hash over user_shards) or a
        /// shard id.
        #[arg(long, value_enum, default_value = "city")]
        key: KeyArg,
    },
    /// Reconcile the site's fence from the topology (once, or on every change with --watch).
    Sync {
        #[command(flatten)]
        store: StoreArgs,
        /// The site's Postgres.
        #[arg(long)]
        dsn: String,
        /// The site this Postgres belongs to.
        #[arg(long)]
        site: String,
        /// Keep following the topology.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeyArg {
    City,
    Shard,
    User,
}

async fn connect(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    ezone_pg::connect_spawned(dsn)
        .await
        .with_context(|| format!("connecting to {}", redact_dsn(dsn)))
}

pub async fn run(c: FenceCommand) -> anyhow::Result<()> {
    // The errors name the DSN (the fence's own errors carry it as their
    // target): never with its password.
    run_inner(c)
        .await
        .map_err(|e| anyhow!(super::redact::describe(&e)))
}

async fn run_inner(c: FenceCommand) -> anyhow::Result<()> {
    match c {
        FenceCommand::Install {
            dsn,
            table,
            column,
            key,
        } => {
            let client = connect(&dsn).await?;
            install_schema(&client, &dsn).await?;
            let key = match key {
                KeyArg::City => FenceKey::City,
                KeyArg::Shard => FenceKey::Shard,
                KeyArg::User => FenceKey::User,
            };
            client
                .batch_execute(&install_table_sql(&table, &column, key))
                .await
                .with_context(|| format!("installing the fence trigger on {table}"))?;
            println!(
                "fence installed on {table} (shard key column {column}, {})",
                key.as_str()
            );
            Ok(())
        }
        FenceCommand::Sync {
            store,
            dsn,
            site,
            watch,
        } => {
            let store = store.open().await?;
            let mut client = connect(&dsn).await?;
            install_schema(&client, &dsn).await?;
            let by = format!("ezone fence sync (pid {})", std::process::id());
            let watcher = watch.then(|| Watcher::start(store.clone()));
            let mut rx = watcher.as_ref().map(|w| w.subscribe());
            loop {
                // A quorum read each time: the lease vouches for it.
                let read_at = std::time::SystemTime::now();
                let snap = store.load().await?;
                let closed = reconcile(&mut client, &dsn, &snap.topology, &site).await?;
                let until = lease_until(&snap.topology.settings, read_at);
                renew_lease(&client, &dsn, until, &by).await?;
                let lease = match until {
                    Some(t) => format!(
                        "lease for {} ms",
                        t.duration_since(read_at).unwrap_or_default().as_millis()
                    ),
                    None => "no lease (fence_lease_ms = 0)".to_string(),
                };
                println!(
                    "fence of {site} at topology version {}: closed {closed:?}; {lease}",
                    snap.version
                );
                let Some(rx) = rx.as_mut() else {
                    if until.is_some() {
                        eprintln!(
                            "note: {site} refuses writes once this lease lapses, unless its replicator (fence = true) \
                             or `ezone fence sync --watch` keeps renewing it"
                        );
                    }
                    return Ok(());
                };
                let every = snap.topology.settings.fence_renew_every();
                tokio::select! {
                    r = rx.changed() => r.context("the topology watcher stopped")?,
                    _ = tokio::time::sleep(every) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
    }
}
