//! The embedded rumqttd broker and the hub's in-process link to it.
//!
//! Devices reach rumqttd only through the [`super::gate`]: rumqttd
//! listens on loopback ports of its own (3.1.1 and 5), with a secret made
//! at start that only the gate knows.
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

use super::gate::{GateAuth, Inner, Limits};
use crate::hub::{
    received, HubConnection, HubTransportError as BrokerError, Outbound, Publisher,
    INBOUND_CAPACITY, UPLINK_KINDS,
};

/// Size of one commit-log segment per topic.
const SEGMENT_SIZE: usize = 2 * 1024 * 1024;
/// Segments kept per topic before the oldest is dropped.
const SEGMENT_COUNT: usize = 4;

fn broker_config(inner: &Inner, max_connections: usize) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: super::MAX_PACKET_BYTES,
        max_inflight_count: 100,
        auth: Some(HashMap::from([(
            inner.username.clone(),
            inner.password.clone(),
        )])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen| ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: connections.clone(),
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
        v4: Some(HashMap::from([(
            "devices".to_string(),
            server("v4-devices", inner.v4),
        )])),
        v5: Some(HashMap::from([(
            "devices".to_string(),
            server("v5-devices", inner.v5),
        )])),
        ..Default::default()
    }
}

/// A free loopback port (bound and let go: rumqttd binds it itself).
fn free_loopback_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

/// 32 random bytes, hex: the secret the gate gives rumqttd.
fn secret() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS has randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Waits until rumqttd takes connections on `addr` (it binds on its own
/// thread and only logs a failure there).
fn wait_listening(addr: SocketAddr) -> Result<(), BrokerError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
            .is_ok()
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(BrokerError::Embedded(format!(
                "the embedded broker did not start listening on {addr}"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
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

/// Starts rumqttd on loopback, the gate on `listen` in front of it, and
/// subscribes the hub's link to the uplinks.
pub fn start(
    listen: SocketAddr,
    max_connections: usize,
    auth: GateAuth,
    limits: Limits,
    tls: Option<crate::tls::ServerTls>,
) -> Result<HubConnection, BrokerError> {
    let listener = std::net::TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let bound = listener.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let inner_port = |_| {
        free_loopback_port().map_err(|source| BrokerError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })
    };
    let inner = Inner {
        v4: inner_port(4)?,
        v5: inner_port(5)?,
        username: "conveyor-gate".into(),
        password: secret(),
    };

    let mut broker = Broker::new(broker_config(&inner, max_connections));
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
    wait_listening(inner.v4)?;
    wait_listening(inner.v5)?;
    let gate = super::gate::start(
        listener,
        auth,
        limits,
        inner,
        super::MAX_PACKET_BYTES,
        tls.clone(),
    )
    .map_err(|source| BrokerError::Bind {
        addr: bound,
        source,
    })?;

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
        device_url: format!("{}://{bound}", if tls.is_some() { "mqtts" } else { "mqtt" }),
        mode: "embedded",
        gate: Some(gate),
    })
}
