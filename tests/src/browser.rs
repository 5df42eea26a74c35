//! A real headless Chromium, driven over WebDriver (Debian's `chromium`
//! and `chromium-driver`; `.ci/run` installs them), for the dashboard's
//! tests. Blocking calls over fantoccini's async client, so tests read
//! like the rest of the harness.
//!
//! On a machine without them, [`Browser::start`] says loudly that the
//! browser tests are skipped and why, and returns `None` (unless
//! `CONVEYOR_STRICT_BROWSER=1`, which makes that a failure).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::{free_port, Proc};

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([
        PathBuf::from("/usr/bin"),
        PathBuf::from("/usr/lib/chromium"),
    ]) {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

pub struct Browser {
    client: Option<Client>,
    runtime: tokio::runtime::Runtime,
    _driver: Proc,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium
    /// session at `width` x `height`; `None` (and why, on stderr) where the
    /// two are not installed.
    pub fn start(dir: &Path, width: u32, height: u32) -> Option<Browser> {
        let driver = on_path(&["chromedriver"]);
        let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"]);
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            eprintln!(
                "SKIPPED: the dashboard's browser tests need chromium and chromedriver \
                 (apt-get install chromium chromium-driver; .ci/run installs them)"
            );
            assert!(
                std::env::var_os("CONVEYOR_STRICT_BROWSER").is_none(),
                "CONVEYOR_STRICT_BROWSER is set but chromium or chromedriver is missing"
            );
            return None;
        };
        let port = free_port();
        let mut cmd = Command::new(driver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1");
        let driver = Proc::spawn("chromedriver", cmd, dir.join("chromedriver.log"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--metrics-recording-only",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", dir.join("chromium-profile").display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connect = runtime.block_on(async {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
            });
            match connect {
                Ok(c) => break c,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!(
                    "no WebDriver session from chromedriver: {e}\n{}",
                    driver.log()
                ),
            }
        };
        Some(Browser {
            client: Some(client),
            runtime,
            _driver: driver,
        })
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    pub fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Runs `script` in the page (its `return` value back as JSON).
    pub fn js(&self, script: &str) -> Value {
        self.runtime
            .block_on(self.client().execute(script, vec![]))
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// The text of the first element `css` selects (None: no such element).
    pub fn text(&self, css: &str) -> Option<String> {
        self.runtime.block_on(async {
            let e = self.client().find(Locator::Css(css)).await.ok()?;
            e.text().await.ok()
        })
    }

    /// How many elements `css` selects.
    pub fn count(&self, css: &str) -> usize {
        self.runtime
            .block_on(self.client().find_all(Locator::Css(css)))
            .map_or(0, |v| v.len())
    }

    pub fn click(&self, css: &str) {
        self.runtime
            .block_on(async { self.client().find(Locator::Css(css)).await?.click().await })
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types `text` into the input `css` selects.
    pub fn type_into(&self, css: &str, text: &str) {
        self.runtime
            .block_on(async {
                let e = self.client().find(Locator::Css(css)).await?;
                e.clear().await?;
                e.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    pub fn accept_alert(&self) {
        self.runtime
            .block_on(self.client().accept_alert())
            .unwrap_or_else(|e| panic!("accept the dialog: {e}"));
    }

    /// Waits (up to a minute) until `css`'s text passes `ok`; the text.
    pub fn wait_text(&self, what: &str, css: &str, ok: impl Fn(&str) -> bool) -> String {
        crate::wait_for(what, || self.text(css).filter(|t| ok(t)))
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Every URL the page has fetched (the Resource Timing entries, which
    /// include fetch, EventSource, scripts and styles) and its own.
    pub fn requested_urls(&self) -> Vec<String> {
        let v = self.js(
            "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));",
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.runtime.block_on(c.close());
        }
    }
}
