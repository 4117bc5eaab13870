//! A supervised child process for the lab: etcd members, Postgres
//! postmasters and the WAN proxy, each one a real process that a test can
//! kill (-9), pause (SIGSTOP), resume, terminate and restart, and that never
//! outlives the test that started it.
//!
//! # Two ways to be supervised
//!
//! - [`Supervision::Tied`] (tests): the child gets its own process group and
//!   `PR_SET_PDEATHSIG(SIGKILL)`, so it is killed if the test process dies
//!   without running destructors (a panic that aborts, a SIGKILL from the
//!   harness, Ctrl-C). Dropping the [`ChildProcess`] kills and reaps it.
//!
//!   **The pdeathsig caveat:** Linux sends the death signal when the *thread*
//!   that forked the child exits, not when the process does. Spawn (and
//!   [`ChildProcess::restart`]) from a thread that lives as long as the child
//!   should: a test's own thread (`#[tokio::test]` runs on it) or a runtime
//!   worker. **Never from `spawn_blocking`** (or inside `block_in_place`,
//!   which turns the current worker into one): blocking-pool threads exit
//!   after a few idle seconds, and the child would be SIGKILLed with them.
//!
//!   The death signal is armed in a `pre_exec` hook. std runs those hooks
//!   *after* `setuid`/`setgid` (which matters: a credential change clears
//!   the death signal), and the hook then checks the parent is still the one
//!   that forked it, closing the window where the parent died before the
//!   signal was armed.
//!
//! - [`Supervision::Detached`] (`ezone lab up`): the child starts a new
//!   session (`setsid`) and has no death signal; it outlives the CLI and is
//!   stopped later by pid from the lab's state file ([`ProcessRecord`]). Until
//!   [`ChildProcess::disown`] is called, dropping it still kills it, so a
//!   failed `lab up` leaves nothing behind.
//!
//! # Killing a whole tree
//!
//! Postgres puts each backend in a session of its own (`setsid` in
//! `InitPostmasterChild`), so signalling the postmaster's process group does
//! not reach the backends. Kill, pause and resume therefore walk the process
//! tree through `/proc`: the root is stopped first (so it cannot fork while we
//! look), then its descendants are signalled, then the root. Without this, a
//! paused backend would stay stopped forever after its postmaster was killed,
//! and a restarted postmaster would refuse to start while old backends still
//! hold the shared memory.
//!
//! # Zombies and reaping
//!
//! Every [`ChildProcess`] is reaped as soon as it exits, whoever killed it:
//! a thread per incarnation blocks in `waitid(WEXITED | WNOWAIT)` on its pid
//! (which waits without reaping) and then reaps it through the owned
//! [`Child`] (`try_wait`, under the handle's lock), so the exit status stays
//! with the handle and no other wait is raced. Without it, a child killed
//! from outside (`kill -9` by an operator, the OOM killer) would stay a
//! zombie for as long as nothing asked the handle about it; a zombie
//! postmaster's pid still answers `kill(pid, 0)`, which is how Postgres
//! checks the pid in an old `postmaster.pid`, so a new postmaster on the
//! same data would refuse to start.
//!
//! A killed process that is not our child (a detached lab's, or a Postgres
//! backend whose postmaster died) is reaped by PID 1, if PID 1 reaps at all
//! (in some containers it does not). A zombie holds no resources, so liveness
//! checks ([`pid_alive`], [`ProcStat::is_live`]) count a zombie as gone.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{Pid, User};
use serde::{Deserialize, Serialize};

use crate::error::LabError;

/// How often waits poll a process's state.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for a process to vanish after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long `pause` waits for a stopped tree to show as stopped.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often a kill looks again for processes forked while it froze the tree.
const KILL_FREEZE_ROUNDS: usize = 50;
/// How many bytes from the end of a log an error quotes.
const LOG_TAIL_BYTES: u64 = 4096;
/// How many lines from the end of a log an error quotes.
const LOG_TAIL_LINES: usize = 25;
/// Stack of a reaper thread (it only waits, then takes a lock).
const REAPER_STACK: usize = 64 * 1024;

