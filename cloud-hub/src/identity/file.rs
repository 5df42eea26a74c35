//! `<store>/identity.json`: read whole, changed under a lock
//! (`identity.json.lock`, so two `cloud-hub device add` at once do not
//! lose one), written whole (temp file, fsync, rename; mode 0600).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::Identities;
use crate::ota::files::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not read: {message}")]
    Malformed { path: PathBuf, message: String },
}

pub fn path(store_dir: &Path) -> PathBuf {
    store_dir.join("identity.json")
}

/// What the file holds (nothing yet: no identities).
pub fn read(path: &Path) -> Result<Identities, IdentityError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| IdentityError::Malformed {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Identities::default()),
        Err(source) => Err(IdentityError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads the file, lets `change` change it, and writes it back, all under
/// the file's lock. Nothing is written when `change` fails.
pub fn update<T, E: From<IdentityError>>(
    path: &Path,
    change: impl FnOnce(&mut Identities) -> Result<T, E>,
) -> Result<T, E> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let lock_path = path.with_extension("json.lock");
    let lock: File = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io)?;
    conveyor_process::file_lock::lock_exclusive(&lock).map_err(io)?;
    let mut ids = read(path)?;
    let out = change(&mut ids)?;
    let bytes = serde_json::to_vec_pretty(&ids).expect("identities serialise");
    write_atomic(path, &bytes).map_err(io)?;
    restrict(path).map_err(io)?;
    drop(lock);
    Ok(out)
}

#[cfg(unix)]
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict(_: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{secret, DeviceIdentity};

    #[test]
    fn updates_are_kept_and_a_failed_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert_eq!(read(&p).unwrap(), Identities::default());
        update::<_, IdentityError>(&p, |ids| {
            ids.devices.insert(
                "a".into(),
                DeviceIdentity {
                    secret_sha256: secret::hash("s"),
                    created_us: 1,
                    revoked_us: None,
                },
            );
            Ok(())
        })
        .unwrap();
        let r: Result<(), IdentityError> = update(&p, |ids| {
            ids.devices.clear();
            Err(IdentityError::Malformed {
                path: p.clone(),
                message: "no".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(read(&p).unwrap().devices.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&p, b"{\"devices\": 3}").unwrap();
        assert!(matches!(read(&p), Err(IdentityError::Malformed { .. })));
    }
}
