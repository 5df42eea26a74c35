//! What the hub's device side is, whatever carries it.
//!
//! Every message on a device topic is handed to ingest over one bounded
//! channel ([`INBOUND_CAPACITY`]): a slow ingest slows the transport, and
//! through it the devices. A topic is parsed here, once: ingest gets the
//! device id and the kind, or the [`TopicError`] of a topic that does not
//! parse (it counts and refuses those), never a raw string.

use std::sync::Arc;

use bytes::Bytes;
use conveyor_shared::control::Ack;
use conveyor_shared::topics::{TopicError, TopicKind};
use conveyor_shared::{DeviceId, ResultBatch, Topic};
use prost::Message;
use tokio::sync::mpsc;

/// One message from a device topic.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The device and what the topic carries.
    pub topic: Topic,
    pub payload: Bytes,
}

/// What the device side hands to ingest: a message, or the reason its
/// topic is not a Conveyor device topic.
pub type Received = Result<Inbound, TopicError>;

/// Parses a raw topic into [`Received`].
pub fn received(topic: &str, payload: Bytes) -> Received {
    Topic::parse(topic).map(|topic| Inbound { topic, payload })
}

/// Messages buffered between the device side and ingest.
pub const INBOUND_CAPACITY: usize = 4096;

/// The topics the hub consumes, for every device.
pub const UPLINK_KINDS: [TopicKind; 4] = [
    TopicKind::Records,
    TopicKind::Status,
    TopicKind::Heartbeat,
    TopicKind::State,
];

/// How a device side sends to one device. Never blocks.
pub trait Outbound: Send + Sync {
    /// Queues `payload` for `topic`; `reliable` asks for at-least-once
    /// delivery to subscribers where the transport distinguishes, `retain`
    /// for the broker to keep it for later subscribers.
    fn try_publish(
        &self,
        topic: &Topic,
        payload: Vec<u8>,
        reliable: bool,
        retain: bool,
    ) -> Result<(), String>;
}

/// Publishes hub -> device messages (acks, results). Never blocks: a
/// message that cannot be queued is logged and dropped, which the protocol
/// tolerates (an agent re-sends what stays unacknowledged).
#[derive(Clone)]
pub struct Publisher(Arc<dyn Outbound>);

impl Publisher {
    pub fn new(outbound: impl Outbound + 'static) -> Self {
        Publisher(Arc::new(outbound))
    }

    /// Publishes an ack. Best effort (QoS 0 on an external broker): a lost
    /// ack only costs a re-send, and QoS 1 would make the hub track
    /// delivery of every ack.
    pub fn ack(&self, device: &DeviceId, ack: &Ack) {
        self.send(device, TopicKind::Ack, ack.encode(), false)
    }

    /// Publishes final predictions: QoS 1 on an external broker, so
    /// subscribers with a QoS 1 subscription get them at least once.
    pub fn results(&self, device: &DeviceId, batch: &ResultBatch) {
        self.send(device, TopicKind::Results, batch.encode_to_vec(), true)
    }

    /// Publishes a signed desired state, reliable and retained: an agent
    /// that is offline now gets it when it next connects.
    pub fn desired(&self, device: &DeviceId, envelope: Vec<u8>) -> Result<(), String> {
        let topic = Topic::new(device.clone(), TopicKind::Desired);
        self.0.try_publish(&topic, envelope, true, true)
    }

