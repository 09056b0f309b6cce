//! Client commands for analyses: policies, budgets, SQL queries, templates and results.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cleanroom_server::wire::{
    AnalysisOut, ApprovalIn, ApprovalOut, BudgetOut, CollaborationDetail, ColumnOut, DatasetOut,
    GrantIn, PolicyOut, PolicyWire, QueryIn, ResultTableOut, TemplateOut, TemplateRunIn,
};

use crate::client::{Client, seg};
use crate::output::{self, table};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Set (a new version of) the analysis policy of one of your datasets, from a TOML or
    /// JSON file (see `cleanroom policy example`).
    Set {
        collab: String,
        dataset: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Show a dataset's current policy.
    Show { collab: String, dataset: String },
    /// Print a commented example policy; given a collaboration and one of your datasets, one
    /// written for that dataset's schema and the collaboration's other members.
    Example {
        collab: Option<String>,
        dataset: Option<String>,
        /// Turn on the activation rule (the other members may receive matched segments as
        /// their own identifiers, once per approval).
        #[arg(long, requires = "dataset")]
        activation: bool,
    },
}

#[derive(Subcommand)]
pub enum BudgetCmd {
    /// Grant privacy budget for your organisation's data in a collaboration (admins only;
    /// amounts are added; spending is never undone and nothing refreshes by itself).
    Grant {
        collab: String,
        /// Epsilon added to the total.
        #[arg(long)]
        epsilon: f64,
        /// Delta added to the total (default 1e-6 on the first grant).
        #[arg(long)]
        delta: Option<f64>,
        /// Most epsilon one analysis may spend (default on the first grant: min(total, 1)).
        #[arg(long)]
        per_query_epsilon: Option<f64>,
        /// Most delta one analysis may spend (default on the first grant: the total delta
        /// times per-query epsilon / total epsilon, so delta lasts as long as epsilon).
        #[arg(long)]
        per_query_delta: Option<f64>,
    },
    /// Every organisation's budget in a collaboration: granted, spent, left.
    Show { collab: String },
}

