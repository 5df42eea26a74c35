//! Harness for Conveyor's end-to-end tests: it builds and starts the real
//! `cloud-hub` and `edge-agent` binaries (and `conveyor-demo`; where a test
//! needs one, a real mosquitto), on free loopback ports, and stops them on drop.
//!
//! Nothing here sleeps for a fixed time to let something happen: waits poll
//! a condition with a generous deadline and fail with what they last saw.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod browser;
pub mod fluvio;
pub mod slow_link;
pub mod tmpfs;
// The agent's config types, so that tests write typed configs (rendered to
// the file the agent reads by `to_toml`) instead of TOML templates.
pub use edge_agent::config::{AgentConfig, UplinkConfig};
pub use edge_agent::inference::InferenceConfig;
pub use edge_agent::log::{FullPolicy, LogConfig};
pub use edge_agent::sources::{HttpSourceConfig, MqttSourceConfig, ReplayConfig, SourceConfig};
pub use edge_agent::transform::{ChainEntry, OnDisabled, TransformStageConfig};

/// Generous upper bound for anything a test waits for (CI is slow).
pub const PATIENCE: Duration = Duration::from_secs(90);

pub fn repo_root() -> PathBuf {
    Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR")
            .expect("run by cargo, which sets CARGO_MANIFEST_DIR"),
    )
    .parent()
    .expect("workspace root")
    .to_path_buf()
}

pub fn data_file(rel: &str) -> PathBuf {
    repo_root().join("models/data").join(rel)
}

struct Binaries {
    hub: PathBuf,
    agent: PathBuf,
    demo: PathBuf,
}

/// Builds the three binaries (once per test process) in the profile the
/// tests run in, and returns their paths. The build selects what `cargo
/// test --workspace` selects (every package, with its tests), so cargo
/// resolves the same features and reuses what the test run compiled: a
/// plain `cargo build -p cloud-hub -p edge-agent --bins` leaves out the
/// dev-dependencies' features (proptest's regex-syntax, for one) and would
/// compile tract, both binaries and everything between a second time.
fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(repo_root())
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--tests",
                // Only the three the tests run: `--bins` would also link
                // the benchmarks' executables, which `cargo test` does not
                // build (their packages have no integration tests).
                "--bin",
                "cloud-hub",
                "--bin",
                "edge-agent",
                "--bin",
                "conveyor-demo",
                "--message-format=json",
            ])
            .stderr(Stdio::inherit());
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("running cargo build");
        assert!(out.status.success(), "cargo build of the binaries failed");
        let mut hub = None;
        let mut agent = None;
        let mut demo = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let (Some(name), Some(exe)) =
                (msg["target"]["name"].as_str(), msg["executable"].as_str())
            else {
                continue;
            };
            // The binaries themselves, not their unit-test builds.
            if msg["profile"]["test"].as_bool() != Some(false)
                || msg["target"]["kind"][0].as_str() != Some("bin")
            {
                continue;
            }
            match name {
                "cloud-hub" => hub = Some(PathBuf::from(exe)),
                "edge-agent" => agent = Some(PathBuf::from(exe)),
                "conveyor-demo" => demo = Some(PathBuf::from(exe)),
                _ => {}
            }
        }
        Binaries {
            hub: hub.expect("cargo reported no cloud-hub executable"),
            agent: agent.expect("cargo reported no edge-agent executable"),
            demo: demo.expect("cargo reported no conveyor-demo executable"),
        }
    })
}

pub fn hub_bin() -> &'static Path {
    &binaries().hub
}

pub fn agent_bin() -> &'static Path {
    &binaries().agent
}

pub fn demo_bin() -> &'static Path {
    &binaries().demo
}

