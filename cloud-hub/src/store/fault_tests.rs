//! The store on a real full (and read-only) filesystem: a size-limited
//! tmpfs. Mounting needs root; where it is not allowed the tests say so
//! loudly and return (the e2e suite's `storage_faults` runs the same
//! faults through the whole hub).

use std::time::{Duration, Instant};

use conveyor_e2e::tmpfs::Tmpfs;

use super::*;

fn batch(from: u64, n: u64) -> Vec<Record> {
    (from..from + n)
        .map(|seq| Record {
            stream: "s".into(),
            seq,
            source_ts_us: seq as i64,
            values: vec![seq as f64; 16],
            ..Default::default()
        })
        .collect()
}

/// Appends and commits batch after batch until the store is healthy
/// again; the reopen backs off on a real clock, so this polls (with a
/// generous deadline) rather than assuming when it happens.
fn write_until_healthy(store: &Store, device: &DeviceId, from: &mut u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !store.health().healthy {
        assert!(
            Instant::now() < deadline,
            "the store did not recover: {:?}",
            store.health()
        );
        if store
            .append(device, &batch(*from, 10), 0, &mut |_| ())
            .is_ok()
        {
            *from += 10;
        }
        let _ = store.commit();
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_disk_is_a_fault_the_store_recovers_from_once_space_returns() {
    let Some(fs) = Tmpfs::mount("store::a_full_disk_is_a_fault", 1 << 20) else {
        return;
    };
    let store = open(fs.path()).unwrap();
    let d = DeviceId::new("d").unwrap();
    let g0 = store.generation();
    // Fill the disk; remember what a durable commit covered.
    let (mut next, mut durable) = (0, 0);
    let error = loop {
        assert!(next < 1_000_000, "a 1 MiB disk never filled up");
        if let Err(e) = store.append(&d, &batch(next, 100), 0, &mut |_| ()) {
            break e;
        }
        next += 100;
        match store.commit() {
            Ok(()) => durable = next,
            Err(e) => break e,
        }
    };
    assert!(matches!(error, StoreError::Io(_)), "{error}");
    let h = store.health();
    assert!(
        !h.healthy && h.error.is_some() && h.since_us.is_some(),
        "{h:?}"
    );
    assert!(h.write_failures >= 1, "{h:?}");
    // The engine latched the failure; the store reopens itself (a new
    // generation), and stays unhealthy while the disk is full.
    let _ = store.commit();
    assert!(store.generation() > g0);
    assert!(!store.health().healthy);

    fs.resize(64 << 20);
    let mut from = next + 100;
    write_until_healthy(&store, &d, &mut from);
    let h = store.health();
    assert!(h.healthy && h.error.is_none() && h.recoveries >= 1, "{h:?}");
    // Everything durable before the fault is still there, and the store
    // takes the rest.
    let held: Vec<u64> = store
        .records_from("d", 0, 1_000_000)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert!(
        (0..durable).all(|s| held.binary_search(&s).is_ok()),
        "lost a durable record"
    );
    let n = append_ok(&store, &d, &batch(0, next));
    assert_eq!(n.new + n.duplicates, next);
    store.commit().unwrap();
    let (count, _) = store.device_counts().unwrap()["d"];
    assert_eq!(
        count as usize,
        store.records_from("d", 0, 1_000_000).unwrap().len(),
        "the counts are the records"
    );
}

fn append_ok(store: &Store, d: &DeviceId, records: &[Record]) -> Appended {
    let mut total = Appended::default();
    for chunk in records.chunks(100) {
        let a = store.append(d, chunk, 0, &mut |_| ()).unwrap();
        total.new += a.new;
        total.duplicates += a.duplicates;
    }
    total
}

/// A store that cannot be reopened (here: its file was moved away while
/// the disk was full) is unavailable, with an error naming it, until it
/// can be; it is never replaced by an empty one.
#[test]
fn a_store_that_cannot_be_reopened_is_unavailable_until_it_can() {
    let Some(fs) = Tmpfs::mount("store::a_store_that_cannot_be_reopened", 1 << 20) else {
        return;
    };
    let store = open(fs.path()).unwrap();
    let d = DeviceId::new("d").unwrap();
    append_ok(&store, &d, &batch(0, 100));
    store.commit().unwrap();
    let mut next = 100;
    loop {
        assert!(next < 1_000_000, "a 1 MiB disk never filled up");
        let r = store
            .append(&d, &batch(next, 100), 0, &mut |_| ())
            .and_then(|_| store.commit());
        if r.is_err() {
            break;
        }
        next += 100;
    }
    let file = fs.path().join(redb::FILE_NAME);
    let away = fs.path().join("moved-away");
    std::fs::rename(&file, &away).unwrap();
    // The next commit reopens the store (at once: the first reopen of a
    // fault does not wait), which fails: the store is closed.
    let _ = store.commit();
    let e = store.record("d", 0).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains(&fs.path().display().to_string()), "{text}");
    assert!(!file.exists(), "no empty store was created in its place");
    assert!(!store.health().healthy);

    std::fs::rename(&away, &file).unwrap();
    fs.resize(64 << 20);
    let mut from = next;
    write_until_healthy(&store, &d, &mut from);
    assert!(
        store.record("d", 0).unwrap().is_some(),
        "the durable records are kept"
    );
    assert!(store.health().recoveries >= 1);
}
