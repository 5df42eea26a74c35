//! What the hub knows about each device: plain data, no I/O.
//!
//! Ingest feeds it events (a batch stored, a status, a heartbeat, a bad
//! payload) with the time they happened; the API reads snapshots. Keeping
//! it free of I/O and clocks makes every rule here a unit test.

use std::collections::{BTreeMap, BTreeSet};

use conveyor_shared::control::{DeviceState, DeviceStatus, Heartbeat};
use serde::{Deserialize, Serialize};

/// Records/s over a sliding window of whole seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RateMeter {
    /// Counts of the last WINDOW seconds; `buckets[s % WINDOW]` is second s.
    buckets: [u64; RateMeter::WINDOW],
    /// The second the newest bucket belongs to.
    newest_s: i64,
}

impl RateMeter {
    const WINDOW: usize = 10;

    fn advance(&mut self, now_s: i64) {
        if now_s <= self.newest_s {
            return;
        }
        let gap = (now_s - self.newest_s).min(Self::WINDOW as i64);
        for s in 1..=gap {
            self.buckets[((self.newest_s + s) as usize) % Self::WINDOW] = 0;
        }
        self.newest_s = now_s;
    }

    pub fn add(&mut self, n: u64, now_us: i64) {
        let now_s = now_us.div_euclid(1_000_000);
        self.advance(now_s);
        if now_s + (Self::WINDOW as i64) > self.newest_s {
            self.buckets[(now_s as usize) % Self::WINDOW] += n;
        }
    }

    /// Mean rate over the completed seconds of the window.
    pub fn rate(&self, now_us: i64) -> f64 {
        let now_s = now_us.div_euclid(1_000_000);
        let mut m = self.clone();
        m.advance(now_s);
        let completed: u64 = (1..Self::WINDOW as i64)
            .map(|back| m.buckets[((now_s - back).rem_euclid(Self::WINDOW as i64)) as usize])
            .sum();
        completed as f64 / (Self::WINDOW - 1) as f64
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub device_id: String,
    pub online: bool,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    /// Distinct records stored.
    pub records: u64,
    /// Copies of already stored records that arrived again (and were dropped).
    pub duplicates: u64,
    /// Payloads from this device that could not be decoded.
    pub rejected_payloads: u64,
    pub highest_seq: Option<u64>,
    pub status: Option<DeviceStatus>,
    pub last_heartbeat: Option<Heartbeat>,
    /// Edge predictions received, by model (`id@version`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub predictions: BTreeMap<String, PredictionTally>,
    /// Final predictions (after the cascade) published for this device.
    #[serde(default)]
    pub finals: FinalTally,
    #[serde(default)]
    rate: RateMeter,
}

/// How the device's final predictions were made and how they fared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalTally {
    pub results: u64,
    /// Decided by a hub model (escalated by the edge and answered).
    pub by_hub: u64,
    /// Escalated, but the hub could not answer (the edge's answer stands).
    pub hub_errors: u64,
    /// Results whose record carried a ground-truth label, and the right ones.
    pub scored: u64,
    pub correct: u64,
}

/// How one model's predictions from one device fared. Only windows whose
/// readings carried a ground-truth label (replayed data sets) are scored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PredictionTally {
    pub predictions: u64,
    pub scored: u64,
    pub correct: u64,
    /// Windows sampled for the hub's teacher (`teacher_every`) that it
    /// answered, and how many of those the edge model agreed with.
    #[serde(default)]
    pub teacher_sampled: u64,
    #[serde(default)]
    pub teacher_agreed: u64,
    pub last_label: String,
    pub last_confidence: f32,
}

impl PredictionTally {
    pub fn accuracy(&self) -> Option<f64> {
        (self.scored > 0).then(|| self.correct as f64 / self.scored as f64)
    }
}

/// An entry as the API shows it: the stored fields plus derived ones.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    #[serde(flatten)]
    pub entry: DeviceEntry,
    pub records_per_sec: f64,
    /// OTA: the desired and the applied generation, the last change's
    /// phase (filled in by the API from the OTA store).
    pub ota: crate::ota::devices::OtaView,
}

