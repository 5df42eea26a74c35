//! The hub's metrics, readable in code (for `/api/v1/stats` and the demo
//! summary) and exported in Prometheus text format at `/metrics`.
//!
//! One set of counters serves both, so the API and Prometheus can never
//! disagree. End-to-end latency (hub receive time minus the record's source
//! timestamp) goes into an HDR histogram; its quantiles are exported as
//! gauges at scrape time.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

type Labels = Vec<(String, String)>;

pub struct HubMetrics {
    registry: Registry,
    pub records_received: Counter,
    pub records_duplicate: Counter,
    pub batches_received: Counter,
    pub results_published: Counter,
    pub rejected: Family<Labels, Counter>,
    /// Artifact pushes refused, by reason.
    pub artifacts_rejected: Family<Labels, Counter>,
    /// Desired states published (deploys, and sends again).
    pub desired_published: Counter,
    /// Bytes of artifact files sent to agents.
    pub artifact_bytes_served: Counter,
    /// Agents' OTA changes that ended, by phase (applied, failed).
    pub ota_changes: Family<Labels, Counter>,
    /// Stored manifests, desired states and agent states skipped at start
    /// (they did not verify or read).
    pub ota_skipped: Counter,
    pub devices_online: Gauge,
    pub devices_known: Gauge,
    pub devices_storage_fault: Gauge,
    pub devices_log_disk_full: Gauge,
    pub ingest_rate: Gauge<f64, AtomicU64>,
    store_healthy: Gauge,
    store_write_failures: Counter,
    store_recoveries: Counter,
    store_free_bytes: Gauge,
    latency_quantiles: Family<Labels, Gauge<f64, AtomicU64>>,
    latency_us: Mutex<Histogram<u64>>,
    gate_accepted: Counter,
    gate_refused: Family<Labels, Counter>,
    gate_denied: Family<Labels, Counter>,
    gate_throttled: Counter,
    gate_throttled_seconds: Counter<f64, AtomicU64>,
    gate_malformed: Counter,
    api_refused: Family<Labels, Counter>,
    tls_failed: Family<Labels, Counter>,
}

