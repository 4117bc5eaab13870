//! One DSN parser for every Postgres connection ezone makes.
//!
//! Both of libpq's forms are accepted:
//!
//! - keyword/value: `host=10.0.0.5 port=5432 user=repl dbname=app password='s3 cret'`
//!   (`conninfo_parse`: pairs separated by whitespace; a value may be
//!   single-quoted to hold spaces or be empty; a backslash takes the next
//!   character literally);
//! - URI: `postgresql://repl:s3%20cret@10.0.0.5:5432/app?sslmode=verify-full`.
//!
//! The parsing itself is tokio-postgres' [`tokio_postgres::Config`], so the
//! applier, the order service, the commands and the walsender client agree on
//! every key. It is extended only where tokio-postgres stops short of libpq:
//! the TLS keys `sslmode` (all six of libpq's modes, where tokio-postgres
//! knows three), `sslrootcert`, `sslcert` and `sslkey`, and `passfile`. Those
//! are taken out of the DSN here, and the rest is handed to tokio-postgres,
//! which refuses a key it does not know: a typo never silently changes where
//! we connect.
//!
//! As libpq does, what the DSN leaves out comes from the process's
//! environment: `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, and
//! the password from `PGPASSWORD`, else the password file `PGPASSFILE`
//! (else `~/.pgpass` when it exists). That is how the secrets stay out of
//! the topology: it names each site's database by host, port, database and
//! user, and every host keeps its password and keys in its own files.
//!
//! A parsed [`Dsn`] never shows its password: `Debug` and [`Dsn::redacted`]
//! print `***`, and errors name the key, never a secret value.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::Host;

use crate::passfile;
use crate::tls::{SslMode, TlsSettings};

/// The port when the DSN names none (libpq's).
pub const DEFAULT_PORT: u16 = 5432;

/// The keys ezone reads itself rather than tokio-postgres.
const OWN_KEYS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "passfile"];

/// Why a DSN was refused. The message names the key and what is accepted;
/// it never holds a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Postgres DSN, {key}: {why}")]
pub struct DsnError {
    /// The DSN key (`sslmode`, `port`, ...) or `dsn` for the whole string.
    pub key: String,
    /// What is wrong and what is accepted.
    pub why: String,
}

impl DsnError {
    pub(crate) fn new(key: impl Into<String>, why: impl Into<String>) -> DsnError {
        DsnError {
            key: key.into(),
            why: why.into(),
        }
    }
}

/// A parsed DSN: what tokio-postgres connects with, plus the TLS settings.
#[derive(Clone)]
pub struct Dsn {
    config: tokio_postgres::Config,
    tls: TlsSettings,
    passfile: Option<PathBuf>,
}

impl Dsn {
    /// Parses either form (see the module docs), with the environment's
    /// fallbacks. A password file is read here, once: its matching line
    /// gives the password when the DSN and `PGPASSWORD` give none.
    pub fn parse(text: &str) -> Result<Dsn, DsnError> {
        Dsn::parse_with_env(text, &|name| std::env::var(name).ok())
    }

    /// [`Dsn::parse`] with the environment read through `env`.
    pub fn parse_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Dsn, DsnError> {
        Dsn::parse_inner(text, env, true)
    }

    /// Checks the DSN as written (its form, its keys, their values),
    /// reading neither the environment nor any file: for a DSN that other
    /// hosts will use (a site's in the topology), whose password file and
    /// certificates, and the environment that may name them
    /// (`PGSSLROOTCERT`, ...), are each host's. So a mode that verifies
    /// needs no `sslrootcert` here.
    pub fn check(text: &str) -> Result<(), DsnError> {
        Dsn::parse_inner(text, &|_| None, false).map(|_| ())
    }

