//! The dynamic batching policy, as plain data: no threads, no clock.
//!
//! Requests wait in arrival order; a batch is released when `max_batch`
//! are waiting, or when the oldest has waited `max_delay`, whichever comes
//! first. Time is a parameter, so the policy is tested without sleeping;
//! the dispatcher thread in [`super::service`] drives it with the real
//! clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Per-model batching limits (`[[inference.models]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most windows in one model call.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch.
    pub max_delay: Duration,
}

/// Requests waiting to be batched.
#[derive(Debug)]
pub struct BatchQueue<T> {
    policy: BatchPolicy,
    waiting: VecDeque<(Instant, T)>,
}

impl<T> BatchQueue<T> {
    pub fn new(policy: BatchPolicy) -> Self {
        assert!(policy.max_batch >= 1, "validated by the config");
        BatchQueue {
            policy,
            waiting: VecDeque::new(),
        }
    }

    pub fn push(&mut self, now: Instant, item: T) {
        self.waiting.push_back((now, item));
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// When the oldest waiting request's delay runs out (None: nothing waits).
    pub fn deadline(&self) -> Option<Instant> {
        self.waiting
            .front()
            .map(|(t, _)| *t + self.policy.max_delay)
    }

    /// The next batch, if one is due at `now`: full, or its oldest request
    /// has waited long enough.
    pub fn take_ready(&mut self, now: Instant) -> Option<Vec<T>> {
        let full = self.waiting.len() >= self.policy.max_batch;
        let due = self.deadline().is_some_and(|d| d <= now);
        (full || due).then(|| self.take(self.policy.max_batch))
    }

    /// Up to `n` of the oldest requests, regardless of the policy (at
    /// shutdown).
    pub fn take(&mut self, n: usize) -> Vec<T> {
        let n = n.min(self.waiting.len());
        self.waiting.drain(..n).map(|(_, item)| item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_batch: usize, delay_ms: u64) -> BatchQueue<u32> {
        BatchQueue::new(BatchPolicy {
            max_batch,
            max_delay: Duration::from_millis(delay_ms),
        })
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        let t0 = Instant::now();
        let mut q = queue(3, 1000);
        for i in 0..7 {
            q.push(t0, i);
        }
        assert_eq!(q.take_ready(t0), Some(vec![0, 1, 2]));
        assert_eq!(q.take_ready(t0), Some(vec![3, 4, 5]));
        assert_eq!(q.take_ready(t0), None, "one left, not due");
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_partial_batch_goes_when_its_oldest_request_is_due() {
        let t0 = Instant::now();
        let mut q = queue(8, 5);
        q.push(t0, 1);
        q.push(t0 + Duration::from_millis(3), 2);
        assert_eq!(q.deadline(), Some(t0 + Duration::from_millis(5)));
        assert_eq!(q.take_ready(t0 + Duration::from_millis(4)), None);
        assert_eq!(
            q.take_ready(t0 + Duration::from_millis(5)),
            Some(vec![1, 2])
        );
        assert!(q.is_empty());
        assert_eq!(q.deadline(), None);
    }

    #[test]
    fn zero_delay_means_no_waiting_for_company() {
        let t0 = Instant::now();
        let mut q = queue(32, 0);
        q.push(t0, 1);
        assert_eq!(q.take_ready(t0), Some(vec![1]));
    }

    #[test]
    fn order_is_kept_across_batches() {
        let t0 = Instant::now();
        let mut q = queue(2, 0);
        for i in 0..5 {
            q.push(t0, i);
        }
        let mut out = Vec::new();
        while let Some(b) = q.take_ready(t0) {
            out.extend(b);
        }
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
    }
}
