//! `fleet-sim`: many simulated devices against a hub, for measuring the
//! hub and the dashboard at fleet sizes one machine cannot run as real
//! agents. Each device is its own MQTT connection and speaks the real
//! protocol: its status (retained, with an offline last will), a heartbeat
//! every `--heartbeat` seconds, and one record batch a second of `--rate`
//! records (seqs from 0, protobuf `RecordBatch`). It does not read the
//! hub's acks: it measures the hub, not an agent's log.
//!
//!     fleet-sim --mqtt 127.0.0.1:1883 --devices 1000 [--rate 2] [--heartbeat 5]

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use conveyor_shared::control::{DeviceState, DeviceStatus, Heartbeat};
use conveyor_shared::records::{Record, RecordBatch};
use conveyor_shared::time::now_us;
use conveyor_shared::topics::{Topic, TopicKind};
use conveyor_shared::DeviceId;
use prost::Message;
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};

#[derive(Parser)]
#[command(about = "Simulated devices speaking Conveyor's protocol to a hub")]
struct Args {
    /// The hub's MQTT address (host:port).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Records per second per device.
    #[arg(long, default_value_t = 2)]
    rate: usize,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 5.0)]
    heartbeat: f64,
    /// Device ids are `<prefix>-<n>`.
    #[arg(long, default_value = "sim")]
    prefix: String,
}

fn topic(id: &DeviceId, kind: TopicKind) -> String {
    Topic::new(id.clone(), kind).to_string()
}

async fn device(args: &Args, n: usize, host: String, port: u16) -> Result<()> {
    let id = DeviceId::new(format!("{}-{n:05}", args.prefix))?;
    let status = |state| DeviceStatus {
        device_id: id.to_string(),
        state,
        agent_version: "fleet-sim".into(),
        ts_us: now_us(),
        clean: false,
    };
    let mut opts = MqttOptions::new(id.to_string(), host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_last_will(LastWill::new(
        topic(&id, TopicKind::Status),
        status(DeviceState::Offline).encode(),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut events) = AsyncClient::new(opts, 64);
    // The connection: polling it again after an error reconnects.
    tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    client
        .publish(
            topic(&id, TopicKind::Status),
            QoS::AtLeastOnce,
            true,
            status(DeviceState::Online).encode(),
        )
        .await?;
    let started = std::time::Instant::now();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let beat_every = args.heartbeat.max(0.5);
    let mut last_beat = f64::NEG_INFINITY;
    loop {
        tick.tick().await;
        let now = now_us();
        let records = (0..args.rate)
            .map(|i| {
                let r = Record {
                    stream: "sim".into(),
                    seq,
                    source_ts_us: now - (args.rate - i) as i64 * 1000,
                    values: vec![(seq % 100) as f64, 1.0],
                    ..Record::default()
                };
                seq += 1;
                r
            })
            .collect();
        let batch = RecordBatch {
            version: 1,
            device_id: id.to_string(),
            sent_at_us: now,
            records,
        };
        client
            .publish(
                topic(&id, TopicKind::Records),
                QoS::AtLeastOnce,
                false,
                batch.encode_to_vec(),
            )
            .await?;
        let up = started.elapsed().as_secs_f64();
        if up - last_beat >= beat_every {
            last_beat = up;
            let hb = Heartbeat {
                device_id: id.to_string(),
                ts_us: now,
                uptime_s: up,
                records_produced: seq,
                records_published: seq,
                next_seq: seq,
                connects: 1,
                rss_bytes: 12_000_000,
                ..Heartbeat::default()
            };
            client
                .publish(
                    topic(&id, TopicKind::Heartbeat),
                    QoS::AtMostOnce,
                    false,
                    hb.encode(),
                )
                .await?;
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: &'static Args = Box::leak(Box::new(Args::parse()));
    let (host, port) = args
        .mqtt
        .rsplit_once(':')
        .context("--mqtt must be host:port")?;
    let port: u16 = port.parse().context("--mqtt: the port")?;
    eprintln!(
        "fleet-sim: {} devices, {} records/s each, against mqtt://{}",
        args.devices, args.rate, args.mqtt
    );
    let mut tasks = Vec::new();
    for n in 0..args.devices {
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = device(args, n, host, port).await {
                eprintln!("fleet-sim: device {n}: {e}");
            }
        }));
        // Spread the connects over a second or two.
        if n % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "fleet-sim: all {} devices started; Ctrl-C stops",
        args.devices
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
