//! Datasets: uploads, visibility, races, failures, crypto-shredding, restarts.

use std::io::Read;
use std::time::Duration;

use cleanroom_core::audit::{Outcome, verify_chain};
use cleanroom_core::party::Ability;
use cleanroom_service::{CleanRoom, Config, MasterKeyHex, ServiceError, UploadInput};

use crate::{Fixture, csv, csv_input, schema};

/// A reader that hands out its bytes slowly, to hold an upload open.
struct Slow {
    data: std::io::Cursor<Vec<u8>>,
    delay: Duration,
}

impl Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(self.delay);
        let n = buf.len().min(4096);
        self.data.read(&mut buf[..n])
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn upload_stores_encrypted_data_and_members_see_metadata_only() {
    let f = Fixture::new().await;
    let id = f
        .collab(&[Ability::Contribute, Ability::Receive], true)
        .await;
    f.room
        .create_dataset(&f.brand, &id, "crm", schema())
        .await
        .unwrap();
    // Pending datasets are visible to their owner only.
    assert_eq!(f.room.list_datasets(&f.brand, &id).await.unwrap().len(), 1);
    assert!(
        f.room
            .list_datasets(&f.publisher, &id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        f.room.get_dataset(&f.publisher, &id, "crm").await,
        Err(ServiceError::NotFound(_))
    ));

    let d = f
        .room
        .upload(&f.brand, &id, "crm", csv_input(csv(500)))
        .await
        .unwrap();
    assert_eq!(d.row_count, Some(500));
    assert_eq!(d.status.as_str(), "ready");
    let seen = f.room.get_dataset(&f.publisher, &id, "crm").await.unwrap();
    assert_eq!(seen.owner_org_name.as_str(), "brand");
    assert_eq!(seen.schema, schema());
    assert_eq!(
        f.room
            .verify_dataset_file(d.collaboration_id, d.id)
            .await
            .unwrap(),
        500
    );

    // Datasets are immutable once uploaded.
    let e = f
        .room
        .upload(&f.brand, &id, "crm", csv_input(csv(5)))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    // Same name twice is a conflict.
    let e = f
        .room
        .create_dataset(&f.brand, &id, "crm", schema())
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");

    // No plaintext anywhere in the data directory.
    for file in files_under(f.dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(6).any(|w| w == b"city3,"),
            "plaintext in {}",
            file.display()
        );
        assert!(
            !bytes.windows(4).any(|w| w == b"h123"),
            "plaintext in {}",
            file.display()
        );
    }
}

#[tokio::test]
async fn a_failed_upload_keeps_nothing_and_can_be_retried() {
    let f = Fixture::new().await;
    let id = f.collab(&[Ability::Contribute], true).await;
    let d = f
        .room
        .create_dataset(&f.brand, &id, "crm", schema())
        .await
        .unwrap();
    let mut bad = csv(100);
    bad.push_str("p100,h100,city1,12x\n");
    let e = f
        .room
        .upload(&f.brand, &id, "crm", csv_input(bad))
        .await
        .unwrap_err();
    match &e {
        ServiceError::InvalidData {
            line,
            column,
            message,
        } => {
            assert_eq!(*line, Some(102));
            assert_eq!(column.as_deref(), Some("4 (n)"));
            assert!(message.contains("expected an int64"), "{message}");
        }
        other => panic!("expected invalid data, got {other:?}"),
    }
    let again = f.room.get_dataset(&f.brand, &id, "crm").await.unwrap();
    assert_eq!(again.status.as_str(), "pending");
    assert_eq!(again.row_count, None);
    let datasets_dir = f.dir.path().join("data/datasets");
    assert!(files_under(&datasets_dir).is_empty());
    assert!(files_under(&f.dir.path().join("data/tmp")).is_empty());
    // Other bad inputs, each a clear refusal.
    for (input, code) in [
        (csv_input(String::new()), "invalid_data"),
        (
            csv_input("pid,email_hmac,city\np,h,c\n".into()),
            "invalid_data",
        ),
        (
            csv_input("pid,email_hmac,city,n,extra\n".into()),
            "invalid_data",
        ),
        (
            UploadInput::Csv(Box::new(std::io::Cursor::new(
                b"pid,email_hmac,city,n\np,\xff,c,1\n".to_vec(),
            ))),
            "invalid_data",
        ),
        (
            UploadInput::ArrowStream(Box::new(std::io::Cursor::new(b"not arrow".to_vec()))),
            "invalid_data",
        ),
        (
            UploadInput::Parquet(Box::new(&b"PAR1 garbage"[..])),
            "invalid_data",
        ),
    ] {
        let e = f
            .room
            .upload(&f.brand, &id, "crm", input)
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{e}");
    }
    let d2 = f
        .room
        .upload(&f.brand, &id, "crm", csv_input(csv(10)))
        .await
        .unwrap();
    assert_eq!((d2.id, d2.row_count), (d.id, Some(10)));
    let log = f.chain(&f.brand, &id).await;
    assert_eq!(
        log.iter()
            .filter(|e| e.action == "dataset.upload" && e.outcome == Outcome::Denied)
            .count(),
        7
    );
    assert!(
        log.iter().all(|e| !e.detail.contains("12x")),
        "row values must not reach the audit log"
    );
}

