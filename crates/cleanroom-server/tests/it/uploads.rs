//! Uploads over HTTP: formats, precise errors, limits, races, restarts, crypto-shredding.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use arrow::array::{Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use cleanroom_service::Limits;
use reqwest::{Method, StatusCode};
use tower::ServiceExt;

use crate::{Server, csv};

async fn setup(s: &Server) -> (String, String, String) {
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let id = s.collab(&brand, &publisher, &["contribute"]).await;
    (brand, publisher, id)
}

#[tokio::test]
async fn bad_csv_gets_line_column_and_expected_type() {
    let s = Server::start().await;
    let (brand, _, id) = setup(&s).await;
    s.declare(&brand, &id, "crm").await;
    let mut big = String::from("pid,email_hmac,city,n\np1,h1,");
    big.push_str(&"x".repeat(10 * 1024 * 1024));
    big.push_str(",1\n");
    let mut bad_utf8 = b"pid,email_hmac,city,n\np1,h1,ok,1\np2,h2,".to_vec();
    bad_utf8.extend_from_slice(&[0xc3, 0x28]);
    bad_utf8.extend_from_slice(b",2\n");
    /// Body, expected line, expected column, expected words in the detail.
    type Case<'a> = (Vec<u8>, Option<u64>, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            format!("{}p9,h9,c,nine\n", csv(4)).into_bytes(),
            Some(6),
            Some("4 (n)"),
            "expected an int64",
        ),
        (
            big.into_bytes(),
            Some(2),
            Some("3 (city)"),
            "field is 10485760 bytes long",
        ),
        (bad_utf8, Some(3), Some("3 (city)"), "not valid UTF-8"),
        (b"".to_vec(), None, None, "the file is empty"),
        (
            b"pid,email_hmac,city\np,h,c\n".to_vec(),
            Some(1),
            None,
            "missing declared column(s): n",
        ),
        (
            b"pid,email_hmac,city,n,ssn\n".to_vec(),
            Some(1),
            None,
            "undeclared column(s): ssn",
        ),
        (
            b"pid,email_hmac,city,n\np,h,c\n".to_vec(),
            Some(2),
            None,
            "expected 4 fields, found 3",
        ),
        (
            b"pid,email_hmac,city,n\np,\"h,c,1\nq,h,c,2\n".to_vec(),
            Some(2),
            None,
            "missing its closing quote",
        ),
    ];
    for (body, line, column, needle) in cases {
        let (st, v) = s.upload(&brand, &id, "crm", "text/csv", body).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["code"], "invalid_data", "{v}");
        assert_eq!(v["line"].as_u64(), line, "{v}");
        assert_eq!(v["column"].as_str(), column, "{v}");
        assert!(v["detail"].as_str().unwrap().contains(needle), "{v}");
    }
    // Nothing was kept and the dataset can still be uploaded.
    let d = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/datasets/crm"),
            &brand,
            None,
        )
        .await;
    assert_eq!(d["status"], "pending");
    let (st, v) = s.upload(&brand, &id, "crm", "text/csv", csv(10)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["row_count"], 10);
}

#[tokio::test]
async fn names_media_types_and_sizes_are_checked() {
    let s = Server::start_with(Limits {
        max_upload_bytes: 4096,
        max_parquet_bytes: 1024,
        ..Limits::default()
    })
    .await;
    let (brand, _, id) = setup(&s).await;
    let (st, v) = s.declare(&brand, &id, "../../etc").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input"))
    );
    let (st, v) = s
        .upload(&brand, &id, "..%2F..%2Fetc", "text/csv", csv(1))
        .await;
    assert!(
        st == StatusCode::BAD_REQUEST || st == StatusCode::NOT_FOUND,
        "{st} {v}"
    );
    s.declare(&brand, &id, "crm").await;
    let (st, v) = s
        .upload(&brand, &id, "crm", "application/json", csv(1))
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    // Over the size limit: 413 for every format, as for Parquet below.
    let (st, v) = s.upload(&brand, &id, "crm", "text/csv", csv(500)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")),
        "{v}"
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("exceeds the server's limit of 4096 bytes"),
        "{v}"
    );
    let (st, v) = s
        .upload(
            &brand,
            &id,
            "crm",
            "application/vnd.apache.arrow.stream",
            arrow_stream(&batch()),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")),
        "{v}"
    );
    let (st, v) = s
        .upload(
            &brand,
            &id,
            "crm",
            "application/vnd.apache.parquet",
            vec![0u8; 4000],
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    let d = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/datasets/crm"),
            &brand,
            None,
        )
        .await;
    assert_eq!(d["status"], "pending");
    let tmp = s.dir.path().join("data/tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
}

