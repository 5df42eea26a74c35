use super::*;
use conveyor_shared::{Decider, Escalation, Prediction};

fn prediction_record(seq: u64, escalated: bool) -> Record {
    Record {
        stream: "m.predictions".into(),
        seq,
        label: "Walking".into(),
        prediction: Some(Prediction {
            label: "Running".into(),
            confidence: 0.4,
            ..Default::default()
        }),
        escalation: escalated.then(|| Escalation {
            hub_model: "hub".into(),
            threshold: 0.9,
            channels: 1,
            window: vec![1.0, 2.0],
            sampled: false,
        }),
        ..Default::default()
    }
}

#[test]
fn edge_results_are_stored_with_their_records_and_escalations_wait() {
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceId::new("a").unwrap();
    {
        let store = open(dir.path()).unwrap();
        let batch = [prediction_record(1, false), prediction_record(2, true), {
            let mut r = prediction_record(3, false);
            r.prediction = None;
            r
        }];
        let n = store.append(&a, &batch, 5, &mut |_| ()).unwrap();
        assert_eq!(n.edge_results.len(), 1);
        assert_eq!(n.edge_results[0].decider(), Decider::Edge);
        assert_eq!(n.escalated.len(), 1);
        assert_eq!(n.escalated[0].seq, 2);
        // A redelivery is neither a new result nor a new escalation.
        let again = store.append(&a, &batch, 6, &mut |_| ()).unwrap();
        assert!(again.edge_results.is_empty() && again.escalated.is_empty());
        store.commit().unwrap();
    }
    // After a restart the escalation is still pending.
    let store = open(dir.path()).unwrap();
    assert_eq!(store.pending().unwrap(), vec![("a".to_string(), 2)]);
    let rec = store.record("a", 2).unwrap().unwrap();
    let hub = Prediction {
        label: "Walking".into(),
        confidence: 0.99,
        ..Default::default()
    };
    store
        .put_result("a", &FinalPrediction::by_hub(&rec, hub, 9))
        .unwrap();
    assert!(store.pending().unwrap().is_empty());
    let all = store.records_from("a", 0, 10).unwrap();
    assert_eq!(all[0].result.as_ref().unwrap().decider(), Decider::Edge);
    let two = all[1].result.as_ref().unwrap();
    assert_eq!((two.decider(), two.correct()), (Decider::Hub, Some(true)));
    assert!(all[2].result.is_none(), "no prediction, no result");
    assert_eq!(store.latest_results("a", 1).unwrap()[0].seq, 2);
    assert_eq!(store.results_from("a", 0, 10).unwrap().len(), 2);
}

#[test]
fn the_hub_answer_clears_the_mark_for_good_and_a_lost_record_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceId::new("a").unwrap();
    {
        let store = open(dir.path()).unwrap();
        let batch = [prediction_record(1, true), prediction_record(2, true)];
        store.append(&a, &batch, 5, &mut |_| ()).unwrap();
        let rec = store.record("a", 1).unwrap().unwrap();
        let answer = FinalPrediction::hub_failed(&rec, "down".into(), 6);
        store.put_result("a", &answer).unwrap();
        assert_eq!(store.result("a", 1).unwrap(), Some(answer));
        store.forget_pending("a", 2).unwrap();
        store.forget_pending("a", 99).unwrap();
        store.commit().unwrap();
    }
    let store = open(dir.path()).unwrap();
    assert!(store.pending().unwrap().is_empty());
    assert!(store.result("a", 1).unwrap().is_some());
    assert!(store.result("a", 2).unwrap().is_none());
}
