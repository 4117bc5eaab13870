//! tokio-postgres connections from a [`Dsn`], TLS as its `sslmode` says.
//!
//! [`Tls`] is the connector tokio-postgres (and a connection pool) is given.
//! It is made without failing: when the DSN's certificate files cannot be
//! read, the connector carries that error and each connection attempt fails
//! with it as a tokio-postgres TLS error, so a caller has one error type to
//! classify; [`is_tls_setup_error`] tells such a failure (and a certificate
//! the server or we refused) from a network one.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;

use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::dsn::{Dsn, DsnError};
use crate::tls::{SslMode, TlsError, TlsSettings};

/// The TLS stream type tokio-postgres' connections run over.
pub type TlsStream =
    <<MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect as TlsConnect<Socket>>::Stream;

/// A connection's I/O task: spawn it (it ends when the client is dropped).
pub type Connection = tokio_postgres::Connection<Socket, TlsStream>;

/// The connector for one DSN's TLS settings (see the module docs).
#[derive(Clone)]
pub struct Tls(Result<MakeRustlsConnect, Arc<TlsError>>);

impl Tls {
    /// The connector `settings` mean; the files are read now.
    pub fn new(settings: &TlsSettings) -> Tls {
        let config = if settings.mode.tries_tls() {
            settings.client_config()
        } else {
            // Never used for a handshake; no file is read.
            TlsSettings {
                mode: SslMode::Disable,
                ..TlsSettings::default()
            }
            .client_config()
        };
        Tls(config
            .map(|c| MakeRustlsConnect::new((*c).clone()))
            .map_err(Arc::new))
    }

    /// The error the certificate files gave, if they did.
    pub fn error(&self) -> Option<&TlsError> {
        self.0.as_ref().err().map(|e| e.as_ref())
    }
}

/// A [`TlsError`] shared by every attempt of one connector.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct SharedTlsError(pub Arc<TlsError>);

impl MakeTlsConnect<Socket> for Tls {
    type Stream = TlsStream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
    type Error = Box<dyn StdError + Send + Sync>;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        match &mut self.0 {
            Ok(make) => {
                <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(make, domain)
                    .map_err(Into::into)
            }
            Err(e) => Err(Box::new(SharedTlsError(e.clone()))),
        }
    }
}

/// Whether a tokio-postgres error is TLS refusing to go on (a certificate
/// file we cannot use, a certificate that does not verify, a client
/// certificate the server refused): the setup must change before another
/// try can succeed. A handshake cut by the network is not one.
pub fn is_tls_setup_error(e: &tokio_postgres::Error) -> bool {
    let mut cause: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(c) = cause {
        if c.is::<SharedTlsError>() || c.is::<TlsError>() || c.is::<rustls::Error>() {
            return true;
        }
        // An io::Error's `source()` skips the error it wraps: look inside.
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if inner.is::<rustls::Error>() {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// Why a connection could not be made: the DSN, or Postgres (the network,
/// TLS, the server, authentication: classify it by SQLSTATE and
/// [`is_tls_setup_error`]).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Dsn(#[from] DsnError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// Connects as `dsn` says.
pub async fn connect_dsn(dsn: &Dsn) -> Result<(Client, Connection), tokio_postgres::Error> {
    dsn.config().connect(Tls::new(dsn.tls())).await
}

/// Parses `dsn` and connects.
pub async fn connect(dsn: &str) -> Result<(Client, Connection), ConnectError> {
    Ok(connect_dsn(&Dsn::parse(dsn)?).await?)
}

/// Parses `dsn`, connects and spawns the connection's task, which logs its
/// end at debug level: for the short-lived connections of commands and
/// checks.
pub async fn connect_spawned(dsn: &str) -> Result<Client, ConnectError> {
    let (client, conn) = connect(dsn).await?;
    spawn(conn);
    Ok(client)
}

/// Why a [`probe`] found no answering server.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect: {0}")]
    Connect(#[source] ConnectError),
    #[error("no answer within {0:?}")]
    ConnectTimeout(std::time::Duration),
    #[error("connected, but no answer to a query within {0:?}")]
    QueryTimeout(std::time::Duration),
    #[error("connected, but the query failed: {0}")]
    Query(#[source] tokio_postgres::Error),
}

/// Whether the server at `dsn` answers: connects and runs one trivial
/// query, each within `within` (a dry run's probe of a site).
pub async fn probe(dsn: &str, within: std::time::Duration) -> Result<(), ProbeError> {
    let client = match tokio::time::timeout(within, connect_spawned(dsn)).await {
        Err(_) => return Err(ProbeError::ConnectTimeout(within)),
        Ok(c) => c.map_err(ProbeError::Connect)?,
    };
    match tokio::time::timeout(within, client.simple_query("SELECT 1")).await {
        Err(_) => Err(ProbeError::QueryTimeout(within)),
        Ok(r) => r.map(|_| ()).map_err(ProbeError::Query),
    }
}

/// Spawns a connection's task.
pub fn spawn(conn: impl Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "Postgres connection ended");
        }
    });
}
