//! Fluvio, the second transport (feature `fluvio`): where MQTT is the link
//! from a device, Fluvio is a durable, partitioned, replicated log, the
//! backbone when a site or a hub outgrows one broker.
//!
//! The mapping keeps the MQTT protocol's shape, so nothing above the
//! transport changes:
//! - two Fluvio topics: the *records* topic carries every uplink message
//!   (batches, status, heartbeats, state reports), the *downlink* topic
//!   every hub -> device message (acks, results, desired state);
//! - each record's key is the MQTT topic the message would have had
//!   (`conveyor/v1/<device>/up/records`), parsed by the same
//!   [`conveyor_shared::Topic`] parser, and its value is the same payload;
//! - a device's records all go to one partition of each topic
//!   ([`partition_of`]: FNV-1a of the device id), so they stay in order,
//!   and an agent reads only its own downlink partition.
//!
//! What MQTT's broker does and Fluvio does not, the two sides do
//! themselves: the hub re-sends a device's retained messages (its desired
//! state) when the device announces itself online ([`hub`]), and the link
//! notices a dead cluster by its own timeouts ([`edge`]): Fluvio's client
//! retries a lost SPU forever, silently.

pub mod edge;
pub mod hub;

use std::time::Duration;

pub use conveyor_shared::uplink_url::{check_topic_name, FluvioTopics, FluvioUrl};
use conveyor_shared::Topic;
use fluvio::metadata::topic::TopicSpec;
use fluvio::{Fluvio, FluvioClusterConfig};

/// How long a connect to the cluster (SC) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The partition a device's messages go to, of `partitions`: the same on
/// every agent and hub (FNV-1a 64 of the id; no per-process seed).
pub fn partition_of(device: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

/// Fluvio's producer asks this for each record's partition: the device's
/// ([`partition_of`]), read from the key (an MQTT-style topic).
#[derive(Debug)]
struct ByDevice;

impl fluvio::Partitioner for ByDevice {
    fn partition(
        &self,
        config: &fluvio::PartitionerConfig,
        key: Option<&[u8]>,
        _value: &[u8],
    ) -> fluvio::PartitionId {
        let device = key
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| Topic::parse(k).ok());
        match device {
            Some(t) => partition_of(t.device.as_str(), config.partition_count()),
            None => 0,
        }
    }
}

/// A producer that sends each record to its device's partition, waiting
/// for the leader's acknowledgement (at least once, retried for up to
/// `retry_for`).
async fn producer(
    fluvio: &Fluvio,
    topic: &str,
    linger: Duration,
    retry_for: Duration,
) -> Result<fluvio::TopicProducerPool, String> {
    let policy = fluvio::RetryPolicy {
        timeout: retry_for,
        ..Default::default()
    };
    let config = fluvio::TopicProducerConfigBuilder::default()
        .linger(linger)
        .delivery_semantic(fluvio::DeliverySemantic::AtLeastOnce(policy))
        .partitioner(std::sync::Arc::new(ByDevice))
        .build()
        .map_err(|e| e.to_string())?;
    fluvio
        .topic_producer_with_config(topic, config)
        .await
        .map_err(|e| describe(&e))
}

/// Connects to the cluster's SC at `url`, within [`CONNECT_TIMEOUT`].
pub async fn connect(url: &FluvioUrl, client_id: &str) -> Result<Fluvio, String> {
    let mut config = FluvioClusterConfig::new(url.endpoint());
    config.client_id = Some(client_id.to_string());
    match tokio::time::timeout(CONNECT_TIMEOUT, Fluvio::connect_with_config(&config)).await {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => Err(format!(
            "cannot reach the Fluvio cluster at {url}: {}",
            describe(&e)
        )),
        Err(_) => Err(format!(
            "cannot reach the Fluvio cluster at {url}: no answer in {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// The partition count of `topic`, or why it cannot be had.
pub async fn partitions(fluvio: &Fluvio, topic: &str) -> Result<u32, String> {
    let admin = fluvio.admin().await;
    let found = admin
        .list::<TopicSpec, String>(vec![topic.to_string()])
        .await
        .map_err(|e| describe(&e))?;
    match found.first() {
        Some(t) => Ok(t.spec.partitions()),
        None => Err(format!("the Fluvio topic {topic:?} does not exist")),
    }
}

/// Creates `topic` with `partitions` (replicated `replication` times) if
/// it is not there; its partition count either way.
pub async fn ensure_topic(
    fluvio: &Fluvio,
    topic: &str,
    partitions: u32,
    replication: u32,
) -> Result<u32, String> {
    if let Ok(n) = self::partitions(fluvio, topic).await {
        return Ok(n);
    }
    let admin = fluvio.admin().await;
    let spec = TopicSpec::new_computed(partitions, replication, None);
    if let Err(e) = admin.create(topic.to_string(), false, spec).await {
        // Another hub may have made it meanwhile.
        if self::partitions(fluvio, topic).await.is_err() {
            return Err(format!(
                "cannot create the Fluvio topic {topic:?}: {}",
                describe(&e)
            ));
        }
    }
    tracing::info!(topic, partitions, replication, "created the Fluvio topic");
    self::partitions(fluvio, topic).await
}

/// An error of Fluvio's client (an `anyhow::Error`) in one line, its
/// causes joined.
fn describe(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_has_one_partition_everywhere() {
        assert_eq!(partition_of("watch-1", 1), 0);
        let p = partition_of("watch-1", 8);
        assert!(p < 8);
        assert_eq!(partition_of("watch-1", 8), p);
        // Spread over partitions, not all on one.
        let used: std::collections::HashSet<u32> = (0..64)
            .map(|i| partition_of(&format!("d-{i}"), 4))
            .collect();
        assert_eq!(used.len(), 4);
        assert_eq!(partition_of("x", 0), 0);
    }

    #[test]
    fn the_partitioner_reads_the_device_from_the_key() {
        use fluvio::Partitioner;
        let config = fluvio::PartitionerConfig {
            partition_count: 4,
            available_partitions: vec![0, 1, 2, 3],
        };
        let key = b"conveyor/v1/watch-7/up/records";
        assert_eq!(
            ByDevice.partition(&config, Some(key), b""),
            partition_of("watch-7", 4)
        );
        assert_eq!(ByDevice.partition(&config, Some(b"\xff"), b""), 0);
        assert_eq!(ByDevice.partition(&config, None, b""), 0);
    }
}
