//! A throw-away certificate authority for the lab: a CA, and server and
//! client certificates it signs, written as PEM files into one directory.
//!
//! ```no_run
//! # fn main() -> Result<(), ezone_chaos::error::LabError> {
//! use ezone_chaos::certs::{LabCerts, LOOPBACK_SANS};
//! let certs = LabCerts::generate(std::path::Path::new("/tmp/lab/certs"))?;
//! let etcd = certs.issue_server("etcd", LOOPBACK_SANS)?; // etcd's --cert-file/--key-file
//! let ezone = certs.issue_client("ezone")?;              // a client's certificate and key
//! let trust = certs.ca_file();                           // --trusted-ca-file, a client's CA
//! # Ok(()) }
//! ```
//!
//! Files (in the directory given to [`LabCerts::generate`]):
//! - `ca.pem`: the CA certificate (0644). Its key stays in memory only, so
//!   certificates can be issued for as long as the [`LabCerts`] lives.
//! - `server-<name>.pem` / `server-<name>.key`: from [`LabCerts::issue_server`].
//! - `client-<name>.pem` / `client-<name>.key`: from [`LabCerts::issue_client`].
//!
//! Certificates are 0644, keys 0600, owned by whoever runs the lab. Every key
//! is a fresh ECDSA P-256 key (PKCS#8 PEM); certificates are valid from
//! 1975 to 4096 (rcgen's defaults), which no test outlives.
//!
//! Postgres refuses a server key (`ssl_key_file`) that is not owned by the
//! user it runs as (or by root with mode 0640 and its group) or that group
//! or others may read. A lab that runs Postgres as another OS user must
//! `chown` the key to that user (keeping 0600) before starting it: that is
//! the caller's business, as only it knows the user. The key files are
//! rewritten with mode 0600 even when they existed with a wider one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::error::LabError;

/// Subject alternative names for a server on this machine.
pub const LOOPBACK_SANS: &[&str] = &["127.0.0.1", "localhost", "::1"];

/// A lab server's names: [`LOOPBACK_SANS`] and `more` (addresses its
/// clients dial it at), each once, for [`LabCerts::issue_server`].
pub fn server_names<'a>(more: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut names: Vec<&str> = LOOPBACK_SANS.to_vec();
    for name in more {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// A CA in memory, and the directory its files go to.
pub struct LabCerts {
    dir: PathBuf,
    ca_file: PathBuf,
    ca: Certificate,
    ca_key: KeyPair,
}

impl std::fmt::Debug for LabCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabCerts")
            .field("dir", &self.dir)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// A certificate and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The subject's common name.
    pub common_name: String,
    /// PEM certificate (0644).
    pub cert_file: PathBuf,
    /// PEM private key, PKCS#8 (0600).
    pub key_file: PathBuf,
}

/// What a certificate is for.
#[derive(Clone, Copy)]
enum Role {
    Server,
    Client,
    /// Both: a router that serves its peers and dials them.
    Peer,
}

