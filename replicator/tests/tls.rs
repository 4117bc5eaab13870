//! Postgres over TLS, against a real lab cluster (TLS on, client certificate
//! required): every connection ezone makes is encrypted, as `pg_stat_ssl`
//! sees it, and a client that is not what the cluster expects is refused,
//! with an error that says whose fault it is.

use std::path::PathBuf;

use ezone_chaos::postgres::PgCluster;
use ezone_pg::Dsn;
use ezone_replicator::pg_error::Kind;
use ezone_replicator::walsender::{AuthMethod, ReplicationConn, SourceConfig, SourceError};

async fn start(name: &str) -> PgCluster {
    PgCluster::start(name)
        .await
        .unwrap_or_else(|e| panic!("cannot start Postgres for {name}: {e}"))
}

fn source(dsn: &str) -> SourceConfig {
    SourceConfig::from_dsn(dsn).unwrap_or_else(|e| panic!("{dsn}: {e}"))
}

/// `dsn` with `key=value` pairs replaced or added.
fn with(dsn: &str, changes: &[(&str, &str)]) -> String {
    let mut out: Vec<String> = dsn
        .split_whitespace()
        .filter(|kv| {
            !changes
                .iter()
                .any(|(k, _)| kv.starts_with(&format!("{k}=")))
        })
        .map(str::to_owned)
        .collect();
    for (k, v) in changes {
        if !v.is_empty() {
            out.push(format!("{k}={v}"));
        }
    }
    out.join(" ")
}

fn refused<T>(r: Result<T, ezone_pg::ConnectError>, what: &str) -> ezone_pg::ConnectError {
    match r {
        Ok(_) => panic!("{what} was accepted"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn every_connection_is_encrypted_and_verified() {
    let pg = start("tls-on").await;
    let dsn = pg.dsn(pg.database());
    assert!(dsn.contains("sslmode=verify-full"), "{dsn}");

    // An SQL session (the applier's, the commands') and a replication
    // session (the walsender client's), both seen from the server.
    let client = ezone_pg::connect_spawned(&dsn).await.expect("SQL over TLS");
    let mut repl = ReplicationConn::connect(&source(&dsn))
        .await
        .expect("replication over TLS");
    let rows = client
        .query(
            "SELECT a.backend_type, s.ssl, s.version, s.client_dn \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.client_port IS NOT NULL ORDER BY 1",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let seen: Vec<(String, bool, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (kind, ssl, version, dn) in &seen {
        assert!(ssl, "{kind} is not encrypted: {seen:?}");
        assert!(
            version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
            "{seen:?}"
        );
        assert_eq!(dn.as_deref(), Some("/CN=postgres/O=ezone lab"), "{seen:?}");
    }
    assert_eq!(
        seen.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["client backend", "walsender"]
    );
    repl.identify_system()
        .await
        .expect("replication commands work");
}

#[tokio::test]
async fn a_client_that_is_not_what_the_cluster_expects_is_refused() {
    let pg = start("tls-refuse").await;
    let dsn = pg.dsn(pg.database());

    // No TLS at all: the cluster has no pg_hba.conf entry for plain TCP.
    let plain = with(&dsn, &[("sslmode", "disable")]);
    let e = refused(ezone_pg::connect(&plain).await, "plain TCP");
    let pg_err = match &e {
        ezone_pg::ConnectError::Postgres(p) => p,
        other => panic!("{other}"),
    };
    assert_eq!(Kind::of(pg_err), Kind::Auth, "{e}");
    let message = pg_err.as_db_error().map(|d| d.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("no encryption")),
        "{message:?}"
    );
    let e = ReplicationConn::connect(&source(&plain))
        .await
        .expect_err("plain replication refused");
    assert_eq!(e.sqlstate(), Some("28000"), "{e}");
    assert!(!e.is_transient(), "{e}");

    // TLS without a client certificate: refused by clientcert=verify-full.
    let anonymous = with(&dsn, &[("sslcert", ""), ("sslkey", "")]);
    let e = refused(ezone_pg::connect(&anonymous).await, "no client certificate");
    assert!(
        matches!(&e, ezone_pg::ConnectError::Postgres(p) if Kind::of(p) == Kind::Auth),
        "{e}"
    );
    let e = ReplicationConn::connect(&source(&anonymous))
        .await
        .expect_err("no client certificate, replication");
    assert!(!e.is_transient(), "{e}");

    // A server certificate from another CA: our side refuses, definitely,
    // and says what to check.
    let other = start("tls-other").await;
    let foreign_ca = other
        .client_tls()
        .expect("TLS is on by default")
        .ca_file
        .display()
        .to_string();
    let wrong_ca = with(&dsn, &[("sslrootcert", &foreign_ca)]);
    let e = refused(ezone_pg::connect(&wrong_ca).await, "an unknown issuer");
    let pg_err = e.to_string();
    match &e {
        ezone_pg::ConnectError::Postgres(p) => assert_eq!(Kind::of(p), Kind::Tls, "{pg_err}"),
        other => panic!("{other}"),
    }
    match ReplicationConn::connect(&source(&wrong_ca)).await {
        Err(e @ SourceError::Tls { .. }) => {
            assert!(!e.is_transient(), "{e}");
            assert!(e.to_string().contains("sslrootcert"), "{e}");
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }

    // The right CA but a name the certificate does not carry (reached at
    // its address through `hostaddr`): verify-full refuses, verify-ca
    // (chain only) takes it.
    let by_name = with(
        &dsn,
        &[
            ("host", "not-in-the-certificate.test"),
            ("hostaddr", "127.0.0.1"),
        ],
    );
    let e = refused(
        ezone_pg::connect(&by_name).await,
        "a name not in the certificate",
    );
    match &e {
        ezone_pg::ConnectError::Postgres(p) => assert_eq!(Kind::of(p), Kind::Tls, "{e}"),
        other => panic!("{other}"),
    }
    let chain_only = with(&by_name, &[("sslmode", "verify-ca")]);
    ezone_pg::connect_spawned(&chain_only)
        .await
        .expect("verify-ca takes a good chain whatever the name");
}

#[tokio::test]
async fn scram_binds_to_the_tls_channel() {
    let pg = start("tls-scram").await;
    pg.psql("SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD 'pw'")
        .await
        .expect("password");
    let hba = "local all all trust\n\
               hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n\
               hostssl replication all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n";
    std::fs::write(pg.data_dir().join("pg_hba.conf"), hba).expect("pg_hba.conf");
    pg.psql("SELECT pg_reload_conf()").await.expect("reload");
    let dsn = with(&pg.dsn(pg.database()), &[("password", "pw")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match ReplicationConn::connect(&source(&dsn)).await {
            Ok(c) if c.auth_method() == AuthMethod::ScramSha256Plus => break,
            Ok(c) => assert!(
                std::time::Instant::now() < deadline,
                "still {}",
                c.auth_method()
            ),
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // tokio-postgres binds too (channel_binding=require fails otherwise).
    let bound = with(&dsn, &[("channel_binding", "require")]);
    ezone_pg::connect_spawned(&bound)
        .await
        .expect("SCRAM-SHA-256-PLUS through tokio-postgres");
}

#[test]
fn a_certificate_file_that_is_not_there_is_named() {
    let dsn =
        Dsn::parse("host=127.0.0.1 user=u sslmode=verify-full sslrootcert=/nonexistent/ca.pem")
            .expect("parses");
    let e = dsn.tls().client_config().expect_err("no such file");
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    let _: PathBuf = dsn.tls().rootcert.clone().expect("kept");
}
