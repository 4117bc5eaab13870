//! `ezone topo`: write, show, validate and watch the topology, and hold an
//! operator lock around a command. Every subcommand takes `--etcd` (or
//! `EZONE_ETCD`) or `--file`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use ezone_topology::doc::{load_file, TopologyDoc};
use ezone_topology::store::layout::DEFAULT_PREFIX;
use ezone_topology::store::{EtcdAuth, EtcdOptions, EtcdTls};
use ezone_topology::{AnyStore, EtcdStore, FileStore, Snapshot, TopologyStore, Watcher};

/// Where the topology lives.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(
        long,
        env = "EZONE_ETCD",
        value_delimiter = ',',
        conflicts_with = "file"
    )]
    pub etcd: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, env = "EZONE_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// A topology file (TOML or JSON) instead of etcd.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The CA that signed etcd's certificate (PEM): etcd over TLS
    /// (https:// endpoints).
    #[arg(long, env = "EZONE_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// This client's certificate for etcd (PEM), when etcd asks for one
    /// (`--client-cert-auth`); with --etcd-key.
    #[arg(long, env = "EZONE_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long, env = "EZONE_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// An etcd user (etcd with auth enabled). The password comes from
    /// --etcd-password-file, else the environment variable
    /// EZONE_ETCD_PASSWORD, never the command line.
    #[arg(long, env = "EZONE_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// A file whose first line is the etcd user's password.
    #[arg(long, env = "EZONE_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

/// Parses a `--dsn SITE=DSN` override.
pub fn parse_site_dsn(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((site, dsn)) if !site.is_empty() && !dsn.is_empty() => {
            Ok((site.to_string(), dsn.to_string()))
        }
        _ => Err(format!("{s:?}: write SITE=DSN")),
    }
}

impl StoreArgs {
    pub async fn open(&self) -> anyhow::Result<AnyStore> {
        if let Some(file) = &self.file {
            return Ok(AnyStore::File(FileStore::new(file)));
        }
        if self.etcd.is_empty() {
            bail!("no topology store: pass --etcd http://HOST:PORT[,...] (or set EZONE_ETCD), or --file PATH");
        }
        let options = self.etcd_options();
        options.validate()?;
        Ok(AnyStore::Etcd(Box::new(
            EtcdStore::connect_with(&options, &self.prefix).await?,
        )))
    }

