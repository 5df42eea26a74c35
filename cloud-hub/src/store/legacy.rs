//! Stores this version cannot read, found where the store should be.
//!
//! Hubs before the redb store kept a sled database in the store directory
//! (the files `conf` and `db`, beside `blobs/` and `snap.*`). Opening one
//! is refused with an error that names the directory and says what to do,
//! instead of starting an empty store beside it or failing in the engine.

use std::path::Path;

use super::redb::FILE_NAME;
use super::StoreError;

pub(super) fn refuse_old_store(dir: &Path) -> Result<(), StoreError> {
    if dir.join(FILE_NAME).exists() {
        return Ok(());
    }
    if dir.join("conf").is_file() && dir.join("db").is_file() {
        return Err(StoreError::Unsupported {
            path: dir.display().to_string(),
            found: "found a sled database (the store of hubs before the redb store)".into(),
        });
    }
    Ok(())
}