#[derive(Debug, Default)]
pub struct Registry {
    devices: BTreeMap<String, DeviceEntry>,
    /// Devices changed since the last `take_dirty`, to persist.
    dirty: BTreeSet<String>,
    /// Each device's heartbeat counters over time (memory only).
    trends: BTreeMap<String, crate::trend::Trend>,
}

impl Registry {
    /// Rebuilds the registry from persisted entries and the store's own
    /// per-device `(records, highest seq)`, which win: entries are saved
    /// once a second, so after a crash their counts may lag the store.
    /// Every device starts offline: a restarted hub knows nothing about who
    /// is connected now, and devices re-announce themselves on reconnect.
    pub fn restore(
        entries: impl IntoIterator<Item = DeviceEntry>,
        counts: &BTreeMap<String, (u64, u64)>,
    ) -> Self {
        let devices = entries
            .into_iter()
            .map(|e| (e.device_id.clone(), e))
            .collect();
        let mut registry = Registry {
            devices,
            dirty: BTreeSet::new(),
            trends: BTreeMap::new(),
        };
        registry.take_counts(counts);
        for e in registry.devices.values_mut() {
            e.online = false;
        }
        registry
    }

    fn entry(&mut self, device: &str, now_us: i64) -> &mut DeviceEntry {
        if !self.dirty.contains(device) {
            self.dirty.insert(device.to_string());
        }
        let e = self
            .devices
            .entry(device.to_string())
            .or_insert_with(|| DeviceEntry {
                device_id: device.to_string(),
                first_seen_us: now_us,
                ..Default::default()
            });
        e.last_seen_us = e.last_seen_us.max(now_us);
        e
    }

    pub fn on_batch(
        &mut self,
        device: &str,
        new: u64,
        duplicates: u64,
        highest_seq: u64,
        now_us: i64,
    ) {
        let e = self.entry(device, now_us);
        e.records += new;
        e.duplicates += duplicates;
        e.highest_seq = Some(e.highest_seq.map_or(highest_seq, |h| h.max(highest_seq)));
        e.rate.add(new, now_us);
        // Data only comes from a connected device.
        e.online = true;
    }

    /// Counts a newly stored record that carries a prediction.
    pub fn on_prediction(&mut self, device: &str, record: &conveyor_shared::Record, now_us: i64) {
        let Some(p) = &record.prediction else {
            return;
        };
        let t = self
            .entry(device, now_us)
            .predictions
            .entry(format!("{}@{}", p.model_id, p.model_version))
            .or_default();
        t.predictions += 1;
        if !record.label.is_empty() {
            t.scored += 1;
            t.correct += u64::from(record.label == p.label);
        }
        t.last_label.clone_from(&p.label);
        t.last_confidence = p.confidence;
    }

    /// Counts a window sampled for the teacher: whether the edge model's
    /// label was the teacher's.
    pub fn on_teacher(
        &mut self,
        device: &str,
        edge: &conveyor_shared::Prediction,
        agreed: bool,
        now_us: i64,
    ) {
        let t = self
            .entry(device, now_us)
            .predictions
            .entry(format!("{}@{}", edge.model_id, edge.model_version))
            .or_default();
        t.teacher_sampled += 1;
        t.teacher_agreed += u64::from(agreed);
    }

    /// Counts a final prediction published for the device.
    pub fn on_final(
        &mut self,
        device: &str,
        result: &conveyor_shared::FinalPrediction,
        now_us: i64,
    ) {
        let t = &mut self.entry(device, now_us).finals;
        t.results += 1;
        t.by_hub += u64::from(result.decider() == conveyor_shared::Decider::Hub);
        t.hub_errors += u64::from(!result.hub_error.is_empty());
        if let Some(ok) = result.correct() {
            t.scored += 1;
            t.correct += u64::from(ok);
        }
    }

    pub fn on_status(&mut self, device: &str, status: DeviceStatus, now_us: i64) {
        let e = self.entry(device, now_us);
        e.online = status.state == DeviceState::Online;
        e.status = Some(status);
    }

