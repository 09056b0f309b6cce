//! The dataset-file conformance suite on the S3 backend: always against object_store's
//! in-memory store (this crate's own logic), and against a real S3-compatible server when
//! `CLEANROOM_TEST_S3=s3://bucket/prefix` and the `AWS_*` variables point at one (`.ci/services`
//! starts s3s-fs and prints them). Without it, each real-server test says SKIPPED loudly.

use std::sync::Arc;

use cleanroom_objstore::{S3Files, S3Url};

mod encrypted;

/// A runtime for the store's calls; the suite runs on the test's own thread, which may block.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A fresh prefix of the real server's bucket, or `None` (after saying so) without one.
pub fn real_s3(test: &str, rt: &tokio::runtime::Runtime) -> Option<S3Files> {
    let Ok(url) = std::env::var("CLEANROOM_TEST_S3") else {
        // Straight to the process's stderr: the harness captures `eprintln!` of passing
        // tests, and a skip must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: CLEANROOM_TEST_S3 not set — {test} not run against a real S3 server \
             (run `eval \"$(bash .ci/services)\"` first)"
        );
        return None;
    };
    let base = S3Url::parse(&url).expect("CLEANROOM_TEST_S3 is s3://bucket/prefix");
    let url = S3Url {
        // Short: s3s-fs (the CI's server) keeps an object's metadata in a file named after the
        // base64 of bucket and key, which must fit in 255 bytes.
        prefix: format!(
            "{}/{}",
            base.prefix,
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        )
        .trim_matches('/')
        .to_owned(),
        ..base
    };
    Some(S3Files::from_env(&url, rt.handle().clone()).expect("S3 client from the environment"))
}

/// An S3 backend over object_store's in-memory store, under a prefix.
pub fn in_memory(rt: &tokio::runtime::Runtime) -> S3Files {
    let url = S3Url::parse("s3://in-memory/some/prefix").unwrap();
    S3Files::with_store(
        Arc::new(object_store::memory::InMemory::new()),
        url,
        rt.handle().clone(),
    )
}

macro_rules! s3 {
    ($($check:ident),* $(,)?) => {
        mod in_memory_conformance {
            $(
                #[test]
                fn $check() {
                    let rt = super::runtime();
                    cleanroom_storage::files::conformance::$check(&super::in_memory(&rt));
                }
            )*
        }
        mod real_s3_conformance {
            $(
                #[test]
                fn $check() {
                    let rt = super::runtime();
                    if let Some(files) = super::real_s3(stringify!($check), &rt) {
                        cleanroom_storage::files::conformance::$check(&files);
                    }
                }
            )*
        }
    };
}

cleanroom_storage::every_files_conformance_test!(s3);