    /// How to reach etcd: the endpoints, TLS and the user.
    pub fn etcd_options(&self) -> EtcdOptions {
        let mut options = EtcdOptions::new(&self.etcd);
        if let Some(ca) = &self.etcd_ca {
            let mut tls = EtcdTls::new(ca);
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                tls = tls.with_identity(cert, key);
            }
            options = options.with_tls(tls);
        }
        if let Some(user) = &self.etcd_user {
            options = options.with_auth(EtcdAuth::new(user, self.etcd_password_file.clone()));
        }
        options
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum TopoCommand {
    /// Write a topology file into the store (refuses to overwrite without --force).
    Init {
        #[command(flatten)]
        store: StoreArgs,
        /// The topology file (TOML if it ends in .toml, JSON otherwise).
        #[arg(short = 'f', long = "from")]
        from: PathBuf,
        /// Replace an existing topology (epochs may still not go backwards).
        #[arg(long)]
        force: bool,
    },
    /// Show the topology in use: a table, or --json.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// Print the topology document as JSON.
        #[arg(long)]
        json: bool,
        /// Print DSN passwords as stored (by default each is `***`; a
        /// document with `***` in it is refused by `topo init`).
        #[arg(long)]
        reveal_secrets: bool,
    },
    /// Check a topology file without writing it anywhere.
    Validate {
        /// The topology file.
        file: PathBuf,
    },
    /// Print each new version of the topology as it arrives (Ctrl-C to stop).
    Watch {
        #[command(flatten)]
        store: StoreArgs,
        /// Print each version as one line of JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hold the operator lock NAME while running a command.
    Lock {
        #[command(flatten)]
        store: StoreArgs,
        /// The lock's name, e.g. `shard-7`.
        name: String,
        /// Lease time to live: how long the lock outlives a holder that died.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Who holds it (shown to anyone refused).
        #[arg(long, env = "USER", default_value = "operator")]
        holder: String,
        /// The command to run while holding the lock.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

pub async fn run(c: TopoCommand) -> anyhow::Result<()> {
    match c {
        TopoCommand::Init { store, from, force } => {
            let topology = load_file(&from)?;
            ezone_topology::validate::secrets(&topology)
                .map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
            let store = store.open().await?;
            let version = store.init(&topology, force).await?;
            println!(
                "wrote topology from {} to {} at version {version}: {} sites, {} shards, {} cities",
                from.display(),
                store.describe(),
                topology.sites.len(),
                topology.shards.len(),
                topology.routing.cities.len()
            );
            Ok(())
        }
        TopoCommand::Show {
            store,
            json,
            reveal_secrets,
        } => {
            let store = store.open().await?;
            let snap = store.load().await?;
            let doc = if reveal_secrets {
                TopologyDoc::from(&*snap.topology)
            } else {
                redacted_doc(&snap.topology)
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", render_table(&store.describe(), snap.version, &doc));
            }
            Ok(())
        }
        TopoCommand::Validate { file } => {
            let t = load_file(&file)?;
            ezone_topology::validate::secrets(&t)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!(
                "{} is valid: {} sites, {} shards, {} cities, {} user shards",
                file.display(),
                t.sites.len(),
                t.shards.len(),
                t.routing.cities.len(),
                t.routing.user_shards.len()
            );
            Ok(())
        }
        TopoCommand::Watch { store, json } => watch(store.open().await?, json).await,
        TopoCommand::Lock {
            store,
            name,
            ttl,
            holder,
            command,
        } => lock(store.open().await?, &name, ttl, &holder, &command).await,
    }
}

async fn watch(store: AnyStore, json: bool) -> anyhow::Result<()> {
    let watcher = Watcher::start(store);
    let mut rx = watcher.subscribe();
    let mut prev: Option<std::sync::Arc<Snapshot>> = None;
    let mut refused_seen = 0;
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    bail!("the topology watcher stopped");
                }
                let Some(snap) = rx.borrow_and_update().clone() else { continue };
                print_version(prev.as_deref(), &snap, json)?;
                prev = Some(snap);
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                let refused = watcher.stats().refused.load(std::sync::atomic::Ordering::Relaxed);
                if refused != refused_seen {
                    refused_seen = refused;
                    let reason = watcher.last_refusal().unwrap_or_default();
                    if json {
                        println!("{}", serde_json::json!({"refused": reason}));
                    } else {
                        println!("refused a change (still serving the last good version): {reason}");
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The topology as a document, every DSN's password replaced by `***`
/// (what `topo show` and `topo watch` print).
fn redacted_doc(t: &ezone_topology::Topology) -> TopologyDoc {
    let mut doc = TopologyDoc::from(t);
    for site in &mut doc.sites {
        site.postgres = super::redact::redact_dsn(&site.postgres);
    }
    doc
}

fn print_version(prev: Option<&Snapshot>, snap: &Snapshot, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        let line = serde_json::json!({
            "version": snap.version,
            "topology": redacted_doc(&snap.topology),
        });
        writeln!(out, "{line}")?;
    } else {
        match prev {
            None => writeln!(
                out,
                "version {}: {} sites, {} shards",
                snap.version,
                snap.topology.sites.len(),
                snap.topology.shards.len()
            )?,
            Some(p) => {
                let changes = ezone_topology::diff::diff(&p.topology, &snap.topology);
                writeln!(out, "version {}: {}", snap.version, changes.join("; "))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

async fn lock(
    store: AnyStore,
    name: &str,
    ttl: Duration,
    holder: &str,
    command: &[String],
) -> anyhow::Result<()> {
    let mut guard = store.lock(name, holder, ttl).await?;
    let (program, args) = command.split_first().context("no command given after --")?;
    eprintln!("holding lock {name:?}; running {program}");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let status = tokio::select! {
        status = child.wait() => status?,
        _ = guard.lost() => {
            let _ = child.kill().await;
            bail!("lost lock {name:?} (its lease could not be kept alive); stopped {program}");
        }
    };
    guard.release().await?;
    if !status.success() {
        bail!("{program} exited with {status}");
    }
    Ok(())
}

/// The readable table of `ezone topo show` (of the document as given:
/// the caller redacts it).
pub fn render_table(store: &str, version: i64, doc: &TopologyDoc) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "topology version {version} from {store}");
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<12} {:<24} {:<30} POSTGRES",
        "SITE", "ROUTER", "UPSTREAMS"
    );
    for site in &doc.sites {
        let _ = writeln!(
            s,
            "{:<12} {:<24} {:<30} {}",
            site.name,
            site.routers().cloned().collect::<Vec<_>>().join(","),
            site.upstreams.join(","),
            site.postgres
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<6} {:<12} {:<7} {:>6}  CITIES",
        "SHARD", "HOME", "STATE", "EPOCH"
    );
    for shard in &doc.shards {
        let cities: Vec<&str> = doc
            .routing
            .cities
            .iter()
            .filter(|(_, id)| **id == shard.id)
            .map(|(c, _)| c.as_str())
            .collect();
        let _ = writeln!(
            s,
            "{:<6} {:<12} {:<7} {:>6}  {}",
            shard.id,
            shard.home,
            shard.state,
            shard.epoch,
            cities.join(", ")
        );
    }
    let _ = writeln!(s);
    let users: Vec<String> = doc
        .routing
        .user_shards
        .iter()
        .map(|i| i.to_string())
        .collect();
    let _ = writeln!(s, "user shards (jump hash order): {}", users.join(" "));
    let _ = writeln!(
        s,
        "default site for requests without a key: {}",
        doc.settings
            .default_site
            .as_deref()
            .unwrap_or("(the local site)")
    );
    let _ = writeln!(s, "write hold deadline: {} ms", doc.settings.write_hold_ms);
    s
}

/// One site of a lab, as the lab knows it: what the starter topology needs.
#[derive(Debug, Clone)]
pub struct LabSite {
    pub name: String,
    /// libpq DSN of the site's own Postgres.
    pub postgres: String,
}

/// Writes the lab's starter topology (two shards per site, the demo cities)
/// into etcd under the default prefix. Called by `ezone lab up`. Router and
/// upstream addresses are placeholders until the lab runs routers.
pub async fn seed_lab_topology(etcd: &[String], sites: &[LabSite]) -> anyhow::Result<()> {
    let names: Vec<&str> = sites.iter().map(|s| s.name.as_str()).collect();
    let mut topology = ezone_topology::starter::starter(&names, 2);
    for site in sites {
        if let Some(s) = topology.sites.get_mut(&site.name) {
            s.postgres = site.postgres.clone();
        }
    }
    let store = EtcdStore::connect(etcd, DEFAULT_PREFIX).await?;
    store
        .init(&topology, false)
        .await
        .context("writing the lab's starter topology into etcd")?;
    Ok(())
}
