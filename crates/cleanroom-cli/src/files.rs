//! Files the command writes, whole or not at all: a temporary file beside the target
//! (owner-only, removed if dropped before it is committed), fsynced, renamed into place, and
//! the directory fsynced. A failure or a kill at any point leaves the target as it was.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The directory a file at `path` goes into.
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A file being written for `path`; it appears there only on [`AtomicFile::commit`].
pub struct AtomicFile {
    path: PathBuf,
    dir: PathBuf,
    tmp: tempfile::NamedTempFile,
}

impl AtomicFile {
    /// A new, empty, owner-only temporary file in `path`'s directory.
    pub fn beside(path: &Path) -> Result<Self> {
        let dir = parent_dir(path);
        let tmp = tempfile::NamedTempFile::new_in(&dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            dir,
            tmp,
        })
    }

    /// Where to write.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Fsyncs the file, renames it to the target (over an existing file only if `replace`),
    /// and fsyncs the directory.
    pub fn commit(self, replace: bool) -> Result<()> {
        let path = &self.path;
        self.tmp
            .as_file()
            .sync_all()
            .with_context(|| format!("cannot write {}", path.display()))?;
        if replace {
            self.tmp
                .persist(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        } else {
            self.tmp.persist_noclobber(path).with_context(|| {
                format!("cannot write {} (it may exist already)", path.display())
            })?;
        }
        #[cfg(unix)]
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
