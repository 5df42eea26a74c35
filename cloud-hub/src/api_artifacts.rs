//! The HTTP routes of the artifact registry (OTA): the hub's public key,
//! pushes, listings, and the downloads agents make.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/keys` | the hub's public signing key(s): `{"keys":[{"public","id"}]}`, what agents trust |
//! | `POST /api/v1/artifacts` | push, `multipart/form-data`, parts named `file` (filename = the artifact's file name): a model's `.json` and `.onnx`, or one `.wasm`. Checked as the agent will, signed, stored. 201 new, 200 the same again, 409 name@version taken by other contents, 422 refused (the checker's reason), 413 over `ota.max_artifact_bytes`, 400 not such a form |
//! | `GET /api/v1/artifacts` | `{"artifacts":[{id, kind, name, version, files, requires, created_at_us, signed_by, size_bytes}]}` |
//! | `GET /api/v1/artifacts/{ref}` | one, by id or `name@version` |
//! | `GET /api/v1/artifacts/{id}/manifest` | the signed manifest, byte for byte as agents verify it |
//! | `GET /api/v1/artifacts/{id}/files/{name}` | a file, streamed, with `ETag: "<sha256>"`; `Range: bytes=N-` / `N-M` / `-N` answered 206 (resumable downloads), 416 when unsatisfiable |
//!
//! A push is received into a staging directory beside the registry,
//! hashed as it streams in and bounded as it comes (nothing is held in
//! memory whole), then checked off the async threads.

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use conveyor_shared::ota::{ArtifactId, SignedManifest, MANIFEST_TYPE};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::api::{error, ApiError};
use crate::ingest::HubState;
use crate::ota::check::{bad_name, is_plain_file_name, refused};
use crate::ota::range::{self, Ranged};
use crate::ota::registry::StagedFile;
use crate::ota::PushError;

/// Most parts one push may have.
const MAX_PARTS: usize = conveyor_shared::ota::manifest::MAX_FILES;
/// Bytes read from a file per chunk of a download.
const CHUNK: usize = 64 * 1024;

pub async fn keys(State(s): State<Arc<HubState>>) -> Json<Value> {
    let public = s.ota.public_key();
    Json(json!({"keys": [{"public": public.to_string(), "id": public.id()}]}))
}

/// An artifact as the API shows it.
pub fn view(m: &SignedManifest) -> Value {
    let man = &m.manifest;
    json!({
        "id": m.id,
        "kind": man.kind,
        "name": man.name,
        "version": man.version,
        "files": man.files,
        "requires": man.requires,
        "created_at_us": man.created_at_us,
        "signed_by": m.signed_by,
        "size_bytes": man.files.iter().map(|f| f.size).sum::<u64>(),
    })
}

pub async fn list(State(s): State<Arc<HubState>>) -> Json<Value> {
    let registry = s.ota.registry();
    Json(json!({"artifacts": registry.list().into_iter().map(view).collect::<Vec<_>>()}))
}

pub async fn show(State(s): State<Arc<HubState>>, Path(reference): Path<String>) -> Response {
    match s.ota.registry().find(&reference) {
        Some(m) => Json(view(m)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no artifact {reference:?} (give an id or name@version)"),
        ),
    }
}

pub async fn push(
    State(s): State<Arc<HubState>>,
    caller: Option<axum::Extension<crate::api_auth::Caller>>,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    let result = match form {
        Ok(form) => receive_and_push(&s, form).await,
        Err(e) => Err(refused(
            400,
            "bad_request",
            format!(
                "a push is multipart/form-data with a part named `file` per file: {}",
                e.body_text()
            ),
        )),
    };
    match result {
        Ok((m, created)) => {
            let code = if created {
                s.audit.record(crate::audit::AuditEntry {
                    at_us: conveyor_shared::time::now_us(),
                    by: crate::api_auth::caller(caller).by(None),
                    action: "artifact.push".into(),
                    target: format!("{}@{}", m.manifest.name, m.manifest.version),
                    detail: format!(
                        "{} {} signed and stored ({} files)",
                        format!("{:?}", m.manifest.kind).to_lowercase(),
                        m.id,
                        m.manifest.files.len()
                    ),
                });
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, Json(view(&m))).into_response()
        }
        Err(e) => {
            s.metrics.artifact_rejected(e.reason);
            tracing::warn!(reason = e.reason, "artifact push refused: {}", e.message);
            let code = StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            error(code, e.message)
        }
    }
}

