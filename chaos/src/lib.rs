//! Fault injection and the local multi-site lab.
//!
//! - [`proxy`]: a TCP fault proxy in the model of Toxiproxy (latency, jitter,
//!   bandwidth, partition, reset, slow close), changed at run time.
//! - [`process`]: real child processes that can be killed (-9), paused
//!   (SIGSTOP), resumed and restarted, and that never outlive the test.
//! - [`certs`]: a throw-away CA issuing server and client certificates (PEM).
//! - [`etcd`] and [`postgres`]: real etcd members and Postgres 15 clusters on
//!   free loopback ports in temp dirs.
//! - [`netns`]: each site as a host of its own (a network namespace), or
//!   all on loopback.
//! - [`lab`]: the multi-site lab (`ezone lab up/down`) built from those parts.
//! - `sysv_shm`: the System V segment a killed postmaster leaves, released
//!   with its cluster (else they fill the kernel's table within a day).
//! - [`clock`]: per-site clock skew through libfaketime (opt-in per lab).
//! - [`scenario`] (feature `scenario`): the ensemble with order traffic and
//!   switchovers, shared by `ezone demo` and the benchmarks.
//! - [`schedule`]: seeded fault schedules, a pure function of the seed;
//!   [`inject`] applies one to a running ensemble.
#![deny(unsafe_code)]

pub mod certs;
pub mod check;
pub mod clock;
pub mod ensemble;
pub mod error;
pub mod etcd;
pub mod forced;
pub mod inject;
pub mod lab;
pub mod netns;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod scenario;
pub mod schedule;
pub(crate) mod scratch;
pub(crate) mod sysv_shm;
pub mod timeline;
