//! One HTTP/1.1 request to the hub, on its own connection: enough for a
//! CLI, and no HTTP client stack beyond hyper's, which the hub has anyway.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// How long to wait for the hub to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request body and its content type.
pub struct Body {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

impl Body {
    pub fn json(v: &Value) -> Body {
        Body {
            content_type: "application/json".into(),
            bytes: v.to_string().into_bytes(),
        }
    }
}

/// The hub's address from `--hub` (`http[s]://host[:port][/]`).
#[derive(Debug, PartialEq, Eq)]
struct HubAddr {
    /// `host:port`, for the connection and the `Host` header.
    authority: String,
    /// The host alone, which an HTTPS hub's certificate must be for.
    host: String,
    tls: bool,
}

fn authority(hub: &str) -> Result<HubAddr> {
    let bad = || anyhow!("--hub must be http://HOST:PORT or https://HOST:PORT, got {hub:?}");
    let (rest, tls) = match (hub.strip_prefix("http://"), hub.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(bad()),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(bad());
    }
    // `[::1]:8080`, `host:8080`, or a host alone.
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') && (!h.contains(':') || h.ends_with(']')) => {
            (h, p.to_string())
        }
        _ => (rest, if tls { "443" } else { "80" }.to_string()),
    };
    Ok(HubAddr {
        authority: format!("{host}:{port}"),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        tls,
    })
}

/// The environment variable naming the CA an `https://` hub is checked
/// against (a hub's own: `<store>/tls/ca.pem`).
pub const CA_ENV: &str = "CONVEYOR_HUB_CA";

/// The CA for an `https://` hub, from [`CA_ENV`].
fn hub_ca() -> Result<conveyor_transport::tls::ClientTls> {
    let path = std::env::var_os(CA_ENV)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "an https:// hub needs {CA_ENV}: the file of the CA its certificate is signed by \
             (a hub's own CA is <store>/tls/ca.pem; `cloud-hub tls init` prints it)"
            )
        })?;
    conveyor_transport::tls::ClientTls::from_ca_file(std::path::Path::new(&path))
        .map_err(|e| anyhow!("{CA_ENV}: {e}"))
}

/// The environment variable the CLI takes its API token from.
pub const TOKEN_ENV: &str = "CONVEYOR_TOKEN";

/// Sends one request to the hub at `hub`; the status and the body as JSON
/// (a body that is not JSON comes back as `{"error": <its text>}`).
pub async fn request(
    hub: &str,
    method: &str,
    path: &str,
    body: Option<Body>,
) -> Result<(u16, Value)> {
    let addr = authority(hub)?;
    let authority = addr.authority.clone();
    let ca = if addr.tls { Some(hub_ca()?) } else { None };
    let unreachable =
        || format!("cannot reach the hub at {hub} (is it running? --hub or CONVEYOR_HUB names it)");
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&authority))
        .await
        .map_err(|_| anyhow!("{} (timed out)", unreachable()))?
        .with_context(unreachable)?;
    let stream: Box<dyn conveyor_transport::tls::Connection> = match &ca {
        None => Box::new(tcp),
        Some(ca) => Box::new(ca.connect(&addr.host, tcp).await.map_err(|e| {
            match conveyor_transport::tls::explain(&e, ca.source()) {
                Some(why) => anyhow!("TLS with the hub at {hub}: {why}"),
                None => anyhow!("TLS with the hub at {hub}: {e}"),
            }
        })?),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(unreachable)?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, &authority);
    // The API token (`cloud-hub token create`), for a hub that asks.
    if let Some(t) = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {}", t.trim()));
    }
    let bytes = match body {
        Some(b) => {
            request = request.header(hyper::header::CONTENT_TYPE, b.content_type);
            b.bytes
        }
        None => Vec::new(),
    };
    let request = request.body(Full::new(Bytes::from(bytes)))?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{method} {path} on {hub}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({"error": String::from_utf8_lossy(&body).trim()}));
    Ok((status, value))
}

/// An error for a 4xx/5xx answer, with the hub's message.
pub fn check(status: u16, body: &Value, what: &str) -> Result<()> {
    if status >= 400 {
        let e = body
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        bail!("{what}: the hub answered {status}: {e}");
    }
    Ok(())
}

/// A `multipart/form-data` body of `files` (name, bytes), each a part
/// named `file` with its file name.
pub fn multipart(files: &[(String, Vec<u8>)]) -> Result<Body> {
    let mut seed = [0u8; 16];
    getrandom::fill(&mut seed).map_err(|e| anyhow!("no randomness for a form boundary: {e}"))?;
    let boundary = format!("conveyor-{}", hex::encode(seed));
    let mut bytes = Vec::with_capacity(files.iter().map(|(_, b)| b.len() + 256).sum());
    for (name, content) in files {
        // Names are plain file names (the hub refuses others): no quoting.
        bytes.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        bytes.extend_from_slice(content);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Ok(Body {
        content_type: format!("multipart/form-data; boundary={boundary}"),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_are_read_or_refused_clearly() {
        assert_eq!(
            authority("http://127.0.0.1:8080").unwrap().authority,
            "127.0.0.1:8080"
        );
        assert_eq!(authority("http://hub/").unwrap().authority, "hub:80");
        let tls = authority("https://[::1]:8443").unwrap();
        assert_eq!(
            (tls.authority.as_str(), tls.host.as_str(), tls.tls),
            ("[::1]:8443", "::1", true)
        );
        assert_eq!(authority("https://hub").unwrap().authority, "hub:443");
        for bad in ["127.0.0.1:8080", "ftp://hub", "http://", "http://hub/api"] {
            assert!(
                authority(bad).unwrap_err().to_string().contains("--hub"),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_hub_that_is_not_there_is_named() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hub = format!("http://127.0.0.1:{port}");
        let e = request(&hub, "GET", "/api/v1/artifacts", None)
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("is it running? --hub or CONVEYOR_HUB"),
            "{e:#}"
        );
    }
}
