//! The file store: the whole topology in one TOML or JSON file, for a laptop
//! with no etcd. Writes go to a temp file that is renamed over the original,
//! so a reader never sees half a file; a sibling `.write-lock` file serialises
//! writers and a `.lock.NAME` file carries operator locks.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::watch;

use crate::doc::{load_stored_file, DocError, TopologyDoc};
use crate::history::{self, EpochEntry, Transition};
use crate::model::{Epoch, Shard, Topology};
use crate::store::lock::{Held, LockGuard, LockInfo};
use crate::store::{cas_successor, Snapshot, StoreError, TopologyStore, Version};

/// The topology in a file.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.shown(),
            source,
        }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        self.path.with_file_name(name)
    }

    /// Where operation record `name` lives: `FILE.ops/NAME.json`, with the
    /// `/` of the name spelled `__`.
    fn op_path(&self, name: &str) -> PathBuf {
        self.sibling(".ops")
            .join(format!("{}.json", name.replace('/', "__")))
    }

    /// The file's version: its modification time in ms since the Unix epoch.
    pub(crate) fn version(&self) -> Result<Option<Version>, StoreError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => {
                let mtime = m.modified().map_err(|e| self.io(e))?;
                let ms = mtime
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                Ok(Some(i64::try_from(ms).unwrap_or(i64::MAX)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    fn load_sync(&self) -> Result<Snapshot, StoreError> {
        let Some(version) = self.version()? else {
            return Err(StoreError::NotInitialized {
                store: self.describe(),
            });
        };
        let topology = load_stored_file(&self.path).map_err(|e| match e {
            DocError::Read { source, .. } => self.io(source),
            DocError::Invalid { invalid, .. } => StoreError::Invalid(invalid),
            DocError::Parse {
                path,
                format,
                message,
            } => StoreError::Corrupt {
                store: self.describe(),
                key: path,
                what: format,
                detail: message,
            },
        })?;
        Ok(Snapshot {
            version,
            topology: topology.into(),
        })
    }

    fn write_sync(&self, t: &Topology) -> Result<Version, StoreError> {
        let doc = TopologyDoc::from(t);
        let text = if self.shown().ends_with(".toml") {
            toml::to_string_pretty(&doc).map_err(|e| self.io(std::io::Error::other(e)))?
        } else {
            serde_json::to_string_pretty(&doc).map_err(|e| self.io(std::io::Error::other(e)))?
        };
        let tmp = self.sibling(".tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(text.as_bytes()).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        Ok(self.version()?.unwrap_or(0))
    }

    /// Serialises writers (blocking `flock`, held for one read-modify-write).
    fn write_lock(&self) -> Result<Flock<std::fs::File>, StoreError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.sibling(".write-lock"))
            .map_err(|e| self.io(e))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| self.io(e.into()))
    }
}

impl TopologyStore for FileStore {
    fn describe(&self) -> String {
        format!("file {}", self.shown())
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.load_sync()
    }

    async fn init(&self, topology: &Topology, force: bool) -> Result<Version, StoreError> {
        crate::validate::validate(topology).map_err(StoreError::Invalid)?;
        let _w = self.write_lock()?;
        match self.load_sync() {
            Ok(current) if force => {
                crate::validate::validate_transition(&current.topology, topology)
                    .map_err(StoreError::Invalid)?;
            }
            Ok(_) => {
                return Err(StoreError::AlreadyInitialized {
                    store: self.describe(),
                })
            }
            Err(StoreError::NotInitialized { .. }) => {}
            Err(_) if force => {}
            Err(e) => return Err(e),
        }
        // Each shard's first epoch in the history (an epoch that has an
        // entry already keeps it).
        for shard in topology.shards.values() {
            let name = history::entry_name(shard.id, shard.epoch);
            if self.read_op(&name).await?.is_none() {
                let entry = serde_json::to_vec(&EpochEntry::for_swap(shard, Transition::Init))
                    .unwrap_or_default();
                self.write_op(&name, &entry).await?;
            }
        }
        self.write_sync(topology)
    }

