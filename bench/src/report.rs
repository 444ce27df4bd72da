//! The run's results: one JSON document with every figure, and a Markdown table of the
//! headline figures (scenario, figure, service, ceiling, ratio = service ÷ ceiling).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{
    ceiling::CeilingResult,
    machine::{CpuUse, Machine},
    scenarios::{
        archive::ArchiveResult, hot::HotResult, overload::OverloadResult, pipeline::PipelineResult,
        replay::ReplayResult, spread::SpreadResult, Drain,
    },
    stats::Summary,
};

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub concurrency: usize,
    pub hot_concurrency: usize,
    pub scenario_secs: f64,
    pub pipeline_secs: u64,
    pub products: usize,
    pub service_bin: String,
    /// `release` or `debug`, from where the service binary lives.
    pub service_profile: String,
    pub database: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Startup {
    /// Spawn → first 200 from /actuator/health/readiness (creating and migrating the
    /// database and starting the embedded Kafka included).
    pub start_to_ready_ms: f64,
    pub rss_ready_mib: Option<f64>,
    pub rss_end_mib: Option<f64>,
    /// VmHWM: the highest resident set the process had.
    pub rss_peak_mib: Option<f64>,
    pub stop_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub command: String,
    pub machine: Machine,
    pub settings: Settings,
    pub startup: Startup,
    pub spread: Option<SpreadResult>,
    pub hot: Option<HotResult>,
    pub replay: Option<ReplayResult>,
    pub overload: Option<OverloadResult>,
    pub pipeline: Option<PipelineResult>,
    pub archive: Option<ArchiveResult>,
    pub ceiling: Option<CeilingResult>,
    /// CPU, statements and commits per order by stage, and the statement digest (issue 33).
    pub cost: Option<crate::scenarios::cost::CostResult>,
    /// How long the event pipeline took to catch up after each scenario.
    pub drains: BTreeMap<String, Drain>,
    /// The service's resident memory right after each scenario, in MiB (in run order).
    pub rss_after_mib: Vec<(String, f64)>,
    /// A failure that ended the run early.
    pub failure: Option<String>,
    pub notes: Vec<String>,
    /// Sum of every scenario's errors (must be 0).
    pub errors: u64,
}

impl Results {
    pub fn count_errors(&mut self) -> u64 {
        let mut summaries: Vec<&Summary> = Vec::new();
        summaries.extend(self.spread.as_ref().map(|s| &s.summary));
        summaries.extend(self.hot.as_ref().map(|s| &s.summary));
        summaries.extend(self.replay.as_ref().map(|s| &s.summary));
        summaries.extend(self.overload.as_ref().map(|s| &s.summary));
        summaries.extend(self.pipeline.as_ref().map(|s| &s.summary));
        if let Some(a) = &self.archive {
            summaries.extend([&a.baseline, &a.during]);
        }
        if let Some(c) = &self.ceiling {
            summaries.extend(c.spread.as_ref().map(|s| &s.summary));
            summaries.extend(c.hot.as_ref().map(|s| &s.summary));
        }
        // A refused key with an order would be a lie to its client: an error like a 5xx.
        let lies = self
            .overload
            .as_ref()
            .map_or(0, |o| o.refused_keys_stored.max(0) as u64);
        self.errors = summaries.iter().map(|s| s.errors).sum::<u64>()
            + lies
            + u64::from(self.failure.is_some());
        self.errors
    }
}

struct Row {
    scenario: &'static str,
    figure: String,
    service: String,
    ceiling: String,
    ratio: String,
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 || (v.fract() == 0.0 && v.abs() < 1e15) {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "–".into())
}

/// Milliseconds per order: three decimals (a tenth of a millisecond is a large difference).
fn ms3(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into())
}

fn ratio(service: f64, ceiling: f64) -> String {
    if ceiling > 0.0 {
        format!("{:.2}", service / ceiling)
    } else {
        "–".into()
    }
}

struct Table(Vec<Row>);

impl Table {
    fn row(&mut self, scenario: &'static str, figure: &str, service: String) {
        self.0.push(Row {
            scenario,
            figure: figure.into(),
            service,
            ceiling: String::new(),
            ratio: String::new(),
        });
    }

    fn compared(
        &mut self,
        scenario: &'static str,
        figure: &str,
        service: Option<f64>,
        ceiling: Option<f64>,
    ) {
        self.0.push(Row {
            scenario,
            figure: figure.into(),
            service: service.map(num).unwrap_or_default(),
            ceiling: ceiling.map(num).unwrap_or_default(),
            ratio: match (service, ceiling) {
                (Some(s), Some(c)) => ratio(s, c),
                _ => String::new(),
            },
        });
    }

