//! The walsender client against real PostgreSQL 15 clusters from the lab
//! (`ezone_chaos::postgres`): each test starts its own cluster.
//!
//! Waits are polls with deadlines. The only plain sleep is the keepalive
//! test's idle period, which *is* the scenario (no traffic for several
//! `wal_sender_timeout`s).

use std::future::Future;
use std::time::Duration;

use ezone_chaos::postgres::PgCluster;
use ezone_replicator::lsn::Lsn;
use ezone_replicator::pgoutput::{self, LogicalMessage, PgTimestamp};
use ezone_replicator::walsender::{
    AuthMethod, ReplicationConn, ReplicationStream, SourceConfig, SourceError, StreamEvent,
};
use proptest::prelude::*;
use tokio::time::{sleep, timeout, Instant};

/// Generous for a loaded 2-core machine; the happy path takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);

async fn start(name: &str) -> PgCluster {
    PgCluster::start(name)
        .await
        .unwrap_or_else(|e| panic!("cannot start Postgres for {name}: {e}"))
}

async fn psql(pg: &PgCluster, sql: &str) -> String {
    pg.psql(sql)
        .await
        .unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
}

fn config(pg: &PgCluster) -> SourceConfig {
    SourceConfig::from_dsn(&pg.dsn(pg.database())).expect("the lab DSN parses")
}

async fn connect(config: &SourceConfig) -> ReplicationConn {
    ReplicationConn::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e}"))
}

/// A table `t (id int primary key, v text)` and a publication `p` over it.
async fn table_and_publication(pg: &PgCluster) {
    psql(
        pg,
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t",
    )
    .await;
}

fn publications() -> Vec<String> {
    vec!["p".to_owned()]
}

/// Polls `check` until it returns `Some`, or panics naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// The next event, within the deadline.
async fn next_event(stream: &mut ReplicationStream) -> Result<Option<StreamEvent>, SourceError> {
    timeout(DEADLINE, stream.next())
        .await
        .expect("no stream event within the deadline")
}

/// The next pgoutput message, skipping keepalives.
async fn next_message(stream: &mut ReplicationStream) -> LogicalMessage {
    loop {
        match next_event(stream).await {
            Ok(Some(StreamEvent::XLogData { data, .. })) => {
                return pgoutput::decode(&data).expect("XLogData decodes as pgoutput")
            }
            Ok(Some(StreamEvent::Keepalive { .. })) => {}
            other => panic!("expected XLogData, got {other:?}"),
        }
    }
}

/// Reads messages up to and including the next Commit.
async fn next_transaction(stream: &mut ReplicationStream) -> Vec<LogicalMessage> {
    let mut messages = Vec::new();
    loop {
        let message = next_message(stream).await;
        let done = matches!(message, LogicalMessage::Commit(_));
        messages.push(message);
        if done {
            return messages;
        }
    }
}

fn kinds(messages: &[LogicalMessage]) -> String {
    messages
        .iter()
        .map(|m| match m {
            LogicalMessage::Begin(_) => 'B',
            LogicalMessage::Commit(_) => 'C',
            LogicalMessage::Origin(_) => 'O',
            LogicalMessage::Relation(_) => 'R',
            LogicalMessage::Type(_) => 'Y',
            LogicalMessage::Insert(_) => 'I',
            LogicalMessage::Update(_) => 'U',
            LogicalMessage::Delete(_) => 'D',
            LogicalMessage::Truncate(_) => 'T',
            LogicalMessage::Message(_) => 'M',
        })
        .collect()
}

/// The `id` column of each Insert.
fn inserted_ids(messages: &[LogicalMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            LogicalMessage::Insert(insert) => Some(
                insert.new.columns[0]
                    .as_text()
                    .expect("id is sent as text")
                    .to_owned(),
            ),
            _ => None,
        })
        .collect()
}

