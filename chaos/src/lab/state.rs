//! The state file of a lab (`DIR/lab.json`): which processes run there
//! (pid *and* start time, so a reused pid is never signalled), what the lab
//! created in `DIR`, and the lab's addresses. `ezone lab up` writes it for
//! the detached lab it leaves running; `ezone demo --dir DIR` writes it while
//! it runs (the demo process itself, the lab's processes and the ensemble's
//! routers, order services and replicators, with no entries to remove: it
//! keeps its files) and removes it when it stops them itself.
//! `ezone lab status` reads it; `ezone lab down` stops what it lists,
//! checks the processes are gone and removes what the lab created, and
//! nothing else.
//!
//! Formats: 1 (`ezone lab up` before the ensemble's roles, the demo's
//! process and `keep_files` were recorded) is still read; 2 is written.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::info::LabInfo;
use super::LabError;
use crate::process::{ProcessRecord, StopOutcome};

/// The state file's name inside the lab directory.
pub const STATE_FILE: &str = "lab.json";
/// The state file format this code writes.
const FORMAT: u32 = 2;
/// The oldest format this code reads: format 1 has only the `etcd`,
/// `postgres` and `proxy` roles and no `keep_files` (false).
const OLDEST_FORMAT: u32 = 1;

/// What a lab process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Etcd,
    Postgres,
    Proxy,
    /// An ensemble's router (format 2 on).
    Router,
    /// An ensemble's order service (format 2 on).
    Orders,
    /// An ensemble's replicator (format 2 on).
    Replicator,
    /// The `ezone demo` process that started (and owns) the others; stopped
    /// first (format 2 on).
    Demo,
}

impl Role {
    /// Whether this process owns the others: `ezone lab down` stops it
    /// first, so that it can stop its own children.
    pub fn is_owner(self) -> bool {
        self == Role::Demo
    }
}

/// One recorded lab process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabProcess {
    pub role: Role,
    /// The site, for a Postgres, router, order service or replicator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(flatten)]
    pub record: ProcessRecord,
}

/// The contents of `DIR/lab.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub format: u32,
    /// The lab directory (absolute).
    pub dir: PathBuf,
    /// Whether the lab created `dir` itself (then `down` removes it when empty).
    pub created_dir: bool,
    /// Names directly inside `dir` that the lab created (removed by `down`).
    pub entries: Vec<String>,
    /// Processes: the owner (a demo) is stopped first, then all the others
    /// at once.
    pub processes: Vec<LabProcess>,
    pub info: LabInfo,
    /// The lab keeps its files (`LabSpec::keep_files`): `down` removes
    /// nothing but this state file, whatever `entries` says.
    #[serde(default)]
    pub keep_files: bool,
}

/// What [`LabState::stop`] did to each process.
#[derive(Debug, Clone)]
pub struct StopReport {
    pub processes: Vec<(LabProcess, StopOutcome)>,
}

impl StopReport {
    /// Whether any process was still running when asked to stop.
    pub fn anything_was_running(&self) -> bool {
        self.processes
            .iter()
            .any(|(_, o)| *o != StopOutcome::NotRunning)
    }
}

impl LabState {
    pub(crate) fn new(
        dir: PathBuf,
        created_dir: bool,
        entries: Vec<String>,
        processes: Vec<LabProcess>,
        info: LabInfo,
        keep_files: bool,
    ) -> Self {
        LabState {
            format: FORMAT,
            dir,
            created_dir,
            entries,
            processes,
            info,
            keep_files,
        }
    }

