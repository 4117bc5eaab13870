//! The deployment examples in `deploy/` and the page that uses them,
//! `docs/operations.md`, against the code:
//!
//! - every host's `router.toml`, `replicator.toml` and `orders.toml` parse and
//!   validate with the parts' own parsers, and the topology file loads,
//!   validates and holds no secret (`ezone_topology::validate::secrets`); the
//!   configs agree with each other and with the topology (addresses, etcd
//!   endpoints, DSNs with the env files' TLS settings and password files);
//! - no example file holds a password;
//! - the etcd config files use etcd 3.4's keys (and `etcd --help`'s flags when
//!   etcd is installed), TLS with client certificates on both ports, one
//!   cluster;
//! - the systemd units carry the hardening, start a real subcommand of the
//!   built binary and name files that exist in the examples
//!   (`systemd-analyze verify` too, when it is installed);
//! - `deploy/pki/make-certs.sh` issues certificates the parts accept (the
//!   router's own peer certificate check, etcd's and Postgres's TLS loaders),
//!   when openssl is installed;
//! - every `ezone` (and `etcdctl`) command on the operations page names real
//!   subcommands and flags, and the page shows the SQL of `deploy/postgres/`.
//!
//! Validation reads files: the router's checks that the access log's
//! directory exists, the replicator's that its etcd certificates are PEM, the
//! order service's DSN reads its password file. So each host's paths
//! (`/etc/ezone/...`, `/var/log/ezone`) are rewritten into a temporary
//! directory holding stand-ins for those files; everything else is validated
//! as written.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ezone_chaos::certs::LabCerts;
use ezone_orders::OrdersConfig;
use ezone_pg::{Dsn, SslMode};
use ezone_replicator::config::ReplicatorConfig;
use ezone_router::config::RouterConfig;

/// The site hosts of the example: name and address.
const SITES: [(&str, &str); 2] = [("beijing", "10.1.0.10"), ("shanghai", "10.2.0.10")];
/// The etcd members: the site hosts and the tie-breaker.
const MEMBERS: [(&str, &str); 3] = [
    ("beijing", "10.1.0.10"),
    ("shanghai", "10.2.0.10"),
    ("tiebreaker", "10.3.0.10"),
];
/// The ezone units, the subcommand each runs and its env file.
const UNITS: [(&str, &str); 3] = [
    ("ezone-router.service", "router"),
    ("ezone-replicator.service", "replicator"),
    ("ezone-orders.service", "orders"),
];
/// The directories of `deploy/` this page's examples are in (the monitoring
/// files have their own test).
const EXAMPLE_DIRS: [&str; 6] = [
    "deploy/hosts",
    "deploy/etcd",
    "deploy/systemd",
    "deploy/postgres",
    "deploy/pki",
    "deploy/logrotate",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn host_file(host: &str, file: &str) -> String {
    read(&format!("deploy/hosts/{host}/{file}"))
}

/// `KEY=VALUE` lines of an env file (comments and blank lines skipped).
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn on_path(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    })
}

/// A host's root in a temporary directory: the example paths rewritten into
/// it, and stand-ins (real PEM, from a throwaway CA) for the files they name.
struct Root {
    dir: tempfile::TempDir,
    certs: LabCerts,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = LabCerts::generate(&dir.path().join("ca")).expect("a throwaway CA");
        std::fs::create_dir_all(dir.path().join("etc/ezone/pki")).expect("etc/ezone/pki");
        std::fs::create_dir_all(dir.path().join("var/log/ezone")).expect("var/log/ezone");
        Root { dir, certs }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `text` with the host's paths moved under this root, and every file it
    /// names under /etc/ezone/pki made (a certificate, or for `.key` a key).
    fn rewrite(&self, text: &str) -> String {
        let mut at = 0;
        while let Some(i) = text[at..].find("/etc/ezone/pki/") {
            let start = at + i + "/etc/ezone/pki/".len();
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                .collect();
            self.stand_in(&name);
            at = start;
        }
        let root = self.path().display().to_string();
        text.replace("/etc/ezone/", &format!("{root}/etc/ezone/"))
            .replace("/var/log/ezone", &format!("{root}/var/log/ezone"))
    }

