//! Downloads from the hub's HTTP API: a signed manifest, and an artifact's
//! files, resumed with `Range` from what is already on disk.
//!
//! One plain HTTP/1.1 request per connection (hyper's connection API, no
//! pool: an agent downloads rarely), every step under a timeout, every
//! size bounded by what the signed manifest says: a hub (or anything in
//! between) that sends more than that is cut off, and what it sent is
//! checked against the digest before it is used.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use conveyor_shared::ota::{ArtifactFile, ArtifactId};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::config::HubHttp;

/// Largest manifest accepted (the envelope's own bound).
const MAX_MANIFEST_BYTES: usize = 256 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the response head or the next piece of a body.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The hub cannot be reached or the connection broke: worth a retry.
    #[error("hub unreachable at {at}: {why}")]
    Unreachable { at: String, why: String },
    /// The hub answered with an error.
    #[error("the hub answered {status} for {path}: {body}")]
    Status {
        status: u16,
        path: String,
        body: String,
    },
    #[error("{path}: the hub sent more than the {limit} bytes expected")]
    TooLong { path: String, limit: u64 },
    /// Writing the download failed (a full disk, an unwritable cache).
    #[error("writing {file}: {source}")]
    Disk {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// Worth retrying later, with what is on disk kept.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Unreachable { .. } => true,
            FetchError::Status { status, .. } => *status >= 500,
            FetchError::TooLong { .. } | FetchError::Disk { .. } => false,
        }
    }
}

#[derive(Clone)]
pub struct HubClient {
    hub: HubHttp,
    /// The CA an `https://` hub is checked against (`uplink.ca_file`).
    tls: Option<conveyor_transport::tls::ClientTls>,
    /// The device's secret, sent as a bearer token (a hub with API tokens
    /// lets a device read artifacts and keys with it).
    secret: Option<String>,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

type Response = hyper::Response<hyper::body::Incoming>;

impl HubClient {
    pub fn new(hub: HubHttp) -> Self {
        HubClient {
            hub,
            tls: None,
            secret: None,
        }
    }

    /// Checks an `https://` hub's certificate against `tls`'s CA.
    pub fn with_tls(mut self, tls: Option<conveyor_transport::tls::ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Sends `secret` with every request.
    pub fn with_secret(mut self, secret: Option<String>) -> Self {
        self.secret = secret;
        self
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> FetchError {
        FetchError::Unreachable {
            at: self.hub.authority(),
            why: why.to_string(),
        }
    }

    async fn get(&self, path: &str, from: u64) -> Result<Response, FetchError> {
        let addr = (self.hub.host.as_str(), self.hub.port);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| self.unreachable("connect timed out"))?
            .map_err(|e| self.unreachable(e))?;
        let stream: Box<dyn conveyor_transport::tls::Connection> = match (&self.tls, self.hub.tls) {
            (_, false) => Box::new(stream),
            (None, true) => return Err(self.unreachable("an https:// hub needs uplink.ca_file")),
            (Some(ca), true) => Box::new(
                tokio::time::timeout(CONNECT_TIMEOUT, ca.connect(&self.hub.host, stream))
                    .await
                    .map_err(|_| self.unreachable("the TLS handshake timed out"))?
                    .map_err(|e| {
                        self.unreachable(
                            conveyor_transport::tls::explain(&e, ca.source())
                                .map_or_else(|| format!("TLS: {e}"), |why| format!("TLS: {why}")),
                        )
                    })?,
            ),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(async move {
            // Ends with the response body (or an error the body reports).
            let _ = connection.await;
        });
        let mut request = Request::get(path)
            .header(hyper::header::HOST, self.hub.authority())
            .header(
                hyper::header::USER_AGENT,
                concat!("conveyor-edge-agent/", env!("CARGO_PKG_VERSION")),
            );
        if from > 0 {
            request = request.header(hyper::header::RANGE, format!("bytes={from}-"));
        }
        if let Some(s) = &self.secret {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {s}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| self.unreachable(e))?;
        tokio::time::timeout(IDLE_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| self.unreachable("no response in time"))?
            .map_err(|e| self.unreachable(e))
    }

    /// The next piece of a body, `None` at its end.
    async fn next_chunk(
        &self,
        body: &mut hyper::body::Incoming,
    ) -> Result<Option<Bytes>, FetchError> {
        loop {
            let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
                .await
                .map_err(|_| self.unreachable("the download stalled"))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(self.unreachable(e)),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// A whole (small) body, at most `limit` bytes.
    async fn read_body(
        &self,
        mut response: Response,
        path: &str,
        limit: usize,
    ) -> Result<Vec<u8>, FetchError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk(response.body_mut()).await? {
            if out.len() + chunk.len() > limit {
                return Err(FetchError::TooLong {
                    path: path.into(),
                    limit: limit as u64,
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn error_of(&self, response: Response, path: &str) -> FetchError {
        let status = response.status().as_u16();
        let body = self
            .read_body(response, path, 4096)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        // The API's errors are `{"error": "..."}`.
        let body = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(body);
        FetchError::Status {
            status,
            path: path.into(),
            body,
        }
    }

    /// The signed manifest of artifact `id`, as the hub stored it.
    pub async fn manifest(&self, id: &ArtifactId) -> Result<Vec<u8>, FetchError> {
        let path = format!("/api/v1/artifacts/{id}/manifest");
        let response = self.get(&path, 0).await?;
        if response.status() != StatusCode::OK {
            return Err(self.error_of(response, &path).await);
        }
        self.read_body(response, &path, MAX_MANIFEST_BYTES).await
    }

    /// Downloads `file` of artifact `id` into `dest`, resuming from what
    /// `dest` already holds; `progress` is told the bytes added as they
    /// arrive. Stops at the manifest's size; the caller checks the digest.
    pub async fn download(
        &self,
        id: &ArtifactId,
        file: &ArtifactFile,
        dest: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<(), FetchError> {
        let disk = |source| FetchError::Disk {
            file: file.name.clone(),
            source,
        };
        let mut have = match tokio::fs::metadata(dest).await {
            Ok(m) if m.len() <= file.size => m.len(),
            // Longer than it should be: start again.
            Ok(_) => {
                tokio::fs::remove_file(dest).await.map_err(disk)?;
                0
            }
            Err(_) => 0,
        };
        if have == file.size {
            return Ok(());
        }
        let path = format!("/api/v1/artifacts/{id}/files/{}", file.name);
        let mut response = self.get(&path, have).await?;
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dest)
            .await
            .map_err(disk)?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK => {
                // The whole file: the hub did not resume.
                if have > 0 {
                    out.set_len(0).await.map_err(disk)?;
                    have = 0;
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // What is on disk is not a prefix the hub knows: again.
                out.set_len(0).await.map_err(disk)?;
                drop(out);
                return Box::pin(self.download(id, file, dest, progress)).await;
            }
            _ => return Err(self.error_of(response, &path).await),
        }
        if have > 0 {
            progress(have);
        }
        while let Some(chunk) = self.next_chunk(response.body_mut()).await? {
            if have + chunk.len() as u64 > file.size {
                return Err(FetchError::TooLong {
                    path,
                    limit: file.size,
                });
            }
            out.write_all(&chunk).await.map_err(disk)?;
            have += chunk.len() as u64;
            progress(chunk.len() as u64);
        }
        out.flush().await.map_err(disk)?;
        out.sync_all().await.map_err(disk)?;
        if have < file.size {
            return Err(self.unreachable(format!(
                "{path}: the download ended at {have} of {} bytes",
                file.size
            )));
        }
        Ok(())
    }
}
