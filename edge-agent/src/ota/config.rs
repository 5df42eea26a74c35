//! `[ota]` in `agent.toml`: whom the agent trusts for updates, where it
//! downloads them from, and how much disk they may take.

use conveyor_shared::ota::PublicKey;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ConfigErrors};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtaConfig {
    /// The hub keys whose signatures the agent accepts (`ed25519:<hex>`,
    /// as `cloud-hub keys show` prints them). More than one while a key is
    /// rotated.
    pub trusted_keys: Vec<PublicKey>,
    /// The hub's HTTP API, where artifacts are downloaded from, e.g.
    /// `http://127.0.0.1:8080`, or `https://hub.example:8443` (checked
    /// against `uplink.ca_file`).
    pub url: String,
    /// Disk the artifact cache may take, MiB. The artifacts running now
    /// and the ones they replaced are never evicted.
    #[serde(default = "default_cache_max_mb")]
    pub cache_max_mb: u64,
    /// Largest artifact (all its files) the agent downloads, MiB.
    #[serde(default = "default_max_artifact_mb")]
    pub max_artifact_mb: u64,
}

impl OtaConfig {
    /// Updates signed by `trusted_keys`, downloaded from the hub at `url`,
    /// the bounds at their defaults.
    pub fn new(trusted_keys: Vec<PublicKey>, url: impl Into<String>) -> OtaConfig {
        OtaConfig {
            trusted_keys,
            url: url.into(),
            cache_max_mb: default_cache_max_mb(),
            max_artifact_mb: default_max_artifact_mb(),
        }
    }
}

fn default_cache_max_mb() -> u64 {
    256
}
fn default_max_artifact_mb() -> u64 {
    64
}

/// The hub's address, from `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubHttp {
    pub host: String,
    pub port: u16,
    /// HTTPS: the hub's certificate is checked against `uplink.ca_file`.
    pub tls: bool,
}

impl HubHttp {
    pub fn parse(url: &str) -> Result<HubHttp, String> {
        let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(r), _) => (r, false),
            (_, Some(r)) => (r, true),
            _ => {
                return Err(format!(
                    "must be http://HOST:PORT or https://HOST:PORT, got {url:?}"
                ))
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(format!(
                "must be http[s]://HOST:PORT without a path, got {url:?}"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>().map_err(|_| {
                    format!("port {p:?} in {url:?} is not a number from 1 to 65535")
                })?,
            ),
            None => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(format!("must be http://HOST:PORT, got {url:?}"));
        }
        Ok(HubHttp {
            host: host.to_string(),
            port,
            tls,
        })
    }

    /// `Host` header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl OtaConfig {
    pub fn validate(&self, field: &str) -> Result<(), ConfigErrors> {
        let mut found = Vec::new();
        if self.trusted_keys.is_empty() {
            found.push(ConfigError::invalid(
                format!("{field}.trusted_keys"),
                "must name at least one hub key (`cloud-hub keys show` prints it)",
            ));
        }
        if let Err(e) = HubHttp::parse(&self.url) {
            found.push(ConfigError::invalid(format!("{field}.url"), e));
        }
        if self.max_artifact_mb == 0 {
            found.push(ConfigError::invalid(
                format!("{field}.max_artifact_mb"),
                "must be at least 1",
            ));
        }
        if self.cache_max_mb < self.max_artifact_mb {
            found.push(ConfigError::invalid(
                format!("{field}.cache_max_mb"),
                format!(
                    "must be at least max_artifact_mb ({}): the cache holds what it downloads",
                    self.max_artifact_mb
                ),
            ));
        }
        ConfigErrors::check(found)
    }

    pub fn hub(&self) -> HubHttp {
        HubHttp::parse(&self.url).expect("validated")
    }

    pub fn max_artifact_bytes(&self) -> u64 {
        self.max_artifact_mb << 20
    }

    pub fn cache_max_bytes(&self) -> u64 {
        self.cache_max_mb << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_parse_or_say_why() {
        assert_eq!(
            HubHttp::parse("http://127.0.0.1:8080/").unwrap(),
            HubHttp {
                host: "127.0.0.1".into(),
                port: 8080,
                tls: false,
            }
        );
        assert_eq!(
            HubHttp::parse("http://[::1]:9").unwrap().authority(),
            "[::1]:9"
        );
        assert_eq!(HubHttp::parse("http://hub").unwrap().port, 80);
        let tls = HubHttp::parse("https://hub").unwrap();
        assert!(tls.tls && tls.port == 443);
        assert!(HubHttp::parse("ftp://hub")
            .unwrap_err()
            .contains("https://HOST:PORT"));
        assert!(HubHttp::parse("hub:80").is_err());
        assert!(HubHttp::parse("http://hub:x").is_err());
        assert!(HubHttp::parse("http://hub:80/api").is_err());
    }
}