    /// `name` (and its pair: a `.crt` goes with its `.key`) under
    /// etc/ezone/pki, from one certificate of the throwaway CA.
    fn stand_in(&self, name: &str) {
        let pki = self.path().join("etc/ezone/pki");
        if name.is_empty() || pki.join(name).exists() {
            return;
        }
        if name == "ca.crt" {
            std::fs::copy(self.certs.ca_file(), pki.join(name)).expect("copy the CA");
            return;
        }
        let stem = name.trim_end_matches(".crt").trim_end_matches(".key");
        let issued = self
            .certs
            .issue_client(stem)
            .expect("a stand-in certificate");
        for (from, to) in [
            (issued.cert_file, format!("{stem}.crt")),
            (issued.key_file, format!("{stem}.key")),
        ] {
            let dest = pki.join(to);
            std::fs::copy(&from, &dest).expect("copy a stand-in");
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }

    /// A libpq password file under this root with `lines`, mode 0600.
    fn passfile(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.path().join("etc/ezone").join(name);
        std::fs::write(&path, lines.join("\n") + "\n").expect("write password file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }
}

/// The etcd config of `member`, as YAML.
fn etcd_config(member: &str) -> serde_yaml::Mapping {
    let text = read(&format!("deploy/etcd/etcd-{member}.conf.yml"));
    match serde_yaml::from_str(&text).expect("etcd config is YAML") {
        serde_yaml::Value::Mapping(m) => m,
        other => panic!("etcd-{member}.conf.yml is not a mapping: {other:?}"),
    }
}

fn yaml_str<'a>(m: &'a serde_yaml::Mapping, key: &str) -> &'a str {
    m.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("etcd config: {key} is missing or not a string"))
}

fn split_urls(s: &str) -> Vec<String> {
    s.split(',').map(|u| u.trim().to_string()).collect()
}

