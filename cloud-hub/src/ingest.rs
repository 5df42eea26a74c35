//! Ingest: every message from a device topic goes through [`Ingest::handle`].
//!
//! A record batch is decoded and validated, its records stored exactly once
//! and the device's entry updated; a status or heartbeat updates the entry.
//! Anything malformed is counted (`payloads_rejected_total{reason}`),
//! logged with the device and the reason, and skipped: no input can stop
//! ingest or the hub.
//!
//! A batch is counted (metrics, the device's entry) and acknowledged only
//! once a durable commit covered it, in the same store generation: a store
//! that recovers from a fault rolls back what was not durable, and the
//! counters must not count records the store no longer holds. A batch
//! whose commit failed, or that a recovery may have rolled back, is kept
//! aside as *unsure*: a failed commit can still have made it durable (the
//! storage may fail after the commit point), so once the store is reopened
//! ingest looks: a batch the store holds is counted, acknowledged and its
//! edge results published then; one it does not is left to the agent's
//! re-send. After such a rollback the registry's counts are reset from the
//! store's, and the escalations left pending are asked again (their answers
//! may have been rolled back).

use std::sync::{Arc, Mutex};

use conveyor_process::LogEvery;
use conveyor_shared::control::{Ack, DeviceStatus, Heartbeat};
use conveyor_shared::ota::AgentState;
use conveyor_shared::time::now_us;
use conveyor_shared::topics::TopicKind;
use conveyor_shared::{DeviceId, Record, RecordBatch, Topic};
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
    /// Over-the-air updates: the registry, desired states, agent reports.
    pub ota: crate::ota::OtaHub,
    /// Hub -> device messages (the API publishes desired states).
    pub publisher: Publisher,
    /// Who changed what the fleet runs.
    pub audit: crate::audit::Audit,
    /// Devices' secrets and API tokens, as `identity.json` has them now.
    pub identities: Arc<crate::identity::live::LiveIdentities>,
    /// The embedded broker's gate (none with an external broker).
    pub gate: Option<conveyor_transport::mqtt::gate::GateHandle>,
    pub http_auth: crate::identity::config::HttpAuth,
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
    /// The store generation the registry's counts agree with.
    generation: u64,
    /// Store failures seen by ingest, for rate-limiting their log lines.
    store_failures: u64,
    /// Batches written, but not known to be durable: their commit failed,
    /// or the store rolled back since. Settled once the store is reopened.
    unsure: Vec<Stored>,
}

/// Most unsure batches kept; beyond, the oldest are left to the agents'
/// re-sends (not acknowledging is always safe).
const MAX_UNSURE: usize = 1024;

/// A handled batch, to acknowledge (and, if stored, count and route) once
/// durable.
pub struct Stored {
    pub ack: Ack,
    pub device: DeviceId,
    /// What storing it did; `None` for a batch refused for good.
    pub batch: Option<StoredBatch>,
}

/// A batch written to the store, not yet known to be durable.
pub struct StoredBatch {
    /// The store's generation before the write: the batch is durable if a
    /// commit succeeds and the generation is still this.
    pub generation: u64,
    pub appended: Appended,
    pub last_seq: u64,
    pub received_at_us: i64,
    /// The seqs of the records that were new.
    pub new_seqs: Vec<u64>,
    /// Source-to-hub latency of each new record.
    pub latencies_us: Vec<i64>,
    /// The new records that carry a prediction.
    pub predictions: Vec<Record>,
}

/// Inbound messages handled per durable commit (group commit).
const COMMIT_CHUNK: usize = 256;

impl Ingest {
    pub fn new(state: Arc<HubState>, publisher: Publisher, router: Router) -> Self {
        let generation = state.store.generation();
        Ingest {
            state,
            publisher,
            router,
            generation,
            store_failures: 0,
            unsure: Vec::new(),
        }
    }

