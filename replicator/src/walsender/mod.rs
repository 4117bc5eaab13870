//! The source side of a link: a client for PostgreSQL's streaming
//! replication protocol, logical replication with `pgoutput`.
//!
//! tokio-postgres cannot do this (it has no CopyBoth mode), so the client is
//! built on `postgres-protocol`'s message encoders and parser over a plain
//! `tokio::net::TcpStream`. TLS is not supported yet: the connection is
//! unencrypted, which is fine on the lab's loopback and a private network,
//! and has to be added (an `SslRequest` before startup, then
//! `tokio-rustls`) before sources are reached over anything else.
//!
//! # Protocol flow
//!
//! ```text
//! ReplicationConn::connect                     (conn.rs, auth.rs)
//!   C: StartupMessage user, database, replication=database, application_name
//!   S: Authentication... trust | cleartext | MD5 | SCRAM-SHA-256 exchange
//!   S: ParameterStatus*, BackendKeyData, ReadyForQuery
//!
//! commands, one at a time, each Query -> rows -> ReadyForQuery   (commands.rs)
//!   IDENTIFY_SYSTEM                        -> systemid, timeline, xlogpos, dbname
//!   CREATE_REPLICATION_SLOT s LOGICAL pgoutput (SNAPSHOT 'export')
//!                                          -> consistent_point, snapshot_name
//!       (the snapshot lives while this connection stays open and idle: seed now)
//!   DROP_REPLICATION_SLOT s [WAIT]
//!
//! ReplicationConn::start_logical  (consumes the connection)      (stream.rs)
//!   C: START_REPLICATION SLOT s LOGICAL <lsn> (proto_version '1',
//!        publication_names '"p"', messages 'true')
//!   S: CopyBothResponse                                  --- CopyBoth mode ---
//!   S: CopyData 'w' XLogData (one pgoutput message each)  -> StreamEvent::XLogData
//!   S: CopyData 'k' keepalive                             -> StreamEvent::Keepalive
//!   C: CopyData 'r' status update (written, flushed, applied, clock, reply):
//!        every status_interval (default 3 s, also when idle or when the caller
//!        is busy), at once when a keepalive asks for a reply, and on
//!        ReplicationStream::send_status
//!   S: ErrorResponse -> error | CopyDone -> end (we answer CopyDone)
//! ```
//!
//! # Progress, and why it never goes backwards
//!
//! The `flushed` LSN of a status update is the slot's confirmed position:
//! the server may discard WAL up to it, and a reconnecting stream starts
//! after it. Confirming a transaction that is not yet durably applied at the
//! target therefore loses it on a crash; so the caller confirms
//! ([`ReplicationStream::confirm`]) a Commit's `end_lsn` only once the target
//! transaction has committed, and the stream reports the *largest* position
//! ever confirmed: a lower value is ignored, since older PostgreSQL 15 minor
//! releases would move the slot back ([`progress`] explains it in full).
//!
//! # Errors
//!
//! [`SourceError::is_transient`] says whether restarting the link can help:
//! transient unless proven otherwise (see [`error`]).

mod auth;
mod commands;
mod config;
mod conn;
pub mod error;
pub mod progress;
mod session;
mod stream;
mod wire;

pub use self::auth::AuthMethod;
pub use self::commands::{validate_slot_name, SlotInfo, SystemInfo, MAX_SLOT_NAME_LEN};
pub use self::config::{
    SourceConfig, DEFAULT_APPLICATION_NAME, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HOST, DEFAULT_PORT,
    DEFAULT_RECEIVE_TIMEOUT, DEFAULT_STATUS_INTERVAL,
};
pub use self::conn::{ReplicationConn, Rows};
pub use self::error::{sqlstate_is_transient, ServerError, SourceError};
pub use self::progress::Progress;
pub use self::stream::{ReplicationStream, StreamEvent, EVENT_BUFFER};