/// How a child is tied to the process that started it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Supervision {
    /// Killed with the spawning thread (pdeathsig) and on drop. For tests.
    #[default]
    Tied,
    /// A new session, no death signal: outlives its starter once disowned.
    /// For `ezone lab up`.
    Detached,
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// A human name used in errors and logs ("etcd member etcd-1").
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Extra environment (on top of this process's own).
    pub env: Vec<(OsString, OsString)>,
    /// Drop inherited variables starting with any of these (e.g. `ETCD_`,
    /// which etcd reads as flags).
    pub env_remove_prefixes: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
    /// If set, stdout goes here instead (truncated at each start) and only
    /// stderr to `log`. For a child that prints a machine-readable line.
    pub stdout: Option<PathBuf>,
    /// Run as this OS user (needs root): uid, gid, `HOME`, `USER`.
    pub user: Option<String>,
    /// Run in this network namespace (`/run/netns/NAME`, needs root): the
    /// child enters it before it drops to [`ProcessSpec::user`] and execs
    /// ([`crate::netns`]). `None`: this process's own.
    pub netns: Option<PathBuf>,
    pub supervision: Supervision,
    /// The polite stop signal for [`ChildProcess::terminate`] (Postgres:
    /// SIGINT, "fast shutdown"; SIGTERM would wait for clients).
    pub stop_signal: Signal,
}

impl ProcessSpec {
    /// Run `program` in `dir`, logging to `dir/<log_name>`.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        dir: &Path,
        log_name: &str,
    ) -> Self {
        ProcessSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove_prefixes: Vec::new(),
            cwd: dir.to_path_buf(),
            log: dir.join(log_name),
            stdout: None,
            user: None,
            netns: None,
            supervision: Supervision::Tied,
            stop_signal: Signal::SIGTERM,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn env_remove_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.env_remove_prefixes.push(prefix.into());
        self
    }

    pub fn user(mut self, user: Option<String>) -> Self {
        self.user = user;
        self
    }

    pub fn netns(mut self, netns: Option<PathBuf>) -> Self {
        self.netns = netns;
        self
    }

    pub fn supervision(mut self, s: Supervision) -> Self {
        self.supervision = s;
        self
    }

    pub fn stop_signal(mut self, s: Signal) -> Self {
        self.stop_signal = s;
        self
    }

    /// Run under a site's skewable clock ([`crate::clock`]), if given:
    /// inherited `FAKETIME*` dropped, libfaketime and its variables set.
    pub fn clock(self, clock: Option<&crate::clock::SiteClock>) -> Self {
        let Some(clock) = clock else {
            return self;
        };
        clock.env().into_iter().fold(
            self.env_remove_prefix(crate::clock::ENV_REMOVE_PREFIX),
            |s, (k, v)| s.env(k, v),
        )
    }

    pub fn stdout_file(mut self, path: PathBuf) -> Self {
        self.stdout = Some(path);
        self
    }
}

/// A running (or exited) child process; see the module docs.
#[derive(Debug)]
pub struct ChildProcess {
    spec: ProcessSpec,
    /// Shared (weakly) with the reaper thread of the current incarnation.
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// `None` once disowned.
    child: Option<Child>,
    pid: u32,
    start_time: Option<u64>,
    /// Set once reaped.
    status: Option<ExitStatus>,
}

impl Inner {
    /// The exit status if the child has exited (reaping it), else `None`.
    fn poll_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                // An error here means "no such child": treat it as gone.
                self.status = match child.try_wait() {
                    Ok(s) => s,
                    Err(_) => Some(ExitStatus::default()),
                };
            }
        }
        self.status
    }

    fn status_text(&mut self) -> String {
        match self.poll_status() {
            Some(s) => s.to_string(),
            None => "running".to_string(),
        }
    }
}

impl ChildProcess {
    /// Start `spec`'s program.
    pub fn spawn(spec: ProcessSpec) -> Result<Self, LabError> {
        let (child, pid, start_time) = launch(&spec)?;
        tracing::debug!(name = %spec.name, pid, program = %spec.program.display(), "Process started.");
        let p = ChildProcess {
            spec,
            inner: Arc::new(Mutex::new(Inner {
                child: Some(child),
                pid,
                start_time,
                status: None,
            })),
        };
        p.watch(pid);
        Ok(p)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock_inner(&self.inner)
    }

    /// Start the reaper thread of incarnation `pid` (see the module docs).
    fn watch(&self, pid: u32) {
        let inner = Arc::downgrade(&self.inner);
        let faked = crate::clock::is_faked(&self.spec.env);
        let spawned = std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .stack_size(REAPER_STACK)
            .spawn(move || reap_when_exited(inner, pid, faked));
        if let Err(e) = spawned {
            tracing::warn!(name = %self.spec.name, pid, error = %e, "Cannot start the reaper thread; the process is reaped only when next looked at.");
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    /// The pid of the current (or last) incarnation.
    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.spec.log)
    }

