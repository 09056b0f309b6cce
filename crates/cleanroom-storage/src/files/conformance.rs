//! The conformance suite every [`DatasetFiles`] backend must pass: the local directory (in this
//! crate's tests) and S3 (in `cleanroom-objstore`'s). Each function takes a backend over an
//! empty root of its own and panics, naming the broken promise, when the backend breaks one.
//! A backend's test module calls [`crate::every_files_conformance_test`] so that a new check
//! runs on every backend at once.

use std::io::{Read, Write};
use std::sync::Arc;

use cleanroom_core::ids::{CollaborationId, DatasetId};
use parquet::file::reader::ChunkReader;

use super::{ChunkSource, DatasetFiles};

/// Calls `$make!(check, …)` with every check of the suite.
#[macro_export]
macro_rules! every_files_conformance_test {
    ($make:ident) => {
        $make!(
            write_commit_read_round_trip,
            invisible_until_commit,
            dropped_write_leaves_nothing,
            second_commit_replaces_the_first,
            remove_says_whether_there_was_a_file,
            remove_collaboration_touches_only_its_own,
            probe_succeeds,
            large_files_round_trip_in_parts,
            concurrent_writes_all_land,
            sequential_reads_from_any_offset,
        );
    };
}

/// Bytes that are not all alike, so a misplaced range shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn write(files: &dyn DatasetFiles, c: CollaborationId, d: DatasetId, data: &[u8]) -> u64 {
    let mut w = files.begin_write(c, d).expect("begin_write");
    // Uneven pieces, as a Parquet writer hands them over.
    for piece in data.chunks(7_919) {
        w.write_all(piece).expect("write");
    }
    w.commit().expect("commit")
}

fn read_all(files: &dyn DatasetFiles, c: CollaborationId, d: DatasetId) -> Vec<u8> {
    let r = files.open_read(c, d).expect("open_read");
    let len = usize::try_from(r.len()).expect("size fits memory");
    r.read_range(0, len).expect("read_range").to_vec()
}

fn listed(files: &dyn DatasetFiles) -> Vec<(CollaborationId, DatasetId, u64)> {
    let mut v: Vec<_> = files
        .list()
        .expect("list")
        .into_iter()
        .map(|f| (f.collab, f.dataset, f.bytes))
        .collect();
    v.sort();
    v
}

pub fn write_commit_read_round_trip(files: &dyn DatasetFiles) {
    let (c, d) = (CollaborationId::new(), DatasetId::new());
    let data = pattern(100_003, 1);
    assert_eq!(write(files, c, d, &data), data.len() as u64, "commit size");
    let r = files.open_read(c, d).expect("open_read");
    assert_eq!(r.len(), data.len() as u64, "len");
    assert_eq!(&r.read_range(0, data.len()).unwrap()[..], &data[..]);
    assert_eq!(&r.read_range(4_096, 10).unwrap()[..], &data[4_096..4_106]);
    // A range past the end is cut at the end.
    assert_eq!(
        &r.read_range(100_000, 50).unwrap()[..],
        &data[100_000..],
        "range past the end"
    );
    assert_eq!(listed(files), vec![(c, d, data.len() as u64)], "list");
}

pub fn invisible_until_commit(files: &dyn DatasetFiles) {
    let (c, d) = (CollaborationId::new(), DatasetId::new());
    let mut w = files.begin_write(c, d).expect("begin_write");
    w.write_all(&pattern(50_000, 2)).unwrap();
    w.flush().unwrap();
    assert!(listed(files).is_empty(), "an uncommitted write is listed");
    assert!(
        files.open_read(c, d).is_err(),
        "an uncommitted write can be read"
    );
    w.commit().expect("commit");
    assert_eq!(read_all(files, c, d), pattern(50_000, 2));
}

pub fn dropped_write_leaves_nothing(files: &dyn DatasetFiles) {
    let (c, d) = (CollaborationId::new(), DatasetId::new());
    let mut w = files.begin_write(c, d).expect("begin_write");
    w.write_all(&pattern(20_000, 3)).unwrap();
    drop(w);
    assert!(listed(files).is_empty(), "a dropped write is listed");
    assert!(
        files.open_read(c, d).is_err(),
        "a dropped write can be read"
    );
    files.remove_unfinished().expect("remove_unfinished");
    assert!(listed(files).is_empty());
}

