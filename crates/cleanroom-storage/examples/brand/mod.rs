//! The generated upload both upload benchmarks use (`cleanroom-storage`'s `ingest_bench` and
//! `cleanroom-objstore`'s `upload_bench`): a CSV shaped like the demo brand's CRM.

use cleanroom_core::schema::{ColumnSpec, DatasetSchema};

/// customer id, 64-hex-digit email pseudonym, age band, region, purchases, revenue, date.
pub fn schema() -> DatasetSchema {
    DatasetSchema::new(
        [
            "customer_id:string:privacy_unit",
            "email_hmac:string:identifier",
            "age_band:string:dimension",
            "region:string:dimension",
            "purchases:int64:metric",
            "revenue:float64:metric",
            "first_purchase:date:dimension",
        ]
        .iter()
        .map(|s| ColumnSpec::parse_compact(s).expect("column"))
        .collect(),
    )
    .expect("schema")
}

/// `rows` deterministic rows (a xorshift stream), with a header.
pub fn csv(rows: usize) -> Vec<u8> {
    use std::fmt::Write;
    let mut s =
        String::from("customer_id,email_hmac,age_band,region,purchases,revenue,first_purchase\n");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = writeln!(
            s,
            "c{i:08},{x:016x}{:016x}{:016x}{:016x},{},{},{},{}.{:02},2025-{:02}-{:02}",
            x.rotate_left(16),
            x.rotate_left(32),
            x.rotate_left(48),
            ["18-24", "25-34", "35-44", "45-54", "55+"][(x % 5) as usize],
            ["north", "south", "east", "west", "centre"][(x >> 8) as usize % 5],
            x % 40,
            x % 900,
            x % 100,
            1 + (x >> 16) % 12,
            1 + (x >> 24) % 28,
        );
    }
    s.into_bytes()
}
