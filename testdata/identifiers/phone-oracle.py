#!/usr/bin/env python3
"""Writes the phone-number oracle files from Google's libphonenumber (Python's `phonenumbers`).

    pip install phonenumbers==9.0.42   # the metadata release rlibphonenumber 2.2.15 embeds
    python3 testdata/identifiers/phone-oracle.py

Writes, beside this script:
- phone-oracle.tsv: a seeded, messy corpus of phone numbers as people type them, across many
  regions, with libphonenumber's answer: the E.164 form, or INVALID when it does not parse or is
  not a valid number of its country's numbering plan. Columns: input, default_region, expected,
  family (what the row exercises).
- phone-examples.tsv: libphonenumber's example number for every region and number type, with its
  national form and the region's international dialling prefix when it is a plain digit string.

Read by crates/cleanroom-identity/tests/it/phone_oracle.rs. Rows containing letters other than
extension markers are not generated: cleanroom refuses vanity numbers on purpose.
"""

import os
import random
import re
import sys

import phonenumbers as pn
from phonenumbers import PhoneNumberFormat as F
from phonenumbers import PhoneNumberType as T

SEED = 12
HERE = os.path.dirname(os.path.abspath(__file__))

# A dozen and more regions with different trunk prefixes, international prefixes and number
# lengths, plus the ones the known failures came from.
REGIONS = [
    "US", "CA", "GB", "DE", "FR", "IT", "ES", "NL", "BR", "IN", "JP", "CN", "AU", "MX", "RU",
    "ZA", "NG", "AR", "KR", "SG", "AE", "SA", "EG", "PL", "SE", "CH", "AT", "BE", "ID", "TR",
    "PK", "BD", "IR", "NZ", "IE", "HU", "KZ",
]

TYPES = [T.MOBILE, T.FIXED_LINE, T.FIXED_LINE_OR_MOBILE, T.TOLL_FREE, T.PREMIUM_RATE,
         T.SHARED_COST, T.VOIP, T.PERSONAL_NUMBER, T.PAGER, T.UAN, T.VOICEMAIL]

# Decimal digit sets people paste: Devanagari, Arabic-Indic, extended Arabic-Indic (Persian,
# Urdu), Bengali, full-width.
DIGIT_SETS = {
    "devanagari": 0x0966,
    "arabic-indic": 0x0660,
    "ext-arabic-indic": 0x06F0,
    "bengali": 0x09E6,
    "fullwidth": 0xFF10,
}

TYPE_NAMES = {t: name.lower() for name, t in vars(T).items() if name.isupper()}

SEPARATORS = [" ", "-", ".", "/", "", " - ", "  "]


def e164(s, region):
    """libphonenumber's answer: the E.164 form of a valid number, else INVALID."""
    try:
        n = pn.parse(s, region)
    except pn.NumberParseException:
        return "INVALID"
    if not pn.is_valid_number(n):
        return "INVALID"
    return pn.format_number(n, F.E164)


def intl_prefix(region):
    """The region's international dialling prefix when it is one plain digit string that no
    longer prefix extends (HK's `00` is not: `008` is also one, so `00 852…` is read as +52…)."""
    md = pn.PhoneMetadata.metadata_for_region(region)
    p = md.preferred_international_prefix or md.international_prefix
    if not p or not p.isdigit():
        return None
    pattern = re.compile(md.international_prefix)
    if any(pattern.fullmatch(p + d) for d in "0123456789"):
        return None
    return p


def group(rng, digits):
    """Splits a digit string into random groups joined by one random separator style."""
    sep = rng.choice(SEPARATORS)
    out, i = [], 0
    while i < len(digits):
        k = rng.randint(1, 4)
        out.append(digits[i:i + k])
        i += k
    return sep.join(out)


def to_digits(s, zero):
    return "".join(chr(zero + ord(c) - 48) if c.isdigit() and c.isascii() else c for c in s)


