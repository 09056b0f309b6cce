//! `cleanroom demo`: the whole foundation end to end, on a temporary in-process server.

use anyhow::{Context, Result};
use cleanroom_server::wire::*;
use cleanroom_service::{CleanRoom, Config};

use cleanroom_identity::config::PrepareConfig;
use cleanroom_identity::prepare::{OutputPaths, prepare};
use cleanroom_identity::pseudonym::PseudonymKey;

use crate::client::{ApiFailure, Client};
use crate::output::{self, thousands};
use crate::synth::{self, BRAND_PREP, PUBLISHER_PREP, Universe};

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

pub async fn run(people: u64, seed: u64, serve: bool, listen: Option<String>) -> Result<()> {
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
    let listen = listen.unwrap_or_else(|| {
        if serve {
            "127.0.0.1:8080"
        } else {
            "127.0.0.1:0"
        }
        .to_owned()
    });
    let (listener, addr) = cleanroom_server::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen} (choose another with --listen)"))?;
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

    if let (true, Ok(tokens)) = (serve, &result) {
        println!();
        println!("== The console");
        println!("open http://{addr}/ and sign in as either party with its token:");
        for (party, token) in tokens {
            println!("  {party:<18} {token}");
        }
        println!("(the server and its data live until Ctrl-C; then both are deleted)");
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }

    let _ = stop_tx.send(());
    let _ = server.await;
    room.close().await;
    if result.is_ok() && !serve {
        println!();
        println!(
            "Next: the README's tour runs the same story one command at a time with your own server \
             (`bash docs/tour.sh` runs it as written)."
        );
    }
    result.map(|_| ())
}

