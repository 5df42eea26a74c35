//! A real Fluvio cluster on loopback for the tests: one SC and one or more
//! SPUs (`fluvio-run`), registered and driven with Fluvio's own CLI
//! (`fluvio`), each in the test's directory with a private client profile.
//!
//! The cluster's binaries are not in any registry this project reaches
//! (see `../shared/tools/fluvio/README.md`): [`tools`] finds them through
//! `CONVEYOR_FLUVIO_DIR`, or beside the repository in
//! `../shared/tools/fluvio`. Without them a test calls [`skip`], which says
//! loudly that it was skipped and why.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{free_port, wait_for, Proc};

/// The folder with `fluvio-run` and `fluvio`, if there is one.
pub fn tools() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CONVEYOR_FLUVIO_DIR").map(PathBuf::from),
        Some(crate::repo_root().join("../shared/tools/fluvio")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("fluvio-run").is_file() && d.join("fluvio").is_file())
}

/// True (after saying so on stderr) when the Fluvio binaries are missing.
pub fn skip(test: &str) -> bool {
    if tools().is_some() {
        return false;
    }
    eprintln!(
        "SKIPPED {test}: no Fluvio cluster binaries (fluvio-run, fluvio) in $CONVEYOR_FLUVIO_DIR \
         or ../shared/tools/fluvio; see tests/src/fluvio.rs"
    );
    true
}

struct Spu {
    id: i32,
    public: u16,
    private: u16,
    proc: Option<Proc>,
}

/// A running cluster: its SC and SPUs, stopped on drop.
pub struct Cluster {
    tools: PathBuf,
    dir: PathBuf,
    _sc: Proc,
    sc_private: u16,
    pub sc_public: u16,
    spus: Vec<Spu>,
}

