//! Durable file system steps: fsync a file, rename it into place, fsync the directory.

use std::path::Path;

use crate::StorageError;

/// Flushes a directory entry to disk so a rename into it survives a crash.
///
/// The parent of a bare file name (`key.hex`) is the empty path: that is the current directory.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_of_a_bare_file_name_is_the_current_directory() {
        let parent = Path::new("key.hex").parent().unwrap();
        assert!(parent.as_os_str().is_empty());
        sync_dir(parent).unwrap();
    }
}
