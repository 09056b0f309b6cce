//! `cleanroom demo`: the whole foundation end to end, on a temporary in-process server.

use anyhow::{Context, Result};
use cleanroom_server::wire::*;
use cleanroom_service::{CleanRoom, Config};

use crate::client::{ApiFailure, Client};
use crate::output::{self, thousands};
use crate::synth::{self, Universe};

fn step(n: u32, title: &str) {
    println!("\n== {n}. {title}");
}

fn columns(schema_toml: &str) -> Result<Vec<ColumnOut>> {
    #[derive(serde::Deserialize)]
    struct F {
        columns: Vec<ColumnOut>,
    }
    Ok(toml::from_str::<F>(schema_toml)?.columns)
}

pub async fn run(people: u64, seed: u64) -> Result<()> {
    anyhow::ensure!(
        (1_000..=5_000_000).contains(&people),
        "--people must be between 1,000 and 5,000,000"
    );
    let dir = tempfile::Builder::new()
        .prefix("cleanroom-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let data_dir = dir.path().join("data");

    println!("cleanroom demo: a retail brand and a publisher set up a clean room.");
    println!(
        "Everything runs on embedded defaults in {} and is deleted at the end.",
        dir.path().display()
    );

    step(1, "Server");
    let room = CleanRoom::open(Config::new(&data_dir)).await?;
    let (_, _, op_token) = room.init_operator("operator", "admin").await?;
    let (listener, addr) = cleanroom_server::bind("127.0.0.1:0").await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cleanroom_server::serve(room.clone(), listener, async {
        let _ = stop_rx.await;
    }));
    println!(
        "listening on http://{addr}: metadata in SQLite, datasets as encrypted Parquet, master key in a 0600 file"
    );

    let result = scenario(
        &format!("http://{addr}"),
        op_token.expose(),
        people,
        seed,
        dir.path(),
    )
    .await;

    let _ = stop_tx.send(());
    let _ = server.await;
    room.close().await;
    result
}

