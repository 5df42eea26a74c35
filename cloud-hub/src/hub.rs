//! Starting and stopping a hub: store, broker, ingest, housekeeping, API.
//!
//! `serve` and `demo` both go through [`Hub::start`], so the demo runs
//! exactly the hub a user deploys.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_process::LogEvery;
use conveyor_shared::time::now_us;
use conveyor_transport::hub::HubTransportError;
use conveyor_transport::HubSide;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::cascade::router::Router;
use crate::config::{BrokerMode, HubConfig};
use crate::identity::config::BrokerAuth;
use crate::inference::InferenceService;
use crate::ingest::{HubState, Ingest};
use crate::metrics::HubMetrics;
use crate::registry::{DeviceEntry, Registry};
use crate::store::{self, StoreError};
use conveyor_transport::mqtt::gate::GateAuth;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] HubTransportError),
    #[error(transparent)]
    Ota(#[from] crate::ota::OtaError),
    #[error(transparent)]
    Identity(#[from] crate::identity::file::IdentityError),
    #[error("broker.password_file {}: {source}", path.display())]
    BrokerPassword {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("broker.ca_file: {0}")]
    BrokerCa(#[source] conveyor_transport::tls::TlsError),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Result notifications buffered per live subscriber; a slower one is
/// told how many it missed.
const RESULTS_BROADCAST: usize = 4096;

pub struct Hub {
    pub state: Arc<HubState>,
    /// Where the HTTP API actually listens (resolves port 0).
    pub http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// Tasks that end when `stop` turns true (API, housekeeping). Ingest
    /// is not among them: it ends with the broker connection.
    stoppable: Vec<JoinHandle<()>>,
}

impl Hub {
    /// Starts a hub serving `inference`'s models (load them first with
    /// [`InferenceService::start`], so a bad model is a config error
    /// before any port is bound).
    pub async fn start(config: &HubConfig, inference: InferenceService) -> Result<Hub, HubError> {
        let store = store::open_with(&config.store.path, &config.store.options())?;
        let entries: Vec<DeviceEntry> = store
            .devices()?
            .into_iter()
            .filter_map(|(id, json)| match serde_json::from_slice(&json) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(device = %id, "ignoring unreadable device entry: {e}");
                    None
                }
            })
            .collect();
        let counts = store.device_counts()?;
        let identities = Arc::new(crate::identity::live::LiveIdentities::open(
            crate::identity::file::path(&config.store.path),
        )?);
        let b = &config.broker;
        // One certificate for both listeners that serve TLS.
        let server_tls = if config.serves_tls() {
            Some(crate::tls::server_tls(
                &config.tls,
                &config.store.path,
                &[b.listen, config.http.listen],
            )?)
        } else {
            None
        };
        let side = match (b.mode, &b.url) {
            (BrokerMode::External, Some(url)) => HubSide::External {
                url: url.clone(),
                client_id: b.client_id.clone(),
                login: match (&b.username, &b.password_file) {
                    (Some(user), Some(path)) => {
                        let text = std::fs::read_to_string(path).map_err(|source| {
                            HubError::BrokerPassword {
                                path: path.clone(),
                                source,
                            }
                        })?;
                        Some((
                            user.clone(),
                            conveyor_transport::edge::Password::new(text.trim().to_string()),
                        ))
                    }
                    _ => None,
                },
                tls: match &b.ca_file {
                    Some(ca) if url.tls => Some(
                        conveyor_transport::tls::ClientTls::from_ca_file(ca)
                            .map_err(HubError::BrokerCa)?,
                    ),
                    _ => None,
                },
            },
            // validate() guarantees external mode has a url.
            _ => HubSide::Embedded {
                listen: b.listen,
                max_connections: b.max_connections,
                auth: match b.auth {
                    BrokerAuth::Devices => GateAuth::Devices(Arc::new(
                        crate::identity::live::GateAuthenticator(identities.clone()),
                    )),
                    BrokerAuth::None => GateAuth::Open,
                },
                limits: b.limits.limits(),
                tls: server_tls.clone().filter(|_| b.tls),
            },
        };
        for (field, addr, missing) in config.exposures() {
            if let Some(what) = crate::identity::config::exposed(addr, &missing) {
                tracing::warn!(
                    field,
                    "insecure = true: {what}; anyone who reaches it can use it"
                );
            }
        }
        if let Some(f) = config.fluvio.as_ref().filter(|f| !f.url.is_loopback()) {
            tracing::warn!(
                field = "fluvio.url",
                "insecure = true: {} is beyond loopback, without TLS or device identity; \
                 anyone who reaches the cluster can produce as any device",
                f.url
            );
        }
        let ota = crate::ota::OtaHub::open(&config.ota, &config.store.path)?;
        let connection = conveyor_transport::start_hub(&side)?;
        // validate() refuses [fluvio] in a build without it.
        #[cfg(feature = "fluvio")]
        let connection = match &config.fluvio {
            Some(f) => {
                tracing::info!(cluster = %f.url, records = %f.records, "devices may also stream through Fluvio");
                conveyor_transport::hub::merge(vec![
                    connection,
                    conveyor_transport::fluvio::hub::start(f.hub_side()),
                ])
            }
            None => connection,
        };
        let state = Arc::new(HubState {
            store,
            registry: Mutex::new(Registry::restore(entries, &counts)),
            metrics: HubMetrics::new(inference.metrics()),
            inference,
            results: broadcast::channel(RESULTS_BROADCAST).0,
            broker_mode: connection.mode,
            device_url: connection.device_url.clone(),
            ota,
            publisher: connection.publisher.clone(),
            audit: crate::audit::Audit::open(&config.store.path),
            identities,
            gate: connection.gate.clone(),
            http_auth: config.http.auth,
        });
        state.metrics.ota_skipped.inc_by(state.ota.skipped_at_open);
        // The embedded broker forgets retained messages with the process
        // (and an external one may have lost them): every stored desired
        // state is published again, retained.
        republish_desired(&state, now_us());
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| HubError::HttpBind {
                addr: config.http.listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| HubError::HttpBind {
            addr: config.http.listen,
            source,
        })?;

        let (stop, stop_rx) = watch::channel(false);
        let router = Router::start(state.clone(), connection.publisher.clone());
        // Read before ingest starts: what is pending now was left by the
        // last run.
        let pending = state.store.pending()?;
        {
            let router = router.clone();
            tokio::spawn(async move { router.resume(pending).await });
        }
        tokio::spawn(
            Ingest::new(state.clone(), connection.publisher, router).run(connection.inbound),
        );
        let mut stoppable = vec![tokio::spawn(housekeeping(state.clone(), stop_rx.clone()))];
        let app = crate::api::router(state.clone());
        let mut http_stop = stop_rx;
        let https = server_tls.filter(|_| config.http.tls);
        let http_scheme = if https.is_some() { "https" } else { "http" };
        let shutdown = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        stoppable.push(match https {
            None => tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!("HTTP API stopped: {e}");
                }
            }),
            Some(tls) => {
                let failed = state.metrics.tls_failed("http");
                let listener =
                    crate::https::TlsListener::new(listener, &tls, failed).map_err(|source| {
                        HubError::HttpBind {
                            addr: config.http.listen,
                            source,
                        }
                    })?;
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                    {
                        tracing::error!("HTTPS API stopped: {e}");
                    }
                })
            }
        });
        tracing::info!(
            models = ?state.inference.model_ids(),
            device = %state.inference.device(),
            broker = connection.mode,
            mqtt = %connection.device_url,
            http = %format!("{http_scheme}://{http_addr}"),
            store = %config.store.path.display(),
            "hub running"
        );
        Ok(Hub {
            state,
            http_addr,
            stop,
            stoppable,
        })
    }

    /// Stops the API and housekeeping, persists the registry and flushes
    /// the store. (The embedded broker stops with the process.)
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.stoppable {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        persist_registry(&self.state, &mut 0);
        if let Err(e) = self.state.store.commit() {
            tracing::error!("flushing the store at shutdown: {e}");
        }
    }
}