async fn receive_and_push(
    s: &Arc<HubState>,
    mut form: Multipart,
) -> Result<(SignedManifest, bool), PushError> {
    let staging = s.ota.staging()?;
    let max = s.ota.max_artifact_bytes;
    let too_large = || {
        refused(
            413,
            "too_large",
            format!("the artifact is over ota.max_artifact_bytes ({max} bytes)"),
        )
    };
    let bad_form = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            refused(
                400,
                "bad_request",
                format!("reading the form: {}", e.body_text()),
            )
        }
    };
    let io = |e: std::io::Error| refused(500, "io", format!("staging the push: {e}"));
    let mut files: Vec<StagedFile> = Vec::new();
    let mut total = 0u64;
    while let Some(mut field) = form.next_field().await.map_err(bad_form)? {
        if field.name() != Some("file") {
            return Err(refused(
                400,
                "bad_request",
                format!(
                    "form part {:?}: every part is named `file`",
                    field.name().unwrap_or("")
                ),
            ));
        }
        let name = field.file_name().unwrap_or("").to_string();
        if !is_plain_file_name(&name) {
            return Err(bad_name(&name));
        }
        if files.iter().any(|f| f.name == name) || files.len() == MAX_PARTS {
            return Err(refused(
                422,
                "bad_files",
                format!("file {name:?}: each file once, at most {MAX_PARTS} files"),
            ));
        }
        let mut out = tokio::fs::File::create(staging.path().join(&name))
            .await
            .map_err(io)?;
        let (mut hash, mut size) = (Sha256::new(), 0u64);
        while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
            size += chunk.len() as u64;
            total += chunk.len() as u64;
            if total > max {
                return Err(too_large());
            }
            hash.update(&chunk);
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        files.push(StagedFile {
            name,
            sha256: hex::encode(hash.finalize()),
            size,
        });
    }
    if files.is_empty() {
        return Err(refused(
            400,
            "bad_request",
            "the form has no `file` part: push a model's .json and .onnx, or a .wasm",
        ));
    }
    let state = s.clone();
    // Loading a model is CPU work: off the async threads.
    tokio::task::spawn_blocking(move || state.ota.push(&staging, &files))
        .await
        .map_err(|e| refused(500, "io", format!("checking the push: {e}")))?
}

fn parse_id(id: &str) -> Result<ArtifactId, ApiError> {
    ArtifactId::parse(id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

pub async fn manifest(State(s): State<Arc<HubState>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let read = s.ota.registry().manifest_bytes(&id);
    match read {
        Some(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (
                    header::HeaderName::from_static("x-payload-type"),
                    MANIFEST_TYPE,
                ),
            ],
            bytes,
        )
            .into_response(),
        Some(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the manifest of {id}: {e}"),
        ),
        None => error(StatusCode::NOT_FOUND, format!("no artifact {id}")),
    }
}

pub async fn file(
    State(s): State<Arc<HubState>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let found = s.ota.registry().file(&id, &name);
    let Some((path, entry)) = found else {
        return error(
            StatusCode::NOT_FOUND,
            format!("artifact {id} has no file {name:?}"),
        );
    };
    let size = entry.size;
    let ranged = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(Ranged::Whole, |v| range::parse(v, size));
    let (first, len, status) = match ranged {
        Ranged::Whole => (0, size, StatusCode::OK),
        Ranged::Part { first, last } => (first, last - first + 1, StatusCode::PARTIAL_CONTENT),
        Ranged::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response()
        }
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {name} of {id}: {e}"),
            )
        }
    };
    if let Err(e) = file.seek(SeekFrom::Start(first)).await {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {name}: {e}"),
        );
    }
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{}\"", entry.sha256))
        .header(header::CONTENT_LENGTH, len);
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{}/{size}", first + len - 1),
        );
    }
    response
        .body(Body::from_stream(stream(
            file,
            len,
            s.metrics.artifact_bytes_served.clone(),
        )))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `len` bytes of `file` from where it is, in chunks. A file shorter than
/// its manifest says ends the body early (an error: the client sees a
/// short read, never other bytes).
fn stream(
    file: tokio::fs::File,
    len: u64,
    served: prometheus_client::metrics::counter::Counter,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::unfold((file, len), move |(mut file, left)| {
        let served = served.clone();
        async move {
            if left == 0 {
                return None;
            }
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            match file.read(&mut buf).await {
                Ok(0) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the stored file is shorter than its manifest says",
                    )),
                    (file, 0),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    served.inc_by(n as u64);
                    Some((Ok(Bytes::from(buf)), (file, left - n as u64)))
                }
                Err(e) => Some((Err(e), (file, 0))),
            }
        }
    })
}
