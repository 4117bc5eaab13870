//! `ezone bench router`: the edge router's throughput, latency and CPU cost,
//! measured side by side with nginx and with no proxy at all, in one run.
//!
//! ```text
//!             ┌─────────── direct ───────────┐
//!   wrk ──────┼── nginx (proxy_pass) ────────┼──▶ upstream (ezone bench upstream)
//!             └── ezone router (--config) ───┘
//! ```
//!
//! One upstream process (a minimal hyper server, its own process so that its
//! CPU is never the proxy's) serves all three targets, one after the other,
//! each with the same wrk parameters and a warm-up run first. The same
//! request goes to all three (`GET /`, `X-City-Id: 010`: the header is what
//! the ezone router routes by and is ignored by the others). Per target:
//! requests/s, p50/p99/p99.9 latency, errors (including responses > 399),
//! and CPU seconds per 10k requests of the proxy's process tree (nginx:
//! master and workers), sampled from `/proc` around the measured run; for
//! `direct` the upstream's own CPU is shown instead, labelled so. Then the
//! ratios ezone/nginx for throughput, p99 and CPU.
//!
//! Numbers are printed, never asserted (the house rule: no timing
//! assertions). On this kind of machine wrk, the proxy and the upstream
//! share the cores, so absolute numbers are low and noisy: the ratios,
//! taken in one run on one machine, are the point.
//!
//! Every process started here is a [`ChildProcess`] tied to this one: it is
//! killed (with its whole tree) when its guard drops, on success, on error,
//! on Ctrl-C (`ezone bench` races the run against the signal so that guards
//! do drop), and by the kernel's parent-death signal if this process is
//! killed outright. The temp dir (configs, logs, wrk output) goes with its guard
//! unless `--keep-dir` is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use ezone_chaos::ports::free_addr;
use ezone_chaos::process::ChildProcess;
use serde::Serialize;

use crate::cpu;
use wrk::{WrkErrors, WrkResult, WrkRun};

mod ezone;
mod nginx;
mod probe;
pub mod upstream;
mod wrk;

/// The city every request names: the starter topology maps it to shard 1,
/// homed at the first (here: the only) site.
const CITY: &str = "010";
/// How long a target may take to answer its first 200.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long a target may take to stop politely before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// wrk's per-request timeout.
const WRK_TIMEOUT_SECONDS: u64 = 5;
/// Idle keep-alive connections nginx keeps to the upstream, per worker.
const NGINX_UPSTREAM_KEEPALIVE: u32 = 64;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// wrk -> upstream: the floor.
    Direct,
    /// wrk -> nginx -> upstream: the baseline proxy.
    Nginx,
    /// wrk -> ezone router -> upstream.
    Ezone,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Nginx => "nginx",
            Target::Ezone => "ezone",
        }
    }

    /// Whose CPU the row reports.
    fn cpu_of(self) -> &'static str {
        match self {
            Target::Direct => "upstream",
            Target::Nginx => "nginx tree",
            Target::Ezone => "router",
        }
    }

    /// The prefix of a row that could not be measured.
    fn unavailable(self) -> &'static str {
        match self {
            Target::Direct => "direct run failed",
            Target::Nginx => "nginx not available",
            Target::Ezone => "ezone router not available",
        }
    }
}

