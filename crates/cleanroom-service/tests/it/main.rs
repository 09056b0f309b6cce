//! Use cases through the plain Rust API: the happy path, and every denial.

mod access;
mod activation;
mod analysis;
mod datasets;

use cleanroom_core::party::{Abilities, Ability};
use cleanroom_core::schema::{ColumnSpec, DatasetSchema};
use cleanroom_service::{CleanRoom, Config, Principal, UploadInput};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub room: CleanRoom,
    pub operator: Principal,
    pub brand: Principal,
    pub publisher: Principal,
    pub outsider: Principal,
}

impl Fixture {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let room = CleanRoom::open(Config::new(dir.path().join("data")))
            .await
            .unwrap();
        let (_, _, op) = room.init_operator("operator", "admin").await.unwrap();
        let operator = room.authenticate(Some(op.expose())).await.unwrap();
        let mut orgs = Vec::new();
        for name in ["brand", "publisher", "outsider"] {
            let (_, _, t) = room.create_org(&operator, name, "admin").await.unwrap();
            orgs.push(room.authenticate(Some(t.expose())).await.unwrap());
        }
        let outsider = orgs.pop().unwrap();
        let publisher = orgs.pop().unwrap();
        let brand = orgs.pop().unwrap();
        Fixture {
            dir,
            room,
            operator,
            brand,
            publisher,
            outsider,
        }
    }

    /// A collaboration created by brand with publisher invited (and accepted when `accept`).
    pub async fn collab(&self, publisher_abilities: &[Ability], accept: bool) -> String {
        let c = self
            .room
            .create_collaboration(&self.brand, "campaign", "", Abilities::all())
            .await
            .unwrap();
        let id = c.id.to_string();
        self.room
            .invite(
                &self.brand,
                &id,
                "publisher",
                publisher_abilities.iter().copied().collect(),
            )
            .await
            .unwrap();
        if accept {
            self.room.respond(&self.publisher, &id, true).await.unwrap();
        }
        id
    }

    pub async fn chain(
        &self,
        p: &Principal,
        chain: &str,
    ) -> Vec<cleanroom_core::audit::AuditEntry> {
        self.room.audit_log(p, chain, 0, 10_000).await.unwrap().0
    }
}

pub fn schema() -> DatasetSchema {
    DatasetSchema::new(
        [
            "pid:string:privacy_unit",
            "email_hmac:string:identifier",
            "city:string:dimension",
            "n:int64:metric",
        ]
        .iter()
        .map(|s| ColumnSpec::parse_compact(s).unwrap())
        .collect(),
    )
    .unwrap()
}

pub fn csv(rows: usize) -> String {
    let mut s = String::from("pid,email_hmac,city,n\n");
    for i in 0..rows {
        s.push_str(&format!("p{i},h{i},city{},{}\n", i % 7, i));
    }
    s
}

pub fn csv_input(text: String) -> UploadInput {
    UploadInput::Csv(Box::new(std::io::Cursor::new(text.into_bytes())))
}
