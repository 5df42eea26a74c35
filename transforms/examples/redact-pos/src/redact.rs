//! The redaction rules, on plain strings and JSON values.
//!
//! Hand-written scanners rather than the `regex` crate: they are a few
//! dozen lines, keep the module small, and the card rule (groups, Luhn,
//! masking in place) is not a regular expression anyway.

use crate::json::Json;

/// What an e-mail address is replaced by.
pub const EMAIL_MASK: &str = "[redacted-email]";

/// Redacts a JSON payload; `Err` if it is not JSON.
pub fn redact_payload(payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut doc: Json =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    redact_json(&mut doc);
    serde_json::to_vec(&doc).map_err(|e| format!("cannot write the redacted payload: {e}"))
}

/// Redacts every string and number in `v`, in place; keys are kept.
pub fn redact_json(v: &mut Json) {
    match v {
        Json::String(s) => {
            if let Some(redacted) = redact_str(s) {
                *s = redacted;
            }
        }
        Json::Number(n) => {
            // Integers only: a card number is never written with a fraction
            // or a sign.
            if let Some(u) = n.as_u64() {
                let digits = u.to_string();
                if is_card(digits.as_bytes()) {
                    let mut masked = digits.into_bytes();
                    mask_digits(&mut masked);
                    *v = Json::String(String::from_utf8(masked).unwrap_or_default());
                }
            }
        }
        Json::Array(items) => items.iter_mut().for_each(redact_json),
        Json::Object(entries) => entries.iter_mut().for_each(|(_, v)| redact_json(v)),
        Json::Null | Json::Bool(_) => {}
    }
}

/// `s` with e-mail addresses and card numbers masked, or `None` if it has
/// neither.
pub fn redact_str(s: &str) -> Option<String> {
    let emails = replace_emails(s);
    let mut bytes = emails.as_deref().unwrap_or(s).as_bytes().to_vec();
    let cards = mask_cards(&mut bytes);
    if !cards {
        return emails;
    }
    // Only ASCII digits were replaced by '*': still UTF-8.
    String::from_utf8(bytes).ok()
}

/// The Luhn check over ASCII digits.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            match i % 2 {
                0 => d,
                _ if d * 2 > 9 => d * 2 - 9,
                _ => d * 2,
            }
        })
        .sum();
    sum % 10 == 0
}

fn is_card(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) && luhn(digits)
}

/// Replaces every digit but the last four of `span` with '*'.
fn mask_digits(span: &mut [u8]) {
    let mut keep = 4;
    for b in span.iter_mut().rev() {
        if b.is_ascii_digit() {
            if keep > 0 {
                keep -= 1;
            } else {
                *b = b'*';
            }
        }
    }
}

