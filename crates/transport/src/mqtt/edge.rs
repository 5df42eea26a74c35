//! The edge link over MQTT.
//!
//! Two tasks share the rumqttc client: the agent's uplink task publishes
//! through [`MqttEdgeLink`], and the *event loop* task spawned here only
//! drives the connection and forwards what matters (connected, a downlink
//! message) over an unbounded channel, so it never waits for the uplink
//! task (which may itself be waiting for the event loop to drain the
//! client's queue). Its size is bounded by the uplink's unacked window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conveyor_shared::control::{DeviceState, Heartbeat};
use conveyor_shared::topics::TopicKind;
use conveyor_shared::{BrokerUrl, RecordBatch, Topic};
use rumqttc::{AsyncClient, ClientError, Event, LastWill, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::edge::{
    downlink_event, BoxFuture, EdgeLink, EdgeLinkOptions, EdgeLinkParts, LinkEvent, PublishError,
};

/// Requests rumqttc queues before `try_publish` reports it full.
const CLIENT_QUEUE: usize = 64;

struct Topics {
    records: String,
    status: String,
    heartbeat: String,
    state: String,
    /// The downlink topics subscribed to, with what each carries.
    downlinks: Vec<(String, TopicKind)>,
}

pub struct MqttEdgeLink {
    client: AsyncClient,
    topics: Arc<Topics>,
    options: EdgeLinkOptions,
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// Starts the link to the broker at `url`: the client, and the event loop
/// on its own task.
pub fn connect(url: &BrokerUrl, options: EdgeLinkOptions) -> EdgeLinkParts {
    let topic = |kind| Topic::new(options.device.clone(), kind).to_string();
    let topics = Arc::new(Topics {
        records: topic(TopicKind::Records),
        status: topic(TopicKind::Status),
        heartbeat: topic(TopicKind::Heartbeat),
        state: topic(TopicKind::State),
        downlinks: options.downlinks.iter().map(|&k| (topic(k), k)).collect(),
    });
    let mut mqtt = super::options(options.device.as_str(), url, options.keep_alive);
    if let Some(p) = &options.password {
        mqtt.set_credentials(options.device.as_str(), p.expose());
    }
    if let Some(tls) = options.tls.as_ref().filter(|_| url.tls) {
        super::use_tls(&mut mqtt, tls);
    }
    mqtt.set_last_will(LastWill::new(
        &topics.status,
        options.status(DeviceState::Offline, false).encode(),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, eventloop) = AsyncClient::new(mqtt, CLIENT_QUEUE);
    let connects = Arc::new(AtomicU64::new(0));
    // Unbounded so that the event loop never waits for the uplink task
    // (which may itself be waiting for the event loop to drain the
    // client's queue). Its size is bounded by the unacked window.
    let (events_tx, events) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(drive_event_loop(
        eventloop,
        client.clone(),
        options.clone(),
        topics.clone(),
        connects.clone(),
        events_tx,
        stop_rx,
    ));
    EdgeLinkParts {
        link: Box::new(MqttEdgeLink {
            client,
            topics,
            options,
            task,
            stop,
        }),
        events,
        connects,
    }
}

fn try_publish(
    client: &AsyncClient,
    topic: &str,
    qos: QoS,
    payload: Vec<u8>,
) -> Result<(), PublishError> {
    try_publish_retained(client, topic, qos, false, payload)
}

fn try_publish_retained(
    client: &AsyncClient,
    topic: &str,
    qos: QoS,
    retain: bool,
    payload: Vec<u8>,
) -> Result<(), PublishError> {
    match client.try_publish(topic, qos, retain, payload) {
        Ok(()) => Ok(()),
        Err(ClientError::TryRequest(_)) => Err(PublishError::Full),
        Err(e) => Err(PublishError::Closed(e.to_string())),
    }
}

impl EdgeLink for MqttEdgeLink {
    fn try_publish_batch(&self, batch: &RecordBatch) -> Result<(), PublishError> {
        // Never wait on the client's queue: when it is full (the broker is
        // slow or away), the batch stays in the log for a later tick.
        try_publish(
            &self.client,
            &self.topics.records,
            QoS::AtLeastOnce,
            batch.encode_to_bytes(),
        )
    }

    fn try_publish_heartbeat(&self, heartbeat: &Heartbeat) -> Result<(), PublishError> {
        // QoS 0 and non-blocking: a heartbeat is worthless late.
        try_publish(
            &self.client,
            &self.topics.heartbeat,
            QoS::AtMostOnce,
            heartbeat.encode(),
        )
    }

    fn try_publish_state(&self, state: &[u8]) -> Result<(), PublishError> {
        try_publish_retained(
            &self.client,
            &self.topics.state,
            QoS::AtLeastOnce,
            true,
            state.to_vec(),
        )
    }

    fn goodbye(self: Box<Self>, heartbeat: Heartbeat, grace: Duration) -> BoxFuture {
        let MqttEdgeLink {
            client,
            topics,
            options,
            mut task,
            stop,
        } = *self;
        Box::pin(async move {
            // A final heartbeat and a clean offline status, then wait for
            // their PUBACKs before DISCONNECT. (Closing the socket with
            // PUBACKs unread resets the connection, and a reset makes the
            // broker discard what it has not read yet.)
            let goodbye = async {
                client
                    .publish(
                        &topics.heartbeat,
                        QoS::AtLeastOnce,
                        false,
                        heartbeat.encode(),
                    )
                    .await?;
                client
                    .publish(
                        &topics.status,
                        QoS::AtLeastOnce,
                        true,
                        options.status(DeviceState::Offline, true).encode(),
                    )
                    .await?;
                client.disconnect().await?;
                Ok::<_, ClientError>(())
            };
            if tokio::time::timeout(grace, goodbye).await.is_err() {
                tracing::warn!("the broker did not take the goodbye in time");
            }
            // The event loop ends by itself once the broker closed the
            // connection after DISCONNECT (see `drive_event_loop`).
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                let _ = stop.send(true);
                let _ = task.await;
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture {
        let MqttEdgeLink { task, stop, .. } = *self;
        Box::pin(async move {
            let _ = stop.send(true);
            let _ = task.await;
        })
    }
}

/// Polls the MQTT connection. On every (re)connect it subscribes to the
/// device's downlink topics and re-announces the device as online (the
/// retained status may have been replaced by the last will while the link
/// was down).
async fn drive_event_loop(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    options: EdgeLinkOptions,
    topics: Arc<Topics>,
    connects: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<LinkEvent>,
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
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                // Its publish is a batch the log re-sends.
                super::clear_stale_collision(&mut eventloop, &ack);
                let n = connects.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(%broker, connects = n, "uplink connected");
                // From another task: the client's queue may be full of
                // batches queued while the broker was away, and only this
                // loop drains it. The subscription must not be dropped.
                let (client, topics) = (client.clone(), topics.clone());
                let online = options.status(DeviceState::Online, false).encode();
                tokio::spawn(async move {
                    for (topic, _) in &topics.downlinks {
                        if let Err(e) = client.subscribe(topic, QoS::AtLeastOnce).await {
                            tracing::warn!("could not subscribe to {topic}: {e}");
                        }
                    }
                    if let Err(e) = client
                        .publish(&topics.status, QoS::AtLeastOnce, true, online)
                        .await
                    {
                        tracing::warn!("could not publish the online status: {e}");
                    }
                });
                let _ = events.send(LinkEvent::Connected {
                    session_resumed: ack.session_present,
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let kind = topics
                    .downlinks
                    .iter()
                    .find(|(t, _)| *t == p.topic)
                    .map(|&(_, k)| k);
                if let Some(event) = kind.and_then(|k| downlink_event(k, &p.payload)) {
                    let _ = events.send(event);
                }
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
                let e = super::describe(&e, options.tls.as_ref());
                tracing::warn!(%broker, "uplink connection: {e}; reconnecting in 1 s");
                let _ = events.send(LinkEvent::Disconnected);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}