    pub fn on_heartbeat(&mut self, device: &str, heartbeat: Heartbeat, now_us: i64) {
        self.trends
            .entry(device.to_string())
            .or_default()
            .add(&heartbeat);
        self.entry(device, now_us).last_heartbeat = Some(heartbeat);
    }

    /// The device's heartbeat counters over the last minutes.
    pub fn trend(&self, device: &str) -> Vec<crate::trend::Point> {
        self.trends
            .get(device)
            .map(crate::trend::Trend::points)
            .unwrap_or_default()
    }

    pub fn on_rejected(&mut self, device: &str, now_us: i64) {
        self.entry(device, now_us).rejected_payloads += 1;
    }

    pub fn get(&self, device: &str, now_us: i64) -> Option<DeviceView> {
        self.devices.get(device).map(|e| view(e, now_us))
    }

    pub fn list(&self, now_us: i64) -> Vec<DeviceView> {
        self.devices.values().map(|e| view(e, now_us)).collect()
    }

    pub fn online(&self) -> usize {
        self.devices.values().filter(|e| e.online).count()
    }

    pub fn known(&self) -> usize {
        self.devices.len()
    }

    /// Online devices whose last heartbeat reports a storage fault, and
    /// how many of those have a full disk: what an operator alerts on.
    pub fn storage_faults(&self) -> (usize, usize) {
        let heartbeats = self
            .devices
            .values()
            .filter(|e| e.online)
            .filter_map(|e| e.last_heartbeat.as_ref());
        heartbeats.fold((0, 0), |(faulted, full), h| {
            (
                faulted + usize::from(h.storage_fault.is_some()),
                full + usize::from(h.log_disk_full),
            )
        })
    }

    /// Records/s over all devices.
    pub fn total_rate(&self, now_us: i64) -> f64 {
        self.devices.values().map(|e| e.rate.rate(now_us)).sum()
    }

    /// After the store rolled back to its last durable commit (recovering
    /// from a fault): every device's records and highest seq become the
    /// store's `counts`, which are the truth, and every entry is saved
    /// again (saves since that commit were rolled back with it).
    pub fn resync(&mut self, counts: &BTreeMap<String, (u64, u64)>) {
        self.take_counts(counts);
        self.dirty.extend(self.devices.keys().cloned());
    }

    /// Every device's records and highest seq from the store's `counts`;
    /// a device the store holds nothing of has none.
    fn take_counts(&mut self, counts: &BTreeMap<String, (u64, u64)>) {
        for (device, &(records, highest)) in counts {
            let e = self
                .devices
                .entry(device.clone())
                .or_insert_with(|| DeviceEntry {
                    device_id: device.clone(),
                    ..Default::default()
                });
            e.records = records;
            e.highest_seq = Some(highest);
        }
        for e in self.devices.values_mut() {
            if !counts.contains_key(&e.device_id) {
                e.records = 0;
                e.highest_seq = None;
            }
        }
    }

    /// Entries changed since the last call, for persisting.
    pub fn take_dirty(&mut self) -> Vec<DeviceEntry> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|d| self.devices.get(&d).cloned())
            .collect()
    }
}

