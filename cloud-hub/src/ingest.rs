//! Ingest: every message from a device topic goes through [`Ingest::handle`].
//!
//! A record batch is decoded and validated, its records stored exactly once
//! and the device's entry updated; a status or heartbeat updates the entry.
//! Anything malformed is counted (`payloads_rejected_total{reason}`),
//! logged with the device and the reason, and skipped: no input can stop
//! ingest or the hub.

use std::sync::{Arc, Mutex};

use conveyor_process::LogEvery;
use conveyor_shared::control::{Ack, DeviceStatus, Heartbeat};
use conveyor_shared::time::now_us;
use conveyor_shared::topics::TopicKind;
use conveyor_shared::{DeviceId, FinalPrediction, Record, RecordBatch, Topic};
use conveyor_transport::hub::{Inbound, Publisher, Received};
use prost::Message;
use tokio::sync::{broadcast, mpsc};

use crate::cascade::router::{DeviceResults, Router};
use crate::inference::InferenceService;
use crate::metrics::HubMetrics;
use crate::registry::Registry;
use crate::store::{Appended, Store, StoreError};

/// Everything the hub's tasks and API share.
pub struct HubState {
    pub store: Store,
    pub registry: Mutex<Registry>,
    pub metrics: HubMetrics,
    /// The hub's models (cascade and `POST /api/v1/models/{id}/infer`).
    pub inference: InferenceService,
    /// New final predictions, for live subscribers (SSE).
    pub results: broadcast::Sender<Arc<DeviceResults>>,
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
    publisher: Publisher,
    router: Router,
}

/// A stored batch, to acknowledge and route once durable.
pub struct Stored {
    pub ack: Ack,
    pub device: DeviceId,
    pub edge_results: Vec<FinalPrediction>,
    pub escalated: Vec<Record>,
}

/// Inbound messages handled per durable commit (group commit).
const COMMIT_CHUNK: usize = 256;

impl Ingest {
    pub fn new(state: Arc<HubState>, publisher: Publisher, router: Router) -> Self {
        Ingest {
            state,
            publisher,
            router,
        }
    }

    /// Consumes inbound messages until the broker side closes. Whatever
    /// is waiting is handled as one group: stored, made durable with one
    /// fsync, and only then acknowledged to the agents.
    pub async fn run(self, mut inbound: mpsc::Receiver<Received>) {
        let mut messages = Vec::with_capacity(COMMIT_CHUNK);
        while inbound.recv_many(&mut messages, COMMIT_CHUNK).await > 0 {
            let stored: Vec<Stored> = messages.drain(..).filter_map(|m| self.handle(&m)).collect();
            if stored.is_empty() {
                continue;
            }
            let store = self.state.store.clone();
            let committed = tokio::task::spawn_blocking(move || store.commit())
                .await
                .unwrap_or_else(|e| Err(StoreError::Engine(Box::new(e))));
            if let Err(e) = committed {
                // Not durable, so not acknowledged: the agents will re-send.
                tracing::error!("could not make stored records durable: {e}");
                continue;
            }
            for s in stored {
                self.publisher.ack(&s.device, &s.ack);
                if s.ack.rejected.is_none() {
                    self.router
                        .dispatch(&s.device, s.edge_results, s.escalated)
                        .await;
                }
            }
        }
    }

    fn reject(&self, device: Option<&str>, reason: &'static str, detail: &dyn std::fmt::Display) {
        let n = self.state.metrics.reject(reason);
        if let Some(d) = device {
            self.state.registry().on_rejected(d, now_us());
        }
        // Log the first few of each reason in full, then one in a thousand,
        // so a misbehaving device cannot flood the log.
        if LogEvery::FIRST_10_THEN_EVERY_1000.should_log(n) {
            tracing::warn!(
                device = device.unwrap_or("?"),
                reason,
                rejected_so_far = n,
                "payload rejected: {detail}"
            );
        }
    }

    /// Handles one message; for a record batch, returns the ack to send
    /// (to the device's ack topic) and the results to route, once the
    /// store is durable.
    pub fn handle(&self, msg: &Received) -> Option<Stored> {
        // The device side parsed the topic; one that is no device topic is
        // counted and refused here, like any bad input.
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                self.reject(None, "bad_topic", e);
                return None;
            }
        };
        let Inbound { topic, payload } = msg;
        let device = topic.device.as_str();
        let now = now_us();
        match topic.kind {
            TopicKind::Records => {
                return self
                    .handle_batch(topic, payload, now)
                    .map(|(a, appended)| Stored {
                        ack: a,
                        device: topic.device.clone(),
                        edge_results: appended.edge_results,
                        escalated: appended.escalated,
                    })
            }
            TopicKind::Status => match DeviceStatus::decode(payload) {
                Ok(s) if s.device_id == device => self.state.registry().on_status(device, s, now),
                Ok(s) => self.reject(
                    Some(device),
                    "bad_status",
                    &format_args!("status names device {:?}", s.device_id),
                ),
                Err(e) => self.reject(Some(device), "bad_status", &e),
            },
            TopicKind::Heartbeat => match Heartbeat::decode(payload) {
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
        None
    }

    fn handle_batch(&self, topic: &Topic, payload: &[u8], now: i64) -> Option<(Ack, Appended)> {
        let device = topic.device.as_str();
        let batch = match RecordBatch::decode_checked(payload, &topic.device) {
            Ok(b) => b,
            Err(e) => {
                self.reject(Some(device), e.kind(), &e);
                // A batch that decodes but breaks the rules is refused for
                // good, so the agent can stop re-sending it; one that does
                // not decode names no records to refuse.
                let raw = RecordBatch::decode(payload).ok()?;
                let (first, last) = (raw.records.first()?.seq, raw.records.last()?.seq);
                return Some((
                    Ack {
                        first_seq: first.min(last),
                        last_seq: first.max(last),
                        rejected: Some(e.to_string()),
                    },
                    Appended::default(),
                ));
            }
        };
        let metrics = &self.state.metrics;
        let mut latencies = Vec::with_capacity(batch.records.len());
        let mut predictions = Vec::new();
        match self
            .state
            .store
            .append(&topic.device, &batch.records, now, &mut |r| {
                latencies.push(now - r.source_ts_us);
                if r.prediction.is_some() {
                    predictions.push(r.clone());
                }
            }) {
            Ok(appended) => {
                metrics.records_received.inc_by(appended.new);
                metrics.records_duplicate.inc_by(appended.duplicates);
                metrics.batches_received.inc();
                metrics.observe_latency(latencies.into_iter());
                let (first, last) = (
                    batch.records[0].seq,
                    batch.records[batch.records.len() - 1].seq,
                );
                let mut registry = self.state.registry();
                registry.on_batch(device, appended.new, appended.duplicates, last, now);
                for r in &predictions {
                    registry.on_prediction(device, r, now);
                }
                drop(registry);
                Some((
                    Ack {
                        first_seq: first,
                        last_seq: last,
                        rejected: None,
                    },
                    appended,
                ))
            }
            Err(e) => {
                // Not the device's fault, and not acknowledged: the agent
                // keeps the records and re-sends them.
                metrics.reject("store_error");
                tracing::error!(
                    device,
                    records = batch.records.len(),
                    "could not store batch: {e}"
                );
                None
            }
        }
    }
}