/// Masks card numbers in `s` in place; whether it masked any.
///
/// A run is a sequence of digit groups joined by single spaces or dashes
/// ("4111 1111-1111 1111"). Within a run, the longest sequence of whole
/// groups that is a card number (13-19 digits, Luhn) is masked, from the
/// left, so that a card followed by another number ("4111 1111 1111 1111
/// 2 items") is still found.
fn mask_cards(s: &mut [u8]) -> bool {
    let mut masked = false;
    let mut i = 0;
    while i < s.len() {
        if !s[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // The groups of the run starting at i: (start, end) byte ranges.
        let mut groups = Vec::new();
        let mut at = i;
        loop {
            let start = at;
            while at < s.len() && s[at].is_ascii_digit() {
                at += 1;
            }
            groups.push((start, at));
            let joined =
                at + 1 < s.len() && (s[at] == b' ' || s[at] == b'-') && s[at + 1].is_ascii_digit();
            if !joined {
                break;
            }
            at += 1;
        }
        let mut g = 0;
        while g < groups.len() {
            let card_end = (g..groups.len()).rev().find(|&h| {
                let digits: Vec<u8> = s[groups[g].0..groups[h].1]
                    .iter()
                    .copied()
                    .filter(u8::is_ascii_digit)
                    .collect();
                is_card(&digits)
            });
            match card_end {
                Some(h) => {
                    mask_digits(&mut s[groups[g].0..groups[h].1]);
                    masked = true;
                    g = h + 1;
                }
                None => g += 1,
            }
        }
        i = at;
    }
    masked
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// A domain: two or more non-empty labels, the last of 2+ letters.
fn valid_domain(d: &[u8]) -> bool {
    let mut labels = d.split(|&b| b == b'.');
    let tld_ok = d
        .rsplit(|&b| b == b'.')
        .next()
        .is_some_and(|t| t.len() >= 2 && t.iter().all(u8::is_ascii_alphabetic));
    tld_ok && d.contains(&b'.') && labels.all(|l| !l.is_empty())
}

/// `s` with every e-mail address replaced by [`EMAIL_MASK`], or `None` if
/// it has none.
fn replace_emails(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0; // s[..copied] is in `out` already
    let mut search = 0;
    while let Some(at) = b[search..]
        .iter()
        .position(|&c| c == b'@')
        .map(|p| p + search)
    {
        let mut start = at;
        while start > copied && is_local(b[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < b.len() && is_domain(b[end]) {
            end += 1;
        }
        // The longest prefix of the domain span that ends a label and is a
        // valid domain ("a@shop.example.com." ends before the last dot).
        let domain = &b[at + 1..end];
        let cut = std::iter::once(domain.len())
            .chain((0..domain.len()).rev().filter(|&i| domain[i] == b'.'))
            .find(|&len| valid_domain(&domain[..len]));
        match (start < at, cut) {
            (true, Some(len)) => {
                let out = out.get_or_insert_with(String::new);
                // All bytes matched are ASCII, so these are char boundaries.
                out.push_str(&s[copied..start]);
                out.push_str(EMAIL_MASK);
                copied = at + 1 + len;
                search = copied;
            }
            _ => search = at + 1,
        }
    }
    out.map(|mut o| {
        o.push_str(&s[copied..]);
        o
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        redact_str(s).unwrap_or_else(|| s.to_string())
    }

    #[test]
    fn luhn_check() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"79927398713"));
        assert!(!luhn(b"4111111111111112"));
    }

    #[test]
    fn cards_in_text() {
        assert_eq!(r("4111 1111 1111 1111"), "**** **** **** 1111");
        assert_eq!(r("4111-1111-1111-1111"), "****-****-****-1111");
        assert_eq!(r("4111111111111111"), "************1111");
        assert_eq!(
            r("paid with 4111-1111-1111-1111 ok"),
            "paid with ****-****-****-1111 ok"
        );
        assert_eq!(r("amex 3782 822463 10005."), "amex **** ****** *0005.");
        // A card followed or preceded by other numbers in the same run.
        assert_eq!(
            r("4111 1111 1111 1111 2 items"),
            "**** **** **** 1111 2 items"
        );
        assert_eq!(r("qty 2 4111 1111 1111 1111"), "qty 2 **** **** **** 1111");
        // Two cards.
        assert_eq!(
            r("4111111111111111,5555555555554444"),
            "************1111,************4444"
        );
    }

    #[test]
    fn non_cards_are_left_alone() {
        for s in [
            "order 1234567890123456",          // fails Luhn
            "4111111111111112",                // fails Luhn
            "41111111111111111111111",         // 23 digits, one group
            "4111  1111 1111 1111",            // double space: groups too short
            "79927398713",                     // Luhn-valid but 11 digits
            "total 12.50 at 2024-05-01 10:31", // dates and prices
        ] {
            assert_eq!(redact_str(s), None, "{s}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(r("jane.doe+pos@shop.example.com"), EMAIL_MASK);
        assert_eq!(
            r("mail a_b%c-d@x-y.example.org. or bob@ex.io!"),
            "mail [redacted-email]. or [redacted-email]!"
        );
        // The local part is ASCII (the pragmatic pattern): a non-ASCII
        // letter ends it.
        assert_eq!(
            r("Jürgen <jürgen.x@mail.de>"),
            "Jürgen <jü[redacted-email]>"
        );
        for s in [
            "@handle",
            "a@b",
            "a@b.c",
            "a@.com",
            "a@b..com",
            "user@ host.com",
            "x@1.23",
        ] {
            assert_eq!(redact_str(s), None, "{s}");
        }
        assert_eq!(r("a@b@c.com"), "a@[redacted-email]");
    }

    #[test]
    fn email_and_card_together() {
        assert_eq!(
            r("4111111111111111 from bob@shop.com"),
            "************1111 from [redacted-email]"
        );
    }
}
