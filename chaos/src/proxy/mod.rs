//! The TCP fault proxy (being written). The public types below are the
//! contract the lab and the CLI use.

pub mod config;
pub use config::{Direction, LinkSpec, ProxyConfig, Toxics};