/// `ezone bench router`'s options.
#[derive(Debug, clap::Args)]
pub struct RouterBench {
    /// Measured run per target (whole seconds; wrk's -d).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Warm-up run per target before the measured one (whole seconds; 0s: none).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// wrk connections (kept open, HTTP/1.1 keep-alive).
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Upstream response body size in bytes.
    #[arg(long, default_value_t = upstream::DEFAULT_BODY_BYTES)]
    pub body_bytes: usize,
    /// Proxy workers: nginx worker_processes and the router's tokio worker
    /// threads (TOKIO_WORKER_THREADS).
    #[arg(long, default_value_t = 2)]
    pub proxy_workers: u32,
    /// Which targets to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,nginx,ezone"
    )]
    pub targets: Vec<Target>,
    /// Print a JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The ezone binary whose `router` and `bench upstream` are run (default: this one).
    #[arg(long)]
    pub ezone_bin: Option<PathBuf>,
    /// The nginx binary (default: `nginx` on PATH, then /usr/sbin/nginx).
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// The wrk binary (default: `wrk` on PATH).
    #[arg(long)]
    pub wrk: Option<PathBuf>,
    /// Keep the temp dir (configs, logs, wrk output) and print its path.
    #[arg(long)]
    pub keep_dir: bool,
    /// nginx as a bare `proxy_pass` (only `Host` and the client's own
    /// headers go upstream). By default nginx sets the same forwarding
    /// headers the router does (`X-Forwarded-For`, `X-Forwarded-Proto`,
    /// `Via` and the three `X-Ezone-*`), so the upstream gets the same
    /// request from both and the comparison is of the same work.
    #[arg(long)]
    pub nginx_minimal_headers: bool,
    /// Run the targets this many times, alternating (nginx, ezone, nginx,
    /// ezone, ...), and report each round's ratios and their median: on a
    /// shared machine the speed drifts by more than the difference being
    /// measured, and the median of side-by-side pairs is what holds
    /// (a single pair moved from 0.77x to 1.11x between rounds here).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

/// One target's measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    requests: u64,
    duration_seconds: f64,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    mean_ms: f64,
    max_ms: f64,
    /// wrk's counters; `status` counts responses with status > 399.
    errors: WrkErrors,
    errors_total: u64,
    /// Whose CPU `cpu_*` is: "upstream" (direct), "nginx tree", "router".
    cpu_of: &'static str,
    cpu_seconds: f64,
    cpu_seconds_per_10k_requests: Option<f64>,
    /// The upstream's own CPU over the same window (same for every target
    /// if the proxies add nothing upstream; a check on the comparison).
    upstream_cpu_seconds: f64,
    upstream_cpu_seconds_per_10k_requests: Option<f64>,
}

/// One row: measured, or why not.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// 1-based.
    round: u32,
    target: Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Measured>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// ezone / nginx; `None` where either side is missing (or zero).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratios {
    throughput: Option<f64>,
    p99: Option<f64>,
    cpu: Option<f64>,
}

/// The run's settings, as the report states them.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    duration_seconds: u64,
    warmup_seconds: u64,
    connections: u32,
    wrk_threads: u32,
    body_bytes: usize,
    proxy_workers: u32,
    /// nginx sets the router's forwarding headers too.
    nginx_same_headers: bool,
    city: &'static str,
    cpus: usize,
    clock_ticks_per_second: u64,
}

/// What `ezone bench router` found: the rows, each round's ratios and their
/// median. `--json` prints it as is; the table is [`Report::table`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    params: Params,
    targets: Vec<Row>,
    /// Each round's ezone/nginx (from the same round's runs).
    rounds: Vec<Ratios>,
    /// The median over the rounds.
    ezone_over_nginx: Ratios,
}

/// A finished run: the report, and the temp dir if `--keep-dir` kept it.
#[derive(Debug)]
pub struct Run {
    pub report: Report,
    pub kept_dir: Option<PathBuf>,
}

/// Whole seconds of `d`, for wrk's `-d`.
fn whole_seconds(flag: &str, d: Duration) -> anyhow::Result<u64> {
    if d.subsec_nanos() != 0 {
        bail!(
            "{flag} {}: must be whole seconds (wrk's -d takes seconds)",
            humantime::format_duration(d)
        );
    }
    Ok(d.as_secs())
}

/// Everything a target's run needs.
struct Ctx {
    dir: PathBuf,
    ezone_bin: PathBuf,
    upstream: ChildProcess,
    upstream_addr: SocketAddr,
    wrk: WrkRun,
    warmup_seconds: u64,
    ticks_per_second: u64,
    proxy_workers: u32,
    nginx: Option<PathBuf>,
    nginx_same_headers: bool,
}