/// Runs `conveyor-demo` with `args`, `--json`, the shipped data and
/// ports the kernel picks; asserts that it succeeded and that its summary
/// accounts for every record (no agent failed, every record sent received,
/// none lost or duplicated). Returns the summary and the demo's stderr.
pub fn run_demo(args: &[&str]) -> (Value, String) {
    let out = Command::new(demo_bin())
        .args(args)
        .args(["--json", "--mqtt-port", "0", "--http-port", "0"])
        .arg("--data-dir")
        .arg(repo_root().join("models/data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(s["agents_failed"], 0, "{s}");
    let sent = s["records_sent"].as_u64().unwrap();
    assert!(sent > 0, "{s}");
    assert_eq!(s["records_received"].as_u64(), Some(sent), "{s}");
    assert_eq!(s["records_lost"], 0, "{s}");
    assert_eq!(s["records_duplicated"], 0, "{s}");
    (s, stderr)
}

/// A port nobody listens on right now, on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, or panics after [`PATIENCE`] with
/// `what` and the last value `describe` gives.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 client, enough for the hub's API: returns status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    http_as(addr, method, path, body, None)
}

/// [`http`] with an API token (`Authorization: Bearer`).
pub fn http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(&mut s, addr, method, path, body, token)
}

/// [`http_as`] over TLS, trusting only the CA in `ca` (PEM).
pub fn https_as(
    addr: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let tls =
        conveyor_transport::tls::ClientTls::from_ca_file(ca).map_err(std::io::Error::other)?;
    let name = rustls::pki_types::ServerName::try_from(addr.ip().to_string())
        .map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(tls.config(), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    exchange(&mut s, addr, method, path, body, token)
}

/// One HTTP/1.1 request and its whole response, on `s`.
fn exchange(
    s: &mut (impl Read + Write),
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let body = body.unwrap_or("");
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify after a whole
        // response (`Connection: close`): the response is all there.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {text:?}")))?;
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) =
        http(addr, "GET", path, None).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// A child process that is terminated (SIGTERM, then SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        Self::spawn_into(name, cmd, log, file)
    }

    /// [`Proc::spawn`], its output appended to `log` (a restarted process).
    pub fn spawn_appending(name: &str, cmd: Command, log: PathBuf) -> Proc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        Self::spawn_into(name, cmd, log, file)
    }

    fn spawn_into(name: &str, mut cmd: Command, log: PathBuf, file: std::fs::File) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self) -> ExitStatus {
        let name = self.name.clone();
        let status = wait_for(&format!("{name} to exit"), || {
            self.child.try_wait().unwrap()
        });
        status
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5)
                && matches!(self.child.try_wait(), Ok(None))
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log());
        }
    }
}