    /// Throughput, latencies, errors and CPU of a load run, next to the ceiling's.
    fn load(
        &mut self,
        scenario: &'static str,
        unit: &str,
        s: Option<&Summary>,
        c: Option<&Summary>,
    ) {
        let figures = [
            (
                format!("{unit}/s"),
                s.map(|x| x.ok_per_sec),
                c.map(|x| x.ok_per_sec),
            ),
            ("p50 (ms)".into(), s.map(|x| x.p50_ms), c.map(|x| x.p50_ms)),
            ("p95 (ms)".into(), s.map(|x| x.p95_ms), c.map(|x| x.p95_ms)),
            ("p99 (ms)".into(), s.map(|x| x.p99_ms), c.map(|x| x.p99_ms)),
            ("max (ms)".into(), s.map(|x| x.max_ms), c.map(|x| x.max_ms)),
        ];
        for (figure, a, b) in figures {
            self.compared(scenario, &figure, a, b);
        }
        self.0.push(Row {
            scenario,
            figure: "errors (must be 0)".into(),
            service: s.map_or(String::new(), |x| x.errors.to_string()),
            ceiling: c.map_or(String::new(), |x| x.errors.to_string()),
            ratio: String::new(),
        });
    }

    /// CPU in cores (1.0 = one core busy throughout); no ratio: the two sides do different work.
    fn cpu(&mut self, scenario: &'static str, s: Option<&CpuUse>, c: Option<&CpuUse>) {
        let mut side_by_side = |figure: &str, a: Option<f64>, b: Option<f64>| {
            self.0.push(Row {
                scenario,
                figure: figure.into(),
                service: a.map(num).unwrap_or_default(),
                ceiling: b.map(num).unwrap_or_default(),
                ratio: String::new(),
            })
        };
        side_by_side(
            "CPU: database server (cores)",
            s.and_then(|x| x.database_cores),
            c.and_then(|x| x.database_cores),
        );
        side_by_side(
            "CPU: service process (cores)",
            s.and_then(|x| x.service_cores),
            None,
        );
        side_by_side(
            "CPU: load generator, incl. sqlx for the ceiling (cores)",
            s.and_then(|x| x.bench_cores),
            c.and_then(|x| x.bench_cores),
        );
    }
}

