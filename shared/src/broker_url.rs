//! Broker addresses as users write them: `mqtt://host:port`, or
//! `mqtts://host:port` for MQTT over TLS.

use std::fmt;

use thiserror::Error;

/// An MQTT broker address: plain TCP (`mqtt://`, `tcp://`; port 1883 by
/// default) or TLS (`mqtts://`, `ssl://`; port 8883 by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// TLS: the client verifies the broker's certificate.
    pub tls: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BrokerUrlError {
    #[error("{0:?} is not a URL: {1}")]
    Parse(String, String),
    #[error("scheme {0:?} is not supported; use mqtt://host:port, or mqtts://host:port for TLS")]
    Scheme(String),
    #[error("{0:?} names no host")]
    NoHost(String),
}

impl BrokerUrl {
    pub fn parse(s: &str) -> Result<Self, BrokerUrlError> {
        let url = url::Url::parse(s).map_err(|e| BrokerUrlError::Parse(s.into(), e.to_string()))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(BrokerUrlError::Scheme(other.into())),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| BrokerUrlError::NoHost(s.into()))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        Ok(BrokerUrl {
            host,
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl<'de> serde::Deserialize<'de> for BrokerUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BrokerUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// As written in a config file: its [`Display`](fmt::Display) form, which
/// [`BrokerUrl::parse`] reads back.
impl serde::Serialize for BrokerUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_write() {
        assert_eq!(
            BrokerUrl::parse("mqtt://127.0.0.1:1884").unwrap(),
            BrokerUrl {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false,
            }
        );
        let tls = BrokerUrl::parse("mqtts://hub.example").unwrap();
        assert!(tls.tls);
        assert_eq!(tls.port, 8883);
        assert!(BrokerUrl::parse("ssl://hub:1").unwrap().tls);
        assert_eq!(BrokerUrl::parse("mqtt://localhost").unwrap().port, 1883);
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:9").unwrap().host, "::1");
        assert!(matches!(
            BrokerUrl::parse("http://x:1"),
            Err(BrokerUrlError::Scheme(_))
        ));
        assert!(BrokerUrl::parse("127.0.0.1:1883").is_err());
    }

    #[test]
    fn serialises_to_what_it_parses_from() {
        for url in [
            "mqtt://127.0.0.1:1884",
            "mqtt://localhost",
            "mqtt://[::1]:9",
            "mqtts://hub.example:8883",
        ] {
            let url = BrokerUrl::parse(url).unwrap();
            let json = serde_json::to_string(&url).unwrap();
            assert_eq!(serde_json::from_str::<BrokerUrl>(&json).unwrap(), url);
        }
    }
}