    /// Consumes inbound messages until the broker side closes. Whatever
    /// is waiting is handled as one group: stored, made durable with one
    /// fsync, and only then counted and acknowledged to the agents.
    pub async fn run(mut self, mut inbound: mpsc::Receiver<Received>) {
        let mut messages = Vec::with_capacity(COMMIT_CHUNK);
        while inbound.recv_many(&mut messages, COMMIT_CHUNK).await > 0 {
            if self.state.store.generation() != self.generation {
                self.recovered().await;
            }
            let stored: Vec<Stored> = messages.drain(..).filter_map(|m| self.handle(&m)).collect();
            if stored.is_empty() {
                continue;
            }
            let store = self.state.store.clone();
            let committed = tokio::task::spawn_blocking(move || store.commit())
                .await
                .unwrap_or_else(|e| Err(StoreError::Engine(Box::new(e))));
            let generation = self.state.store.generation();
            if let Err(e) = committed {
                // Not known to be durable, so not acknowledged (yet).
                self.store_failed(&format_args!("could not make stored records durable: {e}"));
                self.keep_unsure(stored.into_iter().filter(|s| s.batch.is_some()));
                continue;
            }
            for s in stored {
                match &s.batch {
                    // Refused for good: nothing stored, nothing to wait for.
                    None => self.publisher.ack(&s.device, &s.ack),
                    Some(b) if b.generation == generation => self.durable(s).await,
                    // Written before the store rolled back to its last
                    // durable commit: maybe gone.
                    Some(_) => self.keep_unsure([s]),
                }
            }
        }
    }

    fn keep_unsure(&mut self, batches: impl IntoIterator<Item = Stored>) {
        self.unsure.extend(batches);
        if self.unsure.len() > MAX_UNSURE {
            let extra = self.unsure.len() - MAX_UNSURE;
            self.unsure.drain(..extra);
        }
    }

    /// Counts, acknowledges and routes a batch a durable commit covered.
    async fn durable(&mut self, s: Stored) {
        let Some(b) = s.batch else {
            return;
        };
        self.count(&s.device, &b);
        self.publisher.ack(&s.device, &s.ack);
        self.router
            .dispatch(&s.device, b.appended.edge_results, b.appended.escalated)
            .await;
    }

    /// The store was reopened (it recovered from a fault, rolling back to
    /// its last durable commit): settle the unsure batches by what it
    /// holds, take its counts, and ask again about what is pending.
    async fn recovered(&mut self) {
        let generation = self.state.store.generation();
        for s in std::mem::take(&mut self.unsure) {
            let Some(b) = &s.batch else { continue };
            // A batch is stored whole or not at all: one record tells.
            // (Seqs a later batch stored anew were dropped from new_seqs.)
            let Some(&seq) = b.new_seqs.first() else {
                continue;
            };
            match self.state.store.record(s.device.as_str(), seq) {
                Ok(Some(_)) => {
                    let Some(mut b) = s.batch else { continue };
                    b.appended.new = b.new_seqs.len() as u64;
                    // Escalations are asked again from the pending marks.
                    let kept: std::collections::HashSet<u64> = b.new_seqs.iter().copied().collect();
                    b.appended.edge_results.retain(|r| kept.contains(&r.seq));
                    b.predictions.retain(|r| kept.contains(&r.seq));
                    self.count(&s.device, &b);
                    self.publisher.ack(&s.device, &s.ack);
                    self.router
                        .dispatch(&s.device, b.appended.edge_results, Vec::new())
                        .await;
                }
                // Rolled back: the agent re-sends it.
                Ok(None) => {}
                Err(e) => self.store_failed(&format_args!(
                    "cannot tell whether a batch of {} survived the store's recovery \
                     (it is not acknowledged; the agent re-sends it): {e}",
                    s.device
                )),
            }
        }
        self.resync(generation);
    }

    /// Counts a durable batch: metrics and the device's entry.
    fn count(&self, device: &DeviceId, b: &StoredBatch) {
        let device = device.as_str();
        let metrics = &self.state.metrics;
        metrics.records_received.inc_by(b.appended.new);
        metrics.records_duplicate.inc_by(b.appended.duplicates);
        metrics.batches_received.inc();
        metrics.observe_latency(b.latencies_us.iter().copied());
        {
            let mut registry = self.state.registry();
            let at = b.received_at_us;
            registry.on_batch(
                device,
                b.appended.new,
                b.appended.duplicates,
                b.last_seq,
                at,
            );
            for r in &b.predictions {
                registry.on_prediction(device, r, at);
            }
        }
    }

