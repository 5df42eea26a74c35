//! The MQTT topic layout, under the versioned prefix `conveyor/v1/`.
//!
//! | topic                                  | direction  | payload                      |
//! |----------------------------------------|------------|------------------------------|
//! | `conveyor/v1/<device>/up/records`      | edge → hub | protobuf `RecordBatch`, QoS 1 |
//! | `conveyor/v1/<device>/status`          | edge → hub | JSON `DeviceStatus`, retained, last will |
//! | `conveyor/v1/<device>/heartbeat`       | edge → hub | JSON `Heartbeat`, QoS 0       |
//! | `conveyor/v1/<device>/down/ack`        | hub → edge | JSON `Ack` (end-to-end acks)  |
//! | `conveyor/v1/<device>/state`           | edge → hub | JSON `ota::AgentState`: what it runs, the last change's phase; retained |
//! | `conveyor/v1/<device>/down/desired`    | hub → edge | JSON signed `ota::DesiredState`, retained |
//! | `conveyor/v1/<device>/down/results`    | hub → edge | protobuf `ResultBatch`: final predictions (hub inference cascade) |
//!
//! Building and parsing live side by side so they cannot disagree; the
//! parser is total (every string maps to `Ok` or a descriptive `Err`).

use std::fmt;

use thiserror::Error;

/// Every Conveyor topic starts with this; a v2 protocol gets `conveyor/v2`.
pub const PREFIX: &str = "conveyor/v1";

/// Longest device id accepted, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// A validated device id: 1-64 bytes of `[A-Za-z0-9._-]`.
///
/// The restriction keeps ids safe as MQTT topic levels (no `/`, `+`, `#`),
/// as file names and in URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviceIdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is {0} bytes long; at most {MAX_DEVICE_ID_LEN} are allowed")]
    TooLong(usize),
    #[error("device id contains {0:?}; only letters, digits, '.', '_' and '-' are allowed")]
    BadChar(char),
}

impl DeviceId {
    pub fn new(id: impl Into<String>) -> Result<Self, DeviceIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if id.len() > MAX_DEVICE_ID_LEN {
            return Err(DeviceIdError::TooLong(id.len()));
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(DeviceIdError::BadChar(c));
        }
        Ok(DeviceId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DeviceId::new(s).map_err(serde::de::Error::custom)
    }
}

/// What a device topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Records,
    Status,
    Heartbeat,
    /// What the agent runs (OTA), retained.
    State,
    Ack,
    Desired,
    Results,
}

impl TopicKind {
    const ALL: [TopicKind; 7] = [
        TopicKind::Records,
        TopicKind::Status,
        TopicKind::Heartbeat,
        TopicKind::State,
        TopicKind::Ack,
        TopicKind::Desired,
        TopicKind::Results,
    ];

    /// The topic levels after `<device>/`.
    pub fn suffix(self) -> &'static str {
        match self {
            TopicKind::Records => "up/records",
            TopicKind::Status => "status",
            TopicKind::Heartbeat => "heartbeat",
            TopicKind::State => "state",
            TopicKind::Ack => "down/ack",
            TopicKind::Desired => "down/desired",
            TopicKind::Results => "down/results",
        }
    }

    /// The subscription filter matching this kind for every device.
    pub fn filter_all_devices(self) -> String {
        format!("{PREFIX}/+/{}", self.suffix())
    }
}

/// A parsed Conveyor topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub device: DeviceId,
    pub kind: TopicKind,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TopicError {
    #[error("topic {0:?} is not under {PREFIX}/")]
    NotConveyor(String),
    #[error("topic {topic:?} has an invalid device id: {source}")]
    BadDevice {
        topic: String,
        source: DeviceIdError,
    },
    #[error("topic {0:?} names no known Conveyor channel")]
    UnknownKind(String),
}

impl Topic {
    pub fn new(device: DeviceId, kind: TopicKind) -> Self {
        Topic { device, kind }
    }

    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let rest = topic
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::NotConveyor(topic.to_string()))?;
        let (device, suffix) = rest
            .split_once('/')
            .ok_or_else(|| TopicError::UnknownKind(topic.to_string()))?;
        let device = DeviceId::new(device).map_err(|source| TopicError::BadDevice {
            topic: topic.to_string(),
            source,
        })?;
        let kind = TopicKind::ALL
            .into_iter()
            .find(|k| k.suffix() == suffix)
            .ok_or_else(|| TopicError::UnknownKind(topic.to_string()))?;
        Ok(Topic { device, kind })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}/{}/{}", self.device, self.kind.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let dev = DeviceId::new("store-7.gw_1").unwrap();
        for kind in TopicKind::ALL {
            let t = Topic::new(dev.clone(), kind);
            assert_eq!(Topic::parse(&t.to_string()).unwrap(), t);
        }
    }

    #[test]
    fn layout_is_the_documented_one() {
        let dev = DeviceId::new("d1").unwrap();
        assert_eq!(
            Topic::new(dev.clone(), TopicKind::Records).to_string(),
            "conveyor/v1/d1/up/records"
        );
        assert_eq!(
            Topic::new(dev, TopicKind::Status).to_string(),
            "conveyor/v1/d1/status"
        );
        assert_eq!(
            TopicKind::Records.filter_all_devices(),
            "conveyor/v1/+/up/records"
        );
    }

    #[test]
    fn bad_topics_are_errors() {
        assert!(matches!(
            Topic::parse("other/v1/d1/status"),
            Err(TopicError::NotConveyor(_))
        ));
        assert!(matches!(
            Topic::parse("conveyor/v1/d1/up/nope"),
            Err(TopicError::UnknownKind(_))
        ));
        assert!(matches!(
            Topic::parse("conveyor/v1/d1"),
            Err(TopicError::UnknownKind(_))
        ));
        assert!(matches!(
            Topic::parse("conveyor/v1/a b/status"),
            Err(TopicError::BadDevice { .. })
        ));
        assert!(matches!(
            Topic::parse("conveyor/v1//status"),
            Err(TopicError::BadDevice { .. })
        ));
    }

    #[test]
    fn device_ids_are_validated() {
        assert_eq!(DeviceId::new(""), Err(DeviceIdError::Empty));
        assert_eq!(DeviceId::new("a/b"), Err(DeviceIdError::BadChar('/')));
        assert_eq!(DeviceId::new("a+"), Err(DeviceIdError::BadChar('+')));
        assert_eq!(
            DeviceId::new("x".repeat(65)),
            Err(DeviceIdError::TooLong(65))
        );
        assert!(DeviceId::new("x".repeat(64)).is_ok());
    }
}
