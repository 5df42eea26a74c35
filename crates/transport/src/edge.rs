//! What an edge link is, whatever carries it.
//!
//! The agent's uplink owns all state (the log, the send window); a link
//! only moves messages. Its contract:
//! - It never waits on the code it feeds: events go through an unbounded
//!   channel (bounded in practice by the uplink's unacked window), and
//!   [`EdgeLink::try_publish_batch`] never waits either: a full queue is
//!   [`PublishError::Full`], and the batch stays in the log for a later try.
//! - It (re)connects by itself and says so ([`LinkEvent::Connected`], with
//!   whether the broker resumed the session); on every connect it
//!   re-announces the device as online.
//! - Its downlink messages arrive decoded into `shared` values; a malformed
//!   one is logged and dropped (the protocol tolerates a lost ack).
//! - [`EdgeLink::goodbye`] sends the final heartbeat and the clean offline
//!   status and returns only once the transport has confirmed them (or the
//!   grace period ended), so closing loses nothing already sent.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use conveyor_shared::control::{Ack, DeviceState, DeviceStatus, Heartbeat};
use conveyor_shared::time::now_us;
use conveyor_shared::topics::TopicKind;
use conveyor_shared::{DeviceId, RecordBatch, ResultBatch};
use tokio::sync::mpsc;

/// What the link tells the uplink.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// Connected (again). `session_resumed`: the broker kept the session
    /// (subscriptions, queued messages) from before.
    Connected { session_resumed: bool },
    /// The connection broke; the link retries by itself.
    Disconnected,
    /// The hub's end-to-end acknowledgement (or refusal) of a batch.
    Ack(Ack),
    /// Final predictions for this device.
    Results(ResultBatch),
    /// A desired state, as the hub signed it: the agent verifies it (only
    /// it knows the keys it trusts and the generation it applied).
    Desired(Bytes),
}

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The link's queue is full (the broker is slow or away): try later.
    #[error("the link's queue is full")]
    Full,
    /// The link is gone for good.
    #[error("the link is closed: {0}")]
    Closed(String),
}

/// What an edge link needs to know.
#[derive(Debug, Clone)]
pub struct EdgeLinkOptions {
    pub device: DeviceId,
    /// Reported in the device's status.
    pub agent_version: String,
    pub keep_alive: Duration,
    /// Downlink topics to receive (the uplink asks for [`TopicKind::Ack`]).
    pub downlinks: Vec<TopicKind>,
    /// The device's secret, presented at connect with its id as the
    /// username.
    pub password: Option<Password>,
    /// The CA the hub's certificate is checked against (`mqtts://`).
    pub tls: Option<crate::tls::ClientTls>,
}

/// A secret that never shows in a log line or a `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(secret: String) -> Password {
        Password(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl EdgeLinkOptions {
    /// The device's status message.
    pub fn status(&self, state: DeviceState, clean: bool) -> DeviceStatus {
        DeviceStatus {
            device_id: self.device.to_string(),
            state,
            agent_version: self.agent_version.clone(),
            ts_us: now_us(),
            clean,
        }
    }
}

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The sending half of an edge link.
pub trait EdgeLink: Send + Sync {
    /// Queues a record batch for reliable delivery (MQTT: QoS 1) without
    /// waiting.
    fn try_publish_batch(&self, batch: &RecordBatch) -> Result<(), PublishError>;

    /// Queues a heartbeat, best effort (MQTT: QoS 0) and without waiting: a
    /// heartbeat is worthless late.
    fn try_publish_heartbeat(&self, heartbeat: &Heartbeat) -> Result<(), PublishError>;

    /// Queues the agent's state report (an encoded `ota::AgentState`),
    /// reliably and retained (MQTT: QoS 1, retain), without waiting: the
    /// latest one is what the hub and late subscribers see.
    fn try_publish_state(&self, state: &[u8]) -> Result<(), PublishError>;

    /// The goodbye of a connected link: `heartbeat` and a retained clean
    /// `offline` status, reliably, then the transport's orderly close,
    /// waiting up to `grace` for each step. Events sent meanwhile are
    /// dropped if nobody listens any more.
    fn goodbye(self: Box<Self>, heartbeat: Heartbeat, grace: Duration) -> BoxFuture;

    /// Closes without a goodbye (the link is down).
    fn close(self: Box<Self>) -> BoxFuture;
}

/// A started link: the sending half and its events.
pub struct EdgeLinkParts {
    pub link: Box<dyn EdgeLink>,
    pub events: mpsc::UnboundedReceiver<LinkEvent>,
    /// Connections made so far (heartbeats report it).
    pub connects: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Decodes a downlink message into its event; `None` (logged) when it is
/// malformed.
pub(crate) fn downlink_event(kind: TopicKind, payload: &Bytes) -> Option<LinkEvent> {
    match kind {
        TopicKind::Ack => match Ack::decode(payload) {
            Ok(ack) => Some(LinkEvent::Ack(ack)),
            Err(e) => {
                tracing::warn!("ignoring a malformed ack: {e}");
                None
            }
        },
        TopicKind::Results => match ResultBatch::decode_checked(payload) {
            Ok(results) => Some(LinkEvent::Results(results)),
            Err(e) => {
                tracing::warn!("ignoring malformed results: {e}");
                None
            }
        },
        TopicKind::Desired => Some(LinkEvent::Desired(payload.clone())),
        // Uplink topics are the agent's own; it does not subscribe to them.
        TopicKind::Records | TopicKind::Status | TopicKind::Heartbeat | TopicKind::State => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downlinks_are_decoded_and_malformed_ones_dropped() {
        let ack = Ack {
            first_seq: 3,
            last_seq: 9,
            rejected: None,
        };
        let ok = downlink_event(TopicKind::Ack, &Bytes::from(ack.encode()));
        assert!(matches!(ok, Some(LinkEvent::Ack(a)) if a == ack));
        assert!(downlink_event(TopicKind::Ack, &Bytes::from_static(b"{")).is_none());
        assert!(downlink_event(TopicKind::Results, &Bytes::from_static(b"\xff\xff")).is_none());
        assert!(downlink_event(TopicKind::Records, &Bytes::new()).is_none());
    }
}
