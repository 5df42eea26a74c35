//! Counters of the inference service, shared with the hub's Prometheus
//! registry (`conveyor_hub_inference_*`) and read back for the API.
//!
//! Labels: `model` is a served model's id, or `unknown` for requests
//! naming a model the hub does not serve (devices choose that string, so it
//! never becomes a label); `outcome` is one of [`OUTCOMES`].

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

type Labels = Vec<(String, String)>;

/// Every `outcome` label value.
pub const OUTCOMES: &[&str] = &[
    "ok",
    "unknown_model",
    "wrong_shape",
    "bad_values",
    "overloaded",
    "failed",
];

/// The families, cheap to clone (they are shared handles).
#[derive(Clone, Default)]
pub struct InferenceMetrics {
    requests: Family<Labels, Counter>,
    batches: Family<Labels, Counter>,
    windows: Family<Labels, Counter>,
    latency_quantiles: Family<Labels, Gauge<f64, AtomicU64>>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl InferenceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "inference_requests",
            "Hub inference requests by model and outcome",
            self.requests.clone(),
        );
        registry.register(
            "inference_batches",
            "Model calls made by the dynamic batcher",
            self.batches.clone(),
        );
        registry.register(
            "inference_windows",
            "Windows run through hub models",
            self.windows.clone(),
        );
        registry.register(
            "inference_latency_seconds",
            "Request to answer, including queueing, quantiles since start",
            self.latency_quantiles.clone(),
        );
    }

    /// Counts one request's outcome; returns how many of this pair so far.
    pub fn request(&self, model: &str, outcome: &str) -> u64 {
        self.requests
            .get_or_create(&labels(&[("model", model), ("outcome", outcome)]))
            .inc()
            + 1
    }

    pub fn requests(&self, model: &str, outcome: &str) -> u64 {
        self.requests
            .get(&labels(&[("model", model), ("outcome", outcome)]))
            .map_or(0, |c| c.get())
    }

    pub fn batch(&self, model: &str, windows: usize) {
        let l = labels(&[("model", model)]);
        self.batches.get_or_create(&l).inc();
        self.windows.get_or_create(&l).inc_by(windows as u64);
    }

    pub fn batches(&self, model: &str) -> (u64, u64) {
        let l = labels(&[("model", model)]);
        (
            self.batches.get(&l).map_or(0, |c| c.get()),
            self.windows.get(&l).map_or(0, |c| c.get()),
        )
    }

    fn set_latency(&self, model: &str, l: &LatencyQuantiles) {
        for (q, v) in [("0.5", l.p50_us), ("0.99", l.p99_us)] {
            self.latency_quantiles
                .get_or_create(&labels(&[("model", model), ("quantile", q)]))
                .set(v as f64 / 1e6);
        }
    }
}

/// Request latency (enqueue to answer) of one model.
pub struct LatencyRecorder {
    model: String,
    hist: Mutex<Histogram<u64>>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct LatencyQuantiles {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl LatencyRecorder {
    pub fn new(model: &str) -> Self {
        LatencyRecorder {
            model: model.to_string(),
            // 1 µs .. 10 min at 3 significant digits.
            hist: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")),
        }
    }

    pub fn record(&self, us: u64) {
        let mut h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(us.max(1));
    }

    /// The quantiles so far; also refreshes the Prometheus gauges.
    pub fn quantiles(&self, metrics: &InferenceMetrics) -> LatencyQuantiles {
        let q = {
            let h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
            LatencyQuantiles {
                count: h.len(),
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
            }
        };
        metrics.set_latency(&self.model, &q);
        q
    }
}