pub fn markdown(r: &Results) -> String {
    let mut t = Table(Vec::new());
    let st = &r.startup;
    t.row("startup", "spawn → ready (ms)", num(st.start_to_ready_ms));
    t.row("startup", "RSS when ready (MiB)", opt(st.rss_ready_mib));
    t.row("startup", "RSS peak, VmHWM (MiB)", opt(st.rss_peak_mib));
    t.row("startup", "RSS at end (MiB)", opt(st.rss_end_mib));
    t.row("startup", "stop after SIGTERM (s)", opt(st.stop_seconds));
    for (scenario, mib) in &r.rss_after_mib {
        t.row("memory", &format!("RSS after {scenario} (MiB)"), num(*mib));
    }

    let ceiling_spread = r.ceiling.as_ref().and_then(|c| c.spread.as_ref());
    let ceiling_hot = r.ceiling.as_ref().and_then(|c| c.hot.as_ref());
    if r.spread.is_some() || ceiling_spread.is_some() {
        let s = r.spread.as_ref();
        t.load(
            "spread",
            "orders",
            s.map(|x| &x.summary),
            ceiling_spread.map(|c| &c.summary),
        );
        t.compared(
            "spread",
            "orders per transaction",
            s.and_then(|x| x.per_batch),
            ceiling_spread.map(|_| 1.0),
        );
        t.compared(
            "spread",
            "database statements per order (workers included)",
            s.and_then(|x| x.db.statements_per_order),
            ceiling_spread.and_then(|c| c.db.statements_per_order),
        );
        t.compared(
            "spread",
            "database commits per order (workers included)",
            s.and_then(|x| x.db.commits_per_order),
            ceiling_spread.and_then(|c| c.db.commits_per_order),
        );
        t.cpu("spread", s.map(|x| &x.cpu), ceiling_spread.map(|c| &c.cpu));
        if let Some(d) = r.drains.get("spread") {
            t.row("spread", "event pipeline caught up after (s)", drain(d));
        }
    }
    if r.hot.is_some() || ceiling_hot.is_some() {
        let h = r.hot.as_ref();
        let ch = ceiling_hot;
        t.load(
            "hot",
            "orders",
            h.map(|x| &x.summary),
            ch.map(|x| &x.summary),
        );
        let oos =
            |x: &HotResult| x.summary.refusals.get("OUT_OF_STOCK").copied().unwrap_or(0) as f64;
        t.compared("hot", "OUT_OF_STOCK refusals", h.map(oos), ch.map(oos));
        let other = |x: &HotResult| {
            x.summary
                .refusals
                .iter()
                .filter(|(c, _)| c.as_str() != "OUT_OF_STOCK")
                .map(|(_, n)| *n)
                .sum::<u64>() as f64
        };
        t.compared(
            "hot",
            "other refusals (must be 0)",
            h.map(other),
            ch.map(other),
        );
        t.compared(
            "hot",
            "lost races per order",
            h.and_then(|x| x.lock_conflicts_per_order),
            ch.and_then(|x| x.lock_conflicts_per_order),
        );
        t.0.push(Row {
            scenario: "hot",
            figure: "stock taken = orders created".into(),
            service: h.map_or(String::new(), |x| x.stock_exact.to_string()),
            ceiling: ch.map_or(String::new(), |x| x.stock_exact.to_string()),
            ratio: String::new(),
        });
        t.compared(
            "hot",
            "orders per transaction",
            h.and_then(|x| x.per_batch),
            ch.map(|_| 1.0),
        );
        t.cpu("hot", h.map(|x| &x.cpu), ch.map(|x| &x.cpu));
        if let Some(d) = r.drains.get("hot") {
            t.row("hot", "event pipeline caught up after (s)", drain(d));
        }
    }
    // The other optimistic scheme on the same run, against the guarded ceiling (ADR 0005).
    if let (Some(cas), Some(guarded)) = (
        r.ceiling.as_ref().and_then(|c| c.hot_cas.as_ref()),
        ceiling_hot,
    ) {
        let mut cas_row = |figure: &str, value: f64, reference: f64| {
            t.0.push(Row {
                scenario: "hot, CAS ceiling",
                figure: figure.into(),
                service: String::new(),
                ceiling: num(value),
                ratio: ratio(value, reference),
            })
        };
        cas_row(
            "orders/s (ratio: ÷ guarded ceiling)",
            cas.summary.ok_per_sec,
            guarded.summary.ok_per_sec,
        );
        cas_row(
            "p99 (ms) (ratio: ÷ guarded ceiling)",
            cas.summary.p99_ms,
            guarded.summary.p99_ms,
        );
        let exhausted = cas
            .summary
            .refusals
            .get("RETRIES_EXHAUSTED")
            .copied()
            .unwrap_or(0);
        t.0.push(Row {
            scenario: "hot, CAS ceiling",
            figure: "refused with units left (retries exhausted)".into(),
            service: String::new(),
            ceiling: exhausted.to_string(),
            ratio: String::new(),
        });
        t.0.push(Row {
            scenario: "hot, CAS ceiling",
            figure: "lost races per order".into(),
            service: String::new(),
            ceiling: cas.lock_conflicts_per_order.map(num).unwrap_or_default(),
            ratio: String::new(),
        });
    }
    if let Some(rp) = &r.replay {
        t.load("replay", "replays", Some(&rp.summary), None);
        t.row(
            "replay",
            "replays/s ÷ spread orders/s",
            opt(rp.vs_create_rate),
        );
        t.row("replay", "distinct keys replayed", rp.keys.to_string());
        t.cpu("replay", Some(&rp.cpu), None);
    }
    if let Some(o) = &r.overload {
        t.row(
            "overload",
            "offered / sent (orders/s, 2 × spread)",
            format!("{} / {}", num(o.offered_rate), num(o.sent_rate)),
        );
        t.row("overload", "goodput (orders/s)", num(o.goodput));
        t.row(
            "overload",
            "goodput ÷ spread's orders/s (target ≥ 0.9)",
            num(o.goodput_ratio),
        );
        t.row("overload", "admitted p99 (ms)", num(o.admitted.p99_ms));
        t.row("overload", "refused p99 (ms)", num(o.refused.p99_ms));
        if let Some(s) = &o.refused_in_service {
            t.row(
                "overload",
                "refused in the service: share ≤ 10 ms / p99 ≤ (ms)",
                format!(
                    "{} / {}",
                    num(s.within_10ms),
                    s.p99_at_most_ms.map_or("> 30 s".into(), num)
                ),
            );
        }
        t.row(
            "overload",
            "a no-work request (liveness) p50 / p99 (ms)",
            format!("{} / {}", num(o.no_work.p50_ms), num(o.no_work.p99_ms)),
        );
        if let Some(p) = o.cpu_pressure {
            t.row(
                "overload",
                "CPU pressure (share of time a task waited)",
                num(p),
            );
        }
        t.row(
            "overload",
            "refused (503) / unknown (504)",
            format!("{} / {}", o.refused_count, o.unknown_count),
        );
        t.row(
            "overload",
            "refused keys with an order (must be 0)",
            o.refused_keys_stored.to_string(),
        );
        t.row(
            "overload",
            "errors (must be 0)",
            o.summary.errors.to_string(),
        );
        t.cpu("overload", Some(&o.cpu), None);
    }
    if let Some(p) = &r.pipeline {
        t.row("pipeline", "offered rate (orders/s)", num(p.offered_rate));
        t.row("pipeline", "achieved (orders/s)", num(p.summary.ok_per_sec));
        t.row("pipeline", "order p99 (ms)", num(p.summary.p99_ms));
        t.row(
            "pipeline",
            "errors (must be 0)",
            p.summary.errors.to_string(),
        );
        t.row(
            "pipeline",
            "outbox backlog (NEW rows): max",
            p.backlog_max.to_string(),
        );
        t.row("pipeline", "outbox backlog: mean", num(p.backlog_mean));
        t.row(
            "pipeline",
            "outbox backlog when the load stopped",
            p.backlog_at_end.to_string(),
        );
        t.row(
            "pipeline",
            "caught up after the load stopped (s)",
            drain(&p.drain_after),
        );
        let k = &p.commit_to_kafka_ack;
        t.row("pipeline", "commit → Kafka ack p50 (ms)", num(k.p50_ms));
        t.row("pipeline", "commit → Kafka ack p99 (ms)", num(k.p99_ms));
        let n = &p.commit_to_notification;
        t.row("pipeline", "commit → notification p50 (ms)", num(n.p50_ms));
        t.row("pipeline", "commit → notification p99 (ms)", num(n.p99_ms));
        t.row(
            "pipeline",
            "orders / published / notified",
            format!("{} / {} / {}", p.orders, p.published, p.notified),
        );
        t.row(
            "pipeline",
            "publish-outbox jobs pushed",
            p.publish_jobs.to_string(),
        );
        t.cpu("pipeline", Some(&p.cpu), None);
    }
    if let Some(a) = &r.archive {
        t.row(
            "archive",
            "orders seeded (COMPLETED, 400 days old)",
            a.seeded_orders.to_string(),
        );
        t.row(
            "archive",
            "archive run (s)",
            num(a.archive_summary["durationMs"].as_f64().unwrap_or(0.0) / 1000.0),
        );
        t.row(
            "archive",
            "archived orders/s",
            num(a.archive_orders_per_sec),
        );
        t.row(
            "archive",
            "order p99 without archive (ms)",
            num(a.baseline.p99_ms),
        );
        t.0.push(Row {
            scenario: "archive",
            figure: "order p99 during archive (ms)".into(),
            service: num(a.during.p99_ms),
            ceiling: String::new(),
            ratio: format!("{:.2} × without", a.p99_during_vs_baseline),
        });
        t.row(
            "archive",
            "orders/s without archive",
            num(a.baseline.ok_per_sec),
        );
        t.row(
            "archive",
            "orders/s during archive",
            num(a.during.ok_per_sec),
        );
        t.row(
            "archive",
            "errors (must be 0)",
            (a.baseline.errors + a.during.errors).to_string(),
        );
    }

    let m = &r.machine;
    let s = &r.settings;
    let mut out = String::new();
    let _ = writeln!(out, "# orderflow benchmark (`bench {}`)\n", r.command);
    let _ = writeln!(
        out,
        "{} · {} × {} · {} MiB · Linux {} · {} · service: {} build · load average at start {:.2}\n",
        m.date,
        m.nproc,
        m.cpu_model,
        m.memory_mib,
        m.kernel,
        m.database_server,
        s.service_profile,
        m.loadavg_at_start
    );
    let _ = write!(
        out,
        "concurrency {} (hot {}), {} s per load run, {} products",
        s.concurrency, s.hot_concurrency, s.scenario_secs, s.products
    );
    if r.pipeline.is_some() {
        let _ = write!(out, ", pipeline {} s", s.pipeline_secs);
    }
    out.push_str("\n\n");
    out.push_str("| scenario | figure | service | ceiling | ratio |\n|---|---|---:|---:|---:|\n");
    for row in &t.0 {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            row.scenario, row.figure, row.service, row.ceiling, row.ratio
        );
    }
    out.push_str(
        "\nratio = service ÷ ceiling (throughput: the share of the ceiling reached; latency: \
         how many times slower). The ceiling is the same database work as raw SQL (see bench/README.md).\n",
    );
    if let Some(c) = &r.cost {
        out.push_str(&cost_table(c));
    }
    if let Some(f) = &r.failure {
        let _ = writeln!(out, "\n**The run failed:** {f}");
    }
    for n in &r.notes {
        let _ = writeln!(out, "\n- {n}");
    }
    let _ = writeln!(out, "\nerrors: {}", r.errors);
    out
}

