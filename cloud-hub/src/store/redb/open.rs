//! Opening the store's file, and `cloud-hub store check`: what redb's
//! errors mean for the operator, and the integrity check that turns a
//! damaged file into an error instead of a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use redb::{Database, DatabaseError, ReadableDatabase, StorageError, TableHandle};

use super::{CACHE_BYTES, COUNTS, DEVICES, FILE_NAME, PENDING, RECORDS, RESULTS};
use crate::store::StoreError;

/// A redb error as a store error: a failure of the storage itself (or the
/// state redb leaves after one) is [`StoreError::Io`], a fault the store
/// recovers from; anything else (a bug, a value too large) is
/// [`StoreError::Engine`].
pub(super) fn engine(e: impl Into<redb::Error>) -> StoreError {
    use redb::Error as E;
    match e.into() {
        e @ (E::Io(_)
        | E::PreviousIo
        | E::DatabaseClosed
        | E::Backend(_)
        | E::LockPoisoned(_)
        | E::TransactionPoisoned
        | E::Corrupted(_)) => StoreError::Io(Box::new(e)),
        e => StoreError::Engine(Box::new(e)),
    }
}

/// A failed open of `path`, said so that the operator knows what to do.
fn open_error(path: &str, e: DatabaseError) -> StoreError {
    let damaged = |found: String| StoreError::Damaged {
        path: path.to_string(),
        found,
    };
    match e {
        DatabaseError::Storage(StorageError::Corrupted(what)) => {
            damaged(format!("{FILE_NAME} failed its integrity check ({what})"))
        }
        DatabaseError::Storage(StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            damaged(format!("{FILE_NAME} is not a readable redb database ({e})"))
        }
        DatabaseError::DatabaseAlreadyOpen => StoreError::Open {
            path: path.to_string(),
            source: format!(
                "{FILE_NAME} is already open in another process (is a hub running on it?)"
            )
            .into(),
        },
        e => StoreError::Open {
            path: path.to_string(),
            source: Box::new(redb::Error::from(e)),
        },
    }
}

/// Opens `dir/hub.redb` (creating it if missing and `create`), with
/// redb's integrity check if `check`; a panic in the engine is reported as
/// damage.
pub(super) fn open_db(dir: &Path, create: bool, check: bool) -> Result<Database, StoreError> {
    let path = dir.display().to_string();
    let file = dir.join(FILE_NAME);
    let opened = catch_unwind(|| {
        let mut builder = Database::builder();
        builder
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(check);
        if create {
            builder.create(&file)
        } else {
            builder.open(&file)
        }
    });
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(open_error(&path, e)),
        Err(panic) => {
            return Err(StoreError::Damaged {
                path,
                found: format!(
                    "the storage engine failed reading {FILE_NAME} ({})",
                    conveyor_process::panic_message(&*panic)
                ),
            })
        }
    };
    create_tables(&db)?;
    Ok(db)
}

/// Creates the tables that are missing, so readers never meet one; writes
/// nothing when they all exist (a store on a full disk still opens).
fn create_tables(db: &Database) -> Result<(), StoreError> {
    let read = db.begin_read().map_err(engine)?;
    let have: Vec<String> = read
        .list_tables()
        .map_err(engine)?
        .map(|t| t.name().to_string())
        .collect();
    drop(read);
    let names = [
        RECORDS.name(),
        RESULTS.name(),
        PENDING.name(),
        COUNTS.name(),
        DEVICES.name(),
    ];
    if names.iter().all(|n| have.iter().any(|h| h == n)) {
        return Ok(());
    }
    let txn = db.begin_write().map_err(engine)?;
    txn.open_table(RECORDS).map_err(engine)?;
    txn.open_table(RESULTS).map_err(engine)?;
    txn.open_table(PENDING).map_err(engine)?;
    txn.open_table(COUNTS).map_err(engine)?;
    txn.open_table(DEVICES).map_err(engine)?;
    txn.commit().map_err(engine)?;
    Ok(())
}

/// What [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// The file passed redb's integrity check.
    Ok,
    /// It failed, and redb repaired it (possibly rolling back to an
    /// earlier commit).
    Repaired,
}

/// `cloud-hub store check`: runs redb's integrity check on the store in
/// `dir`, which repairs what it can. A file that cannot be repaired is
/// [`StoreError::Damaged`]. The store must not be open elsewhere.
pub fn check(dir: &Path) -> Result<Checked, StoreError> {
    let path = dir.display().to_string();
    let file = dir.join(FILE_NAME);
    if !file.is_file() {
        return Err(StoreError::Open {
            path,
            source: format!("there is no store here (no {FILE_NAME})").into(),
        });
    }
    let opened = catch_unwind(|| Database::builder().set_cache_size(CACHE_BYTES).open(&file));
    let damaged = |panic: Box<dyn std::any::Any + Send>| StoreError::Damaged {
        path: path.clone(),
        found: format!(
            "the storage engine failed reading {FILE_NAME} ({})",
            conveyor_process::panic_message(&*panic)
        ),
    };
    let mut db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(open_error(&path, e)),
        // The plain open trusted what it read and tripped over it: the
        // open with the integrity check says what is wrong, or repairs it.
        Err(_) => {
            let checked = catch_unwind(|| {
                Database::builder()
                    .set_cache_size(CACHE_BYTES)
                    .set_check_integrity_on_open(true)
                    .open(&file)
            });
            return match checked {
                Ok(Ok(_)) => Ok(Checked::Repaired),
                Ok(Err(e)) => Err(open_error(&path, e)),
                Err(panic) => Err(damaged(panic)),
            };
        }
    };
    match catch_unwind(AssertUnwindSafe(|| db.check_integrity())) {
        Ok(Ok(true)) => Ok(Checked::Ok),
        Ok(Ok(false)) => Ok(Checked::Repaired),
        Ok(Err(e)) => Err(open_error(&path, e)),
        Err(panic) => Err(damaged(panic)),
    }
}
