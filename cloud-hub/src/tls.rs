//! The hub's TLS certificate: the operator's own (`[tls] cert_file`,
//! `key_file`), or one the hub issues itself from its own CA.
//!
//! The hub's CA lives in `<store>/tls/`: `ca.pem` is what agents pin
//! (`uplink.ca_file`; `cloud-hub device add` copies it beside each
//! device's secret), `ca.key` (mode 0600) never leaves the store. It is
//! made once, by `cloud-hub tls init` or the first start with TLS on.
//! The server certificate is issued afresh at every start, for
//! `localhost`, the loopback addresses, the listeners' own addresses and
//! `[tls] names`, valid for 397 days; its key is only ever in memory. So
//! a new name in `names` takes effect at the next start, and agents that
//! pin the CA never need a new file.
//!
//! The CA's name carries a digest of its public key: two hubs' CAs never
//! share a subject, so a certificate from one is refused by an agent that
//! pins the other as "unknown issuer", not a confusing signature error.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use conveyor_transport::tls::{ClientTls, ServerTls, TlsError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::ConfigError;

/// `[tls]` in hub.toml: the certificate of the listeners that have
/// `tls = true`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The hub's certificate chain (PEM, its own certificate first), and
    /// its key. Both or neither: without them the hub issues its own.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Names (DNS names or IP addresses) devices reach the hub by, for the
    /// certificate the hub issues itself; `localhost`, 127.0.0.1, ::1 and
    /// the listen addresses are always in it.
    #[serde(default)]
    pub names: Vec<String>,
}

impl TlsConfig {
    pub fn validate(&self, used: bool, found: &mut Vec<ConfigError>) {
        if self.cert_file.is_some() != self.key_file.is_some() {
            found.push(ConfigError::invalid(
                "tls.key_file",
                "give both tls.cert_file and tls.key_file, or neither (the hub then issues its own)",
            ));
        }
        if !used && (self.cert_file.is_some() || !self.names.is_empty()) {
            found.push(ConfigError::invalid(
                "tls",
                "no listener uses it: set `tls = true` under [broker] or [http]",
            ));
        }
        for (i, n) in self.names.iter().enumerate() {
            if n.parse::<IpAddr>().is_err() && !is_dns_name(n) {
                found.push(ConfigError::invalid(
                    format!("tls.names[{i}]"),
                    format!("{n:?} is neither a DNS name nor an IP address"),
                ));
            }
        }
    }

    pub fn resolve_paths(&mut self, dir: &Path) {
        for p in [&mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }
}

fn is_dns_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Why the hub's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{field}: {source}")]
    Material {
        field: &'static str,
        source: TlsError,
    },
    #[error("the hub's CA in {}: {why}", dir.display())]
    Ca { dir: PathBuf, why: String },
}

/// Where the hub's own CA is kept.
pub fn ca_dir(store: &Path) -> PathBuf {
    store.join("tls")
}

pub fn ca_cert_path(store: &Path) -> PathBuf {
    ca_dir(store).join("ca.pem")
}

/// The hub's own CA: its key, and the parameters its certificate was
/// made from (rebuilt from the key: the name is a digest of it).
struct Ca {
    key: KeyPair,
    params: CertificateParams,
}

fn ca_params(key: &KeyPair) -> CertificateParams {
    let id = hex::encode(&Sha256::digest(key.public_key_raw())[..6]);
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, format!("Conveyor hub CA {id}"));
    p.distinguished_name
        .push(DnType::OrganizationName, "Conveyor");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(3650);
    p
}

fn ca_error(store: &Path, why: impl std::fmt::Display) -> TlsSetupError {
    TlsSetupError::Ca {
        dir: ca_dir(store),
        why: why.to_string(),
    }
}

