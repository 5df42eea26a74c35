//! The hub's configuration file (`hub.toml`).
//!
//! Every field has a default, so an empty file (or none, for `demo`) gives
//! a working hub on loopback. Parsing is strict: an unknown key is an error
//! naming it. `cloud-hub serve` validates the whole file before it binds a
//! port and exits with code 64 on any problem; every invalid field is
//! reported at once, in the agent's format ([`ConfigErrors`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use conveyor_shared::config_file::{parse_toml, read_toml};
pub use conveyor_shared::config_file::{ConfigError, ConfigErrors};
use conveyor_shared::BrokerUrl;
use serde::Deserialize;

use crate::inference::InferenceConfig;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    #[serde(default)]
    pub broker: BrokerConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    /// Over-the-air updates: the signing key, artifact bounds.
    #[serde(default)]
    pub ota: crate::ota::OtaConfig,
    /// The certificate of the listeners with `tls = true` (the hub's own
    /// CA issues one when no files are given).
    #[serde(default)]
    pub tls: crate::tls::TlsConfig,
    /// A Fluvio cluster devices may also stream through (a mixed fleet).
    #[serde(default)]
    pub fluvio: Option<crate::fluvio::FluvioConfig>,
    /// Run listeners reachable beyond loopback without TLS or
    /// authentication (refused otherwise; warned about at start).
    #[serde(default)]
    pub insecure: bool,
}

/// Which MQTT broker the devices talk to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    /// Run rumqttd inside the hub (the default).
    #[default]
    Embedded,
    /// Use an existing broker (mosquitto, EMQX, ...) as a client.
    External,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    #[serde(default)]
    pub mode: BrokerMode,
    /// Embedded: MQTT listener address for devices.
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    /// Embedded: most devices connected at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// External: the broker's URL, e.g. `mqtt://127.0.0.1:1883`.
    pub url: Option<BrokerUrl>,
    /// External: client id of the hub's session. Keep it stable: with a
    /// persistent session the broker queues uplinks while the hub is down.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// External: the hub's username at the broker, and the file holding
    /// its password (relative to this file); both or neither.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Embedded: who may connect (`devices`: each device with its secret,
    /// to its own topics only; `none`: anyone, anywhere).
    #[serde(default)]
    pub auth: crate::identity::config::BrokerAuth,
    /// Embedded: what one device may send.
    #[serde(default)]
    pub limits: crate::identity::config::LimitsConfig,
    /// Embedded: devices connect over TLS (`mqtts://`), with `[tls]`'s
    /// certificate.
    #[serde(default)]
    pub tls: bool,
    /// External, with an `mqtts://` url: the CA the broker's certificate
    /// is checked against (PEM; relative to this file).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            mode: BrokerMode::Embedded,
            listen: default_mqtt_listen(),
            max_connections: default_max_connections(),
            url: None,
            client_id: default_client_id(),
            username: None,
            password_file: None,
            auth: Default::default(),
            limits: Default::default(),
            tls: false,
            ca_file: None,
        }
    }
}

impl BrokerConfig {
    /// An external broker at `url`.
    pub fn external(url: BrokerUrl, client_id: &str) -> Self {
        BrokerConfig {
            mode: BrokerMode::External,
            url: Some(url),
            client_id: client_id.into(),
            ..Default::default()
        }
    }

    /// The embedded broker on `listen`.
    pub fn embedded(listen: SocketAddr) -> Self {
        BrokerConfig {
            listen,
            ..Default::default()
        }
    }
}

fn default_mqtt_listen() -> SocketAddr {
    "127.0.0.1:1883".parse().expect("valid address")
}
fn default_max_connections() -> usize {
    10_000
}
fn default_client_id() -> String {
    "conveyor-hub".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP API, metrics and health check.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// `tokens`: every API route asks for a token of a role; `none`:
    /// anyone may read and change everything.
    #[serde(default)]
    pub auth: crate::identity::config::HttpAuth,
    /// Serve HTTPS, with `[tls]`'s certificate.
    #[serde(default)]
    pub tls: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
            auth: Default::default(),
            tls: false,
        }
    }
}

fn default_http_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("valid address")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the hub's store (the embedded redb database,
    /// `hub.redb`). Relative to the config file.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Verify the whole store file when opening it (at start, and when
    /// reopening it after a storage failure), so a file damaged outside the
    /// hub is refused with a clear error instead of being trusted. It reads
    /// the whole file: about 7 ms for 100k records (9 MB) and 125 ms for
    /// 1M (143 MB) from the page cache, longer from a cold disk.
    #[serde(default = "default_true")]
    pub check_on_open: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            check_on_open: true,
        }
    }
}

