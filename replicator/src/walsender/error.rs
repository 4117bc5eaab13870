//! What can go wrong talking to a source's walsender, classified by what the
//! caller should do about it.
//!
//! The replicator runs each link as "connect, stream, and on error either
//! restart the link (with backoff) or stop it and tell an operator". That
//! choice is [`SourceError::is_transient`], decided by the kind of error and,
//! for server errors, by SQLSTATE: never by matching message text.
//!
//! The rule, as in Materialize's replication source, is **transient unless
//! proven otherwise**: a network error, a timeout, a server restarting or
//! shutting down, a full connection table, all clear up by themselves, so the
//! link retries. An error is *definite* only when retrying the same thing
//! cannot succeed until someone changes something: a wrong password, a missing
//! slot or publication, an invalid option, WAL the slot needed that is gone, a
//! malformed message. Calling a definite error transient makes a link retry
//! forever without saying why; calling a transient error definite stops a link
//! that would have healed. When unsure, the former is preferred.
//!
//! Every message names the server (`host:port/dbname`), the slot when one is
//! involved, what we were doing, and the fix.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::pgoutput::DecodeError;

/// An error from the source side of a link. See the module docs.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The configuration is unusable: nothing was sent to any server.
    #[error("invalid source configuration: {field} {value}: {why}")]
    Config {
        /// The DSN key or config field (`port`, `dsn`, `slot name`, ...).
        field: String,
        /// The offending value, quoted (never a password).
        value: String,
        /// What is wrong and what is accepted.
        why: String,
    },

    /// The TCP connection could not be opened.
    #[error(
        "cannot connect to Postgres at {server}: {source}. Fix: check that the server is \
         running and listens on that address (listen_addresses, port) and that the network \
         lets us through; the link retries"
    )]
    Connect {
        /// `host:port/dbname`.
        server: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },

    /// TLS could not be set up: the certificates, the server's `ssl`
    /// setting, or a handshake cut by the network.
    #[error("TLS with Postgres {server}: {why}")]
    Tls {
        /// `host:port/dbname`.
        server: String,
        /// What went wrong, and the fix.
        why: String,
        /// Whether another try may succeed unchanged (a handshake cut by the
        /// network) or the setup must change (a certificate, `ssl=off`).
        transient: bool,
    },

    /// A step did not finish in time.
    #[error(
        "{during} with Postgres {server}{} timed out after {after:?}. Fix: check that the \
         server is up and not overloaded or paused; the link retries",
        SlotPart(.slot)
    )]
    Timeout {
        /// `host:port/dbname`.
        server: String,
        /// The slot being streamed or managed, if any.
        slot: Option<String>,
        /// What we were doing.
        during: &'static str,
        /// The limit that passed.
        after: Duration,
    },

    /// The connection failed or closed while in use.
    #[error(
        "connection to Postgres {server}{} lost during {during}: {source}. Fix: none needed if \
         the server was restarted or the network blipped, the link reconnects; otherwise check \
         the server log",
        SlotPart(.slot)
    )]
    Io {
        /// `host:port/dbname`.
        server: String,
        /// The slot being streamed or managed, if any.
        slot: Option<String>,
        /// What we were doing.
        during: &'static str,
        /// The socket error (`UnexpectedEof` when the server closed it).
        #[source]
        source: io::Error,
    },

    /// The server answered with an ErrorResponse (boxed: it is the largest
    /// variant, and errors travel through every `Result` of this module).
    #[error(transparent)]
    Server(Box<ServerError>),

    /// Authentication failed on our side: no password to give, or a method
    /// or answer we do not accept.
    #[error("cannot authenticate to Postgres {server} as user {user:?}: {why}")]
    Auth {
        /// `host:port/dbname`.
        server: String,
        /// The user we log in as.
        user: String,
        /// What went wrong, and the fix.
        why: String,
    },

    /// The server sent something the protocol does not allow here (or
    /// something this client does not support).
    #[error(
        "protocol error from Postgres {server}{} during {during}: {why}. Fix: check that \
         {server} is a PostgreSQL 15 server reached directly (not through a connection pooler, \
         which cannot carry replication connections); otherwise this is a replicator bug",
        SlotPart(.slot)
    )]
    Protocol {
        /// `host:port/dbname`.
        server: String,
        /// The slot being streamed, if any.
        slot: Option<String>,
        /// What we were doing.
        during: &'static str,
        /// What was wrong.
        why: String,
    },

    /// A CopyData frame in the replication stream is not a valid XLogData or
    /// keepalive.
    #[error(
        "malformed replication message from Postgres {server}{}: {source}. Fix: this is a \
         corrupted stream or a replicator bug; the link stops rather than skip data",
        SlotPart(.slot)
    )]
    Decode {
        /// `host:port/dbname`.
        server: String,
        /// The slot being streamed.
        slot: Option<String>,
        /// The decoder's error.
        #[source]
        source: DecodeError,
    },

    /// The connection is no longer usable: the stream already ended or
    /// failed, or an earlier command failed on I/O or was cancelled half-way.
    #[error(
        "the connection to Postgres {server}{} is no longer usable (the stream ended, or an \
         earlier command failed or was cancelled). Fix: open a new connection (the link \
         restarts from the last confirmed position)",
        SlotPart(.slot)
    )]
    Closed {
        /// `host:port/dbname`.
        server: String,
        /// The slot that was streamed.
        slot: Option<String>,
    },
}