/// Publishes every device's desired state (retained).
fn republish_desired(state: &HubState, now: i64) {
    let mut store = state.ota.devices();
    let mut sent = 0u64;
    for (id, d) in store.devices.iter_mut() {
        let (Some(desired), Ok(device)) = (&d.desired, conveyor_shared::DeviceId::new(id.clone()))
        else {
            continue;
        };
        d.published_at_us = Some(now);
        match state.publisher.desired(&device, desired.envelope.clone()) {
            Ok(()) => sent += 1,
            Err(e) => tracing::warn!(device = %id, "could not publish the desired state: {e}"),
        }
    }
    state.metrics.desired_published.inc_by(sent);
    if sent > 0 {
        tracing::info!(
            devices = sent,
            "published the stored desired states again (retained)"
        );
    }
}

/// Saves the changed device entries; `failures` counts the ones that
/// could not be, for rate-limiting the log while the store cannot write.
fn persist_registry(state: &HubState, failures: &mut u64) {
    let dirty = state.registry().take_dirty();
    for entry in dirty {
        let json = serde_json::to_vec(&entry).expect("entry serialises");
        if let Err(e) = state.store.put_device(&entry.device_id, &json) {
            *failures += 1;
            if LogEvery::FIRST_10_THEN_EVERY_1000.should_log(*failures) {
                tracing::error!(device = %entry.device_id, failures = *failures, "could not persist device entry: {e}");
            }
        }
    }
}

