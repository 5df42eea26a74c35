//! How much one device may send, as plain data with the time as a
//! parameter: token buckets for messages and bytes per second, and a
//! window of connection attempts. [`super::session`] waits for the
//! bucket before it reads more from a device that is over its rate (TCP
//! then slows the device down: nothing is dropped, the device's own log
//! holds what it could not send yet), and refuses a device that connects
//! too often.

use std::collections::VecDeque;

/// Rates per device; 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub messages_per_s: f64,
    pub bytes_per_s: f64,
    /// Connection attempts per device per minute.
    pub connects_per_minute: u32,
}

impl Default for Limits {
    /// Far above what an agent sends (a 10,000 records/s agent sends
    /// about 1 MB/s in a few dozen batches), far below what floods a hub.
    fn default() -> Self {
        Limits {
            messages_per_s: 2_000.0,
            bytes_per_s: 8_000_000.0,
            connects_per_minute: 30,
        }
    }
}

/// A token bucket: `rate` tokens a second, at most one second's worth
/// held (the burst).
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    at_us: i64,
}

impl Bucket {
    pub fn new(rate: f64, now_us: i64) -> Bucket {
        Bucket {
            rate,
            tokens: rate,
            at_us: now_us,
        }
    }

    /// Takes `n` tokens (going into debt if need be) and says how long
    /// to wait, µs, before the debt is paid: 0 when there was enough.
    pub fn take(&mut self, n: f64, now_us: i64) -> i64 {
        if self.rate <= 0.0 {
            return 0;
        }
        let elapsed = (now_us - self.at_us).max(0) as f64 / 1e6;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at_us = now_us.max(self.at_us);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            0
        } else {
            (-self.tokens / self.rate * 1e6).ceil() as i64
        }
    }
}

/// A device's message and byte buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    messages: Bucket,
    bytes: Bucket,
}

impl Rate {
    pub fn new(l: &Limits, now_us: i64) -> Rate {
        Rate {
            messages: Bucket::new(l.messages_per_s, now_us),
            bytes: Bucket::new(l.bytes_per_s, now_us),
        }
    }

    /// One message of `bytes`: how long to wait before reading the next.
    pub fn take(&mut self, bytes: usize, now_us: i64) -> i64 {
        let m = self.messages.take(1.0, now_us);
        let b = self.bytes.take(bytes as f64, now_us);
        m.max(b)
    }
}

/// Connection attempts in the last minute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attempts {
    at_us: VecDeque<i64>,
}

impl Attempts {
    const WINDOW_US: i64 = 60_000_000;

    /// Whether an attempt was made in the last minute (if not, the entry
    /// can go: a fresh one says the same).
    pub fn recent(&self, now_us: i64) -> bool {
        self.at_us
            .back()
            .is_some_and(|t| now_us - t < Self::WINDOW_US)
    }

    /// Records an attempt at `now_us`; false if it is one too many (it
    /// still counts: a device that keeps trying stays refused).
    pub fn attempt(&mut self, per_minute: u32, now_us: i64) -> bool {
        while self
            .at_us
            .front()
            .is_some_and(|t| now_us - t >= Self::WINDOW_US)
        {
            self.at_us.pop_front();
        }
        if per_minute == 0 {
            return true;
        }
        // Bounded: past the limit only the newest count.
        if self.at_us.len() > per_minute as usize * 2 {
            self.at_us.pop_front();
        }
        self.at_us.push_back(now_us);
        self.at_us.len() <= per_minute as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_its_rate_through_and_makes_a_flood_wait() {
        let mut b = Bucket::new(100.0, 0);
        // A second's worth at once: no wait.
        for _ in 0..100 {
            assert_eq!(b.take(1.0, 0), 0);
        }
        // One more: a hundredth of a second's debt.
        assert_eq!(b.take(1.0, 0), 10_000);
        // Paid off by waiting.
        assert_eq!(b.take(1.0, 20_000), 0);
        // At the rate, never a wait.
        let mut b = Bucket::new(100.0, 0);
        for i in 0..1000 {
            assert_eq!(b.take(1.0, i * 10_000), 0);
        }
        // Off.
        let mut off = Bucket::new(0.0, 0);
        assert_eq!(off.take(1e12, 0), 0);
    }

    #[test]
    fn a_rate_waits_for_the_tighter_of_its_buckets() {
        let l = Limits {
            messages_per_s: 1000.0,
            bytes_per_s: 1000.0,
            connects_per_minute: 0,
        };
        let mut r = Rate::new(&l, 0);
        assert_eq!(r.take(1000, 0), 0);
        // The bytes bucket is empty: 500 bytes more wait half a second.
        assert_eq!(r.take(500, 0), 500_000);
    }

    #[test]
    fn connects_past_the_limit_in_a_minute_are_refused() {
        let mut a = Attempts::default();
        for i in 0..3 {
            assert!(a.attempt(3, i));
        }
        assert!(!a.attempt(3, 10));
        assert!(!a.attempt(3, 20));
        // A minute after the first ones, room again.
        assert!(a.attempt(3, 60_000_100));
        let mut off = Attempts::default();
        assert!((0..1000).all(|i| off.attempt(0, i)));
    }
}
