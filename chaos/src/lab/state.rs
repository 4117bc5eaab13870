//! The state file of a detached lab (`DIR/lab.json`): which processes
//! `ezone lab up` left running (pid *and* start time, so a reused pid is
//! never signalled), what it created in `DIR`, and the lab's addresses.
//! `ezone lab status` reads it; `ezone lab down` stops what it lists,
//! checks the processes are gone and removes what the lab created, and
//! nothing else.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::info::LabInfo;
use super::LabError;
use crate::process::{ProcessRecord, StopOutcome};

/// The state file's name inside the lab directory.
pub const STATE_FILE: &str = "lab.json";
/// The state file format this code writes and reads.
const FORMAT: u32 = 1;

/// What a lab process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Etcd,
    Postgres,
    Proxy,
}

/// One recorded lab process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabProcess {
    pub role: Role,
    /// The site, for a Postgres.
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
    /// Processes, in the order they are stopped (proxy, Postgres, etcd).
    pub processes: Vec<LabProcess>,
    pub info: LabInfo,
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
    ) -> Self {
        LabState {
            format: FORMAT,
            dir,
            created_dir,
            entries,
            processes,
            info,
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
        let state: LabState = serde_json::from_str(&text).map_err(|e| LabError::BadState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if state.format != FORMAT {
            return Err(LabError::BadState {
                path,
                reason: format!("format {} (this ezone reads format {FORMAT})", state.format),
            });
        }
        if let Some(bad) = state.entries.iter().find(|e| !is_plain_name(e)) {
            return Err(LabError::BadState {
                path,
                reason: format!("entry {bad:?} is not a plain name inside the lab directory"),
            });
        }
        Ok(Some(state))
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
    /// `timeout`), check each is gone, then remove what the lab created.
    pub async fn stop(&self, timeout: Duration) -> Result<StopReport, LabError> {
        let outcomes =
            futures::future::try_join_all(self.processes.iter().map(|p| p.record.stop(timeout)))
                .await?;
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
    pub fn remove_files(&self) -> Result<(), LabError> {
        for name in &self.entries {
            let path = self.dir.join(name);
            let result = if path.is_dir() {
                super::scratch::remove_dir_all_if_exists(&path)
            } else {
                remove_file_if_exists(&path)
            };
            result.map_err(|e| LabError::io("remove", &path, e))?;
        }
        let path = Self::path(&self.dir);
        remove_file_if_exists(&path).map_err(|e| LabError::io("remove", &path, e))?;
        if self.created_dir {
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