    /// `dir/lab.json`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// The state recorded in `dir`, or `None` if there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>, LabError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LabError::io("read lab state file", &path, e)),
        };
        let state = Self::parse(&text).map_err(|reason| LabError::BadState {
            path: path.clone(),
            reason,
        })?;
        if let Some(bad) = state.entries.iter().find(|e| !is_plain_name(e)) {
            return Err(LabError::BadState {
                path,
                reason: format!("entry {bad:?} is not a plain name inside the lab directory"),
            });
        }
        Ok(Some(state))
    }

    /// Parse a state file's text, checking its format first (so that a
    /// newer format is named as such rather than as a parse error).
    fn parse(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let Format { format } = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if !(OLDEST_FORMAT..=FORMAT).contains(&format) {
            return Err(format!(
                "format {format} (this ezone reads formats {OLDEST_FORMAT} to {FORMAT})"
            ));
        }
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// A copy with `process` first: the owner (`ezone demo`) that `down`
    /// stops before the rest.
    pub fn with_owner(mut self, process: LabProcess) -> Self {
        self.processes.insert(0, process);
        self
    }

    /// Write the state file (atomically: a temp file renamed over it).
    pub fn save(&self) -> Result<(), LabError> {
        let path = Self::path(&self.dir);
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::BadState {
            path: path.clone(),
            reason: format!("cannot serialize: {e}"),
        })?;
        std::fs::write(&tmp, text).map_err(|e| LabError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io("rename into place", &path, e))
    }

    /// The recorded processes still alive.
    pub fn alive(&self) -> Vec<&LabProcess> {
        self.processes
            .iter()
            .filter(|p| p.record.is_alive())
            .collect()
    }

    /// Stop every recorded process (its polite signal, SIGKILL after
    /// `timeout`): the owner first (a demo stops its own children when
    /// asked), then all the others at once. Then check each is gone and
    /// remove what the lab created.
    pub async fn stop(&self, timeout: Duration) -> Result<StopReport, LabError> {
        let mut outcomes = vec![StopOutcome::NotRunning; self.processes.len()];
        for owners in [true, false] {
            let stage: Vec<usize> = (0..self.processes.len())
                .filter(|i| self.processes[*i].role.is_owner() == owners)
                .collect();
            let stopped = futures::future::try_join_all(
                stage
                    .iter()
                    .map(|i| self.processes[*i].record.stop(timeout)),
            )
            .await?;
            for (i, o) in stage.into_iter().zip(stopped) {
                outcomes[i] = o;
            }
        }
        if let Some(p) = self.processes.iter().find(|p| p.record.is_alive()) {
            return Err(LabError::StillRunning {
                name: p.record.name.clone(),
                pid: p.record.pid,
                within: timeout,
            });
        }
        self.remove_files()?;
        Ok(StopReport {
            processes: self.processes.iter().cloned().zip(outcomes).collect(),
        })
    }

    /// Remove what the lab created in its directory, the state file last,
    /// and the directory itself if the lab created it and it is now empty.
    /// A lab that keeps its files has only its state file removed.
    pub fn remove_files(&self) -> Result<(), LabError> {
        let entries: &[String] = if self.keep_files { &[] } else { &self.entries };
        for name in entries {
            let path = self.dir.join(name);
            let result = if path.is_dir() {
                crate::scratch::remove_dir_all_if_exists(&path)
            } else {
                remove_file_if_exists(&path)
            };
            result.map_err(|e| LabError::io("remove", &path, e))?;
        }
        let path = Self::path(&self.dir);
        remove_file_if_exists(&path).map_err(|e| LabError::io("remove", &path, e))?;
        if self.created_dir && !self.keep_files {
            // Fails (and is left alone) if someone put other things there.
            let _ = std::fs::remove_dir(&self.dir);
        }
        Ok(())
    }
}

