//! A local Fluvio cluster for `--transport fluvio|mixed`: one SC and one
//! SPU on free 127.0.0.1 ports, run from Fluvio's own binaries
//! (`fluvio-run`; the `fluvio` CLI registers the SPU with the SC), with
//! their metadata, logs and records under the demo's temporary folder.
//! Stopped (SIGTERM, then SIGKILL) when dropped.
//!
//! The binaries are in no registry (see `../shared/tools/fluvio/README.md`
//! beside the repository), so the demo looks for them and says where it
//! looked when they are not there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long the SC and the SPU may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The SPU's id (Fluvio's local clusters count from 5001).
const SPU_ID: u32 = 5001;

pub struct LocalCluster {
    sc: Child,
    /// None until it is started.
    spu: Option<Child>,
    /// `fluvio://127.0.0.1:<SC public port>`: what the hub and agents use.
    pub url: String,
}

/// The folder holding `fluvio-run` and `fluvio`: `dir` if given (the
/// `--fluvio-dir` option or `CONVEYOR_FLUVIO_DIR`), else beside the
/// repository (`../shared/tools/fluvio`), else the `PATH`.
pub fn find_tools(dir: Option<&Path>) -> Result<PathBuf> {
    let has_both = |d: &Path| d.join("fluvio-run").is_file() && d.join("fluvio").is_file();
    if let Some(d) = dir {
        if has_both(d) {
            return Ok(d.to_path_buf());
        }
        bail!(
            "--fluvio-dir {}: no fluvio-run and fluvio binaries there",
            d.display()
        );
    }
    let mut candidates = vec![
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/tools/fluvio"),
        PathBuf::from("../shared/tools/fluvio"),
    ];
    candidates.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    match candidates.iter().find(|d| has_both(d)) {
        Some(d) => Ok(d.canonicalize()?),
        None => bail!(
            "--transport fluvio|mixed runs a local Fluvio cluster, and Fluvio's cluster binaries \
             (fluvio-run and fluvio, in no package registry) were not found: give their folder \
             with --fluvio-dir or CONVEYOR_FLUVIO_DIR (looked beside the repository in \
             ../shared/tools/fluvio and on the PATH)"
        ),
    }
}

impl LocalCluster {
    /// Starts the SC and one SPU with `tools`, under `dir`; returns once the
    /// SPU is online at the SC. Blocking (processes and polls); call it on
    /// a thread that lives as long as the cluster should (see [`spawn`]).
    pub fn start(tools: &Path, dir: &Path) -> Result<LocalCluster> {
        std::fs::create_dir_all(dir)?;
        let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<Result<_>>()?;
        let (sc_public, sc_private, spu_public, spu_private) =
            (ports[0], ports[1], ports[2], ports[3]);
        let addr = |p: u16| format!("127.0.0.1:{p}");

        let mut sc = Command::new(tools.join("fluvio-run"));
        sc.arg("sc")
            .arg("--local")
            .arg(dir.join("sc"))
            .args(["--bind-public", &addr(sc_public)])
            .args(["--bind-private", &addr(sc_private)]);
        let sc =
            spawn(sc, &dir.join("sc.log")).context("starting the Fluvio SC (fluvio-run sc)")?;
        // From here on, a failure stops what was started.
        let mut cluster = LocalCluster {
            spu: None,
            sc,
            url: format!("fluvio://{}", addr(sc_public)),
        };
        wait("the Fluvio SC to listen", || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", sc_public)).is_ok())
        })?;
        let cli = Cli {
            exe: tools.join("fluvio"),
            profile: dir.join("profile.toml"),
        };
        cli.run(&["profile", "add", "conveyor-demo", &addr(sc_public), "local"])?;
        cli.run(&[
            "cluster",
            "spu",
            "register",
            "--id",
            &SPU_ID.to_string(),
            "--public-server",
            &addr(spu_public),
            "--private-server",
            &addr(spu_private),
        ])?;
        let mut spu = Command::new(tools.join("fluvio-run"));
        spu.arg("spu")
            .args(["-i", &SPU_ID.to_string()])
            .args(["-p", &addr(spu_public)])
            .args(["-v", &addr(spu_private)])
            .args(["--sc-addr", &addr(sc_private)])
            .arg("--log-base-dir")
            .arg(dir.join("spu"));
        cluster.spu = Some(
            spawn(spu, &dir.join("spu.log")).context("starting the Fluvio SPU (fluvio-run spu)")?,
        );
        wait("the Fluvio SPU to be online", || {
            let list = cli.run(&["cluster", "spu", "list"])?;
            Ok(list.lines().any(|l| {
                l.split_whitespace().next() == Some(&SPU_ID.to_string()) && l.contains("Online")
            }))
        })?;
        Ok(cluster)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // The SPU first: the SC would otherwise mark it offline and wait.
        if let Some(spu) = &mut self.spu {
            stop(spu);
        }
        stop(&mut self.sc);
    }
}

/// Fluvio's CLI with a profile of the demo's own (not `~/.fluvio`).
struct Cli {
    exe: PathBuf,
    profile: PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.exe)
            .args(args)
            .env("FLV_PROFILE_PATH", &self.profile)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.exe.display()))?;
        if !out.status.success() {
            bail!(
                "fluvio {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(mut cmd: Command, log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    crate::die_with_parent::die_with_parent(&mut cmd);
    Ok(cmd.spawn()?)
}

/// SIGTERM, a moment to go, then SIGKILL.
fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn wait(what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    loop {
        if ready()? {
            return Ok(());
        }
        if start.elapsed() > START_TIMEOUT {
            bail!(
                "timed out after {} s waiting for {what}",
                START_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