/// Privacy parameters and receivers of an analysis.
#[derive(Args, Clone)]
pub struct RunArgs {
    /// Epsilon to spend (default: the smallest per-query cap of the owners touched).
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// Delta to spend (default: the smallest per-query delta cap, scaled by the share of the
    /// epsilon cap asked for).
    #[arg(long)]
    pub delta: Option<f64>,
    /// Comma-separated organisations to deliver the result to (default: yours).
    #[arg(long, value_delimiter = ',')]
    pub receivers: Vec<String>,
    /// Check and price only: nothing runs and nothing is spent.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
pub struct QueryArgs {
    pub collab: String,
    /// The SQL (an aggregate query over the collaboration's datasets); or use --file.
    #[arg(required_unless_present = "file")]
    pub sql: Option<String>,
    /// Read the SQL from a file.
    #[arg(long, conflicts_with = "sql")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand)]
pub enum AnalysisCmd {
    /// Analyses your organisation requested or receives.
    List { collab: String },
    /// One analysis, with its result if your organisation receives it.
    Show { collab: String, id: String },
}

#[derive(Subcommand)]
pub enum TemplateCmd {
    /// The ready-made analyses this server offers.
    List,
    /// Approve a template version on one of your datasets (default: the latest version).
    Approve {
        collab: String,
        template: String,
        #[arg(long)]
        dataset: String,
        /// The template version (default: the latest).
        #[arg(long)]
        template_version: Option<u32>,
    },
    /// Withdraw an approval.
    Revoke {
        collab: String,
        template: String,
        #[arg(long)]
        dataset: String,
        /// The template version (default: the latest).
        #[arg(long)]
        template_version: Option<u32>,
    },
    /// Approvals in a collaboration.
    Approvals { collab: String },
    /// Run a template: `--param name=value` for each parameter.
    Run {
        collab: String,
        template: String,
        #[arg(long = "param", short = 'p', value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// The template version (default: the latest).
        #[arg(long)]
        template_version: Option<u32>,
        #[command(flatten)]
        run: RunArgs,
    },
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("{s:?} is not of the form name=value"))
}

pub const EXAMPLE_POLICY: &str = r#"# An analysis policy: the rules a data owner sets for one dataset.
# Columns must exist in the dataset's schema with the matching role.

# Identifier columns that may be used in JOIN ... ON a.key = b.key (never output).
join_keys = ["email_hmac"]
# Columns that may be grouped and filtered on.
dimensions = ["age_band", "region"]

# Every output row must stand for at least this many distinct people of this dataset.
min_group_size = 50
# Rows one person may contribute, and rows kept per join-key value (extra rows are dropped
# at random before aggregating; this is what bounds a person's influence after joins).
max_rows_per_unit = 1
max_rows_per_key = 1

# Calibrated noise on every result touching this dataset, charged to your privacy budget.
differential_privacy = true
# May the analysts below send their own SQL? (Templates need your approval either way.)
allow_sql = true

# Organisations (besides yours) that may analyse this dataset, and receive results.
analysts = ["daily-planet"]
receivers = ["daily-planet"]

# Metrics: values are clamped into [lower, upper]; aggregates default to count,
# count_distinct, sum and avg (min and max only without differential privacy).
[[metrics]]
column = "purchases"
lower = 0
upper = 20

[[metrics]]
column = "revenue"
lower = 0
upper = 2000
precision = 2

# Activation (optional; without it nobody can): partners that may receive the matched
# segment of this dataset as THEIR OWN identifiers, once per approval by you, when it stands
# for at least min_segment_size of your people (default 1000, at least min_group_size),
# narrowed only by the dimensions listed. See `cleanroom activation`.
# [activation]
# partners = ["daily-planet"]
# min_segment_size = 1000
# dimensions = ["region"]
"#;

/// A policy for one dataset, from its schema and the collaboration's members: every
/// identifier a join key, every dimension a dimension, every metric with a range to adjust,
/// the other active members as analysts and receivers, and an activation rule (on only when
/// asked for).
pub fn policy_for(dataset: &DatasetOut, partners: &[String], activation: bool) -> Result<String> {
    let of = |role: &str| -> Vec<&ColumnOut> {
        dataset.columns.iter().filter(|c| c.role == role).collect()
    };
    let list = |xs: Vec<String>| -> String {
        let quoted: Vec<String> = xs.iter().map(|x| format!("{x:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let names = |cs: &[&ColumnOut]| list(cs.iter().map(|c| c.name.clone()).collect());
    let keys = of("identifier");
    let dims = of("dimension");
    let mut t = format!(
        "# The analysis policy of {} (owner {}), written from its schema by `cleanroom policy example`.\n\
         # Read every line before `cleanroom policy set`: this is what others may learn from it.\n\n\
         # Identifier columns that may join (JOIN ... ON a.key = b.key); never output.\n\
         join_keys = {}\n\
         # Columns that may be grouped and filtered on.\n\
         dimensions = {}\n\n\
         # Every output row must stand for at least this many distinct people of this dataset.\n\
         min_group_size = 50\n\
         # Rows one person may contribute, and rows kept per join-key value.\n\
         max_rows_per_unit = 1\n\
         max_rows_per_key = 1\n\
         # Calibrated noise on every result touching this dataset, charged to your budget.\n\
         differential_privacy = true\n\
         allow_sql = true\n\n\
         # Organisations (besides yours) that may analyse this dataset, and receive results.\n\
         analysts = {}\n\
         receivers = {}\n",
        dataset.name,
        dataset.owner,
        names(&keys),
        names(&dims),
        list(partners.to_vec()),
        list(partners.to_vec()),
    );
    for m in of("metric") {
        let (upper, precision) = if m.r#type == "float64" {
            ("1000", "\nprecision = 2")
        } else {
            ("100", "")
        };
        t.push_str(&format!(
            "\n# {}: values are clamped into [lower, upper] before they are summed; set the range\n\
             # you expect (a wider range means more noise).\n\
             [[metrics]]\ncolumn = {:?}\nlower = 0\nupper = {upper}{precision}\n",
            m.name, m.name
        ));
    }
    let rule = format!(
        "[activation]\npartners = {}\nmin_segment_size = 1000\ndimensions = {}\n",
        list(partners.to_vec()),
        names(&dims)
    );
    t.push_str(
        "\n# Activation: the partners may receive the matched segment of this dataset as THEIR OWN\n\
         # identifiers, once per approval by you, when it stands for at least min_segment_size of\n\
         # your people, narrowed only by the dimensions listed.\n",
    );
    if activation {
        t.push_str(&rule);
    } else {
        for line in rule.lines() {
            t.push_str(&format!("# {line}\n"));
        }
    }
    // What we print must be a policy the server accepts as written.
    toml::from_str::<PolicyWire>(&t).context("the generated policy does not parse (a bug)")?;
    Ok(t)
}

pub fn read_policy(path: &PathBuf) -> Result<PolicyWire> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the policy file {}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid policy", path.display()))
    } else {
        toml::from_str(&text).with_context(|| format!("{} is not a valid policy", path.display()))
    }
}

pub async fn policy(c: &Client, json: bool, cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Example {
            collab: Some(collab),
            dataset: Some(dataset),
            activation,
        } => {
            let d: DatasetOut = c
                .get(&format!(
                    "/collaborations/{}/datasets/{}",
                    seg(&collab)?,
                    seg(&dataset)?
                ))
                .await?;
            let detail: CollaborationDetail =
                c.get(&format!("/collaborations/{}", seg(&collab)?)).await?;
            let partners: Vec<String> = detail
                .members
                .iter()
                .filter(|m| m.org != d.owner && m.status == "active")
                .map(|m| m.org.clone())
                .collect();
            print!("{}", policy_for(&d, &partners, activation)?);
            Ok(())
        }
        PolicyCmd::Example {
            collab: None,
            dataset: None,
            ..
        } => {
            print!("{EXAMPLE_POLICY}");
            Ok(())
        }
        PolicyCmd::Example { .. } => {
            bail!("give a collaboration and one of its datasets, or neither for a generic example")
        }
        PolicyCmd::Set {
            collab,
            dataset,
            file,
        } => {
            let p = read_policy(&file)?;
            let out: PolicyOut = c
                .put(
                    &format!(
                        "/collaborations/{}/datasets/{}/policy",
                        seg(&collab)?,
                        seg(&dataset)?
                    ),
                    &p,
                )
                .await?;
            show_policy(&out, json)
        }
        PolicyCmd::Show { collab, dataset } => {
            let out: PolicyOut = c
                .get(&format!(
                    "/collaborations/{}/datasets/{}/policy",
                    seg(&collab)?,
                    seg(&dataset)?
                ))
                .await?;
            show_policy(&out, json)
        }
    }
}

