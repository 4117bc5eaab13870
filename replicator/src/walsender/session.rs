//! The framed connection a walsender client talks over, with the name its
//! errors give it: shared by the connection's setup and authentication
//! (`conn.rs`, `auth.rs`), the commands and the stream task.

use std::sync::Arc;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorResponseBody, NoticeResponseBody};

use super::error::{ServerError, SourceError};
use super::wire::{Frame, FrameReader, FrameWriter, WireError};

/// The framed connection plus the name errors give it. Shared by the command
/// phase and the stream task.
pub(crate) struct Session {
    pub(crate) reader: FrameReader,
    pub(crate) writer: FrameWriter,
    /// `host:port/dbname`.
    pub(crate) server: Arc<str>,
}

impl Session {
    /// The next backend message, errors named after `during`.
    pub(crate) async fn read(&mut self, during: &'static str) -> Result<Frame, SourceError> {
        self.reader
            .read_frame()
            .await
            .map_err(|e| self.wire_error(during, e))
    }

    /// Sends what is buffered in the writer.
    pub(crate) async fn flush(&mut self, during: &'static str) -> Result<(), SourceError> {
        self.writer
            .flush()
            .await
            .map_err(|e| self.wire_error(during, WireError::Io(e)))
    }

    pub(crate) fn wire_error(&self, during: &'static str, e: WireError) -> SourceError {
        match e {
            WireError::Io(source) => SourceError::Io {
                server: self.server.to_string(),
                slot: None,
                during,
                source,
            },
            WireError::Protocol(why) => self.protocol(during, why),
        }
    }

    pub(crate) fn protocol(&self, during: &'static str, why: String) -> SourceError {
        SourceError::Protocol {
            server: self.server.to_string(),
            slot: None,
            during,
            why,
        }
    }

    /// A message that the protocol does not allow at this point.
    pub(crate) fn unexpected(&self, during: &'static str, name: &str) -> SourceError {
        self.protocol(during, format!("unexpected {name} message"))
    }

    /// An ErrorResponse as a [`SourceError::Server`].
    pub(crate) fn server_error(
        &self,
        during: &'static str,
        body: &ErrorResponseBody,
    ) -> SourceError {
        let fields = ErrorFields::parse(body.fields());
        SourceError::Server(Box::new(ServerError {
            server: self.server.to_string(),
            slot: None,
            during,
            code: fields.code.unwrap_or_default(),
            message: fields
                .message
                .unwrap_or_else(|| "(the server sent no message)".to_owned()),
            detail: fields.detail,
            hint: fields.hint,
        }))
    }

    /// Logs a NoticeResponse (a WARNING from the server is worth seeing).
    pub(crate) fn log_notice(&self, body: &NoticeResponseBody) {
        let fields = ErrorFields::parse(body.fields());
        let message = fields.message.unwrap_or_default();
        let severity = fields.severity.unwrap_or_default();
        if severity == "WARNING" {
            tracing::warn!(
                server = %self.server,
                code = ?fields.code,
                detail = ?fields.detail,
                "Postgres warns: {message}"
            );
        } else {
            tracing::debug!(
                server = %self.server,
                %severity,
                code = ?fields.code,
                "Postgres notice: {message}"
            );
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse we use.
#[derive(Default)]
struct ErrorFields {
    severity: Option<String>,
    code: Option<String>,
    message: Option<String>,
    detail: Option<String>,
    hint: Option<String>,
}

impl ErrorFields {
    fn parse<'a, I>(mut fields: I) -> ErrorFields
    where
        I: FallibleIterator<Item = postgres_protocol::message::backend::ErrorField<'a>>,
    {
        let mut out = ErrorFields::default();
        // A malformed field list keeps what was read before the damage.
        while let Ok(Some(field)) = fields.next() {
            let value = || Some(String::from_utf8_lossy(field.value_bytes()).into_owned());
            match field.type_() {
                // 'V' is the non-localized severity; prefer it over 'S'.
                b'V' => out.severity = value(),
                b'S' if out.severity.is_none() => out.severity = value(),
                b'C' => out.code = value(),
                b'M' => out.message = value(),
                b'D' => out.detail = value(),
                b'H' => out.hint = value(),
                _ => {}
            }
        }
        out
    }
}
