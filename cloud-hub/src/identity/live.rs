//! The running hub's copy of `identity.json`, read again when the file
//! changes (the housekeeping tick asks every second): the broker gate
//! authenticates devices with it and the HTTP API checks tokens with it.
//!
//! A file that stops reading (a bad hand edit) keeps the last good copy
//! in force, logged and counted, rather than locking everyone out or
//! letting everyone in.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use conveyor_shared::DeviceId;
use conveyor_transport::mqtt::gate::{AuthRefused, Authenticator};

use super::file::{self, IdentityError};
use super::Identities;

pub struct LiveIdentities {
    path: PathBuf,
    current: RwLock<Arc<Identities>>,
    /// The file's modification time and length when last read.
    stamp: Mutex<Option<(SystemTime, u64)>>,
    /// Devices revoked in a reading not yet taken (to cut off).
    revoked: Mutex<Vec<String>>,
}

fn stamp_of(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl LiveIdentities {
    pub fn open(path: PathBuf) -> Result<LiveIdentities, IdentityError> {
        let stamp = stamp_of(&path);
        let ids = file::read(&path)?;
        Ok(LiveIdentities {
            path,
            current: RwLock::new(Arc::new(ids)),
            stamp: Mutex::new(stamp),
            revoked: Mutex::default(),
        })
    }

    /// The file it reads.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn current(&self) -> Arc<Identities> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the file again if it changed (the housekeeping tick asks each
    /// second; an unknown device or token asks at once, so a device added
    /// a moment ago gets in); the devices revoked since the last call (to
    /// cut off), also those a reading on another path found.
    pub fn reload_if_changed(&self) -> Result<Vec<String>, IdentityError> {
        self.read_again()?;
        Ok(std::mem::take(
            &mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()),
        ))
    }

    /// Reads the file if it changed; true if it did.
    pub fn read_again(&self) -> Result<bool, IdentityError> {
        let now = stamp_of(&self.path);
        let mut stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *stamp == now {
            return Ok(false);
        }
        let ids = file::read(&self.path)?;
        *stamp = now;
        drop(stamp);
        let before = self.current();
        let revoked = ids.newly_revoked(&before);
        tracing::info!(
            devices = ids.devices.len(),
            tokens = ids.tokens.len(),
            revoked = ?revoked,
            "identities read again"
        );
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ids);
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(revoked);
        Ok(true)
    }
}

/// The gate's view: [`LiveIdentities`] behind the broker's authenticator.
pub struct GateAuthenticator(pub Arc<LiveIdentities>);

impl Authenticator for GateAuthenticator {
    fn authenticate(&self, username: &str, password: &str) -> Result<DeviceId, AuthRefused> {
        match self.0.current().device(username, password) {
            // Perhaps added a moment ago: look at the file once more.
            Err(AuthRefused::Unknown) if self.0.read_again().unwrap_or(false) => {
                self.0.current().device(username, password)
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{secret, DeviceIdentity};

    #[test]
    fn a_changed_file_is_read_again_and_revocations_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = file::path(dir.path());
        let live = LiveIdentities::open(p.clone()).unwrap();
        assert!(live.current().devices.is_empty());
        let s = secret::new("cvd");
        let add = |revoked: Option<i64>| {
            file::update::<_, IdentityError>(&p, |ids| {
                ids.devices.insert(
                    "d".into(),
                    DeviceIdentity {
                        secret_sha256: secret::hash(&s),
                        created_us: 1,
                        revoked_us: revoked,
                    },
                );
                Ok(())
            })
            .unwrap()
        };
        add(None);
        assert!(live.reload_if_changed().unwrap().is_empty());
        let auth = GateAuthenticator(Arc::new(live));
        assert!(auth.authenticate("d", &s).is_ok());
        // (A later mtime or another length: the revoked entry is longer.)
        add(Some(5));
        assert_eq!(auth.0.reload_if_changed().unwrap(), vec!["d".to_string()]);
        assert_eq!(auth.authenticate("d", &s), Err(AuthRefused::Revoked));
        // A file that stops reading keeps the last good copy.
        std::fs::write(&p, b"garbage, and longer than before: {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{").unwrap();
        assert!(auth.0.reload_if_changed().is_err());
        assert_eq!(auth.authenticate("d", &s), Err(AuthRefused::Revoked));
    }
}
