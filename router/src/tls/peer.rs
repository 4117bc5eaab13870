//! Mutual TLS between sites' routers (`[peer_tls]`, `listen.peer`).
//!
//! Every router has one certificate, signed by the deployment's router CA
//! (`peer_tls.ca_file`), that names its site as the DNS name
//! `<site>.<domain>` (a subject alternative name; `domain` defaults to
//! `ezone.internal`). It is the router's server certificate on the peer
//! listener and its client certificate when it forwards to another site's
//! router, so it carries both extended key usages.
//!
//! - **Dialing** a peer ([`PeerTls::connect`]): the peer's certificate must
//!   chain to the CA and name the site being dialed, by a DNS name derived
//!   from the site's name, never from the address dialed (an address says
//!   nothing about who answers). A certificate of the right CA for another
//!   site, a wildcard, or one naming several sites is refused: the
//!   handshake fails and the request goes to another of the site's routers
//!   or fails as any unreachable router does.
//! - **Accepting** on the peer listener ([`PeerTls::accept`]): only a client
//!   certificate that chains to the CA and names exactly one site completes
//!   the handshake; that site is the connection's ([`site_of`]), and a
//!   request on it is believed as that site's router's (`proxy`).
//!
//! At start (and at every reload) the router checks its own certificate
//! the way its peers will: it names this router's site and nothing else of
//! the form `<site>.<domain>`, chains to the CA, is within its validity
//! period and is usable as both server and client certificate. A reload
//! that fails this keeps the previous certificate (see [`super`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{self as tls, Reloading, TlsError, ALPN_H2, ALPN_HTTP11};
use crate::config::PeerTlsConfig;

/// What a peer certificate's files load into: both directions' configs.
pub struct PeerConfigs {
    /// The peer listener's: this router's certificate, client certificates
    /// required and checked by [`SiteClientVerifier`].
    pub server: Arc<ServerConfig>,
    /// For dialing other sites' routers: this router's certificate as the
    /// client certificate, theirs checked by [`SiteServerVerifier`].
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerConfigs(..)")
    }
}

/// This router's peer TLS: its configs, reloaded when the files change.
/// Cheap to clone (every worker's client holds one).
#[derive(Clone, Debug)]
pub struct PeerTls {
    configs: Reloading<PeerConfigs>,
    domain: Arc<str>,
}

/// The site names in a certificate (DER): its DNS subject alternative
/// names of the form `<site>.<domain>` (compared without regard to case),
/// the site being a valid site name (1 to 64 of `a-z`, `0-9`, `-`, `_`). A
/// wildcard names no site. A router's certificate has exactly one.
pub fn site_names(cert: &[u8], domain: &str) -> Result<Vec<String>, String> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let cert = x509_cert::Certificate::from_der(cert)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let sans = cert
        .tbs_certificate
        .get::<SubjectAltName>()
        .map_err(|e| format!("its subject alternative names do not parse: {e}"))?;
    let Some((_, SubjectAltName(names))) = sans else {
        return Ok(Vec::new());
    };
    let mut sites = Vec::new();
    for name in names {
        if let GeneralName::DnsName(dns) = name {
            if let Some(site) = site_in(dns.as_str(), domain) {
                if !sites.contains(&site) {
                    sites.push(site);
                }
            }
        }
    }
    Ok(sites)
}

/// The site `dns` names under `domain`, if it is `<site>.<domain>`.
fn site_in(dns: &str, domain: &str) -> Option<String> {
    let dns = dns.strip_suffix('.').unwrap_or(dns).to_ascii_lowercase();
    let site = dns.strip_suffix(domain)?.strip_suffix('.')?;
    let valid = !site.is_empty()
        && site.len() <= 64
        && site
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    valid.then(|| site.to_string())
}

/// The one site a certificate names, or why it names none.
fn one_site(cert: &[u8], domain: &str) -> Result<String, String> {
    let sites = site_names(cert, domain)?;
    match sites.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("it names no site (no DNS name <site>.{domain})")),
        several => Err(format!(
            "it names several sites ({}); a router certificate names one",
            several.join(", ")
        )),
    }
}

/// A certificate refused for its names (the chain was fine).
#[derive(Debug, thiserror::Error)]
#[error("peer certificate refused: {0}")]
struct NameRefused(String);