impl SourceError {
    /// Whether retrying (reconnecting with backoff, restarting the link) can
    /// succeed without anyone changing anything. See the module docs for the
    /// rule; [`SourceError::Server`] is decided by [`sqlstate_is_transient`].
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect { .. }
            | SourceError::Timeout { .. }
            | SourceError::Io { .. }
            | SourceError::Closed { .. } => true,
            SourceError::Server(e) => sqlstate_is_transient(&e.code),
            SourceError::Tls { transient, .. } => *transient,
            SourceError::Config { .. }
            | SourceError::Auth { .. }
            | SourceError::Protocol { .. }
            | SourceError::Decode { .. } => false,
        }
    }

    /// The server's SQLSTATE, for a [`SourceError::Server`].
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SourceError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// A copy of this error for a second receiver (an `io::Error` is not
    /// `Clone`: its kind and text are kept, which is all any caller reads).
    pub(crate) fn duplicate(&self) -> SourceError {
        let io = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            SourceError::Config { field, value, why } => SourceError::Config {
                field: field.clone(),
                value: value.clone(),
                why: why.clone(),
            },
            SourceError::Tls {
                server,
                why,
                transient,
            } => SourceError::Tls {
                server: server.clone(),
                why: why.clone(),
                transient: *transient,
            },
            SourceError::Connect { server, source } => SourceError::Connect {
                server: server.clone(),
                source: io(source),
            },
            SourceError::Timeout {
                server,
                slot,
                during,
                after,
            } => SourceError::Timeout {
                server: server.clone(),
                slot: slot.clone(),
                during,
                after: *after,
            },
            SourceError::Io {
                server,
                slot,
                during,
                source,
            } => SourceError::Io {
                server: server.clone(),
                slot: slot.clone(),
                during,
                source: io(source),
            },
            SourceError::Server(e) => SourceError::Server(e.clone()),
            SourceError::Auth { server, user, why } => SourceError::Auth {
                server: server.clone(),
                user: user.clone(),
                why: why.clone(),
            },
            SourceError::Protocol {
                server,
                slot,
                during,
                why,
            } => SourceError::Protocol {
                server: server.clone(),
                slot: slot.clone(),
                during,
                why: why.clone(),
            },
            SourceError::Decode {
                server,
                slot,
                source,
            } => SourceError::Decode {
                server: server.clone(),
                slot: slot.clone(),
                source: source.clone(),
            },
            SourceError::Closed { server, slot } => SourceError::Closed {
                server: server.clone(),
                slot: slot.clone(),
            },
        }
    }

    /// Attaches a slot name to an error that does not name one yet.
    pub(crate) fn with_slot(mut self, name: &str) -> Self {
        match &mut self {
            SourceError::Timeout { slot, .. }
            | SourceError::Io { slot, .. }
            | SourceError::Protocol { slot, .. }
            | SourceError::Decode { slot, .. }
            | SourceError::Closed { slot, .. } => {
                if slot.is_none() {
                    *slot = Some(name.to_owned());
                }
            }
            SourceError::Server(e) => {
                if e.slot.is_none() {
                    e.slot = Some(name.to_owned());
                }
            }
            SourceError::Config { .. }
            | SourceError::Connect { .. }
            | SourceError::Tls { .. }
            | SourceError::Auth { .. } => {}
        }
        self
    }
}