async fn confirmed_flush(pg: &PgCluster, slot: &str) -> Lsn {
    let text = psql(
        pg,
        &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .await;
    text.parse()
        .unwrap_or_else(|e| panic!("confirmed_flush_lsn of {slot}: {e}"))
}

#[tokio::test]
async fn streams_changes_and_messages_from_an_exported_snapshot() {
    let pg = start("ws-stream").await;
    table_and_publication(&pg).await;
    psql(&pg, "INSERT INTO t VALUES (1, 'before'), (2, 'before')").await;

    let mut conn = connect(&config(&pg)).await;
    assert_eq!(conn.auth_method(), AuthMethod::Trust);
    assert!(conn.parameter("server_version").unwrap().starts_with("15"));

    let system = conn.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert!(system.systemid > 0, "{system:?}");
    assert_eq!(system.timeline, 1);
    assert_eq!(system.dbname.as_deref(), Some("ezone"));
    let current: Lsn = psql(&pg, "SELECT pg_current_wal_lsn()")
        .await
        .parse()
        .unwrap();
    assert!(
        system.xlogpos.is_valid() && system.xlogpos <= current,
        "xlogpos {} vs pg_current_wal_lsn {current}",
        system.xlogpos
    );

    let slot = conn
        .create_logical_slot("ws_stream", false, true)
        .await
        .expect("CREATE_REPLICATION_SLOT");
    assert_eq!(slot.slot_name, "ws_stream");
    assert_eq!(slot.output_plugin.as_deref(), Some("pgoutput"));
    assert!(slot.consistent_point >= system.xlogpos, "{slot:?}");
    let snapshot = slot.snapshot_name.clone().expect("an exported snapshot");

    // A row committed after the slot: not in the snapshot, but streamed.
    psql(&pg, "INSERT INTO t VALUES (3, 'after')").await;
    // The replication connection is idle: its snapshot can be adopted.
    let seen = psql(
        &pg,
        &format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'; \
             SELECT string_agg(id::text, ',' ORDER BY id) FROM t; COMMIT"
        ),
    )
    .await;
    assert_eq!(
        seen, "1,2",
        "the snapshot is the database at the consistent point"
    );

    let mut stream = conn
        .start_logical(
            "ws_stream",
            slot.consistent_point,
            &publications(),
            true,
            false,
        )
        .await
        .expect("START_REPLICATION");
    psql(&pg, "INSERT INTO t VALUES (4, 'x'), (5, 'y')").await;
    psql(&pg, "SELECT pg_logical_emit_message(true, 'ezone', 'm1')").await;

    let first = next_transaction(&mut stream).await;
    assert_eq!(kinds(&first), "BRIC", "{first:?}");
    assert_eq!(inserted_ids(&first), ["3"]);
    match (&first[0], &first[1], &first[3]) {
        (LogicalMessage::Begin(b), LogicalMessage::Relation(r), LogicalMessage::Commit(c)) => {
            assert_eq!(b.final_lsn, c.commit_lsn);
            assert!(c.end_lsn > c.commit_lsn && c.commit_lsn > slot.consistent_point);
            assert_eq!((r.namespace.as_str(), r.name.as_str()), ("public", "t"));
            assert_eq!(r.columns.len(), 2);
        }
        other => panic!("unexpected transaction shape {other:?}"),
    }
    let second = next_transaction(&mut stream).await;
    assert_eq!(kinds(&second), "BIIC", "{second:?}");
    assert_eq!(inserted_ids(&second), ["4", "5"]);
    let third = next_transaction(&mut stream).await;
    assert_eq!(kinds(&third), "BMC", "{third:?}");
    match &third[1] {
        LogicalMessage::Message(m) => {
            assert_eq!(m.prefix, "ezone");
            assert_eq!(&m.content[..], b"m1");
            assert!(m.is_transactional());
        }
        other => panic!("expected a Message, got {other:?}"),
    }
}