/// As a verifier's error: `Error::Other` (a handshake_failure alert), as
/// rustls shows that one's message as it is.
fn refused(why: String) -> rustls::Error {
    rustls::Error::Other(OtherError(Arc::new(NameRefused(why))))
}

/// The client verifier of the peer listener: the CA's verdict (chain,
/// validity, clientAuth), then exactly one site name.
#[derive(Debug)]
struct SiteClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    domain: Arc<str>,
}

impl ClientCertVerifier for SiteClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        one_site(end_entity, &self.domain).map_err(refused)?;
        Ok(verified)
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

/// The server verifier for dialing a peer: the CA's verdict for the dialed
/// site's name (chain, validity, serverAuth, the name), then that the
/// certificate names that site and no other (no wildcard standing in).
#[derive(Debug)]
struct SiteServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    domain: Arc<str>,
}

impl ServerCertVerifier for SiteServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let expected = match server_name {
            ServerName::DnsName(d) => site_in(d.as_ref(), &self.domain),
            _ => None,
        };
        let Some(expected) = expected else {
            return Err(refused(format!(
                "{server_name:?} is not a site's name under {}",
                self.domain
            )));
        };
        let names = one_site(end_entity, &self.domain).map_err(refused)?;
        if names != expected {
            return Err(refused(format!("it names site {names}, not {expected}")));
        }
        Ok(verified)
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

/// The CA certificates in `path` as trust anchors.
fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    const FIELD: &str = "peer_tls.ca_file";
    let certs = tls::read_certs(FIELD, path)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::Ca {
            field: FIELD,
            path: path.to_path_buf(),
            problem: format!("a certificate in it is not usable as a CA: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Loads and checks this router's peer certificate, key and CA (each file
/// read once), for `site`.
pub fn load(cfg: &PeerTlsConfig, site: &str) -> Result<PeerConfigs, TlsError> {
    let chain = tls::read_certs("peer_tls.cert_file", &cfg.cert_file)?;
    let key = tls::read_key("peer_tls.key_file", &cfg.key_file)?;
    let roots = read_roots(&cfg.ca_file)?;
    let domain: Arc<str> = cfg.domain.as_str().into();
    let expected = cfg.site_name(site);
    let not_named = |found| TlsError::NotNamed {
        path: cfg.cert_file.clone(),
        site: site.to_string(),
        domain: cfg.domain.clone(),
        expected: expected.clone(),
        found,
    };
    let found = site_names(&chain[0], &domain).map_err(|problem| TlsError::Ca {
        field: "peer_tls.cert_file",
        path: cfg.cert_file.clone(),
        problem,
    })?;
    if found.len() != 1 || found[0] != site {
        let found = found.iter().map(|s| cfg.site_name(s)).collect();
        return Err(not_named(found));
    }
    let provider = tls::provider();
    let ca_problem = |e: rustls::server::VerifierBuilderError| TlsError::Ca {
        field: "peer_tls.ca_file",
        path: cfg.ca_file.clone(),
        problem: format!("cannot verify certificates with it: {e}"),
    };
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(ca_problem)?;
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(ca_problem)?;
    // Our own certificate, checked as the peers will check it.
    let unusable = |role, source| TlsError::PeerUnusable {
        cert: cfg.cert_file.clone(),
        ca: cfg.ca_file.clone(),
        role,
        source: Box::new(source),
    };
    let now = UnixTime::now();
    let own_name = ServerName::try_from(expected.clone()).map_err(|_| not_named(Vec::new()))?;
    server_verifier
        .verify_server_cert(&chain[0], &chain[1..], &own_name, &[], now)
        .map_err(|e| unusable("as the server certificate of the peer listener", e))?;
    client_verifier
        .verify_client_cert(&chain[0], &chain[1..], now)
        .map_err(|e| unusable("as a client certificate", e))?;

    let rejected = |source| TlsError::Rejected {
        cert_field: "peer_tls.cert_file",
        cert: cfg.cert_file.clone(),
        key_field: "peer_tls.key_file",
        key: cfg.key_file.clone(),
        source: Box::new(source),
    };
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_client_cert_verifier(Arc::new(SiteClientVerifier {
            inner: client_verifier,
            domain: domain.clone(),
        }))
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(rejected)?;
    server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SiteServerVerifier {
            inner: server_verifier,
            domain,
        }))
        .with_client_auth_cert(chain, key)
        .map_err(rejected)?;
    // The router speaks HTTP/1.1 to its peers (its own exchange, hyper's
    // HTTP/1 client for bodies and upgrades).
    client.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(PeerConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

impl PeerTls {
    /// Loads the files once (failing if they do not make a valid peer
    /// certificate for `site`) and reloads them when they change (checked
    /// every `poll`). Must be called within a tokio runtime.
    pub fn start(cfg: &PeerTlsConfig, site: &str, poll: Duration) -> Result<PeerTls, TlsError> {
        let files: Vec<PathBuf> = vec![
            cfg.cert_file.clone(),
            cfg.key_file.clone(),
            cfg.ca_file.clone(),
        ];
        let (owned, own_site) = (cfg.clone(), site.to_string());
        let configs = Reloading::start_with(
            "peer TLS certificate",
            files,
            poll,
            Box::new(move || load(&owned, &own_site)),
        )?;
        Ok(PeerTls {
            configs,
            domain: cfg.domain.as_str().into(),
        })
    }

    /// The name a router of `site` is dialed by (SNI, and what its
    /// certificate must name).
    pub fn server_name(&self, site: &str) -> Option<ServerName<'static>> {
        ServerName::try_from(format!("{site}.{}", self.domain)).ok()
    }

    /// The TLS handshake with a peer router on `tcp`, which must prove to
    /// be a router of the site `name` names.
    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = self.configs.current().client.clone();
        TlsConnector::from(config).connect(name, tcp).await
    }

    /// The TLS handshake of a connection to the peer listener, and the site
    /// its client certificate names. No timeout here: wrap it in one.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> io::Result<(tokio_rustls::server::TlsStream<IO>, Arc<str>)>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let config = self.configs.current().server.clone();
        let tls = TlsAcceptor::from(config).accept(io).await?;
        let site = site_of(tls.get_ref().1, &self.domain).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the client certificate names no site",
            )
        })?;
        Ok((tls, site))
    }

    /// Successful reloads since the start.
    pub fn reloads(&self) -> u64 {
        self.configs.reloads()
    }

    /// Reloads that failed (the previous certificate still in use).
    pub fn reload_failures(&self) -> u64 {
        self.configs.reload_failures()
    }

    /// Reloads the files now (see [`Reloading::reload_now`]).
    pub fn reload_now(&self) -> Result<(), TlsError> {
        self.configs.reload_now()
    }
}

