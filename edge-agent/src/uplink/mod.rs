//! The uplink: takes pipeline output into the durable log, streams the log
//! to the hub in batches, and deletes from the log only what the hub has
//! acknowledged end to end (not the broker's PUBACK).
//!
//! The link to the hub is a `conveyor_transport` edge link (MQTT today): it
//! drives the connection on its own task and forwards what matters
//! (connected, an ack arrived); the *uplink* task owns all state: the log,
//! the send cursor, the window of unacknowledged batches, the counters.
//!
//! Sending is go-back-N over the log. The cursor walks forward, publishing
//! batches while fewer than `max_unacked_batches` are unacknowledged, which
//! is the back-pressure from the hub: a hub that falls behind stops
//! acknowledging and the agent stops sending, and the records wait on disk.
//! On a reconnect, or when the oldest batch stays unacknowledged for
//! `ack_timeout_ms`, the cursor goes back to the oldest record in the log
//! and everything unacknowledged is sent again; the hub deduplicates by seq.
//! That window is plain data, [`window::SendWindow`]; this loop drives it
//! with the log and the clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conveyor_shared::control::Heartbeat;
use conveyor_shared::time::now_us;
use conveyor_shared::topics::TopicKind;
use conveyor_shared::{DeviceId, Record, RecordBatch};
use conveyor_transport::edge::{EdgeLink, EdgeLinkOptions, LinkEvent, Password, PublishError};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::UplinkConfig;
use crate::log::DurableLog;
use crate::pipeline::{StageMonitor, StageStorage};
use crate::sources::{stats_snapshot, Reading, SourceCounters};

pub mod window;
use window::SendWindow;

/// How long a shutdown keeps trying to deliver what is in the log. What is
/// not acknowledged by then stays in the log for the next start.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Readings taken from the pipeline channel per log append (group commit).
const APPEND_CHUNK: usize = 2048;

/// Agent-wide counters, reported in heartbeats.
#[derive(Debug, Default)]
struct Counters {
    produced: u64,
    published: u64,
    batches: u64,
    acked: u64,
    rejected_by_hub: u64,
    connects: Arc<AtomicU64>,
}

