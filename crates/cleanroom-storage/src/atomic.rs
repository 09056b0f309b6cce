//! Durable file system steps: fsync a file, rename it into place, fsync the directory.

use std::path::Path;

use crate::StorageError;

/// Flushes a directory entry to disk so a rename into it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    #[cfg(unix)]
    {
        let d = std::fs::File::open(dir)
            .map_err(StorageError::io(format!("opening {}", dir.display())))?;
        d.sync_all()
            .map_err(StorageError::io(format!("syncing {}", dir.display())))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Renames `from` to `to` (same file system) and makes the rename durable.
pub fn rename_durably(from: &Path, to: &Path) -> Result<(), StorageError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .map_err(StorageError::io(format!("creating {}", parent.display())))?;
    }
    std::fs::rename(from, to).map_err(StorageError::io(format!(
        "moving dataset into {}",
        to.display()
    )))?;
    if let Some(parent) = to.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}
