//! Over-the-air updates when the world misbehaves mid-download: the link
//! to the hub goes away, the agent is killed, the disk fills. The
//! download goes through a slow link (a loopback proxy passing 2 KiB/s),
//! so that each of these lands in the middle of it.

use conveyor_e2e::slow_link::SlowLink;
use conveyor_e2e::tmpfs::Tmpfs;
use conveyor_e2e::*;
use edge_agent::log::{FullPolicy, LogConfig};
use serde_json::Value;

use super::ota::{
    agent_config, assert_one_switch, deploy_cli, model, push, state, versions, wait_for_phase,
    DEVICE,
};

const FP32: &str = "basicmotions-edge@1.0.0-fp32";

/// What the slow link passes towards the agent, bytes per second: the
/// fp32 model (27 kB) takes about 13 s.
const RATE: u64 = 2048;

fn deploy(hub: &Hub) {
    deploy_artifact(hub, FP32);
}

fn deploy_artifact(hub: &Hub, artifact: &str) {
    let (code, out, err) = deploy_cli(hub, "classify", artifact, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
}

/// The report while generation `g` downloads, once `done` bytes are in.
fn downloading(hub: &Hub, g: u64, done: u64) -> Value {
    wait_for(
        &format!("generation {g} downloading past {done} bytes"),
        || {
            state(hub).filter(|s| {
                let c = &s["last_change"];
                c["generation"] == g
                    && c["phase"] == "downloading"
                    && c["bytes_done"].as_u64().is_some_and(|d| d >= done)
            })
        },
    )
}

/// The byte each request for `file` asked to start from (0 without `Range`).
fn starts_of(link: &SlowLink, file: &str) -> Vec<u64> {
    link.requests()
        .iter()
        .filter(|r| r.lines().next().is_some_and(|l| l.contains(file)))
        .map(|r| {
            r.lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("range").then_some(value)
                })
                .and_then(|v| {
                    v.trim()
                        .strip_prefix("bytes=")?
                        .strip_suffix('-')?
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        })
        .collect()
}

/// The watch agent of `ota::agent_config` (int8, 200 readings/s),
/// downloading through `link`.
fn slow_agent(hub: &Hub, link: &SlowLink) -> AgentConfig {
    let mut config = agent_config(
        hub,
        200.0,
        &model("basicmotions/edge.int8.json"),
        vec![hub.signing_key()],
    );
    config.ota.as_mut().unwrap().url = format!("http://{}", link.addr);
    config
}

/// Every record once, none missing.
fn assert_exactly_once(hub: &Hub) {
    let seqs = hub.seqs(DEVICE);
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "every record exactly once"
    );
}

