//! TLS for every link Conveyor makes or serves: rustls with the `ring`
//! provider (no C build, and the smaller of rustls's two providers in the
//! edge binary), TLS 1.3 and 1.2.
//!
//! A client trusts exactly the CA it is given (`ca_file`: the hub's own
//! CA, or a broker's): no system roots, so a certificate some public CA
//! issued for the hub's name is not enough to stand in for the hub. A
//! server serves one certificate chain. Devices prove who they are with
//! their credentials at connect, inside the TLS session, not with client
//! certificates.
//!
//! [`explain`] turns a failed handshake into words a user can act on
//! ("not signed by the CA in ...", "expired"), wherever in an error's
//! chain rustls's own error sits.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{0} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate(String),
    #[error("{0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(String),
    #[error("{what} is not a certificate rustls accepts: {source}")]
    Rejected { what: String, source: rustls::Error },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what.to_string()));
    }
    Ok(certs)
}

/// A connection that is plain TCP or TLS over it, for code that speaks
/// HTTP over either (the agent's downloads, the hub's CLI).
pub trait Connection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Connection for T {}

/// What a client trusts: one CA (or a bundle of them), and nothing else.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    /// Where the CA came from, for messages.
    source: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.source)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in the PEM file at `path`.
    pub fn from_ca_file(path: &Path) -> Result<ClientTls, TlsError> {
        ClientTls::from_ca_pem(&read(path)?, &path.display().to_string())
    }

    /// Trusts the CA certificates in `pem`; `source` names it in messages.
    pub fn from_ca_pem(pem: &[u8], source: &str) -> Result<ClientTls, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(pem, source)? {
            roots.add(cert).map_err(|e| TlsError::Rejected {
                what: format!("a CA in {source}"),
                source: e,
            })?;
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rejected {
                what: "the TLS versions".into(),
                source: e,
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            source: source.to_string(),
        })
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The file (or other source) the CA came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A TLS session over `tcp` with the server `host` (a name or an IP
    /// address its certificate must be for).
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }
}

/// What a server serves: its certificate chain and key.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// The chain in `cert_pem` (the server's certificate first) and the key
    /// in `key_pem`; `what` names them in messages.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<ServerTls, TlsError> {
        let chain = certificates(cert_pem, what)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| TlsError::NoKey(format!("the key of {what}")))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| TlsError::Rejected {
                what: what.to_string(),
                source: e,
            })?;
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }

    /// [`ServerTls::from_pem`] from two files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        ServerTls::from_pem(&read(cert)?, &read(key)?, &cert.display().to_string())
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// rustls's error in `e`'s chain, if it has one (also inside an
/// `io::Error`, whose `source` skips the error it wraps).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
        }
        next = e.source();
    }
    None
}

/// A failed TLS handshake as a client saw it, in words: why the server's
/// certificate was refused (`ca` names the CA it was checked against), or
/// that the server does not speak TLS. `None` for other errors.
pub fn explain(e: &(dyn std::error::Error + 'static), ca: &str) -> Option<String> {
    let err = rustls_error(e)?;
    let why = match err {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                format!("the server's certificate is not signed by the CA in {ca}")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (is this machine's clock right?)"
                    .to_string()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate is not for the host in the URL".to_string()
            }
            other => format!("the server's certificate is refused: {other:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server does not speak TLS (is the URL's port a plain listener?)".to_string()
        }
        other => format!("TLS: {other}"),
    };
    Some(why)
}

/// A failed handshake as a server saw it, for its log: the alert the
/// client sent (`UnknownCA`: the client does not trust this server's CA),
/// or what rustls found wrong.
pub fn server_side(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => format!("the client refused: {alert:?}"),
        Some(rustls::Error::InvalidMessage(_)) => "not a TLS client".to_string(),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_that_is_not_pem_is_named() {
        let e = ClientTls::from_ca_pem(b"hello", "ca.pem").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ca.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        );
        let e = ClientTls::from_ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let e = ServerTls::from_pem(b"", b"", "hub.pem").unwrap_err();
        assert!(e.to_string().contains("hub.pem holds no PEM certificate"));
    }

    #[test]
    fn a_refused_certificate_is_explained_through_an_io_error() {
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(
            explain(&io, "/etc/hub-ca.pem").unwrap(),
            "the server's certificate is not signed by the CA in /etc/hub-ca.pem"
        );
        let expired = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        assert!(explain(&expired, "x").unwrap().contains("expired"));
        assert!(explain(&io::Error::other("refused"), "x").is_none());
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        assert_eq!(server_side(&alert), "the client refused: UnknownCA");
    }
}
