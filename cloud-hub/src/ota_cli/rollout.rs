//! `cloud-hub rollout start | list | status [--watch] | pause | resume |
//! abort | rollback`: clients of a running hub's rollout API.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use super::http::{check, request, Body};

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout: a model (or a transform chain) for one stage, on
    /// devices chosen by id or tag, in waves, each soaked and gated.
    Start(Box<StartArgs>),
    /// The rollouts, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One rollout: its state, each wave's devices per phase, failures
    /// with their reasons, and its recorded steps.
    Status {
        id: u64,
        /// Redraw every second until the rollout ends.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Start no more devices until `resume`.
    Pause {
        id: u64,
    },
    Resume {
        id: u64,
    },
    /// Stop here: devices keep what they run.
    Abort {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Send every device the rollout changed back to what it ran before
    /// (from its cache: no download).
    Rollback {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The stage's name (`name` in the agents' `[[stages]]`).
    #[arg(long)]
    stage: String,
    /// name@version (or id): one model, or transforms in chain order.
    #[arg(long = "artifact", required = true)]
    artifacts: Vec<String>,
    /// A transform's config in the chain, TRANSFORM=JSON (repeatable).
    #[arg(long = "config")]
    configs: Vec<String>,
    /// A device id (repeatable).
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Devices whose agents report this tag, KEY=VALUE (repeatable: all must match).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Wave sizes, cumulative: device counts or percentages of the target.
    #[arg(long, default_value = "1,10%,50%,100%")]
    waves: String,
    /// How long each applied device runs, every gate holding, before its
    /// wave may go on (e.g. 30s, 5m, 1h).
    #[arg(long, default_value = "60s")]
    soak: String,
    /// A device with no progress for this long counts as failed.
    #[arg(long, default_value = "5m")]
    device_timeout: String,
    /// Failed or timed-out devices tolerated: a count (2) or a share
    /// (10%); one more and the rollout rolls back by itself.
    #[arg(long, default_value = "0")]
    max_failures: String,
    /// Gate: on labelled windows, the candidate's accuracy may be at most
    /// this far below the model it replaces on the same device (0.05 = 5
    /// points).
    #[arg(long)]
    accuracy_margin: Option<f64>,
    /// Gate: on windows the agents sample for the hub's teacher
    /// (`teacher_every`), the candidate's agreement with it may be at most
    /// this far below the replaced model's. Needs no labels.
    #[arg(long)]
    teacher_margin: Option<f64>,
    /// Labelled windows the candidate needs before the accuracy gate judges.
    #[arg(long, default_value_t = 10)]
    min_windows: u64,
    /// Gate: the longest a soaking device may stay silent (e.g. 30s).
    #[arg(long)]
    max_silence: Option<String>,
    /// Do not count an agent restart during the soak as a failed gate.
    #[arg(long)]
    allow_restarts: bool,
    /// Gate: failed windows, failed or dead-lettered records in the
    /// stage while soaking, at most.
    #[arg(long)]
    max_errors: Option<u64>,
    /// Gate: the agent's resident memory may grow at most this many MB
    /// while soaking.
    #[arg(long)]
    max_rss_growth_mb: Option<f64>,
    /// Shadow first: each device runs the candidate beside its model on
    /// this many live windows, acting only on its model, and switches
    /// only if the shadow gate holds (a model only).
    #[arg(long)]
    shadow_windows: Option<u64>,
    /// Shadow gate: the share of windows on which the candidate must give
    /// the device model's label.
    #[arg(long, default_value_t = 0.9)]
    shadow_agreement: f64,
    /// Shadow gate: windows the candidate may fail to run.
    #[arg(long, default_value_t = 0)]
    shadow_max_errors: u64,
    /// Only shadow: judge the candidate on live data, switch no device
    /// (implies a shadow run; --shadow-windows defaults to 20).
    #[arg(long)]
    shadow_only: bool,
}

/// `30s`, `5m`, `1h`, `90` (seconds).
pub fn parse_duration(text: &str) -> Result<f64> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow!("{text:?} is not a duration (e.g. 30s, 5m, 1h)"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => bail!("{text:?}: the unit is ms, s, m or h"),
    };
    if !(n.is_finite() && n >= 0.0) {
        bail!("{text:?}: a duration is 0 or more");
    }
    Ok(n * scale)
}

/// Who runs the command, for the rollout's log: `$USER@host`.
fn who() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