impl Cluster {
    /// An SC and `spus` SPUs, all online.
    pub fn start(dir: &Path, spus: usize) -> Cluster {
        let tools = tools().expect("Fluvio binaries (check fluvio::skip first)");
        let dir = dir.join("fluvio");
        std::fs::create_dir_all(&dir).unwrap();
        let (sc_public, sc_private) = (free_port(), free_port());
        let mut sc = Command::new(tools.join("fluvio-run"));
        sc.arg("sc")
            .arg("--local")
            .arg(dir.join("sc"))
            .args(["--bind-public", &format!("127.0.0.1:{sc_public}")])
            .args(["--bind-private", &format!("127.0.0.1:{sc_private}")]);
        let sc = Proc::spawn("fluvio-sc", sc, dir.join("sc.log"));
        let mut cluster = Cluster {
            tools,
            dir,
            _sc: sc,
            sc_private,
            sc_public,
            spus: Vec::new(),
        };
        wait_for("the Fluvio SC to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", sc_public))
                .ok()
                .map(|_| ())
        });
        cluster.cli_ok(&[
            "profile",
            "add",
            "test",
            &format!("127.0.0.1:{sc_public}"),
            "local",
        ]);
        for i in 0..spus {
            let spu = Spu {
                id: 5001 + i as i32,
                public: free_port(),
                private: free_port(),
                proc: None,
            };
            cluster.cli_ok(&[
                "cluster",
                "spu",
                "register",
                "--id",
                &spu.id.to_string(),
                "--public-server",
                &format!("127.0.0.1:{}", spu.public),
                "--private-server",
                &format!("127.0.0.1:{}", spu.private),
            ]);
            cluster.spus.push(spu);
            cluster.start_spu(i);
        }
        cluster
    }

    /// `fluvio://127.0.0.1:<sc public port>`.
    pub fn url(&self) -> String {
        format!("fluvio://127.0.0.1:{}", self.sc_public)
    }

    /// `[fluvio]` for hub.toml, with `extra` lines inside the table.
    pub fn hub_toml(&self, extra: &str) -> String {
        format!("[fluvio]\nurl = {:?}\n{extra}", self.url())
    }

    /// Fluvio's CLI against this cluster.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(self.tools.join("fluvio"))
            .args(args)
            .env("FLV_PROFILE_PATH", self.dir.join("profile.toml"))
            .output()
            .unwrap()
    }

    /// [`Cluster::cli`] that must succeed: its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "fluvio {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SPU `i` (from 0): started (again), and online at the SC.
    pub fn start_spu(&mut self, i: usize) {
        let spu = &self.spus[i];
        let mut cmd = Command::new(self.tools.join("fluvio-run"));
        cmd.arg("spu")
            .args(["-i", &spu.id.to_string()])
            .args(["-p", &format!("127.0.0.1:{}", spu.public)])
            .args(["-v", &format!("127.0.0.1:{}", spu.private)])
            .args(["--sc-addr", &format!("127.0.0.1:{}", self.sc_private)])
            .arg("--log-base-dir")
            .arg(self.dir.join(format!("spu-{}", spu.id)));
        let log = self.dir.join(format!("spu-{}.log", spu.id));
        // Appended across restarts, so a failing test shows the whole story.
        let proc = Proc::spawn_appending(&format!("fluvio-spu-{}", spu.id), cmd, log);
        let id = spu.id.to_string();
        self.spus[i].proc = Some(proc);
        wait_for(&format!("Fluvio SPU {id} to be online"), || {
            let list = self.cli(&["cluster", "spu", "list"]);
            let text = String::from_utf8_lossy(&list.stdout);
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(&id) && l.contains("Online"))
                .then_some(())
        });
    }

    /// SIGKILL of SPU `i`.
    pub fn kill_spu(&mut self, i: usize) {
        if let Some(mut p) = self.spus[i].proc.take() {
            p.signal(libc::SIGKILL);
            p.wait();
        }
    }

    /// A topic of `partitions`, replicated `replication` times, with every
    /// follower in sync ([`Cluster::wait_in_sync`]).
    pub fn create_topic(&self, name: &str, partitions: u32, replication: u32) {
        self.cli_ok(&[
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
            "--replication",
            &replication.to_string(),
        ]);
        self.wait_in_sync(name);
    }

    /// `fluvio partition list` as JSON: one object per partition
    /// (`name` "<topic>-<n>", `spec`, `status`).
    fn partitions(&self) -> Vec<serde_json::Value> {
        let out = self.cli_ok(&["partition", "list", "-O", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("fluvio partition list: {e}:\n{out}"))
    }

    /// `topic`'s partitions, in order.
    fn partitions_of(&self, topic: &str) -> Vec<serde_json::Value> {
        let prefix = format!("{topic}-");
        let mut found: Vec<(u32, serde_json::Value)> = self
            .partitions()
            .into_iter()
            .filter_map(|p| {
                let n = p["name"].as_str()?.strip_prefix(&prefix)?.parse().ok()?;
                Some((n, p))
            })
            .collect();
        found.sort_by_key(|(n, _)| *n);
        found.into_iter().map(|(_, p)| p).collect()
    }

    /// Waits until every partition of `topic` is online with all its
    /// followers replicating (a follower offset of 0 or more; the status's
    /// `lsr` count flaps under traffic). Fluvio elects a new leader only
    /// from followers that replicate, and a new replicated topic's follower
    /// can miss its first sync (when it asks before the leader has made
    /// the replica) and catch up only at its next reconciliation, about
    /// 10 s later in Fluvio 0.18.1: a leader killed before that leaves its
    /// partition `LeaderOffline`.
    pub fn wait_in_sync(&self, topic: &str) {
        wait_for(&format!("every replica of {topic} in sync"), || {
            let parts = self.partitions_of(topic);
            let synced = !parts.is_empty()
                && parts.iter().all(|p| {
                    let followers = p["spec"]["replicas"]
                        .as_array()
                        .map_or(0, |r| r.len().saturating_sub(1));
                    let synced = p["status"]["replicas"].as_array().map_or(0, |r| {
                        r.iter().filter(|f| f["leo"].as_i64() >= Some(0)).count()
                    });
                    p["status"]["resolution"] == "Online" && synced == followers
                });
            if !synced {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            synced.then_some(())
        });
    }

    /// The leader SPU (index into this cluster's SPUs) of `topic`'s
    /// `partition`.
    pub fn leader(&self, topic: &str, partition: u32) -> usize {
        let parts = self.partitions_of(topic);
        let p = parts
            .get(partition as usize)
            .unwrap_or_else(|| panic!("no partition {topic}-{partition} in {parts:?}"));
        let leader = p["spec"]["leader"].as_i64().unwrap();
        self.spus
            .iter()
            .position(|s| i64::from(s.id) == leader)
            .unwrap()
    }
}

/// Every record of `topic` (all its partitions) as Fluvio's client reads
/// it: key and value, in offset order per partition.
pub fn read_all(cluster_url: &str, topic: &str) -> Vec<(String, Vec<u8>)> {
    use fluvio::consumer::ConsumerConfigExtBuilder;
    use futures_util::StreamExt;
    let endpoint = cluster_url.trim_start_matches("fluvio://").to_string();
    let topic = topic.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = fluvio::FluvioClusterConfig::new(endpoint);
        let client = fluvio::Fluvio::connect_with_config(&config).await.unwrap();
        let mut stream = client
            .consumer_with_config(
                ConsumerConfigExtBuilder::default()
                    .topic(topic)
                    .offset_start(fluvio::Offset::beginning())
                    .disable_continuous(true)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(r) = stream.next().await {
            let r = r.unwrap();
            let key = String::from_utf8_lossy(r.key().unwrap_or_default()).into_owned();
            out.push((key, r.value().to_vec()));
        }
        out
    })
}
