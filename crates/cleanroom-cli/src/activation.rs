//! Client commands for activations: a partner asks for the matched segment of an owner's
//! dataset as its own identifiers, the owner approves or rejects, the partner downloads it
//! once into a file (written atomically).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use cleanroom_server::wire::{ActivationIn, ActivationOut};

use crate::client::{Client, seg};
use crate::output::{self, table};

#[derive(Clone, Copy, ValueEnum)]
pub enum SegmentFormat {
    Csv,
    Jsonl,
}

#[derive(Subcommand)]
pub enum ActivationCmd {
    /// Ask for the segment of an owner's dataset matched against your own dataset, delivered
    /// as your own identifiers once the owner approves.
    Request {
        collab: String,
        /// The owner's dataset (its policy must list you as an activation partner).
        #[arg(long)]
        source: String,
        /// Your own dataset.
        #[arg(long)]
        target: String,
        /// The join key: `column`, or `source_column:target_column`.
        #[arg(long)]
        key: String,
        /// Narrow the segment: `dimension=value` on the source (repeatable).
        #[arg(long = "filter", value_parser = parse_filter)]
        filter: Vec<(String, String)>,
        /// The identifier column of your dataset to receive.
        #[arg(long)]
        output: String,
        /// Print only the activation's id (for scripts).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Approve a pending activation of one of your datasets (allows one download).
    Approve { collab: String, id: String },
    /// Reject a pending activation of one of your datasets.
    Reject { collab: String, id: String },
    /// Activations your organisation asked for or decides on.
    List { collab: String },
    /// One activation.
    Show { collab: String, id: String },
    /// Download an approved segment (once) into a file.
    Download {
        collab: String,
        id: String,
        /// Where to write it (replaced atomically).
        #[arg(long, short = 'o')]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "csv")]
        format: SegmentFormat,
    },
}

fn parse_filter(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not of the form dimension=value"))
}

fn show(list: &[ActivationOut]) -> String {
    table(
        &[
            "id",
            "status",
            "partner",
            "source",
            "target",
            "key",
            "filter",
            "output",
            "delivered",
        ],
        list.iter()
            .map(|a| {
                vec![
                    a.id.clone(),
                    a.status.to_string(),
                    a.partner.clone(),
                    format!("{} ({})", a.source, a.source_owner),
                    a.target.clone(),
                    format!("{}:{}", a.source_key, a.target_key),
                    a.filter
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    a.output.clone(),
                    a.delivered.map_or("-".into(), |n| n.to_string()),
                ]
            })
            .collect(),
    )
}

pub async fn activation(c: &Client, json: bool, cmd: ActivationCmd) -> Result<()> {
    let one = |a: ActivationOut| -> Result<()> {
        if json {
            return output::json(&a);
        }
        println!("{}", show(&[a]));
        Ok(())
    };
    match cmd {
        ActivationCmd::Request {
            collab,
            source,
            target,
            key,
            filter,
            output,
            quiet,
        } => {
            let a: ActivationOut = c
                .post(
                    &format!("/collaborations/{}/activations", seg(&collab)?),
                    &ActivationIn {
                        source,
                        target,
                        key,
                        filter: filter.into_iter().collect(),
                        output,
                    },
                )
                .await?;
            if quiet {
                println!("{}", a.id);
                return Ok(());
            }
            one(a)
        }
        ActivationCmd::Approve { collab, id } => {
            let a: ActivationOut = c
                .post(
                    &format!(
                        "/collaborations/{}/activations/{}/approve",
                        seg(&collab)?,
                        seg(&id)?
                    ),
                    &serde_json::json!({}),
                )
                .await?;
            one(a)
        }
        ActivationCmd::Reject { collab, id } => {
            let a: ActivationOut = c
                .post(
                    &format!(
                        "/collaborations/{}/activations/{}/reject",
                        seg(&collab)?,
                        seg(&id)?
                    ),
                    &serde_json::json!({}),
                )
                .await?;
            one(a)
        }
        ActivationCmd::List { collab } => {
            let list: Vec<ActivationOut> = c
                .get(&format!("/collaborations/{}/activations", seg(&collab)?))
                .await?;
            if json {
                return output::json(&list);
            }
            println!("{}", show(&list));
            Ok(())
        }
        ActivationCmd::Show { collab, id } => {
            let a: ActivationOut = c
                .get(&format!(
                    "/collaborations/{}/activations/{}",
                    seg(&collab)?,
                    seg(&id)?
                ))
                .await?;
            one(a)
        }
        ActivationCmd::Download {
            collab,
            id,
            out,
            format,
        } => {
            let f = match format {
                SegmentFormat::Csv => "csv",
                SegmentFormat::Jsonl => "jsonl",
            };
            let bytes = c
                .download_to(
                    &format!(
                        "/collaborations/{}/activations/{}/segment?format={f}",
                        seg(&collab)?,
                        seg(&id)?
                    ),
                    &out,
                )
                .await?;
            if json {
                return output::json(&serde_json::json!({
                    "activation": id, "file": out.display().to_string(), "bytes": bytes,
                }));
            }
            eprintln!(
                "wrote {} ({bytes} bytes); the approval is used, a second download is refused",
                out.display()
            );
            Ok(())
        }
    }
}
