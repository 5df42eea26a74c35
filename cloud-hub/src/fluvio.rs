//! `[fluvio]`: a Fluvio cluster as a second way devices reach the hub,
//! beside the MQTT broker (a mixed fleet). The hub reads the records topic
//! (all partitions, or `assigned`) under `consumer_id`, commits offsets
//! only once what it read is durable, and answers each device on the
//! transport it last spoke on (`conveyor_transport::hub::merge`). Topics
//! that are not there are created with `partitions` and `replication`.

use conveyor_shared::config_file::ConfigError;
use conveyor_shared::uplink_url::{check_topic_name, FluvioTopics, FluvioUrl};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FluvioConfig {
    /// The cluster's SC, `fluvio://127.0.0.1:9003`.
    pub url: FluvioUrl,
    /// The topic the agents produce to, and the one they read.
    #[serde(default = "d_records")]
    pub records: String,
    #[serde(default = "d_downlink")]
    pub downlink: String,
    /// For topics the hub creates.
    #[serde(default = "d_partitions")]
    pub partitions: u32,
    #[serde(default = "d_replication")]
    pub replication: u32,
    /// Whose committed offsets these are.
    #[serde(default = "d_consumer")]
    pub consumer_id: String,
    /// The records partitions this hub reads; all when not given.
    #[serde(default)]
    pub assigned: Option<Vec<u32>>,
}

fn d_records() -> String {
    FluvioTopics::default().records
}
fn d_downlink() -> String {
    FluvioTopics::default().downlink
}
fn d_partitions() -> u32 {
    2
}
fn d_replication() -> u32 {
    1
}
fn d_consumer() -> String {
    "conveyor-hub".into()
}

impl FluvioConfig {
    /// The cluster at `url`, every other setting at its default.
    pub fn new(url: FluvioUrl) -> Self {
        FluvioConfig {
            url,
            records: d_records(),
            downlink: d_downlink(),
            partitions: d_partitions(),
            replication: d_replication(),
            consumer_id: d_consumer(),
            assigned: None,
        }
    }

    pub fn topics(&self) -> FluvioTopics {
        FluvioTopics {
            records: self.records.clone(),
            downlink: self.downlink.clone(),
        }
    }

    pub fn validate(&self, found: &mut Vec<ConfigError>) {
        if !cfg!(feature = "fluvio") {
            found.push(ConfigError::invalid(
                "fluvio",
                "this cloud-hub was built without the Fluvio transport (cargo feature `fluvio`)",
            ));
        }
        for (field, name) in [
            ("fluvio.records", &self.records),
            ("fluvio.downlink", &self.downlink),
        ] {
            if let Err(e) = check_topic_name(name) {
                found.push(ConfigError::invalid(
                    field,
                    format!("is not a Fluvio topic name: {e}"),
                ));
            }
        }
        if self.records == self.downlink {
            found.push(ConfigError::invalid(
                "fluvio.downlink",
                "must differ from fluvio.records",
            ));
        }
        if !(1..=1000).contains(&self.partitions) {
            found.push(ConfigError::invalid(
                "fluvio.partitions",
                format!("must be between 1 and 1000, got {}", self.partitions),
            ));
        }
        if !(1..=16).contains(&self.replication) {
            found.push(ConfigError::invalid(
                "fluvio.replication",
                format!("must be between 1 and 16, got {}", self.replication),
            ));
        }
        if self.consumer_id.trim().is_empty() {
            found.push(ConfigError::invalid(
                "fluvio.consumer_id",
                "must not be empty",
            ));
        }
        if let Some(a) = &self.assigned {
            if a.is_empty() {
                found.push(ConfigError::invalid(
                    "fluvio.assigned",
                    "names no partition; leave it out to read them all",
                ));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = a.iter().find(|p| !seen.insert(**p)) {
                found.push(ConfigError::invalid(
                    "fluvio.assigned",
                    format!("names partition {dup} twice"),
                ));
            }
        }
    }

    #[cfg(feature = "fluvio")]
    pub fn hub_side(&self) -> conveyor_transport::fluvio::hub::HubFluvio {
        conveyor_transport::fluvio::hub::HubFluvio {
            url: self.url.clone(),
            topics: self.topics(),
            consumer_id: self.consumer_id.clone(),
            partitions: self.partitions,
            replication: self.replication,
            assigned: self.assigned.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(toml: &str) -> Vec<String> {
        let c: FluvioConfig = toml::from_str(toml).unwrap();
        let mut found = Vec::new();
        c.validate(&mut found);
        found.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn defaults_and_every_bad_field_named() {
        let c: FluvioConfig = toml::from_str("url = \"fluvio://127.0.0.1:9003\"").unwrap();
        assert_eq!(c.records, "conveyor-records");
        assert_eq!(c.partitions, 2);
        let e = errors(
            "url = \"fluvio://127.0.0.1:9003\"\nrecords = \"Bad_Name\"\ndownlink = \"x\"\n\
             partitions = 0\nreplication = 0\nconsumer_id = \" \"\nassigned = [1, 1]\n",
        );
        for field in [
            "fluvio.records",
            "fluvio.partitions",
            "fluvio.replication",
            "fluvio.consumer_id",
            "fluvio.assigned",
        ] {
            assert!(e.iter().any(|m| m.starts_with(field)), "{field}: {e:?}");
        }
        assert!(toml::from_str::<FluvioConfig>("url = \"mqtt://x:1\"").is_err());
        assert!(toml::from_str::<FluvioConfig>("url = \"fluvio://x:1\"\nretries = 3").is_err());
    }
}