async fn start(hub: &str, a: StartArgs) -> Result<()> {
    if a.devices.is_empty() && a.tags.is_empty() {
        bail!("give --device ID or --tag KEY=VALUE");
    }
    let mut tags = BTreeMap::new();
    for t in &a.tags {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| anyhow!("--tag {t:?}: must be KEY=VALUE"))?;
        tags.insert(k.to_string(), v.to_string());
    }
    let target = super::deploy::stage_target(hub, &a.artifacts, &a.configs).await?;
    let max_failures: Value = match a.max_failures.trim().parse::<u64>() {
        Ok(n) => json!(n),
        Err(_) => json!(a.max_failures.trim()),
    };
    let body = json!({
        "stage": a.stage,
        "target": target,
        "devices": a.devices,
        "tags": tags,
        "waves": a.waves,
        "soak_s": parse_duration(&a.soak).map_err(|e| anyhow!("--soak: {e}"))?,
        "device_timeout_s": parse_duration(&a.device_timeout).map_err(|e| anyhow!("--device-timeout: {e}"))?,
        "max_failures": max_failures,
        "gates": {
            "accuracy_margin": a.accuracy_margin,
            "teacher_margin": a.teacher_margin,
            "min_windows": a.min_windows,
            "max_silence_s": a.max_silence.as_deref().map(parse_duration).transpose()
                .map_err(|e| anyhow!("--max-silence: {e}"))?,
            "allow_restarts": a.allow_restarts,
            "max_errors": a.max_errors,
            "max_rss_growth_mb": a.max_rss_growth_mb,
        },
        "by": who(),
    });
    let mut body = body;
    if a.shadow_windows.is_some() || a.shadow_only {
        body["shadow"] = json!({
            "windows": a.shadow_windows,
            "min_agreement": a.shadow_agreement,
            "max_errors": a.shadow_max_errors,
            "only": a.shadow_only,
        });
    }
    let (status, v) = request(hub, "POST", "/api/v1/rollouts", Some(Body::json(&body))).await?;
    check(status, &v, "rollout start")?;
    println!(
        "rollout {} started: {} devices in {} waves",
        v["id"], v["summary"]["devices"], v["summary"]["waves"]
    );
    print!("{}", render(&v));
    Ok(())
}

/// A bar of `width` cells: `#` healthy, `+` in progress, `x` failed, `<`
/// rolled back, `.` pending.
fn bar(phases: &Value, devices: u64, width: usize) -> String {
    let n = |k: &str| phases[k].as_u64().unwrap_or(0);
    let parts = [
        ('#', n("healthy")),
        (
            '+',
            n("downloading") + n("verifying") + n("applying") + n("shadowing") + n("applied"),
        ),
        ('x', n("failed") + n("timed_out")),
        ('<', n("rolling_back") + n("rolled_back")),
    ];
    let mut out = String::new();
    for (c, k) in parts {
        let cells = if devices == 0 {
            0
        } else {
            (k as usize * width).div_ceil(devices as usize)
        };
        out.extend(std::iter::repeat_n(c, cells.min(width - out.len())));
    }
    out.extend(std::iter::repeat_n('.', width - out.len()));
    out
}

/// The rollout as `status` prints it.
pub fn render(v: &Value) -> String {
    let s = &v["summary"];
    let mut out = format!(
        "rollout {} | stage {} | {} | wave {} of {} | {}\n",
        v["id"],
        v["stage"].as_str().unwrap_or("?"),
        target_text(&v["target"]),
        s["wave"],
        s["waves"],
        v["state"].as_str().unwrap_or("?"),
    );
    if let Some(reason) = v["reason"].as_str() {
        out += &format!("  why: {reason}\n");
    }
    for w in s["per_wave"].as_array().into_iter().flatten() {
        let devices = w["devices"].as_u64().unwrap_or(0);
        let phases = &w["phases"];
        let counts: Vec<String> = phases
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out += &format!(
            "  wave {:>2} [{}] {devices} devices: {}\n",
            w["wave"],
            bar(phases, devices, 30),
            counts.join(", ")
        );
    }
    for d in v["devices"].as_array().into_iter().flatten() {
        let (device, phase) = (
            d["device"].as_str().unwrap_or("?"),
            d["phase"].as_str().unwrap_or("?"),
        );
        if let Some(reason) = d["reason"].as_str() {
            out += &format!("  {device} {phase}: {reason}\n");
        } else if let Some(figures) = d["shadow_figures"].as_str() {
            out += &format!("  {device} {phase}: shadow {figures}\n");
        }
    }
    out
}