/// `cloud-hub <args>` (`artifact`, `deploy`, ...) against the running
/// `hub`'s API: exit code, stdout, stderr.
pub fn hub_cli(hub: &Hub, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(hub_bin());
    cmd.args(args).env("CONVEYOR_HUB", hub.api_url());
    if hub.tls {
        cmd.env("CONVEYOR_HUB_CA", hub.ca_file());
    }
    if let Some(t) = &hub.api_token {
        cmd.env("CONVEYOR_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`hub_cli`] that must succeed: its stdout.
pub fn hub_cli_ok(hub: &Hub, args: &[&str]) -> String {
    let (code, out, err) = hub_cli(hub, args);
    assert_eq!(code, Some(0), "cloud-hub {args:?}:\n{out}{err}");
    out
}

/// What a hub the harness starts asks of its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// A bare broker, an open API.
    Open,
    /// Device secrets and API tokens (the hub's defaults).
    Secure,
    /// [`Security::Secure`] over TLS on both listeners.
    SecureTls,
}

/// A running `cloud-hub serve`.
pub struct Hub {
    pub proc: Proc,
    pub http: SocketAddr,
    pub mqtt_port: u16,
    pub dir: PathBuf,
    /// The store directory, `store.path` (kept across restarts).
    pub store: PathBuf,
    /// Appended to hub.toml (kept across restarts).
    extra: String,
    /// Devices and API callers must prove who they are (the hub's
    /// default); the other constructors turn it off, as a bare broker.
    pub secure: bool,
    /// An admin token the harness made for itself (secure hubs).
    pub api_token: Option<String>,
    /// Both listeners serve TLS with the hub's own CA (see
    /// [`Hub::start_tls`]); the harness's own calls go over HTTPS.
    pub tls: bool,
}

/// `[inference]` serving both committed hub models, for [`Hub::start_serving`].
pub fn hub_models_toml() -> String {
    let mut t = String::from("[inference]\n");
    for ds in ["basicmotions", "acsf1"] {
        t += &format!(
            "[[inference.models]]\nmetadata = {:?}\nmax_batch = 32\nmax_delay_ms = 5\n",
            repo_root().join("models").join(ds).join("hub.fp32.json")
        );
    }
    t
}

impl Hub {
    /// Starts a hub with its embedded broker.
    pub fn start(dir: &Path) -> Hub {
        Self::start_with(dir, None)
    }

    /// Starts a hub as it is by default: devices need their secret (see
    /// [`Hub::provision`]) and API calls a token (see [`Hub::token`]).
    pub fn start_secure(dir: &Path, extra: &str) -> Hub {
        for _ in 0..4 {
            if let Ok(hub) = Self::try_start_on(
                dir,
                None,
                free_port(),
                free_port(),
                None,
                extra,
                Security::Secure,
            ) {
                return hub;
            }
        }
        Self::start_on(
            dir,
            None,
            free_port(),
            free_port(),
            None,
            extra,
            Security::Secure,
        )
    }

    /// [`Hub::start_secure`] with TLS on both listeners (`[broker] tls`,
    /// `[http] tls`), the certificate issued by the hub's own CA, which
    /// [`Hub::ca_file`] names.
    pub fn start_tls(dir: &Path, extra: &str) -> Hub {
        let tls = Security::SecureTls;
        for _ in 0..4 {
            if let Ok(hub) =
                Self::try_start_on(dir, None, free_port(), free_port(), None, extra, tls)
            {
                return hub;
            }
        }
        Self::start_on(dir, None, free_port(), free_port(), None, extra, tls)
    }

    /// Starts a hub with its embedded broker and `extra` appended to
    /// hub.toml (e.g. [`hub_models_toml`]).
    pub fn start_serving(dir: &Path, extra: &str) -> Hub {
        for _ in 0..4 {
            if let Ok(hub) = Self::try_start_on(
                dir,
                None,
                free_port(),
                free_port(),
                None,
                extra,
                Security::Open,
            ) {
                return hub;
            }
        }
        Self::start_on(
            dir,
            None,
            free_port(),
            free_port(),
            None,
            extra,
            Security::Open,
        )
    }

    /// Starts a hub with its embedded broker and its store in `store`
    /// instead of `<dir>/hub-store` (e.g. on a [`tmpfs::Tmpfs`]). A store
    /// that cannot write does not stop it: it may answer 503 `degraded`.
    pub fn start_with_store(dir: &Path, store: &Path) -> Hub {
        for _ in 0..4 {
            if let Ok(hub) = Self::try_start_on(
                dir,
                None,
                free_port(),
                free_port(),
                Some(store),
                "",
                Security::Open,
            ) {
                return hub;
            }
        }
        Self::start_on(
            dir,
            None,
            free_port(),
            free_port(),
            Some(store),
            "",
            Security::Open,
        )
    }

    /// [`Hub::start_with`] an external broker that asks the hub for a
    /// username and password (`broker.username`, `broker.password_file`).
    pub fn start_external_with_login(
        dir: &Path,
        port: u16,
        user: &str,
        password_file: &Path,
    ) -> Hub {
        let login = format!(
            "username = {user:?}\npassword_file = {:?}\n",
            password_file.display().to_string()
        );
        let external = Some((port, login.as_str(), false));
        for _ in 0..4 {
            if let Ok(hub) = Self::try_start_on(
                dir,
                external,
                free_port(),
                free_port(),
                None,
                "",
                Security::Open,
            ) {
                return hub;
            }
        }
        Self::start_on(
            dir,
            external,
            free_port(),
            free_port(),
            None,
            "",
            Security::Open,
        )
    }

    /// [`Hub::start_external_with_login`] over TLS (`mqtts://`), the
    /// broker's certificate checked against `ca_file`.
    pub fn start_external_tls(
        dir: &Path,
        port: u16,
        user: &str,
        password_file: &Path,
        ca_file: &Path,
    ) -> Hub {
        let login = format!(
            "username = {user:?}\npassword_file = {:?}\nca_file = {:?}\n",
            password_file.display().to_string(),
            ca_file.display().to_string()
        );
        let external = Some((port, login.as_str(), true));
        Self::start_on(
            dir,
            external,
            free_port(),
            free_port(),
            None,
            "",
            Security::Open,
        )
    }

    /// Starts a hub; with `external` it uses that broker port instead of
    /// the embedded one.
    pub fn start_with(dir: &Path, external: Option<u16>) -> Hub {
        let external = external.map(|port| (port, "", false));
        // A port found free can be taken (by any process's outgoing
        // connection) before the hub binds it; then the hub exits with
        // "address in use" and we try again on other ports.
        for _ in 0..4 {
            if let Ok(hub) = Self::try_start_on(
                dir,
                external,
                free_port(),
                free_port(),
                None,
                "",
                Security::Open,
            ) {
                return hub;
            }
        }
        Self::start_on(
            dir,
            external,
            free_port(),
            free_port(),
            None,
            "",
            Security::Open,
        )
    }

    /// Stops this hub (SIGTERM) and starts a new one on the same ports and
    /// store, as an operator's restart would.
    pub fn restart(mut self) -> Hub {
        assert!(
            self.proc.stop().success(),
            "hub did not stop cleanly:\n{}",
            self.proc.log()
        );
        let (dir, mqtt, http) = (self.dir.clone(), self.mqtt_port, self.http.port());
        let store = self.store.clone();
        let extra = std::mem::take(&mut self.extra);
        let security = self.security();
        drop(self);
        Self::start_on(&dir, None, http, mqtt, Some(&store), &extra, security)
    }

    /// SIGKILLs this hub (no goodbye, no flush) and starts a new one on
    /// the same ports and store.
    pub fn kill_and_restart(mut self) -> Hub {
        self.proc.signal(libc::SIGKILL);
        self.proc.wait();
        let (dir, mqtt, http) = (self.dir.clone(), self.mqtt_port, self.http.port());
        let store = self.store.clone();
        let extra = std::mem::take(&mut self.extra);
        let security = self.security();
        drop(self);
        Self::start_on(&dir, None, http, mqtt, Some(&store), &extra, security)
    }

    /// Starts a hub whose embedded broker listens on `mqtt_port`.
    pub fn start_at(dir: &Path, mqtt_port: u16) -> Hub {
        Self::start_on(dir, None, free_port(), mqtt_port, None, "", Security::Open)
    }

    fn start_on(
        dir: &Path,
        external: Option<(u16, &str, bool)>,
        http_port: u16,
        embedded_mqtt_port: u16,
        store: Option<&Path>,
        extra: &str,
        security: Security,
    ) -> Hub {
        Self::try_start_on(
            dir,
            external,
            http_port,
            embedded_mqtt_port,
            store,
            extra,
            security,
        )
        .unwrap_or_else(|log| panic!("the hub exited before it was healthy:\n{log}"))
    }

    /// Starts a hub (its store in `store`, by default `<dir>/hub-store`)
    /// and waits until it answers; `Err(its log)` if it exits first.
    fn try_start_on(
        dir: &Path,
        external: Option<(u16, &str, bool)>,
        http_port: u16,
        embedded_mqtt_port: u16,
        store: Option<&Path>,
        extra: &str,
        security: Security,
    ) -> Result<Hub, String> {
        let secure = security != Security::Open;
        let tls = security == Security::SecureTls;
        let tls_line = if tls { "tls = true\n" } else { "" };
        let store = store.map_or_else(|| dir.join("hub-store"), Path::to_path_buf);
        let (broker, mqtt_port) = match external {
            Some((port, login, mqtts)) => (
                format!(
                    "[broker]\nmode = \"external\"\nurl = \"{}://127.0.0.1:{port}\"\nclient_id = \"hub-{http_port}\"\n{login}",
                    if mqtts { "mqtts" } else { "mqtt" }
                ),
                port,
            ),
            None => (
                format!(
                    "[broker]\nlisten = \"127.0.0.1:{embedded_mqtt_port}\"\nauth = {:?}\n{tls_line}",
                    if secure { "devices" } else { "none" }
                ),
                embedded_mqtt_port,
            ),
        };
        let http_auth = if secure { "tokens" } else { "none" };
        let api_token = secure.then(|| {
            // A name of its own per start: a restarted hub keeps the old one.
            let name = format!(
                "e2e-harness-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            );
            let out = Command::new(hub_bin())
                .args([
                    "token", "create", "--name", &name, "--role", "admin", "--store",
                ])
                .arg(&store)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "token create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        });
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "{broker}[http]\nlisten = \"127.0.0.1:{http_port}\"\nauth = {http_auth:?}\n{tls_line}[store]\npath = {:?}\n{extra}",
                store.display().to_string()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(hub_bin());
        cmd.args(["serve", "--config"]).arg(&config);
        let mut proc = Proc::spawn("cloud-hub", cmd, dir.join("hub.log"));
        let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
        // A hub whose store cannot write (a full disk) is up, and answers
        // 503 `degraded`: it counts as started.
        let ca = tls.then(|| store.join("tls/ca.pem"));
        let healthy = wait_for("the hub's /healthz", || {
            if http_up(http, ca.as_deref(), "/healthz").is_some() {
                Some(true)
            } else {
                proc.try_wait().map(|_| false)
            }
        });
        if !healthy {
            return Err(proc.log());
        }
        Ok(Hub {
            proc,
            http,
            mqtt_port,
            dir: dir.to_path_buf(),
            store,
            extra: extra.to_string(),
            secure,
            api_token,
            tls,
        })
    }

    /// Provisions `device` (`cloud-hub device add`) and returns the path
    /// of its secret file, for `uplink.password_file`.
    pub fn provision(&self, device: &str) -> PathBuf {
        let out = self.dir.join("secrets");
        std::fs::create_dir_all(&out).unwrap();
        let out_s = out.display().to_string();
        let store = self.store.display().to_string();
        let _ = std::fs::remove_file(out.join(format!("{device}.secret")));
        let (code, stdout, stderr) = hub_cli(
            self,
            &[
                "device", "add", device, "--out", &out_s, "--rotate", "--store", &store,
            ],
        );
        let file = out.join(format!("{device}.secret"));
        assert_eq!(code, Some(0), "device add {device}: {stdout}{stderr}");
        file
    }

    /// Makes an API token of `role` (`cloud-hub token create`).
    pub fn token(&self, name: &str, role: &str) -> String {
        let store = self.store.display().to_string();
        let (code, stdout, stderr) = hub_cli(
            self,
            &[
                "token", "create", "--name", name, "--role", role, "--store", &store,
            ],
        );
        assert_eq!(code, Some(0), "token create: {stdout}{stderr}");
        stdout.trim().to_string()
    }

    /// The hub's public signing key (`ed25519:...`), which agents trust.
    pub fn signing_key(&self) -> String {
        self.get("/api/v1/keys")["keys"][0]["public"]
            .as_str()
            .expect("the hub serves its key")
            .to_string()
    }

    pub fn mqtt_url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.mqtt_port)
    }

    /// The CA a TLS hub's certificate is signed by (its own, in its store).
    pub fn ca_file(&self) -> PathBuf {
        self.store.join("tls/ca.pem")
    }

    fn security(&self) -> Security {
        match (self.secure, self.tls) {
            (_, true) => Security::SecureTls,
            (true, false) => Security::Secure,
            (false, false) => Security::Open,
        }
    }

    /// A call to this hub's API as the harness (its admin token, over
    /// HTTPS for a TLS hub).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let token = self.api_token.as_deref();
        if self.tls {
            https_as(self.http, &self.ca_file(), method, path, body, token)
        } else {
            http_as(self.http, method, path, body, token)
        }
    }

    /// The hub's API as `CONVEYOR_HUB` names it.
    pub fn api_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.http
        )
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self
            .call("GET", path, None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    pub fn device(&self, id: &str) -> Option<Value> {
        match self.call("GET", &format!("/api/v1/devices/{id}"), None) {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Waits until the hub holds `n` records of `device`.
    pub fn wait_for_records(&self, device: &str, n: u64) {
        wait_for(&format!("{n} records of {device} at the hub"), || {
            self.device(device)
                .filter(|d| d["records"].as_u64() == Some(n))
                .map(|_| ())
        });
    }

    /// Every record of `device`, paging through the API in seq order.
    pub fn all_records(&self, device: &str) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut from = 0;
        loop {
            let page = self.get(&format!(
                "/api/v1/devices/{device}/records?from={from}&limit=5000"
            ));
            let page = page["records"].as_array().cloned().unwrap_or_default();
            match page.last() {
                None => return out,
                Some(last) => from = last["seq"].as_u64().unwrap() + 1,
            }
            out.extend(page);
        }
    }

    /// The seqs of every record the hub holds for `device`, in order.
    pub fn seqs(&self, device: &str) -> Vec<u64> {
        self.all_records(device)
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    }

    /// How many records the hub says it holds for `device` (0 if it does
    /// not know the device yet).
    pub fn records(&self, device: &str) -> u64 {
        self.device(device)
            .and_then(|d| d["records"].as_u64())
            .unwrap_or(0)
    }

    /// The last heartbeat the hub has from `device`.
    pub fn heartbeat(&self, device: &str) -> Option<Value> {
        self.device(device)
            .map(|d| d["last_heartbeat"].clone())
            .filter(|h| !h.is_null())
    }

    pub fn metrics(&self) -> String {
        self.call("GET", "/metrics", None).unwrap().1
    }

    /// `GET /healthz`: the status code and the body.
    pub fn health(&self) -> (u16, Value) {
        let (status, body) = self
            .call("GET", "/healthz", None)
            .unwrap_or_else(|e| panic!("GET /healthz: {e}"));
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/healthz: {e}: {body}"));
        (status, json)
    }
}

/// Whether the hub is up: its health check answers 200 `ok`, or 503
/// `degraded` (up, but its store cannot write).
fn http_up(addr: SocketAddr, ca: Option<&Path>, path: &str) -> Option<()> {
    let answer = match ca {
        None => http(addr, "GET", path, None),
        Some(ca) => https_as(addr, ca, "GET", path, None, None),
    };
    match answer {
        Ok((200, _)) => Some(()),
        Ok((503, body)) if body.contains("\"degraded\"") => Some(()),
        _ => None,
    }
}

/// Renders `config` to `<dir>/<name>.toml`, the file the agent reads, and
/// returns its path.
/// Overwrites 512-byte blocks of `file` with a pattern no page holds,
/// from byte `first` on, every `stride` bytes, as a failing SD card or
/// disk does; returns how many blocks it overwrote.
pub fn damage_blocks(file: &Path, first: u64, stride: u64) -> u64 {
    use std::io::{Seek, SeekFrom};
    let len = std::fs::metadata(file).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    let (mut at, mut blocks) = (first, 0);
    while at + 512 <= len {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[0xA5; 512]).unwrap();
        at += stride;
        blocks += 1;
    }
    f.sync_all().unwrap();
    blocks
}

pub fn write_agent_config(dir: &Path, name: &str, config: &AgentConfig) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config.to_toml()).unwrap();
    path
}