fn batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("pid", DataType::Utf8, false),
        Field::new("email_hmac", DataType::Utf8, true),
        Field::new("city", DataType::Utf8, true),
        Field::new("n", DataType::Int32, true),
    ]));
    let pid: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(pid.clone())),
            Arc::new(StringArray::from(pid)),
            Arc::new(StringArray::from(vec!["x"; 1000])),
            Arc::new(Int32Array::from((0..1000).collect::<Vec<i32>>())),
        ],
    )
    .unwrap()
}

fn arrow_stream(b: &RecordBatch) -> Vec<u8> {
    let mut ipc = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &b.schema()).unwrap();
    w.write(b).unwrap();
    w.finish().unwrap();
    drop(w);
    ipc
}

fn parquet_file(b: &RecordBatch) -> Vec<u8> {
    let mut pq = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut pq, b.schema(), None).unwrap();
    w.write(b).unwrap();
    w.close().unwrap();
    pq
}

/// A request body that notes when the server first reads it, then fails (`fail`) or never
/// yields anything (a client that stalls).
fn tripwire(fail: bool) -> (axum::body::Body, Arc<AtomicBool>) {
    let read = Arc::new(AtomicBool::new(false));
    let seen = read.clone();
    let stream = futures_util::stream::poll_fn(move |_| {
        seen.store(true, Ordering::SeqCst);
        if fail {
            Poll::Ready(Some(Err::<Bytes, _>(std::io::Error::other(
                "the body was read",
            ))))
        } else {
            Poll::Pending
        }
    });
    (axum::body::Body::from_stream(stream), read)
}