fn show_policy(p: &PolicyOut, json: bool) -> Result<()> {
    if json {
        return output::json(p);
    }
    println!(
        "policy v{} of {} (owner {}), set by {} at {}",
        p.version, p.dataset, p.owner, p.set_by, p.created_at
    );
    let w = &p.policy;
    let opt = |v: Option<u32>| v.map_or("-".into(), |v| v.to_string());
    println!(
        "{}",
        table(
            &["rule", "value"],
            vec![
                vec!["join keys".into(), w.join_keys.join(", ")],
                vec!["dimensions".into(), w.dimensions.join(", ")],
                vec!["minimum group size".into(), opt(w.min_group_size)],
                vec!["rows per person".into(), opt(w.max_rows_per_unit)],
                vec!["rows per join key".into(), opt(w.max_rows_per_key)],
                vec![
                    "differential privacy".into(),
                    if w.differential_privacy.unwrap_or(true) {
                        "on"
                    } else {
                        "off"
                    }
                    .into(),
                ],
                vec![
                    "own SQL".into(),
                    if w.allow_sql.unwrap_or(true) {
                        "allowed"
                    } else {
                        "templates only"
                    }
                    .into(),
                ],
                vec!["analysts".into(), w.analysts.join(", ")],
                vec!["receivers".into(), w.receivers.join(", ")],
                vec![
                    "activation".into(),
                    w.activation.as_ref().map_or("none".into(), |a| {
                        format!(
                            "partners {}; minimum segment {}; dimensions {}",
                            a.partners.join(", "),
                            a.min_segment_size.map_or("-".into(), |n| n.to_string()),
                            a.dimensions.join(", ")
                        )
                    }),
                ],
            ],
        )
    );
    if !w.metrics.is_empty() {
        println!(
            "{}",
            table(
                &["metric", "aggregates", "bounds", "precision"],
                w.metrics
                    .iter()
                    .map(|m| vec![
                        m.column.clone(),
                        m.aggregates.join(", "),
                        format!("[{}, {}]", m.lower, m.upper),
                        m.precision.map_or("-".into(), |p| p.to_string()),
                    ])
                    .collect(),
            )
        );
    }
    Ok(())
}

pub async fn budget(c: &Client, json: bool, cmd: BudgetCmd) -> Result<()> {
    match cmd {
        BudgetCmd::Grant {
            collab,
            epsilon,
            delta,
            per_query_epsilon,
            per_query_delta,
        } => {
            let out: BudgetOut = c
                .post(
                    &format!("/collaborations/{}/budgets", seg(&collab)?),
                    &GrantIn {
                        epsilon,
                        delta,
                        epsilon_per_query: per_query_epsilon,
                        delta_per_query: per_query_delta,
                    },
                )
                .await?;
            if json {
                return output::json(&out);
            }
            println!("{}", budgets_table(&[out]));
            Ok(())
        }
        BudgetCmd::Show { collab } => {
            let out: Vec<BudgetOut> = c
                .get(&format!("/collaborations/{}/budgets", seg(&collab)?))
                .await?;
            if json {
                return output::json(&out);
            }
            println!("{}", budgets_table(&out));
            Ok(())
        }
    }
}

