//! The cascade report on the committed models and the real held-out test
//! data: the cascade's end points are edge-only and hub-only, escalations
//! and bytes grow with the threshold, the accuracies are the model cards',
//! predictions cost a small fraction of the raw readings, and the JSON
//! round-trips.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cloud_hub::cascade::report::{
    evaluate, render_table, run, CascadeReport, DatasetReport, ReportArgs, ReportRow,
    DEFAULT_THRESHOLDS,
};
use conveyor_shared::ModelMetadata;

fn models() -> PathBuf {
    Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR")
            .expect("run by cargo, which sets CARGO_MANIFEST_DIR"),
    )
    .join("../models")
}

/// Thresholds of the shared report: 0, the defaults, 1 and above 1.
const THRESHOLDS: [f32; 10] = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0, 1.01];

/// Every test reads one evaluation (each model runs once per window).
fn report() -> &'static CascadeReport {
    static REPORT: OnceLock<CascadeReport> = OnceLock::new();
    REPORT.get_or_init(|| evaluate(&models(), &models().join("data"), &THRESHOLDS).unwrap())
}

fn row<'a>(d: &'a DatasetReport, strategy: &str, threshold: Option<f32>) -> &'a ReportRow {
    d.rows
        .iter()
        .find(|r| r.strategy == strategy && r.threshold == threshold)
        .unwrap_or_else(|| panic!("{}: no {strategy} row at {threshold:?}", d.dataset))
}

fn card(dataset: &DatasetReport, file: &str) -> ModelMetadata {
    ModelMetadata::load(&models().join(dataset.dataset.to_lowercase()).join(file)).unwrap()
}

#[test]
fn covers_both_data_sets_and_every_test_window() {
    let r = report();
    let names: Vec<&str> = r.datasets.iter().map(|d| d.dataset.as_str()).collect();
    assert_eq!(names, ["BasicMotions", "ACSF1"]);
    for (d, windows) in r.datasets.iter().zip([40, 100]) {
        assert_eq!(d.windows, windows, "{}", d.dataset);
        assert_eq!(d.rows.len(), 2 + THRESHOLDS.len(), "{}", d.dataset);
        let edge = card(d, "edge.int8.json");
        let hub = card(d, "hub.fp32.json");
        assert_eq!(d.edge_model, format!("{}@{}", edge.id, edge.version));
        assert_eq!(d.hub_model, format!("{}@{}", hub.id, hub.version));
    }
}

#[test]
fn threshold_zero_is_edge_only() {
    for d in &report().datasets {
        let edge = row(d, "edge-only", None);
        let zero = row(d, "cascade", Some(0.0));
        assert_eq!(zero.escalated, 0, "{}", d.dataset);
        assert_eq!(edge.escalated, 0, "{}", d.dataset);
        assert_eq!(zero.accuracy, edge.accuracy, "{}", d.dataset);
        assert_eq!(zero.uplink_bytes, edge.uplink_bytes, "{}", d.dataset);
        assert_eq!(
            zero.bytes_per_window, edge.bytes_per_window,
            "{}",
            d.dataset
        );
    }
}

#[test]
fn above_one_escalates_everything_and_is_as_accurate_as_hub_only() {
    for d in &report().datasets {
        let all = row(d, "cascade", Some(1.01));
        let hub = row(d, "hub-only", None);
        assert_eq!(all.escalated, d.windows, "{}", d.dataset);
        assert_eq!(hub.escalated, d.windows, "{}", d.dataset);
        assert_eq!(all.accuracy, hub.accuracy, "{}", d.dataset);
        // Escalating every window still sends each window once, as f32s
        // in one record instead of f64s in a record per reading.
        assert!(
            all.uplink_bytes < hub.uplink_bytes,
            "{}: {all:?} vs {hub:?}",
            d.dataset
        );
        assert!(all.uplink_bytes > row(d, "edge-only", None).uplink_bytes);
    }
}

#[test]
fn escalations_and_bytes_never_decrease_as_the_threshold_grows() {
    for d in &report().datasets {
        let cascade: Vec<&ReportRow> = d.rows.iter().filter(|r| r.strategy == "cascade").collect();
        let thresholds: Vec<f32> = cascade.iter().map(|r| r.threshold.unwrap()).collect();
        assert_eq!(
            thresholds, THRESHOLDS,
            "{}: rows in the order asked",
            d.dataset
        );
        for pair in cascade.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                b.escalated >= a.escalated,
                "{}: {a:?} then {b:?}",
                d.dataset
            );
            assert!(
                b.uplink_bytes >= a.uplink_bytes,
                "{}: {a:?} then {b:?}",
                d.dataset
            );
            // More escalations must cost bytes: each carries a window.
            if b.escalated > a.escalated {
                assert!(
                    b.uplink_bytes > a.uplink_bytes,
                    "{}: {a:?} then {b:?}",
                    d.dataset
                );
            }
        }
        for r in &d.rows {
            assert!((0.0..=1.0).contains(&r.accuracy), "{r:?}");
            let per_window = r.uplink_bytes as f64 / d.windows as f64;
            assert_eq!(r.bytes_per_window, per_window, "{r:?}");
        }
    }
}

