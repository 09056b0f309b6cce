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
                    e.at.clone(),
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
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1234567), "1,234,567");
    }
}
