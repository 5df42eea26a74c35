//! The embedded rumqttd broker and the hub's in-process link to it.
//!
//! rumqttd keeps each topic's messages in an in-memory commit log of
//! `max_segment_count` segments; a subscriber that falls further behind
//! than that loses the oldest. Its defaults (100 MB x 10 per topic) are
//! sized for a standalone broker; the hub reads its link continuously, so
//! it keeps a few MB per topic instead (see SEGMENT_*), which bounds memory
//! with thousands of device topics. rumqttd has no disk persistence: the
//! hub's store is the source of truth.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rumqttd::local::LinkTx;
use rumqttd::{Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use tokio::sync::mpsc;

use conveyor_shared::Topic;

use crate::hub::{
    received, HubConnection, HubTransportError as BrokerError, Outbound, Publisher,
    INBOUND_CAPACITY, UPLINK_KINDS,
};

/// Size of one commit-log segment per topic.
const SEGMENT_SIZE: usize = 2 * 1024 * 1024;
/// Segments kept per topic before the oldest is dropped.
const SEGMENT_COUNT: usize = 4;

fn broker_config(listen: SocketAddr, max_connections: usize) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: super::MAX_PACKET_BYTES,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4-devices".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            // +1 for the hub's own link.
            max_connections: max_connections + 1,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_SIZE,
            max_segment_count: SEGMENT_COUNT,
            ..Default::default()
        },
        v4: Some(HashMap::from([("devices".to_string(), server)])),
        ..Default::default()
    }
}

/// The hub's side of rumqttd's in-process link (a local link's publish
/// takes no QoS); `try_publish` never blocks.
struct LinkOutbound(Arc<Mutex<LinkTx>>);

impl Outbound for LinkOutbound {
    fn try_publish(
        &self,
        topic: &Topic,
        payload: Vec<u8>,
        _reliable: bool,
        retain: bool,
    ) -> Result<(), String> {
        let mut link = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !retain {
            return link
                .try_publish(topic.to_string(), payload)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        // A local link's `try_publish` never retains; its `send` takes the
        // packet as built. (`send` is async in name only: its body queues
        // and notifies the router without awaiting, so one poll finishes it.
        // Its notification is a blocking send on the router's channel of
        // 1000 events, which the router drains continuously: it waits only
        // while the router is 1000 events behind, and desired states are
        // published once per deploy, not per message.)
        let publish = rumqttd::protocol::Publish::new(
            bytes::Bytes::from(topic.to_string()),
            bytes::Bytes::from(payload),
            true,
        );
        let send = link.send(rumqttd::protocol::Packet::Publish(publish, None));
        let mut send = std::pin::pin!(send);
        let waker = std::task::Waker::from(Arc::new(NoWake));
        let mut cx = std::task::Context::from_waker(&waker);
        match send.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => r.map(|_| ()).map_err(|e| e.to_string()),
            std::task::Poll::Pending => Err("the embedded broker's queue is busy".into()),
        }
    }
}

/// A waker for a future that finishes on its first poll.
struct NoWake;

impl std::task::Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

/// Starts rumqttd on `listen` and subscribes the hub's link to the uplinks.
pub fn start(listen: SocketAddr, max_connections: usize) -> Result<HubConnection, BrokerError> {
    // rumqttd binds on its own thread and only logs a failure there; probe
    // the address first so a taken port is a clear error at startup.
    std::net::TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;

    let mut broker = Broker::new(broker_config(listen, max_connections));
    let (mut link_tx, mut link_rx) = broker
        .link("conveyor-hub")
        .map_err(|e| BrokerError::Embedded(e.to_string()))?;
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(|e| BrokerError::Embedded(e.to_string()))?;
    for kind in UPLINK_KINDS {
        link_tx
            .subscribe(kind.filter_all_devices())
            .map_err(|e| BrokerError::Embedded(e.to_string()))?;
    }

    let link_tx = Arc::new(Mutex::new(link_tx));
    let publisher = Publisher::new(LinkOutbound(link_tx.clone()));
    let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
    // The link's receive side is blocking; it gets a thread of its own and
    // blocks on the bounded channel when ingest is behind.
    std::thread::Builder::new()
        .name("hub-link".into())
        .spawn(move || {
            let _keep_subscriptions = link_tx;
            loop {
                match link_rx.recv() {
                    Ok(Some(Notification::Forward(f))) => {
                        let topic = String::from_utf8_lossy(&f.publish.topic);
                        let inbound = received(&topic, f.publish.payload);
                        if tx.blocking_send(inbound).is_err() {
                            return; // hub shut down
                        }
                    }
                    // The router pauses a link whose buffer filled up until
                    // the link says it is ready again.
                    Ok(Some(Notification::Unschedule)) => {
                        if link_rx.ready().is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!("embedded broker link closed: {e}");
                        return;
                    }
                }
            }
        })
        .map_err(|e| BrokerError::Embedded(e.to_string()))?;

    Ok(HubConnection {
        inbound: rx,
        publisher,
        device_url: format!("mqtt://{listen}"),
        mode: "embedded",
    })
}
