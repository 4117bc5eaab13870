//! What a Postgres error means for the caller, by SQLSTATE: one table for
//! every part of ezone that talks to Postgres (the walsender client, the
//! applier, the switchover's site operations, the repair, the order
//! service), so that they agree on which errors a retry can cure.
//!
//! The table says what *kind* of failure a code is; each caller maps kinds
//! to its own error type and answer. Only [`Kind::Other`] (a code the table
//! does not name, e.g. `XX000` internal error) is left to the caller's own
//! default: a read-only replication stream retries it (nothing it does can
//! be half-done), an applier stops on it (retrying a write it does not
//! understand could loop on bad data forever).
//!
//! | kind | SQLSTATEs | retry? |
//! |---|---|---|
//! | `ConnectionLost` | class `08`; `57P01` admin shutdown, `57P02` crash shutdown, `57P03` cannot connect now, `57P05` idle session timeout; no SQLSTATE at all (I/O, closed) | yes |
//! | `Canceled` | `57014` query canceled (statement timeout) | yes |
//! | `ShortOfResources` | class `53` (too many connections, disk full, out of memory) but `53400` | yes |
//! | `ConfigLimit` | `53400` configuration limit exceeded (`max_replication_slots`, ...) | no: raise the limit |
//! | `Contention` | `40001` serialization failure, `40P01` deadlock, `55P03` lock not available, `55006` object in use (a slot or origin still held by our own previous session) | yes |
//! | `ReadOnly` | `25006` read-only transaction (a standby, or `default_transaction_read_only`) | yes: a promotion ends it |
//! | `Fence(LeaseLapsed)` | `EZ003` the site's fence lease lapsed | yes: its replicator renews it |
//! | `Fence(NotWritable)` | `EZ001` the shard is not writable at this site | no, not here: at the shard's home |
//! | `Fence(Unmapped)` | `EZ002` the key maps to no shard | no: map it in the topology |
//! | `Auth` | class `28` (wrong password, no pg_hba.conf entry) | no: fix the credentials |
//! | `Tls` | no SQLSTATE: a certificate file we cannot use, a server certificate that does not verify, a client certificate the server refused (`ezone_pg::is_tls_setup_error`) | no: fix the certificates |
//! | `Integrity` | class `23` (unique, foreign key, not null, check) | no: the data |
//! | `Request` | classes `42`, `22`, `3D`, `0A`; `55000` object not in prerequisite state; `58P01` undefined file (WAL a slot needs is gone) | no: the statement, schema or server setup |
//! | `Other` | anything else | the caller's default |

use crate::fence::{SQLSTATE_FENCED, SQLSTATE_LEASE_LAPSED, SQLSTATE_UNMAPPED};

/// What kind of failure a Postgres error is (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ConnectionLost,
    Canceled,
    ShortOfResources,
    ConfigLimit,
    Contention,
    ReadOnly,
    Fence(FenceRefusal),
    Auth,
    Tls,
    Integrity,
    Request,
    Other,
}

/// Why ezone's database fence refused a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceRefusal {
    /// `EZ001`: the shard is not writable here (not its home, or frozen).
    NotWritable,
    /// `EZ002`: the key maps to no shard.
    Unmapped,
    /// `EZ003`: the site's lease on its shards lapsed.
    LeaseLapsed,
}

/// Codes named one by one (looked up before the classes).
const BY_CODE: &[(&str, Kind)] = &[
    ("57P01", Kind::ConnectionLost),
    ("57P02", Kind::ConnectionLost),
    ("57P03", Kind::ConnectionLost),
    ("57P05", Kind::ConnectionLost),
    ("57014", Kind::Canceled),
    ("53400", Kind::ConfigLimit),
    ("40001", Kind::Contention),
    ("40P01", Kind::Contention),
    ("55P03", Kind::Contention),
    ("55006", Kind::Contention),
    ("25006", Kind::ReadOnly),
    (SQLSTATE_FENCED, Kind::Fence(FenceRefusal::NotWritable)),
    (SQLSTATE_UNMAPPED, Kind::Fence(FenceRefusal::Unmapped)),
    (
        SQLSTATE_LEASE_LAPSED,
        Kind::Fence(FenceRefusal::LeaseLapsed),
    ),
    ("55000", Kind::Request),
    ("58P01", Kind::Request),
];