#[test]
fn accuracies_are_the_model_cards() {
    for d in &report().datasets {
        let edge = card(d, "edge.int8.json").metrics.unwrap();
        let hub = card(d, "hub.fp32.json").metrics.unwrap();
        assert_eq!(edge.test_windows, d.windows, "{}", d.dataset);
        assert_eq!(
            row(d, "edge-only", None).accuracy,
            edge.test_accuracy,
            "{}: edge model",
            d.dataset
        );
        assert_eq!(
            row(d, "hub-only", None).accuracy,
            hub.test_accuracy,
            "{}: hub model",
            d.dataset
        );
    }
}

#[test]
fn predictions_cost_a_small_fraction_of_the_raw_readings() {
    for d in &report().datasets {
        let edge = row(d, "edge-only", None);
        let hub = row(d, "hub-only", None);
        assert_eq!(hub.bytes_vs_hub_only, 1.0);
        assert!(
            edge.bytes_per_window < 0.1 * hub.bytes_per_window,
            "{}: edge-only {} B/window, hub-only {} B/window",
            d.dataset,
            edge.bytes_per_window,
            hub.bytes_per_window
        );
        assert_eq!(
            edge.bytes_vs_hub_only,
            edge.uplink_bytes as f64 / hub.uplink_bytes as f64
        );
    }
}

#[test]
fn json_round_trips() {
    let r = report();
    let json = serde_json::to_string_pretty(r).unwrap();
    let back: CascadeReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.datasets.len(), r.datasets.len());
    for (a, b) in r.datasets.iter().zip(&back.datasets) {
        assert_eq!(
            (&a.dataset, &a.edge_model, &a.hub_model, a.windows),
            (&b.dataset, &b.edge_model, &b.hub_model, b.windows)
        );
        assert_eq!(a.rows.len(), b.rows.len());
        for (x, y) in a.rows.iter().zip(&b.rows) {
            assert_eq!(
                (&x.strategy, x.threshold, x.escalated, x.uplink_bytes),
                (&y.strategy, y.threshold, y.escalated, y.uplink_bytes)
            );
            // serde_json parses floats to within an ulp by default.
            for (p, q) in [
                (x.accuracy, y.accuracy),
                (x.bytes_per_window, y.bytes_per_window),
                (x.bytes_vs_hub_only, y.bytes_vs_hub_only),
            ] {
                assert!((p - q).abs() <= 1e-12 * p.abs().max(1.0), "{p} vs {q}");
            }
        }
    }
}

#[test]
fn the_table_has_a_row_per_strategy() {
    let table = render_table(report());
    for d in &report().datasets {
        assert!(table.contains(&format!("### {}:", d.dataset)), "{table}");
    }
    let rows = table.lines().filter(|l| l.starts_with("| ")).count();
    // A header line per data set, then its rows.
    let expected: usize = report().datasets.iter().map(|d| 1 + d.rows.len()).sum();
    assert_eq!(rows, expected, "{table}");
}

#[test]
fn a_missing_directory_is_named() {
    let missing = PathBuf::from("/nonexistent/conveyor-models");
    let args = ReportArgs {
        models_dir: Some(missing.clone()),
        data_dir: None,
        thresholds: DEFAULT_THRESHOLDS.to_vec(),
        json: false,
    };
    let e = run(&args).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/conveyor-models"), "{e}");
    let args = ReportArgs {
        models_dir: Some(models()),
        data_dir: Some(missing.join("data")),
        ..args
    };
    let e = format!("{:#}", run(&args).unwrap_err());
    assert!(e.contains("/nonexistent/conveyor-models/data"), "{e}");
}

/// The report with the default thresholds, as `cloud-hub cascade-report`
/// prints it (`cargo test -p cloud-hub --test cascade_report -- --nocapture`).
#[test]
fn default_report_prints() {
    let args = ReportArgs {
        models_dir: None,
        data_dir: None,
        thresholds: DEFAULT_THRESHOLDS.to_vec(),
        json: false,
    };
    let r = run(&args).unwrap();
    println!("{}", render_table(&r));
    // The defaults are a subset of the shared report's thresholds.
    for (d, shared) in r.datasets.iter().zip(&report().datasets) {
        for x in &d.rows {
            assert_eq!(x, row(shared, &x.strategy, x.threshold), "{}", d.dataset);
        }
    }
}

#[test]
fn arguments_parse_with_the_default_thresholds() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReportArgs,
    }
    let cli = Cli::try_parse_from(["cascade-report"]).unwrap();
    assert_eq!(cli.args.thresholds, DEFAULT_THRESHOLDS);
    assert!(!cli.args.json && cli.args.models_dir.is_none() && cli.args.data_dir.is_none());
    let cli = Cli::try_parse_from([
        "cascade-report",
        "--thresholds",
        "0.6,0.85",
        "--models-dir",
        "m",
        "--json",
    ])
    .unwrap();
    assert_eq!(cli.args.thresholds, [0.6, 0.85]);
    assert_eq!(cli.args.models_dir, Some(PathBuf::from("m")));
    assert!(cli.args.json);
}