    async fn cas_shard_as(
        &self,
        expected_epoch: Epoch,
        next: &Shard,
        how: Transition,
    ) -> Result<Version, StoreError> {
        let _w = self.write_lock()?;
        let current = self.load_sync()?;
        let successor = cas_successor(&self.describe(), &current.topology, expected_epoch, next)?;
        // The history entry first: an epoch must never be visible without
        // it (an entry for an epoch that then failed to land is harmless:
        // the epoch can only be taken by this swap, under the write lock).
        let entry = serde_json::to_vec(&EpochEntry::for_swap(next, how)).unwrap_or_default();
        self.write_op(&history::entry_name(next.id, next.epoch), &entry)
            .await?;
        self.write_sync(&successor)
    }

    async fn lock(
        &self,
        name: &str,
        holder: &str,
        _ttl: Duration,
    ) -> Result<LockGuard, StoreError> {
        let path = self.sibling(&format!(".lock.{name}"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| self.io(e))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(mut flock) => {
                let info = serde_json::to_vec(&LockInfo::now(holder)).unwrap_or_default();
                flock.set_len(0).map_err(|e| self.io(e))?;
                flock.write_all(&info).map_err(|e| self.io(e))?;
                // The kernel drops the flock when the holder dies: never lost
                // while we live.
                let (never_lost, lost) = watch::channel(false);
                Ok(LockGuard::new(
                    name,
                    Held::File {
                        _flock: flock,
                        _never_lost: never_lost,
                    },
                    lost,
                ))
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok())
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "another process".to_string());
                Err(StoreError::Locked {
                    name: name.to_string(),
                    holder,
                })
            }
            Err((_, e)) => Err(self.io(e.into())),
        }
    }

    async fn read_op(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(self.op_path(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    async fn write_op(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let dir = self.sibling(".ops");
        std::fs::create_dir_all(&dir).map_err(|e| self.io(e))?;
        let path = self.op_path(name);
        // Temp file + rename: a reader never sees half a record.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, value).map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.io(e))
    }

    async fn delete_op(&self, name: &str) -> Result<(), StoreError> {
        match std::fs::remove_file(self.op_path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    async fn list_ops(
        &self,
        dir: &str,
    ) -> Result<std::collections::BTreeMap<String, Vec<u8>>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        let entries = match std::fs::read_dir(self.sibling(".ops")) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(self.io(e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| self.io(e))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = file.strip_suffix(".json") else {
                continue;
            };
            let name = stem.replace("__", "/");
            if name.starts_with(dir) {
                out.insert(name, std::fs::read(entry.path()).map_err(|e| self.io(e))?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::starter::starter;
    use crate::ShardState;

    #[tokio::test]
    async fn init_refuses_overwrite_and_cas_checks_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("topology.toml"));
        assert!(matches!(
            store.load().await,
            Err(StoreError::NotInitialized { .. })
        ));
        let t = starter(&["beijing", "shanghai"], 1);
        store.init(&t, false).await.unwrap();
        assert!(matches!(
            store.init(&t, false).await,
            Err(StoreError::AlreadyInitialized { .. })
        ));
        let mut s = t.shards[&1].clone();
        s.state = ShardState::Frozen;
        s.epoch = 2;
        store.cas_shard(1, &s).await.unwrap();
        let err = store.cas_shard(1, &s).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::StaleEpoch {
                    expected: 1,
                    found: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(store.load().await.unwrap().topology.shards[&1], s);
    }

    #[tokio::test]
    async fn lock_excludes_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("t.json"));
        let g = store
            .lock("shard-1", "alice", Duration::from_secs(5))
            .await
            .unwrap();
        let err = store
            .lock("shard-1", "bob", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("alice"), "{err}");
        g.release().await.unwrap();
        store
            .lock("shard-1", "bob", Duration::from_secs(5))
            .await
            .unwrap();
    }
}