    /// Whether the process is still running (a stopped process is running).
    pub fn is_running(&self) -> bool {
        self.lock().poll_status().is_none()
    }

    /// The exit status, once it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.lock().poll_status()
    }

    /// Pids of the process's live descendants (Postgres backends, ...).
    pub fn descendants(&self) -> Vec<u32> {
        let mut inner = self.lock();
        if inner.poll_status().is_some() {
            return Vec::new();
        }
        descendants(inner.pid)
    }

    /// SIGKILL the process and its descendants and reap it. A process that
    /// already exited is left as it is.
    pub fn kill(&self) -> Result<(), LabError> {
        let mut inner = self.lock();
        if inner.poll_status().is_some() {
            return Ok(());
        }
        let pid = inner.pid;
        kill_tree(pid).map_err(|e| self.signal_error(pid, Signal::SIGKILL, e))?;
        if let Some(child) = inner.child.as_mut() {
            let status = child
                .wait()
                .map_err(|e| LabError::io("reap", format!("/proc/{pid}"), e))?;
            inner.status = Some(status);
        }
        self.forget_faketime(pid);
        tracing::debug!(name = %self.spec.name, pid, "Process killed.");
        Ok(())
    }

    /// SIGSTOP the process and its descendants: it stops answering but keeps
    /// its sockets open, as a hung machine would. Returns once every process
    /// of the tree shows as stopped (or after a short grace, logged).
    pub fn pause(&self) -> Result<(), LabError> {
        let mut inner = self.lock();
        let pid = self.running_pid(&mut inner, "pause")?;
        signal_tree(pid, Signal::SIGSTOP)
            .map_err(|e| self.signal_error(pid, Signal::SIGSTOP, e))?;
        drop(inner);
        // A stop signal takes effect when the target is next scheduled, not
        // when kill(2) returns: wait until the whole tree is really stopped.
        let deadline = Instant::now() + STOP_GRACE;
        while let Some(p) = not_yet_stopped(pid) {
            if Instant::now() >= deadline {
                tracing::warn!(name = %self.spec.name, pid = p, "Process has not stopped yet (in the kernel?).");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        tracing::debug!(name = %self.spec.name, pid, "Process paused.");
        Ok(())
    }

    /// SIGCONT the process and its descendants.
    pub fn resume(&self) -> Result<(), LabError> {
        let mut inner = self.lock();
        let pid = self.running_pid(&mut inner, "resume")?;
        signal_tree(pid, Signal::SIGCONT)
            .map_err(|e| self.signal_error(pid, Signal::SIGCONT, e))?;
        tracing::debug!(name = %self.spec.name, pid, "Process resumed.");
        Ok(())
    }

    /// Ask the process to stop (its stop signal, plus SIGCONT in case it is
    /// paused), wait up to `timeout`, then SIGKILL it and its descendants.
    pub async fn terminate(&self, timeout: Duration) -> Result<(), LabError> {
        let pid = {
            let mut inner = self.lock();
            if inner.poll_status().is_some() {
                return Ok(());
            }
            inner.pid
        };
        let sig = self.spec.stop_signal;
        signal::kill(Pid::from_raw(pid as i32), sig).map_err(|e| self.signal_error(pid, sig, e))?;
        // A paused process only acts on the stop signal once continued.
        let _ = signal_tree(pid, Signal::SIGCONT);
        if self.wait_exit(timeout).await.is_some() {
            tracing::debug!(name = %self.spec.name, pid, "Process terminated.");
            return Ok(());
        }
        tracing::warn!(name = %self.spec.name, pid, ?timeout, "Process ignored its stop signal; killing it.");
        self.kill()
    }

    /// Wait up to `timeout` for the process to exit; its status, or `None`
    /// if it still runs.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exit_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Kill the process if it runs, then start the same command again (same
    /// args, env, log, user and supervision). Tied children are tied to the
    /// calling thread; see the module docs.
    pub fn restart(&self) -> Result<(), LabError> {
        self.kill()?;
        let (child, pid, start_time) = launch(&self.spec)?;
        *self.lock() = Inner {
            child: Some(child),
            pid,
            start_time,
            status: None,
        };
        self.watch(pid);
        tracing::debug!(name = %self.spec.name, pid, "Process restarted.");
        Ok(())
    }

    /// What identifies this process for a later stop by pid.
    pub fn record(&self) -> ProcessRecord {
        let inner = self.lock();
        ProcessRecord {
            name: self.spec.name.clone(),
            pid: inner.pid,
            start_time: inner.start_time,
            stop_signal: self.spec.stop_signal.as_str().to_string(),
            log: self.spec.log.clone(),
        }
    }

    /// Let the process live on after this handle is dropped (for detached
    /// processes); it is then stopped through the returned record.
    pub fn disown(self) -> ProcessRecord {
        let record = self.record();
        // Dropping a std Child neither kills nor waits.
        self.lock().child = None;
        record
    }

    fn running_pid(&self, inner: &mut Inner, op: &'static str) -> Result<u32, LabError> {
        if inner.poll_status().is_some() {
            return Err(LabError::NotRunning {
                op,
                name: self.spec.name.clone(),
                pid: inner.pid,
                status: inner.status_text(),
            });
        }
        Ok(inner.pid)
    }

    fn signal_error(&self, pid: u32, sig: Signal, e: nix::errno::Errno) -> LabError {
        LabError::Signal {
            name: self.spec.name.clone(),
            pid,
            signal: sig.as_str(),
            source: e,
        }
    }

    /// After a SIGKILL and reap: remove what libfaketime left in /dev/shm
    /// for a child that ran under it (see [`crate::clock::forget_process`]).
    fn forget_faketime(&self, pid: u32) {
        if crate::clock::is_faked(&self.spec.env) {
            crate::clock::forget_process(pid);
        }
    }
}

/// Wait (without reaping) until incarnation `pid` exits, then reap it
/// through its handle, if the handle still exists and still holds that
/// incarnation. Runs on a thread of its own.
fn reap_when_exited(inner: Weak<Mutex<Inner>>, pid: u32, faked: bool) {
    loop {
        let id = Id::Pid(Pid::from_raw(pid as i32));
        match waitid(id, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            // ECHILD: already reaped (a kill, a drop), or disowned and gone.
            Err(_) => return,
        }
    }
    let Some(inner) = inner.upgrade() else {
        return; // the handle was dropped (and its drop reaps)
    };
    let mut inner = lock_inner(&inner);
    if inner.pid != pid || inner.status.is_some() || inner.child.is_none() {
        return;
    }
    if let Some(status) = inner.poll_status() {
        tracing::debug!(pid, %status, "Child exited; reaped.");
        // As after a kill, right after the reap: a process that died
        // without exiting cleanly left libfaketime's shared memory behind.
        if faked {
            crate::clock::forget_process(pid);
        }
    }
}

fn lock_inner(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let mut inner = lock_inner(&self.inner);
        if inner.child.is_none() || inner.poll_status().is_some() {
            return;
        }
        let pid = inner.pid;
        if let Err(e) = kill_tree(pid) {
            tracing::warn!(name = %self.spec.name, pid, error = %e, "Cannot kill process on drop.");
        }
        if let Some(child) = inner.child.as_mut() {
            let _ = child.wait();
        }
        drop(inner);
        self.forget_faketime(pid);
    }
}