/// Writes `config` to `<dir>/<name>.toml` and starts `edge-agent run` on it.
pub fn start_agent(dir: &Path, name: &str, config: &AgentConfig) -> Proc {
    start_agent_on(dir, name, &write_agent_config(dir, name, config))
}

/// [`start_agent`] on config text as written (for configs that are wrong
/// on purpose, in ways a typed config cannot be).
pub fn start_agent_toml(dir: &Path, name: &str, toml: &str) -> Proc {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    start_agent_on(dir, name, &path)
}

fn start_agent_on(dir: &Path, name: &str, config: &Path) -> Proc {
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--config"]).arg(config);
    Proc::spawn(name, cmd, dir.join(format!("{name}.log")))
}

/// `edge-agent check` on `config` written to `<dir>/<name>.toml`: the exit
/// code and stdout followed by stderr.
pub fn check_agent(dir: &Path, name: &str, config: &AgentConfig) -> (Option<i32>, String) {
    check_agent_file(&write_agent_config(dir, name, config))
}

/// `edge-agent check` on the config file at `path`.
pub fn check_agent_file(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(agent_bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A protobuf batch file `<dir>/<name>.bin` of `device`'s records `seqs`
/// (stream `motion`, one value each: `value`), for a third-party client
/// to publish.
pub fn batch_file(
    dir: &Path,
    name: &str,
    device: &str,
    seqs: std::ops::Range<u64>,
    value: f64,
) -> PathBuf {
    let records = seqs
        .map(|seq| conveyor_shared::Record {
            stream: "motion".into(),
            seq,
            source_ts_us: 1,
            values: vec![value],
            ..Default::default()
        })
        .collect();
    let device = conveyor_shared::DeviceId::new(device).unwrap();
    let b = conveyor_shared::RecordBatch::new(&device, 1, records);
    let path = dir.join(format!("{name}.bin"));
    std::fs::write(&path, b.encode_to_bytes()).unwrap();
    path
}

/// A real mosquitto on a free loopback port, configured not to drop QoS 1
/// messages (Debian's default queue limit of 1000 would).
pub fn start_mosquitto(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    (start_mosquitto_at(dir, port), port)
}

/// [`start_mosquitto`] on a given port (to restart one).
pub fn start_mosquitto_at(dir: &Path, port: u16) -> Proc {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nmax_inflight_messages 100\n"
        ),
    )
    .unwrap();
    start_mosquitto_conf(dir, &conf, port)
}

