//! `cloud-hub device tag`: the hub's own tags on a device, which deploys
//! and rollouts select by (`--tag`), beside the tags its agent reports
//! (over the running hub's API). `device add|list|revoke` are the
//! device's identity, in the hub's store (`identity_cli.rs`).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use serde_json::{json, Value};

use super::http::{check, request, Body};

#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Provision a device: a secret it proves itself with at connect,
    /// written to `<out>/<id>.secret` (mode 0600) for its agent.toml's
    /// `uplink.password_file`; stored hashed.
    Add {
        device: String,
        /// Where to write the secret file.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
        /// Give an existing device a new secret (the old one stops working).
        #[arg(long)]
        rotate: bool,
        #[command(flatten)]
        store: crate::identity_cli::StoreArg,
    },
    /// The provisioned devices, and which are revoked.
    List {
        #[command(flatten)]
        store: crate::identity_cli::StoreArg,
    },
    /// Revoke a device: refused at its next connect, cut off if connected.
    Revoke {
        device: String,
        #[command(flatten)]
        store: crate::identity_cli::StoreArg,
    },
    /// Set (KEY=VALUE) or remove (--remove KEY) tags on a device; without
    /// either, show its tags.
    Tag {
        device: String,
        tags: Vec<String>,
        /// A tag to remove (repeatable).
        #[arg(long = "remove")]
        remove: Vec<String>,
    },
}

fn print_tags(v: &Value) {
    let line = |m: &Value| {
        m.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    println!(
        "{}: {}",
        v["device_id"].as_str().unwrap_or("?"),
        line(&v["tags"])
    );
    println!("  set on the hub: {}", line(&v["hub"]));
    println!("  reported by the agent: {}", line(&v["reported"]));
}

async fn tag(hub: &str, device: &str, tags: &[String], remove: &[String]) -> Result<()> {
    let path = format!("/api/v1/devices/{device}/tags");
    let v = if tags.is_empty() && remove.is_empty() {
        let (code, v) = request(hub, "GET", &path, None).await?;
        check(code, &v, "device tag")?;
        v
    } else {
        let mut changes: BTreeMap<String, Value> = BTreeMap::new();
        for t in tags {
            let (k, v) = t.split_once('=').ok_or_else(|| {
                anyhow!("{t:?}: a tag is KEY=VALUE (remove one with --remove KEY)")
            })?;
            changes.insert(k.to_string(), json!(v));
        }
        for k in remove {
            changes.insert(k.clone(), Value::Null);
        }
        let body = json!({ "tags": changes });
        let (code, v) = request(hub, "PUT", &path, Some(Body::json(&body))).await?;
        check(code, &v, "device tag")?;
        v
    };
    print_tags(&v);
    Ok(())
}

/// Runs `cloud-hub device ...`: 0 done, 1 failed (with the reason).
pub fn run(cmd: DeviceCommand, hub: &str) -> ExitCode {
    let local = match &cmd {
        DeviceCommand::Add {
            device,
            out,
            rotate,
            store,
        } => Some(crate::identity_cli::device_add(store, device, out, *rotate)),
        DeviceCommand::List { store } => Some(crate::identity_cli::device_list(store)),
        DeviceCommand::Revoke { device, store } => {
            Some(crate::identity_cli::device_revoke(store, device))
        }
        DeviceCommand::Tag { .. } => None,
    };
    if let Some(done) = local {
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cloud-hub device: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let done = super::runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async move {
                match cmd {
                    DeviceCommand::Tag {
                        device,
                        tags,
                        remove,
                    } => tag(hub, &device, &tags, &remove).await,
                    _ => unreachable!("handled above"),
                }
            })
        });
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloud-hub device: {e:#}");
            ExitCode::FAILURE
        }
    }
}