#[tokio::test]
async fn confirmed_position_advances_and_never_goes_back() {
    let pg = start("ws-confirm").await;
    table_and_publication(&pg).await;
    let mut config = config(&pg);
    // Short, so the periodic update (not send_status) delivers the confirm.
    config.status_interval = Duration::from_millis(300);
    let mut conn = connect(&config).await;
    let slot = conn
        .create_logical_slot("ws_confirm", false, false)
        .await
        .unwrap();
    assert_eq!(slot.snapshot_name, None);
    let initial = confirmed_flush(&pg, "ws_confirm").await;
    let mut stream = conn
        .start_logical("ws_confirm", Lsn::INVALID, &publications(), false, false)
        .await
        .unwrap();

    psql(&pg, "INSERT INTO t VALUES (1, 'a')").await;
    let txn = next_transaction(&mut stream).await;
    let end = match txn.last() {
        Some(LogicalMessage::Commit(c)) => c.end_lsn,
        other => panic!("expected a Commit, got {other:?}"),
    };
    assert!(end > initial);

    // Confirm without sending: the periodic status update carries it.
    stream.confirm(end);
    let cluster = &pg;
    eventually(
        "confirmed_flush_lsn reaches the commit's end",
        move || async move { (confirmed_flush(cluster, "ws_confirm").await == end).then_some(()) },
    )
    .await;

    // A lower confirm is ignored ...
    stream.confirm(Lsn(end.0 - 1));
    stream.confirm(initial);
    assert_eq!(stream.progress().flushed, end);
    // ... and what the server gets after it still says `end`. Ask for a
    // reply: the server answers after it processed our update.
    let asked = PgTimestamp::now();
    stream.send_status(true).await.expect("send_status");
    loop {
        match next_event(&mut stream).await {
            Ok(Some(StreamEvent::Keepalive { send_time, .. })) if send_time >= asked => break,
            Ok(Some(_)) => {}
            other => panic!("the stream ended: {other:?}"),
        }
    }
    // Recent 15.x minors keep the slot itself from going back; older ones do
    // not, and all of them show the last reported value here.
    assert_eq!(confirmed_flush(&pg, "ws_confirm").await, end);
    let reported: Lsn = psql(
        &pg,
        "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'ezone-replicator'",
    )
    .await
    .parse()
    .unwrap();
    assert_eq!(
        reported, end,
        "pg_stat_replication shows our flushed position"
    );
}

#[tokio::test]
async fn keepalives_keep_an_idle_stream_alive() {
    let pg = start("ws-keepalive").await;
    table_and_publication(&pg).await;
    // The lab sets wal_sender_timeout on the postmaster's command line,
    // which ALTER SYSTEM cannot override; a role setting can.
    psql(&pg, "ALTER ROLE postgres SET wal_sender_timeout = '1s'").await;

    // The default status interval (3 s) is longer than this server's
    // timeout: the stream survives by answering the server's pings.
    let mut conn = connect(&config(&pg)).await;
    let rows = conn.simple_query("SHOW wal_sender_timeout").await.unwrap();
    assert_eq!(rows, [[Some("1s".to_owned())]], "our walsender's timeout");
    let pid = conn.backend_pid().expect("BackendKeyData");
    conn.create_logical_slot("ws_keepalive", false, false)
        .await
        .unwrap();
    let mut stream = conn
        .start_logical("ws_keepalive", Lsn::INVALID, &publications(), false, false)
        .await
        .unwrap();

    // No traffic, and nobody calling next(), for 4 x wal_sender_timeout.
    sleep(Duration::from_secs(4)).await;
    // The stream's task heard the server's pings meanwhile (every half
    // timeout), though the caller read none of them.
    assert!(
        stream.silence() < Duration::from_millis(1500),
        "silent for {:?}",
        stream.silence()
    );

    let alive = psql(
        &pg,
        &format!("SELECT count(*) FROM pg_stat_replication WHERE pid = {pid}"),
    )
    .await;
    assert_eq!(alive, "1", "our walsender (pid {pid}) is still there");
    psql(&pg, "INSERT INTO t VALUES (1, 'after the quiet')").await;
    let mut pings = 0;
    let insert = loop {
        match next_event(&mut stream).await {
            Ok(Some(StreamEvent::Keepalive {
                reply_requested, ..
            })) => pings += usize::from(reply_requested),
            Ok(Some(StreamEvent::XLogData { data, .. })) => {
                let message = pgoutput::decode(&data).unwrap();
                if let LogicalMessage::Insert(insert) = message {
                    break insert;
                }
            }
            other => panic!("the stream ended: {other:?}"),
        }
    };
    assert_eq!(insert.new.columns[0].as_text(), Some("1"));
    assert!(
        pings >= 2,
        "the server asked for replies while idle ({pings})"
    );
    let log = std::fs::read_to_string(pg.log_path()).unwrap_or_default();
    assert!(
        !log.contains("replication timeout"),
        "the server timed a walsender out:\n{log}"
    );
}

