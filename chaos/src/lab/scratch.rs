//! A directory a lab part owns: a fresh temp dir (removed on drop), or a
//! directory the part created under a given parent (removed on drop too),
//! unless it is kept on purpose ([`ScratchDir::keep`]) because detached
//! processes (`ezone lab up`) still use it.
//!
//! When the lab runs as root, Postgres runs as the `postgres` OS user, which
//! must be able to walk down to its data directory: a temp dir is created
//! `0700` by default, so [`ScratchDir::temp`] opens it to `0755` (it holds
//! nothing secret: throwaway test data on loopback).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::LabError;

/// A directory removed when dropped, unless kept.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A `tempfile` dir; removed by its own drop.
    Temp(Option<TempDir>),
    /// A dir we created with `create_dir_all`; removed by our drop.
    Created { remove: bool },
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
                            "it exists and is not empty (left by an earlier lab?); \
                             stop that lab with `ezone lab down` or remove the directory",
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
            kind: Kind::Created { remove: true },
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
        match &mut self.kind {
            Kind::Temp(dir) => {
                if let Some(d) = dir.take() {
                    let _ = d.keep();
                }
            }
            Kind::Created { remove } => *remove = false,
        }
        self.path.clone()
    }

    /// Remove the directory now, reporting a failure (drop ignores it).
    pub fn remove(mut self) -> Result<(), LabError> {
        let result = match &mut self.kind {
            Kind::Temp(dir) => match dir.take() {
                Some(d) => d.close(),
                None => Ok(()),
            },
            Kind::Created { remove } => {
                *remove = false;
                remove_dir_all_if_exists(&self.path)
            }
        };
        result.map_err(|e| LabError::io("remove directory", &self.path, e))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Kind::Created { remove: true } = self.kind {
            if let Err(e) = remove_dir_all_if_exists(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "Cannot remove lab directory.");
            }
        }
        // Kind::Temp removes itself when the TempDir drops.
    }
}

/// `remove_dir_all` that treats "already gone" as success.
pub(crate) fn remove_dir_all_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