#[test]
fn every_example_config_parses_validates_and_agrees_with_the_others() {
    let topology_path = repo().join("deploy/hosts/topology.toml");
    let topology = ezone_topology::doc::load_file(&topology_path)
        .unwrap_or_else(|e| panic!("deploy/hosts/topology.toml: {e}"));
    ezone_topology::validate::secrets(&topology)
        .unwrap_or_else(|e| panic!("deploy/hosts/topology.toml holds a secret: {e}"));
    assert_eq!(
        topology.sites.keys().cloned().collect::<Vec<_>>(),
        SITES.iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>(),
        "the topology's sites are the site hosts"
    );
    let etcd_clients: Vec<String> = MEMBERS
        .iter()
        .map(|(m, _)| yaml_str(&etcd_config(m), "advertise-client-urls").to_string())
        .collect();

    for (site, ip) in SITES {
        let root = Root::new();

        // The router: its own parser and validate() (which needs only the
        // access log's directory; the certificates are read at start).
        let router = RouterConfig::from_toml(&root.rewrite(&host_file(site, "router.toml")))
            .unwrap_or_else(|e| panic!("{site}/router.toml: {e}"));
        assert_eq!(router.site, site);
        let peer_tls = router.peer_tls.as_ref().expect("[peer_tls]");
        assert!(
            router.routing.peer_secret.is_none(),
            "no secret beside peer TLS"
        );
        assert_eq!(
            peer_tls.site_name(site),
            format!("{site}.ezone.internal"),
            "the name make-certs.sh puts in the router certificate"
        );
        let peer = router.listen.peer.expect("listen.peer").to_string();
        assert_eq!(peer, format!("{ip}:8444"));
        assert_eq!(
            topology.sites[site].router, peer,
            "the topology's router address of {site} is its peer listener"
        );
        assert!(
            topology.sites[site].more_routers.is_empty(),
            "one router per site in the example"
        );
        assert_eq!(
            router.topology.etcd, etcd_clients,
            "{site}'s router reads every etcd member's client URL"
        );
        assert!(
            router.topology.etcd_tls.is_some(),
            "{site}'s router reaches etcd over TLS with a client certificate"
        );
        let log = router.access_log.as_ref().expect("[access_log]");
        assert!(!log.is_stdout(), "a file: SIGHUP (ExecReload) reopens it");
        assert!(
            host_file(site, "router.toml").contains("path = \"/var/log/ezone/access.log\""),
            "the access log is in the unit's LogsDirectory"
        );
        assert_eq!(router.listen.https.expect("listen.https").port(), 443);

        // The replicator: validate() reads its etcd certificates (PEM).
        let replicator =
            ReplicatorConfig::from_toml(&root.rewrite(&host_file(site, "replicator.toml")))
                .unwrap_or_else(|e| panic!("{site}/replicator.toml: {e}"));
        assert_eq!(replicator.site, site);
        assert!(replicator.fence, "the replicator keeps its site's fence");
        assert_eq!(replicator.tables, vec!["public.orders".to_string()]);
        assert!(replicator.shard_keys.contains_key("public.orders"));
        assert!(replicator.sources.is_empty() && replicator.target_dsn.is_none());
        assert_eq!(
            replicator.topology.etcd, etcd_clients,
            "{site}'s replicator reaches every etcd member's client URL"
        );
        let tls = replicator.topology.etcd_tls.as_ref().expect("etcd_tls");
        assert!(
            tls.cert_file.is_some(),
            "a client certificate (client-cert-auth)"
        );
        assert!(replicator.topology.etcd_auth.is_none());

        // The commands' environment: the replicator's etcd and Postgres.
        let cli = env_file(&host_file(site, "cli.env"));
        let repl_env = env_file(&host_file(site, "replicator.env"));
        assert_eq!(cli["EZONE_ETCD"], etcd_clients.join(","));
        for key in ["PGPASSFILE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"] {
            assert_eq!(cli.get(key), repl_env.get(key), "cli.env {key}");
        }
        let replicator_text = host_file(site, "replicator.toml");
        for (var, path) in [
            ("EZONE_ETCD_CA", &tls.ca_file),
            ("EZONE_ETCD_CERT", tls.cert_file.as_ref().expect("cert")),
            ("EZONE_ETCD_KEY", tls.key_file.as_ref().expect("key")),
        ] {
            let name = path
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .to_string();
            assert!(
                cli[var].ends_with(&name) && replicator_text.contains(&cli[var]),
                "cli.env {var} is the replicator's {name}"
            );
        }

        // Every site's DSN, as this host's replicator reads it: the
        // topology's text plus replicator.env (TLS files, the password file
        // with a line per site, in the format the page gives).
        let lines: Vec<String> = SITES
            .iter()
            .map(|(_, ip)| format!("{ip}:5432:ezone:ezone:stand-in"))
            .collect();
        let passfile = root.passfile("replicator.pgpass", &lines);
        let mut env: BTreeMap<String, String> =
            env_file(&root.rewrite(&host_file(site, "replicator.env")));
        assert!(env["PGPASSFILE"].ends_with("/etc/ezone/replicator.pgpass"));
        env.insert("PGPASSFILE".into(), passfile.display().to_string());
        for (other, other_ip) in SITES {
            let text = &topology.sites[other].postgres;
            let dsn = Dsn::parse_with_env(text, &|k| env.get(k).cloned())
                .unwrap_or_else(|e| panic!("{other}'s DSN with {site}'s replicator.env: {e}"));
            assert_eq!(dsn.host(), Some(other_ip));
            assert_eq!(dsn.user(), Some("ezone"));
            assert_eq!(dsn.tls().mode, SslMode::VerifyFull, "{text}");
            assert!(
                dsn.has_password(),
                "{site}'s password file gives {other}'s password"
            );
            let settings = dsn.tls();
            assert!(
                settings.rootcert.is_some() && settings.cert.is_some() && settings.key.is_some()
            );
            settings
                .client_config()
                .unwrap_or_else(|e| panic!("{site}: TLS to {other}'s Postgres: {e}"));
        }

        // The order service: its DSN reads the process's environment, as in
        // the unit (orders.env). This is the only test that sets it.
        let orders_env = env_file(&root.rewrite(&host_file(site, "orders.env")));
        let passfile = root.passfile(
            "orders.pgpass",
            &[format!("{ip}:5432:ezone:ezone_orders:stand-in")],
        );
        assert!(orders_env["PGPASSFILE"].ends_with("/etc/ezone/orders.pgpass"));
        for key in ["PGPASSWORD", "PGSSLMODE"] {
            std::env::remove_var(key);
        }
        for (k, v) in &orders_env {
            std::env::set_var(k, v);
        }
        std::env::set_var("PGPASSFILE", &passfile);
        let orders = OrdersConfig::from_toml(&host_file(site, "orders.toml"))
            .unwrap_or_else(|e| panic!("{site}/orders.toml: {e}"));
        assert_eq!(orders.site, site);
        let dsn = orders.pg_config().expect("DSN");
        assert_eq!(dsn.user(), Some("ezone_orders"));
        assert_eq!(dsn.host(), Some(ip));
        assert_eq!(dsn.tls().mode, SslMode::VerifyFull);
        assert!(dsn.has_password(), "orders.pgpass gives the password");
        dsn.tls().client_config().expect("TLS to its Postgres");
        assert!(
            topology.sites[site]
                .upstreams
                .contains(&orders.listen.to_string()),
            "the topology's upstream of {site} is its order service"
        );
        assert!(orders.listen.ip().is_loopback(), "beside its router only");

        // Postgres: the site's address, and a hostssl line for each role.
        let conf = host_file(site, "postgresql-ezone.conf");
        assert!(conf.contains(&format!("listen_addresses = 'localhost,{ip}'")));
        assert!(conf.contains("wal_level = logical") && conf.contains("ssl = on"));
        let hba = host_file(site, "pg_hba.conf");
        for role in ["ezone", "ezone_orders"] {
            assert!(
                hba.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() >= 6
                        && f[0] == "hostssl"
                        && f[2] == role
                        && l.contains("clientcert=verify-full")
                }),
                "{site}/pg_hba.conf lets {role} in over TLS with a certificate"
            );
        }
        assert!(
            !hba.lines()
                .any(|l| l.trim_start().starts_with("host ")
                    || l.trim_start().starts_with("hostnossl")),
            "{site}/pg_hba.conf takes TCP only over TLS"
        );
    }
    for key in [
        "PGPASSFILE",
        "PGSSLROOTCERT",
        "PGSSLCERT",
        "PGSSLKEY",
        "RUST_LOG",
    ] {
        std::env::remove_var(key);
    }
}

