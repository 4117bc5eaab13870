//! One module per subcommand.

pub mod bench;
pub mod chaos;
pub mod chaos_report;
pub mod chaos_run;
pub mod chaos_sweep;
pub mod conflicts;
pub mod demo;
pub mod failover;
pub mod fence;
pub mod lab;
pub mod orders;
pub mod pg;
pub mod redact;
pub mod replicator;
pub mod router;
pub mod status;
pub mod topo;
