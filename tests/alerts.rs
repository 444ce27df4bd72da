//! The alerting and SLO rules (observability/rules/) as Prometheus runs them: promtool's
//! checks and the rules' unit tests (observability/tests/), the rule that every alert is
//! unit-tested both firing and quiet and carries a runbook whose dashboard panels exist, the
//! k8s copy of the rules, and a real Prometheus that scrapes the running service while
//! Kafka is unreachable and fires, then resolves, the backlog alert.
//!
//! Needs `promtool` and `prometheus` (Debian's `prometheus` package; `.ci/run` installs it).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{proxy::FaultProxy, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ALERT_RULES: &str = "observability/rules/orderflow-alerts.yml";
const DASHBOARD: &str = "observability/grafana/dashboards/orderflow.json";
const RUNBOOKS: &str = "docs/runbooks.md";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The files of a directory of the repository whose names end with `suffix`, sorted.
fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap_or_else(|e| panic!("listing {dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

/// Runs a Prometheus tool from the repository's root; its output on failure.
fn run(tool: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool)
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap_or_else(|e| {
            panic!("running {tool}: {e} (install Debian's prometheus package: apt-get install prometheus)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn paths(ps: &[PathBuf]) -> Vec<String> {
    ps.iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn the_rules_and_the_configuration_pass_promtool() {
    let rules = paths(&files("observability/rules", ".yml"));
    assert!(rules.len() >= 2, "rule files: {rules:?}");
    let mut args = vec!["check", "rules"];
    args.extend(rules.iter().map(String::as_str));
    if let Err(out) = run("promtool", &args) {
        panic!("promtool check rules:\n{out}");
    }
    if let Err(out) = run(
        "promtool",
        &["check", "config", "observability/prometheus.yml"],
    ) {
        panic!("promtool check config:\n{out}");
    }
}

#[test]
fn the_rules_unit_tests_pass() {
    let tests = paths(&files("observability/tests", ".test.yml"));
    assert!(tests.len() >= 2, "test files: {tests:?}");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    match run("promtool", &args) {
        Ok(out) => assert!(out.contains("SUCCESS"), "{out}"),
        Err(out) => panic!("promtool test rules:\n{out}"),
    }
}

/// An alert of a rule file: its name and the text of its rule (up to the next rule).
struct Alert {
    name: String,
    rule: String,
}

fn alerts() -> Vec<Alert> {
    let mut out = Vec::new();
    for file in files("observability/rules", ".yml") {
        let text = std::fs::read_to_string(&file).expect("rule file");
        for chunk in text.split("\n      - ").skip(1) {
            if let Some(rest) = chunk.strip_prefix("alert: ") {
                let name = rest.lines().next().unwrap_or_default().trim().to_owned();
                out.push(Alert {
                    name,
                    rule: chunk.to_owned(),
                });
            }
        }
    }
    out
}

/// Per alert name: (expected firing at some time, expected quiet at some time), from the
/// unit tests' `alert_rule_test` entries.
fn expectations() -> std::collections::HashMap<String, (bool, bool)> {
    let mut seen = std::collections::HashMap::<String, (bool, bool)>::new();
    for file in files("observability/tests", ".test.yml") {
        let text = std::fs::read_to_string(&file).expect("test file");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(name) = line.trim().strip_prefix("alertname: ") else {
                continue;
            };
            let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or_default();
            let entry = seen.entry(name.trim().to_owned()).or_default();
            match next {
                "exp_alerts: []" => entry.1 = true,
                "exp_alerts:" => entry.0 = true,
                other => panic!("{}: alertname {name} followed by {other:?}", file.display()),
            }
        }
    }
    seen
}

/// The titles of the dashboard's panels.
fn panel_titles() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str().map(str::to_owned))
        .collect()
}

/// The «…» names in a text.
fn guillemets(text: &str) -> Vec<String> {
    text.split('«')
        .skip(1)
        .filter_map(|s| {
            s.split_once('»')
                .map(|(t, _)| t.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .collect()
}

#[test]
fn every_alert_is_unit_tested_firing_and_quiet_and_has_a_runbook_whose_panels_exist() {
    let alerts = alerts();
    assert!(alerts.len() >= 20, "{} alerts", alerts.len());
    let tested = expectations();
    let panels = panel_titles();
    let runbooks = read(RUNBOOKS).to_lowercase();
    let mut problems = Vec::new();
    for a in &alerts {
        match tested.get(&a.name) {
            Some((true, true)) => {}
            Some((firing, quiet)) => problems.push(format!(
                "{}: unit-tested firing: {firing}, quiet: {quiet} (both needed)",
                a.name
            )),
            None => problems.push(format!("{}: no unit test", a.name)),
        }
        for key in ["severity: ", "summary: ", "runbook: ", "runbook_url: "] {
            if !a.rule.contains(key) {
                problems.push(format!("{}: no {}", a.name, key.trim_end_matches(": ")));
            }
        }
        let named = guillemets(&a.rule);
        if named.is_empty() {
            problems.push(format!("{}: its runbook names no dashboard panel", a.name));
        }
        for panel in named {
            if !panels.contains(&panel) {
                problems.push(format!("{}: no dashboard panel «{panel}»", a.name));
            }
        }
        let anchor = a
            .rule
            .split("runbook_url: docs/runbooks.md#")
            .nth(1)
            .and_then(|s| s.lines().next())
            .unwrap_or_default()
            .trim()
            .to_owned();
        // GitHub's anchor of a `### Name` heading is its lowercased text.
        if anchor.is_empty() || !runbooks.contains(&format!("### {anchor}\n")) {
            problems.push(format!("{}: no runbook section #{anchor}", a.name));
        }
    }
    for name in tested.keys() {
        if !alerts.iter().any(|a| &a.name == name) {
            problems.push(format!("the unit tests name {name}, which no rule defines"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_k8s_configmap_carries_the_rules_as_they_are() {
    let out = Command::new("bash")
        .arg(repo("observability/k8s-rules.sh"))
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout) == read("k8s/base/prometheus-rules.yaml"),
        "k8s/base/prometheus-rules.yaml differs from the rules: \
         bash observability/k8s-rules.sh > k8s/base/prometheus-rules.yaml"
    );
}

// ---- a real Prometheus ----------------------------------------------------------------

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The tansu binary CI builds (`.ci/run`), if it is there.
fn tansu_binary() -> Option<PathBuf> {
    let tools = std::env::var_os("ORDERFLOW_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/orderflow-tools"))
        })?;
    let bin = tools.join("bin/tansu");
    bin.exists().then_some(bin)
}

/// A broker of the test's own that the test can make unreachable: tansu (a separate
/// process) whose advertised address is a fault proxy in front of it, so that every client
/// connection goes through the proxy; without tansu, the app's embedded broker.
struct Broker {
    proxy: Option<(FaultProxy, Child)>,
}

impl Broker {
    async fn start() -> Self {
        let Some(bin) = tansu_binary() else {
            eprintln!("tansu not found: the outage is the embedded broker's");
            return Self { proxy: None };
        };
        let port = free_port();
        let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).await;
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://{}", proxy.addr),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let child = Child(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            proxy: Some((proxy, child)),
        }
    }

    fn bootstrap(&self) -> Option<String> {
        self.proxy.as_ref().map(|(p, _)| p.addr.to_string())
    }

    fn down(&self, app: &TestApp) {
        match &self.proxy {
            Some((p, _)) => p.down(),
            None => embedded(app).broker_down(),
        }
    }

    fn up(&self, app: &TestApp) {
        match &self.proxy {
            Some((p, _)) => p.up(),
            None => embedded(app).broker_up(),
        }
    }
}

fn embedded(app: &TestApp) -> &orderflow_jobs::kafka::EmbeddedKafka {
    app.state.events.embedded.as_ref().expect("embedded broker")
}

/// The shipped rules, with OutboxBacklogStale's bound and `for:` cut to seconds (the rest
/// of its rule, and every other rule, as shipped).
fn rules_for_the_test() -> String {
    let shipped = read(ALERT_RULES);
    let bound = "expr: max(outbox_oldest_new_age_seconds) > 300\n        for: 2m\n";
    assert!(
        shipped.contains(bound),
        "OutboxBacklogStale's expr and for changed: update this test's substitution"
    );
    shipped.replace(
        bound,
        "expr: max(outbox_oldest_new_age_seconds) > 3\n        for: 4s\n",
    )
}

struct Prometheus {
    _child: Child,
    base: String,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Prometheus {
    /// Prometheus scraping `target` every second and evaluating the rules every second.
    async fn start(target: std::net::SocketAddr) -> Self {
        let dir = TempDir(std::env::temp_dir().join(format!(
            "orderflow-prometheus-{}",
            uuid::Uuid::new_v4().simple()
        )));
        std::fs::create_dir_all(dir.0.join("data")).expect("temp dir");
        std::fs::write(dir.0.join("rules.yml"), rules_for_the_test()).expect("rules");
        std::fs::write(
            dir.0.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [rules.yml]\n\
                 scrape_configs:\n  - job_name: orderflow\n    metrics_path: /actuator/prometheus\n\
                 \x20   static_configs: [{{targets: [\"{target}\"]}}]\n"
            ),
        )
        .expect("config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.0.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus (Debian's prometheus package: apt-get install prometheus)");
        let me = Self {
            _child: Child(child),
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let ready = wait_until(Duration::from_secs(60), || async {
            reqwest::get(format!("{}/-/ready", me.base))
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        assert!(ready, "prometheus not ready: {}", me.log());
        me
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("prometheus api")
            .json()
            .await
            .expect("prometheus api json")
    }

    /// The state of `alert` in /api/v1/alerts: pending, firing, or None when inactive.
    async fn alert_state(&self, alert: &str) -> Option<String> {
        let body = self.api("/api/v1/alerts").await;
        body["data"]["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .find(|a| a["labels"]["alertname"] == alert)
            .and_then(|a| a["state"].as_str().map(str::to_owned))
    }

    async fn target_up(&self) -> bool {
        let body = self.api("/api/v1/targets").await;
        body["data"]["activeTargets"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["health"] == "up"))
    }
}

async fn wait_until<F, Fut>(bound: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows an alert through /api/v1/alerts until it reaches `want` (None: inactive), or the
/// bound passes; returns the states seen on the way, in order, without repeats.
async fn follow(
    prom: &Prometheus,
    alert: &str,
    want: Option<&str>,
    bound: Duration,
) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let state = prom.alert_state(alert).await;
        let label = state.clone().unwrap_or_else(|| "inactive".into());
        if seen.last() != Some(&label) {
            seen.push(label);
        }
        if state.as_deref() == want || tokio::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_fires_the_backlog_alert_while_kafka_is_unreachable_and_resolves_it() {
    const ALERT: &str = "OutboxBacklogStale";
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    let app = TestApp::spawn_with(|c| {
        c.events.kafka_brokers = bootstrap;
        // Longer than the outage: the message waits in the producer for the broker instead
        // of failing the attempt (the retries are the publish tests' subject, not this one's).
        c.events.delivery_timeout = Duration::from_secs(60);
    })
    .await;
    let prom = Prometheus::start(app.addr).await;
    assert!(
        wait_until(Duration::from_secs(30), || prom.target_up()).await,
        "prometheus scrapes the service: {}",
        prom.log()
    );

    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let product = app.new_product(&admin, 100, 10).await;
    let order = |key: &'static str| {
        let (app, user) = (&app, user.clone());
        async move {
            let r = app
                .order(&user, key, json!([{"productId": product, "quantity": 1}]))
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        }
    };
    let unpublished = || async {
        app.count("SELECT COUNT(*) FROM outbox_events WHERE status <> 'PUBLISHED'")
            .await
    };

    // Broker up: the order's event is published, the alert stays quiet.
    order("before-the-outage").await;
    assert!(
        wait_until(Duration::from_secs(60), || async {
            unpublished().await == 0
        })
        .await,
        "published while the broker is up"
    );
    assert_eq!(prom.alert_state(ALERT).await, None);

    // Broker unreachable: the next order's event waits; the alert goes pending, then fires.
    broker.down(&app);
    order("during-the-outage").await;
    let states = follow(&prom, ALERT, Some("firing"), Duration::from_secs(60)).await;
    assert_eq!(
        states,
        ["inactive", "pending", "firing"],
        "{ALERT} while Kafka is unreachable; unpublished rows: {}",
        unpublished().await
    );

    // Broker back: the event is published and the alert resolves.
    broker.up(&app);
    let states = follow(&prom, ALERT, None, Duration::from_secs(90)).await;
    assert_eq!(
        states.last().map(String::as_str),
        Some("inactive"),
        "{ALERT} after the broker came back: {states:?}; unpublished rows: {}",
        unpublished().await
    );
    assert_eq!(unpublished().await, 0, "the outage's event is published");
    app.stop().await;
}
