//! The hub's device side over Fluvio.
//!
//! The hub reads the records topic (every partition, or the ones assigned
//! to it) under a consumer id, and produces to the downlink topic. The
//! offsets it commits are the invariant: **an offset is committed only
//! once every batch read up to it is durable in the hub's store.** Ingest
//! acknowledges a batch to its device only after the store's fsync, and
//! those acks pass through this side ([`FluvioOutbound`]), which takes
//! each as "durable up to this seq" for the batches it handed over
//! ([`AckBoard`]). At most once a second, right after a record, a
//! partition's reader waits until everything it handed over is
//! acknowledged and then commits and flushes its offset. A hub that
//! restarts resumes after the last committed offset: nothing durable is
//! read again but the last second's tail, which the store's dedup by
//! `(device, seq)` keeps from being stored twice; nothing is skipped.
//!
//! A batch that is never acknowledged (a refusal ingest does not answer)
//! holds the commit back for [`DRAIN_TIMEOUT`]; then that round is given
//! up, logged, and the reader goes on (re-reading it after a restart is
//! harmless).
//!
//! MQTT's broker keeps retained messages; Fluvio does not. This side keeps
//! the last retained message of each device topic (the desired state) and
//! produces it again when the device announces itself online.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conveyor_shared::control::{Ack, DeviceState, DeviceStatus};
use conveyor_shared::topics::TopicKind;
use conveyor_shared::uplink_url::FluvioUrl;
use conveyor_shared::{DeviceId, RecordBatch, Topic};
use fluvio::consumer::{ConsumerConfigExtBuilder, ConsumerStream, OffsetManagementStrategy};
use fluvio::{Fluvio, Offset};
use futures_util::StreamExt;
use prost::Message;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use super::FluvioTopics;
use crate::hub::{received, HubConnection, Outbound, Publisher, Received, INBOUND_CAPACITY};

/// How often a partition's offset is committed, at most.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How long a commit waits for the batches before it to be durable.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Downlink messages queued before `try_publish` refuses.
const DOWN_QUEUE: usize = 4096;
/// How long the leader may take to take a downlink message.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The hub's Fluvio settings.
#[derive(Debug, Clone)]
pub struct HubFluvio {
    pub url: FluvioUrl,
    pub topics: FluvioTopics,
    /// Whose offsets these are: hubs sharing partitions share one.
    pub consumer_id: String,
    /// Partitions and replicas of topics the hub creates.
    pub partitions: u32,
    pub replication: u32,
    /// The records partitions this hub reads (`None`: all).
    pub assigned: Option<Vec<u32>>,
}

/// Batches handed to ingest and not yet acknowledged, per partition.
#[derive(Default)]
pub struct AckBoard {
    pending: Mutex<HashMap<u32, Vec<(DeviceId, u64)>>>,
    changed: Notify,
}

impl AckBoard {
    /// A batch of `device` up to `last_seq` was handed over from `partition`.
    pub fn expect(&self, partition: u32, device: DeviceId, last_seq: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.entry(partition).or_default().push((device, last_seq));
    }

    /// Ingest acknowledged `device`'s batch up to `last_seq`: it is durable
    /// (or refused for good).
    pub fn acked(&self, device: &DeviceId, last_seq: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for v in p.values_mut() {
            v.retain(|(d, s)| !(d == device && *s <= last_seq));
        }
        drop(p);
        self.changed.notify_waiters();
    }

    pub fn waiting(&self, partition: u32) -> usize {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.get(&partition).map_or(0, Vec::len)
    }

    /// Waits until nothing from `partition` waits, for up to `within`.
    pub async fn drained(&self, partition: u32, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if self.waiting(partition) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Gives up on what `partition` waits for.
    pub fn forget(&self, partition: u32) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.remove(&partition);
    }
}

/// Retained downlink messages, per device: the last of each topic.
type Retained = Arc<Mutex<HashMap<DeviceId, Vec<(String, Vec<u8>)>>>>;

struct FluvioOutbound {
    down: mpsc::Sender<(String, Vec<u8>)>,
    board: Arc<AckBoard>,
    retained: Retained,
}

impl Outbound for FluvioOutbound {
    fn try_publish(
        &self,
        topic: &Topic,
        payload: Vec<u8>,
        _reliable: bool,
        retain: bool,
    ) -> Result<(), String> {
        if topic.kind == TopicKind::Ack {
            if let Ok(ack) = Ack::decode(&payload) {
                self.board.acked(&topic.device, ack.last_seq);
            }
        }
        let key = topic.to_string();
        if retain {
            let mut r = self.retained.lock().unwrap_or_else(|e| e.into_inner());
            let kept = r.entry(topic.device.clone()).or_default();
            kept.retain(|(k, _)| *k != key);
            kept.push((key.clone(), payload.clone()));
        }
        self.down
            .try_send((key, payload))
            .map_err(|e| format!("the Fluvio downlink queue: {e}"))
    }
}

