//! How every ezone part reaches Postgres.
//!
//! - [`dsn`]: one DSN parser (libpq's keyword and URI forms) on top of
//!   tokio-postgres' own, extended with libpq's TLS keys and `passfile`;
//! - [`tls`]: `sslmode` as libpq means it, on rustls;
//! - [`passfile`]: passwords from a libpq password file;
//! - [`redact`]: DSN passwords out of text that is printed;
//! - [`connect()`]: tokio-postgres connections with that TLS;
//! - [`stream`]: the SSLRequest and handshake for clients that speak the
//!   protocol themselves (the replicator's walsender client).

pub mod connect;
pub mod dsn;
pub mod passfile;
pub mod redact;
pub mod stream;
pub mod tls;

pub use connect::{
    connect, connect_dsn, connect_spawned, is_tls_setup_error, probe, spawn, ConnectError,
    Connection, ProbeError, Tls,
};
pub use dsn::{Dsn, DsnError};
pub use stream::{NegotiateError, PgStream};
pub use tls::{SslMode, TlsError, TlsSettings};
