//! An external broker (mosquitto, EMQX, ...), reached as an MQTT client.
//!
//! The hub subscribes with QoS 1 on a persistent session (`clean_session =
//! false`, a stable client id), so the broker queues uplinks while the hub
//! restarts. Connection errors are retried every second, forever: the hub
//! keeps serving its API with what it has while the broker is away.

use std::time::Duration;

use conveyor_shared::records::MAX_BATCH_BYTES;
use conveyor_shared::BrokerUrl;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use super::{uplink_filters, BrokerConnection, Inbound, INBOUND_CAPACITY};

pub fn start(url: &BrokerUrl, client_id: &str) -> BrokerConnection {
    let mut options = MqttOptions::new(client_id, url.host.clone(), url.port);
    options.set_keep_alive(Duration::from_secs(10));
    options.set_clean_session(false);
    options.set_max_packet_size(MAX_BATCH_BYTES + 4096, MAX_BATCH_BYTES + 4096);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
    let shown = url.to_string();
    let publisher = super::Publisher::External(client.clone());
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !ack.session_present {
                        // See the agent's uplink: a pkid collision left from
                        // the lost session would stall this client forever.
                        eventloop.state.collision = None;
                    }
                    tracing::info!(broker = %shown, session_present = ack.session_present, "connected to external broker");
                    // From another task: the client's queue may be full of
                    // acks queued while the broker was away, and only this
                    // loop drains it; awaiting here would deadlock.
                    let client = client.clone();
                    tokio::spawn(async move {
                        for filter in uplink_filters() {
                            if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce).await {
                                tracing::error!("subscribe failed: {e}");
                            }
                        }
                    });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let inbound = Inbound {
                        topic: p.topic,
                        payload: p.payload,
                    };
                    if tx.send(inbound).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(broker = %shown, "external broker connection: {e}; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    BrokerConnection {
        inbound: rx,
        publisher,
        device_url: url.to_string(),
        mode: "external",
    }
}