/// Whether `text` holds something that looks like a password: `password=`
/// (a DSN or an env file), `password:` (YAML), `PASSWORD '...'` (SQL), or a
/// URL's `user:secret@`. `password_file` and `\password ROLE` are not.
fn password_looking(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = lower[at..].find("password") {
        let start = at + i;
        let rest = lower[start + "password".len()..].trim_start_matches([' ', '\t']);
        if rest.starts_with('=') || rest.starts_with(':') || rest.starts_with('\'') {
            let line_end = lower[start..].find('\n').map_or(lower.len(), |n| start + n);
            found.push(text[start..line_end].to_string());
        }
        at = start + "password".len();
    }
    for scheme in ["postgres://", "postgresql://", "http://", "https://"] {
        let mut at = 0;
        while let Some(i) = lower[at..].find(scheme) {
            let start = at + i + scheme.len();
            let authority: String = lower[start..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !"/?\"',".contains(*c))
                .collect();
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                if userinfo.contains(':') {
                    found.push(format!("{scheme}{authority}"));
                }
            }
            at = start;
        }
    }
    found
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_example_file_holds_a_password() {
    assert!(!password_looking("host=h user=u password=x").is_empty());
    assert!(!password_looking("PGPASSWORD=x").is_empty());
    assert!(!password_looking("CREATE ROLE r PASSWORD 'x'").is_empty());
    assert!(!password_looking("postgresql://u:x@h/db").is_empty());
    assert!(password_looking("password_file = \"/p\"; \\password ezone").is_empty());

    let mut files = Vec::new();
    for dir in EXAMPLE_DIRS {
        files_under(&repo().join(dir), &mut files);
    }
    files.push(repo().join("docs/operations.md"));
    assert!(files.len() > 20, "the examples are there: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a text file");
        let found = password_looking(&text);
        assert!(
            found.is_empty(),
            "{} holds what looks like a password: {found:?}",
            file.display()
        );
        // Every DSN in it names no password, as `ezone topo init` checks.
        for line in text
            .lines()
            .filter(|l| l.contains("host=") && l.contains("user="))
        {
            let dsn = line
                .split('"')
                .find(|part| part.contains("host=") && part.contains("user="))
                .unwrap_or(line);
            assert!(
                !ezone_pg::dsn::names_password(dsn),
                "{}: a DSN with a password: {line}",
                file.display()
            );
        }
    }
}

/// etcd 3.4's config file keys (its flags without `--`) used or likely to be,
/// and the keys of its two transport security sections.
const ETCD_KEYS: &[&str] = &[
    "name",
    "data-dir",
    "wal-dir",
    "snapshot-count",
    "heartbeat-interval",
    "election-timeout",
    "listen-peer-urls",
    "listen-client-urls",
    "listen-metrics-urls",
    "initial-advertise-peer-urls",
    "advertise-client-urls",
    "initial-cluster",
    "initial-cluster-token",
    "initial-cluster-state",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "quota-backend-bytes",
    "max-snapshots",
    "max-wals",
    "cipher-suites",
    "logger",
    "log-outputs",
    "log-level",
    "metrics",
    "pre-vote",
    "client-transport-security",
    "peer-transport-security",
];
const ETCD_SECURITY_KEYS: &[&str] = &[
    "cert-file",
    "key-file",
    "client-cert-auth",
    "trusted-ca-file",
    "auto-tls",
];

