//! The etcd store against a real etcd (3.4, Debian's etcd-server) over TLS
//! with client certificates, and with etcd users: what works, and that
//! what cannot work fails at once with a definite error naming the file or
//! the user and the fix.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ezone_chaos::certs::{LabCerts, LOOPBACK_SANS};
use ezone_chaos::etcd::{EtcdCluster, EtcdOptions as LabEtcd, EtcdServerTls};
use ezone_topology::starter::starter;
use ezone_topology::store::{InvalidEtcdOptions, DEFAULT_REQUEST_TIMEOUT};
use ezone_topology::{
    AnyStore, EtcdAuth, EtcdOptions, EtcdStore, EtcdTls, ShardState, StoreError, TopologyStore,
    Watcher,
};

const WAIT: Duration = Duration::from_secs(20);
const PASSWORD: &str = "correct horse battery staple";

/// A one-member etcd serving clients over TLS with `--client-cert-auth`, and
/// the CA that signed its certificate (and signs clients').
async fn tls_etcd(dir: &Path) -> (EtcdCluster, LabCerts) {
    let certs = LabCerts::generate(&dir.join("certs")).expect("certificates");
    let server = certs
        .issue_server("etcd", LOOPBACK_SANS)
        .expect("server cert");
    let etcd = EtcdCluster::start_with(LabEtcd {
        tls: Some(EtcdServerTls::new(&server, certs.ca_file())),
        ..LabEtcd::default()
    })
    .await
    .expect("etcd with TLS");
    (etcd, certs)
}

fn password_file(dir: &Path, password: &str) -> PathBuf {
    let path = dir.join(format!("password-{}", password.len()));
    std::fs::write(&path, format!("{password}\n")).expect("password file");
    path
}

/// Creates `root` with [`PASSWORD`] and enables auth.
async fn enable_auth(endpoints: &[String], connect: Option<etcd_client::ConnectOptions>) {
    let mut c = etcd_client::Client::connect(endpoints, connect)
        .await
        .expect("etcd client");
    c.user_add("root", PASSWORD, None).await.expect("add root");
    c.user_grant_role("root", "root").await.expect("root role");
    c.auth_enable().await.expect("enable auth");
}

fn is_misconfigured(e: &StoreError) -> bool {
    matches!(e, StoreError::Misconfigured { .. }) && !e.is_retryable()
}

#[tokio::test]
async fn a_client_with_the_ca_and_a_certificate_reads_writes_watches_and_locks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd, certs) = tls_etcd(dir.path()).await;
    let urls = etcd.client_urls();
    assert!(urls[0].starts_with("https://127.0.0.1:"), "{urls:?}");
    let client = certs.issue_client("ezone").expect("client cert");
    let options = EtcdOptions::new(&urls)
        .with_tls(EtcdTls::new(certs.ca_file()).with_identity(&client.cert_file, &client.key_file));
    options.validate().expect("valid options");
    let store = EtcdStore::connect_with(&options, "/ezone")
        .await
        .expect("connect");

    let t = starter(&["beijing", "shanghai"], 2);
    store.init(&t, false).await.expect("init over TLS");
    assert_eq!(*store.load().await.expect("load").topology, t);

    let watcher = Watcher::start(AnyStore::Etcd(Box::new(store.clone())));
    watcher
        .wait_for_version(1, WAIT)
        .await
        .expect("first snapshot");
    let mut s1 = t.shards[&1].clone();
    s1.state = ShardState::Frozen;
    s1.epoch += 1;
    let v = store.cas_shard(t.shards[&1].epoch, &s1).await.expect("cas");
    let seen = watcher.wait_for_version(v, WAIT).await.expect("watched");
    assert_eq!(seen.topology.shards[&1], s1);

    let lock = store
        .lock("shard-1", "test", Duration::from_secs(5))
        .await
        .expect("lock");
    assert!(matches!(
        store.lock("shard-1", "other", Duration::from_secs(5)).await,
        Err(StoreError::Locked { .. })
    ));
    lock.release().await.expect("release");
}

