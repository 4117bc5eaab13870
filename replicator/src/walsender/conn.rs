//! A replication connection in its command phase: TCP connect, startup
//! message, authentication, then simple queries (the replication commands
//! of [`super::commands`] and, on a `replication=database` connection, plain
//! SQL too).
//!
//! ```text
//! client                                         server
//! StartupMessage(user, database, replication=database,
//!                application_name, client_encoding=UTF8) ->
//!                     <- Authentication* (see super::auth), AuthenticationOk
//!                     <- ParameterStatus* BackendKeyData
//!                     <- ReadyForQuery
//! Query(sql) ->
//!                     <- RowDescription DataRow* CommandComplete | ErrorResponse
//!                     <- ReadyForQuery
//! ```
//!
//! A connection runs one command at a time (`&mut self`). Its futures are
//! not cancel-safe: a command dropped half-way leaves the server's answer
//! unread, so the connection refuses any further command
//! ([`SourceError::Closed`]); open a new one.

use std::collections::HashMap;
use std::sync::Arc;

use ezone_pg::PgStream;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::net::TcpStream;

use super::auth::{authenticate, AuthMethod};
use super::config::SourceConfig;
use super::error::SourceError;
use super::session::Session;
use super::wire::{self, Frame};

/// Rows of a simple query, each value in text form (`None` is SQL NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// Settings the stream needs after the connection is consumed.
#[derive(Debug, Clone)]
pub(crate) struct StreamSettings {
    pub(crate) status_interval: std::time::Duration,
    pub(crate) receive_timeout: std::time::Duration,
}

/// A logged-in replication connection (`replication=database`) to one
/// source database, idle between commands. See the module docs.
pub struct ReplicationConn {
    pub(crate) session: Session,
    pub(crate) settings: StreamSettings,
    parameters: HashMap<String, String>,
    backend_pid: Option<i32>,
    auth_method: AuthMethod,
    /// Set while a command runs; still set at the next command if the
    /// previous one failed on I/O or was dropped half-way.
    in_command: bool,
}

