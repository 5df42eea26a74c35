//! Where an agent's uplink goes, as users write it: an MQTT broker
//! (`mqtt://`, `mqtts://`: [`BrokerUrl`]) or a Fluvio cluster
//! (`fluvio://host:port`: [`FluvioUrl`]). MQTT-only places (an MQTT
//! source, the hub's external broker) keep [`BrokerUrl`], so a Fluvio
//! address cannot reach them.

use std::fmt;

use thiserror::Error;

use crate::broker_url::{BrokerUrl, BrokerUrlError};

/// A Fluvio cluster's SC (its public endpoint): `fluvio://host:port`, port
/// 9003 by default. Plain TCP: Fluvio's TLS is not built in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluvioUrl {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FluvioUrlError {
    #[error("{0:?} is not a URL: {1}")]
    Parse(String, String),
    #[error("scheme {0:?} is not a Fluvio address; use fluvio://host:port")]
    Scheme(String),
    #[error("{0:?} names no host")]
    NoHost(String),
}

impl FluvioUrl {
    pub const DEFAULT_PORT: u16 = 9003;

    pub fn parse(s: &str) -> Result<Self, FluvioUrlError> {
        let url = url::Url::parse(s).map_err(|e| FluvioUrlError::Parse(s.into(), e.to_string()))?;
        if url.scheme() != "fluvio" {
            return Err(FluvioUrlError::Scheme(url.scheme().into()));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| FluvioUrlError::NoHost(s.into()))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        Ok(FluvioUrl {
            host,
            port: url.port().unwrap_or(Self::DEFAULT_PORT),
        })
    }

    /// Whether the cluster is on this machine (127.0.0.0/8, ::1,
    /// localhost): a cluster elsewhere is reached without TLS and without
    /// device identity.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// `host:port`, as Fluvio's client takes it.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for FluvioUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fluvio://{}", self.endpoint())
    }
}

/// An uplink's address: MQTT or Fluvio, by the URL's scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkUrl {
    Mqtt(BrokerUrl),
    Fluvio(FluvioUrl),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UplinkUrlError {
    #[error("scheme {0:?} is not supported; use mqtt://host:port, mqtts://host:port for TLS, or fluvio://host:port")]
    Scheme(String),
    #[error(transparent)]
    Mqtt(BrokerUrlError),
    #[error(transparent)]
    Fluvio(FluvioUrlError),
}

impl UplinkUrl {
    pub fn parse(s: &str) -> Result<Self, UplinkUrlError> {
        if s.starts_with("fluvio:") {
            FluvioUrl::parse(s)
                .map(UplinkUrl::Fluvio)
                .map_err(UplinkUrlError::Fluvio)
        } else {
            BrokerUrl::parse(s)
                .map(UplinkUrl::Mqtt)
                .map_err(|e| match e {
                    BrokerUrlError::Scheme(s) => UplinkUrlError::Scheme(s),
                    e => UplinkUrlError::Mqtt(e),
                })
        }
    }

    /// The MQTT broker, if this is one.
    pub fn mqtt(&self) -> Option<&BrokerUrl> {
        match self {
            UplinkUrl::Mqtt(u) => Some(u),
            UplinkUrl::Fluvio(_) => None,
        }
    }

    /// Whether the link is TLS (`mqtts://`).
    pub fn tls(&self) -> bool {
        self.mqtt().is_some_and(|u| u.tls)
    }
}

impl From<BrokerUrl> for UplinkUrl {
    fn from(u: BrokerUrl) -> Self {
        UplinkUrl::Mqtt(u)
    }
}

impl fmt::Display for UplinkUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UplinkUrl::Mqtt(u) => u.fmt(f),
            UplinkUrl::Fluvio(u) => u.fmt(f),
        }
    }
}

macro_rules! serde_by_display {
    ($t:ty) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <$t>::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}
serde_by_display!(FluvioUrl);
serde_by_display!(UplinkUrl);

/// The records topic unless configured otherwise.
pub const RECORDS_TOPIC: &str = "conveyor-records";
/// The downlink topic unless configured otherwise.
pub const DOWNLINK_TOPIC: &str = "conveyor-downlink";

/// The two topics a fleet uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FluvioTopics {
    #[serde(default = "d_records")]
    pub records: String,
    #[serde(default = "d_downlink")]
    pub downlink: String,
}

fn d_records() -> String {
    RECORDS_TOPIC.into()
}
fn d_downlink() -> String {
    DOWNLINK_TOPIC.into()
}

impl Default for FluvioTopics {
    fn default() -> Self {
        FluvioTopics {
            records: d_records(),
            downlink: d_downlink(),
        }
    }
}

/// Why a topic name is not one Fluvio takes (its names are DNS labels).
pub fn check_topic_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if name.is_empty() || name.len() > 63 {
        Err(format!("{name:?} must be 1 to 63 characters"))
    } else if !name.chars().all(ok_char) {
        Err(format!(
            "{name:?} may hold only lowercase letters, digits and '-'"
        ))
    } else if name.starts_with('-') || name.ends_with('-') {
        Err(format!("{name:?} may not start or end with '-'"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked_as_fluvio_takes_them() {
        assert!(check_topic_name("conveyor-records").is_ok());
        for bad in ["", "Records", "a_b", "-a", "a-", &"x".repeat(64)] {
            assert!(check_topic_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_both_transports_by_scheme() {
        assert_eq!(
            UplinkUrl::parse("fluvio://127.0.0.1:19003").unwrap(),
            UplinkUrl::Fluvio(FluvioUrl {
                host: "127.0.0.1".into(),
                port: 19003
            })
        );
        assert_eq!(
            FluvioUrl::parse("fluvio://localhost").unwrap().port,
            FluvioUrl::DEFAULT_PORT
        );
        assert_eq!(
            FluvioUrl::parse("fluvio://[::1]:9").unwrap().endpoint(),
            "[::1]:9"
        );
        assert!(UplinkUrl::parse("mqtts://hub:1").unwrap().tls());
        assert!(!UplinkUrl::parse("fluvio://hub:1").unwrap().tls());
        assert!(matches!(
            FluvioUrl::parse("mqtt://x:1"),
            Err(FluvioUrlError::Scheme(_))
        ));
        let e = UplinkUrl::parse("http://x:1").unwrap_err().to_string();
        assert!(e.contains("fluvio://host:port"), "{e}");
        assert!(UplinkUrl::parse("fluvio://").is_err());
    }

    #[test]
    fn serialises_to_what_it_parses_from() {
        for url in [
            "fluvio://127.0.0.1:9003",
            "fluvio://[::1]:9",
            "mqtt://127.0.0.1:1884",
            "mqtts://hub.example:8883",
        ] {
            let parsed = UplinkUrl::parse(url).unwrap();
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(json, format!("{url:?}"));
            assert_eq!(serde_json::from_str::<UplinkUrl>(&json).unwrap(), parsed);
        }
    }
}
