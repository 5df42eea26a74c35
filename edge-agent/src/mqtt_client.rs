//! MQTT client options shared by the uplink and the MQTT source.

use std::time::Duration;

use conveyor_shared::records::MAX_BATCH_BYTES;
use conveyor_shared::BrokerUrl;
use rumqttc::MqttOptions;

/// Options for a plain-TCP MQTT 3.1.1 connection to `url`.
///
/// Packet limits are raised from rumqttc's 10 KiB default to the protocol's
/// batch limit plus headroom for the topic and header.
pub fn mqtt_options(client_id: &str, url: &BrokerUrl, keep_alive: Duration) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, url.host.clone(), url.port);
    options.set_keep_alive(keep_alive);
    options.set_max_packet_size(MAX_BATCH_BYTES + 4096, MAX_BATCH_BYTES + 4096);
    options
}
