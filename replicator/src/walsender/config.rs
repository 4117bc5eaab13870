//! Where a link's source Postgres is and how to log in to it:
//! [`SourceConfig`], built in code or parsed from a DSN by the one parser
//! every ezone connection uses ([`ezone_pg::Dsn`]: libpq's keyword and URI
//! forms, with libpq's TLS keys).
//!
//! TLS is as the DSN's `sslmode` says (`prefer` when it says nothing, as in
//! libpq); see `ezone_pg::tls` for what each mode verifies. The password is
//! never printed: `Debug` and [`SourceConfig::redacted`] show `password=***`.

use std::fmt;
use std::time::Duration;

use ezone_pg::dsn::quote_value;
use ezone_pg::TlsSettings;

use super::error::SourceError;

/// The port when the DSN names none.
pub const DEFAULT_PORT: u16 = 5432;
/// The host when the DSN names none.
pub const DEFAULT_HOST: &str = "localhost";
/// The `application_name` when the DSN names none (it shows in
/// `pg_stat_replication` and in the server's log lines).
pub const DEFAULT_APPLICATION_NAME: &str = "ezone-replicator";
/// How long connecting and authenticating may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a standby status update is sent while streaming, even when idle.
///
/// The server ends a walsender that has heard nothing from its client for
/// `wal_sender_timeout` (60 s by default, 10 s in the lab), so this must stay
/// well under it. We also answer each keepalive that asks for a reply at
/// once, but that needs the server to ask in time; sending on our own is the
/// guarantee.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(3);
/// How long a stream may receive nothing before we call the server gone.
///
/// A server that is paused (SIGSTOP) or cut off by a partition keeps the TCP
/// connection open and just stops talking; without this the link would wait
/// forever. A status update asks for a reply when the server has been quiet
/// for a [`DEFAULT_STATUS_INTERVAL`], so a healthy idle server answers well
/// within this.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach and log in to a source Postgres for logical replication.
///
/// Not `Serialize` and not `Display`: it holds a password. Use
/// [`SourceConfig::redacted`] to show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// Host name or IP address (TCP only; no Unix socket paths).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The role to log in as; it needs the `REPLICATION` attribute.
    pub user: String,
    /// The password, for cleartext, MD5 or SCRAM-SHA-256 authentication.
    pub password: Option<String>,
    /// The database whose changes are decoded (a logical slot belongs to one
    /// database).
    pub dbname: String,
    /// Shown by the server in `pg_stat_replication` and its logs.
    pub application_name: String,
    /// Limit for TCP connect plus authentication plus startup.
    pub connect_timeout: Duration,
    /// See [`DEFAULT_STATUS_INTERVAL`].
    pub status_interval: Duration,
    /// See [`DEFAULT_RECEIVE_TIMEOUT`].
    pub receive_timeout: Duration,
    /// `sslmode` and the certificates (see `ezone_pg::tls`).
    pub tls: TlsSettings,
}

