//! What a run found, as data (written with `--json`) and as markdown tables.

use serde::Serialize;

use bench_stats::{fmt_ratio, fmt_thousands, fmt_us, Summary};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    /// `ok` with the version, or why ONNX Runtime is not measured.
    pub ort: OrtStatus,
    pub models: Vec<ModelReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub threads_per_engine: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub seconds_per_engine: f64,
    pub rounds: usize,
    pub warmup_seconds: f64,
    pub input_clone: &'static str,
    pub ort_session: &'static str,
    pub tract_loader: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrtStatus {
    pub available: bool,
    pub version: Option<String>,
    pub library: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelReport {
    pub metadata: String,
    pub id: String,
    pub version: String,
    pub dataset: String,
    pub precision: String,
    pub channels: usize,
    pub window: usize,
    pub classes: usize,
    pub onnx_bytes: u64,
    pub reference: Option<String>,
    pub reference_cases: usize,
    pub tract: EngineReport,
    pub ort: EngineReport,
    pub agreement: Option<Agreement>,
    /// tract p50 / ORT p50 (> 1: tract is slower).
    pub ratio_p50: Option<f64>,
    /// With `--unfused`: tract's plan without the loader's fused quantize
    /// (vzeroupper after every node, as the loader).
    pub unfused: Option<EngineReport>,
    /// unfused p50 / ORT p50.
    pub ratio_unfused_p50: Option<f64>,
    /// Why the model could not be measured at all.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineReport {
    /// `ok`, `unavailable: ...` or `error: ...`.
    pub status: String,
    /// Load, check and optimise, in ms (tract: `OnnxModel::load` +
    /// `runner()`; ORT: session builder + `commit_from_file`).
    pub load_ms: Option<f64>,
    pub latency: Option<Summary>,
    /// The p50 of each round, us: how much the machine moved under us.
    pub round_p50_us: Vec<f64>,
}

/// The sanity check on the reference windows, before timing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Agreement {
    pub cases: usize,
    /// max |tract - ORT| over every probability of every case.
    pub tract_vs_ort: Option<f32>,
    /// max |engine - recorded output|.
    pub tract_vs_reference: Option<f32>,
    pub ort_vs_reference: Option<f32>,
    /// Cases where tract's and ORT's top class agree.
    pub same_class: Option<usize>,
    /// max |unfused - tract|, with `--unfused`.
    pub unfused_vs_tract: Option<f32>,
}

impl EngineReport {
    pub fn status_short(&self) -> &str {
        self.status.split(':').next().unwrap_or("")
    }
}

fn lat(e: &EngineReport, f: impl Fn(&Summary) -> String) -> String {
    match &e.latency {
        Some(s) => f(s),
        None => e.status_short().to_string(),
    }
}

/// The latency table, one row per model.
pub fn latency_table(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(
        "| model | precision | input | tract p50 us | tract p99 us | tract windows/s | ORT p50 us | ORT p99 us | ORT windows/s | tract/ORT p50 |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for m in &r.models {
        if let Some(e) = &m.error {
            let name = if m.id.is_empty() { &m.metadata } else { &m.id };
            out.push_str(&format!(
                "| {} | {} | | error: {} | | | | | | |\n",
                name,
                m.precision,
                one_line(e)
            ));
            continue;
        }
        out.push_str(&format!(
            "| {} | {} | {}x{} | {} | {} | {} | {} | {} | {} | {} |\n",
            m.id,
            m.precision,
            m.channels,
            m.window,
            lat(&m.tract, |s| fmt_us(s.p50_us)),
            lat(&m.tract, |s| fmt_us(s.p99_us)),
            lat(&m.tract, |s| fmt_thousands(s.windows_per_s)),
            lat(&m.ort, |s| fmt_us(s.p50_us)),
            lat(&m.ort, |s| fmt_us(s.p99_us)),
            lat(&m.ort, |s| fmt_thousands(s.windows_per_s)),
            fmt_ratio(m.ratio_p50),
        ));
    }
    out
}