/// Run `spec` to completion within `timeout` (initdb and the like): an
/// error with the log's tail if it fails or overruns (then it is killed).
pub async fn run_to_completion(spec: ProcessSpec, timeout: Duration) -> Result<(), LabError> {
    let p = ChildProcess::spawn(spec)?;
    match p.wait_exit(timeout).await {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(LabError::Failed {
            name: p.name().to_string(),
            status: s.to_string(),
            log: p.log_path().to_path_buf(),
            tail: p.log_tail(),
        }),
        None => {
            p.kill()?;
            Err(LabError::NotReady {
                name: p.name().to_string(),
                within: timeout,
                last: "still running; killed".to_string(),
                log: p.log_path().to_path_buf(),
                tail: p.log_tail(),
            })
        }
    }
}

/// A process recorded in a lab's state file, stopped later by pid.
///
/// The process's start time (from `/proc/PID/stat`) is recorded with the pid,
/// so a pid reused by an unrelated process after a reboot is never signalled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: String,
    pub pid: u32,
    /// Start time in clock ticks since boot; `None` if it could not be read.
    pub start_time: Option<u64>,
    /// Signal name for a polite stop (`SIGTERM`, `SIGINT`, ...).
    pub stop_signal: String,
    pub log: PathBuf,
}

/// How a [`ProcessRecord::stop`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// It was not running.
    NotRunning,
    /// It exited on its stop signal.
    Stopped,
    /// It had to be SIGKILLed.
    Killed,
}