#[tokio::test]
async fn a_client_without_a_certificate_or_with_another_ca_is_refused_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd, certs) = tls_etcd(dir.path()).await;
    let urls = etcd.client_urls();

    // No client certificate: etcd (--client-cert-auth) ends the handshake.
    let store = EtcdStore::connect_with(
        &EtcdOptions::new(&urls).with_tls(EtcdTls::new(certs.ca_file())),
        "/ezone",
    )
    .await
    .expect("the connection is lazy");
    let began = Instant::now();
    let e = store.load().await.expect_err("refused");
    let text = e.to_string();
    eprintln!("{text}");
    assert!(is_misconfigured(&e), "{e:?}");
    assert!(text.contains("no client certificate"), "{text}");
    assert!(text.contains("tls.cert_file"), "{text}");
    assert!(
        began.elapsed() < DEFAULT_REQUEST_TIMEOUT,
        "not retried until the deadline: {:?}",
        began.elapsed()
    );

    // A client certificate, but trusting another CA than etcd's.
    let other = LabCerts::generate(&dir.path().join("other")).expect("another CA");
    let client = certs.issue_client("ezone").expect("client cert");
    let wrong_ca = EtcdOptions::new(&urls)
        .with_tls(EtcdTls::new(other.ca_file()).with_identity(&client.cert_file, &client.key_file));
    let store = EtcdStore::connect_with(&wrong_ca, "/ezone")
        .await
        .expect("lazy");
    let e = store.load().await.expect_err("refused");
    let text = e.to_string();
    eprintln!("{text}");
    assert!(is_misconfigured(&e), "{e:?}");
    assert!(
        text.contains(&other.ca_file().display().to_string()),
        "{text}"
    );
    assert!(text.contains("server certificate"), "{text}");

    // A certificate signed by a CA etcd does not trust.
    let stranger = other
        .issue_client("stranger")
        .expect("client of the other CA");
    let untrusted = EtcdOptions::new(&urls).with_tls(
        EtcdTls::new(certs.ca_file()).with_identity(&stranger.cert_file, &stranger.key_file),
    );
    let store = EtcdStore::connect_with(&untrusted, "/ezone")
        .await
        .expect("lazy");
    let e = store.load().await.expect_err("refused");
    let text = e.to_string();
    eprintln!("{text}");
    assert!(is_misconfigured(&e), "{e:?}");
    assert!(
        text.contains(&stranger.cert_file.display().to_string()),
        "{text}"
    );

    // Plain http to a TLS port with tls configured: caught before connecting.
    let http: Vec<String> = urls
        .iter()
        .map(|u| u.replace("https://", "http://"))
        .collect();
    let e = EtcdStore::connect_with(
        &EtcdOptions::new(&http).with_tls(EtcdTls::new(certs.ca_file())),
        "/ezone",
    )
    .await
    .expect_err("invalid options");
    assert!(is_misconfigured(&e), "{e:?}");
    assert!(e.to_string().contains("write https://"), "{e}");

    // validate() names every problem at once.
    let key_only = EtcdOptions::new(&urls).with_tls(EtcdTls {
        key_file: Some(client.key_file.clone()),
        ..EtcdTls::new(dir.path().join("missing-ca.pem"))
    });
    let InvalidEtcdOptions(problems) = key_only.validate().expect_err("invalid");
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[tokio::test]
async fn an_etcd_user_with_the_right_password_works_and_a_wrong_one_is_refused_naming_the_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let urls = etcd.client_urls();
    enable_auth(&urls, None).await;

    let good = EtcdOptions::new(&urls).with_auth(EtcdAuth::new(
        "root",
        Some(password_file(dir.path(), PASSWORD)),
    ));
    let store = EtcdStore::connect_with(&good, "/ezone")
        .await
        .expect("the right password");
    let t = starter(&["beijing", "shanghai"], 1);
    store.init(&t, false).await.expect("init as root");
    assert_eq!(*store.load().await.expect("load").topology, t);

    let wrong = "not the password";
    let bad = EtcdOptions::new(&urls).with_auth(EtcdAuth::new(
        "root",
        Some(password_file(dir.path(), wrong)),
    ));
    let began = Instant::now();
    let e = EtcdStore::connect_with(&bad, "/ezone")
        .await
        .expect_err("a wrong password");
    let text = e.to_string();
    eprintln!("{text}");
    assert!(is_misconfigured(&e), "{e:?}");
    assert!(text.contains("user \"root\""), "{text}");
    assert!(text.contains("auth.password_file"), "{text}");
    assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
    assert!(
        began.elapsed() < DEFAULT_REQUEST_TIMEOUT,
        "{:?}",
        began.elapsed()
    );

    // No user at all, against etcd with auth on.
    let anonymous = EtcdStore::connect(&urls, "/ezone").await.expect("lazy");
    let e = anonymous.load().await.expect_err("no user");
    assert!(is_misconfigured(&e), "{e:?}");
    assert!(e.to_string().contains("auth.user"), "{e}");
}