/// Runs the bench. Every process it starts is killed when it returns, and
/// when the future is dropped (raced against Ctrl-C, say).
pub async fn run(args: &RouterBench) -> anyhow::Result<Run> {
    let seconds = whole_seconds("--duration", args.duration)?;
    if seconds == 0 {
        bail!("--duration must be at least 1s");
    }
    let warmup_seconds = whole_seconds("--warmup", args.warmup)?;
    if args.threads == 0 || args.connections < args.threads {
        bail!(
            "--connections ({}) must be at least --threads ({}), and --threads at least 1 (wrk gives each thread its share of connections)",
            args.connections,
            args.threads
        );
    }
    if args.proxy_workers == 0 {
        bail!("--proxy-workers must be at least 1");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.targets.is_empty() {
        bail!("--targets is empty: name at least one of direct, nginx, ezone");
    }
    let wrk_bin = match &args.wrk {
        Some(p) => p.clone(),
        None => nginx::find_on_path("wrk").context(
            "wrk not found on PATH; install it (apt-get install wrk) or pass --wrk PATH",
        )?,
    };
    let ezone_bin = crate::ezone_bin(args.ezone_bin.as_deref())?;

    let tmp = tempfile::Builder::new()
        .prefix("ezone-bench-router-")
        .tempdir()
        .context("creating the bench's temp dir")?;
    let dir = tmp.path().to_path_buf();
    let script = dir.join("bench.lua");
    std::fs::write(&script, wrk::script(CITY))
        .with_context(|| format!("writing {}", script.display()))?;

    let upstream_addr = free_addr()?;
    eprintln!(
        "starting the upstream on {upstream_addr} ({} B bodies)",
        args.body_bytes
    );
    let upstream = upstream::spawn(&ezone_bin, &dir, upstream_addr, args.body_bytes)?;
    probe::wait_ready(&upstream, upstream_addr, CITY, READY_WITHIN)
        .await
        .context("the bench upstream did not come up")?;

    let ticks_per_second = cpu::clock_ticks_per_second();
    let ctx = Ctx {
        dir: dir.clone(),
        ezone_bin,
        upstream,
        upstream_addr,
        wrk: WrkRun {
            wrk: wrk_bin,
            script,
            url: String::new(),
            threads: args.threads,
            connections: args.connections,
            seconds,
            timeout_seconds: WRK_TIMEOUT_SECONDS,
        },
        warmup_seconds,
        ticks_per_second,
        proxy_workers: args.proxy_workers,
        nginx: args.nginx.clone(),
        nginx_same_headers: !args.nginx_minimal_headers,
    };

    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        for &target in &args.targets {
            let of = if args.rounds > 1 {
                format!(" (round {round}/{})", args.rounds)
            } else {
                String::new()
            };
            eprintln!(
                "{}{of}: warm-up {warmup_seconds}s, then {seconds}s measured ...",
                target.name()
            );
            let outcome = run_target(&ctx, target).await;
            if let Some(status) = ctx.upstream.exit_status() {
                bail!(
                    "the bench upstream exited ({status}) during the {} run: {}",
                    target.name(),
                    probe::one_line(&ctx.upstream.log_tail())
                );
            }
            rows.push(match outcome {
                Ok(m) => Row {
                    round,
                    target,
                    result: Some(m),
                    error: None,
                },
                Err(e) => {
                    let error = format!("{}: {e:#}", target.unavailable());
                    eprintln!("{error}");
                    Row {
                        round,
                        target,
                        result: None,
                        error: Some(error),
                    }
                }
            });
        }
    }
    let _ = ctx.upstream.terminate(STOP_WITHIN).await;

    let report = Report {
        params: Params {
            duration_seconds: seconds,
            warmup_seconds,
            connections: args.connections,
            wrk_threads: args.threads,
            body_bytes: args.body_bytes,
            proxy_workers: args.proxy_workers,
            nginx_same_headers: !args.nginx_minimal_headers,
            city: CITY,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            clock_ticks_per_second: ticks_per_second,
        },
        rounds: per_round(&rows, args.rounds),
        ezone_over_nginx: median_ratios(&per_round(&rows, args.rounds)),
        targets: rows,
    };
    let kept_dir = args.keep_dir.then(|| tmp.keep());
    Ok(Run { report, kept_dir })
}