/// An ErrorResponse from the server, with what we were doing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Postgres {server}{} refused {during}: {message} (SQLSTATE {code}){}{}. Fix: {}",
    SlotPart(&self.slot),
    Labelled(" detail: ", &self.detail),
    Labelled(" hint: ", &self.hint),
    server_fix(&self.code)
)]
pub struct ServerError {
    /// `host:port/dbname`.
    pub server: String,
    /// The slot being streamed or managed, if any.
    pub slot: Option<String>,
    /// What we were doing (`authentication`, `START_REPLICATION`, ...).
    pub during: &'static str,
    /// The SQLSTATE, e.g. `42704`.
    pub code: String,
    /// The server's primary message.
    pub message: String,
    /// The server's DETAIL, if any.
    pub detail: Option<String>,
    /// The server's HINT, if any.
    pub hint: Option<String>,
}

impl ServerError {
    /// Whether retrying can help; see [`sqlstate_is_transient`].
    pub fn is_transient(&self) -> bool {
        sqlstate_is_transient(&self.code)
    }
}

/// Whether a server error with this SQLSTATE may go away by itself.
///
/// Definite (returns `false`):
/// - class `28` invalid authorization (`28P01` wrong password, `28000` no
///   pg_hba.conf entry): someone must fix credentials or pg_hba.conf;
/// - class `42` syntax error or access rule violation (`42704` undefined
///   object: a missing slot or publication; `42710` slot already exists;
///   `42601` syntax error; `42501` no REPLICATION privilege);
/// - class `22` data exception (`22023` invalid parameter value, e.g. an
///   unknown pgoutput option or proto_version);
/// - class `3D` invalid catalog name (the database does not exist) and `0A`
///   feature not supported;
/// - `55000` object not in prerequisite state (`wal_level` is not `logical`,
///   the slot belongs to another database or plugin, the slot was
///   invalidated);
/// - `58P01` undefined file: the WAL the slot needs was removed, the slot
///   can never stream again;
/// - `53400` configuration limit exceeded (all `max_replication_slots` used).
///
/// Everything else is transient, notably class `08` connection exceptions,
/// class `57` operator intervention (`57P01` admin shutdown, `57P02` crash
/// shutdown, `57P03` cannot connect now: starting up or in recovery), `53300`
/// too many connections / no free WAL sender, and `55006` object in use.
///
/// `55006` ("replication slot ... is active for PID ...") is the transient-ish
/// one: most often the PID is the walsender of *our own* previous connection,
/// which the server ends once it notices the client is gone (at the latest
/// after `wal_sender_timeout`), so a retry with backoff succeeds. If another
/// consumer really holds the slot, the error repeats and the link's retry
/// metrics and logs show it; it is never a reason to stop the link for good.
///
/// The codes are those of [`crate::pg_error`]'s table, shared by every part
/// of ezone; a code the table does not name is transient here (a read-only
/// stream cannot be left half-done by a retry).
pub fn sqlstate_is_transient(code: &str) -> bool {
    crate::pg_error::Kind::of_code(code).transient_or(true)
}