/// The site the verified client certificate of a peer listener's
/// connection names (the handshake made sure it names exactly one).
pub fn site_of(conn: &rustls::ServerConnection, domain: &str) -> Option<Arc<str>> {
    let leaf = conn.peer_certificates()?.first()?;
    one_site(leaf, domain).ok().map(Arc::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };

    const DOMAIN: &str = "ezone.internal";

    fn cert_with(sans: Vec<SanType>, cn: &str) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().expect("ia5"))
    }

    #[test]
    fn a_certificate_names_sites_by_dns_names_under_the_domain() {
        let c = cert_with(
            vec![
                dns("beijing.ezone.internal"),
                dns("router-1.example.com"),
                SanType::IpAddress("10.0.0.1".parse().expect("ip")),
            ],
            "whatever",
        );
        assert_eq!(site_names(&c, DOMAIN).expect("parses"), vec!["beijing"]);
        assert_eq!(one_site(&c, DOMAIN).expect("one"), "beijing");
        // Another domain: nothing under this one.
        assert!(site_names(&c, "other.internal").expect("parses").is_empty());

        // Case and a trailing dot do not matter; the site's charset does.
        let c = cert_with(vec![dns("Shang_Hai-2.EZONE.internal.")], "x");
        assert_eq!(site_names(&c, DOMAIN).expect("parses"), vec!["shang_hai-2"]);

        // The common name is not a site name: only subject alternative names.
        let c = cert_with(Vec::new(), "beijing.ezone.internal");
        assert!(site_names(&c, DOMAIN).expect("parses").is_empty());
        assert!(one_site(&c, DOMAIN).unwrap_err().contains("no site"));

        // A wildcard, a deeper name or the bare domain names no site.
        let c = cert_with(
            vec![
                dns("*.ezone.internal"),
                dns("a.beijing.ezone.internal"),
                dns("ezone.internal"),
                dns("xezone.internal"),
            ],
            "x",
        );
        assert!(site_names(&c, DOMAIN).expect("parses").is_empty());

        // Two sites: refused as a router certificate.
        let c = cert_with(
            vec![
                dns("beijing.ezone.internal"),
                dns("shanghai.ezone.internal"),
            ],
            "x",
        );
        let e = one_site(&c, DOMAIN).unwrap_err();
        assert!(e.contains("beijing") && e.contains("shanghai"), "{e}");

        assert!(site_names(b"garbage", DOMAIN).is_err());
    }

    /// A CA and a router certificate for `site` with the given usages,
    /// written to a directory; the config naming them.
    fn files(
        dir: &Path,
        site_sans: &[&str],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> PeerTlsConfig {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.distinguished_name.push(DnType::CommonName, "test CA");
        let ca = p.self_signed(&ca_key).expect("ca");
        let key = KeyPair::generate().expect("key");
        let mut p =
            CertificateParams::new(site_sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        p.extended_key_usages = usages;
        let leaf = p.signed_by(&key, &ca, &ca_key).expect("leaf");
        std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write");
        std::fs::write(dir.join("peer.crt"), leaf.pem()).expect("write");
        std::fs::write(dir.join("peer.key"), key.serialize_pem()).expect("write");
        PeerTlsConfig {
            cert_file: dir.join("peer.crt"),
            key_file: dir.join("peer.key"),
            ca_file: dir.join("ca.crt"),
            domain: DOMAIN.into(),
        }
    }

    fn both() -> Vec<ExtendedKeyUsagePurpose> {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    }

    #[test]
    fn the_own_certificate_must_name_this_site_and_serve_both_ways() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = files(dir.path(), &["beijing.ezone.internal"], both());
        load(&cfg, "beijing").expect("a good router certificate");

        // Another site's certificate.
        let e = load(&cfg, "shanghai").unwrap_err();
        assert!(matches!(e, TlsError::NotNamed { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("peer_tls.cert_file"), "{msg}");
        assert!(msg.contains("shanghai.ezone.internal"), "{msg}");
        assert!(msg.contains("found beijing.ezone.internal"), "{msg}");

        // No site at all, or two.
        let cfg = files(dir.path(), &["router.example.com"], both());
        let e = load(&cfg, "beijing").unwrap_err().to_string();
        assert!(e.contains("found none"), "{e}");
        let cfg = files(
            dir.path(),
            &["beijing.ezone.internal", "shanghai.ezone.internal"],
            both(),
        );
        assert!(matches!(
            load(&cfg, "beijing"),
            Err(TlsError::NotNamed { .. })
        ));

        // A server-only certificate cannot be a client certificate.
        let cfg = files(
            dir.path(),
            &["beijing.ezone.internal"],
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        );
        let e = load(&cfg, "beijing").unwrap_err();
        assert!(
            matches!(e, TlsError::PeerUnusable { role, .. } if role.contains("client")),
            "{e:?}"
        );
        let cfg = files(
            dir.path(),
            &["beijing.ezone.internal"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let e = load(&cfg, "beijing").unwrap_err();
        assert!(
            matches!(e, TlsError::PeerUnusable { role, .. } if role.contains("server")),
            "{e:?}"
        );

        // Signed by another CA than ca_file.
        let good = files(dir.path(), &["beijing.ezone.internal"], both());
        let other = tempfile::tempdir().expect("dir");
        let foreign = files(other.path(), &["beijing.ezone.internal"], both());
        let mixed = PeerTlsConfig {
            ca_file: foreign.ca_file.clone(),
            ..good
        };
        let e = load(&mixed, "beijing").unwrap_err();
        assert!(matches!(e, TlsError::PeerUnusable { .. }), "{e:?}");
        assert!(e.to_string().contains("peer_tls.ca_file"), "{e}");

        // A CA file without a certificate.
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let bad = PeerTlsConfig {
            ca_file: empty,
            ..foreign
        };
        let e = load(&bad, "beijing").unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::NoCertificate {
                    field: "peer_tls.ca_file",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