#[tokio::test]
async fn racing_uploads_one_wins_the_other_is_refused() {
    let f = Fixture::new().await;
    let id = f.collab(&[Ability::Contribute], true).await;
    f.room
        .create_dataset(&f.brand, &id, "crm", schema())
        .await
        .unwrap();
    let slow = Slow {
        data: std::io::Cursor::new(csv(2000).into_bytes()),
        delay: Duration::from_millis(5),
    };
    let (room, brand, id2) = (f.room.clone(), f.brand.clone(), id.clone());
    let first = tokio::spawn(async move {
        room.upload(&brand, &id2, "crm", UploadInput::Csv(Box::new(slow)))
            .await
    });
    // Wait until the first upload holds the dataset.
    for _ in 0..200 {
        if f.room
            .get_dataset(&f.brand, &id, "crm")
            .await
            .unwrap()
            .status
            .as_str()
            == "uploading"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e = f
        .room
        .upload(&f.brand, &id, "crm", csv_input(csv(3)))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("in progress"), "{e}");
    let d = first.await.unwrap().unwrap();
    assert_eq!(d.row_count, Some(2000));
    // Creating the same dataset concurrently: exactly one succeeds.
    let (a, b) = tokio::join!(
        f.room.create_dataset(&f.brand, &id, "twin", schema()),
        f.room.create_dataset(&f.brand, &id, "twin", schema())
    );
    assert!(a.is_ok() ^ b.is_ok());
}

#[tokio::test]
async fn closing_crypto_shreds_and_says_so() {
    let f = Fixture::new().await;
    let id = f.collab(&[Ability::Contribute], true).await;
    f.room
        .create_dataset(&f.brand, &id, "crm", schema())
        .await
        .unwrap();
    let d = f
        .room
        .upload(&f.brand, &id, "crm", csv_input(csv(50)))
        .await
        .unwrap();
    f.room
        .create_dataset(&f.publisher, &id, "aud", schema())
        .await
        .unwrap();
    f.room
        .upload(&f.publisher, &id, "aud", csv_input(csv(20)))
        .await
        .unwrap();
    let path = f.dir.path().join(format!(
        "data/datasets/{}/{}.parquet",
        d.collaboration_id, d.id
    ));
    let ciphertext = std::fs::read(&path).unwrap();

    assert_eq!(f.room.close_collaboration(&f.brand, &id).await.unwrap(), 2);
    assert!(!path.exists(), "files are removed");
    // Even a copy of the ciphertext is useless: the key is gone.
    let e = f
        .room
        .verify_dataset_file(d.collaboration_id, d.id)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Gone(_)), "{e}");
    assert!(!ciphertext.is_empty());

    let ds = f.room.list_datasets(&f.publisher, &id).await.unwrap();
    assert!(ds.iter().all(|d| d.status.as_str() == "shredded"));
    let e = f
        .room
        .create_dataset(&f.brand, &id, "new", schema())
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Gone(_)), "{e}");
    let e = f.room.close_collaboration(&f.brand, &id).await.unwrap_err();
    assert!(matches!(e, ServiceError::Gone(_)), "{e}");

    let log = f.chain(&f.publisher, &id).await;
    let close = log
        .iter()
        .find(|e| e.action == "collaboration.close" && e.outcome == Outcome::Allowed)
        .unwrap();
    assert_eq!(
        close.detail,
        "destroyed the collaboration key and 2 dataset key(s); deleted 0 stored result(s)"
    );
    verify_chain(&id, &log, None).unwrap();
}

