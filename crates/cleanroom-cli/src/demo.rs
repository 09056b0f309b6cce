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

    analyses(&brand, &publisher, &cid, &u).await?;

    step(
        13,
        "The audit trail, hash-chained and verified on this side",
    );
    let (name, entries, head) = crate::commands::fetch_chain(&brand, &cid).await?;
    let shown = entries.len().saturating_sub(16);
    println!(
        "{} entries; the last {} (`cleanroom audit list` shows all):",
        entries.len(),
        entries.len() - shown
    );
    println!("{}", output::audit(&entries[shown..]));
    let h = crate::commands::verify_downloaded(&name, &entries, head.as_ref(), None)?;
    println!(
        "chain verified: {} entries intact, head {}:{}",
        h.seq,
        h.seq,
        &hex::encode(h.hash)[..16]
    );
    Ok(())
}

fn brand_policy() -> PolicyWire {
    PolicyWire {
        join_keys: vec!["email_hmac".into()],
        dimensions: vec!["age_band".into(), "region".into()],
        metrics: vec![
            MetricRuleWire {
                column: "purchases".into(),
                aggregates: vec![],
                lower: 0.0,
                upper: 20.0,
                precision: None,
            },
            MetricRuleWire {
                column: "revenue".into(),
                aggregates: vec![],
                lower: 0.0,
                upper: 2000.0,
                precision: Some(2),
            },
        ],
        analysts: vec!["daily-planet".into()],
        receivers: vec!["daily-planet".into()],
        ..Default::default()
    }
}

fn publisher_policy() -> PolicyWire {
    PolicyWire {
        join_keys: vec!["email_hmac".into()],
        dimensions: vec!["age_band".into(), "region".into(), "exposed".into()],
        metrics: vec![MetricRuleWire {
            column: "page_views".into(),
            aggregates: vec![],
            lower: 0.0,
            upper: 400.0,
            precision: None,
        }],
        analysts: vec!["northwind-retail".into()],
        receivers: vec!["northwind-retail".into()],
        allow_sql: Some(false),
        ..Default::default()
    }
}

async fn run_template(
    c: &Client,
    cid: &str,
    template: &str,
    params: &[(&str, &str)],
    epsilon: f64,
) -> Result<AnalysisOut> {
    c.post(
        &format!("/collaborations/{cid}/templates/{template}/runs"),
        &TemplateRunIn {
            version: None,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            epsilon: Some(epsilon),
            delta: None,
            receivers: vec![],
            dry_run: false,
        },
    )
    .await
}

fn print_tables(a: &AnalysisOut) {
    if let Some(r) = &a.result {
        for t in &r.tables {
            if t.rows.is_empty() {
                println!("({}: no group is large enough to be shown)", t.name);
            } else {
                println!("{}", crate::analysis::result_table(t));
            }
        }
    }
}

