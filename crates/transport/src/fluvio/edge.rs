//! The edge link over Fluvio.
//!
//! One task owns the connection: it produces what the uplink queues
//! (records batches, status, heartbeats, state: keyed by their topic, to
//! the device's partition of the records topic) and reads the device's
//! partition of the downlink topic, keeping only its own messages.
//!
//! Fluvio's client retries a lost SPU forever without a word, so the link
//! watches for itself: every produced record must be acknowledged by the
//! partition's leader within [`ACK_TIMEOUT`], or the connection is taken
//! for dead ([`LinkEvent::Disconnected`]), dropped and made again. What was
//! queued but not acknowledged is not lost: the agent's log re-sends every
//! batch the hub has not acknowledged end to end. At most [`IN_FLIGHT`]
//! records wait for their acknowledgement; past that, and with the queue
//! ([`QUEUE`]) full, `try_publish_*` says [`PublishError::Full`].
//!
//! Each connect reads the downlink from its end: acks and results from
//! before are stale (the uplink re-sends what is unacknowledged), and the
//! hub re-sends the desired state when the device announces itself online.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conveyor_shared::control::{DeviceState, Heartbeat};
use conveyor_shared::topics::TopicKind;
use conveyor_shared::uplink_url::FluvioUrl;
use conveyor_shared::{RecordBatch, Topic};
use fluvio::consumer::ConsumerConfigExtBuilder;
use fluvio::Offset;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::FluvioTopics;
use crate::edge::{
    downlink_event, BoxFuture, EdgeLink, EdgeLinkOptions, EdgeLinkParts, LinkEvent, PublishError,
};

/// Messages queued for the link's task before `try_publish_*` is Full.
const QUEUE: usize = 64;
/// Produced records waiting for the leader's acknowledgement at once.
const IN_FLIGHT: usize = 64;
/// How long the leader may take to acknowledge a record.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Between connection attempts.
const RETRY: Duration = Duration::from_secs(1);

enum Request {
    Publish {
        key: String,
        value: Vec<u8>,
    },
    /// Answered once everything queued before it is acknowledged.
    Flush(oneshot::Sender<()>),
}

pub struct FluvioEdgeLink {
    requests: mpsc::Sender<Request>,
    options: EdgeLinkOptions,
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

fn key(options: &EdgeLinkOptions, kind: TopicKind) -> String {
    Topic::new(options.device.clone(), kind).to_string()
}

/// Starts the link to the cluster at `url`, on its own task.
pub fn connect(url: &FluvioUrl, topics: &FluvioTopics, options: EdgeLinkOptions) -> EdgeLinkParts {
    let (requests, rx) = mpsc::channel(QUEUE);
    let (events_tx, events) = mpsc::unbounded_channel();
    let connects = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(drive(
        url.clone(),
        topics.clone(),
        options.clone(),
        (rx, stop_rx),
        events_tx,
        connects.clone(),
    ));
    EdgeLinkParts {
        link: Box::new(FluvioEdgeLink {
            requests,
            options,
            task,
            stop,
        }),
        events,
        connects,
    }
}

impl FluvioEdgeLink {
    fn queue(&self, kind: TopicKind, value: Vec<u8>) -> Result<(), PublishError> {
        let key = key(&self.options, kind);
        self.requests
            .try_send(Request::Publish { key, value })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => PublishError::Full,
                mpsc::error::TrySendError::Closed(_) => {
                    PublishError::Closed("the Fluvio link's task ended".into())
                }
            })
    }
}

impl EdgeLink for FluvioEdgeLink {
    fn try_publish_batch(&self, batch: &RecordBatch) -> Result<(), PublishError> {
        self.queue(TopicKind::Records, batch.encode_to_vec())
    }

    fn try_publish_heartbeat(&self, heartbeat: &Heartbeat) -> Result<(), PublishError> {
        self.queue(TopicKind::Heartbeat, heartbeat.encode())
    }

    fn try_publish_state(&self, state: &[u8]) -> Result<(), PublishError> {
        self.queue(TopicKind::State, state.to_vec())
    }