#[tokio::test]
async fn tls_with_a_user_renews_its_token_after_etcd_forgot_it() {
    use ezone_chaos::proxy::{FaultProxy, LinkSpec, Toxics};
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = LabCerts::generate(&dir.path().join("certs")).expect("certificates");
    let server = certs
        .issue_server("etcd", LOOPBACK_SANS)
        .expect("server cert");
    // Tokens forgotten after 1 s unused (etcd's default: 300 s).
    let etcd = EtcdCluster::start_with(LabEtcd {
        tls: Some(EtcdServerTls::new(&server, certs.ca_file())),
        auth_token_ttl: Some(Duration::from_secs(1)),
        ..LabEtcd::default()
    })
    .await
    .expect("etcd");
    let urls = etcd.client_urls();
    let client = certs.issue_client("ezone").expect("client cert");
    let tls = EtcdTls::new(certs.ca_file()).with_identity(&client.cert_file, &client.key_file);
    let admin = etcd_client::ConnectOptions::new().with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(
                std::fs::read(certs.ca_file()).expect("ca"),
            ))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(&client.cert_file).expect("cert"),
                std::fs::read(&client.key_file).expect("key"),
            )),
    );
    enable_auth(&urls, Some(admin)).await;
    let auth = EtcdAuth::new("root", Some(password_file(dir.path(), PASSWORD)));
    let direct = EtcdStore::connect_with(
        &EtcdOptions::new(&urls)
            .with_tls(tls.clone())
            .with_auth(auth.clone()),
        "/ezone",
    )
    .await
    .expect("connect");
    let t = starter(&["beijing", "shanghai"], 1);
    direct.init(&t, false).await.expect("init");

    // The watcher's store goes through a proxy, to cut its watch stream.
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(LinkSpec {
            name: "watcher->etcd".into(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            upstream: urls[0]
                .trim_start_matches("https://")
                .parse()
                .expect("etcd address"),
            upstream_toxics: Toxics::default(),
            downstream_toxics: Toxics::default(),
        })
        .await
        .expect("link");
    let proxied = EtcdOptions::new(&[format!("https://{}", link.listen_addr())])
        .with_tls(tls)
        .with_auth(auth);
    let store = EtcdStore::connect_with(&proxied, "/ezone")
        .await
        .expect("connect via the proxy");
    let watcher = Watcher::start(AnyStore::Etcd(Box::new(store.clone())));
    watcher
        .wait_for_version(1, WAIT)
        .await
        .expect("first snapshot");

    // The watcher's token expires while its stream runs (a watch uses it
    // only when created); then the stream is cut. etcd cancels the new
    // watch ("permission denied", not an error etcd-client would renew the
    // token on): the watcher renews it and watches again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    link.reset();
    let mut s1 = t.shards[&1].clone();
    s1.epoch += 1;
    s1.state = ShardState::Frozen;
    let v = retry("a CAS by another client", || {
        direct.cas_shard(t.shards[&1].epoch, &s1)
    })
    .await;
    let seen = watcher.wait_for_version(v, WAIT).await.unwrap_or_else(|| {
        panic!(
            "the watcher follows after its token expired; last error {:?}",
            watcher.last_error()
        )
    });
    assert_eq!(seen.topology.shards[&1], s1);
    let renewed = watcher.last_error().unwrap_or_default();
    assert!(renewed.contains("auth token renewed"), "{renewed}");

    // A request with an expired token renews it (etcd-client's
    // with_auto_token_refresh, on "invalid auth token") and goes through.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut s1b = s1.clone();
    s1b.epoch += 1;
    s1b.state = ShardState::Active;
    let v = store
        .cas_shard(s1.epoch, &s1b)
        .await
        .expect("a CAS with an expired token");
    let seen = watcher.wait_for_version(v, WAIT).await.expect("watched");
    assert_eq!(seen.topology.shards[&1], s1b);
}

/// `op` until it succeeds, while it fails with a retryable error, for [`WAIT`].
async fn retry<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}