#[test]
fn the_etcd_configs_are_one_tls_cluster_in_etcd_3_4_keys() {
    // With etcd installed (Debian's etcd-server), every top-level key but the
    // two security sections is one of its flags.
    let flags: Option<String> = on_path("etcd").map(|etcd| {
        let out = Command::new(etcd)
            .arg("--help")
            .output()
            .expect("etcd --help");
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    });
    if flags.is_none() {
        eprintln!("note: etcd is not installed; its config keys are checked against a list only");
    }
    let mut clusters = BTreeSet::new();
    for (member, ip) in MEMBERS {
        let m = etcd_config(member);
        for key in m.keys() {
            let key = key.as_str().expect("string keys");
            assert!(
                ETCD_KEYS.contains(&key),
                "etcd-{member}.conf.yml: {key} is not an etcd 3.4 config key"
            );
            if let Some(help) = &flags {
                if !key.ends_with("-transport-security") {
                    assert!(
                        help.contains(&format!("--{key} ")) || help.contains(&format!("--{key}\n")),
                        "etcd-{member}.conf.yml: etcd --help has no --{key}"
                    );
                }
            }
        }
        assert_eq!(yaml_str(&m, "name"), member);
        assert!(
            yaml_str(&m, "data-dir").starts_with("/var/lib/etcd/"),
            "the drop-in's ReadWritePaths"
        );
        assert_ne!(
            yaml_str(&m, "data-dir"),
            "/var/lib/etcd/default",
            "not the package's"
        );
        let peer = format!("https://{ip}:2380");
        assert_eq!(yaml_str(&m, "listen-peer-urls"), peer);
        assert_eq!(yaml_str(&m, "initial-advertise-peer-urls"), peer);
        assert_eq!(
            yaml_str(&m, "advertise-client-urls"),
            format!("https://{ip}:2379")
        );
        let listen = split_urls(yaml_str(&m, "listen-client-urls"));
        assert!(listen.contains(&format!("https://{ip}:2379")));
        for url in &listen {
            assert!(
                url.starts_with("https://"),
                "etcd-{member}.conf.yml: {url}: clients only over TLS"
            );
        }
        let cluster = yaml_str(&m, "initial-cluster");
        assert!(cluster.split(',').any(|e| e == format!("{member}={peer}")));
        clusters.insert(cluster.to_string());
        assert_eq!(yaml_str(&m, "initial-cluster-state"), "new");
        for section in ["client-transport-security", "peer-transport-security"] {
            let s = m
                .get(section)
                .and_then(|v| v.as_mapping())
                .unwrap_or_else(|| panic!("etcd-{member}.conf.yml: {section}"));
            for key in s.keys() {
                let key = key.as_str().expect("string keys");
                assert!(ETCD_SECURITY_KEYS.contains(&key), "{section}: {key}");
            }
            for key in ["cert-file", "key-file", "trusted-ca-file"] {
                assert!(
                    yaml_str(s, key).starts_with("/etc/etcd/pki/"),
                    "etcd-{member}.conf.yml: {section}.{key}"
                );
            }
            assert_eq!(
                s.get("client-cert-auth").and_then(|v| v.as_bool()),
                Some(true),
                "etcd-{member}.conf.yml: {section}.client-cert-auth"
            );
        }
    }
    assert_eq!(clusters.len(), 1, "one initial-cluster: {clusters:?}");
    let members: Vec<String> = MEMBERS
        .iter()
        .map(|(m, ip)| format!("{m}=https://{ip}:2380"))
        .collect();
    assert_eq!(clusters.into_iter().next(), Some(members.join(",")));
}

