//! How to reach etcd: its endpoints, and optionally TLS (a CA, a client
//! certificate) and an etcd user, as a process's configuration holds them.
//!
//! ```toml
//! endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
//!
//! [tls]
//! ca_file = "/etc/ezone/etcd-ca.pem"     # the CA that signed etcd's server certificate
//! cert_file = "/etc/ezone/etcd-client.pem" # both or neither: etcd's --client-cert-auth
//! key_file = "/etc/ezone/etcd-client.key"
//! # domain = "etcd.internal"             # default: each endpoint's own host
//!
//! [auth]
//! user = "ezone"
//! password_file = "/etc/ezone/etcd-password" # default: $EZONE_ETCD_PASSWORD
//! ```
//!
//! The password is never part of these structs: it is read when connecting
//! (the first line of `auth.password_file`, else the environment variable
//! [`PASSWORD_ENV`]) into a [`Password`], which prints as `<redacted>`.
//!
//! [`EtcdOptions::validate`] checks everything that can be checked without
//! etcd (the endpoints' schemes against `tls`, the certificate and key come
//! in pairs, every file is readable PEM, a password is there) and names the
//! field and the fix for each problem; [`crate::EtcdStore::connect_with`]
//! runs the same checks before it connects.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable holding the etcd password when
/// `auth.password_file` is not set.
pub const PASSWORD_ENV: &str = "EZONE_ETCD_PASSWORD";

/// Endpoints, and optionally TLS and an etcd user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdOptions {
    /// Client URLs of the members: `http://HOST:PORT`, or `https://HOST:PORT`
    /// with [`EtcdOptions::tls`]. Required (no default).
    pub endpoints: Vec<String>,
    /// TLS to etcd's client port. Default: none (plain http).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTls>,
    /// An etcd user, for a cluster with auth enabled. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<EtcdAuth>,
}

/// TLS to etcd: the CA to trust, and a client certificate when etcd runs
/// with `--client-cert-auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// PEM: the CA certificate(s) that signed etcd's server certificate
    /// (etcd's own `--trusted-ca-file` is usually the same file). Required.
    pub ca_file: PathBuf,
    /// PEM: this client's certificate, signed by a CA in etcd's
    /// `--trusted-ca-file`. Default: none (no client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM: the private key of `cert_file` (PKCS#8, PKCS#1 or SEC1). Set
    /// exactly when `cert_file` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name etcd's server certificate must carry. Default: each
    /// endpoint's own host (a DNS name or an IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// An etcd user (etcd with `etcdctl auth enable`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdAuth {
    /// The etcd user name. Required.
    pub user: String,
    /// A file whose first line is the password (a trailing newline is not
    /// part of it). Default: the environment variable [`PASSWORD_ENV`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// An etcd password. It has no `Display`, is not `Serialize`, and its
/// `Debug` prints `Password(<redacted>)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The secret itself, for the one place that hands it to etcd.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// One thing wrong with [`EtcdOptions`]: the field, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdOptionsProblem {
    #[error("endpoints is empty: give at least one etcd client URL (endpoints = [\"http://HOST:2379\"], or --etcd http://HOST:PORT[,...], or EZONE_ETCD)")]
    NoEndpoints,
    #[error(
        "endpoint {endpoint:?} has scheme {scheme}: etcd's client URLs are http:// or https://"
    )]
    BadScheme { endpoint: String, scheme: String },
    #[error("endpoint {endpoint} is https but no tls is configured: add tls.ca_file (the CA that signed etcd's server certificate), or use http://")]
    HttpsWithoutTls { endpoint: String },
    #[error("endpoint {endpoint} is plain http but tls is configured: write https://{rest} (etcd serves TLS on its client URL), or remove the tls section")]
    HttpWithTls { endpoint: String, rest: String },
    #[error("tls.cert_file {} is set without tls.key_file: a client certificate needs its private key; set tls.key_file, or remove tls.cert_file", cert.display())]
    CertWithoutKey { cert: PathBuf },
    #[error("tls.key_file {} is set without tls.cert_file: set tls.cert_file to the certificate of that key, or remove tls.key_file", key.display())]
    KeyWithoutCert { key: PathBuf },
    #[error("{field} {}: cannot read it ({error}); check the path and that this user may read the file", path.display())]
    Unreadable {
        field: &'static str,
        path: PathBuf,
        error: String,
    },
    #[error("{field} {} holds no PEM {what} (no \"-----BEGIN ...{what}-----\" line); give it in PEM form", path.display())]
    NotPem {
        field: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("tls.domain is empty: remove it (each endpoint's host is checked) or give the name in etcd's server certificate")]
    EmptyDomain,
    #[error("auth.user is empty: give the etcd user name, or remove the auth section")]
    EmptyUser,
    #[error("the password of etcd user {user:?} is empty (first line of {from}): write it on the first line")]
    EmptyPassword { user: String, from: String },
    #[error("no password for etcd user {user:?}: set auth.password_file, or the environment variable {PASSWORD_ENV}")]
    NoPassword { user: String },
}

