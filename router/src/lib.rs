//! The ezone edge router: key extraction, shard lookup, forwarding to the home
//! site and holding writes for frozen shards (see `shared/DESIGN.md`, "Routing").
//!
//! Not built yet: this crate is a placeholder in the workspace so that the
//! layout of the design is visible. The router issue builds it.
#![forbid(unsafe_code)]