    fn parse_inner(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        read_passfile: bool,
    ) -> Result<Dsn, DsnError> {
        let trimmed = text.trim_start();
        let (rest, own) =
            if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
                split_uri(trimmed)?
            } else {
                split_keywords(text)?
            };
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            // tokio-postgres names the option, never its value.
            DsnError::new("dsn", e.to_string())
        })?;
        let mut tls = TlsSettings::default();
        let mut passfile = None;
        // The environment first, so that the DSN's own keys override it.
        let mut own_keys: Vec<(String, String)> = [
            ("PGSSLMODE", "sslmode"),
            ("PGSSLROOTCERT", "sslrootcert"),
            ("PGSSLCERT", "sslcert"),
            ("PGSSLKEY", "sslkey"),
            ("PGPASSFILE", "passfile"),
        ]
        .into_iter()
        .filter_map(|(var, key)| {
            env(var)
                .filter(|v| !v.is_empty())
                .map(|v| (key.to_owned(), v))
        })
        .collect();
        own_keys.extend(own);
        for (key, value) in own_keys {
            match key.as_str() {
                "sslmode" => tls.mode = value.parse()?,
                "sslrootcert" => tls.rootcert = Some(non_empty_path(&key, &value)?),
                "sslcert" => tls.cert = Some(non_empty_path(&key, &value)?),
                "sslkey" => tls.key = Some(non_empty_path(&key, &value)?),
                "passfile" => passfile = Some(non_empty_path(&key, &value)?),
                _ => unreachable!("split_* only returns OWN_KEYS"),
            }
        }
        // libpq: with a root certificate named, `require` verifies the chain
        // as `verify-ca` does (kept for compatibility with libpq's users).
        if tls.mode == SslMode::Require && tls.rootcert.is_some() {
            tls.mode = SslMode::VerifyCa;
        }
        if read_passfile {
            // Checked where the DSN is used: another host's environment
            // may complete it.
            tls.validate()?;
        }
        config.ssl_mode(tls.mode.for_tokio_postgres());
        if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD").filter(|p| !p.is_empty()) {
                config.password(password);
            }
        }
        let mut dsn = Dsn {
            config,
            tls,
            passfile,
        };
        if read_passfile && dsn.config.get_password().is_none() {
            let file = dsn.passfile.clone().or_else(|| {
                // libpq's default; used only when it is there.
                env("HOME")
                    .map(|home| PathBuf::from(home).join(".pgpass"))
                    .filter(|p| p.is_file())
            });
            if let Some(path) = file {
                if let Some(password) = passfile::lookup(&path, &dsn.lookup_key())? {
                    dsn.config.password(password);
                }
            }
        }
        Ok(dsn)
    }

    /// What tokio-postgres connects with (its `sslmode` already mapped).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS settings (mode, root certificate, client certificate).
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// Sets the password (one read from a file or the environment).
    pub fn set_password(&mut self, password: &str) {
        self.config.password(password);
    }

    /// Whether the DSN (or its passfile) gave a password.
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// The password, if any, as text.
    pub fn password(&self) -> Option<String> {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// Sets the connect timeout.
    pub fn set_connect_timeout(&mut self, timeout: Duration) {
        self.config.connect_timeout(timeout);
    }

    /// The first TCP host, if the DSN names one (a Unix socket is `None`).
    pub fn host(&self) -> Option<&str> {
        self.config.get_hosts().iter().find_map(|h| match h {
            Host::Tcp(name) => Some(name.as_str()),
            #[allow(unreachable_patterns)]
            _ => None,
        })
    }

    /// How many hosts the DSN names (libpq lets a DSN list several).
    pub fn host_count(&self) -> usize {
        self.config.get_hosts().len()
    }

    /// The first port, or [`DEFAULT_PORT`].
    pub fn port(&self) -> u16 {
        self.config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(DEFAULT_PORT)
    }

    /// The user, if named.
    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    /// The database, if named (libpq defaults it to the user).
    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// `host:port/dbname`: how errors and logs name this server.
    pub fn server(&self) -> String {
        format!(
            "{}:{}/{}",
            self.host().unwrap_or("localhost"),
            self.port(),
            self.dbname().or(self.user()).unwrap_or("")
        )
    }

    /// The DSN as keyword/value pairs with the password as `***`: for logs,
    /// status and errors.
    pub fn redacted(&self) -> String {
        let mut out = format!(
            "host={} port={}",
            self.host().unwrap_or("localhost"),
            self.port()
        );
        if let Some(user) = self.user() {
            out.push_str(&format!(" user={}", quote_value(user)));
        }
        if let Some(db) = self.dbname() {
            out.push_str(&format!(" dbname={}", quote_value(db)));
        }
        if self.has_password() {
            out.push_str(" password=***");
        }
        out.push_str(&format!(" sslmode={}", self.tls.mode));
        out
    }

    /// The key a passfile line must match: host, port, database, user.
    fn lookup_key(&self) -> passfile::Key {
        passfile::Key {
            host: self.host().unwrap_or("localhost").to_owned(),
            port: self.port(),
            dbname: self.dbname().or(self.user()).unwrap_or_default().to_owned(),
            user: self.user().unwrap_or_default().to_owned(),
        }
    }
}

impl FromStr for Dsn {
    type Err = DsnError;

    fn from_str(s: &str) -> Result<Dsn, DsnError> {
        Dsn::parse(s)
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Dsn").field(&self.redacted()).finish()
    }
}

