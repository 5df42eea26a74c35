//! `cloud-hub deploy`: set what a stage runs on devices, and with
//! `--wait` follow each device's report until it applied the new
//! generation or failed, one line per change of phase.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::http::{check, request, Body};

/// How often `--wait` asks for the devices' states.
const POLL: Duration = Duration::from_millis(250);

pub struct DeployArgs<'a> {
    pub hub: &'a str,
    pub devices: &'a [String],
    pub tags: &'a [String],
    pub stage: &'a str,
    pub artifacts: &'a [String],
    pub configs: &'a [String],
    pub wait: bool,
    pub timeout: Duration,
}

fn pairs(items: &[String], flag: &str, form: &str) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|t| {
            t.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("{flag} {t:?}: must be {form}"))
        })
        .collect()
}

/// The stage's target: one model, or the transforms as a chain in order
/// (each with its `--config`), as the deploy and rollout APIs take it.
pub(super) async fn stage_target(
    hub: &str,
    artifacts: &[String],
    config_args: &[String],
) -> Result<Value> {
    let mut configs = BTreeMap::new();
    for (name, text) in pairs(config_args, "--config", "TRANSFORM=JSON")? {
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("--config {name}: not JSON"))?;
        if !v.is_object() {
            bail!("--config {name}: must be a JSON object, got {text}");
        }
        configs.insert(name, v);
    }
    let mut found = Vec::new();
    for r in artifacts {
        let (status, v) = request(hub, "GET", &format!("/api/v1/artifacts/{r}"), None).await?;
        check(status, &v, &format!("--artifact {r}"))?;
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        found.push((r.clone(), field("kind"), field("name")));
    }
    if let Some(unused) = configs
        .keys()
        .find(|c| !found.iter().any(|(_, _, n)| n == *c))
    {
        bail!("--config {unused}: no transform of that name among the --artifact ones");
    }
    match found.as_slice() {
        [(r, kind, _)] if kind == "model" => Ok(json!({"model": r})),
        many if !many.is_empty() && many.iter().all(|(_, k, _)| k == "transform") => Ok(json!({
            "transforms": many.iter().map(|(r, _, name)| json!({
                "artifact": r,
                "config": configs.get(name).cloned().unwrap_or(json!({})),
            })).collect::<Vec<_>>()
        })),
        _ => bail!("--artifact: give one model, or one or more transforms (a chain, in order)"),
    }
}

/// Deploys; with `--wait`, whether every device applied it.
pub async fn deploy(a: DeployArgs<'_>) -> Result<bool> {
    let tags: BTreeMap<_, _> = pairs(a.tags, "--tag", "KEY=VALUE")?.into_iter().collect();
    let body = json!({
        "devices": a.devices,
        "tags": tags,
        "stages": {a.stage: stage_target(a.hub, a.artifacts, a.configs).await?},
    });
    let started_us = conveyor_shared::time::now_us();
    let (status, v) = request(a.hub, "POST", "/api/v1/deploy", Some(Body::json(&body))).await?;
    check(status, &v, "deploy")?;
    let deployed: Vec<(String, u64)> = v["deployed"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap_or_default().to_string(),
                d["generation"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for (d, g) in &deployed {
        println!("{d}: desired state generation {g} published");
    }
    if !a.wait {
        return Ok(true);
    }
    wait(&a, &deployed, started_us).await
}

/// Where one device is with generation `g`.
#[derive(Debug, PartialEq)]
enum Progress {
    Waiting,
    Phase(String),
    Applied,
    Failed(String),
}

/// Reads a device's report against generation `g` deployed at `since_us`.
fn progress(state: &Value, g: u64, since_us: i64) -> Progress {
    if state["generation"].as_u64().is_some_and(|a| a >= g) {
        return Progress::Applied;
    }
    let change = &state["last_change"];
    let about_ours = match change["generation"].as_u64() {
        Some(cg) => cg == g,
        // Refused before its generation could be trusted (a bad
        // signature): ours if it came after the deploy.
        None => change["since_us"].as_i64().is_some_and(|t| t >= since_us),
    };
    if !about_ours {
        return Progress::Waiting;
    }
    match change["phase"].as_str().unwrap_or_default() {
        "failed" => Progress::Failed(change["reason"].as_str().unwrap_or("?").to_string()),
        "downloading" => Progress::Phase(format!(
            "downloading {}/{} bytes",
            change["bytes_done"], change["bytes_total"]
        )),
        p => Progress::Phase(p.to_string()),
    }
}

async fn wait(a: &DeployArgs<'_>, deployed: &[(String, u64)], since_us: i64) -> Result<bool> {
    let started = Instant::now();
    // The last phase shown per device (progress within a phase is not a
    // new line), and each device's outcome once it has one.
    let mut shown: BTreeMap<&str, String> = BTreeMap::new();
    let mut outcome: BTreeMap<&str, bool> = BTreeMap::new();
    while outcome.len() < deployed.len() {
        for (d, g) in deployed {
            if outcome.contains_key(d.as_str()) {
                continue;
            }
            let state =
                match request(a.hub, "GET", &format!("/api/v1/devices/{d}/state"), None).await {
                    Ok((200, s)) => s,
                    _ => Value::Null,
                };
            let (phase, line) = match progress(&state, *g, since_us) {
                Progress::Waiting => ("waiting".to_string(), "waiting for the device".to_string()),
                Progress::Phase(p) => (p.split(' ').next().unwrap_or_default().to_string(), p),
                Progress::Applied => {
                    outcome.insert(d, true);
                    let s = started.elapsed().as_secs_f64();
                    (
                        "applied".into(),
                        format!("applied generation {g} ({s:.1} s)"),
                    )
                }
                Progress::Failed(reason) => {
                    outcome.insert(d, false);
                    ("failed".into(), format!("failed: {reason}"))
                }
            };
            if shown.get(d.as_str()) != Some(&phase) {
                println!("{d}: {line}");
                shown.insert(d, phase);
            }
        }
        if outcome.len() == deployed.len() {
            break;
        }
        if started.elapsed() > a.timeout {
            for (d, g) in deployed {
                if !outcome.contains_key(d.as_str()) {
                    println!(
                        "{d}: timed out after {} s before applying generation {g}",
                        a.timeout.as_secs()
                    );
                }
            }
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(outcome.values().all(|ok| *ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_read_against_the_deployed_generation() {
        let st = |applied: u64, g: Option<u64>, phase: &str, since: i64| {
            json!({"generation": applied, "last_change": {
                "generation": g, "phase": phase, "reason": "bad digest",
                "bytes_done": 5, "bytes_total": 10, "since_us": since}})
        };
        assert_eq!(progress(&Value::Null, 3, 0), Progress::Waiting);
        assert_eq!(
            progress(&st(2, Some(2), "applied", 0), 3, 0),
            Progress::Waiting
        );
        assert_eq!(
            progress(&st(2, Some(3), "downloading", 0), 3, 0),
            Progress::Phase("downloading 5/10 bytes".into())
        );
        assert_eq!(
            progress(&st(3, Some(3), "applied", 0), 3, 0),
            Progress::Applied
        );
        assert_eq!(
            progress(&st(2, Some(3), "failed", 0), 3, 0),
            Progress::Failed("bad digest".into())
        );
        // A refusal without a generation: ours only if after the deploy.
        assert_eq!(
            progress(&st(2, None, "failed", 5), 3, 10),
            Progress::Waiting
        );
        assert!(matches!(
            progress(&st(2, None, "failed", 15), 3, 10),
            Progress::Failed(_)
        ));
    }
}