/// Classes (the code's first two characters).
const BY_CLASS: &[(&str, Kind)] = &[
    ("08", Kind::ConnectionLost),
    ("53", Kind::ShortOfResources),
    ("28", Kind::Auth),
    ("23", Kind::Integrity),
    ("42", Kind::Request),
    ("22", Kind::Request),
    ("3D", Kind::Request),
    ("0A", Kind::Request),
];

impl Kind {
    /// The kind of a SQLSTATE (five characters; anything else is `Other`).
    pub fn of_code(code: &str) -> Kind {
        if let Some((_, k)) = BY_CODE.iter().find(|(c, _)| *c == code) {
            return *k;
        }
        let class = code.get(..2).unwrap_or("");
        BY_CLASS
            .iter()
            .find(|(c, _)| *c == class)
            .map(|(_, k)| *k)
            .unwrap_or(Kind::Other)
    }

    /// The kind of a tokio-postgres error: by its SQLSTATE, and a failure
    /// without one (I/O, a closed connection, a timeout) is the connection.
    pub fn of(e: &tokio_postgres::Error) -> Kind {
        match e.code() {
            Some(code) => Kind::of_code(code.code()),
            None if ezone_pg::is_tls_setup_error(e) => Kind::Tls,
            None => Kind::ConnectionLost,
        }
    }

    /// Whether doing the same again later can succeed without anyone
    /// changing anything; `None` for [`Kind::Other`].
    pub fn is_transient(self) -> Option<bool> {
        match self {
            Kind::ConnectionLost
            | Kind::Canceled
            | Kind::ShortOfResources
            | Kind::Contention
            | Kind::ReadOnly
            | Kind::Fence(FenceRefusal::LeaseLapsed) => Some(true),
            Kind::ConfigLimit
            | Kind::Fence(FenceRefusal::NotWritable | FenceRefusal::Unmapped)
            | Kind::Auth
            | Kind::Tls
            | Kind::Integrity
            | Kind::Request => Some(false),
            Kind::Other => None,
        }
    }

    /// [`Kind::is_transient`], with the caller's answer for `Other`.
    pub fn transient_or(self, other: bool) -> bool {
        self.is_transient().unwrap_or(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        use FenceRefusal::*;
        use Kind::*;
        let cases = [
            ("08006", ConnectionLost, Some(true)),
            ("08001", ConnectionLost, Some(true)),
            ("57P01", ConnectionLost, Some(true)),
            ("57P02", ConnectionLost, Some(true)),
            ("57P03", ConnectionLost, Some(true)),
            ("57P04", Other, None),
            ("57014", Canceled, Some(true)),
            ("53300", ShortOfResources, Some(true)),
            ("53100", ShortOfResources, Some(true)),
            ("53400", ConfigLimit, Some(false)),
            ("40001", Contention, Some(true)),
            ("40P01", Contention, Some(true)),
            ("55P03", Contention, Some(true)),
            ("55006", Contention, Some(true)),
            ("25006", ReadOnly, Some(true)),
            ("EZ001", Fence(NotWritable), Some(false)),
            ("EZ002", Fence(Unmapped), Some(false)),
            ("EZ003", Fence(LeaseLapsed), Some(true)),
            ("28P01", Auth, Some(false)),
            ("28000", Auth, Some(false)),
            ("23505", Integrity, Some(false)),
            ("42704", Request, Some(false)),
            ("42501", Request, Some(false)),
            ("22023", Request, Some(false)),
            ("3D000", Request, Some(false)),
            ("0A000", Request, Some(false)),
            ("55000", Request, Some(false)),
            ("58P01", Request, Some(false)),
            ("XX000", Other, None),
            ("", Other, None),
            ("4", Other, None),
        ];
        for (code, kind, transient) in cases {
            assert_eq!(Kind::of_code(code), kind, "{code}");
            assert_eq!(kind.is_transient(), transient, "{code}");
        }
        assert!(Other.transient_or(true));
        assert!(!Other.transient_or(false));
        assert!(ConnectionLost.transient_or(false));
        assert!(!Auth.transient_or(true));
    }

    #[test]
    fn every_named_code_is_five_characters_and_named_once() {
        let mut seen = std::collections::BTreeSet::new();
        for (code, _) in BY_CODE {
            assert_eq!(code.len(), 5, "{code}");
            assert!(seen.insert(*code), "{code} twice");
        }
        for (class, _) in BY_CLASS {
            assert_eq!(class.len(), 2, "{class}");
        }
    }
}
