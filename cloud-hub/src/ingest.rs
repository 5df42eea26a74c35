//! Ingest: every message from a device topic goes through [`Ingest::handle`].
//!
//! A record batch is decoded and validated, its records stored exactly once
//! and the device's entry updated; a status or heartbeat updates the entry.
//! Anything malformed is counted (`payloads_rejected_total{reason}`),
//! logged with the device and the reason, and skipped: no input can stop
//! ingest or the hub.

use std::sync::{Arc, Mutex};

use conveyor_shared::control::{DeviceStatus, Heartbeat};
use conveyor_shared::time::now_us;
use conveyor_shared::topics::TopicKind;
use conveyor_shared::{RecordBatch, Topic};
use tokio::sync::mpsc;

use crate::broker::Inbound;
use crate::metrics::HubMetrics;
use crate::registry::Registry;
use crate::store::Store;

/// Everything the hub's tasks and API share.
pub struct HubState {
    pub store: Store,
    pub registry: Mutex<Registry>,
    pub metrics: HubMetrics,
    /// `embedded` or `external`.
    pub broker_mode: &'static str,
    /// The URL devices connect to.
    pub device_url: String,
}

impl HubState {
    pub fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock would be a bug; the data (plain
        // counters) is still usable, so keep serving instead of poisoning.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Ingest {
    state: Arc<HubState>,
}

impl Ingest {
    pub fn new(state: Arc<HubState>) -> Self {
        Ingest { state }
    }

    /// Consumes inbound messages until the broker side closes.
    pub async fn run(self, mut inbound: mpsc::Receiver<Inbound>) {
        while let Some(msg) = inbound.recv().await {
            self.handle(&msg);
        }
    }

    fn reject(&self, device: Option<&str>, reason: &'static str, detail: &dyn std::fmt::Display) {
        let n = self.state.metrics.reject(reason);
        if let Some(d) = device {
            self.state.registry().on_rejected(d, now_us());
        }
        // Log the first few of each reason in full, then one in a thousand,
        // so a misbehaving device cannot flood the log.
        if n <= 10 || n % 1000 == 0 {
            tracing::warn!(
                device = device.unwrap_or("?"),
                reason,
                rejected_so_far = n,
                "payload rejected: {detail}"
            );
        }
    }

    pub fn handle(&self, msg: &Inbound) {
        let topic = match Topic::parse(&msg.topic) {
            Ok(t) => t,
            Err(e) => return self.reject(None, "bad_topic", &e),
        };
        let device = topic.device.as_str();
        let now = now_us();
        match topic.kind {
            TopicKind::Records => self.handle_batch(&topic, &msg.payload, now),
            TopicKind::Status => match DeviceStatus::decode(&msg.payload) {
                Ok(s) if s.device_id == device => self.state.registry().on_status(device, s, now),
                Ok(s) => self.reject(
                    Some(device),
                    "bad_status",
                    &format_args!("status names device {:?}", s.device_id),
                ),
                Err(e) => self.reject(Some(device), "bad_status", &e),
            },
            TopicKind::Heartbeat => match Heartbeat::decode(&msg.payload) {
                Ok(h) if h.device_id == device => {
                    self.state.registry().on_heartbeat(device, h, now)
                }
                Ok(h) => self.reject(
                    Some(device),
                    "bad_heartbeat",
                    &format_args!("heartbeat names device {:?}", h.device_id),
                ),
                Err(e) => self.reject(Some(device), "bad_heartbeat", &e),
            },
            // Downlink topics are the hub's own; it does not consume them.
            TopicKind::Ack | TopicKind::Desired | TopicKind::Results => {}
        }
    }

    fn handle_batch(&self, topic: &Topic, payload: &[u8], now: i64) {
        let device = topic.device.as_str();
        let batch = match RecordBatch::decode_checked(payload, &topic.device) {
            Ok(b) => b,
            Err(e) => return self.reject(Some(device), e.kind(), &e),
        };
        let metrics = &self.state.metrics;
        let mut latencies = Vec::with_capacity(batch.records.len());
        match self
            .state
            .store
            .append(&topic.device, &batch.records, now, |r| {
                latencies.push(now - r.source_ts_us)
            }) {
            Ok(appended) => {
                metrics.records_received.inc_by(appended.new);
                metrics.records_duplicate.inc_by(appended.duplicates);
                metrics.batches_received.inc();
                metrics.observe_latency(latencies.into_iter());
                let highest = batch.records.last().map_or(0, |r| r.seq);
                self.state.registry().on_batch(
                    device,
                    appended.new,
                    appended.duplicates,
                    highest,
                    now,
                );
            }
            Err(e) => {
                // Not the device's fault, but the batch is not stored: say so
                // loudly. (End-to-end acks will let the agent resend it.)
                metrics.reject("store_error");
                tracing::error!(
                    device,
                    records = batch.records.len(),
                    "could not store batch: {e}"
                );
            }
        }
    }
}
