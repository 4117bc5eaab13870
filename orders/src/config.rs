//! The order service's config (`orders.toml`): which site it serves, where it
//! listens, its Postgres and the pool's size.
//!
//! ```toml
//! site = "beijing"
//! listen = "127.0.0.1:0"
//! postgres = "host=127.0.0.1 port=5432 user=postgres dbname=ezone"
//! pool_size = 8
//! statement_timeout_ms = 5000
//! ```
//!
//! The DSN may hold a password, so the config is not `Serialize` and its
//! `Debug` shows the DSN redacted ([`OrdersConfig::redacted_postgres`]).

pub use ezone_pg::redact::redact_dsn;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Default `listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
/// Default `pool_size`: Postgres connections held by the service.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Default `statement_timeout_ms`.
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 5000;
/// The largest `pool_size` accepted (Postgres' own `max_connections` is
/// usually a few hundred, shared with everything else).
pub const MAX_POOL_SIZE: usize = 256;
/// The largest `statement_timeout_ms` accepted (10 minutes).
pub const MAX_STATEMENT_TIMEOUT_MS: u64 = 600_000;
/// The longest site name accepted.
pub const MAX_SITE_LEN: usize = 64;

fn default_listen() -> SocketAddr {
    // A constant that parses: checked by a unit test.
    SocketAddr::from_str(DEFAULT_LISTEN)
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8090)))
}

fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}

fn default_statement_timeout_ms() -> u64 {
    DEFAULT_STATEMENT_TIMEOUT_MS
}

/// `orders.toml`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrdersConfig {
    /// The site this service belongs to; stamped on every row it writes and
    /// sent back as `X-Ezone-Served-By`.
    pub site: String,
    /// Where to listen (port 0 picks a free port; the bound address is printed).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The site's Postgres, as a libpq key=value DSN (or a `postgresql://` URL).
    pub postgres: String,
    /// Postgres connections in the pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// `statement_timeout` of every pooled connection, in milliseconds.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
}

impl std::fmt::Debug for OrdersConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrdersConfig")
            .field("site", &self.site)
            .field("listen", &self.listen)
            .field("postgres", &self.redacted_postgres())
            .field("pool_size", &self.pool_size)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .finish()
    }
}

/// A config that does not parse or does not make sense. Each names the
/// field, the value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("orders config is not valid TOML for this service: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("orders config: {field} = {value}: {problem}; {fix}")]
    Invalid {
        field: &'static str,
        value: String,
        problem: String,
        fix: &'static str,
    },
}

fn invalid(
    field: &'static str,
    value: impl std::fmt::Display,
    problem: impl Into<String>,
    fix: &'static str,
) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        problem: problem.into(),
        fix,
    }
}

