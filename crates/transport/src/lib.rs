//! Conveyor's transport seam: what carries `shared`'s wire types between
//! an edge agent and the hub, and the one place a transport is chosen.
//!
//! - [`edge`]: an edge link. It publishes record batches without blocking,
//!   heartbeats best effort, announces the device's status (online on every
//!   connect, offline as the last will and in the goodbye), and reports
//!   [`edge::LinkEvent`]s: connected (and whether the session was resumed),
//!   disconnected, and downlink messages decoded into `shared` values (acks,
//!   results, desired state). [`edge::EdgeLink::goodbye`] is the orderly close.
//! - [`hub`]: the hub's device side. Every message on a device topic arrives
//!   as a [`hub::Inbound`] (the topic parsed into device id and kind) over one
//!   bounded channel, or as the [`TopicError`] of a topic that does not
//!   parse; a non-blocking [`hub::Publisher`] sends acks and results to a
//!   device; [`hub::HubConnection`] says how devices reach the hub.
//! - [`mqtt`]: MQTT, the one transport today: the client options and the
//!   pkid-collision fix (once each), the edge link, the hub's external-broker
//!   client and (feature `embedded-broker`) the embedded rumqttd.
//!
//! Wire types live only in `conveyor-shared`; this crate moves them.
//!
//! A second transport (Fluvio is next) is one module beside [`mqtt`] and one
//! arm in [`Transport`]'s registration below.

pub mod edge;
pub mod hub;
pub mod mqtt;
pub mod tls;

pub use conveyor_shared::topics::TopicError;
use conveyor_shared::BrokerUrl;

/// The transports this build knows. The registration point: [`Transport::of`]
/// picks one from a URL, and [`connect_edge`] / [`start_hub`] dispatch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `mqtt://` (and `tcp://`), MQTT 3.1.1 over plain TCP; `mqtts://`
    /// (and `ssl://`) over TLS.
    Mqtt,
}

impl Transport {
    /// The transport a URL names by its scheme. `BrokerUrl::parse` accepts
    /// only MQTT's schemes today, so every URL is MQTT; a new transport
    /// adds its scheme there and its arm here.
    pub fn of(_url: &BrokerUrl) -> Transport {
        Transport::Mqtt
    }
}

/// Connects an edge agent to the hub at `url` (in the background: the link
/// reconnects by itself and reports it in its events).
pub fn connect_edge(url: &BrokerUrl, options: edge::EdgeLinkOptions) -> edge::EdgeLinkParts {
    match Transport::of(url) {
        Transport::Mqtt => mqtt::edge::connect(url, options),
    }
}

/// Which device side the hub runs.
#[derive(Debug, Clone)]
pub enum HubSide {
    /// The hub is a client of a broker the devices also talk to, with a
    /// username and password where the broker asks for them.
    External {
        url: BrokerUrl,
        client_id: String,
        login: Option<(String, edge::Password)>,
        /// The CA the broker's certificate is checked against (`mqtts://`).
        tls: Option<tls::ClientTls>,
    },
    /// The hub runs the broker itself, in process (MQTT, rumqttd).
    #[cfg(feature = "embedded-broker")]
    Embedded {
        listen: std::net::SocketAddr,
        max_connections: usize,
        /// Who may connect, and what they may touch.
        auth: mqtt::gate::GateAuth,
        limits: mqtt::gate::Limits,
        /// The devices' listener speaks TLS with this certificate.
        tls: Option<tls::ServerTls>,
    },
}

/// Starts the hub's device side.
pub fn start_hub(side: &HubSide) -> Result<hub::HubConnection, hub::HubTransportError> {
    match side {
        HubSide::External {
            url,
            client_id,
            login,
            tls,
        } => match Transport::of(url) {
            Transport::Mqtt => Ok(mqtt::external::start(
                url,
                client_id,
                login.as_ref(),
                tls.as_ref(),
            )),
        },
        #[cfg(feature = "embedded-broker")]
        HubSide::Embedded {
            listen,
            max_connections,
            auth,
            limits,
            tls,
        } => mqtt::embedded::start(
            *listen,
            *max_connections,
            auth.clone(),
            *limits,
            tls.clone(),
        ),
    }
}
