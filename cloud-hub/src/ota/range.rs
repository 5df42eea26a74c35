//! HTTP `Range` headers (RFC 9110 §14) for artifact downloads, as plain
//! data: an agent resumes a cut-off download with `Range: bytes=<have>-`.
//!
//! One range is served: `bytes=N-`, `bytes=N-M` (M past the end means the
//! end) and `bytes=-N` (the last N). Another unit, or several ranges, get
//! the whole file, which HTTP allows. A `bytes=` range that cannot be
//! satisfied is an error (416). Any string gets an answer; none panics.

/// What to send of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// The whole file (200).
    Whole,
    /// Bytes `first..=last` (206).
    Part { first: u64, last: u64 },
    /// Nothing can be sent (416).
    Unsatisfiable,
}

/// Reads `value` against a file of `size` bytes.
pub fn parse(value: &str, size: u64) -> Ranged {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ranged::Unsatisfiable;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => return Ranged::Unsatisfiable,
        // The last N bytes.
        (true, false) => match number(b) {
            Some(n) if n > 0 && size > 0 => (size.saturating_sub(n), size - 1),
            _ => return Ranged::Unsatisfiable,
        },
        (false, open) => {
            let Some(first) = number(a) else {
                return Ranged::Unsatisfiable;
            };
            let last = if open {
                size.saturating_sub(1)
            } else {
                match number(b) {
                    Some(l) if l >= first => l.min(size.saturating_sub(1)),
                    _ => return Ranged::Unsatisfiable,
                }
            };
            (first, last)
        }
    };
    if first >= size {
        return Ranged::Unsatisfiable;
    }
    Ranged::Part { first, last }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn part(first: u64, last: u64) -> Ranged {
        Ranged::Part { first, last }
    }

    #[test]
    fn ranges_are_read_as_http_says() {
        assert_eq!(parse("bytes=100-", 1000), part(100, 999));
        assert_eq!(parse("bytes=0-9", 1000), part(0, 9));
        assert_eq!(parse("bytes=0-0", 1000), part(0, 0));
        assert_eq!(parse("bytes=990-2000", 1000), part(990, 999));
        assert_eq!(parse("bytes=-10", 1000), part(990, 999));
        assert_eq!(parse("bytes=-5000", 1000), part(0, 999));
        assert_eq!(parse(" bytes= 5 - 6 ", 1000), part(5, 6));
        for bad in [
            "bytes=1000-",
            "bytes=5-4",
            "bytes=x-",
            "bytes=-",
            "bytes=-0",
            "bytes=1-x",
            "bytes=+1-",
            "bytes=18446744073709551616-",
            "bytes=",
        ] {
            assert_eq!(parse(bad, 1000), Ranged::Unsatisfiable, "{bad}");
        }
        assert_eq!(parse("bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(parse("items=1-2", 1000), Ranged::Whole);
        assert_eq!(parse("bytes=1-2,5-6", 1000), Ranged::Whole);
    }

    proptest! {
        #[test]
        fn any_header_gets_an_answer_inside_the_file(value in ".{0,40}", size in 0u64..5000) {
            if let Ranged::Part { first, last } = parse(&value, size) {
                prop_assert!(first <= last && last < size);
            }
        }

        #[test]
        fn a_resume_gets_exactly_the_rest(size in 1u64..100_000, have in 0u64..100_000) {
            let got = parse(&format!("bytes={have}-"), size);
            if have < size {
                prop_assert_eq!(got, Ranged::Part { first: have, last: size - 1 });
            } else {
                prop_assert_eq!(got, Ranged::Unsatisfiable);
            }
        }
    }
}
