//! The security settings of `hub.toml`: who may connect to the broker
//! (`[broker] auth`, `[broker.limits]`), who may use the HTTP API
//! (`[http] auth`), and the rule that a hub exposed beyond loopback must
//! say `insecure = true` to run without TLS and authentication.

use std::net::SocketAddr;

use conveyor_shared::config_file::ConfigError;
use conveyor_transport::mqtt::gate::Limits;
use serde::Deserialize;

/// Who may connect to the embedded broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerAuth {
    /// Each device with its secret (`cloud-hub device add`), and only to
    /// its own topics.
    #[default]
    Devices,
    /// Anyone, to any topic: a bare broker.
    None,
}

/// Who may use the HTTP API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpAuth {
    /// A token of a role (`cloud-hub token create`); devices with their
    /// secret may read artifacts. `/healthz` and `/metrics` stay open.
    #[default]
    Tokens,
    /// Anyone.
    None,
}

/// `[broker.limits]`: per device; 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "d_messages")]
    pub messages_per_s: f64,
    #[serde(default = "d_bytes")]
    pub bytes_per_s: f64,
    #[serde(default = "d_connects")]
    pub connects_per_minute: u32,
}

fn d_messages() -> f64 {
    Limits::default().messages_per_s
}
fn d_bytes() -> f64 {
    Limits::default().bytes_per_s
}
fn d_connects() -> u32 {
    Limits::default().connects_per_minute
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            messages_per_s: d_messages(),
            bytes_per_s: d_bytes(),
            connects_per_minute: d_connects(),
        }
    }
}

impl LimitsConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            messages_per_s: self.messages_per_s,
            bytes_per_s: self.bytes_per_s,
            connects_per_minute: self.connects_per_minute,
        }
    }

    pub fn validate(&self, found: &mut Vec<ConfigError>) {
        for (field, v) in [
            ("broker.limits.messages_per_s", self.messages_per_s),
            ("broker.limits.bytes_per_s", self.bytes_per_s),
        ] {
            if !v.is_finite() || v < 0.0 {
                found.push(ConfigError::invalid(field, "must be 0 (off) or more"));
            }
        }
    }
}

/// A listener on `addr` that lacks `what` (TLS, authentication) is
/// refused unless `insecure`; with it, the hub warns at start.
pub fn check_exposure(
    field: &str,
    addr: SocketAddr,
    missing: &[&str],
    insecure: bool,
    found: &mut Vec<ConfigError>,
) {
    if addr.ip().is_loopback() || missing.is_empty() || insecure {
        return;
    }
    found.push(ConfigError::invalid(
        field,
        format!(
            "{addr} is reachable beyond this machine, and the listener has no {}: \
             anyone on the network could use it. Listen on 127.0.0.1, or set \
             `insecure = true` at the top of hub.toml to accept the risk",
            missing.join(" and no ")
        ),
    ));
}

/// What a listener on `addr` lacks, for the warning at start.
pub fn exposed(addr: SocketAddr, missing: &[&str]) -> Option<String> {
    (!addr.ip().is_loopback() && !missing.is_empty())
        .then(|| format!("{addr} has no {}", missing.join(" and no ")))
}