/// Replaces the cluster's pg_hba.conf: local trust, TCP from 127.0.0.1 with
/// `method` for all databases and for replication.
fn write_hba(pg: &PgCluster, method: &str) {
    let hba = format!(
        "local all all trust\n\
         host all all 127.0.0.1/32 {method}\n\
         host replication all 127.0.0.1/32 {method}\n"
    );
    std::fs::write(pg.data_dir().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
}

/// Connects with `password` until the server uses `method` (a reload takes
/// effect a moment after pg_reload_conf returns).
async fn connect_once_method_is(config: &SourceConfig, method: AuthMethod) -> ReplicationConn {
    eventually(
        &format!("the server asks for {method}"),
        move || async move {
            match ReplicationConn::connect(config).await {
                Ok(conn) if conn.auth_method() == method => Some(conn),
                Ok(_) => None,
                Err(e) => panic!("connecting with the right password failed: {e}"),
            }
        },
    )
    .await
}

fn assert_wrong_password(result: Result<ReplicationConn, SourceError>) {
    match result {
        Err(e) => {
            assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
            assert!(!e.is_transient(), "a wrong password is definite: {e}");
            let text = e.to_string();
            assert!(text.contains("\"postgres\""), "names the user: {text}");
            assert!(text.contains("Fix:"), "{text}");
        }
        Ok(conn) => panic!("a wrong password was accepted ({:?})", conn.auth_method()),
    }
}

#[tokio::test]
async fn password_authentication_scram_md5_and_cleartext() {
    let pg = start("ws-auth").await;
    psql(
        &pg,
        "ALTER SYSTEM SET password_encryption = 'scram-sha-256'",
    )
    .await;
    psql(
        &pg,
        "SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD 'secret'",
    )
    .await;
    write_hba(&pg, "scram-sha-256");
    psql(&pg, "SELECT pg_reload_conf()").await;

    let mut right = config(&pg);
    right.password = Some("secret".to_owned());
    let mut wrong = right.clone();
    wrong.password = Some("wrong".to_owned());
    let none = config(&pg);

    // Over TLS (the lab's default) SCRAM binds to the channel; without TLS
    // it cannot.
    let mut conn = connect_once_method_is(&right, AuthMethod::ScramSha256Plus).await;
    conn.identify_system().await.expect("works once logged in");
    let mut plain = right.clone();
    plain.tls.mode = ezone_pg::SslMode::Disable;
    connect_once_method_is(&plain, AuthMethod::ScramSha256).await;
    assert_wrong_password(ReplicationConn::connect(&wrong).await);
    match ReplicationConn::connect(&none).await {
        Err(e @ SourceError::Auth { .. }) => {
            assert!(!e.is_transient());
            assert!(e.to_string().contains("password="), "says how to fix: {e}");
        }
        other => panic!("expected a missing-password error, got {other:?}"),
    }

    // MD5: an md5-stored password and an md5 pg_hba line. psql can no longer
    // log in, so this goes over the replication connection (plain SQL works
    // on a replication=database connection).
    conn.simple_query("SET password_encryption = 'md5'")
        .await
        .unwrap();
    conn.simple_query("ALTER ROLE postgres PASSWORD 'secret'")
        .await
        .unwrap();
    write_hba(&pg, "md5");
    conn.simple_query("SELECT pg_reload_conf()").await.unwrap();
    connect_once_method_is(&right, AuthMethod::Md5).await;
    assert_wrong_password(ReplicationConn::connect(&wrong).await);

    write_hba(&pg, "password");
    conn.simple_query("SELECT pg_reload_conf()").await.unwrap();
    connect_once_method_is(&right, AuthMethod::Cleartext).await;
    assert_wrong_password(ReplicationConn::connect(&wrong).await);
}

#[tokio::test]
async fn errors_are_definite_or_transient() {
    let pg = start("ws-errors").await;
    table_and_publication(&pg).await;
    let config = config(&pg);

    // A missing slot: definite, and the message names it.
    let conn = connect(&config).await;
    let err = conn
        .start_logical("no_such_slot", Lsn::INVALID, &publications(), false, false)
        .await
        .expect_err("the slot does not exist");
    assert_eq!(err.sqlstate(), Some("42704"), "{err}");
    assert!(!err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("no_such_slot") && text.contains(&config.server()),
        "{text}"
    );

    // A bad slot name never reaches the server.
    let mut conn = connect(&config).await;
    let err = conn
        .create_logical_slot("Bad-Name", false, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::Config { .. }) && !err.is_transient(),
        "{err}"
    );

    // A slot created twice: definite.
    conn.create_logical_slot("ws_errors", false, false)
        .await
        .unwrap();
    let err = conn
        .create_logical_slot("ws_errors", false, false)
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("42710"), "{err}");
    assert!(
        !err.is_transient() && err.to_string().contains("ws_errors"),
        "{err}"
    );
    // The connection is still usable after a server error.
    assert!(conn.slot_exists("ws_errors").await.unwrap());
    assert!(!conn.slot_exists("no_such_slot").await.unwrap());

    // A temporary slot lives as long as its connection.
    let mut temporary = connect(&config).await;
    temporary
        .create_logical_slot("ws_temp", true, false)
        .await
        .unwrap();
    assert!(conn.slot_exists("ws_temp").await.unwrap());
    temporary.close().await.expect("Terminate");
    let cluster = &pg;
    eventually("the temporary slot is gone", move || async move {
        let count = psql(
            cluster,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ws_temp'",
        )
        .await;
        (count == "0").then_some(())
    })
    .await;

    // A missing publication is reported mid-stream, at the first change.
    conn.create_logical_slot("ws_nopub", false, false)
        .await
        .unwrap();
    let mut stream = conn
        .start_logical(
            "ws_nopub",
            Lsn::INVALID,
            &["nopub".to_owned()],
            false,
            false,
        )
        .await
        .unwrap();
    psql(&pg, "INSERT INTO t VALUES (1, 'a')").await;
    let err = loop {
        match next_event(&mut stream).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.sqlstate(), Some("42704"), "{err}");
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("nopub") && err.to_string().contains("ws_nopub"),
        "{err}"
    );
    assert!(matches!(
        stream.next().await,
        Err(SourceError::Closed { .. })
    ));

    // kill -9 mid-stream: transient.
    let conn = connect(&config).await;
    let mut other = connect(&config).await;
    other
        .drop_slot("ws_nopub", true)
        .await
        .expect("DROP_REPLICATION_SLOT WAIT");
    let mut stream = conn
        .start_logical("ws_errors", Lsn::INVALID, &publications(), false, false)
        .await
        .unwrap();
    psql(&pg, "INSERT INTO t VALUES (2, 'b')").await;
    next_transaction(&mut stream).await;
    pg.kill().expect("kill -9 the postmaster");
    let err = loop {
        match next_event(&mut stream).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a crash is not a clean end"),
            Err(e) => break e,
        }
    };
    assert!(err.is_transient(), "a crashed server is transient: {err}");
    assert!(err.to_string().contains("ws_errors"), "{err}");
}

