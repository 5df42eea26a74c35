//! The benchmarks' statistics: medians, latency summaries from per-call
//! timings, ratios, and the number formats of their tables. Plain
//! functions, no clock: the tests feed them made-up samples.
//!
//! It exists so that the inference and transform benchmarks compute their
//! numbers the one same way (there were three medians).

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one engine measured on one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Timed calls (one window each).
    pub calls: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    /// `1 / mean`: windows per second on one thread.
    pub windows_per_s: f64,
}

/// Summarises per-call timings in nanoseconds. Percentiles come from an
/// HDR histogram (3 significant digits); the mean is exact. `None` for no
/// samples.
pub fn summarize(samples_ns: &[u64]) -> Option<Summary> {
    if samples_ns.is_empty() {
        return None;
    }
    // 1 ns .. 100 s; 3 significant digits is 0.1 % resolution.
    let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).ok()?;
    let mut sum: u128 = 0;
    for &s in samples_ns {
        h.saturating_record(s.max(1));
        sum += s as u128;
    }
    let n = samples_ns.len() as u64;
    let mean_ns = sum as f64 / n as f64;
    Some(Summary {
        calls: n,
        p50_us: h.value_at_quantile(0.50) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        mean_us: mean_ns / 1e3,
        windows_per_s: if mean_ns > 0.0 {
            1e9 / mean_ns
        } else {
            f64::INFINITY
        },
    })
}

/// The median of `v` (the mean of the middle two for an even count); 0
/// for none.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// [`median`] of integer timings (ns): the middle two are added as
/// integers, then halved; 0 for none.
pub fn median_u64(v: &[u64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m] as f64
    } else {
        (s[m - 1] + s[m]) as f64 / 2.0
    }
}

/// `a / b`, when both are positive and finite.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && a > 0.0 && b > 0.0).then(|| a / b)
}

/// `2.35x`, or `n/a`.
pub fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{r:.2}x"),
        None => "n/a".to_string(),
    }
}

/// Microseconds with a precision that suits the size: `3.92`, `71.4`, `1234`.
pub fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "n/a".to_string()
    } else if us < 10.0 {
        format!("{us:.2}")
    } else if us < 1000.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// Milliseconds from microseconds, with a precision that suits the size:
/// `0.163`, `2.41`, `18.6`, `1234`.
pub fn fmt_ms(us: f64) -> String {
    let ms = us / 1e3;
    if !ms.is_finite() {
        "n/a".to_string()
    } else if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// An integer with thousands separators: `12,345`.
pub fn fmt_thousands(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    let s = format!("{:.0}", v.round());
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[2.0, f64::INFINITY, 1.0]), 2.0);
        assert_eq!(median_u64(&[]), 0.0);
        assert_eq!(median_u64(&[30, 10, 20]), 20.0);
        assert_eq!(median_u64(&[4, 1, 2, 3]), 2.5);
        assert_eq!(median_u64(&[7]), 7.0);
    }

    #[test]
    fn percentiles_and_rate_from_samples() {
        // 1..=100 us: p50 = 50 us, p99 = 99 us, mean 50.5 us
        let samples: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let s = summarize(&samples).unwrap();
        assert_eq!(s.calls, 100);
        assert!((s.p50_us - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_us - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.mean_us - 50.5).abs() < 1e-9, "{s:?}");
        assert!((s.windows_per_s - 1e6 / 50.5).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn one_outlier_moves_p99_not_p50() {
        let mut samples = vec![10_000u64; 999];
        samples.push(5_000_000);
        let s = summarize(&samples).unwrap();
        assert!((s.p50_us - 10.0).abs() < 0.02);
        assert!((s.p99_us - 10.0).abs() < 0.02);
        assert!(s.mean_us > 10.0);
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(summarize(&[]), None);
        // a zero-length timing does not break the histogram
        assert!(summarize(&[0, 0]).is_some());
    }

    #[test]
    fn ratio_and_formats() {
        assert_eq!(fmt_ratio(ratio(71.0, 14.0)), "5.07x");
        assert_eq!(fmt_ratio(ratio(1.0, 0.0)), "n/a");
        assert_eq!(fmt_ratio(ratio(f64::NAN, 1.0)), "n/a");
        assert_eq!(fmt_us(3.917), "3.92");
        assert_eq!(fmt_us(71.44), "71.4");
        assert_eq!(fmt_us(1234.4), "1234");
        assert_eq!(fmt_thousands(1234567.4), "1,234,567");
        assert_eq!(fmt_thousands(999.0), "999");
        assert_eq!(fmt_thousands(-1000.0), "-1,000");
    }
}
