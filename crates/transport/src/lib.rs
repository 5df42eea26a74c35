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
//! - [`mqtt`]: MQTT: the client options and the pkid-collision fix (once
//!   each), the edge link, the hub's external-broker client and (feature
//!   `embedded-broker`) the embedded rumqttd.
//! - [`fluvio`] (feature `fluvio`): Fluvio: the edge link, and the hub's
//!   reader of the records topic, which [`hub::merge`] sets beside the MQTT
//!   side for a mixed fleet.
//!
//! Wire types live only in `conveyor-shared`; this crate moves them.
//!
//! A transport is one module beside [`mqtt`] and one arm in
//! [`connect_edge`] (and, for the hub, in `cloud-hub`'s start-up).

pub mod edge;
#[cfg(feature = "fluvio")]
pub mod fluvio;
pub mod hub;
pub mod mqtt;
pub mod tls;

pub use conveyor_shared::topics::TopicError;
use conveyor_shared::uplink_url::FluvioTopics;
use conveyor_shared::{BrokerUrl, UplinkUrl};

/// Whether this build carries the Fluvio transport (feature `fluvio`):
/// configs check it before any I/O.
pub const FLUVIO: bool = cfg!(feature = "fluvio");

/// Why a link cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "{0} needs the Fluvio transport, which this build leaves out (cargo feature `fluvio`)"
    )]
    NotBuilt(String),
}

/// Connects an edge agent to the hub at `url` (in the background: the link
/// reconnects by itself and reports it in its events). `fluvio` names the
/// topics of a `fluvio://` link.
pub fn connect_edge(
    url: &UplinkUrl,
    fluvio: &FluvioTopics,
    options: edge::EdgeLinkOptions,
) -> Result<edge::EdgeLinkParts, LinkError> {
    match url {
        UplinkUrl::Mqtt(url) => Ok(mqtt::edge::connect(url, options)),
        #[cfg(feature = "fluvio")]
        UplinkUrl::Fluvio(url) => Ok(fluvio::edge::connect(url, fluvio, options)),
        #[cfg(not(feature = "fluvio"))]
        UplinkUrl::Fluvio(url) => {
            let _ = fluvio;
            Err(LinkError::NotBuilt(url.to_string()))
        }
    }
}

/// What `check` says of a Fluvio cluster: it answers at `url`, and each
/// of `topics` has this many partitions (`None`: it is not there).
pub async fn probe_fluvio(
    url: &conveyor_shared::FluvioUrl,
    topics: &[&str],
) -> Result<Vec<(String, Option<u32>)>, String> {
    #[cfg(feature = "fluvio")]
    {
        let client = fluvio::connect(url, "conveyor-check").await?;
        let mut out = Vec::new();
        for t in topics {
            out.push((t.to_string(), fluvio::partitions(&client, t).await.ok()));
        }
        Ok(out)
    }
    #[cfg(not(feature = "fluvio"))]
    {
        let _ = topics;
        Err(LinkError::NotBuilt(url.to_string()).to_string())
    }
}

/// `check`'s probe of a Fluvio cluster at `url` and its `topics` (on a
/// runtime of its own): the lines to print, or why it is out of reach.
pub fn check_fluvio(
    url: &conveyor_shared::FluvioUrl,
    topics: &[&str],
) -> Result<Vec<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let found = rt.block_on(probe_fluvio(url, topics))?;
    Ok(found
        .into_iter()
        .map(|(topic, partitions)| match partitions {
            Some(n) => format!("  fluvio {url}: topic {topic}, {n} partition(s)"),
            None => format!("  fluvio {url}: topic {topic} is not there yet (the hub makes it when it starts with [fluvio])"),
        })
        .collect())
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
        } => Ok(mqtt::external::start(
            url,
            client_id,
            login.as_ref(),
            tls.as_ref(),
        )),
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