#[tokio::test]
async fn a_silent_server_times_out_as_transient() {
    let pg = start("ws-silent").await;
    table_and_publication(&pg).await;
    let mut config = config(&pg);
    config.status_interval = Duration::from_millis(200);
    config.receive_timeout = Duration::from_secs(1);
    let mut conn = connect(&config).await;
    conn.create_logical_slot("ws_silent", false, false)
        .await
        .unwrap();
    let mut stream = conn
        .start_logical("ws_silent", Lsn::INVALID, &publications(), false, false)
        .await
        .unwrap();
    // Alive and idle: the status updates ask for replies, so no timeout.
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        match timeout(Duration::from_millis(500), stream.next()).await {
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(other) => panic!("an idle live server must not end the stream: {other:?}"),
        }
    }
    pg.pause().expect("SIGSTOP the server");
    let err = loop {
        match next_event(&mut stream).await {
            Ok(Some(_)) => {}
            other => break other.expect_err("a paused server cannot end the stream cleanly"),
        }
    };
    pg.resume().expect("SIGCONT the server");
    assert!(matches!(err, SourceError::Timeout { .. }), "{err}");
    assert!(err.is_transient(), "{err}");
}

proptest! {
    #[test]
    fn from_dsn_never_panics(dsn in "(?s).{0,80}") {
        let _ = SourceConfig::from_dsn(&dsn);
    }

    #[test]
    fn from_dsn_never_panics_on_dsn_like_text(
        dsn in "([ \t\n=\\\\'a-z0-9_]|host|port|user|dbname|password|sslmode|connect_timeout){0,40}"
    ) {
        let _ = SourceConfig::from_dsn(&dsn);
    }

    #[test]
    fn redacted_dsn_parses_back(
        host in "[^\0,/@]{1,12}",
        user in "[^\0]{1,12}",
        dbname in "[^\0]{1,12}",
        application_name in "[^\0]{0,12}",
        port in 1u16..,
    ) {
        let mut config = SourceConfig::new(host, port, user, dbname);
        config.application_name = application_name;
        prop_assume!(config.validate().is_ok());
        let back = SourceConfig::from_dsn(&config.redacted());
        prop_assert_eq!(back.ok(), Some(config));
    }
}