    fn goodbye(self: Box<Self>, heartbeat: Heartbeat, grace: Duration) -> BoxFuture {
        let FluvioEdgeLink {
            requests,
            options,
            task,
            stop,
        } = *self;
        Box::pin(async move {
            let offline = options.status(DeviceState::Offline, true).encode();
            let _ = tokio::time::timeout(grace, async {
                for (kind, value) in [
                    (TopicKind::Heartbeat, heartbeat.encode()),
                    (TopicKind::Status, offline),
                ] {
                    let key = key(&options, kind);
                    if requests
                        .send(Request::Publish { key, value })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let (tx, rx) = oneshot::channel();
                if requests.send(Request::Flush(tx)).await.is_ok() {
                    let _ = rx.await;
                }
            })
            .await;
            let _ = stop.send(true);
            let _ = tokio::time::timeout(grace, task).await;
        })
    }

    fn close(self: Box<Self>) -> BoxFuture {
        let FluvioEdgeLink { task, stop, .. } = *self;
        Box::pin(async move {
            let _ = stop.send(true);
            let _ = task.await;
        })
    }
}

/// How a connection ended.
enum Ended {
    /// The uplink asked (or went away).
    Stop,
    Broken(String),
}

type Inputs = (mpsc::Receiver<Request>, watch::Receiver<bool>);

/// Once the link is told to stop (holding no borrow of the flag).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Connects, serves, and connects again, until stopped.
async fn drive(
    url: FluvioUrl,
    topics: FluvioTopics,
    options: EdgeLinkOptions,
    mut inputs: Inputs,
    events: mpsc::UnboundedSender<LinkEvent>,
    connects: Arc<AtomicU64>,
) {
    // An outage is reported once, not once a second.
    let mut reported = false;
    loop {
        let (ended, was_up) = serve(&url, &topics, &options, &mut inputs, &events, &connects).await;
        let Ended::Broken(why) = ended else { return };
        if was_up {
            let _ = events.send(LinkEvent::Disconnected);
            reported = false;
        }
        if !reported {
            tracing::warn!(cluster = %url, "uplink connection: {why}; retrying every {} s", RETRY.as_secs());
            reported = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stopped(&mut inputs.1) => return,
        }
    }
}

/// One connection: open it, announce the device, then produce and read
/// until it breaks or the uplink stops.
async fn serve(
    url: &FluvioUrl,
    topics: &FluvioTopics,
    options: &EdgeLinkOptions,
    (requests, stop): &mut Inputs,
    events: &mpsc::UnboundedSender<LinkEvent>,
    connects: &AtomicU64,
) -> (Ended, bool) {
    let device = options.device.as_str();
    let fluvio = match super::connect(url, device).await {
        Ok(f) => f,
        Err(e) => return (Ended::Broken(e), false),
    };
    let opened = async {
        let partitions = super::partitions(&fluvio, &topics.downlink).await?;
        let producer =
            super::producer(&fluvio, &topics.records, Duration::ZERO, ACK_TIMEOUT).await?;
        let consumer = fluvio
            .consumer_with_config(
                ConsumerConfigExtBuilder::default()
                    .topic(topics.downlink.clone())
                    .partition(super::partition_of(device, partitions))
                    .offset_start(Offset::end())
                    .build()
                    .map_err(|e| super::describe(&e))?,
            )
            .await
            .map_err(|e| super::describe(&e))?;
        Ok::<_, String>((producer, consumer))
    };
    let (producer, mut downlink) = match tokio::time::timeout(super::CONNECT_TIMEOUT, opened).await
    {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return (Ended::Broken(e), false),
        Err(_) => {
            let why = "the cluster did not open the topics in time".to_string();
            return (Ended::Broken(why), false);
        }
    };
    let n = connects.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::info!(cluster = %url, connects = n, "uplink connected (Fluvio)");
    let _ = events.send(LinkEvent::Connected {
        session_resumed: false,
    });
    let own: Vec<(String, TopicKind)> = options
        .downlinks
        .iter()
        .map(|&k| (key(options, k), k))
        .collect();

    let lost = |why: String| (Ended::Broken(why), true);
    let mut in_flight = FuturesUnordered::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut pending: Vec<(String, Vec<u8>)> = vec![(
        key(options, TopicKind::Status),
        options.status(DeviceState::Online, false).encode(),
    )];
    loop {
        // Produce what is waiting (the online status first), as far as
        // the in-flight limit allows.
        while in_flight.len() < IN_FLIGHT && !pending.is_empty() {
            let (key, value) = pending.remove(0);
            let sent = tokio::time::timeout(ACK_TIMEOUT, producer.send(key, value)).await;
            let out = match sent {
                Ok(Ok(out)) => out,
                Ok(Err(e)) => return lost(super::describe(&e)),
                Err(_) => return lost("the producer's queue did not move".into()),
            };
            in_flight.push(async move {
                match tokio::time::timeout(ACK_TIMEOUT, out.wait()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "no acknowledgement from the partition's leader in {} s",
                        ACK_TIMEOUT.as_secs()
                    )),
                }
            });
        }
        if in_flight.is_empty() && pending.is_empty() {
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
        }
        tokio::select! {
            _ = stopped(stop) => {
                let _ = tokio::time::timeout(ACK_TIMEOUT, producer.flush()).await;
                return (Ended::Stop, true);
            }
            r = requests.recv(), if pending.is_empty() => match r {
                None => {
                    let _ = tokio::time::timeout(ACK_TIMEOUT, producer.flush()).await;
                    return (Ended::Stop, true);
                }
                Some(Request::Publish { key, value }) => pending.push((key, value)),
                Some(Request::Flush(tx)) => {
                    match tokio::time::timeout(ACK_TIMEOUT, producer.flush()).await {
                        Ok(Ok(())) => flushes.push(tx),
                        Ok(Err(e)) => return lost(super::describe(&e)),
                        Err(_) => return lost("a flush did not end".into()),
                    }
                }
            },
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(e) = done {
                    return lost(e);
                }
            }
            record = downlink.next() => match record {
                Some(Ok(r)) => {
                    let key = r.key().and_then(|k| std::str::from_utf8(k).ok());
                    let kind = key.and_then(|k| own.iter().find(|(t, _)| t == k)).map(|&(_, k)| k);
                    if let Some(event) = kind.and_then(|k| downlink_event(k, &Bytes::copy_from_slice(r.value()))) {
                        let _ = events.send(event);
                    }
                }
                Some(Err(code)) => return lost(format!("the downlink: {code:?}")),
                None => return lost("the downlink stream ended".into()),
            },
        }
    }
}