/// Whether `text` writes a password into the DSN itself (a `password` key,
/// or a URI's `user:password@`), without reading any file or the
/// environment: what must never be stored where others read it (the
/// topology in etcd). A DSN that does not parse names none.
pub fn names_password(text: &str) -> bool {
    let trimmed = text.trim_start();
    if let Some(rest) = trimmed
        .strip_prefix("postgresql://")
        .or_else(|| trimmed.strip_prefix("postgres://"))
    {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let in_userinfo = authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'));
        let in_query = rest.split_once('?').is_some_and(|(_, query)| {
            query
                .split('&')
                .any(|kv| kv.split('=').next().is_some_and(|k| k == "password"))
        });
        return in_userinfo || in_query;
    }
    parse_pairs(text).is_ok_and(|pairs| pairs.iter().any(|(k, _)| k == "password"))
}

fn non_empty_path(key: &str, value: &str) -> Result<PathBuf, DsnError> {
    if value.is_empty() {
        return Err(DsnError::new(
            key,
            "an empty path; name a PEM file or leave the key out",
        ));
    }
    Ok(PathBuf::from(value))
}

/// The keyword form: ezone's keys out, the rest re-quoted for tokio-postgres.
fn split_keywords(dsn: &str) -> Result<(String, Vec<(String, String)>), DsnError> {
    let mut rest = String::with_capacity(dsn.len());
    let mut own = Vec::new();
    for (key, value) in parse_pairs(dsn)? {
        if OWN_KEYS.contains(&key.as_str()) {
            own.push((key, value));
        } else {
            if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(&key);
            rest.push('=');
            rest.push_str(&quote_always(&value));
        }
    }
    Ok((rest, own))
}

/// The URI form: ezone's keys out of the query, the rest left as written.
fn split_uri(uri: &str) -> Result<(String, Vec<(String, String)>), DsnError> {
    let Some((base, query)) = uri.split_once('?') else {
        return Ok((uri.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut own = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = part
            .split_once('=')
            .ok_or_else(|| DsnError::new("dsn", "a URI parameter without '='; write key=value"))?;
        let key = decode(raw_key)?;
        if OWN_KEYS.contains(&key.as_str()) {
            own.push((key, decode(raw_value)?));
        } else {
            kept.push(part);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, own))
}

fn decode(raw: &str) -> Result<String, DsnError> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| DsnError::new("dsn", "a URI parameter is not UTF-8 once percent-decoded"))
}

/// Quotes a value for tokio-postgres' keyword parser, which takes
/// single-quoted values with `\'` and `\\` escapes.
fn quote_always(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Quotes a value for a DSN when it needs it.
pub fn quote_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\' || c == '=');
    if plain {
        value.to_owned()
    } else {
        quote_always(value)
    }
}