/// What an operator (or the link) should do about a server error.
fn server_fix(code: &str) -> &'static str {
    match code {
        "28P01" | "28000" => {
            "check the user and password in the source DSN, and that the server's \
             pg_hba.conf allows a replication connection (database `replication` and the \
             database itself) for this user from this host"
        }
        "42704" => {
            "the replication slot or publication named does not exist on this server: \
             create it (link setup does), or correct the name in the link configuration"
        }
        "42710" => "a replication slot of this name already exists: reuse it or drop it first",
        "42501" => "grant the user the REPLICATION attribute: ALTER ROLE <user> REPLICATION",
        "3D000" => "the database does not exist on this server: correct dbname in the source DSN",
        "55006" => {
            "another connection is streaming from this slot; if it is an earlier connection \
             of this replicator the server frees the slot once it notices it is gone (at most \
             wal_sender_timeout), so the link retries; otherwise stop the other consumer"
        }
        "55000" => {
            "the server or slot is not in the state this needs (wal_level must be 'logical'; \
             the slot must be a logical pgoutput slot of this database and not invalidated): \
             fix the setting, or drop and recreate the slot and re-seed the target"
        }
        "58P01" => {
            "the WAL this slot still needs was removed (the slot fell behind \
             max_slot_wal_keep_size or was invalidated): drop and recreate the slot and \
             re-seed the target from the new slot's snapshot"
        }
        "53300" => {
            "the server has no free connection or WAL sender (max_connections, \
             max_wal_senders); the link retries, raise the limit if this persists"
        }
        "53400" => {
            "a server limit is reached (max_replication_slots, max_wal_senders): raise it or \
             drop unused replication slots"
        }
        "57P01" | "57P02" | "57P03" => {
            "the server is shutting down, restarting or still starting up; the link retries \
             once it accepts connections"
        }
        code if code.starts_with("22") || code.starts_with("42") => {
            "the server rejected the command's names or options: check the slot and \
             publication names in the link configuration; if they are right this is a \
             replicator bug"
        }
        code if code.starts_with("08") => "the connection failed; the link reconnects",
        _ => "see the server log for this SQLSTATE; the link retries",
    }
}

/// Renders ` (slot "name")` or nothing.
struct SlotPart<'a>(&'a Option<String>);

impl fmt::Display for SlotPart<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(slot) => write!(f, " (slot {slot:?})"),
            None => Ok(()),
        }
    }
}

/// Renders `;{label}{value}` or nothing.
struct Labelled<'a>(&'static str, &'a Option<String>);

impl fmt::Display for Labelled<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(value) => write!(f, ";{}{value}", self.0),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str) -> SourceError {
        SourceError::Server(Box::new(ServerError {
            server: "127.0.0.1:5432/ezone".into(),
            slot: Some("link_a_b".into()),
            during: "START_REPLICATION",
            code: code.into(),
            message: "something".into(),
            detail: Some("more".into()),
            hint: None,
        }))
    }

    #[test]
    fn classification_by_sqlstate() {
        let cases = [
            ("28P01", false),
            ("28000", false),
            ("42704", false),
            ("42710", false),
            ("42601", false),
            ("42501", false),
            ("22023", false),
            ("3D000", false),
            ("0A000", false),
            ("55000", false),
            ("58P01", false),
            ("53400", false),
            ("57P01", true),
            ("57P02", true),
            ("57P03", true),
            ("53300", true),
            ("55006", true),
            ("08006", true),
            ("40001", true),
            ("XX000", true),
            ("", true),
            ("4", true),
        ];
        for (code, transient) in cases {
            assert_eq!(sqlstate_is_transient(code), transient, "{code}");
            assert_eq!(server_error(code).is_transient(), transient, "{code}");
        }
    }

    #[test]
    fn server_error_names_server_slot_and_fix() {
        let text = server_error("42704").to_string();
        assert!(text.contains("127.0.0.1:5432/ezone"), "{text}");
        assert!(text.contains("(slot \"link_a_b\")"), "{text}");
        assert!(text.contains("SQLSTATE 42704"), "{text}");
        assert!(text.contains("detail: more"), "{text}");
        assert!(!text.contains("hint:"), "{text}");
        assert!(
            text.contains("Fix: the replication slot or publication"),
            "{text}"
        );
    }

    #[test]
    fn io_errors_are_transient_and_with_slot_fills_in_once() {
        let err = SourceError::Io {
            server: "h:1/d".into(),
            slot: None,
            during: "streaming",
            source: io::Error::from(io::ErrorKind::ConnectionReset),
        };
        assert!(err.is_transient());
        let err = err.with_slot("s1").with_slot("s2");
        assert!(err.to_string().contains("(slot \"s1\")"), "{err}");
    }
}
