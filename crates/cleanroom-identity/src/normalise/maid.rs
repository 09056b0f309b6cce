//! Mobile advertising ids (Apple IDFA, Google GAID/AAID): UUIDs, written lowercase and
//! hyphenated (8-4-4-4-12), the form the platforms take.

use super::{Invalid, clean};

/// Lowercase hyphenated UUID. Accepts upper or lower case, with or without hyphens, with or
/// without braces; an all-zero id (what a device with limited ad tracking reports) is invalid.
pub fn maid(raw: &str) -> Result<String, Invalid> {
    let s = clean(raw);
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.len() > 64 {
        return Err(Invalid::TooLong);
    }
    let s = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(&s);
    let bytes = s.as_bytes();
    let hex: Vec<u8> = match bytes.len() {
        36 => {
            for (i, b) in bytes.iter().enumerate() {
                let dash = matches!(i, 8 | 13 | 18 | 23);
                if dash != (*b == b'-') {
                    return Err(Invalid::Malformed("not a UUID (8-4-4-4-12 hex digits)"));
                }
            }
            bytes.iter().copied().filter(|b| *b != b'-').collect()
        }
        32 => bytes.to_vec(),
        _ => return Err(Invalid::Malformed("not a UUID (8-4-4-4-12 hex digits)")),
    };
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(Invalid::Malformed("not a UUID (8-4-4-4-12 hex digits)"));
    }
    if hex.iter().all(|b| *b == b'0') {
        return Err(Invalid::OptedOut);
    }
    let mut out = String::with_capacity(36);
    for (i, b) in hex.iter().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(b.to_ascii_lowercase() as char);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form() {
        let want = "6d92078a-8246-4ba4-ae5b-76104861e7dc";
        for s in [
            "6D92078A-8246-4BA4-AE5B-76104861E7DC",
            " 6d92078a82464ba4ae5b76104861e7dc ",
            "{6D92078A-8246-4BA4-AE5B-76104861E7DC}",
            want,
        ] {
            assert_eq!(maid(s).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn invalid_ids() {
        assert_eq!(
            maid("00000000-0000-0000-0000-000000000000"),
            Err(Invalid::OptedOut)
        );
        assert_eq!(maid("").unwrap_err().category(), "empty");
        for bad in [
            "6d92078a-8246-4ba4-ae5b-76104861e7d",
            "6d92078a8-246-4ba4-ae5b-76104861e7dc",
            "zd92078a-8246-4ba4-ae5b-76104861e7dc",
            "not-an-id",
        ] {
            assert_eq!(maid(bad).unwrap_err().category(), "malformed", "{bad}");
        }
    }
}