/// True for a site name this service accepts: the router's site names are
/// lowercase words (`beijing`, `us-east-1`), which are also valid header values.
pub fn valid_site_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SITE_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl OrdersConfig {
    /// Parses and validates.
    pub fn from_toml(text: &str) -> Result<OrdersConfig, ConfigError> {
        let cfg: OrdersConfig = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_site_name(&self.site) {
            return Err(invalid(
                "site",
                format!("{:?}", self.site),
                "not a site name",
                "use the site's name from the topology: 1 to 64 of a-z, 0-9, '-', '_'",
            ));
        }
        self.pg_config()?;
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            return Err(invalid(
                "pool_size",
                self.pool_size,
                format!("must be between 1 and {MAX_POOL_SIZE}"),
                "set pool_size to the number of Postgres connections to hold (default 8)",
            ));
        }
        if self.statement_timeout_ms == 0 || self.statement_timeout_ms > MAX_STATEMENT_TIMEOUT_MS {
            return Err(invalid(
                "statement_timeout_ms",
                self.statement_timeout_ms,
                format!("must be between 1 and {MAX_STATEMENT_TIMEOUT_MS}"),
                "set statement_timeout_ms to how long one statement may run (default 5000)",
            ));
        }
        Ok(())
    }

    /// The parsed DSN (the one parser of `ezone_pg`: keyword or URI form,
    /// libpq's TLS keys), with a host and a user required.
    pub fn pg_config(&self) -> Result<ezone_pg::Dsn, ConfigError> {
        let cfg = ezone_pg::Dsn::parse(&self.postgres).map_err(|e| {
            invalid(
                "postgres",
                self.redacted_postgres(),
                format!("does not parse: {e}"),
                "write a libpq DSN such as \"host=127.0.0.1 port=5432 user=postgres dbname=ezone\"",
            )
        })?;
        if cfg.host_count() == 0 {
            return Err(invalid(
                "postgres",
                self.redacted_postgres(),
                "names no host",
                "add host=... (an address or a Unix socket directory)",
            ));
        }
        if cfg.user().is_none() {
            return Err(invalid(
                "postgres",
                self.redacted_postgres(),
                "names no user",
                "add user=... (the service needs no superuser once `ezone orders install` has run)",
            ));
        }
        Ok(cfg)
    }

    /// The statement timeout as a duration.
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }

    /// The DSN with any password replaced by `***`, for logs and errors.
    pub fn redacted_postgres(&self) -> String {
        redact_dsn(&self.postgres)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "site = \"beijing\"\npostgres = \"host=127.0.0.1 user=postgres dbname=ezone\"\n";

    fn field_of(e: ConfigError) -> &'static str {
        match e {
            ConfigError::Invalid { field, .. } => field,
            ConfigError::Parse(e) => panic!("expected a validation error, got {e}"),
        }
    }

    #[test]
    fn defaults_apply() {
        let c = OrdersConfig::from_toml(MINIMAL).expect("valid");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(c.statement_timeout_ms, DEFAULT_STATEMENT_TIMEOUT_MS);
        assert_eq!(c.statement_timeout(), Duration::from_millis(5000));
    }

    #[test]
    fn default_listen_constant_parses() {
        assert_eq!(default_listen().to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../docs/orders.md");
        let start = doc
            .find("```toml\n")
            .expect("a toml block in docs/orders.md")
            + 8;
        let len = doc[start..].find("```").expect("the block ends");
        let c =
            OrdersConfig::from_toml(&doc[start..start + len]).expect("the doc's example is valid");
        assert_eq!(c.site, "beijing");
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.pool_size, 8);
        assert_eq!(c.statement_timeout_ms, 5000);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = OrdersConfig::from_toml(&format!("{MINIMAL}pool = 3\n")).expect_err("typo");
        assert!(e.to_string().contains("pool"), "{e}");
    }

    #[test]
    fn missing_required_fields_are_named() {
        let e = OrdersConfig::from_toml("site = \"beijing\"\n").expect_err("no postgres");
        assert!(e.to_string().contains("postgres"), "{e}");
    }

    #[test]
    fn each_bad_field_is_named_with_a_fix() {
        let cases: &[(&str, &str)] = &[
            ("site = \"\"\npostgres = \"host=h user=u\"\n", "site"),
            (
                "site = \"Bei Jing\"\npostgres = \"host=h user=u\"\n",
                "site",
            ),
            (
                "site = \"beijing\"\npostgres = \"host=h user=u port=x\"\n",
                "postgres",
            ),
            ("site = \"beijing\"\npostgres = \"user=u\"\n", "postgres"),
            ("site = \"beijing\"\npostgres = \"host=h\"\n", "postgres"),
            (
                "site = \"beijing\"\npostgres = \"host=h user=u\"\npool_size = 0\n",
                "pool_size",
            ),
            (
                "site = \"beijing\"\npostgres = \"host=h user=u\"\npool_size = 100000\n",
                "pool_size",
            ),
            (
                "site = \"beijing\"\npostgres = \"host=h user=u\"\nstatement_timeout_ms = 0\n",
                "statement_timeout_ms",
            ),
        ];
        for (text, want) in cases {
            let e = OrdersConfig::from_toml(text).expect_err(text);
            let msg = e.to_string();
            assert_eq!(field_of(e), *want, "{text}");
            assert!(msg.contains(want) && msg.contains(';'), "{msg}");
        }
    }

    #[test]
    fn passwords_never_show() {
        let text = "site = \"beijing\"\npostgres = \"host=h user=u password=hunter2 dbname=x\"\npool_size = 0\n";
        let e = OrdersConfig::from_toml(text).expect_err("pool_size");
        assert!(!e.to_string().contains("hunter2"));
        let c: OrdersConfig = toml::from_str(text).expect("parses");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(
            redact_dsn("host=h password='a b c' user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(
            redact_dsn("postgresql://u:hunter2@h:5432/db"),
            "postgresql://u:***@h:5432/db"
        );
        assert_eq!(redact_dsn("host=h user=u"), "host=h user=u");
    }
}
