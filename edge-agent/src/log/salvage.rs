//! A log file the storage engine refuses: moved aside, and what can still
//! be read of it salvaged.
//!
//! The file is renamed, never deleted (`log.corrupt-<unix secs>.redb`
//! beside it), so an operator can look at it. It is then read through a
//! read-only handle, on a thread of its own: on a damaged page the engine
//! may panic; the panic is caught, the records of that page are lost, and
//! the read goes on from the next page it can reach.
//! A record is kept only if it decodes and carries the seq it is stored
//! under, so a damaged value is not mistaken for a reading.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Once;

use conveyor_shared::Record;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable};

use super::RECORDS;

/// Records handed over per message from the salvage thread.
const CHUNK: usize = 2048;

/// Renames `file` to `log.corrupt-<unix secs>.redb` (a free name) in its
/// directory.
pub fn move_aside(file: &Path) -> std::io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut aside = dir.join(format!("log.corrupt-{secs}.redb"));
    let mut n = 1;
    while aside.exists() {
        aside = dir.join(format!("log.corrupt-{secs}-{n}.redb"));
        n += 1;
    }
    std::fs::rename(file, &aside)?;
    Ok(aside)
}

/// Keys skipped past a damaged page, probing for the next readable one
/// (a page holds a few dozen records).
const SKIP: u64 = 32;

/// Reads the records of the (moved aside) log at `path` that are still
/// readable, handing them to `keep` in seq order, chunk by chunk. A
/// damaged page loses the records on it: the read goes on from the next
/// page it can reach, up to the highest key (or `upto` if even that
/// cannot be found). Returns what stopped or skipped it, if anything did.
pub fn salvage(path: &Path, upto: u64, keep: &mut dyn FnMut(Vec<Record>)) -> Option<String> {
    install_panic_hook();
    let (tx, rx) = mpsc::sync_channel::<Result<Vec<Record>, String>>(2);
    let path = path.to_path_buf();
    let reader = std::thread::Builder::new()
        .name("log-salvage".into())
        .spawn(move || {
            if let Err(panic) = guarded(|| read(&path, upto, &tx)) {
                let _ = tx.send(Err(format!("the storage engine gave up: {panic}")));
            }
        });
    if let Err(e) = reader {
        return Some(format!("cannot start the salvage thread: {e}"));
    }
    let mut stopped = None;
    for msg in rx {
        match msg {
            Ok(chunk) => keep(chunk),
            Err(why) => stopped = Some(why),
        }
    }
    stopped
}

fn read(path: &Path, upto: u64, tx: &mpsc::SyncSender<Result<Vec<Record>, String>>) {
    let opened = redb::Database::builder()
        .open_read_only(path)
        .map_err(redb::Error::from)
        .and_then(|db| {
            let read = db.begin_read()?;
            Ok((db, read))
        });
    let (_db, read) = match opened {
        Ok(o) => o,
        Err(e) => {
            let _ = tx.send(Err(format!("cannot open it to read: {e}")));
            return;
        }
    };
    let table = match read.open_table(RECORDS) {
        Ok(t) => t,
        Err(e) => {
            let _ = tx.send(Err(format!("cannot read its records: {e}")));
            return;
        }
    };
    let hi = guarded(|| table.last().ok().flatten().map(|(k, _)| k.value()))
        .ok()
        .flatten()
        .unwrap_or(upto);
    let (mut from, mut damaged) = (0u64, 0u64);
    while from <= hi {
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut last = None;
        let ended = guarded(|| -> Result<(), redb::Error> {
            for item in table.range(from..=hi)? {
                let (k, v) = item?;
                last = Some(k.value());
                match Record::decode(v.value()) {
                    Ok(r) if r.seq == k.value() => chunk.push(r),
                    // A damaged value: not a reading to pass on.
                    _ => {}
                }
                if chunk.len() == CHUNK && tx.send(Ok(std::mem::take(&mut chunk))).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let _ = tx.send(Ok(chunk));
        if matches!(ended, Ok(Ok(()))) {
            break;
        }
        damaged += 1;
        // Past the last good key (if this probe read any), else a page on.
        from = match last {
            Some(l) if l >= from => l + 1,
            _ => from.saturating_add(SKIP),
        };
    }
    if damaged > 0 {
        let _ = tx.send(Err(format!(
            "{damaged} damaged page(s) skipped; their records are lost"
        )));
    }
}

thread_local! {
    /// Set on threads whose panics are expected and handled (the engine
    /// meeting a damaged page): the hook logs one line instead of a
    /// backtrace an operator would take for a crash.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread's panics as handled (see [`QUIET`]) while `f`
/// runs, and catches them.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_panic_hook();
    let was = QUIET.with(|q| q.replace(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    out.map_err(|p| conveyor_process::panic_message(&*p))
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                // The caller reports what it could not do.
                tracing::debug!(
                    "the storage engine stopped on damaged data ({})",
                    info.location().map_or_else(String::new, |l| l.to_string())
                );
            } else {
                previous(info);
            }
        }));
    });
}