/// mosquitto with the config file `conf`, listening on `port`.
pub fn start_mosquitto_conf(dir: &Path, conf: &Path, port: u16) -> Proc {
    // Debian installs the broker in /usr/sbin, which a user's PATH may lack.
    let bin = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto");
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(conf);
    let proc = Proc::spawn("mosquitto", cmd, dir.join("mosquitto.log"));
    wait_for("mosquitto to listen", || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    proc
}

/// Users for a mosquitto with the shipped config: each of `users` gets a
/// secret from `cloud-hub device add` (in `<dir>/secrets/`, a store of
/// their own in `<dir>/ids`), and an entry in the password file
/// `<dir>/conveyor.passwd` made with `mosquitto_passwd`. Returns each
/// user's secret file, in order, and the password file.
pub fn mosquitto_users(dir: &Path, users: &[&str]) -> (Vec<PathBuf>, PathBuf) {
    let secrets = dir.join("secrets");
    let passwd = dir.join("conveyor.passwd");
    let mut files = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let out = Command::new(hub_bin())
            .args(["device", "add", user, "--out"])
            .arg(&secrets)
            .arg("--store")
            .arg(dir.join("ids"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = secrets.join(format!("{user}.secret"));
        let secret = std::fs::read_to_string(&file).unwrap().trim().to_string();
        let mut c = Command::new("mosquitto_passwd");
        if i == 0 {
            c.arg("-c");
        }
        let out = c
            .arg("-b")
            .arg(&passwd)
            .args([*user, secret.as_str()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        files.push(file);
    }
    (files, passwd)
}

/// Decodes `payload` as protobuf `message` with `protoc` and nothing but
/// the published `shared/proto/conveyor.proto`: what an outsider does.
pub fn protoc_decode(message: &str, payload: &[u8]) -> String {
    let proto_dir = repo_root().join("shared/proto");
    let mut child = Command::new("protoc")
        .arg(format!("--proto_path={}", proto_dir.display()))
        .arg(format!("--decode={message}"))
        .arg("conveyor.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("protoc must be installed (.ci/run installs protobuf-compiler)");
    child.stdin.take().unwrap().write_all(payload).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "protoc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The bytes of a hex string (as `mosquitto_sub -F %x` prints payloads).
pub fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
