//! A directory a lab part owns: a fresh temp dir (removed on drop), or a
//! directory the part created under a given parent (removed on drop too),
//! unless it is kept on purpose: [`ScratchDir::keep`] because detached
//! processes (`ezone lab up`) still use it, or [`ScratchDir::keep_files`]
//! because the operator wants its logs and data after the lab stopped
//! ([`crate::lab::LabSpec::keep_files`], `ezone demo --dir`).
//!
//! When the lab runs as root, Postgres runs as the `postgres` OS user, which
//! must be able to walk down to its data directory: a temp dir is created
//! `0700` by default, so [`ScratchDir::temp`] opens it to `0755` (it holds
//! nothing secret: throwaway test data on loopback).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::error::LabError;

/// A directory removed when dropped (or by [`ScratchDir::remove`]), unless
/// kept.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    kind: Kind,
    /// Never removed by this handle (drop and `remove` leave it).
    kept: bool,
}

#[derive(Debug)]
enum Kind {
    /// A `tempfile` dir; removed by its own drop (`None` once kept).
    Temp(Option<TempDir>),
    /// A dir we created with `create_dir_all`; removed by our drop.
    Created,
}

impl ScratchDir {
    /// A fresh, world-searchable temp dir named `ezone-<prefix>-<random suffix>`.
    pub fn temp(prefix: &str) -> Result<Self, LabError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ezone-{prefix}-"))
            .tempdir()
            .map_err(|e| LabError::io("create a temp dir in", std::env::temp_dir(), e))?;
        let path = dir.path().to_path_buf();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(|e| LabError::io("chmod 0755", &path, e))?;
        Ok(ScratchDir {
            path,
            kind: Kind::Temp(Some(dir)),
            kept: false,
        })
    }

    /// `path` itself, created (with parents) if missing, `0755`. It is
    /// removed on drop (with everything in it), so it must not hold anything
    /// yet: an existing non-empty directory is refused rather than adopted.
    pub fn create(path: &Path) -> Result<Self, LabError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| LabError::io("create directory", parent, e))?;
        }
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let empty = fs::read_dir(path)
                    .map_err(|e| LabError::io("list directory", path, e))?
                    .next()
                    .is_none();
                if !empty {
                    return Err(LabError::io(
                        "use directory",
                        path,
                        std::io::Error::other(
                            "it exists and is not empty (left by an earlier lab, or kept by an \
                             earlier `ezone demo --dir`?); if a lab still runs there, stop it \
                             with `ezone lab down --dir <its directory>`, else remove the \
                             directory or use another one",
                        ),
                    ));
                }
            }
            Err(e) => return Err(LabError::io("create directory", path, e)),
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(|e| LabError::io("chmod 0755", path, e))?;
        Ok(ScratchDir {
            path: path.to_path_buf(),
            kind: Kind::Created,
            kept: false,
        })
    }

    /// A new temp dir if `parent` is `None`, else `parent/name` created.
    pub fn temp_or_under(parent: Option<&Path>, name: &str) -> Result<Self, LabError> {
        match parent {
            None => Self::temp(name),
            Some(p) => Self::create(&p.join(name)),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep the directory on disk: drop no longer removes it.
    pub fn keep(mut self) -> PathBuf {
        self.mark_kept();
        self.path.clone()
    }

    /// With `keep`, the directory stays on disk whatever happens to this
    /// handle: dropped or [`ScratchDir::remove`]d, it leaves the directory
    /// and everything in it. Without, nothing changes.
    pub fn keep_files(mut self, keep: bool) -> Self {
        if keep {
            self.mark_kept();
        }
        self
    }

    fn mark_kept(&mut self) {
        self.kept = true;
        if let Kind::Temp(dir) = &mut self.kind {
            if let Some(d) = dir.take() {
                let _ = d.keep();
            }
        }
    }

    /// Remove the directory now, reporting a failure (drop ignores it). A
    /// kept directory is left as it is.
    pub fn remove(mut self) -> Result<(), LabError> {
        if self.kept {
            return Ok(());
        }
        // Whatever happens below, drop has nothing left to do.
        self.kept = true;
        let result = match &mut self.kind {
            Kind::Temp(dir) => match dir.take() {
                Some(d) => d.close(),
                None => Ok(()),
            },
            Kind::Created => remove_dir_all_if_exists(&self.path),
        };
        result.map_err(|e| LabError::io("remove directory", &self.path, e))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let (Kind::Created, false) = (&self.kind, self.kept) {
            if let Err(e) = remove_dir_all_if_exists(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "Cannot remove lab directory.");
            }
        }
        // Kind::Temp removes itself when the TempDir drops (unless kept:
        // then it was taken out).
    }
}

/// `remove_dir_all` that treats "already gone" as success.
pub(crate) fn remove_dir_all_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_dirs_survive_drop_and_remove() {
        let parent = tempfile::tempdir().expect("tempdir");
        let path = parent.path().join("kept");
        let d = ScratchDir::create(&path).expect("create").keep_files(true);
        fs::write(path.join("x.log"), "a log").expect("write");
        d.remove().expect("remove a kept dir");
        assert!(path.join("x.log").is_file(), "remove took a kept dir");
        drop(ScratchDir::create(&parent.path().join("other")).expect("create"));
        let d = ScratchDir::create(&parent.path().join("kept2"))
            .expect("create")
            .keep_files(true);
        drop(d);
        assert!(parent.path().join("kept2").is_dir(), "drop took a kept dir");
        assert!(
            !parent.path().join("other").exists(),
            "drop keeps a plain dir"
        );

        let t = ScratchDir::temp("keep-test")
            .expect("temp")
            .keep_files(true);
        let tp = t.path().to_path_buf();
        drop(t);
        assert!(tp.is_dir(), "drop took a kept temp dir");
        fs::remove_dir_all(&tp).expect("clean up");

        let t = ScratchDir::temp("keep-test")
            .expect("temp")
            .keep_files(false);
        let tp = t.path().to_path_buf();
        t.remove().expect("remove");
        assert!(!tp.exists());
    }

    #[test]
    fn a_non_empty_dir_is_refused_with_the_way_out() {
        let parent = tempfile::tempdir().expect("tempdir");
        let path = parent.path().join("etcd");
        fs::create_dir(&path).expect("mkdir");
        fs::write(path.join("etcd.log"), "old").expect("write");
        let err = ScratchDir::create(&path).expect_err("non-empty must be refused");
        let msg = err.to_string();
        assert!(msg.contains("not empty"), "{msg}");
        assert!(msg.contains("remove the directory"), "{msg}");
        assert!(
            path.join("etcd.log").is_file(),
            "the refusal touched nothing"
        );
    }
}