/// Reads `identity.json` again if it changed; cuts revoked devices off.
fn reload_identities(state: &HubState, failures: &mut u64) {
    match state.identities.reload_if_changed() {
        Ok(revoked) => {
            for device in revoked {
                let cut = state.gate.as_ref().is_some_and(|g| g.cut_off(&device));
                tracing::warn!(device = %device, connected = cut, "device revoked: refused from now on");
            }
        }
        Err(e) => {
            *failures += 1;
            if LogEvery::FIRST_10_THEN_EVERY_1000.should_log(*failures) {
                tracing::error!(
                    failures = *failures,
                    "cannot read the identities again, keeping the last good ones: {e}"
                );
            }
        }
    }
    if let Some(g) = &state.gate {
        state.metrics.observe_gate(&g.counters());
    }
}

/// Once a second: refresh gauges, persist changed device entries and make
/// the store's latest writes durable.
async fn housekeeping(state: Arc<HubState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // While the store cannot write these fail every second: the store
    // logs the fault once, these are rate-limited.
    let (mut persist_failures, mut commit_failures, mut identity_failures) = (0, 0, 0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (online, known, rate, (faulted, full)) = {
            let r = state.registry();
            (
                r.online(),
                r.known(),
                r.total_rate(now_us()),
                r.storage_faults(),
            )
        };
        state.metrics.devices_online.set(online as i64);
        state.metrics.devices_known.set(known as i64);
        state.metrics.devices_storage_fault.set(faulted as i64);
        state.metrics.devices_log_disk_full.set(full as i64);
        state.metrics.ingest_rate.set(rate);
        persist_registry(&state, &mut persist_failures);
        reload_identities(&state, &mut identity_failures);
        // Rollouts: soaks end, devices time out, waves start.
        crate::rollout::driver::tick(&state, now_us());
        // What was written outside ingest's group commits (device entries,
        // the hub's answers to escalations) becomes durable within a second;
        // a commit with nothing new to write costs nothing.
        let store = state.store.clone();
        // (Also where a store that failed reopens itself, off the async
        // threads, even when no device sends anything.)
        let failed = match tokio::task::spawn_blocking(move || store.commit()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("could not make the store durable: {e}")),
            Err(e) => Some(format!("making the store durable: {e}")),
        };
        if let Some(what) = failed {
            commit_failures += 1;
            if LogEvery::FIRST_10_THEN_EVERY_1000.should_log(commit_failures) {
                tracing::error!(failures = commit_failures, "{what}");
            }
        }
    }
}
