//! Names: NFKC, lowercase, diacritics stripped, punctuation removed, whitespace collapsed.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::{Invalid, clean};

/// Longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// `"  Zoë  O'Brien-Smith "` → `"zoe obrien smith"`.
///
/// Apostrophes and dots are deleted (`O'Brien` = `OBrien`, `St. John` = `St John`); every other
/// character that is neither a letter nor a digit (hyphens, commas, symbols) separates words.
/// Letters without a decomposition (`ø`, `ß`, `ł`) are kept as they are: this is not a
/// transliteration.
pub fn name(raw: &str) -> Result<String, Invalid> {
    let s = clean(raw);
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err(Invalid::TooLong);
    }
    let mut out = pass(&s);
    if !out.is_ascii() {
        // Rare non-ASCII results are run again until they settle, so the function is
        // idempotent; an ASCII result of `pass` is always a fixed point.
        let mut settled = false;
        for _ in 0..3 {
            let next = pass(&out);
            if next == out {
                settled = true;
                break;
            }
            out = next;
        }
        if !settled {
            return Err(Invalid::Malformed(
                "text that does not settle under Unicode normalisation",
            ));
        }
    }
    if out.is_empty() {
        return Err(Invalid::Malformed("no letters"));
    }
    Ok(out)
}

fn pass(s: &str) -> String {
    let lowered: String = if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        let folded: String = s.nfkc().collect::<String>().to_lowercase();
        folded
            .nfd()
            .filter(|c| !is_combining_mark(*c))
            .nfc()
            .collect()
    };
    let mut out = String::with_capacity(lowered.len());
    let mut pending_space = false;
    for c in lowered.chars() {
        if c.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(c);
        } else if is_deleted(c) || is_combining_mark(c) {
            // deleted without separating words
        } else {
            pending_space = true;
        }
    }
    out
}

fn is_deleted(c: char) -> bool {
    matches!(
        c,
        '\'' | '\u{2019}' | '\u{2018}' | '\u{02BC}' | '`' | '\u{00B4}' | '.'
    ) || super::is_invisible(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name("  Zoë  O'Brien-Smith ").unwrap(), "zoe obrien smith");
        assert_eq!(name("JOSÉ").unwrap(), "jose");
        assert_eq!(name("St. John").unwrap(), "st john");
        assert_eq!(name("Ｍａｒｉａ").unwrap(), "maria");
        assert_eq!(name("Łukasz").unwrap(), "łukasz");
        assert_eq!(
            name("Müller\u{00A0}Lüdenscheidt").unwrap(),
            "muller ludenscheidt"
        );
        assert_eq!(name("e\u{0301}lise").unwrap(), "elise");
        assert_eq!(name("李 小龍").unwrap(), "李 小龍");
    }

    #[test]
    fn invalid_names() {
        assert_eq!(name("   ").unwrap_err().category(), "empty");
        assert_eq!(name("--- ...").unwrap_err().category(), "malformed");
        assert_eq!(name(&"a".repeat(201)).unwrap_err().category(), "too_long");
    }
}
