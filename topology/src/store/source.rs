//! Where a process reads the topology: etcd (with TLS and a user, see
//! [`super::etcd_options`]) or a file. The `[topology]` table of the
//! router's and the replicator's configs.

use std::path::PathBuf;

use serde::Deserialize;

use super::etcd_options::{EtcdAuth, EtcdOptions, EtcdTls};
use super::layout::DEFAULT_PREFIX;

/// The `[topology]` table: `etcd` endpoints or a `file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySource {
    #[serde(default)]
    pub etcd: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// etcd over TLS: `{ ca_file, cert_file, key_file }` (PEM); its files
    /// are read, and refused with the fix, when the process connects.
    #[serde(default)]
    pub etcd_tls: Option<EtcdTls>,
    /// An etcd user: `{ user, password_file }` (else the password is in
    /// `EZONE_ETCD_PASSWORD`).
    #[serde(default)]
    pub etcd_auth: Option<EtcdAuth>,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_string()
}

impl TopologySource {
    /// How to reach etcd.
    pub fn etcd_options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.etcd.clone(),
            tls: self.etcd_tls.clone(),
            auth: self.etcd_auth.clone(),
        }
    }
}
