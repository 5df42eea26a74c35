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

        // Every source is done: flush, say goodbye, disconnect.
        let goodbye = async {
            self.flush(&client, &records_topic, &mut batch, &counters)
                .await?;
            let hb = self.heartbeat(&counters, started);
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
            client.disconnect().await?;
            Ok::<_, UplinkError>(hb)
        };
        let hb = match tokio::time::timeout(SHUTDOWN_GRACE, goodbye).await {
            Ok(result) => Some(result?),
            Err(_) => {
                tracing::warn!(
                    unsent = batch.len(),
                    "hub unreachable at shutdown; records not yet taken by the broker are lost"
                );
                None
            }
        };
        let _ = stop_loop_tx.send(true);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, loop_task).await;
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
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = stop.wait_for(|s| *s) => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let n = counters.connects.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(broker = %format!("{}:{}", eventloop.mqtt_options.broker_address().0, eventloop.mqtt_options.broker_address().1), connects = n, "uplink connected");
                let online = status(&device, DeviceState::Online, false).encode();
                if let Err(e) = client.try_publish(&status_topic, QoS::AtLeastOnce, true, online) {
                    tracing::warn!("could not queue the online status: {e}");
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
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
