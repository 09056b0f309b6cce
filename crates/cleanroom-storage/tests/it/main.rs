//! The dataset-file conformance suite on the local directory backend, and what only the local
//! backend promises (no write leaves a file in `tmp/`).

use cleanroom_storage::LocalFiles;
use cleanroom_storage::files::conformance;

macro_rules! local {
    ($($check:ident),* $(,)?) => {
        mod local_conformance {
            use super::*;
            $(
                #[test]
                fn $check() {
                    let dir = tempfile::tempdir().unwrap();
                    let files = LocalFiles::open(dir.path()).unwrap();
                    conformance::$check(&files);
                    // Whatever the check did, nothing unfinished is left behind.
                    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
                    assert!(tmp.is_empty(), "{} left {} file(s) in tmp/", stringify!($check), tmp.len());
                }
            )*
        }
    };
}

cleanroom_storage::every_files_conformance_test!(local);

#[test]
fn a_crash_mid_write_leaves_only_tmp_files_that_start_up_removes() {
    use cleanroom_core::ids::{CollaborationId, DatasetId};
    use cleanroom_storage::DatasetFiles;
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let files = LocalFiles::open(dir.path()).unwrap();
    let (c, d) = (CollaborationId::new(), DatasetId::new());
    let mut w = files.begin_write(c, d).unwrap();
    w.write_all(&[7u8; 4096]).unwrap();
    w.flush().unwrap();
    // A crash: the process dies without dropping the write.
    std::mem::forget(w);
    assert!(files.list().unwrap().is_empty(), "visible before commit");
    assert_eq!(files.remove_unfinished().unwrap(), 1);
    assert!(files.open_read(c, d).is_err());
}