/// Everything wrong with [`EtcdOptions`], one problem per entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEtcdOptions(pub Vec<EtcdOptionsProblem>);

impl fmt::Display for InvalidEtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid etcd options: ")?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidEtcdOptions {}

/// What connecting needs, read from the files (and the environment).
pub(crate) struct Loaded {
    pub(crate) tls: Option<etcd_client::TlsOptions>,
    pub(crate) user: Option<(String, Password)>,
}

impl EtcdOptions {
    /// Plain http endpoints, no TLS, no user.
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Self {
        EtcdOptions {
            endpoints: endpoints.iter().map(|e| e.as_ref().to_string()).collect(),
            tls: None,
            auth: None,
        }
    }

    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn with_auth(mut self, auth: EtcdAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The endpoints, trimmed, the empty ones dropped (as `--etcd a,,b` or a
    /// trailing comma leaves them).
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect()
    }

    /// Every problem that can be found without etcd: endpoints and their
    /// schemes against `tls`, the client certificate and key as a pair,
    /// each file readable and PEM, a non-empty user and password. Reads the
    /// files (and [`PASSWORD_ENV`]); never prints the password.
    pub fn validate(&self) -> Result<(), InvalidEtcdOptions> {
        self.load_with(&|name| std::env::var(name).ok()).map(|_| ())
    }

    /// As [`EtcdOptions::validate`], returning what connecting needs.
    pub(crate) fn load(&self) -> Result<Loaded, InvalidEtcdOptions> {
        self.load_with(&|name| std::env::var(name).ok())
    }

    fn load_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, InvalidEtcdOptions> {
        let mut problems = Vec::new();
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            problems.push(EtcdOptionsProblem::NoEndpoints);
        }
        for endpoint in &endpoints {
            let (scheme, rest) = match endpoint.split_once("://") {
                Some((s, r)) => (s.to_ascii_lowercase(), r),
                // etcd-client takes a bare HOST:PORT as https with tls, http without.
                None => continue,
            };
            match (scheme.as_str(), self.tls.is_some()) {
                ("http", true) => problems.push(EtcdOptionsProblem::HttpWithTls {
                    endpoint: endpoint.clone(),
                    rest: rest.to_string(),
                }),
                ("https", false) => problems.push(EtcdOptionsProblem::HttpsWithoutTls {
                    endpoint: endpoint.clone(),
                }),
                ("http", false) | ("https", true) => {}
                _ => problems.push(EtcdOptionsProblem::BadScheme {
                    endpoint: endpoint.clone(),
                    scheme,
                }),
            }
        }
        let tls = self.tls.as_ref().and_then(|t| t.load(&mut problems));
        let user = self.auth.as_ref().and_then(|a| {
            let password = a.password_with(env);
            if a.user.trim().is_empty() {
                problems.push(EtcdOptionsProblem::EmptyUser);
            }
            match password {
                Ok(p) => Some((a.user.clone(), p)),
                Err(p) => {
                    problems.push(p);
                    None
                }
            }
        });
        if problems.is_empty() {
            Ok(Loaded { tls, user })
        } else {
            Err(InvalidEtcdOptions(problems))
        }
    }

    /// How the configured security reads in a message: `tls (CA ..., client
    /// certificate ...), user ...`, or `plain http`. No secret in it.
    pub(crate) fn security(&self) -> String {
        let mut parts = Vec::new();
        match &self.tls {
            Some(t) => {
                let mut s = format!("tls with CA {}", t.ca_file.display());
                match &t.cert_file {
                    Some(c) => s.push_str(&format!(" and client certificate {}", c.display())),
                    None => s.push_str(" and no client certificate"),
                }
                parts.push(s);
            }
            None => parts.push("plain http".to_string()),
        }
        if let Some(a) = &self.auth {
            parts.push(format!("etcd user {:?}", a.user));
        }
        parts.join(", ")
    }
}

impl EtcdTls {
    /// A CA to trust, no client certificate.
    pub fn new(ca_file: impl Into<PathBuf>) -> Self {
        EtcdTls {
            ca_file: ca_file.into(),
            cert_file: None,
            key_file: None,
            domain: None,
        }
    }

    /// With a client certificate and its key.
    pub fn with_identity(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }

