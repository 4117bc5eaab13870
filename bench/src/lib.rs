//! ezone's benchmarks (`ezone bench ...`), each measured against a baseline
//! run side by side in the same run. Numbers are reported, never asserted.
//!
//! - [`topology`]: watch propagation, an etcd write to the watcher's new
//!   snapshot, next to a bare etcd watch.
//! - [`propagation`]: an etcd write to a running router routing by it.
//! - [`router`]: the edge router's throughput, latency and CPU against nginx
//!   and against no proxy, driven by wrk ([`router::upstream`] is the
//!   upstream they all proxy to, run as `ezone bench upstream`).
//! - [`replicator`]: ezone's replication link against Postgres' native
//!   logical replication (backlog drain, steady lag, CPU).
//! - [`failover`]: the write-hold window of planned switchovers and the time
//!   a forced failover takes, under load, on the whole system.
//!
//! Each bench's options are a clap `Args` struct the binary mounts as a
//! subcommand; `run` returns a report the binary prints (its `table()`, or
//! JSON where the bench has `--json`). Progress goes to stderr as a bench
//! runs. Errors are `anyhow` throughout: a bench is a tool run by hand, its
//! errors are read, never matched on.
#![forbid(unsafe_code)]

pub mod failover;
pub mod propagation;
pub mod replicator;
pub mod router;
pub mod topology;

mod cpu;
mod latency;

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The `ezone` binary whose processes a bench runs: `--ezone-bin` when
/// given, else the one running (the benches run inside it).
fn ezone_bin(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p.to_path_buf()),
        None => std::env::current_exe().context("finding this ezone binary (or pass --ezone-bin)"),
    }
}
