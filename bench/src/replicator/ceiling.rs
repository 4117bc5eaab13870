//! The source's stream alone: how fast the source's walsender sends a
//! backlog to a reader that does nothing with it. `pg_recvlogical` (C,
//! libpq, from the same Postgres) reads a slot of its own, made before the
//! backlog, with `pgoutput` and the bench's publication, into `/dev/null`,
//! from the consumer's own address (direct, or across the WAN), and stops
//! at the backlog's end (`--endpos`). It runs once the consumer has drained
//! the same backlog, so the two do not share the machine.
//!
//! No consumer of the stream drains faster than this, whatever it does with
//! the rows: the bench reports it beside each drain so that a drain ratio
//! can be read against what the source allows on this machine.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::consumer::{create_slot, slot_pid, Proc, RunPlace};
use super::workload::{sql, PUBLICATION};

/// How long the reader may take before the bench gives up on it.
const WITHIN: Duration = Duration::from_secs(600);
/// How often the walsender's CPU is read while the reader runs (its time
/// goes with it when it exits).
const SAMPLE: Duration = Duration::from_millis(20);

/// The stream alone, for one run's backlog.
#[derive(Debug, Clone, Serialize)]
pub struct StreamOnly {
    /// Reader start → it reached the backlog's end.
    pub seconds: f64,
    pub rows_per_second: Option<f64>,
    /// The source walsender's CPU seconds serving it (last sample before
    /// it exited; `None` if it was never seen).
    pub walsender_cpu_seconds: Option<f64>,
}

/// A slot made before the backlog, for the reader.
pub struct Ceiling {
    slot: String,
}

impl Ceiling {
    /// Makes the reader's slot at the source: call before the backlog.
    pub async fn prepare(at: &RunPlace<'_>) -> anyhow::Result<Ceiling> {
        let slot = format!("ceiling_run{}", at.run);
        create_slot(at, &slot).await?;
        Ok(Ceiling { slot })
    }

    /// Reads the slot up to `end_lsn` (the backlog's end) and drops it.
    pub async fn measure(
        self,
        at: &RunPlace<'_>,
        end_lsn: &str,
        rows: u64,
        ticks_per_second: u64,
    ) -> anyhow::Result<StreamOnly> {
        let result = self.read(at, end_lsn, rows, ticks_per_second).await;
        // Dropped whatever happened: a slot left behind holds the source's WAL.
        sql(
            at.source,
            at.db,
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{}'",
                self.slot
            ),
        )
        .await?;
        result
    }

    async fn read(
        &self,
        at: &RunPlace<'_>,
        end_lsn: &str,
        rows: u64,
        ticks_per_second: u64,
    ) -> anyhow::Result<StreamOnly> {
        let bin = at.source.bin_dir().join("pg_recvlogical");
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&bin)
            .arg(format!("--dbname={}", at.source_dsn))
            .arg(format!("--slot={}", self.slot))
            .args(["--start", "--no-loop", "--file=/dev/null"])
            .args(["-o", "proto_version=1"])
            .arg("-o")
            .arg(format!("publication_names={PUBLICATION}"))
            .arg(format!("--endpos={}", end_lsn.trim()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut walsender: Option<Proc> = None;
        let mut ticks: Option<u64> = None;
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for pg_recvlogical")? {
                break status;
            }
            if started.elapsed() > WITHIN {
                bail!(
                    "pg_recvlogical did not reach {end_lsn} within {}",
                    humantime::format_duration(WITHIN)
                );
            }
            match &walsender {
                Some(p) => ticks = p.sample().map(|s| s.ticks).or(ticks),
                None => {
                    walsender = match slot_pid(at, &self.slot).await? {
                        Some(pid) => Proc::new("stream walsender", pid).ok(),
                        None => None,
                    }
                }
            }
            tokio::time::sleep(SAMPLE).await;
        };
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            let out = child.wait_with_output().await.ok();
            let err = out
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            bail!("pg_recvlogical failed ({status}): {}", err.trim());
        }
        Ok(StreamOnly {
            seconds,
            rows_per_second: (seconds > 0.0).then(|| rows as f64 / seconds),
            walsender_cpu_seconds: ticks.map(|t| t as f64 / ticks_per_second as f64),
        })
    }
}
