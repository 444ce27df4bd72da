//! A real browser for the console's tests: Debian's headless Chromium driven over WebDriver
//! (chromedriver, one per test on a free port, with a fresh profile), through fantoccini.
//!
//! `CHROMEDRIVER` and `CHROME_BIN` override where they are (default: `chromedriver` on the
//! PATH, `/usr/bin/chromium`); `.ci/run` installs both (`apt-get install chromium
//! chromium-driver`). Every wait is for a condition on the page, never a fixed sleep.

use std::{
    future::Future,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{elements::Element, Client, ClientBuilder, Locator};
use serde_json::json;

/// Long enough for a page under a loaded CI machine; a wait ends as soon as its condition holds.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Browser {
    pub client: Client,
    base: String,
    driver: Child,
    profile: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Browser {
    /// A new browser whose relative addresses go to `base` (the app under test).
    pub async fn open(base: &str) -> Self {
        let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chrome_bin = std::env::var("CHROME_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own, so that stopping it stops the browsers it started too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {driver_bin} ({e}): the console's browser tests need Debian's \
                     chromium and chromium-driver (apt-get install chromium chromium-driver)"
                )
            });
        let profile = std::env::temp_dir().join(format!(
            "orderflow-chrome-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1500,1000",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chrome_bin, "args": args }),
        );
        let webdriver = format!("http://127.0.0.1:{port}");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        // chromedriver takes a moment to listen: try until it answers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(connector.clone())
                .capabilities(caps.clone())
                .connect(&webdriver)
                .await
            {
                Ok(client) => break client,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session from {driver_bin}: {e}"),
            }
        };
        Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            driver,
            profile,
        }
    }

    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("url")
            .path()
            .to_owned()
    }

    /// The element, once it is on the page.
    pub async fn element(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    /// Clicks `css`. The pages that refresh themselves replace their elements, so an element
    /// found just before a refresh is stale by the time it is clicked: it is found again.
    pub async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.element(css).await.click().await {
                Ok(()) => return,
                Err(e) if is_stale(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        e.clear().await.expect("clear");
        e.send_keys(text).await.expect("type");
    }

    pub async fn text(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.element(css).await.text().await {
                Ok(text) => return text,
                Err(e) if is_stale(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("text of {css}: {e}"),
            }
        }
    }

    /// The texts of every element `css` matches now, read from one rendering of the page (a
    /// refresh in the middle of the reading makes it read them again).
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        'page: loop {
            let mut out = Vec::new();
            for e in self.client.find_all(Locator::Css(css)).await.expect("find") {
                match e.text().await {
                    Ok(text) => out.push(text),
                    Err(e) if is_stale(&e) && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'page;
                    }
                    Err(e) => panic!("text of {css}: {e}"),
                }
            }
            return out;
        }
    }

    /// The attribute `name` of every element `css` matches now, read from one rendering of
    /// the page, as `texts` does.
    pub async fn attrs(&self, css: &str, name: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        'page: loop {
            let mut out = Vec::new();
            for e in self.client.find_all(Locator::Css(css)).await.expect("find") {
                match e.attr(name).await {
                    Ok(value) => out.push(value.unwrap_or_default()),
                    Err(e) if is_stale(&e) && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'page;
                    }
                    Err(e) => panic!("{name} of {css}: {e}"),
                }
            }
            return out;
        }
    }

    /// Waits until `check` holds, checking every 100 ms; panics with `what` after WAIT.
    pub async fn until<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Signs in through the form and waits for the jobs page.
    pub async fn sign_in(&self, email: &str, password: &str) {
        self.goto("/console").await;
        self.fill("#email", email).await;
        self.fill("#password", password).await;
        self.click("#sign-in").await;
    }

    /// A PNG of the page, written to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot folder");
        }
        std::fs::write(path, png).expect("screenshot written");
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    /// Stops chromedriver and every browser it started (its process group), also when a
    /// test panicked before `close`.
    fn drop(&mut self) {
        let group = self.driver.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Whether WebDriver refused an element because the page replaced it since it was found.
fn is_stale(e: &fantoccini::error::CmdError) -> bool {
    e.is_stale_element_reference()
}
