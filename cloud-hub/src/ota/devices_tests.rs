use conveyor_shared::ota::{ArtifactId, ArtifactRef, ChainLink, Opened};

use super::*;

fn key() -> SecretKey {
    SecretKey::from_seed([1; 32])
}

fn model(v: &str) -> StageTarget {
    StageTarget::Model(ArtifactRef {
        name: "m".into(),
        version: v.into(),
        id: ArtifactId::of_payload(v),
    })
}

fn changes(items: &[(&str, Option<StageTarget>)]) -> BTreeMap<String, Option<StageTarget>> {
    items
        .iter()
        .map(|(s, t)| (s.to_string(), t.clone()))
        .collect()
}

fn gw() -> DeviceId {
    DeviceId::new("gw").unwrap()
}

fn open(dir: &Path) -> (DeviceStore, Skipped) {
    DeviceStore::open(dir, &key().public()).unwrap()
}

#[test]
fn generations_grow_across_reopen_and_changes_merge() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let d1 = s
        .set(&gw(), &changes(&[("a", Some(model("1")))]), &key())
        .unwrap();
    assert_eq!(d1.doc.generation, 1);
    let d2 = s
        .set(&gw(), &changes(&[("b", Some(model("2")))]), &key())
        .unwrap();
    assert_eq!(d2.doc.stages.len(), 2, "merged, not replaced");
    let (mut s, skipped) = open(dir.path());
    assert_eq!(skipped, Skipped::default());
    assert_eq!(s.devices["gw"].desired.as_ref().unwrap().doc, d2.doc);
    let d3 = s.set(&gw(), &changes(&[("a", None)]), &key()).unwrap();
    assert_eq!(d3.doc.generation, 3);
    assert_eq!(d3.doc.stages.keys().collect::<Vec<_>>(), vec!["b"]);
    // What is published verifies as the agent will check it.
    let opened = DesiredState::open(&d3.envelope, &[key().public()], "gw", Some(2)).unwrap();
    assert!(matches!(opened, Opened::New(..)));
    // Another device has its own generations.
    let other = DeviceId::new("other").unwrap();
    assert_eq!(
        s.set(&other, &changes(&[("a", None)]), &key())
            .unwrap()
            .doc
            .generation,
        1
    );
}

#[test]
fn a_desired_state_that_no_longer_verifies_is_skipped_but_its_generation_is_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    for _ in 0..4 {
        s.set(&gw(), &changes(&[("a", Some(model("1")))]), &key())
            .unwrap();
    }
    // The hub's key replaced: the stored document does not verify.
    let other = SecretKey::from_seed([2; 32]);
    let (mut s, skipped) = DeviceStore::open(dir.path(), &other.public()).unwrap();
    assert_eq!(skipped.desired, 1);
    assert!(s.devices["gw"].desired.is_none());
    let next = s
        .set(&gw(), &changes(&[("a", Some(model("2")))]), &other)
        .unwrap();
    assert_eq!(next.doc.generation, 5);
}

#[test]
fn merge_sets_replaces_and_removes_stages() {
    let mut stages = BTreeMap::from([("a".to_string(), model("1")), ("b".to_string(), model("1"))]);
    let chain = StageTarget::Transforms(vec![ChainLink::new(ArtifactRef {
        name: "t".into(),
        version: "1".into(),
        id: ArtifactId::of_payload("t"),
    })]);
    merge(
        &mut stages,
        &changes(&[
            ("a", Some(model("2"))),
            ("b", None),
            ("c", Some(chain.clone())),
            ("x", None),
        ]),
    );
    assert_eq!(
        stages,
        BTreeMap::from([("a".to_string(), model("2")), ("c".to_string(), chain)])
    );
}

#[test]
fn too_many_stages_are_refused_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let many: BTreeMap<_, _> = (0..=MAX_STAGES)
        .map(|i| (format!("s{i}"), Some(model("1"))))
        .collect();
    assert!(matches!(
        s.set(&gw(), &many, &key()),
        Err(SetError::TooManyStages(_))
    ));
    assert!(open(dir.path()).0.devices.is_empty());
}