fn view(e: &DeviceEntry, now_us: i64) -> DeviceView {
    DeviceView {
        entry: e.clone(),
        records_per_sec: e.rate.rate(now_us),
        ota: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn status(state: DeviceState) -> DeviceStatus {
        DeviceStatus {
            device_id: "d".into(),
            state,
            agent_version: String::new(),
            ts_us: 0,
            clean: false,
        }
    }

    #[test]
    fn status_drives_online_and_last_will_takes_it_down() {
        let mut r = Registry::default();
        r.on_status("d", status(DeviceState::Online), S);
        assert_eq!(r.online(), 1);
        r.on_status("d", status(DeviceState::Offline), 2 * S);
        assert_eq!(r.online(), 0);
        assert_eq!(r.get("d", 2 * S).unwrap().entry.last_seen_us, 2 * S);
    }

    #[test]
    fn batches_count_records_and_duplicates() {
        let mut r = Registry::default();
        r.on_batch("d", 10, 0, 9, S);
        r.on_batch("d", 5, 5, 14, S + 1);
        let e = r.get("d", S).unwrap().entry;
        assert_eq!((e.records, e.duplicates, e.highest_seq), (15, 5, Some(14)));
        assert!(e.online);
        assert_eq!(r.take_dirty().len(), 1);
        assert!(r.take_dirty().is_empty());
    }

    #[test]
    fn resync_takes_the_stores_counts_and_saves_everything_again() {
        let mut r = Registry::default();
        r.on_batch("d", 10, 0, 9, S);
        r.on_batch("gone", 3, 0, 2, S);
        r.on_heartbeat("quiet", Default::default(), S);
        r.take_dirty();
        // The store rolled back: it holds 7 of d's records and none of
        // "gone"'s, and knows "new" from a batch the registry missed.
        let counts = BTreeMap::from([("d".to_string(), (7, 6)), ("new".to_string(), (2, 1))]);
        r.resync(&counts);
        let e = |d: &str| r.get(d, S).unwrap().entry;
        assert_eq!((e("d").records, e("d").highest_seq), (7, Some(6)));
        assert_eq!((e("gone").records, e("gone").highest_seq), (0, None));
        assert_eq!((e("new").records, e("new").highest_seq), (2, Some(1)));
        assert_eq!(e("quiet").records, 0);
        assert!(e("d").online, "resync changes counts only");
        assert_eq!(r.take_dirty().len(), 4);
    }

    #[test]
    fn rate_is_a_sliding_window() {
        let mut m = RateMeter::default();
        for s in 0..20 {
            m.add(100, s * S + 1);
        }
        assert_eq!(m.rate(20 * S), 100.0);
        // Ten quiet seconds later the window is empty.
        assert_eq!(m.rate(30 * S), 0.0);
        let mut m = RateMeter::default();
        m.add(900, 100 * S);
        assert_eq!(m.rate(101 * S), 100.0);
    }

    #[test]
    fn storage_faults_count_online_devices_by_their_last_heartbeat() {
        let mut r = Registry::default();
        let hb = |fault: Option<&str>, full: bool| Heartbeat {
            storage_fault: fault.map(str::to_string),
            log_disk_full: full,
            ..Heartbeat::default()
        };
        for d in ["a", "b", "c", "off"] {
            r.on_status(
                d,
                DeviceStatus {
                    device_id: d.into(),
                    ..status(DeviceState::Online)
                },
                S,
            );
        }
        r.on_heartbeat("a", hb(Some("disk full"), true), S);
        r.on_heartbeat(
            "b",
            hb(Some("cannot write: Read-only file system"), false),
            S,
        );
        r.on_heartbeat("c", hb(None, false), S);
        r.on_heartbeat("off", hb(Some("disk full"), true), S);
        r.on_status(
            "off",
            DeviceStatus {
                device_id: "off".into(),
                ..status(DeviceState::Offline)
            },
            S,
        );
        assert_eq!(
            r.storage_faults(),
            (2, 1),
            "offline devices are not counted"
        );
        r.on_heartbeat("a", hb(None, false), 2 * S);
        assert_eq!(r.storage_faults(), (1, 0));
    }

    #[test]
    fn restore_starts_everyone_offline() {
        let mut r = Registry::default();
        r.on_status("d", status(DeviceState::Online), S);
        let saved = r.take_dirty();
        let r = Registry::restore(saved, &BTreeMap::new());
        assert_eq!((r.known(), r.online()), (1, 0));
    }

    #[test]
    fn restore_trusts_the_store_over_saved_counts() {
        let mut r = Registry::default();
        r.on_batch("d", 10, 0, 9, S);
        let saved = r.take_dirty();
        // The store holds more than the last saved entry knew of, and a
        // device the registry never saved.
        let counts = BTreeMap::from([("d".to_string(), (25, 24)), ("e".to_string(), (3, 2))]);
        let r = Registry::restore(saved, &counts);
        assert_eq!(r.get("d", S).unwrap().entry.records, 25);
        assert_eq!(r.get("d", S).unwrap().entry.highest_seq, Some(24));
        assert_eq!(r.get("e", S).unwrap().entry.records, 3);
    }
}