    /// The store rolled back to its last durable commit (it recovered from
    /// a fault): its counts are the truth, and escalations whose answers
    /// were not yet durable are pending again.
    fn resync(&mut self, generation: u64) {
        let store = &self.state.store;
        match store.device_counts() {
            Ok(counts) => {
                self.state.registry().resync(&counts);
                self.generation = generation;
            }
            // Still unavailable: the next group tries again.
            Err(e) => {
                self.store_failed(&format_args!("cannot read the store's counts: {e}"));
                return;
            }
        }
        match store.pending() {
            Ok(pending) => {
                let router = self.router.clone();
                tokio::spawn(async move { router.resume(pending).await });
            }
            Err(e) => tracing::error!("cannot read the pending escalations after a recovery: {e}"),
        }
    }

    /// `seqs` of `device` were just stored as new: an unsure batch holding
    /// them was rolled back, so they no longer tell whether it survived.
    fn stored_anew(&mut self, device: &DeviceId, seqs: &[u64]) {
        if self.unsure.is_empty() || seqs.is_empty() {
            return;
        }
        let seqs: std::collections::HashSet<u64> = seqs.iter().copied().collect();
        for s in &mut self.unsure {
            if let Some(b) = &mut s.batch {
                if s.device == *device {
                    b.new_seqs.retain(|q| !seqs.contains(q));
                }
            }
        }
    }

    /// Logs a store failure seen by ingest, rate-limited: while the store
    /// cannot write, every batch and every commit fails. (The store logs
    /// the fault itself, once.)
    fn store_failed(&mut self, what: &dyn std::fmt::Display) {
        self.store_failures += 1;
        if LogEvery::FIRST_10_THEN_EVERY_1000.should_log(self.store_failures) {
            tracing::error!(store_failures = self.store_failures, "{what}");
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
    pub fn handle(&mut self, msg: &Received) -> Option<Stored> {
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
                    .map(|(ack, batch)| Stored {
                        ack,
                        device: topic.device.clone(),
                        batch,
                    })
            }
            TopicKind::Status => match DeviceStatus::decode(payload) {
                Ok(s) if s.device_id == device => {
                    let online = s.state == conveyor_shared::control::DeviceState::Online;
                    self.state.registry().on_status(device, s, now);
                    if online {
                        crate::ota::reports::on_online(&self.state, &topic.device, now);
                    }
                }
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
            TopicKind::State => match AgentState::decode(payload) {
                Ok(s) if s.device_id == device => {
                    crate::ota::reports::on_report(&self.state, &topic.device, s, now)
                }
                Ok(s) => self.reject(
                    Some(device),
                    "bad_state",
                    &format_args!("state names device {:?}", s.device_id),
                ),
                Err(e) => self.reject(Some(device), "bad_state", &e),
            },
            // Downlink topics are the hub's own; it does not consume them.
            TopicKind::Ack | TopicKind::Desired | TopicKind::Results => {}
        }
        None
    }

    fn handle_batch(
        &mut self,
        topic: &Topic,
        payload: &[u8],
        now: i64,
    ) -> Option<(Ack, Option<StoredBatch>)> {
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
                    None,
                ));
            }
        };
        let mut latencies_us = Vec::with_capacity(batch.records.len());
        let mut new_seqs = Vec::with_capacity(batch.records.len());
        let mut predictions = Vec::new();
        let generation = self.state.store.generation();
        match self
            .state
            .store
            .append(&topic.device, &batch.records, now, &mut |r| {
                latencies_us.push(now - r.source_ts_us);
                new_seqs.push(r.seq);
                if r.prediction.is_some() {
                    predictions.push(r.clone());
                }
            }) {
            Ok(appended) => {
                self.stored_anew(&topic.device, &new_seqs);
                let (first, last) = (
                    batch.records[0].seq,
                    batch.records[batch.records.len() - 1].seq,
                );
                Some((
                    Ack {
                        first_seq: first,
                        last_seq: last,
                        rejected: None,
                    },
                    Some(StoredBatch {
                        generation,
                        appended,
                        last_seq: last,
                        received_at_us: now,
                        new_seqs,
                        latencies_us,
                        predictions,
                    }),
                ))
            }
            Err(e) => {
                // Not the device's fault, and not acknowledged: the agent
                // keeps the records and re-sends them.
                self.state.metrics.reject("store_error");
                self.store_failed(&format_args!(
                    "could not store a batch of {} records from {device}: {e}",
                    batch.records.len()
                ));
                None
            }
        }
    }
}
