//! Human tables and JSON output.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    for r in rows {
        t.add_row(r);
    }
    // Off a terminal (a pipe, a log, CI) there is no width to wrap to: use 100 columns, so
    // that output read later still fits a normal window.
    if t.width().is_none() {
        t.set_width(100);
    }
    t.to_string()
}

pub fn json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

pub fn num(v: Option<u64>) -> String {
    v.map(thousands).unwrap_or_else(|| "-".into())
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn thousands_signed(n: i64) -> String {
    if n < 0 {
        format!("-{}", thousands(n.unsigned_abs()))
    } else {
        thousands(n as u64)
    }
}

pub fn members(ms: &[cleanroom_server::wire::MemberOut]) -> String {
    table(
        &["organisation", "status", "abilities", "invited", "joined"],
        ms.iter()
            .map(|m| {
                vec![
                    m.org.clone(),
                    m.status.clone(),
                    m.abilities.join(","),
                    m.invited_at.clone(),
                    opt(&m.joined_at),
                ]
            })
            .collect(),
    )
}

pub fn datasets(ds: &[cleanroom_server::wire::DatasetOut]) -> String {
    table(
        &[
            "dataset",
            "owner",
            "status",
            "rows",
            "columns",
            "encrypted bytes",
        ],
        ds.iter()
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.owner.clone(),
                    d.status.clone(),
                    num(d.row_count),
                    d.columns
                        .iter()
                        .map(|c| format!("{} {} ({})", c.name, c.r#type, c.role))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    num(d.encrypted_bytes),
                ]
            })
            .collect(),
    )
}

pub fn audit(es: &[cleanroom_server::wire::AuditEntryOut]) -> String {
    table(
        &["#", "at", "actor", "action", "target", "outcome", "detail"],
        es.iter()
            .map(|e| {
                vec![
                    e.seq.to_string(),
                    // To the second: the full precision is in `--json`.
                    e.at.get(..19).unwrap_or(&e.at).replace('T', " "),
                    e.actor.clone(),
                    e.action.clone(),
                    e.target.clone(),
                    e.outcome.clone(),
                    e.detail.clone(),
                ]
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_fit_a_hundred_columns_off_a_terminal() {
        let long = "a detail that goes on and on ".repeat(20);
        let t = super::table(
            &["#", "at", "actor", "action", "target", "outcome", "detail"],
            vec![vec![
                "1".into(),
                "2026-12-03 10:00:00".into(),
                "northwind-retail/maya".into(),
                "analysis.release".into(),
                "0b7e0c4e-1a6f-4a4e-9d7e-1f0c2a3b4c5d".into(),
                "allowed".into(),
                long,
            ]],
        );
        for line in t.lines() {
            assert!(line.chars().count() <= 100, "{line}");
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1234567), "1,234,567");
    }
}
