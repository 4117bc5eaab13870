//! TLS to Postgres as libpq means it: the six `sslmode`s, a root certificate
//! (`sslrootcert`), a client certificate (`sslcert` and `sslkey`), all on
//! rustls with the `ring` provider passed explicitly.
//!
//! | sslmode | TLS | chain verified | host name verified |
//! |---|---|---|---|
//! | `disable` | never | - | - |
//! | `allow` | never (libpq would try TLS after a refused plain login; ezone does not) | - | - |
//! | `prefer` (default) | if the server offers it | no | no |
//! | `require` | always | no (yes with `sslrootcert`, as in libpq) | no |
//! | `verify-ca` | always | yes, against `sslrootcert` | no |
//! | `verify-full` | always | yes, against `sslrootcert` | yes |
//!
//! A mode that verifies needs `sslrootcert`: libpq would fall back to
//! `~/.postgresql/root.crt`, a file nobody remembers is there; ezone asks for
//! the path. `prefer` and `require` without a root encrypt but do not know
//! whom they talk to: the handshake's signatures are still checked, so the
//! peer holds the key of the certificate it showed, but any certificate is
//! taken. Use `verify-full` across a WAN.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::dsn::DsnError;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// What tokio-postgres is told: it knows disable, prefer and require;
    /// the verification is in the rustls config.
    pub fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self {
            SslMode::Disable | SslMode::Allow => T::Disable,
            SslMode::Prefer => T::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => T::Require,
        }
    }

    /// Whether a connection without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// Whether TLS is tried at all.
    pub fn tries_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Allow)
    }
}

impl FromStr for SslMode {
    type Err = DsnError;

    fn from_str(s: &str) -> Result<SslMode, DsnError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(DsnError::new(
                    "sslmode",
                    format!(
                        "{other:?} is not a mode; use disable, allow, prefer, require, \
                         verify-ca or verify-full"
                    ),
                ))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// A DSN's TLS keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`: PEM file of the CA certificates the server's chain must
    /// end in.
    pub rootcert: Option<PathBuf>,
    /// `sslcert`: PEM file of the client certificate chain, for servers whose
    /// `pg_hba.conf` asks for one (`clientcert=verify-full` or `cert`).
    pub cert: Option<PathBuf>,
    /// `sslkey`: PEM file of the client certificate's private key.
    pub key: Option<PathBuf>,
}

/// Why the TLS settings could not be turned into a client config. Each
/// message names the DSN key, the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("Postgres DSN, {key} {}: cannot read the file: {source}; check the path and its permissions", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Postgres DSN, {key} {}: {why}", path.display())]
    Content {
        key: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("Postgres TLS: {0}; check that sslcert and sslkey belong together")]
    Rustls(#[from] rustls::Error),
}

impl TlsSettings {
    /// Checks that the keys fit together; errors name the missing key.
    pub fn validate(&self) -> Result<(), DsnError> {
        if matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) && self.rootcert.is_none() {
            return Err(DsnError::new(
                "sslrootcert",
                format!(
                    "sslmode={} verifies the server's certificate and needs the CA that \
                     signed it: add sslrootcert=/path/to/ca.pem",
                    self.mode
                ),
            ));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(DsnError::new(
                "sslkey",
                "sslcert names a client certificate; add sslkey with its private key",
            )),
            (None, Some(_)) => Err(DsnError::new(
                "sslcert",
                "sslkey names a private key; add sslcert with its certificate",
            )),
            _ => Ok(()),
        }
    }

    /// The rustls client config these settings mean (files read now). For
    /// `disable` and `allow` it is never used, and it is the unverifying one.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.rootcert, self.mode) {
            (Some(path), SslMode::VerifyFull) => webpki(path, &provider)?,
            (Some(path), SslMode::VerifyCa | SslMode::Require) => Arc::new(ChainOnly {
                inner: webpki(path, &provider)?,
            }),
            _ => Arc::new(AnyCertificate { provider }),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(read_certs("sslcert", cert)?, read_key(key)?)?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

fn webpki(
    rootcert: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("sslrootcert", rootcert)? {
        roots.add(cert).map_err(|e| TlsError::Content {
            key: "sslrootcert",
            path: rootcert.to_owned(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Content {
            key: "sslrootcert",
            path: rootcert.to_owned(),
            why: format!("cannot verify with these CA certificates: {e}"),
        })
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Content {
            key,
            path: path.to_owned(),
            why: format!("not valid PEM ({e}); the file may be truncated"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Content {
            key,
            path: path.to_owned(),
            why: "holds no CERTIFICATE block; name a PEM certificate file".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        key: "sslkey",
        path: path.to_owned(),
        source,
    })?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Content {
            key: "sslkey",
            path: path.to_owned(),
            why: format!("not valid PEM ({e}); the file may be truncated"),
        })?
        .ok_or_else(|| TlsError::Content {
            key: "sslkey",
            path: path.to_owned(),
            why: "holds no private key (PKCS#8, PKCS#1 or SEC1 PEM block)".into(),
        })
}

/// `verify-ca`: the chain must end in a trusted root; the name is not
/// checked (the server may be reached by an address its certificate does
/// not list).
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root: any certificate, but the
/// handshake's signatures are still verified.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The `tls-server-end-point` channel-binding data for SCRAM-SHA-256-PLUS
/// (RFC 5929): a hash of the server's certificate, with the hash of its
/// signature algorithm (SHA-1 and MD5 raised to SHA-256). `None` for an
/// algorithm without one (Ed25519): then SCRAM runs without binding.
pub fn server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    use x509_cert::der::oid::db::rfc5912::{
        ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, ID_SHA_1, ID_SHA_256,
        ID_SHA_384, ID_SHA_512, SHA_1_WITH_RSA_ENCRYPTION, SHA_256_WITH_RSA_ENCRYPTION,
        SHA_384_WITH_RSA_ENCRYPTION, SHA_512_WITH_RSA_ENCRYPTION,
    };
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(certificate).ok()?;
    let algorithm = match cert.signature_algorithm.oid {
        ID_SHA_1
        | ID_SHA_256
        | SHA_1_WITH_RSA_ENCRYPTION
        | SHA_256_WITH_RSA_ENCRYPTION
        | ECDSA_WITH_SHA_256 => &ring::digest::SHA256,
        ID_SHA_384 | SHA_384_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_384 => &ring::digest::SHA384,
        ID_SHA_512 | SHA_512_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_512 => &ring::digest::SHA512,
        _ => return None,
    };
    Some(
        ring::digest::digest(algorithm, certificate)
            .as_ref()
            .to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(m.parse::<SslMode>().unwrap().to_string(), m);
        }
        assert!("verify_full".parse::<SslMode>().is_err());
    }

    #[test]
    fn missing_files_name_the_key_and_the_path() {
        let s = TlsSettings {
            mode: SslMode::VerifyFull,
            rootcert: Some("/nonexistent/ca.pem".into()),
            ..TlsSettings::default()
        };
        let e = s.client_config().unwrap_err().to_string();
        assert!(
            e.contains("sslrootcert") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn channel_binding_hashes_an_ecdsa_sha256_certificate_with_sha256() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let data = server_end_point(cert.der()).expect("ECDSA-SHA256 has a digest");
        assert_eq!(data.len(), 32);
        assert_eq!(server_end_point(b"not a certificate"), None);
    }
}
