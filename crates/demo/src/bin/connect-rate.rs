//! `connect-rate`: how many device connections a hub accepts per second,
//! with or without TLS. Each worker is one provisioned device (a
//! `<id>.secret` file from `cloud-hub device add`) that connects (TCP, the
//! TLS handshake for `mqtts://`, MQTT CONNECT with its secret), waits for
//! the CONNACK, disconnects, and again, for `--seconds`. Every TLS connect
//! makes a new client configuration, so no session is resumed: each is a
//! full handshake, as after a hub restart when the whole fleet reconnects.
//!
//!     connect-rate --url mqtts://127.0.0.1:8883 --ca hub-ca.pem --secrets dir/ [--seconds 10]
//!
//! Prints one JSON object: connects, connects_per_sec, connect_ms_p50,
//! connect_ms_p99, failed (and the first failure).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use conveyor_shared::BrokerUrl;
use conveyor_transport::mqtt;
use conveyor_transport::tls::ClientTls;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, Outgoing, Packet};

#[derive(Parser)]
#[command(about = "Device connections per second against a hub's MQTT listener")]
struct Args {
    /// The hub's MQTT listener: mqtt://host:port or mqtts://host:port.
    #[arg(long)]
    url: String,
    /// The CA the hub's certificate is checked against (for mqtts://).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A folder of `<device>.secret` files: one worker per device.
    #[arg(long)]
    secrets: PathBuf,
    /// How long to connect for.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

struct Worker {
    device: String,
    secret: String,
}

#[derive(Default)]
struct Tally {
    connect_ms: Vec<f64>,
    failed: u64,
    first_failure: Option<String>,
}

async fn connect_once(url: &BrokerUrl, ca: Option<&[u8]>, w: &Worker) -> Result<()> {
    let mut o = mqtt::options(&w.device, url, Duration::from_secs(30));
    o.set_credentials(w.device.clone(), w.secret.clone());
    o.set_clean_session(true);
    if let Some(pem) = ca {
        mqtt::use_tls(&mut o, &ClientTls::from_ca_pem(pem, "--ca")?);
    }
    let (client, mut events) = AsyncClient::new(o, 10);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(a))) => {
                if a.code != ConnectReturnCode::Success {
                    bail!("refused: {:?}", a.code);
                }
                break;
            }
            Ok(_) => {}
            Err(e) => bail!("{}", e),
        }
    }
    client.disconnect().await?;
    while let Ok(e) = events.poll().await {
        if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
            break;
        }
    }
    Ok(())
}

async fn work(url: BrokerUrl, ca: Option<Vec<u8>>, w: Worker, until: Instant) -> Tally {
    let mut t = Tally::default();
    while Instant::now() < until {
        let start = Instant::now();
        match connect_once(&url, ca.as_deref(), &w).await {
            Ok(()) => t.connect_ms.push(start.elapsed().as_secs_f64() * 1e3),
            Err(e) => {
                t.failed += 1;
                t.first_failure
                    .get_or_insert_with(|| format!("{}: {e:#}", w.device));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    t
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let url = BrokerUrl::parse(&args.url).map_err(|e| anyhow::anyhow!("--url: {e}"))?;
    let ca = match (&args.ca, url.tls) {
        (Some(p), true) => {
            Some(std::fs::read(p).with_context(|| format!("--ca: cannot read {}", p.display()))?)
        }
        (None, true) => bail!("--ca: is required with an mqtts:// url"),
        (_, false) => None,
    };
    let mut workers = Vec::new();
    for entry in std::fs::read_dir(&args.secrets)
        .with_context(|| format!("--secrets: cannot read {}", args.secrets.display()))?
    {
        let path = entry?.path();
        if let Some(device) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".secret"))
        {
            let secret = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            workers.push(Worker {
                device: device.to_string(),
                secret: secret.trim().to_string(),
            });
        }
    }
    if workers.is_empty() {
        bail!(
            "--secrets: no <device>.secret files in {}",
            args.secrets.display()
        );
    }
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(work(url.clone(), ca.clone(), w, until)))
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await?;
        all.connect_ms.extend(t.connect_ms);
        all.failed += t.failed;
        if all.first_failure.is_none() {
            all.first_failure = t.first_failure;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.connect_ms.sort_by(f64::total_cmp);
    let summary = serde_json::json!({
        "connects": all.connect_ms.len(),
        "connects_per_sec": all.connect_ms.len() as f64 / elapsed,
        "connect_ms_p50": quantile(&all.connect_ms, 0.5),
        "connect_ms_p99": quantile(&all.connect_ms, 0.99),
        "failed": all.failed,
        "first_failure": all.first_failure,
    });
    println!("{summary}");
    Ok(())
}
