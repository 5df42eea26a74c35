//! The overview and the device list, from plain values.

use super::*;
use crate::registry::{DeviceEntry, DeviceView};
use conveyor_shared::control::{Heartbeat, StageStats, TransformStats};
use conveyor_shared::ota::{Change, Phase, RunningArtifact, StageRunning, StageState};

const S: i64 = 1_000_000;

fn view(id: &str, online: bool, rate: f64) -> DeviceView {
    let mut entry = DeviceEntry::default();
    entry.device_id = id.into();
    entry.online = online;
    entry.last_seen_us = 40 * S;
    DeviceView {
        entry,
        records_per_sec: rate,
        ota: Default::default(),
    }
}

fn report(version: &str, failed: Option<&str>) -> AgentState {
    AgentState {
        device_id: String::new(),
        generation: Some(1),
        stages: BTreeMap::from([(
            "classify".to_string(),
            StageState {
                running: StageRunning::Model(RunningArtifact {
                    name: "m".into(),
                    version: version.into(),
                    id: None,
                }),
                previous: None,
                shadow: None,
            },
        )]),
        last_change: failed.map(|why| Change {
            generation: Some(2),
            phase: Phase::Failed,
            reason: Some(why.into()),
            bytes_done: 0,
            bytes_total: 0,
            since_us: 0,
        }),
        tags: BTreeMap::new(),
        ts_us: 0,
    }
}

/// Three devices: a online on m@1, b online on m@2 whose log dropped
/// records and whose transform dead-lettered some, c offline on m@1 with a
/// refused update.
fn fleet() -> Vec<(DeviceView, Option<AgentState>)> {
    let mut a = view("a", true, 10.0);
    a.entry.predictions.insert(
        "m@1".into(),
        crate::registry::PredictionTally {
            predictions: 7,
            scored: 4,
            correct: 3,
            ..Default::default()
        },
    );
    let mut b = view("b", true, 20.0);
    b.entry.last_heartbeat = Some(Heartbeat {
        log_dropped_full: 3,
        log_dropped_age: 1,
        log_bytes: 900,
        log_bound_bytes: Some(1000),
        rss_bytes: 9_000_000,
        storage_fault: Some("disk full".into()),
        stages: vec![StageStats {
            transforms: vec![TransformStats {
                dead_lettered: 2,
                ..TransformStats::default()
            }],
            ..StageStats::default()
        }],
        ..Heartbeat::default()
    });
    vec![
        (a, Some(report("1", None))),
        (b, Some(report("2", None))),
        (view("c", false, 0.0), Some(report("1", Some("bad digest")))),
    ]
}

fn rows(f: &[(DeviceView, Option<AgentState>)]) -> Vec<DeviceRow> {
    f.iter()
        .map(|(v, r)| {
            let tags = if v.entry.device_id == "b" {
                BTreeMap::from([("store".to_string(), "7".to_string())])
            } else {
                BTreeMap::new()
            };
            row(v, r.as_ref(), tags)
        })
        .collect()
}

#[test]
fn the_overview_counts_devices_rates_versions_and_raises_alerts() {
    let f = fleet();
    let o = overview(&f, &rows(&f), &[("hub-m".into(), 4)], 100 * S);
    assert_eq!((o.devices_known, o.devices_online), (3, 2));
    assert_eq!(o.ingest_records_per_sec, 30.0);
    assert_eq!((o.dropped, o.dead_letters), (4, 2));
    assert_eq!(o.predictions, 7);
    let m1 = &o.edge_models["m@1"];
    assert_eq!(
        (m1.devices, m1.predictions, m1.scored, m1.correct),
        (1, 7, 4, 3)
    );
    assert_eq!(
        o.versions["classify"],
        BTreeMap::from([("m@1".to_string(), 2), ("m@2".to_string(), 1)])
    );
    let kinds: Vec<(&str, Option<&str>)> = o
        .alerts
        .iter()
        .map(|a| (a.kind.as_str(), a.device.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("offline", Some("c")),
            ("storage", Some("b")),
            ("log_near_bound", Some("b")),
            ("drops", Some("b")),
            ("dead_letters", Some("b")),
            ("ota_failed", Some("c")),
            ("hub_model_overloaded", None),
        ]
    );
    assert_eq!(o.alerts[0].text, "offline; last seen 60 s ago");
    assert_eq!(o.alerts[2].text, "its log is 90 % full (900 of 1000 bytes)");
    assert!(o.alerts[5].text.contains("bad digest"));
}

#[test]
fn many_alerts_of_a_kind_are_listed_up_to_a_bound_then_counted() {
    let f: Vec<_> = (0..MAX_ALERTS_PER_KIND + 5)
        .map(|i| (view(&format!("d{i:03}"), false, 0.0), None))
        .collect();
    let o = overview(&f, &rows(&f), &[], 100 * S);
    assert_eq!(o.alerts.len(), MAX_ALERTS_PER_KIND + 1);
    assert_eq!(o.alerts.last().unwrap().text, "and 5 more devices");
}

#[test]
fn the_list_filters_by_id_status_tag_and_version_and_pages() {
    let r = rows(&fleet());
    let ids = |filter: Filter, offset, limit| {
        let (total, page) = page(r.clone(), &filter, offset, limit).unwrap();
        (
            total,
            page.into_iter().map(|r| r.device_id).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        ids(Filter::default(), 0, 2),
        (3, vec!["a".into(), "b".into()])
    );
    assert_eq!(ids(Filter::default(), 2, 2), (3, vec!["c".into()]));
    let f = |q: &str, status: &str, tag: &str, version: &str| Filter {
        q: Some(q.into()),
        status: Some(status.into()),
        tag: Some(tag.into()),
        version: Some(version.into()),
    };
    assert_eq!(ids(f("B", "", "", ""), 0, 10), (1, vec!["b".into()]));
    assert_eq!(ids(f("", "offline", "", ""), 0, 10), (1, vec!["c".into()]));
    assert_eq!(
        ids(f("", "online", "store=7", ""), 0, 10),
        (1, vec!["b".into()])
    );
    assert_eq!(ids(f("", "all", "", "m@1"), 0, 10).0, 2);
    assert!(page(r.clone(), &f("", "sleeping", "", ""), 0, 10)
        .unwrap_err()
        .contains("online, offline or all"));
    assert!(page(r, &f("", "", "store", ""), 0, 10)
        .unwrap_err()
        .contains("KEY=VALUE"));
}

#[test]
fn a_row_carries_what_the_list_shows() {
    let f = fleet();
    let b = &rows(&f)[1];
    assert_eq!(b.running["classify"], "m@2");
    assert_eq!((b.dropped, b.dead_letters, b.rss_bytes), (4, 2, 9_000_000));
    assert_eq!(b.storage_fault.as_deref(), Some("disk full"));
    assert_eq!(b.tags["store"], "7");
}
