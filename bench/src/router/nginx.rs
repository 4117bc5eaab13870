//! The nginx baseline of the router bench: a generated config and the
//! process that runs it.
//!
//! The config is what a careful operator would write for a plain reverse
//! proxy, so the comparison is with nginx at its usual best, not a strawman:
//! upstream keep-alive (`keepalive`, `proxy_http_version 1.1`, an empty
//! `Connection` header), no access log, and the same number of worker
//! processes as the ezone router has runtime worker threads. Both keep-alive
//! request caps (client side and upstream side, 1000 by default) are raised
//! so that neither proxy reconnects mid-run while the other does not.
//! Everything nginx writes (pid, error log, temp files) goes to the bench's
//! temp dir; `daemon off` keeps the master our child, so the kill-on-drop
//! guard reaches it and its workers. Dropping [`Nginx`] first asks the master
//! to stop (it then reaps its own workers, leaving no zombies for PID 1), and
//! only then kills whatever is left.
//!
//! **One gap:** if the bench itself is SIGKILLed, the kernel's parent-death
//! signal kills the nginx master, but not its workers (a death signal is not
//! inherited across fork, and nginx workers do not notice their master's
//! death): they linger, holding the bench's port, until killed by hand
//! (`pgrep -f 'nginx: worker'`). Ctrl-C, errors and panics do not have it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ezone_chaos::process::{ChildProcess, ProcessSpec};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Where nginx is looked for when it is not on `PATH`.
const NGINX_FALLBACKS: &[&str] = &[
    "/usr/sbin/nginx",
    "/usr/local/sbin/nginx",
    "/usr/local/nginx/sbin/nginx",
];

/// Keep-alive requests per connection, client and upstream side (nginx's
/// default, 1000, would make it reconnect where the ezone router does not).
const KEEPALIVE_REQUESTS: u32 = 1_000_000;

/// How long a dropped [`Nginx`] waits for its master to stop politely.
const POLITE_STOP: Duration = Duration::from_secs(2);

/// A running nginx; see the module docs for what dropping it does.
#[derive(Debug)]
pub struct Nginx {
    process: ChildProcess,
}

impl Nginx {
    pub fn process(&self) -> &ChildProcess {
        &self.process
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if !self.process.is_running() {
            return;
        }
        let Ok(pid) = i32::try_from(self.process.pid()) else {
            return;
        };
        if signal::kill(Pid::from_raw(pid), Signal::SIGTERM).is_err() {
            return;
        }
        let deadline = Instant::now() + POLITE_STOP;
        while self.process.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // `process` drops next: it SIGKILLs the tree if anything is left.
    }
}

/// What the generated config needs.
#[derive(Debug, Clone)]
pub struct NginxConf {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub workers: u32,
    /// Idle keep-alive connections nginx keeps to the upstream per worker.
    pub upstream_keepalive: u32,
    /// Set the forwarding headers the ezone router sets (see
    /// [`SAME_HEADERS`]).
    pub same_headers: bool,
    /// Where pid, error log and temp files go.
    pub dir: PathBuf,
    /// Add `user root;` (needed, and only allowed, when running as root: the
    /// workers would otherwise drop to `nobody`, who cannot reach the dir).
    pub as_root: bool,
}

/// What the ezone router adds to every request it forwards, as nginx
/// directives: the client's `Host` kept, `X-Forwarded-For` appended to,
/// `X-Forwarded-Proto`, `Via`, and the site, shard and epoch (constants here:
/// the bench routes one city of one site).
pub const SAME_HEADERS: &str = r#"            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Via "1.1 nginx";
            proxy_set_header X-Ezone-Site bench;
            proxy_set_header X-Ezone-Shard 1;
            proxy_set_header X-Ezone-Epoch 1;
"#;

impl NginxConf {
    /// The nginx.conf text.
    pub fn render(&self) -> String {
        let d = self.dir.display();
        let user = if self.as_root { "user root;\n" } else { "" };
        format!(
            r#"# Written by `ezone bench router`: the nginx baseline.
{user}worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {d}/nginx-client-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    keepalive_requests {kar};

    upstream bench_upstream {{
        server {upstream};
        keepalive {ka};
        keepalive_requests {kar};
    }}

    server {{
        listen {listen};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{same}        }}
    }}
}}
"#,
            workers = self.workers,
            upstream = self.upstream,
            ka = self.upstream_keepalive,
            kar = KEEPALIVE_REQUESTS,
            listen = self.listen,
            same = if self.same_headers { SAME_HEADERS } else { "" },
        )
    }
}

/// The nginx binary: `explicit`, else `nginx` on `PATH`, else the usual
/// sbin paths (root's `PATH` has them, a user's often not).
pub fn find(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--nginx {}: no such file", p.display());
    }
    if let Some(p) = find_on_path("nginx") {
        return Ok(p);
    }
    NGINX_FALLBACKS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "nginx not found on PATH or in {}; install it (apt-get install nginx-light) or pass --nginx PATH",
                NGINX_FALLBACKS.join(", ")
            )
        })
}

/// `name` in a `PATH` directory.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Writes the config into `conf.dir` and starts nginx in the foreground.
pub fn spawn(bin: &Path, conf: &NginxConf) -> anyhow::Result<Nginx> {
    let path = conf.dir.join("nginx.conf");
    std::fs::write(&path, conf.render()).with_context(|| format!("writing {}", path.display()))?;
    let spec = ProcessSpec::new("nginx", bin, &conf.dir, "nginx.log")
        .args([
            "-p".to_string(),
            conf.dir.display().to_string(),
            "-c".to_string(),
            path.display().to_string(),
        ])
        // "Fast shutdown": the bench has nothing in flight to drain.
        .stop_signal(Signal::SIGTERM);
    let process = ChildProcess::spawn(spec).context("starting nginx")?;
    Ok(Nginx { process })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_baseline_settings() {
        let c = NginxConf {
            listen: "127.0.0.1:8081".parse().expect("addr"),
            upstream: "127.0.0.1:9001".parse().expect("addr"),
            workers: 2,
            upstream_keepalive: 64,
            same_headers: true,
            dir: PathBuf::from("/tmp/ezone-bench-x"),
            as_root: true,
        };
        let text = c.render();
        for want in [
            "user root;",
            "worker_processes 2;",
            "daemon off;",
            "access_log off;",
            "pid /tmp/ezone-bench-x/nginx.pid;",
            "server 127.0.0.1:9001;",
            "keepalive 64;",
            "listen 127.0.0.1:8081;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        let not_root = NginxConf {
            as_root: false,
            ..c
        };
        assert!(!not_root.render().contains("user "));
        // The router's forwarding headers, unless asked for a bare proxy.
        assert!(text.contains("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"));
        assert!(text.contains("proxy_set_header X-Ezone-Shard 1;"));
        let bare = NginxConf {
            same_headers: false,
            ..not_root
        }
        .render();
        assert!(!bare.contains("X-Forwarded-For"));
        assert!(bare.contains("proxy_set_header Connection \"\";"));
    }
}