fn remove_file_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A single normal path component (no `/`, `..`, or absolute path), so a
/// tampered state file cannot make `down` remove anything outside the lab.
fn is_plain_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state file as `ezone lab up` wrote it before format 2.
    const FORMAT_1: &str = r#"{
  "format": 1,
  "dir": "/tmp/lab",
  "created_dir": true,
  "entries": ["etcd", "pg-beijing", "proxy"],
  "processes": [
    {"role": "proxy", "name": "fault proxy", "pid": 10, "start_time": 100,
     "stop_signal": "SIGTERM", "log": "/tmp/lab/proxy/proxy.log"},
    {"role": "postgres", "site": "beijing", "name": "postgres for site beijing",
     "pid": 11, "start_time": 101, "stop_signal": "SIGINT",
     "log": "/tmp/lab/pg-beijing/postgres.log"},
    {"role": "etcd", "name": "etcd member etcd0", "pid": 12, "start_time": null,
     "stop_signal": "SIGTERM", "log": "/tmp/lab/etcd/etcd0/etcd.log"}
  ],
  "info": {"etcd": ["http://127.0.0.1:1"],
           "sites": {"beijing": {"postgres": "host=127.0.0.1 port=5 user=postgres dbname=ezone"}},
           "wan": {}, "proxy_admin": "127.0.0.1:9"}
}"#;

    fn process(role: Role, site: Option<&str>, name: &str, pid: u32) -> LabProcess {
        LabProcess {
            role,
            site: site.map(str::to_string),
            record: ProcessRecord {
                name: name.to_string(),
                pid,
                start_time: Some(7),
                stop_signal: "SIGTERM".to_string(),
                log: PathBuf::from(format!("/tmp/{name}.log")),
            },
        }
    }

    #[test]
    fn format_1_files_still_load() {
        let s = LabState::parse(FORMAT_1).expect("format 1 loads");
        assert_eq!(s.format, 1);
        assert!(!s.keep_files, "format 1 never kept its files");
        assert_eq!(s.entries, ["etcd", "pg-beijing", "proxy"]);
        let roles: Vec<Role> = s.processes.iter().map(|p| p.role).collect();
        assert_eq!(roles, [Role::Proxy, Role::Postgres, Role::Etcd]);
        assert_eq!(s.processes[1].site.as_deref(), Some("beijing"));
        assert_eq!(s.processes[2].record.start_time, None);
    }

    #[test]
    fn format_2_round_trips_the_ensemble_and_the_demo() {
        let info = LabState::parse(FORMAT_1).expect("format 1 loads").info;
        let state = LabState::new(
            PathBuf::from("/tmp/demo"),
            false,
            Vec::new(),
            vec![
                process(Role::Router, Some("beijing"), "router beijing", 20),
                process(Role::Orders, Some("beijing"), "orders beijing", 21),
                process(Role::Replicator, Some("beijing"), "replicator beijing", 22),
                process(Role::Postgres, Some("beijing"), "postgres", 23),
            ],
            info,
            true,
        )
        .with_owner(process(Role::Demo, None, "ezone demo", 19));
        assert_eq!(state.format, 2);
        assert_eq!(state.processes[0].role, Role::Demo);
        let text = serde_json::to_string_pretty(&state).expect("serialize");
        assert!(text.contains(r#""role": "replicator""#), "{text}");
        assert!(text.contains(r#""role": "demo""#), "{text}");
        assert!(text.contains(r#""keep_files": true"#), "{text}");
        assert_eq!(LabState::parse(&text).expect("parses back"), state);
    }

    #[test]
    fn unknown_formats_are_named() {
        let newer = FORMAT_1.replace(r#""format": 1"#, r#""format": 3"#);
        let err = LabState::parse(&newer).expect_err("format 3 is refused");
        assert!(err.contains("format 3"), "{err}");
        assert!(err.contains("formats 1 to 2"), "{err}");
        let older = FORMAT_1.replace(r#""format": 1"#, r#""format": 0"#);
        assert!(LabState::parse(&older).is_err());
    }

    #[test]
    fn a_lab_that_keeps_its_files_loses_only_its_state_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("demo");
        std::fs::create_dir_all(dir.join("pg-beijing")).expect("mkdir");
        std::fs::write(dir.join("pg-beijing/postgres.log"), "log").expect("write");
        let info = LabState::parse(FORMAT_1).expect("format 1 loads").info;
        // Even if a (tampered) file lists entries, keep_files wins.
        let state = LabState::new(
            dir.clone(),
            true,
            vec!["pg-beijing".to_string()],
            Vec::new(),
            info,
            true,
        );
        state.save().expect("save");
        assert!(LabState::load(&dir).expect("load").is_some());
        state.remove_files().expect("remove files");
        assert!(
            LabState::load(&dir).expect("load").is_none(),
            "lab.json removed"
        );
        assert!(
            dir.join("pg-beijing/postgres.log").is_file(),
            "the log is kept"
        );

        let plain = LabState {
            keep_files: false,
            ..state
        };
        plain.remove_files().expect("remove files");
        assert!(
            !dir.join("pg-beijing").exists(),
            "a plain lab removes its entries"
        );
    }

    #[test]
    fn only_plain_names_are_removable() {
        assert!(is_plain_name("pg-beijing"));
        assert!(is_plain_name("etcd"));
        assert!(!is_plain_name("../etc"));
        assert!(!is_plain_name("/etc"));
        assert!(!is_plain_name("a/b"));
        assert!(!is_plain_name(".."));
        assert!(!is_plain_name(""));
    }
}