/// Writes a new file, mode `mode`, never over an existing one.
fn write_new(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = o.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// The hub's CA in `store`, made first if there is none; true if it was
/// made now.
fn ensure_ca(store: &Path) -> Result<(Ca, bool), TlsSetupError> {
    let dir = ca_dir(store);
    let key_path = dir.join("ca.key");
    let cert_path = dir.join("ca.pem");
    if key_path.exists() {
        let pem = std::fs::read_to_string(&key_path)
            .map_err(|e| ca_error(store, format!("cannot read ca.key: {e}")))?;
        let key = KeyPair::from_pem(&pem)
            .map_err(|e| ca_error(store, format!("ca.key is not a PEM private key: {e}")))?;
        if !cert_path.exists() {
            return Err(ca_error(
                store,
                "ca.key is there but ca.pem is not: restore ca.pem (agents pin it), or move both away for a new CA",
            ));
        }
        let params = ca_params(&key);
        return Ok((Ca { key, params }, false));
    }
    if cert_path.exists() {
        return Err(ca_error(
            store,
            "ca.pem is there but ca.key is not: restore ca.key, or move ca.pem away for a new CA",
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| ca_error(store, e))?;
    let key = KeyPair::generate().map_err(|e| ca_error(store, e))?;
    let params = ca_params(&key);
    let cert = params.self_signed(&key).map_err(|e| ca_error(store, e))?;
    // The key first: a CA certificate without its key is of no use, and a
    // key without a certificate is remade above.
    write_new(&key_path, &key.serialize_pem(), 0o600).map_err(|e| ca_error(store, e))?;
    let tmp = dir.join("ca.pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, &cert.pem(), 0o644)
        .and_then(|()| std::fs::rename(&tmp, &cert_path))
        .map_err(|e| ca_error(store, e))?;
    Ok((Ca { key, params }, true))
}

/// `cloud-hub tls init`: the hub's CA, made if there is none; the path of
/// its certificate, and whether it was made now.
pub fn init_ca(store: &Path) -> Result<(PathBuf, bool), TlsSetupError> {
    let (_, made) = ensure_ca(store)?;
    Ok((ca_cert_path(store), made))
}

/// The TLS files `config` names, and the hub's CA where there is one,
/// load: what `check` and `serve` verify before any port is bound (a CA
/// that is not there yet is made at start).
pub fn check(config: &crate::config::HubConfig) -> Result<(), TlsSetupError> {
    let b = &config.broker;
    if let (Some(ca), Some(url)) = (&b.ca_file, &b.url) {
        if url.tls {
            ClientTls::from_ca_file(ca).map_err(|source| TlsSetupError::Material {
                field: "broker.ca_file",
                source,
            })?;
        }
    }
    if !config.serves_tls() {
        return Ok(());
    }
    let t = &config.tls;
    if let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) {
        ServerTls::from_files(cert, key).map_err(|source| TlsSetupError::Material {
            field: "tls.cert_file",
            source,
        })?;
    } else if ca_dir(&config.store.path).join("ca.key").exists()
        || ca_cert_path(&config.store.path).exists()
    {
        ensure_ca(&config.store.path)?;
    }
    Ok(())
}

/// The names a certificate the hub issues is for.
fn names(config: &TlsConfig, listeners: &[SocketAddr]) -> Vec<String> {
    let mut out: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for a in listeners {
        if !a.ip().is_unspecified() {
            out.push(a.ip().to_string());
        }
    }
    out.extend(config.names.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    out.retain(|n| seen.insert(n.clone()));
    out
}

/// The certificate the listeners serve: the configured one, or one issued
/// now by the hub's CA (made first if there is none) for `listeners` and
/// `config.names`.
pub fn server_tls(
    config: &TlsConfig,
    store: &Path,
    listeners: &[SocketAddr],
) -> Result<ServerTls, TlsSetupError> {
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        return ServerTls::from_files(cert, key).map_err(|source| TlsSetupError::Material {
            field: "tls.cert_file",
            source,
        });
    }
    let (ca, made) = ensure_ca(store)?;
    if made {
        tracing::info!(ca = %ca_cert_path(store).display(), "made the hub's CA: agents pin this file (uplink.ca_file)");
    }
    let names = names(config, listeners);
    let mut params = CertificateParams::new(names.clone()).map_err(|e| ca_error(store, e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Conveyor hub");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(397);
    let key = KeyPair::generate().map_err(|e| ca_error(store, e))?;
    let issuer = Issuer::new(ca.params, ca.key);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| ca_error(store, e))?;
    tracing::info!(?names, "issued the hub's TLS certificate");
    ServerTls::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        "the certificate the hub issued",
    )
    .map_err(|source| TlsSetupError::Material {
        field: "tls",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (path, made) = init_ca(dir.path()).unwrap();
        assert!(made);
        let pem = std::fs::read(&path).unwrap();
        let (_, made) = init_ca(dir.path()).unwrap();
        assert!(!made);
        assert_eq!(std::fs::read(&path).unwrap(), pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(ca_dir(dir.path()).join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A certificate issued at a later start verifies against it.
        let listen: SocketAddr = "127.0.0.1:8883".parse().unwrap();
        server_tls(&TlsConfig::default(), dir.path(), &[listen]).unwrap();
        ClientTls::from_ca_pem(&pem, "ca.pem").unwrap();
        // Half a CA is refused with what to do.
        std::fs::remove_file(&path).unwrap();
        let e = init_ca(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ca.pem is not: restore ca.pem"), "{e}");
    }

    #[test]
    fn names_are_checked_and_listeners_added() {
        let mut found = Vec::new();
        let c = TlsConfig {
            names: vec!["hub.example".into(), "10.0.0.5".into(), "bad name".into()],
            ..Default::default()
        };
        c.validate(true, &mut found);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].to_string().starts_with("tls.names[2]"),
            "{}",
            found[0]
        );
        let n = names(
            &c,
            &[
                "0.0.0.0:1".parse().unwrap(),
                "192.168.1.9:2".parse().unwrap(),
            ],
        );
        assert!(n.contains(&"192.168.1.9".to_string()) && !n.contains(&"0.0.0.0".to_string()));
        let mut found = Vec::new();
        TlsConfig {
            cert_file: Some("c.pem".into()),
            ..Default::default()
        }
        .validate(false, &mut found);
        assert_eq!(found.len(), 2, "{found:?}");
    }
}
