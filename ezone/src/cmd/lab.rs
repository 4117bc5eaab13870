//! `ezone lab`: the local multi-site lab on one machine, left running
//! between commands.
//!
//! - `ezone lab up --dir DIR` starts etcd, one Postgres per site and the WAN
//!   fault proxy (as `ezone chaos proxy serve`) as *detached* processes that
//!   outlive this command, records them in `DIR/lab.json`, writes the
//!   starter topology into etcd, and prints the lab's addresses as JSON.
//! - `ezone lab down --dir DIR` stops what `lab.json` lists (polite signal,
//!   then SIGKILL), checks it is gone, and removes what `up` created.
//! - `ezone lab status --dir DIR` shows what runs.
//!
//! `ezone demo --dir DIR` records its processes in `DIR/lab.json` too (the
//! demo itself, etcd, the postmasters, and each site's router, order service
//! and replicator), marked as keeping its files: `status` lists them, and
//! `down` stops them (the demo first) and removes only `lab.json`, leaving
//! the demo's logs and data.
//!
//! The machinery lives in `ezone_chaos::lab`; this module is the command
//! line around it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ezone_chaos::lab::{Lab, LabError, LabSpec, LabState, ProxyLaunch};
use ezone_chaos::process::{StopOutcome, Supervision};

use crate::cmd::topo::{seed_lab_topology, LabSite};

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Start a lab in DIR (etcd, one Postgres per site, the WAN fault proxy);
    /// it keeps running after this command exits. Prints its addresses as JSON.
    Up(UpArgs),
    /// Stop the lab (or `ezone demo --dir`) in DIR and remove what `up`
    /// created there (a demo's files are kept). Idempotent.
    Down(DownArgs),
    /// Show what the lab in DIR runs.
    Status(StatusArgs),
}

/// The lab directory option shared by every subcommand.
#[derive(Debug, clap::Args)]
pub struct DirArg {
    /// The lab's directory (created if missing): data, logs and lab.json.
    #[arg(
        long,
        env = "EZONE_LAB_DIR",
        default_value = ".ezone-lab",
        value_name = "DIR"
    )]
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Site names, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "beijing,shanghai")]
    sites: Vec<String>,
    #[command(flatten)]
    dir: DirArg,
    /// Number of etcd members: 1 or 3.
    #[arg(long, default_value_t = 1)]
    etcd_members: usize,
    /// Round-trip time of the WAN between sites (half each way), e.g. 30ms.
    #[arg(long, default_value = "30ms", value_parser = humantime::parse_duration)]
    wan_rtt: Duration,
    /// Do not write the starter topology into etcd (for a lab without routers).
    #[arg(long)]
    no_seed: bool,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    dir: DirArg,
    /// How long each process gets to stop on its own before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(c: LabCommand) -> anyhow::Result<()> {
    match c {
        LabCommand::Up(a) => up(a).await,
        LabCommand::Down(a) => down(a).await,
        LabCommand::Status(a) => status(a),
    }
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(dir)
        .with_context(|| format!("cannot resolve lab directory {}", dir.display()))
}