/// A unit file's `Key=Value` lines (all sections), in order.
fn unit_keys(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn values<'a>(keys: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    keys.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn one<'a>(keys: &'a [(String, String)], key: &str, unit: &str) -> &'a str {
    match values(keys, key).as_slice() {
        [v] => v,
        other => panic!("{unit}: {key} should be set once, is {other:?}"),
    }
}

/// The sandboxing every unit carries.
const HARDENING: &[(&str, &str)] = &[
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
];

#[test]
fn the_units_are_hardened_and_start_real_subcommands() {
    let router_cfg = {
        let root = Root::new();
        RouterConfig::from_toml(&root.rewrite(&host_file("beijing", "router.toml")))
            .expect("router.toml")
    };
    for (unit, part) in UNITS {
        let text = read(&format!("deploy/systemd/{unit}"));
        let keys = unit_keys(&text);
        assert_eq!(one(&keys, "User", unit), "ezone");
        assert_eq!(one(&keys, "Group", unit), "ezone");
        assert!(
            values(&keys, "DynamicUser").is_empty(),
            "{unit}: a fixed user"
        );
        for (key, value) in HARDENING {
            assert_eq!(one(&keys, key, unit), *value, "{unit}: {key}");
        }
        assert_eq!(
            one(&keys, "RestrictAddressFamilies", unit),
            "AF_INET AF_INET6 AF_UNIX"
        );
        assert_eq!(one(&keys, "Restart", unit), "on-failure");
        assert_eq!(one(&keys, "KillSignal", unit), "SIGTERM");
        let nofile: u64 = one(&keys, "LimitNOFILE", unit).parse().expect("a number");
        assert!(nofile >= 4096, "{unit}: LimitNOFILE {nofile}");
        let stop: u64 = one(&keys, "TimeoutStopSec", unit).parse().expect("seconds");
        let env = one(&keys, "EnvironmentFile", unit);
        assert_eq!(env, format!("/etc/ezone/{part}.env"));
        for (site, _) in SITES {
            assert!(
                repo()
                    .join(format!("deploy/hosts/{site}/{part}.env"))
                    .is_file(),
                "{unit}: deploy/hosts/{site}/{part}.env"
            );
        }

        // ExecStart: the binary, a real subcommand, its config.
        let exec = one(&keys, "ExecStart", unit);
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(words[0], "/usr/local/bin/ezone", "{unit}: {exec}");
        let sub: Vec<&str> = words[1..]
            .iter()
            .take_while(|w| !w.starts_with('-'))
            .copied()
            .collect();
        assert_eq!(
            words[1 + sub.len()..],
            ["--config", &format!("/etc/ezone/{part}.toml")]
        );
        let help = Command::new(ezone_tests::ezone_bin())
            .args(sub.iter())
            .arg("--help")
            .output()
            .expect("run ezone --help");
        let help_text = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.status.success() && help_text.contains("--config"),
            "{unit}: `ezone {} --help` failed or takes no --config: {help_text}",
            sub.join(" ")
        );
        assert!(
            !help_text.contains("Commands:"),
            "{unit}: `ezone {}` needs a subcommand",
            sub.join(" ")
        );

        let caps = one(&keys, "CapabilityBoundingSet", unit);
        let writable: Vec<&str> = values(&keys, "ReadWritePaths")
            .into_iter()
            .chain(values(&keys, "LogsDirectory"))
            .chain(values(&keys, "StateDirectory"))
            .collect();
        if part == "router" {
            // Port 443: the one capability, and only for the router.
            assert!(router_cfg.listen.https.expect("https").port() < 1024);
            assert_eq!(caps, "CAP_NET_BIND_SERVICE");
            assert_eq!(
                one(&keys, "AmbientCapabilities", unit),
                "CAP_NET_BIND_SERVICE"
            );
            assert_eq!(one(&keys, "ExecReload", unit), "/bin/kill -HUP $MAINPID");
            assert_eq!(writable, ["ezone"], "the access log's directory only");
            assert!(
                stop * 1000 > router_cfg.timeouts.drain_ms,
                "TimeoutStopSec {stop} s is above the drain"
            );
        } else {
            assert_eq!(caps, "", "{unit}: no capabilities");
            assert!(values(&keys, "AmbientCapabilities").is_empty());
            assert!(writable.is_empty(), "{unit} writes nothing: {writable:?}");
            assert!(stop >= 15, "{unit}: TimeoutStopSec above the 10 s drain");
        }
    }

    // The etcd drop-in: Debian's unit, started with this deployment's file.
    let dropin = read("deploy/systemd/etcd.service.d/ezone.conf");
    let keys = unit_keys(&dropin);
    assert_eq!(
        values(&keys, "ExecStart"),
        ["", "/usr/bin/etcd --config-file /etc/etcd/ezone.conf.yml"],
        "the package's ExecStart reset, then ours"
    );
    for (key, value) in HARDENING {
        assert_eq!(
            one(&keys, key, "etcd drop-in"),
            *value,
            "etcd drop-in: {key}"
        );
    }
    assert_eq!(
        one(&keys, "ReadWritePaths", "etcd drop-in"),
        "/var/lib/etcd"
    );
    assert_eq!(one(&keys, "CapabilityBoundingSet", "etcd drop-in"), "");
    assert_eq!(one(&keys, "Restart", "etcd drop-in"), "on-failure");

    systemd_analyze_verify();
}

/// `systemd-analyze verify` on the units (ExecStart pointed at the built
/// binary) and on Debian's etcd.service with the drop-in, when both are
/// installed: no line about our files (an unknown key, a value that does not
/// parse).
fn systemd_analyze_verify() {
    let Some(analyze) = on_path("systemd-analyze") else {
        eprintln!("note: systemd-analyze is not installed; the units were checked as text only");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = ezone_tests::ezone_bin().display().to_string();
    let mut units = Vec::new();
    for (unit, _) in UNITS {
        let text = read(&format!("deploy/systemd/{unit}")).replace("/usr/local/bin/ezone", &bin);
        let path = dir.path().join(unit);
        std::fs::write(&path, text).expect("write unit");
        units.push(path);
    }
    let packaged = Path::new("/lib/systemd/system/etcd.service");
    if packaged.is_file() {
        std::fs::copy(packaged, dir.path().join("etcd.service")).expect("copy etcd.service");
        std::fs::create_dir_all(dir.path().join("etcd.service.d")).expect("drop-in dir");
        std::fs::write(
            dir.path().join("etcd.service.d/ezone.conf"),
            read("deploy/systemd/etcd.service.d/ezone.conf"),
        )
        .expect("write drop-in");
        units.push(PathBuf::from("etcd.service"));
    }
    let out = Command::new(analyze)
        .arg("verify")
        .arg("--man=no")
        .args(units)
        .current_dir(dir.path())
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .output()
        .expect("run systemd-analyze verify");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&dir.path().display().to_string()) || l.contains("ezone"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify:\n{}",
        ours.join("\n")
    );
}

#[test]
fn the_certificate_script_issues_what_the_parts_accept() {
    if on_path("openssl").is_none() {
        eprintln!("note: openssl is not installed; deploy/pki/make-certs.sh was not run");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("pki");
    let mut args = vec!["-o".to_string(), out.display().to_string()];
    for (site, ip) in SITES {
        args.extend(["--site".to_string(), format!("{site}={ip}")]);
    }
    args.extend([
        "--etcd-only".to_string(),
        "tiebreaker=10.3.0.10".to_string(),
    ]);
    let run = Command::new("sh")
        .arg(repo().join("deploy/pki/make-certs.sh"))
        .args(args)
        .output()
        .expect("run make-certs.sh");
    assert!(
        run.status.success(),
        "make-certs.sh: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ca = out.join("ca.crt");
    for (site, _) in SITES {
        let d = out.join(site);
        for name in [
            "postgres-server",
            "pg-ezone",
            "pg-ezone_orders",
            "etcd-client",
            "router-peer",
            "etcd-server",
            "etcd-peer",
        ] {
            let key = d.join(format!("{name}.key"));
            assert!(d.join(format!("{name}.crt")).is_file(), "{site}/{name}.crt");
            let mode = std::fs::metadata(&key).expect("key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "{site}/{name}.key is private");
        }

        // The router checks its own peer certificate at start as its peers
        // will: it names this site, chains to the CA, serves both roles.
        let root = Root::new();
        let text = root.rewrite(&host_file(site, "router.toml"));
        let mut cfg = RouterConfig::from_toml(&text).expect("router.toml");
        let tls = cfg.peer_tls.as_mut().expect("[peer_tls]");
        tls.cert_file = d.join("router-peer.crt");
        tls.key_file = d.join("router-peer.key");
        tls.ca_file = ca.clone();
        ezone_router::peer_tls::load(tls, site)
            .unwrap_or_else(|e| panic!("{site}'s router-peer.crt: {e}"));
        let other = SITES
            .iter()
            .find(|(s, _)| *s != site)
            .expect("another site")
            .0;
        assert!(
            ezone_router::peer_tls::load(tls, other).is_err(),
            "{site}'s certificate does not name {other}"
        );

        // etcd: the replicator's client certificate loads.
        let etcd = ezone_topology::store::EtcdOptions::new(&["https://10.1.0.10:2379"]).with_tls(
            ezone_topology::store::EtcdTls::new(&ca)
                .with_identity(d.join("etcd-client.crt"), d.join("etcd-client.key")),
        );
        etcd.validate()
            .unwrap_or_else(|e| panic!("{site}'s etcd-client: {e}"));

        // Postgres: each role's client certificate with the CA, verify-full.
        for role in ["pg-ezone", "pg-ezone_orders"] {
            let settings = ezone_pg::TlsSettings {
                mode: SslMode::VerifyFull,
                rootcert: Some(ca.clone()),
                cert: Some(d.join(format!("{role}.crt"))),
                key: Some(d.join(format!("{role}.key"))),
            };
            settings
                .client_config()
                .unwrap_or_else(|e| panic!("{site}'s {role}: {e}"));
        }
    }
    assert!(out.join("tiebreaker/etcd-peer.crt").is_file());
    assert!(!out.join("tiebreaker/pg-ezone.crt").exists(), "etcd only");
}

/// The help text of `ezone WORDS --help`, and the subcommands it lists.
fn ezone_help(words: &[&str]) -> (String, Vec<String>) {
    let out = Command::new(ezone_tests::ezone_bin())
        .args(words)
        .arg("--help")
        .output()
        .expect("run ezone --help");
    assert!(
        out.status.success(),
        "ezone {} --help: {}",
        words.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let commands = text
        .split("Commands:")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .skip(1)
                .take_while(|l| l.starts_with("  "))
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (text, commands)
}

/// The commands of a markdown page: lines of its `sh` blocks, and inline code
/// spans (a paragraph's lines joined) that start with one of `programs`.
fn commands(page: &str, programs: &[&str]) -> Vec<String> {
    let starts = |s: &str| programs.iter().any(|p| s.starts_with(&format!("{p} ")));
    let mut found = Vec::new();
    let mut in_sh = false;
    let mut prose = String::new();
    for line in page.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
            continue;
        }
        if in_sh {
            // `set -a; . /etc/ezone/cli.env; set +a` and the like.
            for part in t.split(';') {
                let part = part.trim().trim_start_matches("sudo -u etcd ").trim();
                if starts(part) {
                    found.push(part.to_string());
                }
            }
        } else {
            prose.push_str(t);
            prose.push(' ');
        }
    }
    for (i, span) in prose.split('`').enumerate() {
        if i % 2 == 1 && starts(span) {
            found.push(span.to_string());
        }
    }
    found
}

#[test]
fn the_operations_page_shows_real_commands_and_the_sql() {
    let page = read("docs/operations.md");
    let ezone = commands(&page, &["ezone"]);
    assert!(ezone.len() > 15, "the page's ezone commands: {ezone:?}");
    for line in &ezone {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let mut path: Vec<&str> = Vec::new();
        let (mut help, mut subs) = ezone_help(&path);
        for t in &tokens[1..] {
            if subs.iter().any(|s| s == t) {
                path.push(t);
                (help, subs) = ezone_help(&path);
            } else {
                break;
            }
        }
        assert!(!path.is_empty(), "{line}: no subcommand");
        // `ezone failover` alone names the command family, in prose.
        let mention = tokens.len() == 1 + path.len();
        assert!(
            subs.is_empty() || mention,
            "{line}: `ezone {}` needs a subcommand",
            path.join(" ")
        );
        for t in tokens.iter().filter(|t| t.starts_with("--")) {
            let flag = t.split('=').next().unwrap_or(t);
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "{line}: `ezone {}` has no {flag}",
                path.join(" ")
            );
        }
    }

    if let Some(etcdctl) = on_path("etcdctl") {
        let lines = commands(&page, &["etcdctl"]);
        assert!(lines.len() >= 4, "{lines:?}");
        for line in lines {
            let sub = [
                "endpoint health",
                "snapshot save",
                "snapshot status",
                "snapshot restore",
                "member add",
                "member list",
                "member remove",
                "auth enable",
            ]
            .into_iter()
            .find(|s| line.contains(s))
            .unwrap_or_else(|| panic!("{line}: which etcdctl command?"));
            let out = Command::new(&etcdctl)
                .args(sub.split(' '))
                .arg("--help")
                .env("ETCDCTL_API", "3")
                .output()
                .expect("etcdctl --help");
            let help = String::from_utf8_lossy(&out.stdout).to_string();
            for flag in line.split_whitespace().filter(|t| t.starts_with("--")) {
                let flag = flag.split('=').next().unwrap_or(flag);
                assert!(
                    help.contains(&format!("{flag}=")) || help.contains(&format!("{flag}[")),
                    "{line}: etcdctl {sub} has no {flag}"
                );
            }
        }
    } else {
        eprintln!("note: etcdctl is not installed; the page's etcdctl flags were not checked");
    }

    // The SQL of deploy/postgres/ is on the page, statement for statement.
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let page_sql = squash(&page);
    for file in ["deploy/postgres/roles.sql", "deploy/postgres/grants.sql"] {
        let sql: String = read(file)
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        for statement in sql.split(';').map(squash).filter(|s| !s.is_empty()) {
            assert!(
                page_sql.contains(&statement),
                "docs/operations.md lacks this statement of {file}: {statement}"
            );
        }
    }
}