/// Starts the hub's Fluvio side; it connects (and reconnects) by itself,
/// retrying every second while the cluster is away.
pub fn start(config: HubFluvio) -> HubConnection {
    let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
    let (down, down_rx) = mpsc::channel(DOWN_QUEUE);
    let board = Arc::new(AckBoard::default());
    let retained = Retained::default();
    let device_url = config.url.to_string();
    let outbound = FluvioOutbound {
        down: down.clone(),
        board: board.clone(),
        retained: retained.clone(),
    };
    tokio::spawn(run(
        config,
        tx,
        down_rx,
        Shared {
            board,
            retained,
            down,
        },
    ));
    HubConnection {
        inbound: rx,
        publisher: Publisher::new(outbound),
        device_url,
        mode: "fluvio",
        #[cfg(feature = "embedded-broker")]
        gate: None,
    }
}

#[derive(Clone)]
struct Shared {
    board: Arc<AckBoard>,
    retained: Retained,
    down: mpsc::Sender<(String, Vec<u8>)>,
}

async fn run(
    config: HubFluvio,
    tx: mpsc::Sender<Received>,
    mut down: mpsc::Receiver<(String, Vec<u8>)>,
    shared: Shared,
) {
    // An outage is reported once, not once a second; a session that came
    // up resets it.
    let mut reported = false;
    loop {
        match session(&config, &tx, &mut down, &shared, &mut reported).await {
            Ok(()) => return, // ingest is gone: the hub is stopping
            Err(why) => {
                if !reported {
                    tracing::warn!(cluster = %config.url, "Fluvio: {why}; retrying every second");
                }
                reported = true;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One connection: the topics made sure of, a reader per partition, the
/// downlink producer. Ends with the reason it broke.
async fn session(
    config: &HubFluvio,
    tx: &mpsc::Sender<Received>,
    down: &mut mpsc::Receiver<(String, Vec<u8>)>,
    shared: &Shared,
    reported: &mut bool,
) -> Result<(), String> {
    let fluvio = super::connect(&config.url, &config.consumer_id).await?;
    let t = &config.topics;
    let partitions =
        super::ensure_topic(&fluvio, &t.records, config.partitions, config.replication).await?;
    super::ensure_topic(&fluvio, &t.downlink, config.partitions, config.replication).await?;
    let producer = super::producer(&fluvio, &t.downlink, Duration::ZERO, SEND_TIMEOUT).await?;
    let fluvio = Arc::new(fluvio);
    let mut readers = JoinSet::new();
    let assigned: Vec<u32> = match &config.assigned {
        Some(a) => a.clone(),
        None => (0..partitions).collect(),
    };
    for p in assigned {
        if p >= partitions {
            return Err(format!(
                "partition {p} is assigned to this hub, but {:?} has {partitions}",
                t.records
            ));
        }
        readers.spawn(read_partition(
            fluvio.clone(),
            config.clone(),
            p,
            tx.clone(),
            shared.clone(),
        ));
    }
    tracing::info!(cluster = %config.url, topic = %t.records, partitions, "reading the Fluvio records topic");
    *reported = false;
    loop {
        tokio::select! {
            msg = down.recv() => {
                let Some((key, value)) = msg else { return Ok(()) };
                match tokio::time::timeout(SEND_TIMEOUT, producer.send(key, value)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("the downlink: {}", super::describe(&e))),
                    Err(_) => return Err("the downlink producer did not move".into()),
                }
            }
            ended = readers.join_next() => match ended {
                Some(Ok(Ok(()))) | None => return Ok(()),
                Some(Ok(Err(why))) => return Err(why),
                Some(Err(e)) => return Err(format!("a partition reader failed: {e}")),
            },
        }
    }
}

/// Reads one partition of the records topic into ingest, committing its
/// offset as the module's docs say. `Ok` when ingest is gone.
async fn read_partition(
    fluvio: Arc<Fluvio>,
    config: HubFluvio,
    partition: u32,
    tx: mpsc::Sender<Received>,
    shared: Shared,
) -> Result<(), String> {
    let records = &config.topics.records;
    let mut stream = fluvio
        .consumer_with_config(
            ConsumerConfigExtBuilder::default()
                .topic(records.clone())
                .partition(partition)
                // Resumes after the committed offset where there is one.
                .offset_start(Offset::beginning())
                .offset_consumer(config.consumer_id.clone())
                .offset_strategy(OffsetManagementStrategy::Manual)
                .build()
                .map_err(|e| super::describe(&e))?,
        )
        .await
        .map_err(|e| {
            format!(
                "reading {records:?} partition {partition}: {}",
                super::describe(&e)
            )
        })?;
    let board = &shared.board;
    board.forget(partition);
    let mut last_commit = Instant::now();
    while let Some(record) = stream.next().await {
        let record = record
            .map_err(|code| format!("reading {records:?} partition {partition}: {code:?}"))?;
        let key = String::from_utf8_lossy(record.key().unwrap_or_default()).into_owned();
        let message = received(&key, Bytes::copy_from_slice(record.value()));
        if let Ok(m) = &message {
            match m.topic.kind {
                TopicKind::Records => {
                    if let Some(last) = RecordBatch::decode(m.payload.as_ref())
                        .ok()
                        .and_then(|b| b.records.last().map(|r| r.seq))
                    {
                        board.expect(partition, m.topic.device.clone(), last);
                    }
                }
                TopicKind::Status => resend_retained(&shared, &m.topic.device, &m.payload),
                _ => {}
            }
        }
        if tx.send(message).await.is_err() {
            return Ok(());
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            last_commit = Instant::now();
            if board.drained(partition, DRAIN_TIMEOUT).await {
                stream
                    .offset_commit()
                    .await
                    .map_err(|c| format!("committing the offset: {c:?}"))?;
                stream
                    .offset_flush()
                    .await
                    .map_err(|c| format!("flushing the offset: {c:?}"))?;
            } else {
                tracing::warn!(
                    partition,
                    waiting = board.waiting(partition),
                    "Fluvio: batches not acknowledged in {} s; the offset is not committed this round",
                    DRAIN_TIMEOUT.as_secs()
                );
                board.forget(partition);
            }
        }
    }
    Err(format!(
        "the stream of {records:?} partition {partition} ended"
    ))
}

/// A device announced itself online: its retained messages go out again
/// (MQTT's broker would hand them to its new subscription).
fn resend_retained(shared: &Shared, device: &DeviceId, status: &[u8]) {
    let online = DeviceStatus::decode(status).is_ok_and(|s| s.state == DeviceState::Online);
    if !online {
        return;
    }
    let kept = {
        let r = shared.retained.lock().unwrap_or_else(|e| e.into_inner());
        r.get(device).cloned().unwrap_or_default()
    };
    for m in kept {
        if shared.down.try_send(m).is_err() {
            tracing::warn!(%device, "Fluvio: the downlink queue is full; a retained message was not re-sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[tokio::test]
    async fn a_partition_is_drained_when_its_batches_are_acked() {
        let board = Arc::new(AckBoard::default());
        board.expect(0, dev("a"), 9);
        board.expect(0, dev("b"), 4);
        board.expect(1, dev("a"), 19);
        assert_eq!(board.waiting(0), 2);
        // Nothing acked: the wait gives up.
        assert!(!board.drained(0, Duration::from_millis(10)).await);
        let b = board.clone();
        let waiter = tokio::spawn(async move { b.drained(0, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        board.acked(&dev("a"), 9);
        board.acked(&dev("b"), 3); // not far enough
        tokio::task::yield_now().await;
        assert_eq!(board.waiting(0), 1);
        board.acked(&dev("b"), 4);
        assert!(waiter.await.unwrap());
        // An ack covers a device's batches up to its seq, in any partition.
        assert_eq!(board.waiting(1), 1);
        board.acked(&dev("a"), 30);
        assert_eq!(board.waiting(1), 0);
        board.expect(2, dev("c"), 1);
        board.forget(2);
        assert_eq!(board.waiting(2), 0);
    }

    #[test]
    fn acks_free_the_board_and_retained_messages_are_kept_per_topic() {
        let (down, mut rx) = mpsc::channel(8);
        let board = Arc::new(AckBoard::default());
        let retained = Retained::default();
        let out = FluvioOutbound {
            down: down.clone(),
            board: board.clone(),
            retained: retained.clone(),
        };
        let d = dev("w1");
        board.expect(0, d.clone(), 7);
        let ack = Ack {
            first_seq: 0,
            last_seq: 7,
            rejected: None,
        };
        out.try_publish(
            &Topic::new(d.clone(), TopicKind::Ack),
            ack.encode(),
            false,
            false,
        )
        .unwrap();
        assert_eq!(board.waiting(0), 0);
        let desired = Topic::new(d.clone(), TopicKind::Desired);
        out.try_publish(&desired, b"v1".to_vec(), true, true)
            .unwrap();
        out.try_publish(&desired, b"v2".to_vec(), true, true)
            .unwrap();
        let shared = Shared {
            board,
            retained,
            down,
        };
        let status = |state| {
            DeviceStatus {
                device_id: "w1".into(),
                state,
                agent_version: "t".into(),
                ts_us: 0,
                clean: false,
            }
            .encode()
        };
        for _ in 0..3 {
            rx.try_recv().unwrap();
        }
        resend_retained(&shared, &d, &status(DeviceState::Offline));
        assert!(rx.try_recv().is_err());
        resend_retained(&shared, &d, &status(DeviceState::Online));
        assert_eq!(
            rx.try_recv().unwrap(),
            (desired.to_string(), b"v2".to_vec())
        );
        assert!(rx.try_recv().is_err());
        resend_retained(&shared, &d, b"\xff");
        assert!(rx.try_recv().is_err());
    }
}