/// With `--unfused`: the loader (fused quantize) against tract's unfused
/// plan and ORT, same run.
pub fn unfused_table(r: &Report) -> Option<String> {
    if r.models.iter().all(|m| m.unfused.is_none()) {
        return None;
    }
    let mut out = String::new();
    out.push_str("| model | precision | unfused p50 us | unfused p99 us | loader (fused) p50 us | loader p99 us | ORT p50 us | unfused/ORT p50 | loader/ORT p50 | loader/unfused p50 | max abs diff | unfused load ms |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for m in r.models.iter().filter(|m| m.error.is_none()) {
        let Some(u) = &m.unfused else { continue };
        let speedup = match (&m.tract.latency, &u.latency) {
            (Some(t), Some(u)) => bench_stats::ratio(t.p50_us, u.p50_us),
            _ => None,
        };
        let diff = m.agreement.as_ref().and_then(|a| a.unfused_vs_tract);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            m.id,
            m.precision,
            lat(u, |s| fmt_us(s.p50_us)),
            lat(u, |s| fmt_us(s.p99_us)),
            lat(&m.tract, |s| fmt_us(s.p50_us)),
            lat(&m.tract, |s| fmt_us(s.p99_us)),
            lat(&m.ort, |s| fmt_us(s.p50_us)),
            fmt_ratio(m.ratio_unfused_p50),
            fmt_ratio(m.ratio_p50),
            fmt_ratio(speedup),
            diff.map_or("n/a".to_string(), |v| format!("{v:.2e}")),
            u.load_ms
                .map_or(u.status_short().to_string(), |v| format!("{v:.1}")),
        ));
    }
    Some(out)
}

/// Load times and the agreement check, one row per model.
pub fn load_table(r: &Report) -> String {
    let ms = |v: Option<f64>, e: &EngineReport| match v {
        Some(v) => format!("{v:.1}"),
        None => e.status_short().to_string(),
    };
    let diff = |v: Option<f32>| v.map_or("n/a".to_string(), |v| format!("{v:.2e}"));
    let mut out = String::new();
    out.push_str("| model | precision | ONNX bytes | tract load+optimise ms | ORT session ms | reference cases | max abs diff tract vs ORT | same top class | tract vs recorded | ORT vs recorded |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for m in &r.models {
        if m.error.is_some() {
            continue;
        }
        let a = m.agreement.clone().unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            m.id,
            m.precision,
            fmt_thousands(m.onnx_bytes as f64),
            ms(m.tract.load_ms, &m.tract),
            ms(m.ort.load_ms, &m.ort),
            a.cases,
            diff(a.tract_vs_ort),
            a.same_class
                .map_or("n/a".to_string(), |n| format!("{n}/{}", a.cases)),
            diff(a.tract_vs_reference),
            diff(a.ort_vs_reference),
        ));
    }
    out
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '|'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let s = |p50: f64| Summary {
            calls: 10,
            p50_us: p50,
            p99_us: p50 * 2.0,
            mean_us: p50,
            windows_per_s: 1e6 / p50,
        };
        Report {
            machine: Machine {
                cpus: 2,
                cpu_model: "x".into(),
                threads_per_engine: 1,
            },
            settings: Settings {
                seconds_per_engine: 1.0,
                rounds: 5,
                warmup_seconds: 0.1,
                input_clone: "outside",
                ort_session: "",
                tract_loader: "",
            },
            ort: OrtStatus {
                available: false,
                version: None,
                library: None,
                reason: Some("no library".into()),
            },
            models: vec![
                ModelReport {
                    id: "bm-edge".into(),
                    precision: "int8".into(),
                    channels: 6,
                    window: 100,
                    tract: EngineReport {
                        status: "ok".into(),
                        load_ms: Some(12.5),
                        latency: Some(s(71.4)),
                        round_p50_us: vec![],
                    },
                    ort: EngineReport {
                        status: "unavailable: no library".into(),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                ModelReport {
                    metadata: "broken.json".into(),
                    error: Some("bad\nfile".into()),
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn tables_show_unavailable_ort_and_errors() {
        let r = report();
        let t = latency_table(&r);
        assert!(t.contains("| bm-edge | int8 | 6x100 | 71.4 | 142.8 | 14,006 | unavailable | unavailable | unavailable | n/a |"), "{t}");
        assert!(t.contains("| broken.json |  | | error: bad file"), "{t}");
        let l = load_table(&r);
        assert!(l.contains("| 12.5 | unavailable |"), "{l}");
        assert!(!l.contains("broken"));
        // and the JSON has the reason
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["ort"]["reason"], "no library");
        assert_eq!(j["models"][0]["tract"]["latency"]["p50_us"], 71.4);
    }
}