/// Runs the story; answers each party's organisation name and its admin's token.
async fn scenario(
    base: &str,
    op_token: &str,
    people: u64,
    seed: u64,
    tmp: &std::path::Path,
) -> Result<Vec<(String, String)>> {
    let operator = Client::new(base, Some(op_token.to_owned()), None)?;

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

    step(
        3,
        "First-party data, prepared on each party's premises (`cleanroom prepare`)",
    );
    let u = Universe::new(people);
    let everyone = synth::people(&u, seed);
    let ids = synth::raw_ids(&everyone, seed);
    let key = PseudonymKey::derive(synth::DEMO_SECRET, "spring-campaign")
        .context("deriving the demo's pseudonym key")?;
    let mut prepared = Vec::new();
    for (party, who, config) in [
        ("brand", "northwind-retail", BRAND_PREP),
        ("publisher", "daily-planet", PUBLISHER_PREP),
    ] {
        let raw = tmp.join(format!("{party}-raw.csv"));
        let rows = synth::write_raw_csv(
            party,
            &u,
            &everyone,
            &ids,
            seed,
            &mut std::fs::File::create(&raw)?,
        )?;
        let cfg = PrepareConfig::from_toml(config).context("the demo's prepare config")?;
        let out = OutputPaths::next_to(&tmp.join(format!("{party}-prepared.parquet")));
        let report = prepare(&cfg, &key, &raw, &out, &mut |_| {})
            .with_context(|| format!("preparing {who}'s data"))?;
        anyhow::ensure!(!report.refused, "the demo's data was refused by prepare");
        // The raw file never leaves the party; the demo deletes it at once.
        std::fs::remove_file(&raw)?;
        println!(
            "{who}: {} raw rows with emails, phone numbers and device ids -> {} prepared rows",
            thousands(rows),
            thousands(report.rows_written)
        );
        for c in report
            .columns
            .iter()
            .filter(|c| c.output.ends_with("_hmac"))
        {
            println!(
                "  {:<11} {:>7} pseudonymised, {:>6} missing, {:>4} invalid (counted, never matched)",
                c.output,
                thousands(c.valid),
                thousands(c.missing),
                thousands(c.invalid_total())
            );
        }
        if let Some(r) = &report.risk {
            println!(
                "  re-identification risk over {}: k-anonymity {}, {:.2} % of records unique",
                r.quasi_identifiers.join(", "),
                r.k_anonymity,
                r.unique_share * 100.0
            );
        }
        prepared.push(out);
    }
    println!(
        "{} people are customers of both (unknown to either). Identifiers were normalised (case, spaces, Gmail dots and +tags, \
         phone numbers to E.164, device ids to lower case) and replaced by HMAC-SHA-256 pseudonyms under a secret the parties share; \
         ages became bands and everything else was dropped. The server never sees the secret or a raw identifier.",
        thousands(u.overlap)
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
    for (who, client, name, out) in [
        ("northwind-retail", &brand, "crm-customers", &prepared[0]),
        (
            "daily-planet",
            &publisher,
            "logged-in-audience",
            &prepared[1],
        ),
    ] {
        let schema = std::fs::read_to_string(&out.schema)?;
        let _: DatasetOut = client
            .post(
                &format!("/collaborations/{cid}/datasets"),
                &CreateDatasetRequest {
                    name: name.into(),
                    columns: columns(&schema)?,
                },
            )
            .await?;
        let d = client.upload(&cid, name, &out.upload, true).await?;
        println!(
            "{who} uploaded {name} (its prepared Parquet): {} rows",
            output::num(d.row_count)
        );
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

    let mut truth = Truth { by_level: [0; 3] };
    for i in 0..u.size() {
        if let Some(l) = synth::cascade_level(&u, i, seed) {
            truth.by_level[l] += 1;
        }
    }
    analyses(&brand, &publisher, &cid, &truth, tmp).await?;

    step(
        15,
        "The audit trail, hash-chained and verified on this side",
    );
    let (name, entries, head) = crate::audit::fetch_chain(&brand, &cid).await?;
    let shown = entries.len().saturating_sub(16);
    println!(
        "{} entries; the last {} (`cleanroom audit list` shows all):",
        entries.len(),
        entries.len() - shown
    );
    println!("{}", output::audit(&entries[shown..]));
    let h = crate::audit::verify_downloaded(&name, &entries, head.as_ref(), &[])?;
    println!(
        "chain verified: {} entries intact, head {}:{}",
        h.seq,
        h.seq,
        &hex::encode(h.hash)[..16]
    );
    Ok(vec![
        ("northwind-retail".into(), brand_org.token.clone()),
        ("daily-planet".into(), pub_org.token.clone()),
    ])
}

fn brand_policy() -> PolicyWire {
    PolicyWire {
        join_keys: vec!["email_hmac".into(), "phone_hmac".into(), "maid_hmac".into()],
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
        activation: Some(ActivationRuleWire {
            partners: vec!["daily-planet".into()],
            min_segment_size: Some(1000),
            dimensions: vec!["region".into(), "age_band".into()],
        }),
        ..Default::default()
    }
}

fn publisher_policy() -> PolicyWire {
    PolicyWire {
        join_keys: vec!["email_hmac".into(), "phone_hmac".into(), "maid_hmac".into()],
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

/// What the demo knows and the parties do not: how many people of both parties a cascade
/// matches first on email, phone and device id.
struct Truth {
    by_level: [u64; 3],
}

async fn analyses(
    brand: &Client,
    publisher: &Client,
    cid: &str,
    truth: &Truth,
    tmp: &std::path::Path,
) -> Result<()> {
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
        "northwind-retail, policy v{} on crm-customers: join on the email, phone and device pseudonyms only; group by age band or region; \
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
    for t in ["overlap", "overlap_ids", "lift"] {
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
        "total matched on email ≈ {} (the demo knows the truth: {}); counts carry noise (± is its standard deviation), \
         and a region with too few people would not be shown at all",
        thousands(matched.max(0) as u64),
        thousands(truth.by_level[0])
    );
    println!("cost: {}", crate::analysis::charges(&a));

    step(
        9,
        "Match rates per identifier type: email, then phone, then device id (template overlap_ids v1, epsilon 1)",
    );
    let a = run_template(
        brand,
        cid,
        "overlap_ids",
        &[
            ("left", "crm-customers"),
            ("right", "logged-in-audience"),
            ("keys", "email_hmac,phone_hmac,maid_hmac"),
        ],
        1.0,
    )
    .await?;
    print_tables(&a);
    let t = truth.by_level;
    println!(
        "truth: {} on email, {} more on phone, {} more on device id, {} in all; each person counts once, under its first match",
        thousands(t[0]),
        thousands(t[1]),
        thousands(t[2]),
        thousands(t.iter().sum())
    );
    println!("cost: {}", crate::analysis::charges(&a));

    step(
        10,
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

    step(11, "An analyst's own SQL, and what the room refuses");
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
        12,
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

    activation(brand, publisher, cid, tmp).await?;

    step(14, "Budgets left");
    let b: Vec<BudgetOut> = brand.get(&format!("/collaborations/{cid}/budgets")).await?;
    println!("{}", crate::analysis::budgets_table(&b));
    Ok(())
}

/// The publisher asks for the brand's customers it also knows, in one age band, as its own
/// device ids to target them; the brand approves; the publisher downloads once.
async fn activation(
    brand: &Client,
    publisher: &Client,
    cid: &str,
    tmp: &std::path::Path,
) -> Result<()> {
    step(
        13,
        "Activation: the publisher receives the matched segment as its own device ids",
    );
    let req: ActivationOut = publisher
        .post(
            &format!("/collaborations/{cid}/activations"),
            &ActivationIn {
                source: "crm-customers".into(),
                target: "logged-in-audience".into(),
                key: "email_hmac".into(),
                filter: Default::default(),
                output: "maid_hmac".into(),
            },
        )
        .await?;
    println!(
        "daily-planet asks for northwind-retail's customers that it also knows (matched on email), as its own maid_hmac \
         (the brand's rule allows daily-planet, filters on region or age band, at least 1,000 of the brand's people)"
    );
    let ok: ActivationOut = brand
        .post(
            &format!("/collaborations/{cid}/activations/{}/approve", req.id),
            &serde_json::json!({}),
        )
        .await?;
    println!(
        "northwind-retail approved activation {} ({})",
        ok.id, ok.status
    );
    let dest = tmp.join("segment-25-34.csv");
    let path = format!("/collaborations/{cid}/activations/{}/segment", req.id);
    match publisher.download_to(&path, &dest).await {
        Ok(_) => {
            let lines = std::fs::read_to_string(&dest)?
                .lines()
                .count()
                .saturating_sub(1);
            println!(
                "daily-planet downloaded {} of its own device-id pseudonyms (never the brand's identifiers or attributes)",
                thousands(lines as u64)
            );
        }
        Err(e) => println!("the segment was refused:\n  {}", short(&e)),
    }
    if let Err(e) = publisher.download_to(&path, &dest).await {
        println!("a second download is refused:\n  {}", short(&e));
    }
    Ok(())
}

fn short(e: &anyhow::Error) -> String {
    match e.downcast_ref::<ApiFailure>() {
        Some(f) => f.to_string().replace('\n', " "),
        None => format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use arrow::array::{Array, AsArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    /// (unit, [email, phone, maid] pseudonyms) of a prepared file.
    fn rows(path: &std::path::Path, unit: &str) -> Vec<(String, [Option<String>; 3])> {
        let f = std::fs::File::open(path).unwrap();
        let mut out = Vec::new();
        for b in ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
        {
            let b = b.unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
            let (u, e, p, m) = (
                col(unit),
                col("email_hmac"),
                col("phone_hmac"),
                col("maid_hmac"),
            );
            let get = |a: &arrow::array::StringArray, i: usize| {
                (!a.is_null(i)).then(|| a.value(i).to_owned())
            };
            for i in 0..b.num_rows() {
                out.push((u.value(i).to_owned(), [get(&e, i), get(&p, i), get(&m, i)]));
            }
        }
        out
    }

    /// Both parties' raw, messy identifiers go through `prepare` separately, and a cascade over
    /// the pseudonyms finds exactly the people the synthetic universe says both hold validly:
    /// normalisation makes the forms meet, invalid values never match, nothing is double counted.
    #[test]
    fn prepared_pseudonyms_match_exactly_the_people_both_parties_hold() {
        let tmp = tempfile::tempdir().unwrap();
        let u = Universe::new(2_000);
        let everyone = synth::people(&u, 11);
        let ids = synth::raw_ids(&everyone, 11);
        let key = PseudonymKey::derive(synth::DEMO_SECRET, "spring-campaign").unwrap();
        let mut files = Vec::new();
        for (party, config) in [("brand", BRAND_PREP), ("publisher", PUBLISHER_PREP)] {
            let raw = tmp.path().join(format!("{party}.csv"));
            synth::write_raw_csv(
                party,
                &u,
                &everyone,
                &ids,
                11,
                &mut std::fs::File::create(&raw).unwrap(),
            )
            .unwrap();
            let out = OutputPaths::next_to(&tmp.path().join(format!("{party}.parquet")));
            let cfg = PrepareConfig::from_toml(config).unwrap();
            let report = prepare(&cfg, &key, &raw, &out, &mut |_| {}).unwrap();
            assert!(!report.refused);
            let text = std::fs::read(&out.upload).unwrap();
            assert!(
                !text.windows(4).any(|w| w == b"@gma" || w == b"@out"),
                "no raw email in the prepared file"
            );
            files.push(out.upload);
        }
        let brand = rows(&files[0], "customer_id");
        let publisher = rows(&files[1], "user_id");
        let sets: Vec<HashSet<&str>> = (0..3)
            .map(|k| {
                publisher
                    .iter()
                    .filter_map(|(_, ids)| ids[k].as_deref())
                    .collect()
            })
            .collect();
        let mut found = [0u64; 3];
        let mut seen = HashMap::new();
        for (unit, ids) in &brand {
            if let Some(k) =
                (0..3).find(|k| ids[*k].as_deref().is_some_and(|v| sets[*k].contains(v)))
            {
                found[k] += 1;
                assert!(seen.insert(unit.clone(), k).is_none(), "counted once");
            }
        }
        let mut truth = [0u64; 3];
        for i in 0..u.size() {
            if let Some(l) = synth::cascade_level(&u, i, 11) {
                truth[l] += 1;
            }
        }
        assert_eq!(found, truth);
        assert!(
            truth.iter().all(|t| *t > 30),
            "every level is exercised: {truth:?}"
        );
    }
}