/// The cost section: per stage, per order, against the raw one-order transaction.
fn cost_table(c: &crate::scenarios::cost::CostResult) -> String {
    let mut out = String::new();
    out.push_str(
        "\n## Cost per order (CPU from /proc of mariadbd and the service; statements and commits: \
         the server's Questions and Com_commit)\n\n\
         | stage | orders | s | database CPU (ms/order) | service CPU (ms/order) | statements/order | commits/order | database cores | service cores |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let line = |out: &mut String, s: &crate::scenarios::cost::StageCost| {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.stage,
            s.orders,
            num(s.seconds),
            ms3(s.db_cpu_ms),
            ms3(s.service_cpu_ms),
            opt(s.statements),
            opt(s.commits),
            opt(s.db_cores),
            opt(s.service_cores)
        );
    };
    line(&mut out, &c.raw);
    for s in &c.stages {
        line(&mut out, s);
    }
    line(&mut out, &c.pipeline);
    let _ = writeln!(
        out,
        "\nIdle, per second (other work on the server, the service's pollers): database {} ms, \
         service {} ms of CPU, {} statements, {} commits.\n",
        opt(c.idle.db_cpu_ms),
        opt(c.idle.service_cpu_ms),
        opt(c.idle.statements),
        opt(c.idle.commits)
    );
    let _ = writeln!(
        out,
        "| ratio (same run) | value | issue 33 target |\n|---|---:|---:|\n\
         | whole pipeline's database CPU ÷ raw transaction's | {} | ≤ 0.5 |\n\
         | order commit's database CPU ÷ raw transaction's | {} | |\n\
         | whole pipeline's service CPU ÷ raw transaction's database CPU | {} | ≤ 0.66 |\n\
         | order-commit window orders/s (queues paused) ÷ raw orders/s | {} | |",
        opt(c.db_vs_raw),
        opt(c.order_commit_db_vs_raw),
        opt(c.service_vs_raw_db),
        ratio(c.orders_per_sec, c.raw_orders_per_sec)
    );
    if let Some(d) = &c.digest {
        let _ = writeln!(
            out,
            "\n### Top statements by database time per order (slow log, {} orders in {} s, all stages)\n\n\
             {} statements and {} ms of statement time per order (wall time in the server, logging on; \
             the new process's broker re-seed, {} ms, left out).\n\n\
             | statement | calls/order | ms/order | share | rows examined/call |\n|---|---:|---:|---:|---:|",
            d.orders,
            num(d.seconds),
            num(d.statements_per_order),
            num(d.ms_per_order),
            num(d.reseed_ms_left_out)
        );
        for s in &d.top {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {:.1} % | {} |",
                s.statement.replace('|', "\\|"),
                num(s.calls_per_order),
                ms3(Some(s.ms_per_order)),
                s.share * 100.0,
                num(s.rows_examined_per_call)
            );
        }
    }
    out
}

fn drain(d: &Drain) -> String {
    if d.drained {
        num(d.seconds)
    } else {
        format!("no: after {} s, {}", num(d.seconds), d.left())
    }
}

/// Writes `<stamp>-<command>.{json,md}`, and `latest.{json,md}` for a full run.
pub fn write(r: &Results, dir: &Path, latest: bool) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(r)? + "\n";
    let md = markdown(r);
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut names = vec![format!("{stamp}-{}", r.command)];
    if latest {
        names.push("latest".into());
    }
    let mut written = Vec::new();
    for name in names {
        for (ext, text) in [("json", &json), ("md", &md)] {
            let path = dir.join(format!("{name}.{ext}"));
            std::fs::write(&path, text)?;
            written.push(path);
        }
    }
    Ok(written)
}
