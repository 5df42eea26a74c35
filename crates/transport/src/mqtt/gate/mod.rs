//! The gate: the embedded broker's only door to devices.
//!
//! rumqttd 0.20 checks a username and password at connect, and nothing
//! after: any client may publish to any topic and subscribe to `#`. So
//! devices never reach rumqttd directly. The gate listens on the hub's
//! MQTT address, and for each connection:
//!
//! 1. reads the CONNECT (MQTT 3.1.1 or 5: the protocol level picks the
//!    codec and the inner listener), authenticates its credentials with
//!    the hub's [`Authenticator`], and checks its client id and last will
//!    against [`policy`];
//! 2. connects to rumqttd on a loopback port with the hub's own secret
//!    (rumqttd refuses anyone without it, so a local process cannot go
//!    round the gate either) in place of the device's credentials;
//! 3. relays every packet the device sends only after decoding it
//!    (rumqttd's own codec) and checking it: a PUBLISH to a topic that is
//!    not the device's own uplink, or a SUBSCRIBE to anything but its own
//!    `down/`, closes the connection (counted and logged with the
//!    device's id) before a byte of it reaches the broker;
//! 4. paces what a device sends by its [`limits`]: over its rate the
//!    gate stops reading from it, so TCP slows it down and the other
//!    devices' messages keep flowing.
//!
//! What the broker sends back is relayed as it is: the device can only
//! have subscribed to its own topics.
//!
//! Why this holds: every byte from a device passes [`session`]'s checks
//! before it is written to the broker (frames are checked whole, then the
//! same bytes are forwarded, so what was checked is what the broker
//! decodes); rumqttd's listeners are on loopback and refuse connections
//! without a secret that exists only in this process; the hub's own
//! client is an in-process link, not a connection.
//!
//! With TLS (`tls`), the gate is where it ends: each connection's
//! handshake runs on its own task (bounded by a timeout, so a client that
//! stalls mid-handshake holds nothing but its socket), and the session
//! above then reads the decrypted stream exactly as it reads a plain one.
//! A failed handshake is counted and logged with what the client said.
//!
//! With [`GateAuth::Open`] (a loopback hub, or `insecure = true`) no
//! credentials are asked and no topic is checked, as with a bare broker;
//! the limits still apply.

pub mod limits;
pub mod policy;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use conveyor_shared::DeviceId;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use limits::Limits;

/// Why credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefused {
    #[error("no username and password")]
    NoCredentials,
    #[error("unknown device")]
    Unknown,
    #[error("wrong secret")]
    Wrong,
    #[error("the device is revoked")]
    Revoked,
}

impl AuthRefused {
    pub fn kind(self) -> &'static str {
        match self {
            AuthRefused::NoCredentials => "no_credentials",
            AuthRefused::Unknown => "unknown_device",
            AuthRefused::Wrong => "bad_credentials",
            AuthRefused::Revoked => "revoked",
        }
    }
}

/// Checks a device's credentials (the hub's device identities).
pub trait Authenticator: Send + Sync + 'static {
    /// The device `username` and `password` prove, or why not. Never
    /// logs the password.
    fn authenticate(&self, username: &str, password: &str) -> Result<DeviceId, AuthRefused>;
}

#[derive(Clone, Default)]
pub enum GateAuth {
    /// No credentials, no topic checks (a loopback hub, or `insecure`).
    #[default]
    Open,
    /// Each device proves who it is and may touch only its own topics.
    Devices(Arc<dyn Authenticator>),
}

impl std::fmt::Debug for GateAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GateAuth::Open => "Open",
            GateAuth::Devices(_) => "Devices",
        })
    }
}