impl Report {
    /// An error unless at least one target was measured (the rows say why
    /// each was not).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.targets.iter().all(|r| r.result.is_none()) {
            bail!("no target could be measured (see the reasons above)");
        }
        Ok(())
    }

    /// The table `ezone bench router` prints.
    pub fn table(&self) -> String {
        table(self)
    }
}

/// Starts the target's proxy (if any), waits for it, measures, stops it.
async fn run_target(ctx: &Ctx, target: Target) -> anyhow::Result<Measured> {
    match target {
        Target::Direct => {
            let url = format!("http://{}/", ctx.upstream_addr);
            measure(ctx, target, &url, ctx.upstream.pid()).await
        }
        Target::Nginx => {
            let bin = nginx::find(ctx.nginx.as_deref())?;
            let listen = free_addr()?;
            let conf = nginx::NginxConf {
                listen,
                upstream: ctx.upstream_addr,
                workers: ctx.proxy_workers,
                upstream_keepalive: NGINX_UPSTREAM_KEEPALIVE,
                same_headers: ctx.nginx_same_headers,
                dir: ctx.dir.clone(),
                as_root: nix::unistd::geteuid().is_root(),
            };
            let proxy = nginx::spawn(&bin, &conf)?;
            proxy_run(ctx, target, proxy.process(), listen).await
        }
        Target::Ezone => {
            let listen = free_addr()?;
            let proxy = ezone::spawn(
                &ctx.ezone_bin,
                &ctx.dir,
                listen,
                ctx.upstream_addr,
                CITY,
                ctx.proxy_workers,
            )?;
            proxy_run(ctx, target, &proxy, listen).await
        }
    }
}

/// Waits for a started proxy, measures through it, and stops it (it is
/// killed by its guard anyway if anything here fails).
async fn proxy_run(
    ctx: &Ctx,
    target: Target,
    proxy: &ChildProcess,
    listen: SocketAddr,
) -> anyhow::Result<Measured> {
    probe::wait_ready(proxy, listen, CITY, READY_WITHIN).await?;
    let url = format!("http://{listen}/");
    let measured = measure(ctx, target, &url, proxy.pid()).await;
    if let Some(status) = proxy.exit_status() {
        bail!(
            "{} exited during the run ({status}): {}",
            proxy.name(),
            probe::one_line(&proxy.log_tail())
        );
    }
    let _ = proxy.terminate(STOP_WITHIN).await;
    measured
}

/// Warm-up, then the measured wrk run with the CPU of `cpu_root`'s tree and
/// of the upstream sampled around it.
async fn measure(ctx: &Ctx, target: Target, url: &str, cpu_root: u32) -> anyhow::Result<Measured> {
    let name = target.name();
    let mut run = ctx.wrk.clone();
    run.url = url.to_string();
    if ctx.warmup_seconds > 0 {
        let warm = WrkRun {
            seconds: ctx.warmup_seconds,
            ..run.clone()
        };
        wrk::run(&warm, &ctx.dir, &format!("{name}-warmup"))
            .await
            .context("warm-up run")?;
    }
    let upstream_pid = ctx.upstream.pid();
    let cpu0 = cpu::tree_ticks(cpu_root);
    let up0 = cpu::tree_ticks(upstream_pid);
    let r = wrk::run(&run, &ctx.dir, name)
        .await
        .context("measured run")?;
    let cpu1 = cpu::tree_ticks(cpu_root);
    let up1 = cpu::tree_ticks(upstream_pid);
    Ok(measured(
        target,
        &r,
        cpu1.saturating_sub(cpu0),
        up1.saturating_sub(up0),
        ctx.ticks_per_second,
    ))
}

