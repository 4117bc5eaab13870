//! Why a request over TLS failed, when etcd-client cannot say.
//!
//! In TLS 1.3 a server refuses a client certificate (or its absence) only
//! after the client thinks the handshake is done: etcd sends an alert and
//! closes. etcd-client's HTTP/2 connection then reports either that alert
//! (as text) or just "connection closed", depending on timing, which looks
//! like an outage. So after such a failure the store asks itself: it
//! connects to each endpoint with the same CA, certificate and name, does
//! the handshake, sends the HTTP/2 preface and waits for etcd's first
//! frame. A refusal there is certain, and is named (see
//! [`super::etcd::EtcdStore`]'s `Misconfigured` errors).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::store::etcd_options::EtcdTls;

/// How long one endpoint's probe may take in all.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// What a probe of one endpoint found.
#[derive(Debug)]
pub(crate) enum Probe {
    /// etcd answered over TLS: the failure was something else.
    Accepted,
    /// Not reached, or no answer in time: says nothing about TLS.
    Unknown,
    /// The TLS session was refused.
    Refused(rustls::Error),
    /// etcd closed the connection right after the handshake, without an
    /// alert we could read.
    Closed,
}

/// Probes `endpoint` (`https://HOST:PORT` or `HOST:PORT`) with `tls`.
pub(crate) async fn probe(endpoint: &str, tls: &EtcdTls) -> Probe {
    match tokio::time::timeout(PROBE_TIMEOUT, probe_inner(endpoint, tls)).await {
        Ok(p) => p,
        Err(_) => Probe::Unknown,
    }
}

async fn probe_inner(endpoint: &str, tls: &EtcdTls) -> Probe {
    let Some((host, port)) = host_port(endpoint) else {
        return Probe::Unknown;
    };
    let Some(config) = client_config(tls) else {
        return Probe::Unknown;
    };
    let name = tls.domain.as_deref().unwrap_or(host.as_str()).trim();
    let Ok(server_name) = ServerName::try_from(name.to_string()) else {
        return Probe::Unknown;
    };
    let Ok(tcp) = TcpStream::connect((host.as_str(), port)).await else {
        return Probe::Unknown;
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut stream = match connector.connect(server_name, tcp).await {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    if let Err(e) = async {
        stream.write_all(H2_PREFACE).await?;
        stream.flush().await
    }
    .await
    {
        return refused(e);
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf).await {
        Ok(0) => Probe::Closed,
        Ok(_) => Probe::Accepted,
        Err(e) => refused(e),
    }
}

fn refused(e: std::io::Error) -> Probe {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => Probe::Refused(tls.clone()),
        None if e.kind() == std::io::ErrorKind::ConnectionReset => Probe::Closed,
        None => Probe::Unknown,
    }
}

/// The same trust and identity as etcd-client is given (see
/// [`EtcdTls::load`](crate::store::etcd_options)), for rustls directly.
fn client_config(tls: &EtcdTls) -> Option<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.ca_file).ok()? {
        roots.add(cert.ok()?).ok()?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots);
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .ok()?
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let key = PrivateKeyDer::from_pem_file(key).ok()?;
            builder.with_client_auth_cert(chain, key).ok()?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(config)
}

/// `HOST` and `PORT` of `https://HOST:PORT[/...]` (or without a scheme);
/// an IPv6 host in brackets comes out without them.
fn host_port(endpoint: &str) -> Option<(String, u16)> {
    let rest = endpoint
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(endpoint);
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(
            host_port("https://127.0.0.1:2379"),
            Some(("127.0.0.1".into(), 2379))
        );
        assert_eq!(
            host_port("etcd.internal:2379/"),
            Some(("etcd.internal".into(), 2379))
        );
        assert_eq!(host_port("https://[::1]:2379"), Some(("::1".into(), 2379)));
        assert_eq!(host_port("https://etcd"), None);
    }
}