async fn scenario(
    base: &str,
    op_token: &str,
    people: u64,
    seed: u64,
    tmp: &std::path::Path,
) -> Result<()> {
    let operator = Client::new(base, Some(op_token.to_owned()))?;

    step(2, "Parties");
    let brand_org: CreatedOrg = operator
        .post(
            "/orgs",
            &CreateOrgRequest {
                name: "northwind-retail".into(),
                admin: "maya".into(),
            },
        )
        .await?;
    let pub_org: CreatedOrg = operator
        .post(
            "/orgs",
            &CreateOrgRequest {
                name: "daily-planet".into(),
                admin: "omar".into(),
            },
        )
        .await?;
    let brand = operator.with_token(&brand_org.token);
    let publisher = operator.with_token(&pub_org.token);
    println!(
        "the operator created northwind-retail (a retail brand, admin maya) and daily-planet (a publisher, admin omar)"
    );
    println!("each got an API token, shown once and stored only as a hash");

    step(3, "First-party data, prepared on each party's premises");
    let u = Universe::new(people);
    let everyone = synth::people(&u, seed);
    let brand_csv = tmp.join("brand-customers.csv");
    let pub_csv = tmp.join("publisher-audience.csv");
    let brand_rows = synth::write_csv(
        "brand",
        &u,
        &everyone,
        seed,
        &mut std::fs::File::create(&brand_csv)?,
    )?;
    let pub_rows = synth::write_csv(
        "publisher",
        &u,
        &everyone,
        seed,
        &mut std::fs::File::create(&pub_csv)?,
    )?;
    println!(
        "northwind-retail: {} customers; daily-planet: {} logged-in users; {} people are in both (unknown to either)",
        thousands(brand_rows),
        thousands(pub_rows),
        thousands(u.overlap)
    );
    println!(
        "emails were normalised and replaced by HMAC-SHA-256 pseudonyms under a secret the parties share; the server never sees it"
    );

    step(4, "Collaboration");
    let collab: CollaborationDetail = brand
        .post(
            "/collaborations",
            &CreateCollaborationRequest {
                name: "spring-campaign".into(),
                description: "Audience overlap and campaign lift, spring 2026".into(),
                abilities: Some(vec![
                    "contribute".into(),
                    "analyse".into(),
                    "receive".into(),
                ]),
            },
        )
        .await?;
    let cid = collab.collaboration.id.clone();
    let _: MemberOut = brand
        .post(
            &format!("/collaborations/{cid}/invitations"),
            &InviteRequest {
                org: "daily-planet".into(),
                abilities: vec!["contribute".into(), "receive".into()],
            },
        )
        .await?;
    println!(
        "northwind-retail created spring-campaign and invited daily-planet to contribute and receive results"
    );
    let early = publisher
        .get::<Vec<DatasetOut>>(&format!("/collaborations/{cid}/datasets"))
        .await;
    if let Err(e) = early {
        println!("before accepting, daily-planet sees no data: {}", short(&e));
    }
    let joined: CollaborationDetail = publisher
        .post(
            &format!("/collaborations/{cid}/accept"),
            &serde_json::json!({}),
        )
        .await?;
    println!("daily-planet accepted.");
    println!("{}", output::members(&joined.members));

    step(
        5,
        "Uploads: validated, encrypted with a per-dataset key, written atomically",
    );
    for (who, client, name, file, schema) in [
        (
            "northwind-retail",
            &brand,
            "crm-customers",
            &brand_csv,
            synth::BRAND_SCHEMA,
        ),
        (
            "daily-planet",
            &publisher,
            "logged-in-audience",
            &pub_csv,
            synth::PUBLISHER_SCHEMA,
        ),
    ] {
        let _: DatasetOut = client
            .post(
                &format!("/collaborations/{cid}/datasets"),
                &CreateDatasetRequest {
                    name: name.into(),
                    columns: columns(schema)?,
                },
            )
            .await?;
        let d = client.upload(&cid, name, file, false).await?;
        println!("{who} uploaded {name}: {} rows", output::num(d.row_count));
    }
    let datasets: Vec<DatasetOut> = publisher
        .get(&format!("/collaborations/{cid}/datasets"))
        .await?;
    println!("What every member sees: schema, owner and row count. No endpoint returns rows.");
    println!("{}", output::datasets(&datasets));

    step(6, "Refusals are enforced on the server and audited");
    let bad_upload = tmp.join("bad.csv");
    std::fs::write(
        &bad_upload,
        "customer_id,email_hmac,age_band,region,purchases,revenue,first_purchase\nB1,abc,25-34,north,three,1.0,2026-01-01\n",
    )?;
    let _: DatasetOut = brand
        .post(
            &format!("/collaborations/{cid}/datasets"),
            &CreateDatasetRequest {
                name: "typo-test".into(),
                columns: columns(synth::BRAND_SCHEMA)?,
            },
        )
        .await?;
    if let Err(e) = brand.upload(&cid, "typo-test", &bad_upload, true).await {
        println!(
            "a malformed upload is rejected and nothing is kept:\n  {}",
            short(&e)
        );
    }
    if let Err(e) = publisher
        .post::<_, Closed>(
            &format!("/collaborations/{cid}/close"),
            &serde_json::json!({}),
        )
        .await
    {
        println!(
            "daily-planet may not close the collaboration:\n  {}",
            short(&e)
        );
    }
    if let Err(e) = publisher
        .post::<_, MemberOut>(
            &format!("/collaborations/{cid}/invitations"),
            &InviteRequest {
                org: "operator".into(),
                abilities: vec!["analyse".into()],
            },
        )
        .await
    {
        println!("daily-planet may not invite others:\n  {}", short(&e));
    }
    if let Err(e) = operator
        .get::<Vec<DatasetOut>>(&format!("/collaborations/{cid}/datasets"))
        .await
    {
        println!(
            "the operator, not a member, cannot even see that the collaboration exists:\n  {}",
            short(&e)
        );
        println!("  (recorded in the server's system audit log, not in the collaboration's)");
    }

    step(7, "The audit trail, hash-chained and verified on this side");
    let (name, entries, head) = crate::commands::fetch_chain(&brand, &cid).await?;
    println!("{}", output::audit(&entries));
    let h = crate::commands::verify_downloaded(&name, &entries, head.as_ref(), None)?;
    println!(
        "chain verified: {} entries intact, head {}:{}",
        h.seq,
        h.seq,
        &hex::encode(h.hash)[..16]
    );

    println!(
        "\nNext: analyses over the joint data (overlap, reach, lift) with thresholds and differential privacy."
    );
    Ok(())
}

fn short(e: &anyhow::Error) -> String {
    match e.downcast_ref::<ApiFailure>() {
        Some(f) => f.to_string().replace('\n', " "),
        None => format!("{e:#}"),
    }
}