/// A model that does not fit the stream is refused before it is
/// downloaded. The link to the hub's HTTP API is cut in the middle of a
/// download: the agent says it is retrying, while it goes on streaming
/// over MQTT; the link comes back and the download goes on from where it
/// was. Then the agent is SIGKILLed mid-download, and started again it
/// resumes once more and applies. Each resume asks for the rest of the
/// file with `Range`, and no record is lost or doubled.
#[test]
fn a_download_cut_off_by_the_link_and_by_a_kill_resumes_and_applies() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    push(&hub, &model("basicmotions/edge.fp32.json"));
    let link = SlowLink::start(hub.http, RATE);
    let config = slow_agent(&hub, &link);
    let mut agent = start_agent(dir.path(), "agent", &config);
    wait_for("a first prediction", || {
        (hub.records(DEVICE) >= 1).then_some(())
    });

    // 0. A model whose input does not fit the stage's stream (the smart
    // plug's 1 x 1460 for the watch's 6 x 100) is refused from its signed
    // manifest, before a byte of it is downloaded.
    push(&hub, &model("acsf1/edge.int8.json"));
    deploy_artifact(&hub, "acsf1-edge@1.0.0-int8");
    let refused = wait_for_phase(&hub, 1, "failed");
    let reason = refused["last_change"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("takes 1 channels x 1460 readings"),
        "{reason}"
    );
    assert!(link.bytes_down() < 4096, "only the manifest came");
    deploy(&hub);

    // 1. The link goes, mid-download.
    let at_cut = downloading(&hub, 2, 2 * RATE);
    link.cut();
    let retrying = wait_for("the agent to report that it retries", || {
        state(&hub).filter(|s| {
            s["last_change"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("unreachable") && r.contains("retrying"))
        })
    });
    assert_eq!(
        retrying["last_change"]["phase"], "downloading",
        "{retrying}"
    );
    assert_eq!(
        retrying["stages"]["classify"]["running"]["model"]["version"], "1.0.0-int8",
        "the running model keeps running: {retrying}"
    );
    let during = hub.records(DEVICE);
    wait_for("predictions while the link is down", || {
        (hub.records(DEVICE) > during).then_some(())
    });
    link.restore();

    // 2. Killed mid-download, after the download went on past the cut.
    let done_at_cut = at_cut["last_change"]["bytes_done"].as_u64().unwrap();
    let before_kill = downloading(&hub, 2, done_at_cut + 2 * RATE);
    let total = before_kill["last_change"]["bytes_total"].as_u64().unwrap();
    assert!(
        before_kill["last_change"]["bytes_done"].as_u64().unwrap() < total,
        "{before_kill}"
    );
    agent.signal(libc::SIGKILL);
    let _ = agent.wait();
    let mut agent = start_agent(dir.path(), "agent2", &config);
    wait_for("generation 2 applied", || {
        state(&hub).filter(|s| s["generation"] == 2)
    });

    // Resumed, not started over: after the cut and after the kill the
    // ONNX file was asked for from a byte past the start.
    let starts = starts_of(&link, "/files/edge.fp32.onnx");
    assert!(
        starts.iter().filter(|&&s| s > 0).count() >= 2,
        "two resumes with Range: {starts:?}\n{:#?}",
        link.requests()
    );
    assert!(
        starts.windows(2).all(|w| w[1] >= w[0]),
        "each resume starts where the last try stopped: {starts:?}"
    );
    let onnx = std::fs::metadata(model("basicmotions/edge.fp32.onnx"))
        .unwrap()
        .len();
    eprintln!(
        "slow link: {} bytes passed for a {onnx}-byte model, requests from {starts:?}",
        link.bytes_down()
    );

    assert!(agent.wait().success(), "{}", agent.log());
    assert_one_switch(&hub, "int8", "fp32");
    assert_exactly_once(&hub);
}

/// Fills `dir`'s file system with one file; returns its path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).and_then(|_| f.flush()).is_ok() {}
    path
}

/// The disk fills in the middle of a download: the agent reports the full
/// disk as the reason, removes what it had downloaded (the log needs the
/// room), keeps running its model and, with `block`, holds its source back
/// instead of losing readings. Once there is room again the next deploy
/// applies, and every record arrives exactly once.
#[test]
fn a_full_disk_while_downloading_is_reported_and_loses_nothing() {
    // Room for the log and the download check's 16 MiB margin, no more.
    let Some(disk) = Tmpfs::mount(
        "a_full_disk_while_downloading_is_reported_and_loses_nothing",
        40 << 20,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    push(&hub, &model("basicmotions/edge.fp32.json"));
    let link = SlowLink::start(hub.http, RATE);
    let config = slow_agent(&hub, &link)
        .data_dir(disk.join("state").display().to_string())
        .log(LogConfig {
            full_policy: FullPolicy::Block,
            ..LogConfig::default()
        });
    let mut agent = start_agent(dir.path(), "agent", &config);
    wait_for("a first prediction", || {
        (hub.records(DEVICE) >= 1).then_some(())
    });
    deploy(&hub);
    downloading(&hub, 1, 2 * RATE);
    let filler = fill(disk.path());

    let failed = wait_for_phase(&hub, 1, "failed");
    let reason = failed["last_change"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("No space left on device") && reason.contains("removed"),
        "{reason}"
    );
    assert_eq!(
        failed["stages"]["classify"]["running"]["model"]["version"], "1.0.0-int8",
        "{failed}"
    );
    let id = hub.get(&format!("/api/v1/artifacts/{FP32}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !disk
            .join(&format!("state/ota/artifacts/{id}.partial"))
            .exists(),
        "the partial download is gone"
    );
    assert!(agent.try_wait().is_none(), "{}", agent.log());

    // Room again: the next deploy downloads from the start and applies.
    std::fs::remove_file(filler).unwrap();
    deploy(&hub);
    wait_for("generation 2 applied", || {
        state(&hub).filter(|s| s["generation"] == 2)
    });
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records(DEVICE, 40);
    let v = versions(&hub);
    assert_eq!(v.len(), 40, "one prediction per window, none lost: {v:?}");
    assert_one_switch(&hub, "int8", "fp32");
    assert_exactly_once(&hub);
    let hb = hub.heartbeat(DEVICE).unwrap();
    assert_eq!(hb["log_dropped_full"], 0, "{hb}");
}
