//! MQTT 3.1.1 (and 5 at the gate), over TCP or TLS, the one transport today: the client options and the
//! pkid-collision fix (written once, here), the edge link ([`edge`]), the
//! hub's client of an external broker ([`external`]) and the hub's embedded
//! rumqttd ([`embedded`], feature `embedded-broker`).
//!
//! The rule every MQTT event loop here keeps: it never waits on the code
//! it feeds. rumqttc's request queue is drained only by its event loop, so
//! an event loop that awaits a full channel of ours while our task awaits
//! room in rumqttc's queue deadlocks. Hence unbounded (or, at the hub,
//! bounded but never awaited by the publisher) channels, `try_publish`, and
//! subscriptions after a reconnect made from a spawned task. The fault
//! tests found each of these stalls.

use std::time::Duration;

use conveyor_shared::records::MAX_BATCH_BYTES;
use conveyor_shared::BrokerUrl;
use rumqttc::{ConnAck, EventLoop, MqttOptions};

pub mod edge;
#[cfg(feature = "embedded-broker")]
pub mod embedded;
pub mod external;
#[cfg(feature = "embedded-broker")]
pub mod gate;

/// Largest MQTT packet accepted or sent: the protocol's batch limit plus
/// headroom for the topic and header.
pub const MAX_PACKET_BYTES: usize = MAX_BATCH_BYTES + 4096;

/// Options for a plain-TCP MQTT 3.1.1 connection to `url`, for every MQTT
/// client of Conveyor (the uplink, the MQTT source, the hub's external
/// client).
///
/// Packet limits are raised from rumqttc's 10 KiB default to the protocol's
/// batch limit plus headroom for the topic and header.
pub fn options(client_id: &str, url: &BrokerUrl, keep_alive: Duration) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, url.host.clone(), url.port);
    options.set_keep_alive(keep_alive);
    options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    options
}

/// Makes `options` connect over TLS, trusting only `tls`'s CA; the
/// broker's certificate must be for the URL's host.
pub fn use_tls(options: &mut MqttOptions, tls: &crate::tls::ClientTls) {
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls.config()),
    ));
}

/// A connection error in words: a failed TLS handshake explained (see
/// [`crate::tls::explain`]), anything else as rumqttc says it.
pub fn describe(e: &rumqttc::ConnectionError, tls: Option<&crate::tls::ClientTls>) -> String {
    tls.and_then(|t| crate::tls::explain(e, t.source()))
        .map_or_else(|| e.to_string(), |why| format!("TLS: {why}"))
}

/// Call on every ConnAck. A reconnect with a fresh session clears
/// rumqttc's pkid collision: rumqttc 0.25 keeps a pkid "collision" from the
/// lost session, and while it is set the event loop takes no new requests:
/// the connection would be up but silent forever. The colliding publish is
/// one the protocol re-sends anyway (a batch the agent's log re-sends, or
/// an ack the agent's timeout makes up for).
pub fn clear_stale_collision(eventloop: &mut EventLoop, ack: &ConnAck) {
    if !ack.session_present {
        eventloop.state.collision = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_take_a_whole_batch() {
        let url = BrokerUrl::parse("mqtt://127.0.0.1:1884").unwrap();
        let o = options("dev", &url, Duration::from_secs(7));
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1884));
        assert_eq!(o.keep_alive(), Duration::from_secs(7));
        assert_eq!(o.max_packet_size(), MAX_PACKET_BYTES);
        assert!(o.clean_session());
    }
}
