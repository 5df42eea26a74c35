//! `type = "mqtt"`: subscribes to a local broker (the shop floor's, not the
//! hub's) and turns each JSON message into a reading.
//!
//! The MQTT event loop is polled here; a broken connection is retried every
//! second without ending the source. A malformed message is rejected with
//! a counter and a log line and never stops the loop.

use std::time::Duration;

use conveyor_shared::time::now_us;
use conveyor_shared::BrokerUrl;
use conveyor_transport::mqtt::options as mqtt_options;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::json_reading::JsonReadingSpec;
use super::{Source, SourceContext, SourceFuture, SourceOutput};
use crate::config::ConfigError;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    pub name: String,
    /// Stream name of the records; defaults to `name`.
    pub stream: Option<String>,
    /// The local broker, e.g. `mqtt://127.0.0.1:1883`.
    pub url: BrokerUrl,
    /// Topic filter to subscribe to; wildcards allowed.
    pub topic: String,
    /// JSON fields to read, in order (may be empty with `keep_payload`).
    #[serde(default)]
    pub fields: Vec<String>,
    /// JSON field holding the reading's time (ms since the epoch), if any.
    pub timestamp_field: Option<String>,
    /// Keep the whole JSON document as the record's payload (e.g. a
    /// point-of-sale receipt for a redaction transform).
    #[serde(default)]
    pub keep_payload: bool,
    /// MQTT client id; defaults to `<device_id>-src-<name>`.
    pub client_id: Option<String>,
}

impl MqttSourceConfig {
    /// An MQTT source `name` subscribed to `topic` on the broker at `url`,
    /// reading `fields`, every other setting at its default.
    pub fn new(name: &str, url: BrokerUrl, topic: &str, fields: &[&str]) -> Self {
        MqttSourceConfig {
            name: name.into(),
            stream: None,
            url,
            topic: topic.into(),
            fields: fields.iter().map(|f| f.to_string()).collect(),
            timestamp_field: None,
            keep_payload: false,
            client_id: None,
        }
    }

    fn spec(&self) -> JsonReadingSpec<'_> {
        JsonReadingSpec {
            fields: &self.fields,
            timestamp_field: self.timestamp_field.as_deref(),
            keep_payload: self.keep_payload,
        }
    }

    pub(super) fn validate(&self, field: &str, found: &mut Vec<ConfigError>) {
        if self.topic.is_empty() {
            found.push(ConfigError::invalid(
                format!("{field}.topic"),
                "must not be empty",
            ));
        }
        self.spec().check(field, found);
    }

    pub(super) fn build(
        &self,
        _field: &str,
        ctx: &SourceContext,
    ) -> Result<Box<dyn Source>, ConfigError> {
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{}-src-{}", ctx.device_id, self.name));
        Ok(Box::new(MqttSource {
            config: self.clone(),
            client_id,
        }))
    }
}

struct MqttSource {
    config: MqttSourceConfig,
    client_id: String,
}

impl Source for MqttSource {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn run(
        self: Box<Self>,
        out: SourceOutput,
        mut shutdown: watch::Receiver<bool>,
    ) -> SourceFuture {
        Box::pin(async move {
            let c = &self.config;
            let options = mqtt_options(&self.client_id, &c.url, Duration::from_secs(10));
            let (client, mut eventloop) = AsyncClient::new(options, 64);
            let spec = c.spec();
            loop {
                let event = tokio::select! {
                    e = eventloop.poll() => e,
                    _ = shutdown.changed() => break,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!(source = %c.name, url = %c.url, topic = %c.topic, "connected to local broker");
                        // Subscribing on every ConnAck also restores the
                        // subscription after a reconnect with a clean session.
                        if let Err(e) = client.subscribe(c.topic.clone(), QoS::AtLeastOnce).await {
                            tracing::warn!(source = %c.name, "subscribe failed: {e}");
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => match spec.parse_bytes(&p.payload) {
                        Ok(reading) => {
                            let ts = reading.ts_us.unwrap_or_else(now_us);
                            if out
                                .emit(ts, reading.values, String::new(), reading.payload)
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        Err(e) => out.reject(&format_args!("topic {}: {e}", p.topic)),
                    },
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(source = %c.name, url = %c.url, "local broker connection: {e}; retrying in 1 s");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = shutdown.changed() => break,
                        }
                    }
                }
            }
            let _ = client.try_disconnect();
            Ok(())
        })
    }
}
