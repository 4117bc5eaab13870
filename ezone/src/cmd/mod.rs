//! One module per subcommand.

pub mod bench;
pub mod chaos;
pub mod fence;
pub mod lab;
pub mod replicator;
pub mod router;
pub mod topo;
