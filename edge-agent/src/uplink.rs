//! The uplink: turns pipeline output into sequenced record batches and
//! publishes them to the hub over MQTT (QoS 1), with the device's status
//! and heartbeats alongside.
//!
//! Two tasks share the MQTT client. The *event loop* task only drives the
//! connection (rumqttc reconnects on the next poll after an error and
//! re-sends unacknowledged QoS 1 publishes); the *uplink* task owns all
//! protocol state: the open batch, the sequence allocator, the counters.
//! Batches are flushed when full or `batch_max_delay_ms` after their first
//! record. While the hub is unreachable, `publish` waits for room in the
//! client's queue, which stalls the pipeline channel and in turn the
//! sources: memory stays bounded. (Store-and-forward to disk is the
//! durable log's job, not this module's.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conveyor_shared::control::{DeviceState, DeviceStatus, Heartbeat};
use conveyor_shared::time::now_us;
use conveyor_shared::topics::TopicKind;
use conveyor_shared::{DeviceId, Record, RecordBatch, Topic};
use rumqttc::{AsyncClient, Event, LastWill, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::UplinkConfig;
use crate::mqtt_client::mqtt_options;
use crate::pipeline::Pipeline;
use crate::seq::SeqAllocator;
use crate::sources::{stats_snapshot, Reading, SourceCounters};

/// How long a clean shutdown waits for the broker to take the last batches.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Agent-wide counters, reported in heartbeats.
#[derive(Debug, Default)]
pub struct UplinkCounters {
    pub produced: AtomicU64,
    pub published: AtomicU64,
    pub batches: AtomicU64,
    pub connects: AtomicU64,
    /// QoS 1 messages handed to the client, and PUBACKs received: equal
    /// when the broker has taken everything.
    pub qos1_queued: AtomicU64,
    pub qos1_acked: AtomicU64,
}

impl UplinkCounters {
    fn unacked(&self) -> u64 {
        self.qos1_queued
            .load(Ordering::Relaxed)
            .saturating_sub(self.qos1_acked.load(Ordering::Relaxed))
    }
}

/// What the uplink did, returned on shutdown.
#[derive(Debug, Clone)]
pub struct UplinkSummary {
    pub records_published: u64,
    pub next_seq: u64,
    pub heartbeat: Heartbeat,
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("sequence state in the data dir: {0}")]
    Seq(#[from] std::io::Error),
    #[error("MQTT client queue closed: {0}")]
    Client(#[from] rumqttc::ClientError),
}

pub struct Uplink {
    pub config: UplinkConfig,
    pub device: DeviceId,
    pub pipeline: Pipeline,
    pub seq: SeqAllocator,
    pub sources: Vec<(String, Arc<SourceCounters>)>,
}

fn status(device: &DeviceId, state: DeviceState, clean: bool) -> DeviceStatus {
    DeviceStatus {
        device_id: device.to_string(),
        state,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        ts_us: now_us(),
        clean,
    }
}

impl Uplink {
    /// Runs until `readings` closes (every source finished) or `shutdown`
    /// turns true; then drains what is left, says goodbye and disconnects.
    pub async fn run(
        mut self,
        mut readings: mpsc::Receiver<Reading>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<UplinkSummary, UplinkError> {
        let started = Instant::now();
        let status_topic = Topic::new(self.device.clone(), TopicKind::Status).to_string();
        let records_topic = Topic::new(self.device.clone(), TopicKind::Records).to_string();
        let heartbeat_topic = Topic::new(self.device.clone(), TopicKind::Heartbeat).to_string();

        let mut options = mqtt_options(
            self.device.as_str(),
            &self.config.url,
            Duration::from_secs(self.config.keep_alive_secs),
        );
        // A persistent session: after a network blip the broker still knows
        // the session and rumqttc re-sends unacknowledged batches. (A broker
        // that lost its state, e.g. restarted rumqttd, starts a fresh one,
        // and rumqttc then drops them: closing that gap is the durable
        // log's job.)
        options.set_clean_session(false);
        options.set_last_will(LastWill::new(
            &status_topic,
            status(&self.device, DeviceState::Offline, false).encode(),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, eventloop) = AsyncClient::new(options, 64);
        let counters = Arc::new(UplinkCounters::default());
        let (stop_loop_tx, stop_loop_rx) = watch::channel(false);
        let loop_task = tokio::spawn(drive_event_loop(
            eventloop,
            client.clone(),
            self.device.clone(),
            status_topic.clone(),
            counters.clone(),
            stop_loop_rx,
        ));

        let max_records = self.config.batch_max_records;
        let max_delay = Duration::from_millis(self.config.batch_max_delay_ms);
        let mut batch: Vec<Record> = Vec::with_capacity(max_records);
        let mut deadline = Instant::now();
        let mut heartbeat =
            tokio::time::interval(Duration::from_secs_f64(self.config.heartbeat_secs));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut staged = Vec::new();
        let mut stopping = false;

        loop {
            tokio::select! {
                reading = readings.recv() => {
                    let Some(reading) = reading else { break };
                    self.pipeline.process(reading, &mut staged);
                    for r in staged.drain(..) {
                        if batch.is_empty() {
                            deadline = Instant::now() + max_delay;
                        }
                        batch.push(Record {
                            stream: r.stream.to_string(),
                            seq: self.seq.next()?,
                            source_ts_us: r.ts_us,
                            values: r.values,
                            label: r.label,
                        });
                        counters.produced.fetch_add(1, Ordering::Relaxed);
                        if batch.len() >= max_records {
                            self.flush(&client, &records_topic, &mut batch, &counters).await?;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline), if !batch.is_empty() => {
                    self.flush(&client, &records_topic, &mut batch, &counters).await?;
                }
                _ = heartbeat.tick() => {
                    let hb = self.heartbeat(&counters, started);
                    // QoS 0 and non-blocking: a heartbeat is worthless late.
                    let _ = client.try_publish(&heartbeat_topic, QoS::AtMostOnce, false, hb.encode());
                }
                _ = shutdown.wait_for(|s| *s), if !stopping => {
                    // Sources see the same signal and stop; keep draining
                    // until the last of them drops its sender.
                    stopping = true;
                }
            }
        }

        // Every source is done: flush, say goodbye, wait until the broker
        // has acknowledged everything, then disconnect. Closing the socket
        // with PUBACKs still unread would make the kernel reset the
        // connection, and a reset makes the broker discard what it has not
        // read yet: the acks are the proof that it has.
        let goodbye = async {
            self.flush(&client, &records_topic, &mut batch, &counters)
                .await?;
            let hb = self.heartbeat(&counters, started);
            counters.qos1_queued.fetch_add(2, Ordering::Relaxed);
            client
                .publish(&heartbeat_topic, QoS::AtLeastOnce, false, hb.encode())
                .await?;
            client
                .publish(
                    &status_topic,
                    QoS::AtLeastOnce,
                    true,
                    status(&self.device, DeviceState::Offline, true).encode(),
                )
                .await?;
            while counters.unacked() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client.disconnect().await?;
            Ok::<_, UplinkError>(hb)
        };
        let hb = match tokio::time::timeout(SHUTDOWN_GRACE, goodbye).await {
            Ok(result) => Some(result?),
            Err(_) => {
                tracing::warn!(
                    unacknowledged = counters.unacked(),
                    "the broker did not acknowledge everything in time; unacknowledged records are lost"
                );
                None
            }
        };
        // `publish` and `disconnect` only queue requests: the event loop
        // must keep running until it has written the Disconnect, which ends
        // it. Stop it by force only if that does not happen in time.
        let mut loop_task = loop_task;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut loop_task)
            .await
            .is_err()
        {
            let _ = stop_loop_tx.send(true);
            let _ = loop_task.await;
        }
        let heartbeat = hb.unwrap_or_else(|| self.heartbeat(&counters, started));
        let next_seq = self.seq.peek();
        self.seq.close()?;
        Ok(UplinkSummary {
            records_published: counters.published.load(Ordering::Relaxed),
            next_seq,
            heartbeat,
        })
    }

    async fn flush(
        &self,
        client: &AsyncClient,
        topic: &str,
        batch: &mut Vec<Record>,
        counters: &UplinkCounters,
    ) -> Result<(), UplinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(batch);
        let n = records.len() as u64;
        let payload = RecordBatch::new(&self.device, now_us(), records).encode_to_bytes();
        counters.qos1_queued.fetch_add(1, Ordering::Relaxed);
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        counters.published.fetch_add(n, Ordering::Relaxed);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn heartbeat(&self, counters: &UplinkCounters, started: Instant) -> Heartbeat {
        Heartbeat {
            device_id: self.device.to_string(),
            ts_us: now_us(),
            uptime_s: started.elapsed().as_secs_f64(),
            records_produced: counters.produced.load(Ordering::Relaxed),
            records_published: counters.published.load(Ordering::Relaxed),
            batches_published: counters.batches.load(Ordering::Relaxed),
            next_seq: self.seq.peek(),
            connects: counters.connects.load(Ordering::Relaxed),
            rss_bytes: rss_bytes(),
            sources: stats_snapshot(&self.sources),
        }
    }
}

/// Polls the MQTT connection. On every (re)connect it re-announces the
/// device as online: the retained status may have been replaced by the
/// last will while the link was down.
async fn drive_event_loop(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    device: DeviceId,
    status_topic: String,
    counters: Arc<UplinkCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let (host, port) = eventloop.mqtt_options.broker_address();
    let broker = format!("{host}:{port}");
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = stop.wait_for(|s| *s) => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let n = counters.connects.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(%broker, connects = n, "uplink connected");
                let online = status(&device, DeviceState::Online, false).encode();
                match client.try_publish(&status_topic, QoS::AtLeastOnce, true, online) {
                    Ok(()) => {
                        counters.qos1_queued.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!("could not queue the online status: {e}"),
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                counters.qos1_acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Let the broker close the connection first (it does on
                // DISCONNECT), reading whatever it still sends meanwhile.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while eventloop.poll().await.is_ok() {}
                })
                .await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("uplink connection: {e}; reconnecting in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
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