/// Latency quantiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl HubMetrics {
    /// The hub's metrics, with the inference service's families registered.
    pub fn new(inference: &crate::inference::stats::InferenceMetrics) -> Self {
        let mut registry = Registry::with_prefix("conveyor_hub");
        let records_received = Counter::default();
        let records_duplicate = Counter::default();
        let batches_received = Counter::default();
        let results_published = Counter::default();
        let rejected = Family::default();
        let artifacts_rejected = Family::<Labels, Counter>::default();
        let desired_published = Counter::default();
        registry.register(
            "artifact_push_rejected",
            "Artifact pushes refused, by reason",
            artifacts_rejected.clone(),
        );
        registry.register(
            "desired_published",
            "Desired states published to devices (deploys, and sends again)",
            desired_published.clone(),
        );
        let artifact_bytes_served = Counter::default();
        registry.register(
            "artifact_bytes_served",
            "Bytes of artifact files sent to agents (whole files and Range parts)",
            artifact_bytes_served.clone(),
        );
        let ota_changes = Family::<Labels, Counter>::default();
        registry.register(
            "ota_changes",
            "Agents' OTA changes that ended, by phase (applied, failed)",
            ota_changes.clone(),
        );
        let ota_skipped = Counter::default();
        registry.register(
            "ota_documents_skipped",
            "Stored OTA documents skipped at start because they did not verify or read",
            ota_skipped.clone(),
        );
        let gate_accepted = Counter::default();
        let gate_refused = Family::<Labels, Counter>::default();
        let gate_denied = Family::<Labels, Counter>::default();
        let gate_throttled = Counter::default();
        let gate_throttled_seconds = Counter::<f64, AtomicU64>::default();
        let gate_malformed = Counter::default();
        let api_refused = Family::<Labels, Counter>::default();
        let tls_failed = Family::<Labels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out, by listener (mqtt, http)",
            tls_failed.clone(),
        );
        registry.register(
            "api_refused",
            "HTTP API calls refused, by reason (no_token, bad_token, forbidden)",
            api_refused.clone(),
        );
        registry.register(
            "mqtt_connections_accepted",
            "Device connections the broker's gate let through",
            gate_accepted.clone(),
        );
        registry.register(
            "mqtt_connections_refused",
            "Device connections refused at CONNECT, by reason (no_credentials, bad_credentials, unknown_device, revoked, client_id, publish (its last will), connection_rate, protocol)",
            gate_refused.clone(),
        );
        registry.register(
            "mqtt_denied",
            "Device connections closed for a publish or subscribe outside their own topics, by kind",
            gate_denied.clone(),
        );
        registry.register(
            "mqtt_throttled",
            "Times a device was made to wait for its rate limit",
            gate_throttled.clone(),
        );
        registry.register(
            "mqtt_throttled_seconds",
            "Time devices were made to wait for their rate limits",
            gate_throttled_seconds.clone(),
        );
        registry.register(
            "mqtt_malformed",
            "Device connections closed for a malformed or oversized packet",
            gate_malformed.clone(),
        );
        let devices_online = Gauge::default();
        let devices_known = Gauge::default();
        let devices_storage_fault = Gauge::default();
        let devices_log_disk_full = Gauge::default();
        let ingest_rate = Gauge::default();
        let latency_quantiles = Family::default();
        let store_healthy = Gauge::default();
        let store_write_failures = Counter::default();
        let store_recoveries = Counter::default();
        let store_free_bytes = Gauge::default();
        registry.register(
            "store_healthy",
            "1 while the store can write, 0 from a storage failure until a write is durable again",
            store_healthy.clone(),
        );
        registry.register(
            "store_write_failures",
            "Store writes and commits that failed in the storage (disk full, I/O error, read-only)",
            store_write_failures.clone(),
        );
        registry.register(
            "store_recoveries",
            "Times the store was reopened to recover from a storage failure",
            store_recoveries.clone(),
        );
        registry.register(
            "store_free_bytes",
            "Free bytes on the store's filesystem",
            store_free_bytes.clone(),
        );
        registry.register(
            "records_received",
            "Distinct records stored",
            records_received.clone(),
        );
        registry.register(
            "records_duplicate",
            "Records received again and dropped as duplicates",
            records_duplicate.clone(),
        );
        registry.register(
            "batches_received",
            "Record batches stored",
            batches_received.clone(),
        );
        registry.register(
            "results_published",
            "Final predictions published on devices' results topics",
            results_published.clone(),
        );
        inference.register(&mut registry);
        registry.register(
            "payloads_rejected",
            "Payloads on device topics that could not be decoded, by reason",
            rejected.clone(),
        );
        registry.register(
            "devices_online",
            "Devices currently online",
            devices_online.clone(),
        );
        registry.register("devices_known", "Devices ever seen", devices_known.clone());
        registry.register(
            "devices_storage_fault",
            "Online devices whose last heartbeat reports a storage fault (full, unwritable)",
            devices_storage_fault.clone(),
        );
        registry.register(
            "devices_log_disk_full",
            "Online devices whose log's disk is full (their full_policy applies)",
            devices_log_disk_full.clone(),
        );
        registry.register(
            "ingest_records_per_second",
            "Records stored per second, averaged over the last 9 s",
            ingest_rate.clone(),
        );
        registry.register(
            "e2e_latency_seconds",
            "Source timestamp to hub receive time, quantiles since start",
            latency_quantiles.clone(),
        );
        HubMetrics {
            artifacts_rejected,
            desired_published,
            artifact_bytes_served,
            ota_changes,
            ota_skipped,
            registry,
            records_received,
            records_duplicate,
            batches_received,
            results_published,
            rejected,
            devices_online,
            devices_known,
            devices_storage_fault,
            devices_log_disk_full,
            ingest_rate,
            store_healthy,
            store_write_failures,
            store_recoveries,
            store_free_bytes,
            latency_quantiles,
            // 1 µs .. 1 h at 3 significant digits.
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
            gate_accepted,
            gate_refused,
            gate_denied,
            gate_throttled,
            gate_throttled_seconds,
            gate_malformed,
            api_refused,
            tls_failed,
        }
    }

    /// Counts a rejected payload; returns how many of this reason so far.
    pub fn reject(&self, reason: &str) -> u64 {
        self.rejected
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc()
            + 1
    }

    pub fn artifact_rejected(&self, reason: &str) {
        self.artifacts_rejected
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    /// Counts an agent's OTA change that ended in `phase`.
    pub fn ota_change(&self, phase: &str) {
        self.ota_changes
            .get_or_create(&vec![("phase".to_string(), phase.to_string())])
            .inc();
    }

    pub fn rejected_total(&self) -> u64 {
        // Family has no iterator; the reasons are a small fixed set.
        REJECT_REASONS
            .iter()
            .filter_map(|r| {
                self.rejected
                    .get(&vec![("reason".to_string(), r.to_string())])
                    .map(|c| c.get())
            })
            .sum()
    }

    pub fn observe_latency(&self, latencies_us: impl Iterator<Item = i64>) {
        let mut h = self.latency_us.lock().expect("latency lock");
        for l in latencies_us {
            // Clock skew can make a latency negative; count it as 1 µs.
            h.saturating_record(l.max(1) as u64);
        }
    }

    pub fn latency(&self) -> LatencySummary {
        let h = self.latency_us.lock().expect("latency lock");
        LatencySummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }

    /// Takes the store's health into the store families (before a scrape).
    pub fn observe_store(&self, h: &crate::store::StoreHealth) {
        self.store_healthy.set(h.healthy.into());
        // The store's counters only grow; these follow them.
        let follow = |c: &Counter, v: u64| {
            c.inc_by(v.saturating_sub(c.get()));
        };
        follow(&self.store_write_failures, h.write_failures);
        follow(&self.store_recoveries, h.recoveries);
        if let Some(free) = h.free_bytes {
            self.store_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
    }

    pub fn api_refused(&self, reason: &str) {
        self.api_refused
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    /// The counter of failed TLS handshakes on `listener`.
    pub fn tls_failed(&self, listener: &str) -> Counter {
        self.tls_failed
            .get_or_create(&vec![("listener".to_string(), listener.to_string())])
            .clone()
    }

    /// Takes the broker gate's counters into their families.
    pub fn observe_gate(&self, g: &conveyor_transport::mqtt::gate::GateCounters) {
        use std::sync::atomic::Ordering;
        let follow = |c: &Counter, v: u64| {
            c.inc_by(v.saturating_sub(c.get()));
        };
        follow(&self.gate_accepted, g.accepted.load(Ordering::Relaxed));
        follow(&self.gate_malformed, g.malformed.load(Ordering::Relaxed));
        let tls = g.tls_failed.load(Ordering::Relaxed);
        if tls > 0 {
            follow(&self.tls_failed("mqtt"), tls);
        }
        let (n, us) = g.throttled();
        follow(&self.gate_throttled, n);
        let secs = us as f64 / 1e6;
        let had = self.gate_throttled_seconds.get();
        if secs > had {
            self.gate_throttled_seconds.inc_by(secs - had);
        }
        for (family, counts) in [
            (&self.gate_refused, g.refused()),
            (&self.gate_denied, g.denied()),
        ] {
            for (why, v) in counts {
                follow(
                    &family.get_or_create(&vec![("reason".to_string(), why.to_string())]),
                    v,
                );
            }
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let l = self.latency();
        for (q, v) in [("0.5", l.p50_us), ("0.99", l.p99_us)] {
            self.latency_quantiles
                .get_or_create(&vec![("quantile".to_string(), q.to_string())])
                .set(v as f64 / 1e6);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new(&Default::default())
    }
}

/// Every `reason` label ingest uses.
pub const REJECT_REASONS: &[&str] = &[
    "bad_topic",
    "too_large",
    "not_protobuf",
    "unsupported_version",
    "device_mismatch",
    "empty_batch",
    "seq_not_increasing",
    "empty_stream",
    "bad_status",
    "bad_heartbeat",
    "bad_state",
    "store_error",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = HubMetrics::new(&Default::default());
        m.records_received.inc_by(3);
        m.reject("not_protobuf");
        m.observe_latency([1000, 2000, 3000].into_iter());
        m.observe_store(&crate::store::StoreHealth {
            healthy: false,
            error: Some("disk full".into()),
            since_us: Some(1),
            write_failures: 4,
            recoveries: 2,
            free_bytes: Some(4096),
        });
        m.observe_store(&crate::store::StoreHealth {
            healthy: false,
            error: Some("disk full".into()),
            since_us: Some(1),
            write_failures: 5,
            recoveries: 2,
            free_bytes: Some(4096),
        });
        let text = m.render();
        for line in [
            "conveyor_hub_store_healthy 0",
            "conveyor_hub_store_write_failures_total 5",
            "conveyor_hub_store_recoveries_total 2",
            "conveyor_hub_store_free_bytes 4096",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            text.contains("conveyor_hub_records_received_total 3"),
            "{text}"
        );
        assert!(
            text.contains("conveyor_hub_payloads_rejected_total{reason=\"not_protobuf\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("conveyor_hub_e2e_latency_seconds{quantile=\"0.5\"} 0.002"),
            "{text}"
        );
        assert_eq!(m.rejected_total(), 1);
    }
}