pub fn budgets_table(b: &[BudgetOut]) -> String {
    table(
        &[
            "organisation",
            "epsilon granted",
            "spent",
            "left",
            "per query",
            "delta granted",
            "delta left",
            "per query",
        ],
        b.iter()
            .map(|b| {
                vec![
                    b.org.clone(),
                    format!("{:.3}", b.epsilon_total),
                    format!("{:.3}", b.epsilon_spent),
                    format!("{:.3}", b.epsilon_left),
                    format!("{:.3}", b.epsilon_per_query),
                    format!("{:.1e}", b.delta_total),
                    format!("{:.1e}", b.delta_left),
                    format!("{:.1e}", b.delta_per_query),
                ]
            })
            .collect(),
    )
}

pub async fn query(c: &Client, json: bool, a: QueryArgs) -> Result<()> {
    let sql = match (&a.sql, &a.file) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the query file {}", f.display()))?,
        (None, None) => bail!("give the SQL as an argument or with --file"),
    };
    let out: AnalysisOut = c
        .post(
            &format!("/collaborations/{}/queries", seg(&a.collab)?),
            &QueryIn {
                sql,
                epsilon: a.run.epsilon,
                delta: a.run.delta,
                receivers: a.run.receivers,
                dry_run: a.run.dry_run,
            },
        )
        .await?;
    show_analysis(&out, json)
}

pub async fn analysis(c: &Client, json: bool, cmd: AnalysisCmd) -> Result<()> {
    match cmd {
        AnalysisCmd::List { collab } => {
            let out: Vec<AnalysisOut> = c
                .get(&format!("/collaborations/{}/analyses", seg(&collab)?))
                .await?;
            if json {
                return output::json(&out);
            }
            println!(
                "{}",
                table(
                    &["id", "kind", "by", "status", "cost", "receivers", "request"],
                    out.iter()
                        .map(|a| vec![
                            a.id.clone(),
                            a.kind.clone(),
                            a.requested_by.clone(),
                            a.status.to_string(),
                            charges(a),
                            a.receivers.join(","),
                            shorten(&a.request, 60),
                        ])
                        .collect(),
                )
            );
            Ok(())
        }
        AnalysisCmd::Show { collab, id } => {
            let out: AnalysisOut = c
                .get(&format!(
                    "/collaborations/{}/analyses/{}",
                    seg(&collab)?,
                    seg(&id)?
                ))
                .await?;
            show_analysis(&out, json)
        }
    }
}

pub async fn template(c: &Client, json: bool, cmd: TemplateCmd) -> Result<()> {
    match cmd {
        TemplateCmd::List => {
            let out: Vec<TemplateOut> = c.get("/templates").await?;
            if json {
                return output::json(&out);
            }
            for t in &out {
                println!("{} (version {}): {}", t.name, t.version, t.title);
                println!("  {}", t.description);
                for p in &t.params {
                    println!(
                        "    --param {}=…{}  {}",
                        p.name,
                        if p.required { "" } else { " (optional)" },
                        p.help
                    );
                }
            }
            Ok(())
        }
        TemplateCmd::Approve {
            collab,
            template,
            dataset,
            template_version: version,
        } => {
            let out: ApprovalOut = c
                .post(
                    &format!(
                        "/collaborations/{}/templates/{}/approvals",
                        seg(&collab)?,
                        seg(&template)?
                    ),
                    &ApprovalIn { dataset, version },
                )
                .await?;
            if json {
                return output::json(&out);
            }
            println!(
                "{} approved {} version {} on {}",
                out.owner, out.template, out.version, out.dataset
            );
            Ok(())
        }
        TemplateCmd::Revoke {
            collab,
            template,
            dataset,
            template_version: version,
        } => {
            let mut path = format!(
                "/collaborations/{}/templates/{}/approvals?dataset={}",
                seg(&collab)?,
                seg(&template)?,
                seg(&dataset)?
            );
            if let Some(v) = version {
                path.push_str(&format!("&version={v}"));
            }
            c.delete(&path).await?;
            if json {
                return output::json(
                    &serde_json::json!({"revoked": true, "template": template, "dataset": dataset}),
                );
            }
            println!("approval of {template} on {dataset} withdrawn");
            Ok(())
        }
        TemplateCmd::Approvals { collab } => {
            let out: Vec<ApprovalOut> = c
                .get(&format!(
                    "/collaborations/{}/templates/approvals",
                    seg(&collab)?
                ))
                .await?;
            if json {
                return output::json(&out);
            }
            println!(
                "{}",
                table(
                    &[
                        "dataset",
                        "owner",
                        "template",
                        "version",
                        "approved by",
                        "at"
                    ],
                    out.iter()
                        .map(|a| vec![
                            a.dataset.clone(),
                            a.owner.clone(),
                            a.template.clone(),
                            a.version.to_string(),
                            a.approved_by.clone(),
                            a.approved_at.clone(),
                        ])
                        .collect(),
                )
            );
            Ok(())
        }
        TemplateCmd::Run {
            collab,
            template,
            params,
            template_version: version,
            run,
        } => {
            let out: AnalysisOut = c
                .post(
                    &format!(
                        "/collaborations/{}/templates/{}/runs",
                        seg(&collab)?,
                        seg(&template)?
                    ),
                    &TemplateRunIn {
                        version,
                        params: params.into_iter().collect(),
                        epsilon: run.epsilon,
                        delta: run.delta,
                        receivers: run.receivers,
                        dry_run: run.dry_run,
                    },
                )
                .await?;
            show_analysis(&out, json)
        }
    }
}

