//! Final predictions: from stored prediction records to the results
//! topic, the store and live subscribers.
//!
//! Ingest calls [`Router::dispatch`] once a group of batches is durable.
//! Edge-decided results (stored with their records by the store) go out at
//! once. Escalated records go to the escalation loop: at most
//! [`MAX_IN_FLIGHT`] hub-model requests at a time (so the cascade alone
//! never overfills a model's queue), fed by a bounded channel whose
//! back-pressure reaches ingest. Each answer (or, if the hub cannot
//! answer, the edge's prediction with the reason) is stored, which clears
//! the record's pending mark, and then published. At start,
//! [`Router::resume`] re-asks for records a stopped hub left pending.

use std::sync::Arc;
use std::time::Duration;

use conveyor_shared::time::now_us;
use conveyor_shared::{DeviceId, FinalPrediction, Record, ResultBatch};
use conveyor_transport::hub::Publisher;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::inference::InferError;
use crate::ingest::HubState;

/// Hub-model requests of the cascade in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// Escalated records waiting for a slot.
const BACKLOG: usize = 4096;
/// Attempts when a model is overloaded (by other clients) before the
/// edge's answer is kept.
const OVERLOAD_RETRIES: u32 = 5;

/// What live subscribers receive: new final predictions of one device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceResults {
    pub device_id: String,
    pub results: Vec<FinalPrediction>,
}

struct Escalated {
    device: String,
    record: Record,
}

#[derive(Clone)]
pub struct Router {
    state: Arc<HubState>,
    publisher: Publisher,
    escalations: mpsc::Sender<Escalated>,
}

impl Router {
    /// Starts the escalation loop; it ends when every router clone is
    /// dropped (after answering what it holds).
    pub fn start(state: Arc<HubState>, publisher: Publisher) -> Self {
        let (escalations, rx) = mpsc::channel(BACKLOG);
        let router = Router {
            state,
            publisher,
            escalations,
        };
        tokio::spawn(escalation_loop(router.worker(), rx));
        router
    }

    /// A handle for the loop's tasks that does not keep the loop alive.
    fn worker(&self) -> Outlet {
        Outlet {
            state: self.state.clone(),
            publisher: self.publisher.clone(),
        }
    }

    /// A committed batch's new results and escalations.
    pub async fn dispatch(
        &self,
        device: &DeviceId,
        edge_results: Vec<FinalPrediction>,
        escalated: Vec<Record>,
    ) {
        if !edge_results.is_empty() {
            self.worker().publish(device.as_str(), edge_results);
        }
        for record in escalated {
            let job = Escalated {
                device: device.to_string(),
                record,
            };
            // Waits when the backlog is full: ingest slows, acks slow,
            // agents keep the rest in their logs.
            if self.escalations.send(job).await.is_err() {
                return;
            }
        }
    }

    /// Re-asks the hub's models for escalations a stopped hub left
    /// pending (their records are durable, their results were not).
    /// `pending` is read before ingest starts, so a record escalated by
    /// this run is never asked about twice.
    pub async fn resume(&self, pending: Vec<(String, u64)>) {
        if !pending.is_empty() {
            tracing::info!(records = pending.len(), "resuming escalations left pending");
        }
        for (device, seq) in pending {
            match self.state.store.record(&device, seq) {
                Ok(Some(record)) => {
                    if self
                        .escalations
                        .send(Escalated { device, record })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // The mark was written, its record never was (crash).
                Ok(None) => {
                    let _ = self.state.store.forget_pending(&device, seq);
                }
                Err(e) => tracing::error!(device, seq, "cannot read a pending record: {e}"),
            }
        }
    }
}

async fn escalation_loop(out: Outlet, mut rx: mpsc::Receiver<Escalated>) {
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            job = rx.recv(), if running.len() < MAX_IN_FLIGHT => match job {
                Some(job) => {
                    let out = out.clone();
                    running.spawn(async move { out.decide(job).await });
                }
                None => break,
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    while running.join_next().await.is_some() {}
}

/// Stores, publishes and broadcasts final predictions.
#[derive(Clone)]
struct Outlet {
    state: Arc<HubState>,
    publisher: Publisher,
}

impl Outlet {
    async fn decide(&self, job: Escalated) {
        let Escalated { device, record } = job;
        let Some(esc) = &record.escalation else {
            return;
        };
        let mut attempt = 0;
        let answer = loop {
            let r = self
                .state
                .inference
                .infer(&esc.hub_model, esc.channels as usize, &esc.window)
                .await;
            match r {
                Err(InferError::Overloaded { .. }) if attempt < OVERLOAD_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                }
                other => break other,
            }
        };
        let now = now_us();
        let result = match answer {
            Ok(hub) => {
                if let (true, Some(edge)) = (esc.sampled, &record.prediction) {
                    let agreed = edge.label == hub.label;
                    self.state.registry().on_teacher(&device, edge, agreed, now);
                }
                FinalPrediction::by_hub(&record, hub, now)
            }
            // Counted and logged by the service; the edge's answer stands.
            Err(e) => FinalPrediction::hub_failed(&record, e.to_string(), now),
        };
        let store = self.state.store.clone();
        let stored = {
            let (device, result) = (device.clone(), result.clone());
            tokio::task::spawn_blocking(move || store.put_result(&device, &result)).await
        };
        match stored {
            Ok(Ok(())) => {}
            // Still pending: the next start asks again.
            Ok(Err(e)) => {
                tracing::error!(device, seq = record.seq, "cannot store a hub result: {e}")
            }
            Err(e) => tracing::error!(device, seq = record.seq, "storing a hub result: {e}"),
        }
        self.publish(&device, vec![result]);
    }

    fn publish(&self, device: &str, results: Vec<FinalPrediction>) {
        let now = now_us();
        {
            let mut registry = self.state.registry();
            for r in &results {
                registry.on_final(device, r, now);
            }
        }
        let Ok(id) = DeviceId::new(device.to_string()) else {
            return;
        };
        let batch = ResultBatch::new(device, results);
        self.publisher.results(&id, &batch);
        self.state
            .metrics
            .results_published
            .inc_by(batch.results.len() as u64);
        // No subscriber is fine.
        let _ = self.state.results.send(Arc::new(DeviceResults {
            device_id: device.to_string(),
            results: batch.results,
        }));
    }
}
