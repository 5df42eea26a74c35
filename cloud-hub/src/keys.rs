//! The hub's signing key: what `cloud-hub keys generate` makes and what
//! the hub signs artifacts and desired states with (issue 14).
//!
//! The key file is one line (`conveyor-ed25519-secret-v1 <hex>`, see
//! `conveyor_shared::ota::sign`), created with mode 0600 and never
//! overwritten: a lost or replaced key is one every agent stops trusting,
//! so replacing it must be a deliberate act (delete the old file first).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use conveyor_shared::ota::{KeyError, PublicKey, SecretKey};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error(
        "{0} exists: a key is never overwritten (agents trust the one it holds); \
         move it away first to make a new one"
    )]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// Makes a new key at `path` (mode 0600); returns its public half.
pub fn generate(path: &Path) -> Result<PublicKey, KeyFileError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyFileError::Random(e.to_string()))?;
    let key = SecretKey::from_seed(seed);
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyFileError::Exists(path.to_path_buf()),
        _ => io(e),
    })?;
    file.write_all(key.to_file_text().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    Ok(key.public())
}

/// Reads the key at `path`.
pub fn load(path: &Path) -> Result<SecretKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    SecretKey::from_file_text(&text).map_err(|source| KeyFileError::Format {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_loads_back_is_private_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub-signing.key");
        let public = generate(&path).unwrap();
        assert_eq!(load(&path).unwrap().public(), public);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = generate(&path).unwrap_err();
        assert!(matches!(e, KeyFileError::Exists(_)), "{e}");
        assert_eq!(load(&path).unwrap().public(), public, "untouched");
        let other = generate(&dir.path().join("second.key")).unwrap();
        assert_ne!(other, public, "fresh randomness each time");
    }

    #[test]
    fn a_file_that_is_no_key_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.to_string().contains("conveyor-ed25519-secret-v1"), "{e}");
        let e = load(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, KeyFileError::Io { .. }), "{e}");
    }
}
