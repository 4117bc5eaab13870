//! The ezone replicator: walsender client, pgoutput decoder, ordered
//! exactly-once apply, loop prevention and conflicts (see `shared/DESIGN.md`,
//! "Replication").
//!
//! Not built yet: this crate is a placeholder in the workspace so that the
//! layout of the design is visible. The replicator issue builds it.
#![forbid(unsafe_code)]