impl LabCerts {
    /// Creates `dir` (and its parents) if needed, a fresh CA, and writes its
    /// certificate to `dir/ca.pem`.
    pub fn generate(dir: &Path) -> Result<LabCerts, LabError> {
        fs::create_dir_all(dir).map_err(|e| LabError::io("create directory", dir, e))?;
        let ca_key = KeyPair::generate().map_err(|e| rcgen_error("the lab CA", e))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| rcgen_error("the lab CA", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = name("ezone lab CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params
            .self_signed(&ca_key)
            .map_err(|e| rcgen_error("the lab CA", e))?;
        let ca_file = dir.join("ca.pem");
        write_file(&ca_file, ca.pem().as_bytes(), 0o644)?;
        Ok(LabCerts {
            dir: dir.to_path_buf(),
            ca_file,
            ca,
            ca_key,
        })
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (PEM): what servers and clients trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The CA certificate as PEM text.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `sans` (DNS names or IP addresses, e.g.
    /// [`LOOPBACK_SANS`]), common name `name`, for TLS server
    /// authentication; written to `server-<name>.pem` and `.key`.
    pub fn issue_server(&self, name: &str, sans: &[&str]) -> Result<IssuedCert, LabError> {
        if sans.is_empty() {
            return Err(LabError::InvalidSpec {
                field: "server certificate names",
                value: name.to_string(),
                why: "give at least one DNS name or IP address (e.g. LOOPBACK_SANS)".into(),
            });
        }
        self.issue(Role::Server, name, sans)
    }

    /// A client certificate with common name `common_name` (what etcd takes
    /// as the user with `--client-cert-auth` and auth enabled, and Postgres
    /// matches against the role with `clientcert=verify-full`), for TLS
    /// client authentication; written to `client-<name>.pem` and `.key`.
    pub fn issue_client(&self, common_name: &str) -> Result<IssuedCert, LabError> {
        self.issue(Role::Client, common_name, &[])
    }

    /// A site router's certificate for peer mutual TLS: the DNS name
    /// `<site>.<domain>` (the router's naming rule), usable as server and as
    /// client certificate; written to `peer-<site>.pem` and `.key`.
    pub fn issue_peer(&self, site: &str, domain: &str) -> Result<IssuedCert, LabError> {
        let name = format!("{site}.{domain}");
        self.issue(Role::Peer, &name, &[name.as_str()])
    }

    fn issue(&self, role: Role, common_name: &str, sans: &[&str]) -> Result<IssuedCert, LabError> {
        if common_name.is_empty() {
            return Err(LabError::InvalidSpec {
                field: "certificate common name",
                value: String::new(),
                why: "give a non-empty name".into(),
            });
        }
        let what = format!("the certificate for {common_name:?}");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let key = KeyPair::generate().map_err(|e| rcgen_error(&what, e))?;
        let mut params = CertificateParams::new(sans).map_err(|e| rcgen_error(&what, e))?;
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match role {
            Role::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Role::Peer => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .map_err(|e| rcgen_error(&what, e))?;
        let stem = format!(
            "{}-{}",
            match role {
                Role::Server => "server",
                Role::Client => "client",
                Role::Peer => "peer",
            },
            file_stem(common_name)
        );
        let cert_file = self.dir.join(format!("{stem}.pem"));
        let key_file = self.dir.join(format!("{stem}.key"));
        write_file(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_file, cert.pem().as_bytes(), 0o644)?;
        Ok(IssuedCert {
            common_name: common_name.to_string(),
            cert_file,
            key_file,
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "ezone lab");
    dn
}

/// `name` as a file name: anything but letters, digits, `-`, `_` and `.`
/// becomes `_`.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `bytes` to `path` with `mode` (also when the file existed with
/// another one).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), LabError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| LabError::io("create", path, e))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| LabError::io("set the mode of", path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| LabError::io("write", path, e))
}

fn rcgen_error(what: &str, e: rcgen::Error) -> LabError {
    LabError::InvalidSpec {
        field: "certificate",
        value: what.to_string(),
        why: format!("rcgen cannot make it: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_pem_and_keys_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = LabCerts::generate(&dir.path().join("certs")).expect("CA");
        let server = certs.issue_server("etcd", LOOPBACK_SANS).expect("server");
        let client = certs.issue_client("ezone router/1").expect("client");
        assert_eq!(
            client.cert_file,
            certs.dir().join("client-ezone_router_1.pem")
        );
        for (path, mode, begin) in [
            (certs.ca_file(), 0o644, "-----BEGIN CERTIFICATE-----"),
            (&server.cert_file, 0o644, "-----BEGIN CERTIFICATE-----"),
            (&server.key_file, 0o600, "-----BEGIN PRIVATE KEY-----"),
            (&client.key_file, 0o600, "-----BEGIN PRIVATE KEY-----"),
        ] {
            let meta = fs::metadata(path).expect("metadata");
            assert_eq!(
                meta.permissions().mode() & 0o777,
                mode,
                "{}",
                path.display()
            );
            let text = fs::read_to_string(path).expect("read");
            assert!(text.starts_with(begin), "{}: {text}", path.display());
        }
        // A key that existed with a wider mode is narrowed.
        fs::set_permissions(&server.key_file, fs::Permissions::from_mode(0o644)).expect("chmod");
        let again = certs.issue_server("etcd", &["10.0.0.1"]).expect("again");
        let mode = fs::metadata(&again.key_file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(certs.issue_server("x", &[]).is_err());
    }
}
