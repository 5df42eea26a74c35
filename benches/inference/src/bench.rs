//! The timing loop: warm-up, then rounds that alternate the engines so
//! machine noise (2 shared cores) falls on both.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::engines::Engine;

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Timed seconds per engine per model, over all rounds.
    pub seconds: f64,
    pub rounds: usize,
    /// Warm-up seconds per engine (also sizes the rounds).
    pub warmup_seconds: f64,
}

/// Per-call timings (ns) of each engine, and the number of calls in each
/// round.
pub struct Timings {
    pub samples_ns: Vec<Vec<u64>>,
    pub rounds: Vec<Vec<std::ops::Range<usize>>>,
}

/// Calls a round of `n` per engine: `seconds / rounds / mean call time`,
/// at least 10.
pub fn calls_per_round(plan: &Plan, mean_call: Duration) -> usize {
    let per_round = plan.seconds / plan.rounds.max(1) as f64;
    let mean = mean_call.as_secs_f64().max(1e-9);
    ((per_round / mean).round() as usize).max(10)
}

/// Which engine goes first in round `r`: alternate, so neither always runs
/// right after the other's cache footprint.
pub fn round_order(r: usize, engines: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..engines).collect();
    if r % 2 == 1 {
        order.reverse();
    }
    order
}

/// Times every engine on `inputs` (cycled). The input is cloned *before*
/// the clock starts; the output is dropped after it stops.
pub fn measure(
    engines: &mut [&mut dyn Engine],
    inputs: &[Vec<f32>],
    plan: &Plan,
) -> Result<Timings> {
    let n = engines.len();
    let mut next = vec![0usize; n];
    let mut calls = Vec::with_capacity(n);
    for (e, engine) in engines.iter_mut().enumerate() {
        let t = Instant::now();
        let mut k = 0u32;
        while k < 20 || t.elapsed().as_secs_f64() < plan.warmup_seconds {
            let x = inputs[next[e] % inputs.len()].clone();
            next[e] += 1;
            black_box(engine.run(black_box(x))?);
            k += 1;
        }
        calls.push(calls_per_round(plan, t.elapsed() / k));
    }
    let mut samples_ns: Vec<Vec<u64>> = calls
        .iter()
        .map(|c| Vec::with_capacity(c * plan.rounds))
        .collect();
    let mut rounds: Vec<Vec<std::ops::Range<usize>>> = vec![Vec::new(); n];
    for r in 0..plan.rounds {
        for e in round_order(r, n) {
            let engine = &mut engines[e];
            let start = samples_ns[e].len();
            for _ in 0..calls[e] {
                let x = inputs[next[e] % inputs.len()].clone();
                next[e] += 1;
                let t = Instant::now();
                let out = engine.run(black_box(x));
                let dt = t.elapsed();
                black_box(out?);
                samples_ns[e].push(dt.as_nanos() as u64);
            }
            rounds[e].push(start..samples_ns[e].len());
        }
    }
    Ok(Timings { samples_ns, rounds })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(usize);
    impl Engine for Echo {
        fn run(&mut self, input: Vec<f32>) -> Result<Vec<f32>> {
            self.0 += 1;
            Ok(input)
        }
    }

    #[test]
    fn rounds_alternate_and_are_sized_from_the_warmup() {
        assert_eq!(round_order(0, 2), vec![0, 1]);
        assert_eq!(round_order(1, 2), vec![1, 0]);
        assert_eq!(round_order(3, 1), vec![0]);
        let plan = Plan {
            seconds: 2.5,
            rounds: 5,
            warmup_seconds: 0.1,
        };
        assert_eq!(calls_per_round(&plan, Duration::from_micros(10)), 50_000);
        assert_eq!(calls_per_round(&plan, Duration::from_secs(1)), 10);
    }

    #[test]
    fn every_engine_gets_its_rounds() {
        let (mut a, mut b) = (Echo(0), Echo(0));
        let plan = Plan {
            seconds: 0.001,
            rounds: 3,
            warmup_seconds: 0.0,
        };
        let inputs = vec![vec![1.0, 2.0], vec![3.0, 4.0]];
        let t = measure(&mut [&mut a, &mut b], &inputs, &plan).unwrap();
        assert_eq!(t.rounds[0].len(), 3);
        assert_eq!(t.rounds[1].len(), 3);
        assert_eq!(
            t.samples_ns[0].len(),
            t.rounds[0].iter().map(|r| r.len()).sum::<usize>()
        );
        assert!(a.0 >= 20 + 30 && b.0 >= 20 + 30);
    }
}
