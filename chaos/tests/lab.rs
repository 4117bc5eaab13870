//! The lab against real processes: etcd members killed and rejoining,
//! Postgres killed -9 (crash recovery keeps the data) and paused, the WAN
//! link's latency, and the promise that nothing outlives a test: not after
//! teardown, not after a panic, not even after the test process aborts.
//!
//! Each test builds its own lab on free loopback ports in its own temp dir,
//! so they run in parallel. Waits poll with a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ezone_chaos::etcd::EtcdCluster;
use ezone_chaos::lab::{Lab, LabSpec};
use ezone_chaos::postgres::PgCluster;
use ezone_chaos::process::{pid_alive, proc_stat};
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Poll `f` every 50 ms until it returns `Some`, or panic after `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what} did not happen within {within:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Wait until none of `pids` is alive (zombies count as gone).
async fn assert_all_gone(pids: &[u32]) {
    eventually(
        "every lab process exiting",
        Duration::from_secs(10),
        || async {
            match pids.iter().find(|p| pid_alive(**p, None)) {
                Some(p) => Err(format!("pid {p} is alive: {:?}", proc_stat(*p))),
                None => Ok(()),
            }
        },
    )
    .await;
}

/// `etcdctl --endpoints URL ARGS...`; its stdout, or why it failed.
async fn etcdctl(endpoint: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--dial-timeout",
            "1s",
            "--command-timeout",
            "2s",
        ])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run etcdctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "etcdctl {args:?} against {endpoint}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test]
async fn etcd_member_killed_restarted_and_paused_rejoins() {
    let cluster = EtcdCluster::start(3)
        .await
        .expect("start a 3-member etcd cluster");
    let urls = cluster.client_urls();
    assert_eq!(urls.len(), 3);
    let members = cluster.members();

    eventually("put k1", Duration::from_secs(10), || {
        etcdctl(&urls[0], &["put", "k1", "v1"])
    })
    .await;

    // kill -9 one member: the other two keep quorum.
    let victim = &members[1];
    let old_pid = victim.pid();
    victim.kill().expect("kill -9 member 1");
    assert!(!victim.is_running());
    assert!(
        !pid_alive(old_pid, None),
        "killed member's pid {old_pid} is still alive"
    );
    eventually("put k2 without member 1", Duration::from_secs(10), || {
        etcdctl(&urls[0], &["put", "k2", "v2"])
    })
    .await;

    // Restart it on the same data dir and ports: it rejoins and catches up.
    cluster.restart_member(1).await.expect("restart member 1");
    assert_ne!(victim.pid(), old_pid);
    let got = eventually(
        "linearizable get of k2 from the restarted member",
        Duration::from_secs(10),
        || etcdctl(&urls[1], &["get", "k2", "--print-value-only"]),
    )
    .await;
    assert_eq!(got.trim(), "v2");

    // A paused member answers nothing; resumed, it is healthy again.
    let paused = &members[2];
    paused.pause().expect("pause member 2");
    assert!(
        !paused.is_healthy().await,
        "a paused member must not answer /health"
    );
    paused.resume().expect("resume member 2");
    paused
        .wait_healthy(Duration::from_secs(10))
        .await
        .expect("member 2 healthy after resume");

    // The whole cluster killed and restarted keeps its data.
    cluster.restart().await.expect("restart the whole cluster");
    let got = eventually(
        "get k1 after a full restart",
        Duration::from_secs(10),
        || etcdctl(&urls[2], &["get", "k1", "--print-value-only"]),
    )
    .await;
    assert_eq!(got.trim(), "v1");

    let pids: Vec<u32> = members.iter().map(|m| m.pid()).collect();
    let dir = cluster.dir().to_path_buf();
    cluster.teardown().expect("teardown");
    assert_all_gone(&pids).await;
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[tokio::test]
async fn postgres_survives_kill9_and_pause_blocks_queries() {
    let pg = PgCluster::start("beijing").await.expect("start postgres");
    assert_eq!(
        pg.psql("SHOW wal_level").await.expect("show wal_level"),
        "logical"
    );
    let tls = pg.client_tls().expect("TLS is on by default");
    assert_eq!(
        pg.dsn("ezone"),
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=ezone sslmode=verify-full \
             sslrootcert={} sslcert={} sslkey={}",
            pg.port(),
            tls.ca_file.display(),
            tls.cert_file.display(),
            tls.key_file.display()
        )
    );
    if nix::unistd::geteuid().is_root() {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pg.pid()))
            .expect("postmaster status");
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .expect("Uid line");
        let pg_uid = nix::unistd::User::from_name("postgres")
            .expect("look up postgres")
            .expect("postgres user exists")
            .uid
            .as_raw();
        assert!(
            uid_line.split_whitespace().nth(1) == Some(&pg_uid.to_string()),
            "postmaster runs as {uid_line}, expected uid {pg_uid}"
        );
    }

    pg.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, v text); INSERT INTO orders VALUES (1, 'kept')",
    )
    .await
    .expect("create and insert");

    // kill -9: the postmaster and its backends die; a restart runs crash
    // recovery and the committed row is still there.
    let old_pid = pg.pid();
    let backends = pg.process().descendants();
    assert!(!backends.is_empty(), "a running postmaster has children");
    pg.kill().expect("kill -9 postgres");
    assert!(!pg.is_running());
    assert_all_gone(&[old_pid]).await;
    assert_all_gone(&backends).await;
    assert!(
        pg.psql("SELECT 1").await.is_err(),
        "a killed postgres must not answer"
    );
    pg.restart().await.expect("restart after kill -9");
    assert_ne!(pg.pid(), old_pid);
    assert_eq!(
        pg.psql("SELECT v FROM orders WHERE id = 1")
            .await
            .expect("select"),
        "kept"
    );

    // Paused, a query hangs (checked with a timeout); resumed, it answers.
    pg.pause().expect("pause postgres");
    for p in std::iter::once(pg.pid()).chain(pg.process().descendants()) {
        assert_eq!(
            proc_stat(p).map(|s| s.state),
            Some('T'),
            "pid {p} is not stopped"
        );
    }
    let blocked = tokio::time::timeout(Duration::from_millis(1500), pg.psql("SELECT 2")).await;
    assert!(
        blocked.is_err(),
        "a query against a paused postgres returned: {blocked:?}"
    );
    pg.resume().expect("resume postgres");
    assert_eq!(pg.psql("SELECT 3").await.expect("select after resume"), "3");

    let dir = pg.dir().to_path_buf();
    let mut pids = vec![pg.pid()];
    pids.extend(pg.process().descendants());
    pg.teardown().expect("teardown");
    assert_all_gone(&pids).await;
    assert!(!dir.exists(), "{} still exists", dir.display());
}

/// Every process a lab runs, Postgres backends included.
fn all_pids(lab: &Lab) -> Vec<u32> {
    let mut pids = lab.pids();
    for pg in lab.postgres_all().values() {
        pids.extend(pg.process().descendants());
    }
    pids
}

#[tokio::test]
async fn teardown_leaves_nothing_behind() {
    let lab = Lab::start(LabSpec::default()).await.expect("start the lab");
    let pids = all_pids(&lab);
    assert!(pids.len() >= 3, "etcd + 2 postmasters at least: {pids:?}");
    let dir = lab.dir().to_path_buf();
    assert!(
        dir.join("etcd").is_dir()
            && dir.join("pg-beijing").is_dir()
            && dir.join("pg-shanghai").is_dir()
    );
    // The lab's own processes run; their children (Postgres backends,
    // autovacuum workers) come and go on their own, so only the ones seen
    // here are checked for being gone after.
    for p in lab.pids() {
        assert!(pid_alive(p, None), "pid {p} should run before teardown");
    }

    lab.teardown().await.expect("teardown");
    assert_all_gone(&pids).await;
    assert!(!dir.exists(), "{} still exists", dir.display());
}

/// What the panicking body saw of its lab: pids and directory.
type Seen = (Vec<u32>, PathBuf);

#[tokio::test]
async fn a_panicking_test_still_tears_the_lab_down() {
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let seen_inside = Arc::clone(&seen);
    let outcome = std::panic::AssertUnwindSafe(async move {
        let lab = Lab::start(LabSpec::new(&["beijing"]))
            .await
            .expect("start the lab");
        *seen_inside.lock().expect("lock") = Some((all_pids(&lab), lab.dir().to_path_buf()));
        panic!("the test body fails with the lab still up (expected by this test)");
    })
    .catch_unwind()
    .await;
    assert!(outcome.is_err(), "the body must have panicked");
    let (pids, dir) = seen
        .lock()
        .expect("lock")
        .take()
        .expect("the lab started before the panic");
    assert_all_gone(&pids).await;
    assert!(!dir.exists(), "{} still exists", dir.display());
}

/// Env var that turns the ignored test below into the body of a child
/// process that starts a lab and aborts (no destructors run).
const ABORT_CHILD: &str = "EZONE_LAB_TEST_ABORT_CHILD";

#[tokio::test]
#[ignore = "run only as the child of lab_processes_die_with_an_aborted_test_process"]
async fn abort_child_body() {
    if std::env::var_os(ABORT_CHILD).is_none() {
        return;
    }
    let lab = Lab::start(LabSpec::new(&["beijing"]))
        .await
        .expect("start the lab");
    println!(
        "PIDS {}",
        serde_json::to_string(&all_pids(&lab)).expect("json")
    );
    println!("DIR {}", lab.dir().display());
    std::process::abort();
}

#[tokio::test]
async fn lab_processes_die_with_an_aborted_test_process() {
    let exe = std::env::current_exe().expect("current test binary");
    let out = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "abort_child_body",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ABORT_CHILD, "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the child test");
    assert!(!out.status.success(), "the child must abort");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<u32> = stdout
        .lines()
        .find_map(|l| l.split_once("PIDS ").map(|(_, j)| j))
        .map(|j| serde_json::from_str(j).expect("pid list"))
        .unwrap_or_else(|| {
            panic!(
                "child printed no pids; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let dir = stdout
        .lines()
        .find_map(|l| l.split_once("DIR ").map(|(_, d)| PathBuf::from(d)));
    assert!(!pids.is_empty());
    // PR_SET_PDEATHSIG kills etcd and the postmaster; the backends follow
    // their postmaster.
    assert_all_gone(&pids).await;
    // An abort runs no destructors: the temp dir is the one thing left.
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A minimal Postgres wire-protocol client (trust auth, simple queries), to
/// time one query round trip on an open connection.
struct Wire {
    s: TcpStream,
}

impl Wire {
    async fn connect(addr: SocketAddr, db: &str) -> Wire {
        let s = TcpStream::connect(addr).await.expect("connect");
        let mut w = Wire { s };
        let mut body = Vec::new();
        body.extend_from_slice(&196608u32.to_be_bytes()); // protocol 3.0
        for kv in ["user", "postgres", "database", db] {
            body.extend_from_slice(kv.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        w.s.write_all(&msg).await.expect("send startup");
        w.until_ready().await;
        w
    }

    /// Read messages until ReadyForQuery; the first column of each row.
    async fn until_ready(&mut self) -> Vec<String> {
        let mut rows = Vec::new();
        loop {
            let tag = self.s.read_u8().await.expect("message type");
            let len = self.s.read_u32().await.expect("message length") as usize;
            let mut body = vec![0; len - 4];
            self.s.read_exact(&mut body).await.expect("message body");
            match tag {
                b'Z' => return rows,
                b'E' => panic!("postgres error: {}", String::from_utf8_lossy(&body)),
                b'D' => {
                    let n = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                    let v = body.get(6..6 + n.max(0) as usize).unwrap_or_default();
                    rows.push(String::from_utf8_lossy(v).into_owned());
                }
                _ => {}
            }
        }
    }

    async fn query(&mut self, sql: &str) -> Vec<String> {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.s.write_all(&msg).await.expect("send query");
        self.until_ready().await
    }

    /// The fastest of `n` round trips of `SELECT 1`.
    async fn min_round_trip(&mut self, n: usize) -> Duration {
        let mut best = Duration::MAX;
        for _ in 0..n {
            let t = Instant::now();
            assert_eq!(self.query("SELECT 1").await, vec!["1".to_string()]);
            best = best.min(t.elapsed());
        }
        best
    }
}

#[tokio::test]
async fn wan_link_reaches_the_other_site_with_latency() {
    // The test speaks the wire protocol by hand, in plain text.
    let lab = Lab::start(LabSpec {
        pg_tls: false,
        ..LabSpec::default()
    })
    .await
    .expect("start the lab");
    let beijing = lab.postgres("beijing").expect("beijing");

    let info = serde_json::to_value(lab.info()).expect("info as json");
    assert_eq!(info["sites"]["beijing"]["postgres"], beijing.dsn("ezone"));
    assert_eq!(info["etcd"].as_array().map(Vec::len), Some(1));
    assert!(
        info["wan"]["beijing->shanghai"].is_string()
            && info["wan"]["shanghai->beijing"].is_string()
    );
    assert_eq!(info["proxy_admin"], lab.proxy_admin().to_string());

    // Link beijing->shanghai is beijing's Postgres as shanghai reaches it.
    let wan = lab.wan_addr("beijing", "shanghai").expect("link address");
    assert_eq!(
        lab.link("beijing->shanghai").map(|l| l.listen_addr()),
        Some(wan)
    );
    let mut far = Wire::connect(wan, "ezone").await;
    assert_eq!(
        far.query("SHOW port").await,
        vec![beijing.port().to_string()]
    );
    let mut near = Wire::connect(beijing.addr(), "ezone").await;

    let rtt = lab.wan_rtt();
    let through_wan = far.min_round_trip(3).await;
    let direct = near.min_round_trip(3).await;
    // Lower bound: the proxy adds rtt/2 each way (tokio timers never fire
    // early; 2 ms of slack for clock granularity). Upper bound for direct
    // is loose: loopback plus a busy 2-core machine.
    assert!(
        through_wan >= rtt - Duration::from_millis(2),
        "a query across the WAN took {through_wan:?}, less than the {rtt:?} round trip"
    );
    assert!(
        direct < rtt,
        "a direct query took {direct:?}, not faster than the WAN's {rtt:?}"
    );

    // The other direction exists too and reaches shanghai.
    let mut back = Wire::connect(lab.wan_addr("shanghai", "beijing").expect("link"), "ezone").await;
    let shanghai = lab.postgres("shanghai").expect("shanghai");
    assert_eq!(
        back.query("SHOW port").await,
        vec![shanghai.port().to_string()]
    );
    drop((far, near, back));

    lab.teardown().await.expect("teardown");
}

/// The System V segment named on line 7 of the cluster's `postmaster.pid`.
fn shm_id(pg: &PgCluster) -> i32 {
    let text =
        std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).expect("postmaster.pid");
    let line = text.lines().nth(6).expect("line 7 of postmaster.pid");
    line.split_whitespace()
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no segment id in {line:?}"))
}

fn shm_exists(id: i32) -> bool {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .expect("/proc/sysvipc/shm")
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some(&id.to_string()))
}

/// A postmaster killed with -9 cannot remove its System V segment; a lab
/// cluster that goes (dropped after a crash, or torn down while running)
/// must, or a day of test runs fills the kernel's table and no Postgres
/// starts on the machine any more.
#[tokio::test]
async fn a_cluster_that_goes_leaves_no_shared_memory_segment() {
    let crashed = PgCluster::start("beijing").await.expect("start postgres");
    let crashed_id = shm_id(&crashed);
    assert!(
        shm_exists(crashed_id),
        "segment {crashed_id} of a running postmaster"
    );
    crashed.kill().expect("kill -9 postgres");
    assert!(
        shm_exists(crashed_id),
        "a killed postmaster leaves its segment (the case this guards against)"
    );
    drop(crashed);
    assert!(
        !shm_exists(crashed_id),
        "segment {crashed_id} outlived its dropped cluster"
    );

    let running = PgCluster::start("shanghai").await.expect("start postgres");
    let running_id = shm_id(&running);
    assert!(shm_exists(running_id));
    running.teardown().expect("teardown");
    assert!(
        !shm_exists(running_id),
        "segment {running_id} outlived teardown"
    );
}
