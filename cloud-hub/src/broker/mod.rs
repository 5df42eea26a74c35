//! The hub's connection to the MQTT broker the devices talk to.
//!
//! Either the hub runs rumqttd itself ([`embedded`], the default) and reads
//! from it through rumqttd's in-process link, with no socket in between, or
//! it connects to an external broker as an ordinary client ([`external`]).
//! Both hand every message on a device topic to ingest as an [`Inbound`]
//! over one bounded channel, so ingest cannot tell them apart.

pub mod embedded;
pub mod external;

use bytes::Bytes;
use conveyor_shared::topics::TopicKind;
use tokio::sync::mpsc;

/// One message from a device topic.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
}

/// Messages buffered between the broker and ingest.
pub const INBOUND_CAPACITY: usize = 4096;

/// The topics the hub consumes, for every device.
pub fn uplink_filters() -> Vec<String> {
    [TopicKind::Records, TopicKind::Status, TopicKind::Heartbeat]
        .into_iter()
        .map(TopicKind::filter_all_devices)
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("embedded broker: {0}")]
    Embedded(String),
}

/// Publishes hub -> device messages (acks, results). Never blocks: a message that
/// cannot be queued is logged and dropped, which the protocol tolerates
/// (an agent re-sends what stays unacknowledged).
#[derive(Clone)]
pub enum Publisher {
    Embedded(std::sync::Arc<std::sync::Mutex<rumqttd::local::LinkTx>>),
    External(rumqttc::AsyncClient),
}

impl Publisher {
    /// Publishes an ack. QoS 0 on an external broker: a lost ack only
    /// costs a re-send, and QoS 1 would make the hub track delivery of
    /// every ack.
    pub fn publish(&self, topic: String, payload: Vec<u8>) {
        self.publish_with(topic, payload, rumqttc::QoS::AtMostOnce)
    }

    /// Publishes final predictions: QoS 1 on an external broker, so
    /// subscribers with a QoS 1 subscription get them at least once.
    pub fn publish_reliable(&self, topic: String, payload: Vec<u8>) {
        self.publish_with(topic, payload, rumqttc::QoS::AtLeastOnce)
    }

    fn publish_with(&self, topic: String, payload: Vec<u8>, qos: rumqttc::QoS) {
        let result = match self {
            Publisher::Embedded(link) => link
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .try_publish(topic, payload)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Publisher::External(client) => client
                .try_publish(topic, qos, false, payload)
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!("could not publish to a device: {e}");
        }
    }
}

/// A running broker connection: where inbound messages arrive, how to
/// reach devices, and how to describe the broker to users.
pub struct BrokerConnection {
    pub inbound: mpsc::Receiver<Inbound>,
    pub publisher: Publisher,
    /// `mqtt://host:port` devices should connect to.
    pub device_url: String,
    /// `embedded` or `external`.
    pub mode: &'static str,
}