    /// Checks and reads the files; `None` if anything is wrong (the
    /// problems are in `problems`).
    fn load(&self, problems: &mut Vec<EtcdOptionsProblem>) -> Option<etcd_client::TlsOptions> {
        let before = problems.len();
        let ca = read_pem("tls.ca_file", &self.ca_file, "CERTIFICATE", problems);
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let cert = read_pem("tls.cert_file", cert, "CERTIFICATE", problems);
                let key = read_pem("tls.key_file", key, "PRIVATE KEY", problems);
                cert.zip(key)
            }
            (Some(cert), None) => {
                problems.push(EtcdOptionsProblem::CertWithoutKey { cert: cert.clone() });
                None
            }
            (None, Some(key)) => {
                problems.push(EtcdOptionsProblem::KeyWithoutCert { key: key.clone() });
                None
            }
            (None, None) => None,
        };
        if matches!(&self.domain, Some(d) if d.trim().is_empty()) {
            problems.push(EtcdOptionsProblem::EmptyDomain);
        }
        if problems.len() > before {
            return None;
        }
        let mut tls =
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca?));
        if let Some((cert, key)) = identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.trim());
        }
        Some(tls)
    }
}

impl EtcdAuth {
    /// A user whose password is in `password_file` (`None`: in the
    /// environment variable [`PASSWORD_ENV`]).
    pub fn new(user: impl Into<String>, password_file: Option<PathBuf>) -> Self {
        EtcdAuth {
            user: user.into(),
            password_file,
        }
    }

    /// The password: the first line of `password_file` (without its line
    /// ending), else [`PASSWORD_ENV`].
    pub fn password(&self) -> Result<Password, EtcdOptionsProblem> {
        self.password_with(&|name| std::env::var(name).ok())
    }

    fn password_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Password, EtcdOptionsProblem> {
        let (text, from) = match &self.password_file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| EtcdOptionsProblem::Unreadable {
                        field: "auth.password_file",
                        path: path.clone(),
                        error: e.to_string(),
                    })?;
                (text, format!("auth.password_file {}", path.display()))
            }
            None => match env(PASSWORD_ENV) {
                Some(text) => (text, PASSWORD_ENV.to_string()),
                None => {
                    return Err(EtcdOptionsProblem::NoPassword {
                        user: self.user.clone(),
                    })
                }
            },
        };
        let first = text.split('\n').next().unwrap_or("");
        let first = first.strip_suffix('\r').unwrap_or(first);
        if first.is_empty() {
            return Err(EtcdOptionsProblem::EmptyPassword {
                user: self.user.clone(),
                from,
            });
        }
        Ok(Password(first.to_string()))
    }
}