def numbers_for(region, rng):
    """Example numbers of the region and random variations of them (valid or not)."""
    out = []
    for t in TYPES:
        n = pn.example_number_for_type(region, t)
        if n is None:
            continue
        out.append(n)
        nsn = pn.national_significant_number(n)
        for _ in range(6):
            keep = rng.randint(max(1, len(nsn) // 2), len(nsn) - 1)
            tail = "".join(rng.choice("0123456789") for _ in range(len(nsn) - keep))
            try:
                m = pn.parse("+%d%s" % (n.country_code, nsn[:keep] + tail), None)
            except pn.NumberParseException:
                continue
            out.append(m)
    return out


def cc_prefixed_nationals(region, rng):
    """National numbers that begin with the country's own calling code (Indian mobiles starting
    91, Italian mobiles starting 39, …): the ones a naive parser strips as if international."""
    cc = str(pn.country_code_for_region(region))
    out = []
    for t in (T.MOBILE, T.FIXED_LINE):
        ex = pn.example_number_for_type(region, t)
        if ex is None:
            continue
        length = len(pn.national_significant_number(ex))
        for _ in range(12):
            nsn = cc + "".join(rng.choice("0123456789") for _ in range(length - len(cc)))
            try:
                n = pn.parse("+" + cc + nsn, None)
            except pn.NumberParseException:
                continue
            out.append(n)
    return out


def forms(n, home, rng):
    """(input, default region, family) triples: one number written the ways people write it."""
    cc = str(n.country_code)
    nsn = pn.national_significant_number(n)
    national = pn.format_number(n, F.NATIONAL)
    national_digits = "".join(c for c in national if c.isdigit())
    other = rng.choice(REGIONS)
    rows = [
        ("+" + cc + nsn, rng.choice(REGIONS), "e164"),
        ("+" + cc + " " + group(rng, nsn), rng.choice(REGIONS), "plus-separators"),
        ("+" + cc + rng.choice(["-", ".", "/", " "]) + group(rng, nsn), other, "plus-punct"),
        ("+" + cc + nsn[:3] + rng.choice(["-", ".", "/"]) + nsn[3:], other, "plus-glued-punct"),
        (pn.format_number(n, F.INTERNATIONAL), rng.choice(REGIONS), "international-format"),
        ("(+" + cc + ") " + group(rng, nsn), rng.choice(REGIONS), "plus-in-brackets"),
        (national, home, "national-format"),
        (group(rng, national_digits), home, "national-regrouped"),
        (nsn, home, "national-no-trunk"),
        (national, other, "national-other-region"),
        (cc + nsn, home, "cc-without-plus"),
        ("+" + cc + nsn + rng.choice("0123456789"), home, "extra-digit"),
        (national_digits + rng.choice("0123456789"), home, "national-extra-digit"),
        (national_digits[:-1], home, "national-missing-digit"),
        ("tel:+" + cc + "-" + group(rng, nsn).replace(" ", "-"), other, "tel-uri"),
        ("+" + cc + " " + nsn + rng.choice([" ext. ", " x", " ext ", "#"]) + str(rng.randint(1, 999)),
         other, "extension"),
    ]
    tp = pn.PhoneMetadata.metadata_for_region(home).national_prefix
    if tp:
        rows.append(("+" + cc + " (" + tp + ") " + group(rng, nsn), rng.choice(REGIONS), "plus-with-trunk"))
    for r in REGIONS:
        p = intl_prefix(r)
        if p and rng.random() < 0.08:
            rows.append((p + " " + cc + " " + group(rng, nsn), r, "idd-" + p))
    for name, zero in DIGIT_SETS.items():
        if rng.random() < 0.25:
            rows.append((to_digits(national, zero), home, "digits-" + name))
        if rng.random() < 0.15:
            rows.append((to_digits("+" + cc + " " + group(rng, nsn), zero), other, "digits-" + name))
    if rng.random() < 0.3:
        rows.append(("(" + national_digits[:3] + ") " + national_digits[3:], home, "national-brackets"))
    return rows


def clean_field(s):
    assert "\t" not in s and "\n" not in s, s
    return s


def main():
    rng = random.Random(SEED)
    rows = []
    for region in REGIONS:
        nums = numbers_for(region, rng) + cc_prefixed_nationals(region, rng)
        for n in nums:
            home = pn.region_code_for_number(n) or region
            if home == "001":
                continue
            for inp, r, fam in forms(n, home, rng):
                rows.append((inp, r, fam))
    # The failures issue 12 lists, verbatim, always kept.
    known = [
        ("+49 1512 3456596", "US", "issue-12"),
        ("+1201-555-5779", "US", "issue-12"),
        ("+55/11/96123-9920", "US", "issue-12"),
        ("012012972931", "JP", "issue-12"),
        ("91234 56789", "IN", "issue-12"),
        ("+91 91234 56789", "US", "issue-12"),
        ("393 123 4567", "IT", "issue-12"),
        ("+39 393 123 4567", "GB", "issue-12"),
        ("९८७६५ ४३२१०", "IN", "issue-12"),
        ("٠٧٩١١ ١٢٣٤٥٦", "GB", "issue-12"),
    ]
    rng.shuffle(rows)
    seen, out = set(), []
    for inp, r, fam in known + rows[:6000]:
        if (inp, r) in seen:
            continue
        seen.add((inp, r))
        out.append((inp, r, e164(inp, r), fam))
    with open(os.path.join(HERE, "phone-oracle.tsv"), "w", encoding="utf-8") as f:
        f.write("# libphonenumber (Python phonenumbers %s) on a messy generated corpus; "
                "written by phone-oracle.py (seed %d).\n" % (pn.__version__, SEED))
        f.write("input\tdefault_region\texpected\tfamily\n")
        for inp, r, exp, fam in out:
            f.write("%s\t%s\t%s\t%s\n" % (clean_field(inp), r, exp, fam))

    with open(os.path.join(HERE, "phone-examples.tsv"), "w", encoding="utf-8") as f:
        f.write("# libphonenumber's (Python phonenumbers %s) example number per region and type; "
                "written by phone-oracle.py.\n" % pn.__version__)
        f.write("region\ttype\te164\tnational\tinternational_prefix\n")
        for region in sorted(pn.SUPPORTED_REGIONS):
            for t in TYPES:
                n = pn.example_number_for_type(region, t)
                if n is None or not pn.is_valid_number(n):
                    continue
                f.write("%s\t%s\t%s\t%s\t%s\n" % (
                    region, TYPE_NAMES[t], pn.format_number(n, F.E164), pn.format_number(n, F.NATIONAL),
                    intl_prefix(region) or ""))
    valid = sum(1 for r in out if r[2] != "INVALID")
    print("%d corpus rows (%d valid), metadata %s" % (len(out), valid, pn.__version__), file=sys.stderr)


if __name__ == "__main__":
    main()
