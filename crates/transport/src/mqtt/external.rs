//! The hub as a client of an external broker (mosquitto, EMQX, ...).
//!
//! The hub subscribes with QoS 1 on a persistent session (`clean_session =
//! false`, a stable client id), so the broker queues uplinks while the hub
//! restarts. Connection errors are retried every second, forever: the hub
//! keeps serving its API with what it has while the broker is away.

use std::time::Duration;

use conveyor_shared::{BrokerUrl, Topic};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::mpsc;

use crate::hub::{received, HubConnection, Outbound, Publisher, INBOUND_CAPACITY, UPLINK_KINDS};

/// Keep-alive of the hub's client.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

struct ClientOutbound(AsyncClient);

impl Outbound for ClientOutbound {
    fn try_publish(
        &self,
        topic: &Topic,
        payload: Vec<u8>,
        reliable: bool,
        retain: bool,
    ) -> Result<(), String> {
        // Acks at QoS 0: a lost ack only costs a re-send. Results at QoS 1.
        let qos = if reliable {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        self.0
            .try_publish(topic.to_string(), qos, retain, payload)
            .map_err(|e| e.to_string())
    }
}

pub fn start(
    url: &BrokerUrl,
    client_id: &str,
    login: Option<&(String, crate::edge::Password)>,
    tls: Option<&crate::tls::ClientTls>,
) -> HubConnection {
    let mut options = super::options(client_id, url, KEEP_ALIVE);
    let tls = tls.filter(|_| url.tls);
    if let Some(tls) = tls {
        super::use_tls(&mut options, tls);
    }
    let tls = tls.cloned();
    options.set_clean_session(false);
    if let Some((user, password)) = login {
        options.set_credentials(user, password.expose());
    }
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
    let shown = url.to_string();
    let publisher = Publisher::new(ClientOutbound(client.clone()));
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    // As on the edge: a pkid collision left from the lost
                    // session would stall this client forever (its publish
                    // is an ack; the agent's timeout makes up for it).
                    super::clear_stale_collision(&mut eventloop, &ack);
                    tracing::info!(broker = %shown, session_present = ack.session_present, "connected to external broker");
                    // From another task: the client's queue may be full of
                    // acks queued while the broker was away, and only this
                    // loop drains it; awaiting here would deadlock.
                    let client = client.clone();
                    tokio::spawn(async move {
                        for kind in UPLINK_KINDS {
                            let filter = kind.filter_all_devices();
                            if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce).await {
                                tracing::error!("subscribe failed: {e}");
                            }
                        }
                    });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // Bounded, and awaited: ingest's back-pressure reaches
                    // the broker. Publishing never waits on this loop
                    // (`try_publish`), so this cannot deadlock.
                    if tx.send(received(&p.topic, p.payload)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let e = super::describe(&e, tls.as_ref());
                    tracing::warn!(broker = %shown, "external broker connection: {e}; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    HubConnection {
        inbound: rx,
        publisher,
        device_url: url.to_string(),
        mode: "external",
        #[cfg(feature = "embedded-broker")]
        gate: None,
    }
}