/// Splits a keyword DSN into its pairs, as libpq's `conninfo_parse` does.
fn parse_pairs(dsn: &str) -> Result<Vec<(String, String)>, DsnError> {
    let mut pairs = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(DsnError::new(
                "dsn",
                format!("missing \"=\" after {key:?}; expected key=value pairs"),
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(DsnError::new(
                            key,
                            "unterminated quoted value: a closing ' is missing",
                        ))
                    }
                    Some('\'') => break,
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(c) = chars.next() {
                        value.push(c);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_form_with_quotes_and_tls_keys() {
        let d = Dsn::parse(
            r"host=10.0.0.5 port=5433 user=repl password='s3 cr\'et' dbname=app sslmode=verify-full sslrootcert=/etc/ezone/ca.pem",
        )
        .unwrap();
        assert_eq!(d.host(), Some("10.0.0.5"));
        assert_eq!(d.port(), 5433);
        assert_eq!(d.user(), Some("repl"));
        assert_eq!(d.dbname(), Some("app"));
        assert_eq!(d.password().as_deref(), Some("s3 cr'et"));
        assert_eq!(d.tls().mode, SslMode::VerifyFull);
        assert_eq!(d.tls().rootcert, Some(PathBuf::from("/etc/ezone/ca.pem")));
        assert_eq!(
            d.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert!(!d.redacted().contains("s3"), "{}", d.redacted());
        assert!(!format!("{d:?}").contains("s3"));
    }

    #[test]
    fn uri_form_with_tls_keys() {
        let d = Dsn::parse(
            "postgresql://repl:s3%20cret@db1:6543/app?sslmode=verify-ca&sslrootcert=%2Fca.pem\
             &application_name=x",
        )
        .unwrap();
        assert_eq!(d.host(), Some("db1"));
        assert_eq!(d.port(), 6543);
        assert_eq!(d.password().as_deref(), Some("s3 cret"));
        assert_eq!(d.tls().mode, SslMode::VerifyCa);
        assert_eq!(d.tls().rootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(d.config().get_application_name(), Some("x"));
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain_like_libpq() {
        let d = Dsn::parse("host=h user=u sslmode=require sslrootcert=/ca.pem").unwrap();
        assert_eq!(d.tls().mode, SslMode::VerifyCa);
    }

    #[test]
    fn the_default_is_prefer_like_libpq() {
        let d = Dsn::parse("host=h user=u").unwrap();
        assert_eq!(d.tls().mode, SslMode::Prefer);
    }

    #[test]
    fn refusals_name_the_key_and_never_the_password() {
        for (dsn, key) in [
            ("user=u sslmode=bogus", "sslmode"),
            ("user=u sslmode=verify-full", "sslrootcert"),
            ("user=u sslcert=/a.pem", "sslkey"),
            ("user=u sslkey=/a.pem", "sslcert"),
            ("user=u sslrootcert=", "sslrootcert"),
            ("user=u bogus=1", "dsn"),
            ("user=u password='open", "password"),
            ("user=u host", "dsn"),
        ] {
            match Dsn::parse(dsn) {
                Err(e) => assert_eq!(e.key, key, "{dsn}: {e}"),
                Ok(d) => panic!("{dsn}: expected an error on {key}, got {d:?}"),
            }
        }
        let e = Dsn::parse("user=u password=hunter22 bogus=1").unwrap_err();
        assert!(!e.to_string().contains("hunter22"), "{e}");
    }

    #[test]
    fn the_environment_fills_what_the_dsn_leaves_out() {
        let dir = std::env::temp_dir().join(format!("ezone-pg-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pgpass = dir.join("pgpass");
        std::fs::write(&pgpass, "db1:5432:app:repl:from-file\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let pgpass_text = pgpass.display().to_string();
        let env = |vars: &'static [(&'static str, &'static str)]| {
            let pgpass_text = pgpass_text.clone();
            move |name: &str| -> Option<String> {
                if name == "PGPASSFILE" {
                    return Some(pgpass_text.clone());
                }
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let tls_env = env(&[
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", "/etc/ezone/ca.pem"),
            ("PGSSLCERT", "/etc/ezone/me.pem"),
            ("PGSSLKEY", "/etc/ezone/me.key"),
        ]);
        let d = Dsn::parse_with_env("host=db1 user=repl dbname=app", &tls_env).unwrap();
        assert_eq!(d.tls().mode, SslMode::VerifyFull);
        assert_eq!(d.tls().key, Some(PathBuf::from("/etc/ezone/me.key")));
        assert_eq!(d.password().as_deref(), Some("from-file"));
        // The DSN's own keys win over the environment.
        let d =
            Dsn::parse_with_env("host=db1 user=repl dbname=app sslmode=disable", &tls_env).unwrap();
        assert_eq!(d.tls().mode, SslMode::Disable);
        // PGPASSWORD before the file; a line for another database: none.
        let d = Dsn::parse_with_env(
            "host=db1 user=repl dbname=app",
            &env(&[("PGPASSWORD", "p")]),
        )
        .unwrap();
        assert_eq!(d.password().as_deref(), Some("p"));
        let d = Dsn::parse_with_env("host=db1 user=repl dbname=other", &env(&[])).unwrap();
        assert_eq!(d.password(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_password_written_into_the_dsn_is_seen_in_either_form() {
        for (dsn, names) in [
            ("host=h user=u password=x", true),
            ("host=h user=u password=''", true),
            ("host=h user=u passfile=/p", false),
            ("postgresql://u:x@h/db", true),
            ("postgresql://u@h/db?password=x", true),
            ("postgresql://u@h:5432/db?sslmode=require", false),
            ("postgres://h/db", false),
        ] {
            assert_eq!(names_password(dsn), names, "{dsn}");
        }
    }

    #[test]
    fn check_reads_no_file() {
        Dsn::check("host=db user=u dbname=x passfile=/nonexistent/pgpass sslmode=verify-full sslrootcert=/nonexistent/ca.pem")
            .expect("a DSN for another host: its files are not read here");
        Dsn::check("host=db user=u dbname=x sslmode=verify-full")
            .expect("the root certificate may come from each host's PGSSLROOTCERT");
        let e = Dsn::check("host=db user=u sslmode=verify_full").unwrap_err();
        assert_eq!(e.key, "sslmode");
    }

    #[test]
    fn redacted_round_trips() {
        let d = Dsn::parse("host=h port=7 user='a b' dbname=x password=p sslmode=require").unwrap();
        let back = Dsn::parse(&d.redacted()).unwrap();
        assert_eq!(back.host(), Some("h"));
        assert_eq!(back.user(), Some("a b"));
        assert_eq!(back.tls().mode, SslMode::Require);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "(?s).{0,80}") {
            let _ = Dsn::parse(&text);
        }

        #[test]
        fn never_panics_on_dsn_like_text(
            text in "(host|port|user|sslmode|sslrootcert|password|postgresql://)[ =a-z0-9'\\\\%?&:/@-]{0,40}"
        ) {
            let _ = Dsn::parse(&text);
        }
    }
}