/// What the uplink did, returned on shutdown.
#[derive(Debug, Clone)]
pub struct UplinkSummary {
    pub records_acked: u64,
    pub next_seq: u64,
    pub log_records: u64,
    pub heartbeat: Heartbeat,
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink: {0}")]
    Link(#[from] PublishError),
    #[error("uplink: {0}")]
    Transport(#[from] conveyor_transport::LinkError),
}

/// The uplink's part in over-the-air updates: desired states go to the
/// reconciler, its state reports go to the hub (retained).
pub struct UplinkOta {
    pub desired: mpsc::UnboundedSender<bytes::Bytes>,
    /// The latest encoded `AgentState` (empty until the first).
    pub state: watch::Receiver<Vec<u8>>,
}

pub struct Uplink {
    /// Over-the-air updates; `None` without `[ota]`.
    pub ota: Option<UplinkOta>,
    pub config: UplinkConfig,
    pub device: DeviceId,
    /// Counters of the pipeline stages, for heartbeats.
    pub stages: Vec<Arc<dyn StageMonitor>>,
    pub log: DurableLog,
    pub sources: Vec<(String, Arc<SourceCounters>)>,
    /// The stages' dead letters and transform cache, for heartbeats.
    pub storage: StageStorage,
    /// The device's secret, to prove itself to the broker.
    pub secret: Option<String>,
    /// The CA the hub's certificate is checked against (`mqtts://`).
    pub tls: Option<conveyor_transport::tls::ClientTls>,
}

impl Uplink {
    /// Runs until `readings` closes (every source finished) and the log is
    /// drained, or until `shutdown` turns true (then it drains what it can
    /// within a grace period and leaves the rest in the log).
    pub async fn run(
        mut self,
        mut readings: mpsc::Receiver<Reading>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<UplinkSummary, UplinkError> {
        let started = Instant::now();
        // The link never waits for this task: its events come through an
        // unbounded channel, bounded in practice by the unacked window.
        let parts = conveyor_transport::connect_edge(
            &self.config.url,
            &self.config.fluvio,
            EdgeLinkOptions {
                device: self.device.clone(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                keep_alive: Duration::from_secs(self.config.keep_alive_secs),
                downlinks: if self.ota.is_some() {
                    vec![TopicKind::Ack, TopicKind::Desired]
                } else {
                    vec![TopicKind::Ack]
                },
                password: self.secret.clone().map(Password::new),
                tls: self.tls.clone(),
            },
        )?;
        let mut ota = self.ota.take();
        // A state report not yet taken by the link (its queue was full, or
        // it was down): offered again on every tick and connect.
        let mut state_unsent = ota.is_some();
        let (link, mut link_rx) = (parts.link, parts.events);
        let mut counters = Counters {
            connects: parts.connects,
            ..Counters::default()
        };

        let mut window = SendWindow::new(
            self.log.resend_from(),
            self.config.max_unacked_batches,
            Duration::from_millis(self.config.ack_timeout_ms),
        );
        let mut send_tick =
            tokio::time::interval(Duration::from_millis(self.config.batch_max_delay_ms));
        send_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat =
            tokio::time::interval(Duration::from_secs_f64(self.config.heartbeat_secs));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = false;
        let mut sources_done = false;
        let mut grace_ends: Option<Instant> = None;
        let mut chunk = Vec::with_capacity(APPEND_CHUNK);
        // Records taken from the pipeline and not yet in the log: held
        // back while the log cannot take them (`block`, a full or
        // unwritable disk), offered again on every tick.
        let mut pending: Vec<Record> = Vec::with_capacity(APPEND_CHUNK);

        loop {
            let drained = self.log.stats().records == 0 && pending.is_empty();
            if (sources_done && drained) || grace_ends.is_some_and(|g| Instant::now() >= g) {
                break;
            }
            let grace_sleep = async {
                match grace_ends {
                    Some(g) => tokio::time::sleep_until(g).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                n = readings.recv_many(&mut chunk, APPEND_CHUNK), if !sources_done && pending.is_empty() && !self.log.blocks() => {
                    if n == 0 {
                        sources_done = true;
                        continue;
                    }
                    pending.extend(chunk.drain(..).map(Reading::into_record));
                    // Durable before anything is sent: a record the hub has
                    // seen is always one the agent would resend.
                    counters.produced += self.log.append(&mut pending);
                    if connected {
                        self.send(&*link, &mut window, &mut counters, true).await?;
                    }
                }
                event = link_rx.recv() => match event {
                    Some(LinkEvent::Connected { session_resumed }) => {
                        connected = true;
                        // Go back, with or without a session: whatever was
                        // in flight may be lost.
                        window.connected(session_resumed, self.log.first_seq(), self.log.next_seq());
                        self.send(&*link, &mut window, &mut counters, false).await?;
                        state_unsent = ota.is_some();
                        publish_state(&*link, ota.as_ref(), &mut state_unsent);
                    }
                    Some(LinkEvent::Disconnected) => connected = false,
                    Some(LinkEvent::Ack(ack)) => {
                        let removed = self.log.remove(ack.first_seq, ack.last_seq);
                        match &ack.rejected {
                            None => counters.acked += removed,
                            Some(reason) => {
                                counters.rejected_by_hub += removed;
                                tracing::warn!(first = ack.first_seq, last = ack.last_seq, "the hub refused a batch: {reason}");
                            }
                        }
                        // Acks are per batch, not cumulative: an earlier
                        // batch may have been lost and still await its own.
                        window.acked(ack.first_seq, ack.last_seq);
                        if connected {
                            self.send(&*link, &mut window, &mut counters, true).await?;
                        }
                    }
                    Some(LinkEvent::Desired(bytes)) => {
                        if let Some(o) = &ota {
                            let _ = o.desired.send(bytes);
                        }
                    }
                    // Not asked for.
                    Some(LinkEvent::Results(_)) => {}
                    None => break,
                },
                changed = async { ota.as_mut().expect("guarded").state.changed().await }, if ota.is_some() => {
                    match changed {
                        Ok(()) => {
                            state_unsent = true;
                            if connected {
                                publish_state(&*link, ota.as_ref(), &mut state_unsent);
                            }
                        }
                        // The reconciler is gone: no more reports.
                        Err(_) => ota = None,
                    }
                }
                _ = send_tick.tick() => {
                    if connected && state_unsent {
                        publish_state(&*link, ota.as_ref(), &mut state_unsent);
                    }
                    self.log.maintain(std::time::Instant::now());
                    if !pending.is_empty() && !self.log.blocks() {
                        counters.produced += self.log.append(&mut pending);
                    }
                    // An ack timeout, or records held below the cursor
                    // with nothing in flight: go back to the oldest.
                    let first = self.log.first_seq();
                    if let Some(back) = window.tick(std::time::Instant::now(), first, self.log.next_seq()) {
                        tracing::debug!(from = back.from, reason = ?back.reason, "no ack in time; re-sending from the oldest record");
                    }
                    if self.log.expire(now_us()) > 0 {
                        let first = self.log.first_seq();
                        window.expired(first, self.log.next_seq());
                    }
                    if connected {
                        self.send(&*link, &mut window, &mut counters, false).await?;
                    }
                }
                _ = heartbeat.tick() => {
                    self.log.snapshot();
                    let hb = self.heartbeat(&counters, started);
                    // Best effort and non-blocking: a heartbeat is worthless late.
                    let _ = link.try_publish_heartbeat(&hb);
                }
                _ = shutdown.wait_for(|s| *s), if grace_ends.is_none() => {
                    // Sources see the same signal and stop; what they still
                    // hand over goes into the log before the loop ends.
                    grace_ends = Some(Instant::now() + SHUTDOWN_GRACE);
                }
                _ = grace_sleep => {}
            }
        }
        if !pending.is_empty() {
            counters.produced += self.log.append(&mut pending);
            if !pending.is_empty() {
                tracing::warn!(
                    readings = pending.len(),
                    "readings held back by a full or unwritable log are lost at shutdown"
                );
            }
        }
        self.log.flush();
        self.log.snapshot();
        // The event loop keeps running through the goodbye; with nobody
        // listening any more, its events are simply dropped.
        drop(link_rx);

        // Goodbye: a final heartbeat and a clean offline status, and the
        // link waits until the broker confirmed them before it closes.
        // (Closing the socket with PUBACKs unread resets the connection,
        // and a reset makes the broker discard what it has not read yet.)
        let hb = self.heartbeat(&counters, started);
        if connected {
            link.goodbye(hb.clone(), SHUTDOWN_GRACE).await;
        } else {
            link.close().await;
        }
        let left = self.log.stats().records;
        if left > 0 {
            tracing::info!(
                records = left,
                "records not yet acknowledged stay in the log for the next start"
            );
        }
        Ok(UplinkSummary {
            records_acked: counters.acked,
            next_seq: self.log.next_seq(),
            log_records: left,
            heartbeat: hb,
        })
    }

    /// Publishes batches from the window's cursor while the window (and
    /// the client's queue) has room. With `full_only`, a partial batch waits
    /// for the next tick instead.
    async fn send(
        &mut self,
        link: &dyn EdgeLink,
        window: &mut SendWindow,
        counters: &mut Counters,
        full_only: bool,
    ) -> Result<(), UplinkError> {
        let max = self.config.batch_max_records;
        while let Some(from) = window.next_send() {
            let mut records = self.log.read(from, max);
            let cut = cut_to_byte_budget(&mut records, BATCH_BYTE_BUDGET);
            if records.is_empty() || (full_only && records.len() < max && !cut) {
                return Ok(());
            }
            let (first, last) = (records[0].seq, records[records.len() - 1].seq);
            let n = records.len() as u64;
            let batch = RecordBatch::new(&self.device, now_us(), records);
            // Never wait on the link's queue: when it is full (the broker
            // is slow or away), the batch stays in the log for a later tick.
            match link.try_publish_batch(&batch) {
                Ok(()) => {}
                Err(PublishError::Full) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            counters.published += n;
            counters.batches += 1;
            window.sent(first, last, std::time::Instant::now());
        }
        Ok(())
    }

    fn heartbeat(&self, counters: &Counters, started: Instant) -> Heartbeat {
        let log = self.log.stats();
        let health = self.log.health();
        Heartbeat {
            device_id: self.device.to_string(),
            ts_us: now_us(),
            uptime_s: started.elapsed().as_secs_f64(),
            records_produced: counters.produced,
            records_published: counters.published,
            batches_published: counters.batches,
            records_acked: counters.acked,
            records_rejected_by_hub: counters.rejected_by_hub,
            log_records: log.records,
            log_bytes: log.bytes,
            log_bound_bytes: Some(self.log.bound()),
            log_dropped_full: log.dropped_full,
            log_dropped_age: log.dropped_age,
            log_dropped_unwritable: log.dropped_unwritable,
            log_lost_corrupt: log.lost_corrupt,
            log_disk_full: health.disk_full,
            storage_fault: health.fault,
            disk_free_bytes: health.free_bytes,
            storage_faults: health.faults,
            dead_letter_write_errors: self.storage.dead_letter_write_errors(),
            transform_cache_write_errors: self.storage.transform_cache_write_errors(),
            next_seq: self.log.next_seq(),
            connects: counters.connects.load(Ordering::Relaxed),
            rss_bytes: rss_bytes(),
            sources: stats_snapshot(&self.sources),
            stages: self.stages.iter().map(|s| s.snapshot()).collect(),
            dead_letters: self.storage.recent_dead_letters(),
        }
    }
}

/// Offers the latest state report to the link (retained); `unsent` stays
/// true while the link's queue is full.
fn publish_state(link: &dyn EdgeLink, ota: Option<&UplinkOta>, unsent: &mut bool) {
    let Some(o) = ota else {
        *unsent = false;
        return;
    };
    let state = o.state.borrow().clone();
    if state.is_empty() {
        *unsent = false;
        return;
    }
    *unsent = link.try_publish_state(&state).is_err();
}

/// Resident set size of this process, from /proc (0 elsewhere).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes of records one batch may carry: the hub and brokers refuse
/// payloads over `MAX_BATCH_BYTES`, and records with an escalation window
/// are kilobytes each, so a batch is cut by size as well as by count.
const BATCH_BYTE_BUDGET: usize = conveyor_shared::records::MAX_BATCH_BYTES - 64 * 1024;

/// Keeps the longest prefix of `records` whose encoding fits `budget`
/// (always at least one record: a single record is bounded far below the
/// limit by config validation). Returns whether anything was cut.
fn cut_to_byte_budget(records: &mut Vec<Record>, budget: usize) -> bool {
    use prost::Message;
    let mut total = 0;
    let keep = records
        .iter()
        .position(|r| {
            // Each record costs its length, a length prefix and a tag.
            total += r.encoded_len() + 6;
            total > budget
        })
        .unwrap_or(records.len())
        .max(1);
    let cut = keep < records.len();
    records.truncate(keep);
    cut
}

#[cfg(test)]
mod byte_budget_tests {
    use super::*;

    #[test]
    fn batches_are_cut_by_size_but_never_empty() {
        let big = |seq| Record {
            stream: "s".into(),
            seq,
            values: vec![0.5; 1000],
            ..Default::default()
        };
        let mut records: Vec<Record> = (1..=10).map(big).collect();
        assert!(cut_to_byte_budget(&mut records, 20_000));
        assert_eq!(records.len(), 2, "each record is ~8 KB");
        let mut one = vec![big(1)];
        assert!(!cut_to_byte_budget(&mut one, 10));
        assert_eq!(one.len(), 1);
        let mut small: Vec<Record> = (1..=3).map(big).collect();
        assert!(!cut_to_byte_budget(&mut small, 1 << 20));
        assert_eq!(small.len(), 3);
    }
}
