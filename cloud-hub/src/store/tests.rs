use super::*;

fn rec(seq: u64) -> Record {
    Record {
        stream: "s".into(),
        seq,
        source_ts_us: seq as i64,
        values: vec![seq as f64],
        label: String::new(),
        ..Default::default()
    }
}

fn append(store: &Store, device: &DeviceId, records: &[Record], at: i64) -> Appended {
    store.append(device, records, at, &mut |_| ()).unwrap()
}

#[test]
fn dedups_and_reads_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let a = DeviceId::new("a").unwrap();
    let ab = DeviceId::new("ab").unwrap();
    let n = append(&store, &a, &[rec(2), rec(1)], 7);
    assert_eq!((n.new, n.duplicates), (2, 0));
    let n = append(&store, &a, &[rec(2), rec(3)], 8);
    assert_eq!((n.new, n.duplicates), (1, 1));
    // A device whose id extends another's must not leak into its scans.
    append(&store, &ab, &[rec(0)], 9);
    let all = store.records_from("a", 0, 100).unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(all[1].received_at_us, 7, "the first copy is kept");
    assert_eq!(store.records_from("a", 2, 1).unwrap()[0].seq, 2);
    assert_eq!(
        store
            .latest_records("a", 2)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(store.records_from("ab", 0, 10).unwrap().len(), 1);
}

#[test]
fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceId::new("a").unwrap();
    {
        let store = open(dir.path()).unwrap();
        append(&store, &a, &[rec(5)], 1);
        store.commit().unwrap();
    }
    let store = open(dir.path()).unwrap();
    assert_eq!(append(&store, &a, &[rec(5)], 2).duplicates, 1);
}

/// The lock on the store is released when its handle is dropped: a store
/// reopened at once (a test, a hub restarting in-process) always opens.
#[test]
fn reopens_at_once_after_drop_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceId::new("a").unwrap();
    for i in 0..200u64 {
        let store = open(dir.path()).unwrap_or_else(|e| panic!("reopen {i}: {e}"));
        assert_eq!(append(&store, &a, &[rec(i)], i as i64).new, 1);
        if i % 2 == 0 {
            store.commit().unwrap();
        }
        assert_eq!(store.device_counts().unwrap()["a"], (i + 1, i));
    }
}

/// Under a busy CPU too: the drop releases the lock synchronously, it does
/// not wait for a background thread.
#[test]
fn reopens_at_once_while_the_cpu_is_busy() {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceId::new("a").unwrap();
    for i in 0..50u64 {
        let store = open(dir.path()).unwrap_or_else(|e| panic!("reopen {i}: {e}"));
        append(&store, &a, &[rec(i)], 1);
        store.commit().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
}

#[test]
fn a_second_open_while_one_is_live_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path()).unwrap();
    let t = std::time::Instant::now();
    let e = open(dir.path()).err().expect("the store is in use");
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
}

#[test]
fn dedup_and_counts_hold_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (DeviceId::new("a").unwrap(), DeviceId::new("b").unwrap());
    {
        let store = open(dir.path()).unwrap();
        append(&store, &a, &[rec(0), rec(1), rec(2)], 1);
        append(&store, &b, &[rec(10)], 1);
        store.commit().unwrap();
    }
    let store = open(dir.path()).unwrap();
    assert_eq!(
        store.device_counts().unwrap(),
        DeviceCounts::from([("a".into(), (3, 2)), ("b".into(), (1, 10))])
    );
    // A redelivery after the restart: the held ones are duplicates, and
    // the counts only grow by the new one.
    let n = append(&store, &a, &[rec(1), rec(2), rec(7)], 2);
    assert_eq!((n.new, n.duplicates), (1, 2));
    assert_eq!(store.records_from("a", 0, 10).unwrap()[1].received_at_us, 1);
    store.commit().unwrap();
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(store.device_counts().unwrap()["a"], (4, 7));
    assert_eq!(store.device_counts().unwrap()["b"], (1, 10));
}

#[test]
fn counts_are_what_the_records_are() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let a = DeviceId::new("a").unwrap();
    // Out of order, with duplicates within and across batches.
    append(&store, &a, &[rec(9), rec(3)], 1);
    append(&store, &a, &[rec(3), rec(4), rec(9)], 1);
    append(&store, &a, &[rec(4)], 1);
    let held = store.records_from("a", 0, 100).unwrap();
    let highest = held.iter().map(|r| r.seq).max().unwrap();
    assert_eq!(
        store.device_counts().unwrap()["a"],
        (held.len() as u64, highest)
    );
    assert!(!store.device_counts().unwrap().contains_key("b"));
}

#[test]
fn writes_are_read_before_they_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceId::new("a").unwrap();
    let store = open(dir.path()).unwrap();
    append(&store, &a, &[rec(1)], 1);
    // Visible before it is durable.
    assert_eq!(store.records_from("a", 0, 10).unwrap().len(), 1);
    store.put_device("a", b"{}").unwrap();
    assert_eq!(store.devices().unwrap(), vec![("a".into(), b"{}".to_vec())]);
    store.commit().unwrap();
    // Nothing written since: a commit is a no-op, and still fine.
    store.commit().unwrap();
}

#[test]
fn an_old_sled_store_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    // What a sled store leaves in its directory.
    std::fs::write(dir.path().join("conf"), b"segment_size: 524288\n").unwrap();
    std::fs::write(dir.path().join("db"), [0u8; 64]).unwrap();
    std::fs::create_dir(dir.path().join("blobs")).unwrap();
    let e = open(dir.path()).err().expect("refused").to_string();
    assert!(e.contains(&dir.path().display().to_string()), "{e}");
    assert!(e.contains("sled"), "{e}");
    assert!(e.contains("new directory"), "{e}");
    assert!(!dir.path().join(redb::FILE_NAME).exists(), "left untouched");
}

/// `cloud-hub store check`, and the start on a damaged file: a clear
/// `Damaged` error naming the directory, never a panic.
#[test]
fn a_damaged_store_is_refused_with_what_to_do() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceId::new("a").unwrap();
    {
        let store = open(dir.path()).unwrap();
        for b in 0..200u64 {
            let batch: Vec<Record> = (b * 100..b * 100 + 100).map(rec).collect();
            append(&store, &a, &batch, 1);
        }
        store.commit().unwrap();
    }
    assert_eq!(redb::check(dir.path()).unwrap(), redb::Checked::Ok);
    let missing = redb::check(&dir.path().join("nope")).unwrap_err();
    assert!(missing.to_string().contains("no store here"), "{missing}");

    let file = dir.path().join(redb::FILE_NAME);
    let len = std::fs::metadata(&file).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    let mut at = 64 * 1024;
    while at + 512 <= len {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[0xA5; 512]).unwrap();
        at += 64 * 1024;
    }
    drop(f);
    let shown = dir.path().display().to_string();
    let e = open(dir.path())
        .err()
        .expect("a damaged store does not open");
    assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&shown) && text.contains("cloud-hub store check"),
        "{text}"
    );
    let e = redb::check(dir.path()).unwrap_err();
    assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
}
