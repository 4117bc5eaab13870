//! A raw connection to Postgres that may be TLS, for clients that speak the
//! protocol themselves (the replicator's walsender client): the SSLRequest
//! negotiation, the handshake, and the channel-binding data SCRAM needs.
//!
//! ```text
//! client                              server
//! SSLRequest (len 8, code 80877103) ->
//!                                     <- 'S' (go ahead) | 'N' (no TLS here)
//! TLS handshake (rustls)            <->
//! StartupMessage ...                  (over TLS from here on)
//! ```
//!
//! tokio-postgres does the same for its own connections (see
//! [`crate::connect()`]); both take their settings from one [`crate::Dsn`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls::{server_end_point, SslMode};

/// The SSLRequest code (1234 << 16 | 5679).
const SSL_REQUEST_CODE: i32 = 80_877_103;

/// A connection to Postgres, plain or TLS.
pub enum PgStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why TLS could not be set up on a fresh connection.
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    #[error("the server does not offer TLS but sslmode={mode} requires it. Fix: set ssl=on (with ssl_cert_file and ssl_key_file) in the server's postgresql.conf, or lower sslmode")]
    Refused { mode: SslMode },
    #[error("the server answered the TLS request with {0:?}, not 'S' or 'N': is this a Postgres server?")]
    Unexpected(u8),
    #[error("the TLS handshake failed: {0}. Fix: check sslrootcert against the CA that signed the server's certificate, and that the host name is one the certificate names (or use sslmode=verify-ca)")]
    Handshake(#[source] io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl NegotiateError {
    /// Whether another try may succeed (the network), or the setup must
    /// change first (certificates, the server's ssl setting).
    pub fn is_transient(&self) -> bool {
        match self {
            NegotiateError::Io(_) => true,
            // A handshake cut by the network is an I/O error wrapped in a
            // rustls one only when rustls saw bad data; a plain reset or EOF
            // during the handshake is transient.
            NegotiateError::Handshake(e) => e
                .get_ref()
                .is_none_or(|inner| inner.downcast_ref::<rustls::Error>().is_none()),
            NegotiateError::Refused { .. } | NegotiateError::Unexpected(_) => false,
        }
    }
}

impl PgStream {
    /// Asks the server for TLS as `mode` says and, when it agrees, runs the
    /// handshake with `config`, naming the server `host`.
    pub async fn negotiate(
        mut stream: TcpStream,
        mode: SslMode,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> Result<PgStream, NegotiateError> {
        if !mode.tries_tls() {
            return Ok(PgStream::Plain(stream));
        }
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8i32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        stream.write_all(&request).await?;
        let answer = stream.read_u8().await?;
        match answer {
            b'S' => {}
            b'N' if mode.requires_tls() => return Err(NegotiateError::Refused { mode }),
            b'N' => return Ok(PgStream::Plain(stream)),
            other => return Err(NegotiateError::Unexpected(other)),
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            NegotiateError::Handshake(io::Error::new(io::ErrorKind::InvalidInput, e))
        })?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(NegotiateError::Handshake)?;
        Ok(PgStream::Tls(Box::new(tls)))
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, PgStream::Tls(_))
    }

    /// The `tls-server-end-point` data of the server's certificate (for
    /// SCRAM-SHA-256-PLUS), when the connection is TLS and the certificate's
    /// algorithm has a digest.
    pub fn channel_binding(&self) -> Option<Vec<u8>> {
        match self {
            PgStream::Plain(_) => None,
            PgStream::Tls(tls) => {
                let (_, session) = tls.get_ref();
                let first = session.peer_certificates()?.first()?;
                server_end_point(first.as_ref())
            }
        }
    }

    /// Nagle off (small status messages must not wait).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            PgStream::Plain(s) => s.set_nodelay(on),
            PgStream::Tls(s) => s.get_ref().0.set_nodelay(on),
        }
    }
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PgStream::Plain(s) => s.is_write_vectored(),
            PgStream::Tls(s) => s.is_write_vectored(),
        }
    }
}
