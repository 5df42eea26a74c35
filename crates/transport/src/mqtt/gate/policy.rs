//! What an authenticated device may do on the broker, as plain data: its
//! CONNECT, each topic it publishes to, each filter it subscribes to.
//! No I/O; [`super::session`] asks, and refuses what this refuses.
//!
//! The rule is AWS IoT's `${iot:ClientId}` policy and mosquitto's
//! `pattern write conveyor/v1/%u/#`, written out for our topics:
//! - a device's client id is its device id (so no one can take over
//!   another device's session, which the broker would allow);
//! - it publishes only its own uplink topics (`up/records`, `status`,
//!   `heartbeat`, `state`), its last will included;
//! - it subscribes only to its own downlink topics (`down/ack`,
//!   `down/desired`, `down/results`, or `down/+` / `down/#` over them).
//!
//! Nothing else: no wildcard above its own `down/`, no other device, no
//! `$SYS`, no topic outside Conveyor's.

use conveyor_shared::topics::{TopicKind, PREFIX};
use conveyor_shared::{DeviceId, Topic};

/// The uplink kinds a device publishes.
const PUBLISHES: [TopicKind; 4] = [
    TopicKind::Records,
    TopicKind::Status,
    TopicKind::Heartbeat,
    TopicKind::State,
];

/// Why the gate refused something, for the log line and the counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("client id {client_id:?} is not its device id {device:?}")]
    ClientId { device: String, client_id: String },
    #[error("device {device} may not publish to {topic:?}: a device publishes only its own uplink topics")]
    Publish { device: String, topic: String },
    #[error("device {device} may not subscribe to {filter:?}: a device subscribes only to its own down/ topics")]
    Subscribe { device: String, filter: String },
}

impl Denied {
    /// A stable label for the counter.
    pub fn kind(&self) -> &'static str {
        match self {
            Denied::ClientId { .. } => "client_id",
            Denied::Publish { .. } => "publish",
            Denied::Subscribe { .. } => "subscribe",
        }
    }
}

/// Whether `device` may connect with `client_id`.
pub fn connect(device: &DeviceId, client_id: &str) -> Result<(), Denied> {
    if client_id == device.as_str() {
        Ok(())
    } else {
        Err(Denied::ClientId {
            device: device.to_string(),
            client_id: client_id.chars().take(80).collect(),
        })
    }
}

/// Whether `device` may publish to `topic` (also its last will's).
pub fn publish(device: &DeviceId, topic: &str) -> Result<(), Denied> {
    match Topic::parse(topic) {
        Ok(t) if &t.device == device && PUBLISHES.contains(&t.kind) => Ok(()),
        _ => Err(Denied::Publish {
            device: device.to_string(),
            topic: topic.chars().take(200).collect(),
        }),
    }
}

/// Whether `device` may subscribe to `filter`.
pub fn subscribe(device: &DeviceId, filter: &str) -> Result<(), Denied> {
    let own_down = format!("{PREFIX}/{device}/down/");
    let ok = filter
        .strip_prefix(&own_down)
        .is_some_and(|rest| matches!(rest, "+" | "#" | "ack" | "desired" | "results"));
    if ok {
        Ok(())
    } else {
        Err(Denied::Subscribe {
            device: device.to_string(),
            filter: filter.chars().take(200).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> DeviceId {
        DeviceId::new(id).unwrap()
    }

    #[test]
    fn a_device_publishes_only_its_own_uplinks() {
        let a = dev("store-1");
        for ok in [
            "conveyor/v1/store-1/up/records",
            "conveyor/v1/store-1/status",
            "conveyor/v1/store-1/heartbeat",
            "conveyor/v1/store-1/state",
        ] {
            assert_eq!(publish(&a, ok), Ok(()), "{ok}");
        }
        for bad in [
            "conveyor/v1/store-2/up/records",
            "conveyor/v1/store-1/down/ack",
            "conveyor/v1/store-1/down/desired",
            "conveyor/v1/store-1/down/results",
            "conveyor/v1/store-1/up/records/extra",
            "conveyor/v1/+/up/records",
            "conveyor/v1/store-1",
            "$SYS/broker",
            "other/topic",
            "",
        ] {
            let e = publish(&a, bad).unwrap_err();
            assert_eq!(e.kind(), "publish", "{bad}");
        }
        assert_eq!(
            publish(&a, "conveyor/v1/victim/up/records").unwrap_err().to_string(),
            "device store-1 may not publish to \"conveyor/v1/victim/up/records\": a device publishes only its own uplink topics"
        );
    }

    #[test]
    fn a_device_subscribes_only_to_its_own_downlinks() {
        let a = dev("store-1");
        for ok in ["ack", "desired", "results", "+", "#"] {
            let f = format!("conveyor/v1/store-1/down/{ok}");
            assert_eq!(subscribe(&a, &f), Ok(()), "{f}");
        }
        for bad in [
            "#",
            "+",
            "conveyor/#",
            "conveyor/v1/#",
            "conveyor/v1/+/down/ack",
            "conveyor/v1/store-2/down/#",
            "conveyor/v1/store-1/#",
            "conveyor/v1/store-1/+/ack",
            "conveyor/v1/store-1/up/records",
            "conveyor/v1/store-1/down/ack/#",
            "$SYS/#",
        ] {
            assert_eq!(subscribe(&a, bad).unwrap_err().kind(), "subscribe", "{bad}");
        }
    }

    #[test]
    fn a_device_connects_only_as_itself() {
        assert_eq!(connect(&dev("a"), "a"), Ok(()));
        assert_eq!(connect(&dev("a"), "b").unwrap_err().kind(), "client_id");
    }
}