impl SourceConfig {
    /// A config with the defaults for everything but these four.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        dbname: impl Into<String>,
    ) -> Self {
        SourceConfig {
            host: host.into(),
            port,
            user: user.into(),
            password: None,
            dbname: dbname.into(),
            application_name: DEFAULT_APPLICATION_NAME.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            status_interval: DEFAULT_STATUS_INTERVAL,
            receive_timeout: DEFAULT_RECEIVE_TIMEOUT,
            tls: TlsSettings::default(),
        }
    }

    /// Parses a DSN in either of libpq's forms (keyword/value such as
    /// `host=10.0.0.5 port=5432 user=repl dbname=app sslmode=verify-full
    /// sslrootcert=/etc/ezone/ca.pem`, or a `postgresql://` URI) with the one
    /// parser every ezone connection uses ([`ezone_pg::Dsn`]).
    ///
    /// `user` is required; `dbname` defaults to the user name, `host` to
    /// [`DEFAULT_HOST`], `port` to [`DEFAULT_PORT`]; `connect_timeout` is in
    /// whole seconds. One TCP host only (a link replicates from exactly one
    /// server). The status interval and receive timeout have no DSN key; set
    /// the fields. Keys that only matter to an SQL session (`options`,
    /// `keepalives`, `target_session_attrs`) are accepted and not used. The
    /// result is validated.
    pub fn from_dsn(dsn: &str) -> Result<Self, SourceError> {
        let parsed =
            ezone_pg::Dsn::parse(dsn).map_err(|e| config_error(&e.key, "(not shown)", &e.why))?;
        if parsed.host_count() > 1 {
            return Err(config_error(
                "host",
                "(several)",
                "one host only: a link replicates from exactly one server",
            ));
        }
        let host = match parsed.host() {
            Some(host) => host.to_owned(),
            None if parsed.host_count() == 0 => DEFAULT_HOST.to_owned(),
            None => {
                return Err(config_error(
                    "host",
                    "(a Unix-domain socket)",
                    "Unix-domain sockets are not supported: give a host name or IP address",
                ))
            }
        };
        let user = parsed.user().unwrap_or_default().to_owned();
        let mut config = SourceConfig::new(
            host,
            parsed.port(),
            user.clone(),
            parsed.dbname().map(str::to_owned).unwrap_or(user),
        );
        config.password = parsed.password();
        if let Some(name) = parsed.config().get_application_name() {
            config.application_name = name.to_owned();
        }
        if let Some(timeout) = parsed.config().get_connect_timeout() {
            config.connect_timeout = *timeout;
        }
        config.tls = parsed.tls().clone();
        config.validate()?;
        Ok(config)
    }

    /// Checks the fields: errors name the field and what is accepted.
    pub fn validate(&self) -> Result<(), SourceError> {
        if self.host.is_empty() {
            return Err(config_error(
                "host",
                "\"\"",
                "a host name or IP address is required",
            ));
        }
        if self.host.starts_with('/') || self.host.starts_with('@') {
            return Err(config_error(
                "host",
                &self.host,
                "Unix-domain sockets are not supported: give a host name or IP address",
            ));
        }
        if self.host.contains(',') {
            return Err(config_error(
                "host",
                &self.host,
                "one host only: a link replicates from exactly one server",
            ));
        }
        if self.port == 0 {
            return Err(config_error("port", "0", "expected a TCP port, 1 to 65535"));
        }
        if self.user.is_empty() {
            return Err(config_error(
                "user",
                "\"\"",
                "a user is required (a role with the REPLICATION attribute)",
            ));
        }
        if self.dbname.is_empty() {
            return Err(config_error(
                "dbname",
                "\"\"",
                "a database name is required",
            ));
        }
        for (field, value) in [
            ("host", self.host.as_str()),
            ("user", &self.user),
            ("dbname", &self.dbname),
            ("application_name", &self.application_name),
        ] {
            if value.contains('\0') {
                return Err(config_error(
                    field,
                    value,
                    "must not contain a NUL character",
                ));
            }
        }
        if self.password.as_deref().is_some_and(|p| p.contains('\0')) {
            return Err(config_error(
                "password",
                "(hidden)",
                "must not contain a NUL character",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(config_error(
                "connect_timeout",
                "0s",
                "must be more than zero",
            ));
        }
        if self.status_interval.is_zero() {
            return Err(config_error(
                "status_interval",
                "0s",
                "must be more than zero",
            ));
        }
        if self.receive_timeout < self.status_interval * 2 {
            return Err(config_error(
                "receive_timeout",
                &format!("{:?}", self.receive_timeout),
                &format!(
                    "must be at least twice status_interval ({:?}): the server is only \
                     asked to answer once per status interval",
                    self.status_interval
                ),
            ));
        }
        Ok(())
    }

    /// `host:port/dbname`: how errors and logs name this server.
    pub fn server(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }

    /// The DSN with the password replaced by `***`, for logs and status.
    pub fn redacted(&self) -> String {
        let mut out = format!(
            "host={} port={} user={} dbname={} application_name={} connect_timeout={}",
            quote_value(&self.host),
            self.port,
            quote_value(&self.user),
            quote_value(&self.dbname),
            quote_value(&self.application_name),
            self.connect_timeout.as_secs().max(1),
        );
        if self.password.is_some() {
            out.push_str(" password=***");
        }
        out.push_str(&format!(" sslmode={}", self.tls.mode));
        for (key, path) in [
            ("sslrootcert", &self.tls.rootcert),
            ("sslcert", &self.tls.cert),
            ("sslkey", &self.tls.key),
        ] {
            if let Some(path) = path {
                out.push_str(&format!(" {key}={}", quote_value(&path.to_string_lossy())));
            }
        }
        out
    }
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("status_interval", &self.status_interval)
            .field("receive_timeout", &self.receive_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

fn config_error(field: &str, value: &str, why: &str) -> SourceError {
    SourceError::Config {
        field: field.to_owned(),
        value: if value.starts_with('(') || value.starts_with('"') {
            value.to_owned()
        } else {
            format!("{value:?}")
        },
        why: why.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lab_dsn() {
        let c =
            SourceConfig::from_dsn("host=127.0.0.1 port=5433 user=postgres dbname=ezone").unwrap();
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 5433);
        assert_eq!(c.user, "postgres");
        assert_eq!(c.dbname, "ezone");
        assert_eq!(c.password, None);
        assert_eq!(c.application_name, DEFAULT_APPLICATION_NAME);
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.server(), "127.0.0.1:5433/ezone");
    }

    #[test]
    fn quoting_and_escapes_like_libpq() {
        let c = SourceConfig::from_dsn(
            r"user = repl password='s3 cr\'et' application_name=a\ b dbname='' host=h",
        );
        // An empty dbname is invalid: it is a required field.
        assert!(matches!(c, Err(SourceError::Config { ref field, .. }) if field == "dbname"));
        let c = SourceConfig::from_dsn(
            r"user = repl password='s3 cr\'et\\' application_name=a\ b host=h connect_timeout=3",
        )
        .unwrap();
        assert_eq!(c.password.as_deref(), Some(r"s3 cr'et\"));
        assert_eq!(c.application_name, "a b");
        assert_eq!(c.dbname, "repl", "dbname defaults to the user");
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.port, DEFAULT_PORT);
    }

    #[test]
    fn refusals_name_the_key() {
        for (dsn, field) in [
            ("user=u port=70000", "dsn"),
            ("user=u port=x", "dsn"),
            ("user=u sslmode=verify-full", "sslrootcert"),
            ("user=u sslmode=bogus", "sslmode"),
            ("user=u bogus=1", "dsn"),
            ("user=u host=/var/run/postgresql", "host"),
            ("user=u host=a,b", "host"),
            ("postgresql://u@a,b/db", "host"),
            ("host=h", "user"),
            ("user=u password='open", "password"),
            ("user=u host", "dsn"),
        ] {
            match SourceConfig::from_dsn(dsn) {
                Err(SourceError::Config { field: f, .. }) => assert_eq!(f, field, "{dsn}"),
                other => panic!("{dsn}: expected a config error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_uri_form_and_tls_keys_are_read() {
        let c = SourceConfig::from_dsn(
            "postgresql://repl:pw@db1:6000/app?sslmode=verify-full&sslrootcert=/ca.pem\
             &sslcert=/c.pem&sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("db1", 6000));
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("repl", "app"));
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.tls.mode, ezone_pg::SslMode::VerifyFull);
        let back = SourceConfig::from_dsn(&c.redacted()).unwrap();
        assert_eq!(back.tls, c.tls);
    }

    #[test]
    fn the_password_is_never_shown() {
        let c = SourceConfig::from_dsn("user=u password=hunter2 host=h").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.redacted().contains("hunter2"));
        assert!(c.redacted().contains("password=***"));
        let err = SourceConfig::from_dsn("user=u passwd=hunter2").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = SourceConfig::from_dsn("user=u password='hunter2").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn redacted_round_trips_without_the_password() {
        let mut c = SourceConfig::new("h o", 7, "it's", "d\\b");
        c.application_name = String::new();
        let back = SourceConfig::from_dsn(&c.redacted()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn receive_timeout_must_exceed_two_status_intervals() {
        let mut c = SourceConfig::new("h", 1, "u", "d");
        c.status_interval = Duration::from_secs(20);
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("receive_timeout"), "{err}");
    }
}