fn measured(
    target: Target,
    r: &WrkResult,
    cpu_ticks: u64,
    upstream_ticks: u64,
    hz: u64,
) -> Measured {
    let secs = |ticks: u64| ticks as f64 / hz.max(1) as f64;
    Measured {
        requests: r.requests,
        duration_seconds: r.duration_us as f64 / 1e6,
        requests_per_second: r.requests_per_second(),
        p50_ms: r.p50_us / 1000.0,
        p99_ms: r.p99_us / 1000.0,
        p999_ms: r.p999_us / 1000.0,
        mean_ms: r.mean_us / 1000.0,
        max_ms: r.max_us / 1000.0,
        errors: r.errors,
        errors_total: r.errors.total(),
        cpu_of: target.cpu_of(),
        cpu_seconds: secs(cpu_ticks),
        cpu_seconds_per_10k_requests: cpu::seconds_per_10k(cpu_ticks, hz, r.requests),
        upstream_cpu_seconds: secs(upstream_ticks),
        upstream_cpu_seconds_per_10k_requests: cpu::seconds_per_10k(upstream_ticks, hz, r.requests),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn ratios(rows: &[Row]) -> Ratios {
    let get = |t: Target| {
        rows.iter()
            .find(|r| r.target == t)
            .and_then(|r| r.result.as_ref())
    };
    let (e, n) = (get(Target::Ezone), get(Target::Nginx));
    Ratios {
        throughput: ratio(
            e.map(|m| m.requests_per_second),
            n.map(|m| m.requests_per_second),
        ),
        p99: ratio(e.map(|m| m.p99_ms), n.map(|m| m.p99_ms)),
        cpu: ratio(
            e.and_then(|m| m.cpu_seconds_per_10k_requests),
            n.and_then(|m| m.cpu_seconds_per_10k_requests),
        ),
    }
}

/// Each round's ratios, from that round's rows.
fn per_round(rows: &[Row], rounds: u32) -> Vec<Ratios> {
    (1..=rounds)
        .map(|r| {
            let of: Vec<Row> = rows.iter().filter(|x| x.round == r).cloned().collect();
            ratios(&of)
        })
        .collect()
}

/// The median of the values present (the mean of the middle two for an even
/// count).
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Field by field, the median over the rounds.
fn median_ratios(rounds: &[Ratios]) -> Ratios {
    let of = |f: fn(&Ratios) -> Option<f64>| median(rounds.iter().filter_map(f).collect());
    Ratios {
        throughput: of(|r| r.throughput),
        p99: of(|r| r.p99),
        cpu: of(|r| r.cpu),
    }
}

fn table(report: &Report) -> String {
    use std::fmt::Write;
    let p = &report.params;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "router bench: wrk -t{} -c{} -d{}s after a {}s warm-up; GET / with X-City-Id: {}; {} B bodies; {} proxy workers; {} CPUs",
        p.wrk_threads, p.connections, p.duration_seconds, p.warmup_seconds, p.city, p.body_bytes, p.proxy_workers, p.cpus
    );
    let _ = writeln!(
        out,
        "{}",
        if p.nginx_same_headers {
            "nginx sets the router's forwarding headers too (X-Forwarded-For/-Proto, Via, X-Ezone-*): the upstream gets the same request from both"
        } else {
            "nginx as a bare proxy_pass (--nginx-minimal-headers): the router sends the upstream six more header fields"
        }
    );
    let _ = writeln!(
        out,
        "{:<8} {:>11} {:>9} {:>9} {:>9} {:>10}  CPU s / 10k req",
        "target", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    let many = report.rounds.len() > 1;
    for row in &report.targets {
        let name = if many {
            format!("{} #{}", row.target.name(), row.round)
        } else {
            row.target.name().to_string()
        };
        match (&row.result, &row.error) {
            (Some(m), _) => {
                let cpu = match m.cpu_seconds_per_10k_requests {
                    Some(c) => format!("{c:.3} ({})", m.cpu_of),
                    None => format!("- ({})", m.cpu_of),
                };
                let _ = writeln!(
                    out,
                    "{:<8} {:>11.1} {:>9.3} {:>9.3} {:>9.3} {:>10}  {}",
                    name, m.requests_per_second, m.p50_ms, m.p99_ms, m.p999_ms, m.errors_total, cpu
                );
            }
            (None, error) => {
                let _ = writeln!(
                    out,
                    "{:<8} {}",
                    name,
                    error.as_deref().unwrap_or("not measured")
                );
            }
        }
    }
    let x = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}x"));
    let r = &report.ezone_over_nginx;
    if many {
        let each = |f: fn(&Ratios) -> Option<f64>| {
            report
                .rounds
                .iter()
                .map(|r| f(r).map_or("n/a".to_string(), |v| format!("{v:.2}")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "ezone/nginx by round: throughput {}",
            each(|r| r.throughput)
        );
        let _ = writeln!(out, "                      p99        {}", each(|r| r.p99));
        let _ = writeln!(out, "                      CPU        {}", each(|r| r.cpu));
    }
    let _ = writeln!(
        out,
        "ezone/nginx{}: throughput {}, p99 {}, CPU per request {}",
        if many { " (median of the rounds)" } else { "" },
        x(r.throughput),
        x(r.p99),
        x(r.cpu)
    );
    let _ = writeln!(
        out,
        "(errors: connect/read/write/timeout plus responses with status > 399; CPU: utime+stime from /proc over the measured run)"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rps: f64, p99: f64, cpu: Option<f64>) -> Measured {
        Measured {
            requests: 1000,
            duration_seconds: 1.0,
            requests_per_second: rps,
            p50_ms: 1.0,
            p99_ms: p99,
            p999_ms: 3.0,
            mean_ms: 1.0,
            max_ms: 4.0,
            errors: WrkErrors::default(),
            errors_total: 0,
            cpu_of: "router",
            cpu_seconds: 0.1,
            cpu_seconds_per_10k_requests: cpu,
            upstream_cpu_seconds: 0.1,
            upstream_cpu_seconds_per_10k_requests: None,
        }
    }

    #[test]
    fn ratios_are_ezone_over_nginx_and_absent_when_a_side_is() {
        let rows = vec![
            Row {
                round: 1,
                target: Target::Nginx,
                result: Some(m(1000.0, 2.0, Some(0.5))),
                error: None,
            },
            Row {
                round: 1,
                target: Target::Ezone,
                result: Some(m(800.0, 3.0, Some(1.0))),
                error: None,
            },
        ];
        let r = ratios(&rows);
        assert_eq!(r.throughput, Some(0.8));
        assert_eq!(r.p99, Some(1.5));
        assert_eq!(r.cpu, Some(2.0));
        let missing = vec![
            rows[0].clone(),
            Row {
                round: 1,
                target: Target::Ezone,
                result: None,
                error: Some("ezone router not available: x".into()),
            },
        ];
        let r = ratios(&missing);
        assert!(r.throughput.is_none() && r.p99.is_none() && r.cpu.is_none());
        let text = table(&Report {
            params: Params {
                duration_seconds: 1,
                warmup_seconds: 0,
                connections: 2,
                wrk_threads: 1,
                body_bytes: 128,
                proxy_workers: 2,
                nginx_same_headers: true,
                city: CITY,
                cpus: 2,
                clock_ticks_per_second: 100,
            },
            targets: missing,
            rounds: vec![r],
            ezone_over_nginx: r,
        });
        assert!(text.contains("ezone router not available: x"), "{text}");
        assert!(text.contains("throughput n/a"), "{text}");
    }

    #[test]
    fn rounds_report_their_median() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![0.9, 1.1, 0.8]), Some(0.9));
        assert_eq!(median(vec![1.0, 0.8, f64::NAN, 0.9, 1.2]), Some(0.95));
        let r = |t: Option<f64>| Ratios {
            throughput: t,
            p99: Some(1.0),
            cpu: None,
        };
        let m = median_ratios(&[r(Some(0.9)), r(None), r(Some(1.1)), r(Some(1.0))]);
        assert_eq!(m.throughput, Some(1.0));
        assert_eq!(m.p99, Some(1.0));
        assert_eq!(m.cpu, None);
    }

    #[test]
    fn durations_must_be_whole_seconds() {
        assert_eq!(
            whole_seconds("--duration", Duration::from_secs(3)).ok(),
            Some(3)
        );
        assert!(whole_seconds("--duration", Duration::from_millis(1500)).is_err());
    }
}