async fn up(a: UpArgs) -> anyhow::Result<()> {
    let dir = absolute(&a.dir.dir)?;
    let exe = std::env::current_exe()
        .context("cannot find this ezone binary to run the fault proxy with")?;
    let spec = LabSpec {
        sites: a.sites.clone(),
        etcd_members: a.etcd_members,
        wan_rtt: a.wan_rtt,
        dir: Some(dir.clone()),
        supervision: Supervision::Detached,
        proxy: ProxyLaunch::Command {
            program: exe,
            args: vec!["chaos".into(), "proxy".into(), "serve".into()],
        },
        clock_skew: false,
        keep_files: false,
        pg_password: None,
        pg_tls: true,
        etcd_tls: false,
        // A detached lab outlives this process; namespaces go with it.
        network: ezone_chaos::netns::Network::Loopback,
    };
    spec.validate()?;

    if let Some(old) = LabState::load(&dir)? {
        let alive = old.alive();
        if !alive.is_empty() {
            let pids: Vec<String> = alive.iter().map(|p| p.record.pid.to_string()).collect();
            return Err(LabError::AlreadyRunning {
                dir,
                pids: pids.join(", "),
            }
            .into());
        }
        eprintln!(
            "note: {} records a lab that is no longer running; removing its leftovers",
            LabState::path(&dir).display()
        );
        old.remove_files()?;
    }

    eprintln!(
        "Starting a lab in {} (sites {}) ...",
        dir.display(),
        a.sites.join(", ")
    );
    // Interrupted, the half-started lab is dropped, which stops it: until
    // it is disowned, a detached process still dies with its handle.
    let lab = tokio::select! {
        lab = Lab::start(spec) => lab?,
        () = interrupted() => anyhow::bail!("interrupted; everything started so far was stopped"),
    };
    // Recorded before seeding, so that if this command dies from here on,
    // `ezone lab down` still finds every process.
    lab.state().save()?;

    if !a.no_seed {
        let info = lab.info();
        let sites: Vec<LabSite> = info
            .sites
            .iter()
            .map(|(name, s)| LabSite {
                name: name.clone(),
                postgres: s.postgres.clone(),
            })
            .collect();
        let seeded = tokio::select! {
            r = seed_lab_topology(&info.etcd, &sites) => r,
            () = interrupted() => Err(anyhow::anyhow!("interrupted")),
        };
        if let Err(e) = seeded {
            let state_file = LabState::path(&dir);
            let _ = std::fs::remove_file(&state_file);
            if let Err(t) = lab.teardown().await {
                eprintln!("warning: stopping the half-started lab: {t}");
            }
            return Err(e.context(
                "cannot write the starter topology into etcd; the lab was stopped again \
                 (`--no-seed` starts a lab without it)",
            ));
        }
    }

    let state = lab.disown();
    state.save()?;
    println!(
        "{}",
        serde_json::to_string_pretty(&state.info).context("cannot print the lab's addresses")?
    );
    eprintln!(
        "Lab is up ({} processes). Stop it with `ezone lab down --dir {}`.",
        state.processes.len(),
        dir.display()
    );
    Ok(())
}

/// SIGINT or SIGTERM.
pub(crate) async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn down(a: DownArgs) -> anyhow::Result<()> {
    let dir = absolute(&a.dir.dir)?;
    let Some(state) = LabState::load(&dir)? else {
        println!("No lab recorded in {}; nothing is running.", dir.display());
        return Ok(());
    };
    let report = state.stop(a.timeout).await?;
    for (p, outcome) in &report.processes {
        let what = match outcome {
            StopOutcome::Stopped => "stopped",
            StopOutcome::Killed => "killed (it ignored its stop signal)",
            StopOutcome::NotRunning => "was not running",
        };
        println!("{}: {what} (pid {})", p.record.name, p.record.pid);
    }
    if report.anything_was_running() {
        println!("Lab in {} is down.", dir.display());
    } else if state.keep_files {
        println!("Nothing was running in {}.", dir.display());
    } else {
        println!(
            "Nothing was running in {}; removed the lab's leftovers.",
            dir.display()
        );
    }
    if state.keep_files {
        println!(
            "Its files (logs, configs, etcd and Postgres data) are kept in {}; remove the \
             directory when done.",
            dir.display()
        );
    }
    Ok(())
}

fn status(a: StatusArgs) -> anyhow::Result<()> {
    let dir = absolute(&a.dir.dir)?;
    let Some(state) = LabState::load(&dir)? else {
        if a.json {
            println!("{}", serde_json::json!({ "dir": dir, "lab": null }));
        } else {
            println!("No lab recorded in {}.", dir.display());
        }
        return Ok(());
    };
    if a.json {
        let processes: Vec<serde_json::Value> = state
            .processes
            .iter()
            .map(|p| {
                serde_json::json!({
                    "role": p.role,
                    "site": p.site,
                    "name": p.record.name,
                    "pid": p.record.pid,
                    "running": p.record.is_alive(),
                    "log": p.record.log,
                })
            })
            .collect();
        let out = serde_json::json!({ "dir": dir, "processes": processes, "lab": state.info });
        println!("{out}");
        return Ok(());
    }
    println!("Lab in {}:", dir.display());
    for p in &state.processes {
        let running = if p.record.is_alive() {
            "running"
        } else {
            "NOT running"
        };
        let log = if p.record.log.as_os_str().is_empty() {
            String::new()
        } else {
            format!(" log {}", p.record.log.display())
        };
        let line = format!(
            "  {:<28} pid {:<8} {running:<11}{log}",
            p.record.name, p.record.pid,
        );
        println!("{}", line.trim_end());
    }
    println!("etcd:        {}", state.info.etcd.join(","));
    for (site, s) in &state.info.sites {
        println!("postgres {site}: {}", s.postgres);
    }
    for (link, addr) in &state.info.wan {
        println!("wan {link}: {addr}");
    }
    println!("proxy admin: {}", state.info.proxy_admin);
    Ok(())
}