fn shorten(s: &str, n: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n).collect::<String>())
    }
}

pub fn charges(a: &AnalysisOut) -> String {
    if a.charges.is_empty() {
        return "nothing".into();
    }
    a.charges
        .iter()
        .map(|c| format!("{} ε={:.3}", c.org, c.epsilon))
        .collect::<Vec<_>>()
        .join("; ")
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => output::thousands_signed(i),
            None => n.to_string(),
        },
        other => other.to_string(),
    }
}

pub fn result_table(t: &ResultTableOut) -> String {
    let header: Vec<String> = t
        .columns
        .iter()
        .map(|c| match c.noise_sd {
            Some(sd) => format!("{} (±{:.0})", c.name, sd),
            None => c.name.clone(),
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(
        &header,
        t.rows
            .iter()
            .map(|r| r.iter().map(cell).collect())
            .collect(),
    )
}

/// One sentence on the groups a table leaves out.
pub fn left_out_line(groups: i64, noise_sd: Option<f64>) -> String {
    let n = output::thousands_signed(groups);
    let s = if groups == 1 { "" } else { "s" };
    match noise_sd {
        Some(sd) => format!(
            "groups left out (below the thresholds): about {n} group{s} (a noisy estimate, ±{:.0} at two standard deviations)",
            2.0 * sd
        ),
        None => format!("groups left out (below the thresholds): {n} group{s}"),
    }
}

pub fn show_analysis(a: &AnalysisOut, json: bool) -> Result<()> {
    if json {
        return output::json(a);
    }
    match a.status.as_str() {
        "dry_run" => {
            println!(
                "dry run: nothing ran, nothing was spent; it would cost {}",
                charges(a)
            );
            if let Some(p) = &a.plan {
                println!("datasets: {}", p.datasets.join(", "));
                if let (Some(e), Some(d)) = (p.epsilon, p.delta) {
                    println!("privacy: epsilon {e}, delta {d:e}");
                }
                for n in &p.notes {
                    println!("  {n}");
                }
                if p.affordable {
                    println!("budgets: every owner's budget can pay for it now");
                } else {
                    println!("budgets: it cannot run now:");
                    for b in &p.budget_problems {
                        println!("  {b}");
                    }
                }
            }
            return Ok(());
        }
        _ => println!(
            "analysis {} ({}): {}; cost {}{}",
            a.id,
            a.kind,
            a.status,
            charges(a),
            a.reused_from
                .as_ref()
                .map(|r| format!(" (the stored result of {r}, no budget spent)"))
                .unwrap_or_default()
        ),
    }
    if let Some(e) = &a.error {
        println!("error: {e}");
    }
    match &a.result {
        Some(r) => {
            for t in &r.tables {
                println!("\n{}", t.name);
                if t.rows.is_empty() {
                    println!("(no group is large enough to be shown)");
                } else {
                    println!("{}", result_table(t));
                }
                if let Some(l) = &t.left_out {
                    println!("{}", left_out_line(l.groups, l.noise_sd));
                }
            }
            for n in &r.notes {
                println!("note: {n}");
            }
        }
        None if a.status == "released" => {
            println!("(your organisation is not a receiver of this result)")
        }
        None => {}
    }
    Ok(())
}