impl ReplicationConn {
    /// Connects, authenticates and waits until the server is ready, all
    /// within `config.connect_timeout`.
    pub async fn connect(config: &SourceConfig) -> Result<ReplicationConn, SourceError> {
        config.validate()?;
        let server: Arc<str> = config.server().into();
        match tokio::time::timeout(config.connect_timeout, Self::connect_inner(config, &server))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(SourceError::Timeout {
                server: server.to_string(),
                slot: None,
                during: "connecting and authenticating",
                after: config.connect_timeout,
            }),
        }
    }

    async fn connect_inner(
        config: &SourceConfig,
        server: &Arc<str>,
    ) -> Result<ReplicationConn, SourceError> {
        let tcp = TcpStream::connect((config.host.as_str(), config.port))
            .await
            .map_err(|source| SourceError::Connect {
                server: server.to_string(),
                source,
            })?;
        let tls_config = if config.tls.mode.tries_tls() {
            Some(config.tls.client_config().map_err(|e| SourceError::Tls {
                server: server.to_string(),
                why: e.to_string(),
                transient: false,
            })?)
        } else {
            None
        };
        let stream = match tls_config {
            None => PgStream::Plain(tcp),
            Some(tls_config) => PgStream::negotiate(tcp, config.tls.mode, tls_config, &config.host)
                .await
                .map_err(|e| SourceError::Tls {
                    server: server.to_string(),
                    transient: e.is_transient(),
                    why: e.to_string(),
                })?,
        };
        // Status updates are small and must not wait for Nagle.
        stream
            .set_nodelay(true)
            .map_err(|source| SourceError::Connect {
                server: server.to_string(),
                source,
            })?;
        let binding = stream.is_tls().then(|| stream.channel_binding());
        let (reader, writer) = wire::split(stream);
        let mut session = Session {
            reader,
            writer,
            server: server.clone(),
        };

        const DURING: &str = "startup";
        let params = [
            ("user", config.user.as_str()),
            ("database", config.dbname.as_str()),
            ("replication", "database"),
            ("application_name", config.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params, session.writer.buf()).map_err(|e| {
            session.protocol(DURING, format!("cannot encode the startup message: {e}"))
        })?;
        session.flush(DURING).await?;

        let auth_method = authenticate(
            &mut session,
            &config.user,
            config.password.as_deref(),
            binding,
        )
        .await?;

        let mut parameters = HashMap::new();
        let mut backend_pid = None;
        loop {
            let message = match session.read(DURING).await? {
                Frame::Message(message) => message,
                other => return Err(session.unexpected(DURING, other.name())),
            };
            match message {
                Message::ParameterStatus(body) => {
                    if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                        parameters.insert(name.to_owned(), value.to_owned());
                    }
                }
                Message::BackendKeyData(body) => backend_pid = Some(body.process_id()),
                Message::NoticeResponse(body) => session.log_notice(&body),
                Message::ErrorResponse(body) => return Err(session.server_error(DURING, &body)),
                Message::ReadyForQuery(_) => break,
                other => return Err(session.unexpected(DURING, wire::message_name(&other))),
            }
        }
        tracing::debug!(
            server = %server,
            user = %config.user,
            auth = %auth_method,
            pid = ?backend_pid,
            version = ?parameters.get("server_version"),
            "Replication connection ready."
        );
        Ok(ReplicationConn {
            session,
            settings: StreamSettings {
                status_interval: config.status_interval,
                receive_timeout: config.receive_timeout,
            },
            parameters,
            backend_pid,
            auth_method,
            in_command: false,
        })
    }

    /// Runs `sql` with the simple query protocol and returns the rows of its
    /// (last) result set as text. For replication commands (see
    /// [`ReplicationConn::identify_system`] and its siblings for the typed
    /// ones) and, on this `replication=database` connection, ordinary SQL.
    ///
    /// An ErrorResponse is returned as [`SourceError::Server`] after the
    /// server is ready again, so the connection stays usable. Do not send
    /// `START_REPLICATION` here: use [`ReplicationConn::start_logical`].
    pub async fn simple_query(&mut self, sql: &str) -> Result<Rows, SourceError> {
        self.query(sql, "a simple query").await
    }

    /// [`ReplicationConn::simple_query`] with the command's name for errors.
    pub(crate) async fn query(
        &mut self,
        sql: &str,
        during: &'static str,
    ) -> Result<Rows, SourceError> {
        self.send_query(sql, during).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let message = match self.session.read(during).await? {
                Frame::Message(message) => message,
                Frame::CopyBothResponse => {
                    return Err(self.session.protocol(
                        during,
                        "the server entered CopyBoth mode: START_REPLICATION must go through \
                         start_logical; this connection is no longer usable"
                            .to_owned(),
                    ))
                }
            };
            match message {
                Message::RowDescription(_) => rows.clear(),
                Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    loop {
                        match ranges.next() {
                            Ok(Some(Some(range))) => {
                                let text = std::str::from_utf8(&buf[range]).map_err(|e| {
                                    self.session.protocol(
                                        during,
                                        format!("a result value is not UTF-8: {e}"),
                                    )
                                })?;
                                row.push(Some(text.to_owned()));
                            }
                            Ok(Some(None)) => row.push(None),
                            Ok(None) => break,
                            Err(e) => {
                                return Err(self
                                    .session
                                    .protocol(during, format!("bad DataRow: {e}")))
                            }
                        }
                    }
                    rows.push(row);
                }
                Message::CommandComplete(_) | Message::EmptyQueryResponse => {}
                Message::ErrorResponse(body) => {
                    error.get_or_insert_with(|| self.session.server_error(during, &body));
                }
                Message::NoticeResponse(body) => self.session.log_notice(&body),
                Message::ParameterStatus(body) => {
                    if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                        self.parameters.insert(name.to_owned(), value.to_owned());
                    }
                }
                Message::ReadyForQuery(_) => break,
                other => return Err(self.session.unexpected(during, wire::message_name(&other))),
            }
        }
        self.in_command = false;
        match error {
            Some(error) => Err(error),
            None => Ok(rows),
        }
    }

    /// Sends a Query message, refusing if an earlier command did not finish.
    pub(crate) async fn send_query(
        &mut self,
        sql: &str,
        during: &'static str,
    ) -> Result<(), SourceError> {
        if self.in_command {
            return Err(SourceError::Closed {
                server: self.session.server.to_string(),
                slot: None,
            });
        }
        self.in_command = true;
        frontend::query(sql, self.session.writer.buf()).map_err(|e| {
            self.session
                .protocol(during, format!("cannot encode the query: {e}"))
        })?;
        self.session.flush(during).await
    }

    /// `host:port/dbname`.
    pub fn server(&self) -> &str {
        &self.session.server
    }

    /// How we authenticated.
    pub fn auth_method(&self) -> AuthMethod {
        self.auth_method
    }

    /// A ParameterStatus the server reported (`server_version`,
    /// `server_encoding`, `integer_datetimes`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server process id serving this connection (its walsender).
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Says goodbye (Terminate) and closes the connection. Dropping it closes
    /// the socket without the goodbye, which the server handles as well.
    pub async fn close(mut self) -> Result<(), SourceError> {
        frontend::terminate(self.session.writer.buf());
        self.session.flush("closing the connection").await
    }
}

impl std::fmt::Debug for ReplicationConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConn")
            .field("server", &self.session.server)
            .field("backend_pid", &self.backend_pid)
            .field("auth_method", &self.auth_method)
            .finish_non_exhaustive()
    }
}