    fn send(&self, device: &DeviceId, kind: TopicKind, payload: Vec<u8>, reliable: bool) {
        let topic = Topic::new(device.clone(), kind);
        if let Err(e) = self.0.try_publish(&topic, payload, reliable, false) {
            tracing::warn!("could not publish to a device: {e}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubTransportError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("embedded broker: {0}")]
    Embedded(String),
}

/// A running device side: where inbound messages arrive, how to reach
/// devices, and how to describe it to users.
pub struct HubConnection {
    pub inbound: mpsc::Receiver<Received>,
    pub publisher: Publisher,
    /// The URL devices connect to (`mqtt://host:port`).
    pub device_url: String,
    /// `embedded` or `external`.
    pub mode: &'static str,
    /// The embedded broker's gate (its counters; cutting a device off).
    #[cfg(feature = "embedded-broker")]
    pub gate: Option<crate::mqtt::gate::GateHandle>,
}

/// Sends each device's messages the way it was last heard from; a device
/// not heard from yet (a desired state published at start) gets them on
/// every side.
struct Routed {
    sides: Vec<Publisher>,
    heard: Arc<std::sync::Mutex<std::collections::HashMap<DeviceId, usize>>>,
}

impl Outbound for Routed {
    fn try_publish(
        &self,
        topic: &Topic,
        payload: Vec<u8>,
        reliable: bool,
        retain: bool,
    ) -> Result<(), String> {
        let side = {
            let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            heard.get(&topic.device).copied()
        };
        match side.and_then(|i| self.sides.get(i)) {
            Some(p) => p.0.try_publish(topic, payload, reliable, retain),
            None => {
                let mut result = Err("no transport".to_string());
                for p in &self.sides {
                    let r = p.0.try_publish(topic, payload.clone(), reliable, retain);
                    if result.is_err() {
                        result = r;
                    }
                }
                result
            }
        }
    }
}

/// One device side made of several (a mixed fleet: MQTT and Fluvio): their
/// inbound messages merged into one channel, and each device answered on
/// the transport it last spoke on. The first side's URL and gate describe
/// the whole.
pub fn merge(sides: Vec<HubConnection>) -> HubConnection {
    let heard = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
    let mut publishers = Vec::new();
    let mut first: Option<(String, &'static str)> = None;
    #[cfg(feature = "embedded-broker")]
    let mut gate = None;
    for (i, side) in sides.into_iter().enumerate() {
        publishers.push(side.publisher);
        first.get_or_insert((side.device_url, side.mode));
        #[cfg(feature = "embedded-broker")]
        if gate.is_none() {
            gate = side.gate;
        }
        let (tx, heard) = (tx.clone(), heard.clone());
        let mut inbound = side.inbound;
        tokio::spawn(async move {
            while let Some(m) = inbound.recv().await {
                if let Ok(m) = &m {
                    let mut h = heard.lock().unwrap_or_else(|e| e.into_inner());
                    if h.get(&m.topic.device) != Some(&i) {
                        h.insert(m.topic.device.clone(), i);
                    }
                }
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
    let (device_url, mode) = first.unwrap_or_default();
    HubConnection {
        inbound: rx,
        publisher: Publisher::new(Routed {
            sides: publishers,
            heard,
        }),
        device_url,
        mode,
        #[cfg(feature = "embedded-broker")]
        gate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn topics_are_parsed_once_and_bad_ones_are_errors() {
        let ok = received("conveyor/v1/d1/up/records", Bytes::from_static(b"x")).unwrap();
        assert_eq!(ok.topic.device.as_str(), "d1");
        assert_eq!(ok.topic.kind, TopicKind::Records);
        assert!(matches!(
            received("conveyor/v1/a b/status", Bytes::new()),
            Err(TopicError::BadDevice { .. })
        ));
        assert!(matches!(
            received("elsewhere/d1/status", Bytes::new()),
            Err(TopicError::NotConveyor(_))
        ));
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, bool)>>);

    impl Outbound for Arc<Recorder> {
        fn try_publish(
            &self,
            topic: &Topic,
            _: Vec<u8>,
            reliable: bool,
            _retain: bool,
        ) -> Result<(), String> {
            self.0.lock().unwrap().push((topic.to_string(), reliable));
            Err("full".into())
        }
    }

    #[test]
    fn acks_are_best_effort_and_results_reliable_on_the_devices_topics() {
        let rec = Arc::new(Recorder::default());
        let publisher = Publisher::new(rec.clone());
        let device = DeviceId::new("d1").unwrap();
        // A failure to queue is logged, never returned or waited on.
        publisher.ack(
            &device,
            &Ack {
                first_seq: 1,
                last_seq: 2,
                rejected: None,
            },
        );
        publisher.results(&device, &ResultBatch::new("d1", vec![]));
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                ("conveyor/v1/d1/down/ack".to_string(), false),
                ("conveyor/v1/d1/down/results".to_string(), true),
            ]
        );
    }
}