pub fn second_commit_replaces_the_first(files: &dyn DatasetFiles) {
    let (c, d) = (CollaborationId::new(), DatasetId::new());
    write(files, c, d, &pattern(30_000, 4));
    write(files, c, d, &pattern(12_345, 5));
    assert_eq!(read_all(files, c, d), pattern(12_345, 5));
    assert_eq!(listed(files), vec![(c, d, 12_345)]);
}

pub fn remove_says_whether_there_was_a_file(files: &dyn DatasetFiles) {
    let (c, d) = (CollaborationId::new(), DatasetId::new());
    assert!(
        !files.remove(c, d).expect("remove missing"),
        "removed nothing"
    );
    write(files, c, d, b"PAR1 not really");
    assert!(files.remove(c, d).expect("remove"), "removed the file");
    assert!(files.open_read(c, d).is_err(), "readable after remove");
    assert!(!files.remove(c, d).expect("remove again"));
    assert!(listed(files).is_empty());
}

pub fn remove_collaboration_touches_only_its_own(files: &dyn DatasetFiles) {
    let (a, b) = (CollaborationId::new(), CollaborationId::new());
    let (a1, a2, b1) = (DatasetId::new(), DatasetId::new(), DatasetId::new());
    write(files, a, a1, &pattern(1_000, 6));
    write(files, a, a2, &pattern(2_000, 7));
    write(files, b, b1, &pattern(3_000, 8));
    assert_eq!(
        files.remove_collaboration(a).expect("remove_collaboration"),
        2
    );
    assert_eq!(listed(files), vec![(b, b1, 3_000)]);
    assert_eq!(read_all(files, b, b1), pattern(3_000, 8));
    assert_eq!(files.remove_collaboration(a).expect("again"), 0);
}

pub fn probe_succeeds(files: &dyn DatasetFiles) {
    files.probe().expect("probe");
    assert!(listed(files).is_empty(), "the probe left a file");
}

/// Larger than two parts of any multipart backend (S3 parts are at least 5 MiB).
pub fn large_files_round_trip_in_parts(files: &dyn DatasetFiles) {
    let (c, d) = (CollaborationId::new(), DatasetId::new());
    let data = pattern(17 * 1024 * 1024 + 13, 9);
    assert_eq!(write(files, c, d, &data), data.len() as u64);
    let got = read_all(files, c, d);
    assert!(got == data, "a large file came back different");
}

pub fn concurrent_writes_all_land(files: &dyn DatasetFiles) {
    let c = CollaborationId::new();
    let ids: Vec<DatasetId> = (0..6).map(|_| DatasetId::new()).collect();
    std::thread::scope(|s| {
        for (i, d) in ids.iter().enumerate() {
            s.spawn(move || write(files, c, *d, &pattern(10_000 + i, i as u8)));
        }
    });
    assert_eq!(listed(files).len(), ids.len());
    for (i, d) in ids.iter().enumerate() {
        assert_eq!(read_all(files, c, *d), pattern(10_000 + i, i as u8));
    }
}

/// Parquet reads a file both by ranges and sequentially from an offset ([`ChunkSource`]).
pub fn sequential_reads_from_any_offset(files: &dyn DatasetFiles) {
    let (c, d) = (CollaborationId::new(), DatasetId::new());
    let data = pattern(3 * 1024 * 1024 + 7, 10);
    write(files, c, d, &data);
    let src = ChunkSource(Arc::clone(&files.open_read(c, d).unwrap()));
    for start in [0u64, 1, 1_048_575, 3 * 1024 * 1024] {
        let mut out = Vec::new();
        src.get_read(start)
            .unwrap()
            .read_to_end(&mut out)
            .expect("sequential read");
        assert!(
            out[..] == data[start as usize..],
            "sequential read from {start}"
        );
    }
    assert_eq!(&src.get_bytes(17, 100).unwrap()[..], &data[17..117]);
    assert!(
        src.get_bytes(data.len() as u64 - 10, 20).is_err(),
        "a short read must be an error, not silently short"
    );
}