/// Reads a PEM file that must hold a `-----BEGIN ...{what}-----` block.
fn read_pem(
    field: &'static str,
    path: &Path,
    what: &'static str,
    problems: &mut Vec<EtcdOptionsProblem>,
) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let found = text.lines().any(|l| {
                l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{what}-----"))
            });
            if found {
                Some(bytes)
            } else {
                problems.push(EtcdOptionsProblem::NotPem {
                    field,
                    path: path.to_path_buf(),
                    what,
                });
                None
            }
        }
        Err(e) => {
            problems.push(EtcdOptionsProblem::Unreadable {
                field,
                path: path.to_path_buf(),
                error: e.to_string(),
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn files() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("c.key");
        std::fs::write(&cert, CERT).expect("write");
        std::fs::write(&key, KEY).expect("write");
        (dir, cert, key)
    }

    fn problems(o: &EtcdOptions, env: &dyn Fn(&str) -> Option<String>) -> Vec<EtcdOptionsProblem> {
        match o.load_with(env) {
            Ok(_) => Vec::new(),
            Err(InvalidEtcdOptions(p)) => p,
        }
    }

    #[test]
    fn plain_http_is_valid_and_toml_reads_with_defaults() {
        let o: EtcdOptions =
            toml::from_str("endpoints = [\"http://127.0.0.1:2379\"]").expect("toml");
        assert_eq!(o, EtcdOptions::new(&["http://127.0.0.1:2379"]));
        assert!(problems(&o, &no_env).is_empty());
        assert_eq!(o.security(), "plain http");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = toml::from_str::<EtcdOptions>(
            "endpoints = [\"https://a:2379\"]\n[tls]\nca_file = \"/x\"\ncert = \"/y\"\n",
        )
        .expect_err("unknown field");
        assert!(e.to_string().contains("unknown field `cert`"), "{e}");
        let e = toml::from_str::<EtcdOptions>(
            "endpoints = [\"http://a:2379\"]\n[auth]\nuser = \"u\"\npassword = \"p\"\n",
        )
        .expect_err("a password in the config is refused");
        assert!(e.to_string().contains("unknown field `password`"), "{e}");
    }

    #[test]
    fn schemes_must_match_tls() {
        let (_d, cert, _key) = files();
        let o = EtcdOptions::new(&["https://a:2379", "ftp://b:1"]);
        let p = problems(&o, &no_env);
        assert!(
            matches!(&p[0], EtcdOptionsProblem::HttpsWithoutTls { endpoint } if endpoint == "https://a:2379"),
            "{p:?}"
        );
        assert!(
            matches!(&p[1], EtcdOptionsProblem::BadScheme { scheme, .. } if scheme == "ftp"),
            "{p:?}"
        );
        let o = EtcdOptions::new(&["http://a:2379"]).with_tls(EtcdTls::new(&cert));
        let p = problems(&o, &no_env);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].to_string().contains("write https://a:2379"),
            "{}",
            p[0]
        );
        assert!(
            problems(&EtcdOptions::new(&[" ", ""]), &no_env)
                == vec![EtcdOptionsProblem::NoEndpoints]
        );
    }

    #[test]
    fn cert_and_key_come_in_pairs_and_files_are_checked() {
        let (dir, cert, key) = files();
        let tls = EtcdTls {
            cert_file: Some(cert.clone()),
            ..EtcdTls::new(&cert)
        };
        let p = problems(
            &EtcdOptions::new(&["https://a:2379"]).with_tls(tls),
            &no_env,
        );
        assert_eq!(
            p,
            vec![EtcdOptionsProblem::CertWithoutKey { cert: cert.clone() }]
        );
        assert!(p[0].to_string().contains("set tls.key_file"), "{}", p[0]);

        let tls = EtcdTls {
            key_file: Some(key.clone()),
            ..EtcdTls::new(&cert)
        };
        let p = problems(
            &EtcdOptions::new(&["https://a:2379"]).with_tls(tls),
            &no_env,
        );
        assert_eq!(
            p,
            vec![EtcdOptionsProblem::KeyWithoutCert { key: key.clone() }]
        );

        // The key where the certificate should be, and a missing CA.
        let missing = dir.path().join("missing.pem");
        let tls = EtcdTls::new(&missing).with_identity(&key, &key);
        let p = problems(
            &EtcdOptions::new(&["https://a:2379"]).with_tls(tls),
            &no_env,
        );
        assert!(
            matches!(
                &p[0],
                EtcdOptionsProblem::Unreadable {
                    field: "tls.ca_file",
                    ..
                }
            ),
            "{p:?}"
        );
        assert!(
            matches!(
                &p[1],
                EtcdOptionsProblem::NotPem {
                    field: "tls.cert_file",
                    ..
                }
            ),
            "{p:?}"
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].to_string().contains(&missing.display().to_string()));

        let ok = EtcdOptions::new(&["https://a:2379", "b:2379"])
            .with_tls(EtcdTls::new(&cert).with_identity(&cert, &key));
        assert!(problems(&ok, &no_env).is_empty());
        assert!(ok.security().contains("client certificate"));
    }

    #[test]
    fn the_password_is_the_first_line_of_its_file_or_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\r\nignored\n").expect("write");
        let auth = EtcdAuth::new("ezone", Some(file.clone()));
        assert_eq!(auth.password_with(&no_env).expect("pw").expose(), "s3cret");
        std::fs::write(&file, "s3cret").expect("write");
        assert_eq!(auth.password_with(&no_env).expect("pw").expose(), "s3cret");

        std::fs::write(&file, "\nsecond").expect("write");
        let e = auth.password_with(&no_env).expect_err("empty");
        assert!(matches!(e, EtcdOptionsProblem::EmptyPassword { .. }));

        let env_auth = EtcdAuth::new("ezone", None);
        let env = |name: &str| (name == PASSWORD_ENV).then(|| "from-env\n".to_string());
        assert_eq!(
            env_auth.password_with(&env).expect("pw").expose(),
            "from-env"
        );
        let e = env_auth.password_with(&no_env).expect_err("none");
        assert!(e.to_string().contains(PASSWORD_ENV), "{e}");

        let o = EtcdOptions::new(&["http://a:2379"]).with_auth(EtcdAuth::new(" ", None));
        let p = problems(&o, &env);
        assert_eq!(p, vec![EtcdOptionsProblem::EmptyUser]);
    }

    #[test]
    fn the_password_never_prints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "hunter2\n").expect("write");
        let o = EtcdOptions::new(&["http://a:2379"]).with_auth(EtcdAuth::new("ezone", Some(file)));
        let loaded = o.load_with(&no_env).expect("valid");
        let (user, password) = loaded.user.expect("user");
        assert_eq!(user, "ezone");
        let shown = format!("{password:?} {o:?} {}", o.security());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