#[test]
fn reports_survive_a_reopen_and_a_bad_one_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let state = AgentState {
        device_id: "gw".into(),
        generation: Some(1),
        stages: Default::default(),
        last_change: None,
        tags: BTreeMap::from([("store".into(), "7".into())]),
        ts_us: 3,
    };
    s.report(state.clone(), 10, true).unwrap();
    s.set(&gw(), &changes(&[("a", Some(model("1")))]), &key())
        .unwrap();
    let view = s.devices["gw"].view();
    assert_eq!(
        (
            view.desired_generation,
            view.applied_generation,
            view.behind
        ),
        (Some(1), Some(1), false)
    );
    std::fs::write(dir.path().join("ota/devices/bad.state"), b"{").unwrap();
    std::fs::write(dir.path().join("ota/devices/liar.state"), state.encode()).unwrap();
    let (s, skipped) = open(dir.path());
    assert_eq!(s.devices["gw"].report(), Some(&state));
    assert_eq!(skipped.states, 2);
}

#[test]
fn hub_tags_persist_win_over_reported_ones_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(dir.path());
    let set = |items: &[(&str, Option<&str>)]| -> BTreeMap<String, Option<String>> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    };
    let reported = AgentState {
        device_id: "gw".into(),
        generation: None,
        stages: Default::default(),
        last_change: None,
        tags: [("store", "7"), ("ring", "prod")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ts_us: 0,
    };
    store.report(reported, 0, true).unwrap();
    let tags = store
        .tag(
            &gw(),
            &set(&[("ring", Some("canary")), ("region", Some("eu"))]),
        )
        .unwrap();
    assert_eq!(
        tags.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
        ["region=eu", "ring=canary", "store=7"],
        "the hub's ring wins over the agent's"
    );
    store.tag(&gw(), &set(&[("region", None)])).unwrap();
    let (again, skipped) = open(dir.path());
    assert_eq!(skipped.states, 0);
    let d = &again.devices["gw"];
    assert_eq!(d.hub_tags.len(), 1);
    assert_eq!(d.tags().get("ring").map(String::as_str), Some("canary"));
    for bad in [
        ("", Some("x")),
        ("a=b", Some("x")),
        ("k", Some("")),
        ("k", Some("\n")),
    ] {
        assert!(
            matches!(store.tag(&gw(), &set(&[bad])), Err(TagError::Bad(_))),
            "{bad:?}"
        );
    }
    let many: BTreeMap<String, Option<String>> = (0..65)
        .map(|i| (format!("k{i}"), Some("v".into())))
        .collect();
    assert!(matches!(
        store.tag(&gw(), &many),
        Err(TagError::TooMany(66))
    ));
}

#[test]
fn shadows_start_and_stop_and_setting_a_stage_ends_its_shadow() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let candidate = ArtifactRef {
        name: "m".into(),
        version: "9".into(),
        id: ArtifactId::of_payload("9"),
    };
    let shadow = |a: Option<ArtifactRef>| BTreeMap::from([("a".to_string(), a)]);
    let d = s
        .set_with_shadows(
            &gw(),
            &changes(&[]),
            &shadow(Some(candidate.clone())),
            &key(),
        )
        .unwrap();
    assert_eq!(d.doc.shadows.get("a"), Some(&candidate));
    assert!(d.doc.stages.is_empty());
    // Another stage's change keeps it; stopping it, or setting its stage, ends it.
    let d = s
        .set(&gw(), &changes(&[("b", Some(model("1")))]), &key())
        .unwrap();
    assert_eq!(d.doc.shadows.get("a"), Some(&candidate));
    let d = s
        .set(&gw(), &changes(&[("a", Some(model("9")))]), &key())
        .unwrap();
    assert!(d.doc.shadows.is_empty());
    s.set_with_shadows(&gw(), &changes(&[]), &shadow(Some(candidate)), &key())
        .unwrap();
    let d = s
        .set_with_shadows(&gw(), &changes(&[]), &shadow(None), &key())
        .unwrap();
    assert!(d.doc.shadows.is_empty());
    // It survives a reopen with the document.
    let (reopened, _) = open(dir.path());
    assert_eq!(reopened.devices["gw"].desired.as_ref().unwrap().doc, d.doc);
}