#[tokio::test]
async fn a_restart_keeps_everything() {
    let f = Fixture::new().await;
    let id = f.collab(&[Ability::Contribute], true).await;
    f.room
        .create_dataset(&f.brand, &id, "crm", schema())
        .await
        .unwrap();
    let d = f
        .room
        .upload(&f.brand, &id, "crm", csv_input(csv(77)))
        .await
        .unwrap();
    let (token, _) = f
        .room
        .create_token(&f.brand, "after-restart")
        .await
        .unwrap();
    let head_before = f.room.audit_log(&f.brand, &id, 0, 10_000).await.unwrap().1;
    f.room.close().await;
    drop(f.room);

    let room = CleanRoom::open(Config::new(f.dir.path().join("data")))
        .await
        .unwrap();
    let brand = room.authenticate(Some(token.expose())).await.unwrap();
    let again = room.get_dataset(&brand, &id, "crm").await.unwrap();
    assert_eq!(again.row_count, Some(77));
    assert_eq!(
        room.verify_dataset_file(d.collaboration_id, d.id)
            .await
            .unwrap(),
        77
    );
    let (log, head) = room.audit_log(&brand, &id, 0, 10_000).await.unwrap();
    assert_eq!(head, head_before);
    verify_chain(&id, &log, head).unwrap();
}

#[tokio::test]
async fn a_wrong_master_key_is_refused_at_start() {
    let f = Fixture::new().await;
    f.room.close().await;
    let mut cfg = Config::new(f.dir.path().join("data"));
    cfg.master_key_hex = Some(MasterKeyHex::new("0f".repeat(32)));
    // The key never shows in a debug print of the configuration.
    let printed = format!("{cfg:?}");
    assert!(!printed.contains("0f0f0f"), "{printed}");
    assert!(printed.contains("[redacted]"), "{printed}");
    let e = CleanRoom::open(cfg)
        .await
        .err()
        .expect("a wrong key must be refused");
    assert!(e.to_string().contains("does not match"), "{e}");
    // The right key still opens.
    CleanRoom::open(Config::new(f.dir.path().join("data")))
        .await
        .unwrap();
}

/// One open clean room per data directory: a second process (a second server, or an `init`
/// whose start-up clean-up would delete the first one's unfinished uploads) is refused until
/// the first closes.
#[tokio::test]
async fn a_data_directory_is_locked_while_open() {
    let f = Fixture::new().await;
    let data = f.dir.path().join("data");
    std::fs::write(data.join("tmp").join("in-flight.tmp"), b"ciphertext").unwrap();
    let e = CleanRoom::open(Config::new(&data))
        .await
        .err()
        .expect("a second open must be refused");
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    assert!(
        e.to_string()
            .contains("in use by another cleanroom process"),
        "{e}"
    );
    assert!(data.join("tmp").join("in-flight.tmp").exists());
    f.room.close().await;
    CleanRoom::open(Config::new(&data)).await.unwrap();
}
