//! `serve --max-memory`: how much memory all analyses may hold together.

/// A memory limit as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Half of this machine's memory (no limit where it cannot be read).
    Auto,
    /// No limit.
    Unlimited,
    /// This many bytes.
    Bytes(usize),
}

impl Limit {
    /// The limit in bytes, `None` for none.
    pub fn resolve(self) -> Option<usize> {
        match self {
            Limit::Auto => machine_memory().map(|m| m / 2),
            Limit::Unlimited => None,
            Limit::Bytes(b) => Some(b),
        }
    }
}

/// Parses `auto`, `unlimited`, or a size with an optional binary unit: `1073741824`, `512M`,
/// `4G`, `4GiB`, `64K`.
pub fn parse_limit(s: &str) -> Result<Limit, String> {
    let t = s.trim().to_ascii_lowercase();
    match t.as_str() {
        "auto" => return Ok(Limit::Auto),
        "unlimited" | "none" => return Ok(Limit::Unlimited),
        _ => {}
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: write bytes, or a number with K, M, G or T (1024-based), or `unlimited`"
            ));
        }
    };
    let n: usize = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size: write e.g. 4G, 512M, or `unlimited`"))?;
    let bytes = n
        .checked_mul(1usize << shift)
        .ok_or_else(|| format!("{s:?} is larger than this machine can address"))?;
    if bytes < 1 << 20 {
        return Err(format!(
            "{s:?} is below 1 MiB: no analysis fits in that; write e.g. 512M"
        ));
    }
    Ok(Limit::Bytes(bytes))
}

/// Parses a spill quota: a size as [`parse_limit`] takes, or `0`/`off` for no spilling.
pub fn parse_spill(s: &str) -> Result<u64, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "0" | "off" | "none" => Ok(0),
        "unlimited" => Err("the spill space needs a bound: write e.g. 100G, or `off`".into()),
        _ => match parse_limit(s)? {
            Limit::Bytes(b) => Ok(b as u64),
            _ => Err(format!("{s:?} is not a size: write e.g. 100G, or `off`")),
        },
    }
}

/// This machine's memory in bytes, from `/proc/meminfo` (Linux); `None` elsewhere.
fn machine_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spill_quotas() {
        assert_eq!(parse_spill("off"), Ok(0));
        assert_eq!(parse_spill("0"), Ok(0));
        assert_eq!(parse_spill("100G"), Ok(100 << 30));
        assert!(parse_spill("unlimited").is_err());
        assert!(parse_spill("auto").is_err());
        assert!(parse_spill("12X").is_err());
    }

    #[test]
    fn sizes_units_and_words() {
        assert_eq!(parse_limit("auto"), Ok(Limit::Auto));
        assert_eq!(parse_limit("Unlimited"), Ok(Limit::Unlimited));
        assert_eq!(parse_limit("4G"), Ok(Limit::Bytes(4 << 30)));
        assert_eq!(parse_limit("4GiB"), Ok(Limit::Bytes(4 << 30)));
        assert_eq!(parse_limit("512m"), Ok(Limit::Bytes(512 << 20)));
        assert_eq!(parse_limit("2097152"), Ok(Limit::Bytes(2 << 20)));
        for bad in ["", "G", "4X", "-1G", "1.5G", "99999999999999999999T", "64K"] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
        assert!(parse_limit("4X").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn auto_is_half_the_machine_where_it_is_known() {
        if let Some(m) = machine_memory() {
            assert_eq!(Limit::Auto.resolve(), Some(m / 2));
            assert!(m > 1 << 20);
        }
        assert_eq!(Limit::Unlimited.resolve(), None);
    }
}