impl ProcessRecord {
    /// The record of this very process (`ezone demo` records itself in its
    /// `lab.json`), stopped later with `stop_signal`; it has no log file of
    /// its own (`log` is empty).
    pub fn this_process(name: impl Into<String>, stop_signal: Signal) -> ProcessRecord {
        let pid = std::process::id();
        ProcessRecord {
            name: name.into(),
            pid,
            start_time: proc_stat(pid).map(|s| s.start_time),
            stop_signal: stop_signal.as_str().to_string(),
            log: PathBuf::new(),
        }
    }

    /// Whether this very process (pid and start time) is alive (not a zombie).
    pub fn is_alive(&self) -> bool {
        pid_alive(self.pid, self.start_time)
    }

    /// Polite stop (its stop signal), then SIGKILL of its tree after
    /// `timeout`; returns once it is gone (or errors if it will not go).
    pub async fn stop(&self, timeout: Duration) -> Result<StopOutcome, LabError> {
        if !self.is_alive() {
            return Ok(StopOutcome::NotRunning);
        }
        let sig: Signal = self.stop_signal.parse().unwrap_or(Signal::SIGTERM);
        let pid = Pid::from_raw(self.pid as i32);
        match signal::kill(pid, sig) {
            Ok(()) => {}
            Err(nix::errno::Errno::ESRCH) => return Ok(StopOutcome::NotRunning),
            Err(e) => return Err(self.signal_error(sig, e)),
        }
        let _ = signal_tree(self.pid, Signal::SIGCONT);
        if self.wait_gone(timeout).await {
            return Ok(StopOutcome::Stopped);
        }
        tracing::warn!(name = %self.name, pid = self.pid, ?timeout, "Process ignored its stop signal; killing it.");
        self.kill().await?;
        Ok(StopOutcome::Killed)
    }

    /// SIGKILL the process and its descendants and wait until it is gone.
    pub async fn kill(&self) -> Result<(), LabError> {
        if !self.is_alive() {
            return Ok(());
        }
        match kill_tree(self.pid) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(self.signal_error(Signal::SIGKILL, e)),
        }
        if self.wait_gone(KILL_GRACE).await {
            Ok(())
        } else {
            Err(LabError::StillRunning {
                name: self.name.clone(),
                pid: self.pid,
                within: KILL_GRACE,
            })
        }
    }

    async fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn signal_error(&self, sig: Signal, e: nix::errno::Errno) -> LabError {
        LabError::Signal {
            name: self.name.clone(),
            pid: self.pid,
            signal: sig.as_str(),
            source: e,
        }
    }
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `T` (stopped), `Z` (zombie), ...
    pub state: char,
    pub ppid: u32,
    /// Clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    /// Whether the process still runs (or is stopped): not a zombie (`Z`,
    /// exited but not reaped by its parent) nor dead (`X`). A zombie holds
    /// no memory, files or ports, but its pid exists until it is reaped.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// Read `/proc/PID/stat`; `None` if there is no such process.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parse a `/proc/PID/stat` line. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 4 is ppid; field 22 is starttime.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// A `kB` figure of `/proc/PID/status` (`VmHWM`, the peak resident set;
/// `VmRSS`, the current one), in KiB; `None` if there is no such process
/// or field.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, field)
}

fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Whether `pid` is a live (non-zombie) process, and if `start_time` is
/// given, the same process that was recorded.
pub fn pid_alive(pid: u32, start_time: Option<u64>) -> bool {
    match proc_stat(pid) {
        None => false,
        Some(s) if !s.is_live() => false,
        Some(s) => start_time.is_none() || start_time == Some(s.start_time),
    }
}