/// An upload request for the in-process router.
fn put_data(
    token: &str,
    collab: &str,
    name: &str,
    media: &str,
    body: axum::body::Body,
) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::builder()
        .method("PUT")
        .uri(format!("/v1/collaborations/{collab}/datasets/{name}/data"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", media)
        .body(body)
        .unwrap()
}

async fn answer(resp: axum::response::Response) -> (StatusCode, serde_json::Value) {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

const PARQUET: &str = "application/vnd.apache.parquet";

/// A Parquet body is spooled to disk (sealed) before it is read, so the upload is authorised
/// before a byte of it is read: a refused upload never touches its body.
#[tokio::test]
async fn parquet_uploads_are_authorised_before_the_body_is_read() {
    let s = Server::start().await;
    let (brand, publisher, id) = setup(&s).await;
    let outsider = s.org("outsider").await;
    s.declare(&brand, &id, "crm").await;
    let app = cleanroom_server::app(s.room.clone());
    for (who, token, status) in [
        ("an outsider", &outsider, StatusCode::NOT_FOUND),
        (
            "a member that does not own the dataset",
            &publisher,
            StatusCode::NOT_FOUND,
        ),
        (
            "a bad token",
            &"crt_nonsense".to_owned(),
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let (body, read) = tripwire(true);
        let resp = app
            .clone()
            .oneshot(put_data(token, &id, "crm", PARQUET, body))
            .await
            .unwrap();
        let (st, v) = answer(resp).await;
        assert_eq!(st, status, "{who}: {v}");
        assert!(!read.load(Ordering::SeqCst), "{who}: the body was read");
    }
    // Uploaded already: refused as a conflict, again without reading.
    let (st, _) = s
        .upload(&brand, &id, "crm", PARQUET, parquet_file(&batch()))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (body, read) = tripwire(true);
    let resp = app
        .clone()
        .oneshot(put_data(&brand, &id, "crm", PARQUET, body))
        .await
        .unwrap();
    let (st, v) = answer(resp).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    assert!(!read.load(Ordering::SeqCst));
    // The owner's upload does read it (so the tripwire works), and fails with it.
    s.declare(&brand, &id, "next").await;
    let (body, read) = tripwire(true);
    let resp = app
        .clone()
        .oneshot(put_data(&brand, &id, "next", PARQUET, body))
        .await
        .unwrap();
    let (st, v) = answer(resp).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(read.load(Ordering::SeqCst));
}

/// At most `max_parquet_uploads` Parquet bodies are spooled and decoded at once; one more is refused at once
/// with 503 and audited, and the slot is free again when an upload ends.
#[tokio::test]
async fn parquet_uploads_beyond_the_slots_are_refused_with_503() {
    let s = Server::start_with(Limits {
        max_parquet_uploads: 1,
        ..Limits::default()
    })
    .await;
    let (brand, _, id) = setup(&s).await;
    s.declare(&brand, &id, "slow").await;
    s.declare(&brand, &id, "crm").await;
    let app = cleanroom_server::app(s.room.clone());
    // A client that starts a Parquet upload and stalls: it holds the only slot.
    let (body, read) = tripwire(false);
    let stalled = tokio::spawn(
        app.clone()
            .oneshot(put_data(&brand, &id, "slow", PARQUET, body)),
    );
    let start = std::time::Instant::now();
    while !read.load(Ordering::SeqCst) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the stalled upload never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pq = parquet_file(&batch());
    let (st, v) = s.upload(&brand, &id, "crm", PARQUET, pq.clone()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap().contains("retry"), "{v}");
    let log = crate::audit_after(&s, &brand, &id, 0).await;
    assert!(
        crate::refused(&log, "dataset.upload", "unavailable", "failed"),
        "{log:#?}"
    );
    // CSV and Arrow streams need no slot.
    s.declare(&brand, &id, "streamed").await;
    let (st, v) = s
        .upload(
            &brand,
            &id,
            "streamed",
            "application/vnd.apache.arrow.stream",
            arrow_stream(&batch()),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // The stalled client goes away: its slot is free again.
    stalled.abort();
    assert!(stalled.await.unwrap_err().is_cancelled());
    let (st, v) = s.upload(&brand, &id, "crm", PARQUET, pq).await;
    assert_eq!(
        (st, v["row_count"].as_u64()),
        (StatusCode::OK, Some(1000)),
        "{v}"
    );
}

/// A body that stops sending fails after the idle timeout; the dataset returns to pending.
#[tokio::test]
async fn an_upload_that_stalls_fails_after_the_idle_timeout() {
    let s = Server::start_with(Limits {
        upload_idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let (brand, _, id) = setup(&s).await;
    let app = cleanroom_server::app(s.room.clone());
    for (name, media) in [("crm", "text/csv"), ("pq", PARQUET)] {
        s.declare(&brand, &id, name).await;
        let first = Bytes::from(csv(100));
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(first)])
            .chain(futures_util::stream::pending());
        let req = put_data(
            &brand,
            &id,
            name,
            media,
            axum::body::Body::from_stream(stream),
        );
        let resp = tokio::time::timeout(Duration::from_secs(60), app.clone().oneshot(req))
            .await
            .expect("the stalled upload was never given up")
            .unwrap();
        let (st, v) = answer(resp).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_input")),
            "{v}"
        );
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("no data arrived for 1 s"),
            "{v}"
        );
        let d = s
            .ok(
                Method::GET,
                &format!("/v1/collaborations/{id}/datasets/{name}"),
                &brand,
                None,
            )
            .await;
        assert_eq!(d["status"], "pending");
    }
    assert_eq!(
        std::fs::read_dir(s.dir.path().join("data/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn parquet_and_arrow_stream_uploads() {
    let s = Server::start().await;
    let (brand, publisher, id) = setup(&s).await;
    let b = batch();
    let mut pq = Vec::new();
    {
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut pq, b.schema(), None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    }
    s.declare(&brand, &id, "from-parquet").await;
    let (st, v) = s
        .upload(
            &brand,
            &id,
            "from-parquet",
            "application/vnd.apache.parquet",
            pq,
        )
        .await;
    assert_eq!(
        (st, v["row_count"].as_u64()),
        (StatusCode::OK, Some(1000)),
        "{v}"
    );

    let mut ipc = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &b.schema()).unwrap();
        w.write(&b).unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
    }
    s.declare(&publisher, &id, "from-arrow").await;
    let (st, v) = s
        .upload(
            &publisher,
            &id,
            "from-arrow",
            "application/vnd.apache.arrow.stream",
            ipc.clone(),
        )
        .await;
    assert_eq!(
        (st, v["row_count"].as_u64()),
        (StatusCode::OK, Some(2000)),
        "{v}"
    );
    // A truncated stream is refused and keeps nothing.
    s.declare(&publisher, &id, "cut").await;
    let (st, v) = s
        .upload(
            &publisher,
            &id,
            "cut",
            "application/vnd.apache.arrow.stream",
            ipc[..ipc.len() / 2].to_vec(),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_data")),
        "{v}"
    );
}

fn slow_body(text: String, delay: Duration) -> reqwest::Body {
    let chunks: Vec<Bytes> = text
        .into_bytes()
        .chunks(2048)
        .map(Bytes::copy_from_slice)
        .collect();
    let stream = futures_util::stream::iter(chunks).then(move |c| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, std::io::Error>(c)
    });
    reqwest::Body::wrap_stream(stream)
}

use futures_util::StreamExt;

#[tokio::test]
async fn two_racing_uploads_one_wins_one_conflicts() {
    let s = Server::start().await;
    let (brand, _, id) = setup(&s).await;
    s.declare(&brand, &id, "crm").await;
    let body = csv(3000);
    let first = s.upload(
        &brand,
        &id,
        "crm",
        "text/csv",
        slow_body(body.clone(), Duration::from_millis(2)),
    );
    let second = async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        s.upload(&brand, &id, "crm", "text/csv", body.clone()).await
    };
    let ((st1, v1), (st2, v2)) = tokio::join!(first, second);
    assert_eq!(st1, StatusCode::OK, "{v1}");
    assert_eq!(
        (st2, v2["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{v2}"
    );
    assert_eq!(v1["row_count"], 3000);
}

#[tokio::test]
async fn restart_keeps_everything() {
    let s = Server::start().await;
    let (brand, publisher, id) = setup(&s).await;
    s.declare(&brand, &id, "crm").await;
    s.upload(&brand, &id, "crm", "text/csv", csv(123)).await;
    let before = s
        .ok(Method::GET, &format!("/v1/audit/{id}"), &brand, None)
        .await;
    let s = s.restart().await;
    let d = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/datasets/crm"),
            &publisher,
            None,
        )
        .await;
    assert_eq!(
        (d["status"].as_str(), d["row_count"].as_u64()),
        (Some("ready"), Some(123))
    );
    let after = s
        .ok(Method::GET, &format!("/v1/audit/{id}"), &brand, None)
        .await;
    assert_eq!(before, after);
    let orgs = s.ok(Method::GET, "/v1/orgs", &s.op, None).await;
    assert_eq!(orgs.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn closing_leaves_no_wrapped_key_in_the_database_files() {
    let s = Server::start().await;
    let (brand, _, id) = setup(&s).await;
    s.declare(&brand, &id, "crm").await;
    s.upload(&brand, &id, "crm", "text/csv", csv(20)).await;
    let db = s.dir.path().join("data/meta.sqlite");
    let keys: Vec<Vec<u8>> = {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
            .await
            .unwrap();
        let mut k: Vec<Vec<u8>> = sqlx::query_scalar("SELECT wrapped_key FROM collaborations")
            .fetch_all(&pool)
            .await
            .unwrap();
        k.extend(
            sqlx::query_scalar::<_, Vec<u8>>("SELECT wrapped_key FROM datasets")
                .fetch_all(&pool)
                .await
                .unwrap(),
        );
        pool.close().await;
        k
    };
    assert_eq!(keys.len(), 2);
    s.ok(
        Method::POST,
        &format!("/v1/collaborations/{id}/close"),
        &brand,
        None,
    )
    .await;
    let mut bytes = std::fs::read(&db).unwrap();
    if let Ok(wal) = std::fs::read(db.with_extension("sqlite-wal")) {
        bytes.extend(wal);
    }
    for k in keys {
        assert!(
            !bytes.windows(k.len()).any(|w| w == k.as_slice()),
            "a destroyed key survives in the database files"
        );
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A Parquet file of many row groups, several times the spool's chunk: read back from the sealed
/// spool by ranges, every row arrives, and no plaintext (and no spool file) is left on disk.
#[tokio::test]
async fn a_large_parquet_upload_is_spooled_sealed_and_read_whole() {
    let s = Server::start().await;
    let (brand, _, id) = setup(&s).await;
    s.declare(&brand, &id, "crm").await;
    let rows = 120_000usize;
    let marker = "spool-plaintext-marker";
    let schema = batch().schema();
    let mut pq = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(10_000))
        .set_compression(parquet::basic::Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut pq, schema.clone(), Some(props)).unwrap();
    for start in (0..rows).step_by(10_000) {
        let pid: Vec<String> = (start..start + 10_000)
            .map(|i| format!("{marker}-{i:08}"))
            .collect();
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(pid.clone())),
                Arc::new(StringArray::from(pid)),
                Arc::new(StringArray::from(vec!["x"; 10_000])),
                Arc::new(Int32Array::from(vec![1; 10_000])),
            ],
        )
        .unwrap();
        w.write(&b).unwrap();
    }
    w.close().unwrap();
    assert!(pq.len() > 3 << 20, "{} bytes", pq.len());
    let (st, v) = s.upload(&brand, &id, "crm", PARQUET, pq).await;
    assert_eq!(
        (st, v["row_count"].as_u64()),
        (StatusCode::OK, Some(rows as u64)),
        "{v}"
    );
    for f in files_under(s.dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "plaintext in {}",
            f.display()
        );
        let name = f
            .strip_prefix(s.dir.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(!name.contains(".tmp"), "left behind: {name}");
    }
}