fn target_text(t: &Value) -> String {
    if let Some(m) = t.get("model") {
        return format!(
            "{}@{}",
            m["name"].as_str().unwrap_or("?"),
            m["version"].as_str().unwrap_or("?")
        );
    }
    t["transforms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            format!(
                "{}@{}",
                l["artifact"]["name"].as_str().unwrap_or("?"),
                l["artifact"]["version"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

fn log_text(v: &Value) -> String {
    let mut out = String::from("  steps:\n");
    for step in v["log"].as_array().into_iter().flatten() {
        let at = step["at_us"].as_i64().unwrap_or(0);
        out += &format!(
            "    {} {}: {}\n",
            conveyor_shared::time::utc_text(at),
            step["by"].as_str().unwrap_or("?"),
            step["what"].as_str().unwrap_or("?")
        );
    }
    out
}

async fn status(hub: &str, id: u64, watch: bool, as_json: bool) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    loop {
        let (code, v) = request(hub, "GET", &format!("/api/v1/rollouts/{id}"), None).await?;
        check(code, &v, &format!("rollout {id}"))?;
        let done = !matches!(v["state"].as_str(), Some("running" | "paused"));
        if as_json {
            println!("{v}");
        } else {
            if watch && tty {
                // Redraw in place.
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", render(&v));
            if !watch || done {
                print!("{}", log_text(&v));
            }
        }
        if !watch || done {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn list(hub: &str, as_json: bool) -> Result<()> {
    let (code, v) = request(hub, "GET", "/api/v1/rollouts", None).await?;
    check(code, &v, "rollout list")?;
    if as_json {
        println!("{v}");
        return Ok(());
    }
    let all = v["rollouts"].as_array().cloned().unwrap_or_default();
    if all.is_empty() {
        println!("no rollouts");
    }
    for r in all {
        println!(
            "{:>4}  {:<10} {:<24} {:<30} wave {}/{}  {} devices",
            r["id"],
            r["state"].as_str().unwrap_or("?"),
            r["stage"].as_str().unwrap_or("?"),
            target_text(&r["target"]),
            r["summary"]["wave"],
            r["summary"]["waves"],
            r["summary"]["devices"],
        );
    }
    Ok(())
}

async fn command(hub: &str, id: u64, verb: &str, reason: Option<String>) -> Result<()> {
    let body = json!({"by": who(), "reason": reason});
    let (code, v) = request(
        hub,
        "POST",
        &format!("/api/v1/rollouts/{id}/{verb}"),
        Some(Body::json(&body)),
    )
    .await?;
    check(code, &v, &format!("rollout {verb} {id}"))?;
    print!("{}", render(&v));
    Ok(())
}

/// Runs `cloud-hub rollout ...`: 0 done, 1 failed (with the reason).
pub fn run(cmd: RolloutCommand, hub: &str) -> ExitCode {
    let done = super::runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async move {
                match cmd {
                    RolloutCommand::Start(a) => start(hub, *a).await,
                    RolloutCommand::List { json } => list(hub, json).await,
                    RolloutCommand::Status { id, watch, json } => {
                        status(hub, id, watch, json).await
                    }
                    RolloutCommand::Pause { id } => command(hub, id, "pause", None).await,
                    RolloutCommand::Resume { id } => command(hub, id, "resume", None).await,
                    RolloutCommand::Abort { id, reason } => command(hub, id, "abort", reason).await,
                    RolloutCommand::Rollback { id, reason } => {
                        command(hub, id, "rollback", reason).await
                    }
                }
            })
        });
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloud-hub rollout: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("30s").unwrap(), 30.0);
        assert_eq!(parse_duration("5m").unwrap(), 300.0);
        assert_eq!(parse_duration("1h").unwrap(), 3600.0);
        assert_eq!(parse_duration("90").unwrap(), 90.0);
        assert_eq!(parse_duration("250ms").unwrap(), 0.25);
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn a_bar_shows_each_phase_in_proportion() {
        let phases = json!({"healthy": 2, "downloading": 1, "failed": 1});
        assert_eq!(bar(&phases, 4, 8), "####++xx");
        assert_eq!(bar(&json!({}), 4, 8), "........");
        assert_eq!(bar(&json!({}), 0, 4), "....");
    }
}