impl StoreConfig {
    pub fn options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            check_on_open: self.check_on_open,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_store_path() -> PathBuf {
    PathBuf::from("hub-data")
}

impl HubConfig {
    /// Reads, parses and validates a config file: a file that does not
    /// parse is one error (with its line); one that does is checked whole
    /// and every invalid field is reported.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let mut config: HubConfig = read_toml(path)?;
        config.validate()?;
        // Paths are relative to the file, not to the working dir.
        if let Some(dir) = path.parent() {
            if config.store.path.is_relative() {
                config.store.path = dir.join(&config.store.path);
            }
            config.inference.resolve_paths(dir);
            for p in [&mut config.broker.password_file, &mut config.broker.ca_file]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
            config.tls.resolve_paths(dir);
            if let Some(k) = &mut config.ota.signing_key {
                if k.is_relative() {
                    *k = dir.join(&*k);
                }
            }
        }
        Ok(config)
    }

    /// Parses and validates config text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        let config: HubConfig = parse_toml(text, Path::new("<config>"))?;
        config.validate()?;
        Ok(config)
    }

    /// Each listener, and what protection it lacks.
    pub fn exposures(&self) -> Vec<(&'static str, SocketAddr, Vec<&'static str>)> {
        use crate::identity::config::{BrokerAuth, HttpAuth};
        let mut out = Vec::new();
        if self.broker.mode == BrokerMode::Embedded {
            let mut missing = Vec::new();
            if !self.broker.tls {
                missing.push("TLS");
            }
            if self.broker.auth == BrokerAuth::None {
                missing.push("device authentication");
            }
            out.push(("broker.listen", self.broker.listen, missing));
        }
        let mut missing = Vec::new();
        if !self.http.tls {
            missing.push("TLS");
        }
        if self.http.auth == HttpAuth::None {
            missing.push("API tokens");
        }
        out.push(("http.listen", self.http.listen, missing));
        out
    }

    /// Whether a listener of the hub's serves TLS.
    pub fn serves_tls(&self) -> bool {
        self.http.tls || (self.broker.mode == BrokerMode::Embedded && self.broker.tls)
    }

    /// Checks every field; reports all the problems found.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut found = Vec::new();
        let b = &self.broker;
        match b.mode {
            BrokerMode::Embedded => {
                if b.max_connections == 0 {
                    found.push(ConfigError::invalid(
                        "broker.max_connections",
                        "must be at least 1",
                    ));
                }
                if b.listen == self.http.listen && b.listen.port() != 0 {
                    found.push(ConfigError::invalid(
                        "http.listen",
                        format!(
                            "{} is also broker.listen; they need different ports",
                            b.listen
                        ),
                    ));
                }
                if b.url.is_some() {
                    found.push(ConfigError::invalid(
                        "broker.url",
                        "is only used with mode = \"external\"; remove it or set the mode",
                    ));
                }
                if b.ca_file.is_some() {
                    found.push(ConfigError::invalid(
                        "broker.ca_file",
                        "is for an external broker's mqtts:// url; the embedded broker's TLS is `tls = true` with [tls]",
                    ));
                }
            }
            BrokerMode::External => {
                if b.username.is_some() != b.password_file.is_some() {
                    found.push(ConfigError::invalid(
                        "broker.password_file",
                        "give both broker.username and broker.password_file, or neither",
                    ));
                }
                match &b.url {
                    None => found.push(ConfigError::invalid(
                        "broker.url",
                        "is required with mode = \"external\", e.g. url = \"mqtt://127.0.0.1:1883\"",
                    )),
                    Some(u) if u.tls && b.ca_file.is_none() => found.push(ConfigError::invalid(
                        "broker.ca_file",
                        "is required with an mqtts:// url: the CA (PEM) that signed the broker's certificate",
                    )),
                    Some(u) if !u.tls && b.ca_file.is_some() => found.push(ConfigError::invalid(
                        "broker.ca_file",
                        "is only used with an mqtts:// url",
                    )),
                    Some(_) => {}
                }
                if b.tls {
                    found.push(ConfigError::invalid(
                        "broker.tls",
                        "is for the embedded broker; to reach an external one over TLS, give its url as mqtts:// with broker.ca_file",
                    ));
                }
            }
        }
        self.broker.limits.validate(&mut found);
        self.tls.validate(self.serves_tls(), &mut found);
        for (field, addr, missing) in self.exposures() {
            crate::identity::config::check_exposure(
                field,
                addr,
                &missing,
                self.insecure,
                &mut found,
            );
        }
        self.inference.validate(&mut found);
        self.ota.validate(&mut found);
        if let Some(f) = &self.fluvio {
            f.validate(&mut found);
            if !f.url.is_loopback() && !self.insecure {
                found.push(ConfigError::invalid(
                    "fluvio.url",
                    format!(
                        "{} is beyond loopback, and a Fluvio link has no TLS and no device identity \
                         (docs/security.md): anyone who reaches the cluster can produce as any device; \
                         set insecure = true to accept that",
                        f.url
                    ),
                ));
            }
        }
        if self.store.path.as_os_str().is_empty() {
            found.push(ConfigError::invalid("store.path", "must not be empty"));
        }
        ConfigErrors::check(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_embedded_default() {
        let c = HubConfig::from_toml("").unwrap();
        assert_eq!(c.broker.mode, BrokerMode::Embedded);
        let c = HubConfig::from_toml("[broker]\nlisten = \"127.0.0.1:1999\"\n").unwrap();
        assert_eq!(c.broker.listen.port(), 1999);
        assert_eq!(c.http.listen.port(), 8080);
    }

    #[test]
    fn a_fluvio_cluster_beyond_loopback_needs_insecure() {
        let far = "[fluvio]\nurl = \"fluvio://10.0.0.5:9003\"\n";
        let e = HubConfig::from_toml(far).unwrap_err().to_string();
        assert!(
            e.contains("fluvio.url") && e.contains("insecure = true"),
            "{e}"
        );
        HubConfig::from_toml(&format!("insecure = true\n{far}")).unwrap();
        for near in ["127.0.0.1", "localhost", "[::1]"] {
            HubConfig::from_toml(&format!("[fluvio]\nurl = \"fluvio://{near}:9003\"\n")).unwrap();
        }
    }

    #[test]
    fn a_hub_exposed_beyond_loopback_needs_insecure_without_tls_and_auth() {
        let e = HubConfig::from_toml("[broker]\nlisten = \"0.0.0.0:1883\"\nauth = \"none\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("broker.listen: 0.0.0.0:1883 is reachable beyond this machine")
                && e.contains("no TLS and no device authentication")
                && e.contains("insecure = true"),
            "{e}"
        );
        let c = HubConfig::from_toml(
            "insecure = true\n[broker]\nlisten = \"0.0.0.0:1883\"\n[http]\nlisten = \"[::]:8080\"\n",
        )
        .unwrap();
        assert!(c.insecure);
        // Loopback is fine as it is; and the defaults authenticate.
        let c = HubConfig::from_toml("").unwrap();
        assert_eq!(c.broker.auth, crate::identity::config::BrokerAuth::Devices);
        assert_eq!(c.http.auth, crate::identity::config::HttpAuth::Tokens);
        let e = HubConfig::from_toml("[broker.limits]\nbytes_per_s = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("broker.limits.bytes_per_s"), "{e}");
        // With TLS and authentication on both, no `insecure` is needed.
        let c = HubConfig::from_toml(
            "[broker]\nlisten = \"0.0.0.0:8883\"\ntls = true\n[http]\nlisten = \"0.0.0.0:8443\"\ntls = true\n",
        )
        .unwrap();
        assert!(c.serves_tls() && !c.insecure);
        let e = HubConfig::from_toml(
            "[http]\nlisten = \"0.0.0.0:8443\"\ntls = true\nauth = \"none\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("has no API tokens") && !e.contains("TLS"), "{e}");
    }

    #[test]
    fn tls_settings_are_checked_together() {
        let e = HubConfig::from_toml(
            "[broker]\nmode = \"external\"\nurl = \"mqtts://127.0.0.1:8883\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("broker.ca_file: is required with an mqtts:// url"),
            "{e}"
        );
        let c = HubConfig::from_toml(
            "[broker]\nmode = \"external\"\nurl = \"mqtts://127.0.0.1:8883\"\nca_file = \"ca.pem\"\n",
        )
        .unwrap();
        assert!(c.broker.url.as_ref().unwrap().tls && !c.serves_tls());
        let e = HubConfig::from_toml("[tls]\ncert_file = \"hub.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tls.key_file: give both") && e.contains("tls: no listener uses it"),
            "{e}"
        );
        let e = HubConfig::from_toml("[broker]\nca_file = \"ca.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("broker.ca_file: is for an external broker"),
            "{e}"
        );
    }

    #[test]
    fn external_broker() {
        let c = HubConfig::from_toml(
            "[broker]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:1999\"\n",
        )
        .unwrap();
        assert_eq!(c.broker.mode, BrokerMode::External);
        assert_eq!(c.broker.url.unwrap().port, 1999);
        assert_eq!(c.broker.client_id, "conveyor-hub");
    }

    #[test]
    fn errors_name_the_field() {
        let e = HubConfig::from_toml("[http]\nlisten = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listen") && e.contains("invalid socket address"),
            "{e}"
        );
        let e = HubConfig::from_toml("[broker]\nmode = \"cloud\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `cloud`"), "{e}");
        let e = HubConfig::from_toml("[store]\ndir = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `dir`"), "{e}");
        let e = HubConfig::from_toml(
            "[broker]\nlisten = \"127.0.0.1:9000\"\n[http]\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("http.listen"), "{e}");
        let e = HubConfig::from_toml("[broker]\nmode = \"external\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("broker.url: is required"), "{e}");
    }
}