/// What the gate counted, for the hub's metrics.
#[derive(Debug, Default)]
pub struct GateCounters {
    pub accepted: AtomicU64,
    /// Connections refused at CONNECT, by reason.
    pub refused: Mutex<HashMap<&'static str, u64>>,
    /// Connections closed for a publish or subscribe not allowed.
    pub denied: Mutex<HashMap<&'static str, u64>>,
    /// Times a device was made to wait for its rate, and for how long.
    pub throttled: AtomicU64,
    pub throttled_us: AtomicU64,
    /// Connections closed for a malformed or oversized packet.
    pub malformed: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failed: AtomicU64,
}

impl GateCounters {
    pub(crate) fn refuse(&self, why: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(why)
            .or_default() += 1;
    }

    pub(crate) fn deny(&self, why: &'static str) {
        *self
            .denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(why)
            .or_default() += 1;
    }

    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        let m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn denied(&self) -> Vec<(&'static str, u64)> {
        let m = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn throttled(&self) -> (u64, u64) {
        (
            self.throttled.load(Ordering::Relaxed),
            self.throttled_us.load(Ordering::Relaxed),
        )
    }
}

/// Where the gate forwards to: rumqttd's loopback listeners and the
/// secret they ask for.
#[derive(Debug, Clone)]
pub(crate) struct Inner {
    pub v4: SocketAddr,
    pub v5: SocketAddr,
    pub username: String,
    pub password: String,
}

/// Per device: its rate and connection attempts (shared by its
/// connections), and a way to cut its live connections off.
#[derive(Default)]
pub(crate) struct Devices {
    pub rates: HashMap<String, limits::Rate>,
    pub attempts: HashMap<String, limits::Attempts>,
    pub live: HashMap<String, watch::Sender<bool>>,
}

pub(crate) struct Shared {
    pub auth: GateAuth,
    pub limits: Limits,
    pub inner: Inner,
    pub max_packet: usize,
    pub counters: Arc<GateCounters>,
    pub devices: Mutex<Devices>,
}

impl Shared {
    pub fn devices(&self) -> std::sync::MutexGuard<'_, Devices> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running gate, as the hub holds it.
#[derive(Clone)]
pub struct GateHandle {
    shared: Arc<Shared>,
}

impl GateHandle {
    pub fn counters(&self) -> Arc<GateCounters> {
        self.shared.counters.clone()
    }

    /// Closes every live connection of `device` (it was revoked); true
    /// if there was one.
    pub fn cut_off(&self, device: &str) -> bool {
        let d = self.shared.devices();
        match d.live.get(device) {
            Some(tx) => tx.send(true).is_ok(),
            None => false,
        }
    }
}

/// A TLS handshake must be done this soon after the TCP connect.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts the gate on `listener`, forwarding to `inner`; over TLS with
/// `tls`'s certificate.
pub(crate) fn start(
    listener: std::net::TcpListener,
    auth: GateAuth,
    limits: Limits,
    inner: Inner,
    max_packet: usize,
    tls: Option<crate::tls::ServerTls>,
) -> std::io::Result<GateHandle> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let shared = Arc::new(Shared {
        auth,
        limits,
        inner,
        max_packet,
        counters: Arc::default(),
        devices: Mutex::default(),
    });
    let accepting = shared.clone();
    let acceptor = tls.map(|t| t.acceptor());
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = accepting.clone();
                    let Some(acceptor) = acceptor.clone() else {
                        let (r, w) = stream.into_split();
                        tokio::spawn(session::run(r, w, peer, shared));
                        continue;
                    };
                    tokio::spawn(async move {
                        let handshake =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                        match handshake {
                            Ok(Ok(tls)) => {
                                let (r, w) = tokio::io::split(tls);
                                session::run(r, w, peer, shared).await;
                            }
                            Ok(Err(e)) => {
                                shared.counters.tls_failed.fetch_add(1, Ordering::Relaxed);
                                let why = crate::tls::server_side(&e);
                                tracing::warn!(%peer, "TLS handshake failed: {why}");
                            }
                            Err(_) => {
                                shared.counters.tls_failed.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(%peer, "TLS handshake timed out");
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!("the MQTT gate cannot accept a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(GateHandle { shared })
}
