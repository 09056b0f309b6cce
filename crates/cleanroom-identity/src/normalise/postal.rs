//! Postal codes: uppercase, spaces and hyphens removed, checked against the default region's
//! format where we know it (GB, US, CA), a generic shape elsewhere.

use unicode_normalization::UnicodeNormalization;

use super::{Invalid, clean};

/// Normalised postal code in the system of `region` (ISO 3166-1 alpha-2).
///
/// - GB: the full postcode without its space, `SW1A1AA` (the inward code is always three
///   characters, so the space carries no information);
/// - US: the five-digit ZIP (a ZIP+4 is cut to its first five digits);
/// - CA: `A1A1A1`;
/// - elsewhere: 2 to 10 ASCII letters and digits.
pub fn postal_code(raw: &str, region: &str) -> Result<String, Invalid> {
    let s = clean(raw);
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.len() > 64 {
        return Err(Invalid::TooLong);
    }
    let folded: String = if s.is_ascii() {
        s.into_owned()
    } else {
        s.nfkc().collect()
    };
    let mut code = String::with_capacity(folded.len());
    for c in folded.chars() {
        match c {
            ' ' | '-' | '\u{2010}'..='\u{2015}' => {}
            c if c.is_whitespace() => {}
            c if c.is_ascii_alphanumeric() => code.push(c.to_ascii_uppercase()),
            _ => {
                return Err(Invalid::BadCharacters(
                    "only letters, digits, spaces and hyphens belong in a postal code",
                ));
            }
        }
    }
    if code.is_empty() {
        return Err(Invalid::Empty);
    }
    match region.trim().to_ascii_uppercase().as_str() {
        "GB" | "UK" | "GG" | "JE" | "IM" => gb(code),
        "US" | "PR" => us(code),
        "CA" => ca(code),
        _ => {
            if !(2..=10).contains(&code.len()) {
                return Err(Invalid::Malformed("not 2 to 10 letters and digits"));
            }
            Ok(code)
        }
    }
}

fn gb(code: String) -> Result<String, Invalid> {
    const WHY: &str = "not a UK postcode (outward code, then digit and two letters)";
    if code == "GIR0AA" {
        return Ok(code);
    }
    let b = code.as_bytes();
    if !(5..=7).contains(&b.len()) {
        return Err(Invalid::Malformed(WHY));
    }
    let (outward, inward) = b.split_at(b.len() - 3);
    let inward_ok = inward[0].is_ascii_digit()
        && inward[1].is_ascii_alphabetic()
        && inward[2].is_ascii_alphabetic();
    // Outward: A9, A99, AA9, AA99, A9A, AA9A.
    let a = |i: usize| outward.get(i).is_some_and(u8::is_ascii_alphabetic);
    let d = |i: usize| outward.get(i).is_some_and(u8::is_ascii_digit);
    let outward_ok = match outward.len() {
        2 => a(0) && d(1),
        3 => a(0) && ((d(1) && d(2)) || (a(1) && d(2)) || (d(1) && a(2))),
        4 => a(0) && a(1) && d(2) && (d(3) || a(3)),
        _ => false,
    };
    if inward_ok && outward_ok {
        Ok(code)
    } else {
        Err(Invalid::Malformed(WHY))
    }
}

/// The outward code (district) of a normalised UK postcode: everything but the last three
/// characters.
pub fn gb_outward(normalised: &str) -> Option<&str> {
    normalised.get(..normalised.len().checked_sub(3)?)
}

fn us(code: String) -> Result<String, Invalid> {
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::Malformed("a US ZIP code has only digits"));
    }
    match code.len() {
        5 => Ok(code),
        9 => Ok(code[..5].to_owned()),
        _ => Err(Invalid::Malformed("a US ZIP code has 5 or 5+4 digits")),
    }
}

fn ca(code: String) -> Result<String, Invalid> {
    let b = code.as_bytes();
    let ok = b.len() == 6
        && b.iter().enumerate().all(|(i, c)| {
            if i % 2 == 0 {
                c.is_ascii_alphabetic()
            } else {
                c.is_ascii_digit()
            }
        });
    if ok {
        Ok(code)
    } else {
        Err(Invalid::Malformed("not a Canadian postal code (A1A 1A1)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions() {
        assert_eq!(postal_code(" sw1a 1aa ", "GB").unwrap(), "SW1A1AA");
        assert_eq!(postal_code("M1 1AE", "GB").unwrap(), "M11AE");
        assert_eq!(postal_code("EC1A-1BB", "GB").unwrap(), "EC1A1BB");
        assert_eq!(postal_code("12345-6789", "US").unwrap(), "12345");
        assert_eq!(postal_code("02134", "US").unwrap(), "02134");
        assert_eq!(postal_code("k1a 0b1", "CA").unwrap(), "K1A0B1");
        assert_eq!(postal_code("75008", "FR").unwrap(), "75008");
        assert_eq!(postal_code("1012 AB", "NL").unwrap(), "1012AB");
        assert_eq!(gb_outward("SW1A1AA"), Some("SW1A"));
    }

    #[test]
    fn invalid_codes() {
        let e = |s: &str, r: &str| postal_code(s, r).unwrap_err().category();
        assert_eq!(e("2134", "US"), "malformed");
        assert_eq!(e("ABCDE", "US"), "malformed");
        assert_eq!(e("SW1A", "GB"), "malformed");
        assert_eq!(e("1AA 1AA", "GB"), "malformed");
        assert_eq!(e("12#45", "DE"), "bad_characters");
        assert_eq!(e(" - ", "DE"), "empty");
    }
}