/// Live descendants of `root` (children, grandchildren, ...), by `/proc`.
pub fn descendants(root: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(s) = proc_stat(pid) {
            if s.is_live() {
                parent_of.push((pid, s.ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (child, _) in parent_of.iter().filter(|(_, ppid)| *ppid == p) {
            if !out.contains(child) {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}

/// SIGKILL a process and its descendants, and wait until they are gone.
/// The whole tree is frozen first, again and again until no new process
/// shows up: the root is often a wrapper (`runuser`) whose child (a
/// postmaster) forks backends while we look, and a backend that escaped
/// would keep the old server's shared memory and port, so that the
/// restart fails ("pre-existing shared memory block is still in use").
fn kill_tree(root: u32) -> nix::Result<()> {
    let root_pid = Pid::from_raw(root as i32);
    let _ = signal::kill(root_pid, Signal::SIGSTOP);
    let mut tree: Vec<u32> = Vec::new();
    for _ in 0..KILL_FREEZE_ROUNDS {
        let new: Vec<u32> = descendants(root)
            .into_iter()
            .filter(|p| !tree.contains(p))
            .collect();
        if new.is_empty() {
            break;
        }
        for p in &new {
            let _ = signal::kill(Pid::from_raw(*p as i32), Signal::SIGSTOP);
        }
        tree.extend(new);
    }
    for d in &tree {
        let _ = signal::kill(Pid::from_raw(*d as i32), Signal::SIGKILL);
    }
    let r = signal::kill(root_pid, Signal::SIGKILL);
    // Killed processes die when next scheduled; orphans are reaped by init.
    let deadline = Instant::now() + KILL_GRACE;
    while tree
        .iter()
        .any(|p| proc_stat(*p).is_some_and(|s| s.is_live()))
    {
        if Instant::now() >= deadline {
            tracing::warn!(
                root,
                "Killed processes are still there after {KILL_GRACE:?}."
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    r
}

/// Send SIGSTOP or SIGCONT to a process and its descendants, in the order
/// that leaves no window: stop the root first (no new children), continue
/// it last.
fn signal_tree(root: u32, sig: Signal) -> nix::Result<()> {
    let root_pid = Pid::from_raw(root as i32);
    if sig == Signal::SIGSTOP {
        signal::kill(root_pid, sig)?;
    }
    for d in descendants(root) {
        let _ = signal::kill(Pid::from_raw(d as i32), sig);
    }
    if sig != Signal::SIGSTOP {
        signal::kill(root_pid, sig)?;
    }
    Ok(())
}

/// A process of the tree at `root` that is alive but not (yet) stopped.
fn not_yet_stopped(root: u32) -> Option<u32> {
    std::iter::once(root)
        .chain(descendants(root))
        .find(|p| proc_stat(*p).is_some_and(|s| !matches!(s.state, 'T' | 't' | 'Z' | 'X')))
}

/// The last lines of a log file (or a note that there is none).
pub fn log_tail(path: &Path) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("(no log: {e})"),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return "(log unreadable)".to_string();
    }
    let mut buf = Vec::new();
    if let Err(e) = f.read_to_end(&mut buf) {
        return format!("(log unreadable: {e})");
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    // The first line may be cut in the middle when we started mid-file.
    let from = if start > 0 && from == 0 { 1 } else { from };
    lines.get(from..).unwrap_or_default().join("\n")
}

/// Fork and exec `spec`; the child, its pid and start time.
fn launch(spec: &ProcessSpec) -> Result<(Child, u32, Option<u64>), LabError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| LabError::io("open log file", &spec.log, e))?;
    let stdout = match &spec.stdout {
        Some(path) => {
            File::create(path).map_err(|e| LabError::io("create output file", path, e))?
        }
        None => log
            .try_clone()
            .map_err(|e| LabError::io("duplicate log file handle", &spec.log, e))?,
    };

    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log);
    for (k, _) in std::env::vars_os() {
        let remove = k.to_str().is_some_and(|k| {
            spec.env_remove_prefixes
                .iter()
                .any(|p| k.starts_with(p.as_str()))
        });
        if remove {
            cmd.env_remove(&k);
        }
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    let user = match &spec.user {
        Some(name) => {
            let user = lookup_user(name)?;
            cmd.env("HOME", &user.dir)
                .env("USER", name)
                .env("LOGNAME", name);
            Some(user)
        }
        None => None,
    };
    // Open here, entered in the child; kept open until the spawn is done.
    let netns = match &spec.netns {
        Some(path) => {
            Some(File::open(path).map_err(|e| LabError::io("open network namespace", path, e))?)
        }
        None => None,
    };
    match (&user, &netns) {
        // std drops privileges before any pre_exec hook runs, and a process
        // that is no longer root cannot enter a namespace: the hook enters
        // it first, then drops them itself.
        (_, Some(ns)) => enter_netns_pre_exec(&mut cmd, ns, user.as_ref()),
        (Some(user), None) => {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        (None, None) => {}
    }
    if spec.supervision == Supervision::Tied {
        cmd.process_group(0);
    }
    arm_pre_exec(&mut cmd, spec.supervision);

    let child = cmd.spawn().map_err(|e| LabError::Spawn {
        name: spec.name.clone(),
        program: spec.program.clone(),
        hint: match e.kind() {
            io::ErrorKind::NotFound => "is it installed (and is the path right)?".to_string(),
            io::ErrorKind::PermissionDenied => {
                "check it is executable and that its working directory is reachable".to_string()
            }
            _ => "see the error".to_string(),
        },
        source: e,
    })?;
    let pid = child.id();
    let start_time = proc_stat(pid).map(|s| s.start_time);
    Ok((child, pid, start_time))
}

/// Look up an OS user by name.
pub fn lookup_user(name: &str) -> Result<User, LabError> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(LabError::NoSuchUser {
            user: name.to_string(),
            reason: "no such user".to_string(),
        }),
        Err(e) => Err(LabError::NoSuchUser {
            user: name.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// In the child: enter the network namespace open at `ns`, then become
/// `user` (groups, gid, uid: the order std uses) if given.
#[allow(unsafe_code)]
fn enter_netns_pre_exec(cmd: &mut Command, ns: &File, user: Option<&User>) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    let fd = ns.as_raw_fd();
    let ids = user.map(|u| (u.uid, u.gid));
    let hook = move || -> io::Result<()> {
        // SAFETY: `fd` stays open in the parent until spawn returns, and
        // so in the child (a copy of the parent's table) until exec.
        let ns = unsafe { BorrowedFd::borrow_raw(fd) };
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        if let Some((uid, gid)) = ids {
            nix::unistd::setgroups(&[gid]).map_err(io::Error::from)?;
            nix::unistd::setgid(gid).map_err(io::Error::from)?;
            nix::unistd::setuid(uid).map_err(io::Error::from)?;
        }
        Ok(())
    };
    // SAFETY: as in `arm_pre_exec`: only raw system calls through nix
    // (setns, setgroups, setgid, setuid), errors wrap the errno without
    // allocating, no locks, and the captured values are plain integers.
    // Registered before `arm_pre_exec`'s hook, so the death signal is armed
    // after the uid change (which would clear it).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Install the hook that runs in the child between fork and exec: arm the
/// death signal (tied) or start a new session (detached).
#[allow(unsafe_code)]
fn arm_pre_exec(cmd: &mut Command, supervision: Supervision) {
    let parent = nix::unistd::getpid();
    let hook = move || -> io::Result<()> {
        match supervision {
            Supervision::Tied => {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                // The parent may have died before the death signal was armed;
                // then we were re-parented and must not run on.
                if nix::unistd::getppid() != parent {
                    return Err(io::Error::from(nix::errno::Errno::ESRCH));
                }
            }
            Supervision::Detached => {
                nix::unistd::setsid().map_err(io::Error::from)?;
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child of a possibly multi-threaded
    // parent, where only async-signal-safe calls are allowed. It makes only
    // raw system calls through nix (prctl(PR_SET_PDEATHSIG), getppid, setsid)
    // and builds its errors with `io::Error::from(Errno)`, which wraps the
    // raw errno without allocating. It takes no locks and touches no shared
    // state; `parent` is a plain integer copied into the closure.
    unsafe {
        cmd.pre_exec(hook);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_figures_from_status() {
        let status =
            "Name:\tezone\nVmPeak:\t  900000 kB\nVmHWM:\t   14236 kB\nVmRSS:\t   12000 kB\n";
        assert_eq!(super::parse_status_kib(status, "VmHWM"), Some(14236));
        assert_eq!(super::parse_status_kib(status, "VmRSS"), Some(12000));
        assert_eq!(super::parse_status_kib("Name:\tx\n", "VmHWM"), None);
        assert!(super::proc_status_kib(std::process::id(), "VmRSS").is_some_and(|k| k > 0));
    }

    use super::*;

    #[test]
    fn stat_parses_names_with_spaces_and_parens() {
        let line = "1234 (post (gres) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.start_time, 98765);
    }

    #[test]
    fn a_zombie_stat_line_is_not_live() {
        let line = "4242 (postgres) Z 4000 4242 4242 0 -1 4227084 0 0 0 0 0 0 0 0 20 0 1 0 555 0 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.state, 'Z');
        assert!(!s.is_live(), "a zombie is not live");
        let dead = line.replace(" Z ", " X ");
        assert!(!parse_stat(&dead).expect("parses").is_live());
        for state in ['R', 'S', 'D', 'T', 't', 'I'] {
            let l = line.replace(" Z ", &format!(" {state} "));
            assert!(parse_stat(&l).expect("parses").is_live(), "{state}");
        }
    }

    /// Wait up to 5 s for `pid`'s state to satisfy `f` (`None`: no such pid).
    fn wait_state(pid: u32, f: impl Fn(Option<ProcStat>) -> bool) -> Option<ProcStat> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = proc_stat(pid);
            if f(s) || Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_real_zombie_is_not_alive() {
        // A plain std child that exits and is not waited for: a zombie.
        let mut child = Command::new("/bin/true").spawn().expect("spawn true");
        let pid = child.id();
        let s = wait_state(pid, |s| s.is_some_and(|s| s.state == 'Z'));
        assert_eq!(s.map(|s| s.state), Some('Z'), "never became a zombie");
        assert!(!pid_alive(pid, None), "a zombie counts as gone");
        assert!(
            signal::kill(Pid::from_raw(pid as i32), None).is_ok(),
            "kill(pid, 0) still finds a zombie (what Postgres checks)"
        );
        child.wait().expect("reap");
        assert!(proc_stat(pid).is_none());
    }

    #[test]
    fn a_child_killed_from_outside_is_reaped_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = ProcessSpec::new("sleeper", "/bin/sleep", dir.path(), "sleep.log").arg("30");
        let p = ChildProcess::spawn(spec).expect("spawn sleep");
        let pid = p.pid();
        signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
        // Nothing asks the handle: the reaper alone must make the pid go.
        let s = wait_state(pid, |s| s.is_none());
        assert!(s.is_none(), "pid {pid} not reaped: {s:?}");
        assert!(!p.is_running());
        assert!(p.exit_status().is_some_and(|s| !s.success()));

        // The same after a restart: the new incarnation has its own reaper.
        p.restart().expect("restart");
        let pid = p.pid();
        signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
        let s = wait_state(pid, |s| s.is_none());
        assert!(s.is_none(), "restarted pid {pid} not reaped: {s:?}");
    }

    #[test]
    fn own_process_is_alive_and_has_a_start_time() {
        let me = std::process::id();
        let s = proc_stat(me).expect("own stat");
        assert!(pid_alive(me, Some(s.start_time)));
        assert!(!pid_alive(me, Some(s.start_time + 1)));
    }

    #[tokio::test]
    async fn kill_pause_resume_restart_a_sleeper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = ProcessSpec::new("sleeper", "/bin/sleep", dir.path(), "sleep.log").arg("30");
        let p = ChildProcess::spawn(spec).expect("spawn sleep");
        let first = p.pid();
        assert!(p.is_running());
        p.pause().expect("pause");
        assert_eq!(proc_stat(first).map(|s| s.state), Some('T'));
        p.resume().expect("resume");
        assert_ne!(proc_stat(first).map(|s| s.state), Some('T'));
        p.restart().expect("restart");
        assert_ne!(p.pid(), first);
        assert!(!pid_alive(first, None));
        p.terminate(Duration::from_secs(5))
            .await
            .expect("terminate");
        assert!(!p.is_running());
        assert!(p.pause().is_err());
    }

    #[test]
    fn drop_kills_and_reaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = ProcessSpec::new("sleeper", "/bin/sleep", dir.path(), "sleep.log").arg("30");
        let p = ChildProcess::spawn(spec).expect("spawn sleep");
        let pid = p.pid();
        drop(p);
        assert!(
            proc_stat(pid).is_none(),
            "pid {pid} still exists (not reaped)"
        );
    }

    /// Live processes whose command line holds `marker`.
    fn live_with(marker: &str) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
                    && proc_stat(*pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
            })
            .collect()
    }

    #[test]
    fn kill_takes_the_whole_tree_even_while_it_forks() {
        // A shell (like a postmaster) with children, forking more all the
        // time: once kill returns, none of them may be left (a surviving
        // Postgres backend keeps the old server's shared memory, and the
        // restart fails).
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = format!("3.{}", std::process::id());
        // The forking loop runs in a grandchild, which stopping the root
        // does not stop.
        let script = format!(
            "for i in 1 2 3 4 5 6; do /bin/sleep {marker} & done; \
             /bin/sh -c 'while :; do /bin/sleep {marker} & sleep 0.002; done' & wait"
        );
        let spec = ProcessSpec::new("forker", "/bin/sh", dir.path(), "forker.log")
            .arg("-c")
            .arg(&script);
        let p = ChildProcess::spawn(spec).expect("spawn sh");
        std::thread::sleep(Duration::from_millis(300));
        assert!(live_with(&marker).len() >= 6, "the children started");
        p.kill().expect("kill");
        assert_eq!(live_with(&marker), Vec::<u32>::new(), "left alive");
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = ProcessSpec::new("ghost", "/nonexistent/ghost", dir.path(), "ghost.log");
        let err = ChildProcess::spawn(spec).expect_err("must fail");
        assert!(err.to_string().contains("is it installed"), "{err}");
    }
}
