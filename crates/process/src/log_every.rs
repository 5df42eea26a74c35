//! Rate-limited logging of something that can repeat without bound (a
//! rejected reading, a dropped window, a refused request).

/// Which occurrences of a repeated event are logged: the first `first` in
/// full, then one in every `every`, so a misbehaving device or sensor
/// cannot flood the log while the counters keep the exact totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEvery {
    first: u64,
    every: u64,
}

impl LogEvery {
    /// The rule every Conveyor binary uses: the first 10, then every 1000th.
    pub const FIRST_10_THEN_EVERY_1000: LogEvery = LogEvery::new(10, 1000);

    /// Logs occurrences `1..=first`, then every `every`th. Panics if
    /// `every` is 0.
    pub const fn new(first: u64, every: u64) -> Self {
        assert!(every > 0, "LogEvery: `every` must be at least 1");
        LogEvery { first, every }
    }

    /// Whether occurrence `n` (counted from 1) should be logged.
    pub fn should_log(&self, n: u64) -> bool {
        n <= self.first || n % self.every == 0
    }
}

impl Default for LogEvery {
    fn default() -> Self {
        Self::FIRST_10_THEN_EVERY_1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_ten_then_every_thousandth() {
        let rule = LogEvery::FIRST_10_THEN_EVERY_1000;
        let logged: Vec<u64> = (1..=5000).filter(|&n| rule.should_log(n)).collect();
        let mut expect: Vec<u64> = (1..=10).collect();
        expect.extend([1000, 2000, 3000, 4000, 5000]);
        assert_eq!(logged, expect);
        // The same as the rule the call sites wrote out before.
        for n in 1..=100_000 {
            assert_eq!(rule.should_log(n), n <= 10 || n % 1000 == 0, "{n}");
        }
        assert_eq!(LogEvery::default(), rule);
    }

    #[test]
    fn other_rates() {
        let every = LogEvery::new(0, 1);
        assert!((1..100).all(|n| every.should_log(n)));
        let rule = LogEvery::new(2, 5);
        let logged: Vec<u64> = (1..=12).filter(|&n| rule.should_log(n)).collect();
        assert_eq!(logged, vec![1, 2, 5, 10]);
    }
}