async fn analyses(brand: &Client, publisher: &Client, cid: &str, u: &Universe) -> Result<()> {
    step(
        7,
        "Rules: each owner sets a policy for its data and grants a privacy budget",
    );
    let p: PolicyOut = brand
        .put(
            &format!("/collaborations/{cid}/datasets/crm-customers/policy"),
            &brand_policy(),
        )
        .await?;
    println!(
        "northwind-retail, policy v{} on crm-customers: join on email_hmac only; group by age band or region; \
         purchases clamped to [0, 20], revenue to [0, 2000]; every row must stand for ≥ 50 customers; \
         differential privacy on",
        p.version
    );
    let p: PolicyOut = publisher
        .put(
            &format!("/collaborations/{cid}/datasets/logged-in-audience/policy"),
            &publisher_policy(),
        )
        .await?;
    println!(
        "daily-planet, policy v{} on logged-in-audience: the same thresholds; only approved templates, no free SQL",
        p.version
    );
    for (who, c) in [("northwind-retail", brand), ("daily-planet", publisher)] {
        let b: BudgetOut = c
            .post(
                &format!("/collaborations/{cid}/budgets"),
                &GrantIn {
                    epsilon: 3.0,
                    delta: Some(1e-6),
                    epsilon_per_query: Some(1.0),
                    delta_per_query: Some(1e-7),
                },
            )
            .await?;
        println!(
            "{who} granted epsilon {} for this collaboration (at most {} per analysis); it never refreshes by itself",
            b.epsilon_total, b.epsilon_per_query
        );
    }
    for t in ["overlap", "lift"] {
        let a: ApprovalOut = publisher
            .post(
                &format!("/collaborations/{cid}/templates/{t}/approvals"),
                &ApprovalIn {
                    dataset: "logged-in-audience".into(),
                    version: None,
                },
            )
            .await?;
        println!(
            "daily-planet approved the {} template, version {}, on its audience",
            a.template, a.version
        );
    }

    step(
        8,
        "Audience overlap by region (template overlap v1, epsilon 1)",
    );
    let a = run_template(
        brand,
        cid,
        "overlap",
        &[
            ("left", "crm-customers"),
            ("right", "logged-in-audience"),
            ("key", "email_hmac"),
            ("by", "region"),
        ],
        1.0,
    )
    .await?;
    print_tables(&a);
    let matched: i64 = a
        .result
        .as_ref()
        .and_then(|r| r.tables.first())
        .map(|t| t.rows.iter().filter_map(|r| r[1].as_i64()).sum())
        .unwrap_or(0);
    println!(
        "total matched ≈ {} (the demo knows the truth: {}); counts carry noise (± is its standard deviation), \
         and a region with too few people would not be shown at all",
        thousands(matched.max(0) as u64),
        thousands(u.overlap)
    );
    println!("cost: {}", crate::analysis::charges(&a));

    step(
        9,
        "Campaign lift: did exposed people buy more? (template lift v1, epsilon 1)",
    );
    let a = run_template(
        brand,
        cid,
        "lift",
        &[
            ("exposure", "logged-in-audience"),
            ("exposed", "exposed"),
            ("outcome", "crm-customers"),
            ("conversion", "purchases"),
            ("key", "email_hmac"),
        ],
        1.0,
    )
    .await?;
    print_tables(&a);
    println!("cost: {}", crate::analysis::charges(&a));

    step(10, "An analyst's own SQL, and what the room refuses");
    let sql = "SELECT c.age_band, COUNT(DISTINCT c.customer_id) AS customers, AVG(c.revenue) AS avg_revenue \
               FROM \"crm-customers\" c GROUP BY c.age_band ORDER BY c.age_band";
    let a: AnalysisOut = brand
        .post(
            &format!("/collaborations/{cid}/queries"),
            &QueryIn {
                sql: sql.into(),
                epsilon: Some(0.5),
                delta: None,
                receivers: vec![],
                dry_run: false,
            },
        )
        .await?;
    println!("northwind-retail on its own data (its budget pays):\n  {sql}");
    print_tables(&a);
    for (what, sql) in [
        ("row-level output", "SELECT * FROM \"crm-customers\""),
        (
            "a join key in the output",
            "SELECT email_hmac, COUNT(*) FROM \"crm-customers\" GROUP BY email_hmac",
        ),
        (
            "free SQL on the publisher's data",
            "SELECT COUNT(*) FROM \"crm-customers\" c JOIN \"logged-in-audience\" a ON c.email_hmac = a.email_hmac",
        ),
    ] {
        let r: Result<AnalysisOut> = brand
            .post(
                &format!("/collaborations/{cid}/queries"),
                &QueryIn {
                    sql: sql.into(),
                    epsilon: None,
                    delta: None,
                    receivers: vec![],
                    dry_run: false,
                },
            )
            .await;
        if let Err(e) = r {
            println!("refused, {what}:\n  {}", short(&e));
        }
    }

    step(
        11,
        "Averaging does not work: a repeated analysis returns its stored result",
    );
    let again = run_template(
        brand,
        cid,
        "overlap",
        &[
            ("left", "crm-customers"),
            ("right", "logged-in-audience"),
            ("key", "email_hmac"),
            ("by", "region"),
        ],
        1.0,
    )
    .await?;
    println!(
        "the same overlap again: {}",
        match &again.reused_from {
            Some(id) =>
                format!("the stored result of analysis {id}, same numbers, no budget spent"),
            None => "a new release".into(),
        }
    );

    step(12, "Budgets left");
    let b: Vec<BudgetOut> = brand.get(&format!("/collaborations/{cid}/budgets")).await?;
    println!("{}", crate::analysis::budgets_table(&b));
    Ok(())
}

fn short(e: &anyhow::Error) -> String {
    match e.downcast_ref::<ApiFailure>() {
        Some(f) => f.to_string().replace('\n', " "),
        None => format!("{e:#}"),
    }
}
