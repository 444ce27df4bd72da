//! `bench`: starts the orderflow service as a child process against a fresh database,
//! drives it over HTTP, measures the same order transaction as raw SQL (the ceiling), and
//! writes the results to bench/results/. See bench/README.md.

mod ceiling;
mod client;
mod load;
mod machine;
mod report;
mod scenarios;
mod service;
mod stats;

use std::{
    path::PathBuf,
    process::ExitCode,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

use crate::{
    ceiling::Ceiling,
    client::Api,
    report::{Results, Settings, Startup},
    scenarios::{
        archive, drain, hot, overload, pipeline, replay, replicas, spread, Ctx, LARGE_STOCK,
    },
    service::Service,
    stats::round,
};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Benchmarks of orderflow over HTTP against a raw-SQL ceiling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Command {
    /// Every scenario and the ceiling; writes bench/results/latest.{json,md}.
    All,
    /// POST /orders over the whole catalogue, fresh Idempotency-Keys.
    Spread,
    /// Everyone orders the same product.
    Hot,
    /// Retries of already-settled Idempotency-Keys (runs spread first to settle some).
    Replay,
    /// Twice spread's rate, open loop, for 20 s: goodput, answers by the deadline, refusals
    /// that stored nothing (runs spread first to measure the capacity).
    Overload,
    /// A sustained rate with the outbox backlog and the event lags.
    Pipeline,
    /// `orderflow archive run` over 100,000 old orders while spread traffic runs.
    Archive,
    /// The order transaction as raw SQL, spread and hot.
    Ceiling,
    /// CPU, statements and commits per order, per stage (order commit, publish,
    /// consume/notify), against the raw one-order transaction; then the slow-log digest.
    Cost,
    /// A few seconds of spread, hot and replay at low concurrency (CI).
    Smoke,
    /// The same order rate on 1, 2, 3 … service processes against one database: what each
    /// replica costs the database per order (needs KAFKA_BROKERS).
    Replicas,
}

#[derive(Debug, Args)]
struct Opts {
    /// Clients for spread, replay, pipeline, archive and the spread ceiling [default: 32; smoke 4].
    #[arg(long, global = true)]
    concurrency: Option<usize>,
    /// Clients for hot and the hot ceiling [default: 64; smoke 8].
    #[arg(long, global = true)]
    hot_concurrency: Option<usize>,
    /// Length of the pipeline scenario's sustained load.
    #[arg(long, global = true, default_value_t = 60)]
    duration_secs: u64,
    /// Length of each other load run [default: 15; smoke 2].
    #[arg(long, global = true)]
    scenario_secs: Option<u64>,
    /// Products in the catalogue [default: 1000; smoke 50].
    #[arg(long, global = true)]
    products: Option<usize>,
    /// Pipeline rate in orders/s [default: --pipeline-fraction of spread's orders/s].
    #[arg(long, global = true)]
    rate: Option<f64>,
    /// The pipeline's rate as a share of spread's orders/s: the events must keep pace with the
    /// orders at full speed.
    #[arg(long, global = true, default_value_t = 1.0)]
    pipeline_fraction: f64,
    /// Keep the service's log even when the run had no errors (for profiling).
    #[arg(long, global = true)]
    keep_log: bool,
    /// Old orders the archive scenario seeds.
    #[arg(long, global = true, default_value_t = 100_000)]
    archive_orders: u64,
    /// Database server (no database name: the bench creates and drops its own).
    #[arg(long, global = true, default_value = "mysql://root@127.0.0.1:3306")]
    database_url: String,
    #[arg(long, global = true, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The orderflow binary [default: `orderflow` next to this binary, in target/<profile>/].
    #[arg(long, global = true)]
    service_bin: Option<PathBuf>,
    /// Replica counts for `replicas`, run one after the other.
    #[arg(long, global = true, value_delimiter = ',', default_values_t = [1, 2, 3])]
    replicas: Vec<usize>,
    /// Seconds of `replicas` without load, to see what the replicas cost on their own.
    #[arg(long, global = true, default_value_t = 10)]
    idle_secs: u64,
    /// Where results are written.
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
}

/// What a command runs, with the sizes resolved.
struct Plan {
    spread: bool,
    hot: bool,
    replay: bool,
    overload: bool,
    pipeline: bool,
    archive: bool,
    ceiling: bool,
    cost: bool,
    /// Wait for the event pipeline to catch up between scenarios.
    drain: bool,
    concurrency: usize,
    hot_concurrency: usize,
    spread_time: Duration,
    hot_time: Duration,
    replay_time: Duration,
    products: usize,
    hot_stock: i64,
}

impl Plan {
    fn new(command: Command, o: &Opts) -> Self {
        let smoke = command == Command::Smoke;
        let secs = o.scenario_secs.unwrap_or(if smoke { 2 } else { 15 });
        let is = |cmds: &[Command]| cmds.contains(&command) || command == Command::All;
        Self {
            spread: is(&[
                Command::Spread,
                Command::Replay,
                Command::Overload,
                Command::Smoke,
            ]) || (command == Command::Pipeline && o.rate.is_none()),
            hot: is(&[Command::Hot, Command::Smoke]),
            replay: is(&[Command::Replay, Command::Smoke]),
            overload: is(&[Command::Overload]),
            pipeline: is(&[Command::Pipeline]),
            archive: is(&[Command::Archive]),
            ceiling: is(&[Command::Ceiling]),
            cost: is(&[Command::Cost]),
            drain: !smoke,
            concurrency: o.concurrency.unwrap_or(if smoke { 4 } else { 32 }),
            hot_concurrency: o.hot_concurrency.unwrap_or(if smoke { 8 } else { 64 }),
            spread_time: Duration::from_secs(secs),
            hot_time: Duration::from_secs(secs),
            // Smoke: 2 + 2 + 1 seconds of traffic.
            replay_time: if smoke {
                Duration::from_secs(secs).div_f64(2.0)
            } else {
                Duration::from_secs(secs)
            },
            products: o.products.unwrap_or(if smoke { 50 } else { 1000 }),
            // Smoke runs the hot product out, so that the OUT_OF_STOCK path is exercised too.
            hot_stock: if smoke { 40 } else { LARGE_STOCK },
        }
    }
}

/// The statement digest's load (every statement is logged meanwhile: short).
const DIGEST_TIME: Duration = Duration::from_secs(5);

/// The overload scenario's length (issue 28: 20 s at twice the capacity).
const OVERLOAD_TIME: Duration = Duration::from_secs(20);

/// How long the event pipeline may take to catch up between scenarios.
const DRAIN_BOUND: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("bench: {errors} error(s); see above");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn command_name(c: Command) -> String {
    format!("{c:?}").to_lowercase()
}

/// `bench replicas`: its own services, one set per replica count; see scenarios/replicas.rs.
async fn run_replicas(opts: &Opts) -> anyhow::Result<u64> {
    let bin = match &opts.service_bin {
        Some(b) => b.clone(),
        None => service::default_binary()?,
    };
    let plan = replicas::Plan {
        counts: opts.replicas.clone(),
        rate: opts.rate.unwrap_or(200.0),
        duration: Duration::from_secs(opts.duration_secs),
        idle: Duration::from_secs(opts.idle_secs),
        concurrency: opts.concurrency.unwrap_or(32),
        products: opts.products.unwrap_or(1000),
        users: opts.concurrency.unwrap_or(32).min(64),
    };
    let result = replicas::run(&plan, &bin, &opts.database_url, &opts.redis_url).await?;
    let table = replicas::markdown(&result);
    print!("{table}");
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    std::fs::create_dir_all(&opts.out)?;
    let json = opts.out.join(format!("{stamp}-replicas.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&result)?)?;
    let md = opts.out.join(format!("{stamp}-replicas.md"));
    std::fs::write(&md, &table)?;
    eprintln!("bench: wrote {} and {}", json.display(), md.display());
    Ok(result.runs.iter().map(|r| r.summary.errors).sum())
}

async fn run(cli: Cli) -> anyhow::Result<u64> {
    if cli.command == Command::Replicas {
        return run_replicas(&cli.opts).await;
    }
    let opts = cli.opts;
    let plan = Plan::new(cli.command, &opts);
    let server = MySqlConnectOptions::from_str(&opts.database_url)
        .context("--database-url is not a MySQL URL")?;
    let version: String = {
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .connect_with(server.clone())
            .await
            .with_context(|| format!("connecting to {}", opts.database_url))?;
        let v = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        v
    };
    let bin = match &opts.service_bin {
        Some(b) => b.clone(),
        None => service::default_binary()?,
    };
    let database = service::fresh_database_name();
    let mut results = Results {
        command: command_name(cli.command),
        machine: machine::Machine::read(format!("MariaDB/MySQL {version}")),
        settings: Settings {
            concurrency: plan.concurrency,
            hot_concurrency: plan.hot_concurrency,
            scenario_secs: plan.spread_time.as_secs_f64(),
            pipeline_secs: opts.duration_secs,
            products: plan.products,
            service_bin: bin.display().to_string(),
            // A guess from the path until the service reports its build (`build_profile`).
            service_profile: if bin.components().any(|c| c.as_os_str() == "release") {
                "release".into()
            } else {
                "debug".into()
            },
            database: database.clone(),
        },
        startup: Startup::default(),
        spread: None,
        hot: None,
        replay: None,
        overload: None,
        pipeline: None,
        archive: None,
        ceiling: None,
        cost: None,
        drains: Default::default(),
        rss_after_mib: Vec::new(),
        failure: None,
        notes: Vec::new(),
        errors: 0,
    };

    eprintln!("bench: starting {} on database {database}", bin.display());
    let database_url = format!("{}/{database}", opts.database_url.trim_end_matches('/'));
    let mut service =
        match Service::start(&bin, &opts.database_url, &opts.redis_url, &database).await {
            Ok(s) => s,
            Err(e) => {
                // The service may have created the database before it failed.
                let _ = service::drop_database(&database_url).await;
                return Err(e);
            }
        };
    if let Some(profile) = service.build_profile().await {
        results.settings.service_profile = profile;
    }
    results.startup.start_to_ready_ms = round(service.startup.as_secs_f64() * 1000.0, 0);
    results.startup.rss_ready_mib = service.rss_mib().map(|m| round(m, 1));
    eprintln!(
        "bench: ready in {} ms at {}",
        results.startup.start_to_ready_ms, service.base
    );

    let outcome = scenarios(
        &plan,
        &opts,
        &mut service,
        server.clone().database(&database),
        &mut results,
    )
    .await;
    if let Err(e) = &outcome {
        results.failure = Some(format!("{e:#}"));
    }

    results.startup.rss_end_mib = service.rss_mib().map(|m| round(m, 1));
    results.startup.rss_peak_mib = service.peak_rss_mib().map(|m| round(m, 1));
    match service.stop().await {
        Ok(took) => results.startup.stop_seconds = Some(round(took.as_secs_f64(), 2)),
        Err(e) => results.notes.push(format!("stopping the service: {e:#}")),
    }
    if let Ok(ctx) = &outcome {
        // After the service has stopped: the digest needs a process of its own (digest.rs).
        if plan.cost && results.cost.is_some() {
            eprintln!("bench: statement digest (slow log, a new service process)");
            let digest = async {
                let root = MySqlPoolOptions::new()
                    .max_connections(1)
                    .connect_with(server.clone())
                    .await?;
                let d = scenarios::digest::run(
                    &service,
                    ctx,
                    &root,
                    &database,
                    plan.concurrency,
                    DIGEST_TIME,
                )
                .await;
                root.close().await;
                d
            }
            .await;
            match digest {
                Ok(d) => {
                    if let Some(c) = results.cost.as_mut() {
                        c.digest = Some(d);
                    }
                }
                Err(e) => results.notes.push(format!("statement digest: {e:#}")),
            }
        }
        ctx.pool.close().await;
    }
    if let Err(e) = service::drop_database(&service.database_url).await {
        results.notes.push(format!("dropping {database}: {e:#}"));
    }

    let errors = results.count_errors();
    print!("{}", report::markdown(&results));
    if cli.command != Command::Smoke {
        for path in report::write(&results, &opts.out, cli.command == Command::All)? {
            eprintln!("bench: wrote {}", path.display());
        }
    }
    if errors == 0 && !opts.keep_log {
        let _ = std::fs::remove_file(&service.log_path);
    } else {
        eprintln!("bench: the service's log is {}", service.log_path.display());
    }
    Ok(errors)
}

async fn scenarios(
    plan: &Plan,
    opts: &Opts,
    service: &mut Service,
    database: MySqlConnectOptions,
    results: &mut Results,
) -> anyhow::Result<scenarios::Ctx> {
    let api = Api::new(&service.base)?;
    let pool = MySqlPoolOptions::new()
        .max_connections(4)
        .connect_with(database.clone())
        .await?;
    let users = plan.concurrency.max(plan.hot_concurrency).min(64);
    let started = Instant::now();
    let ctx = scenarios::prepare(
        &api,
        pool,
        service.pid,
        &service.admin_password,
        users,
        plan.products,
        plan.hot_stock,
    )
    .await
    .context("preparing users and products")?;
    eprintln!(
        "bench: {users} users and {} products ready in {:.1} s",
        plan.products,
        started.elapsed().as_secs_f64()
    );

    // The ceiling's runs follow the service's runs of the same scenario: same tables, same
    // machine state.
    let ceiling = plan.ceiling.then(|| Ceiling::new(database.clone()));
    let mut settled = Vec::new();
    if plan.spread {
        eprintln!("bench: spread ({} clients)", plan.concurrency);
        let (r, keys) = spread::run(&ctx, plan.concurrency, plan.spread_time, 20_000).await;
        results.spread = Some(r);
        settled = keys;
        after(plan, "spread", &ctx, service, results).await?;
    }
    if let Some(c) = &ceiling {
        eprintln!(
            "bench: ceiling spread ({} clients, raw SQL)",
            plan.concurrency
        );
        let r = c.spread(&ctx, plan.concurrency, plan.spread_time).await?;
        results.ceiling.get_or_insert_with(Default::default).spread = Some(r);
        after(plan, "ceiling spread", &ctx, service, results).await?;
    }
    if plan.hot {
        eprintln!("bench: hot ({} clients)", plan.hot_concurrency);
        results.hot = Some(hot::run(&ctx, plan.hot_concurrency, plan.hot_time).await?);
        after(plan, "hot", &ctx, service, results).await?;
    }
    if let Some(c) = &ceiling {
        eprintln!(
            "bench: ceiling hot ({} clients, raw SQL)",
            plan.hot_concurrency
        );
        let r = c
            .hot(&ctx, plan.hot_concurrency, plan.hot_time, false)
            .await?;
        results.ceiling.get_or_insert_with(Default::default).hot = Some(r);
        after(plan, "ceiling hot", &ctx, service, results).await?;
        eprintln!(
            "bench: ceiling hot with compare-and-set ({} clients, raw SQL)",
            plan.hot_concurrency
        );
        let r = c
            .hot(&ctx, plan.hot_concurrency, plan.hot_time, true)
            .await?;
        results.ceiling.get_or_insert_with(Default::default).hot_cas = Some(r);
        after(
            plan,
            "ceiling hot (compare-and-set)",
            &ctx,
            service,
            results,
        )
        .await?;
    }
    if plan.cost {
        eprintln!(
            "bench: cost per order by stage ({} clients, queues paused in turn)",
            plan.concurrency
        );
        let raw = Ceiling::new(database.clone());
        results.cost =
            Some(scenarios::cost::run(&ctx, &raw, plan.concurrency, plan.spread_time).await?);
        after(plan, "cost", &ctx, service, results).await?;
    }
    let create_rate = results.spread.as_ref().map(|s| s.summary.ok_per_sec);
    if plan.replay {
        eprintln!("bench: replay ({} clients)", plan.concurrency);
        results.replay = Some(
            replay::run(
                &ctx,
                std::mem::take(&mut settled),
                plan.concurrency,
                plan.replay_time,
                create_rate,
            )
            .await?,
        );
        after(plan, "replay", &ctx, service, results).await?;
    }
    if plan.overload {
        let capacity = create_rate.context("overload needs a spread run")?;
        eprintln!(
            "bench: overload at {:.0} orders/s (2 × spread) for {} s",
            2.0 * capacity,
            OVERLOAD_TIME.as_secs()
        );
        results.overload = Some(overload::run(&ctx, capacity, OVERLOAD_TIME).await?);
        after(plan, "overload", &ctx, service, results).await?;
    }
    if plan.pipeline {
        let rate = match opts.rate {
            Some(r) => r,
            None => {
                opts.pipeline_fraction
                    * create_rate.context("pipeline needs --rate or a spread run")?
            }
        };
        eprintln!(
            "bench: pipeline at {rate:.0} orders/s for {} s",
            opts.duration_secs
        );
        results.pipeline = Some(
            pipeline::run(
                &ctx,
                rate,
                plan.concurrency,
                Duration::from_secs(opts.duration_secs),
            )
            .await?,
        );
        service.check_alive()?;
        record_rss(service, "pipeline", results);
    }
    if plan.archive {
        eprintln!("bench: archive of {} old orders", opts.archive_orders);
        results.archive = Some(
            archive::run(
                &ctx,
                service,
                opts.archive_orders,
                plan.concurrency,
                plan.spread_time,
            )
            .await?,
        );
        after(plan, "archive", &ctx, service, results).await?;
    }
    Ok(ctx)
}

fn record_rss(service: &Service, scenario: &str, results: &mut Results) {
    if let Some(mib) = service.rss_mib() {
        results
            .rss_after_mib
            .push((scenario.to_owned(), round(mib, 1)));
    }
}

/// After a scenario: the service must still be up; then let the event pipeline catch up.
async fn after(
    plan: &Plan,
    name: &str,
    ctx: &Ctx,
    service: &mut Service,
    results: &mut Results,
) -> anyhow::Result<()> {
    service.check_alive()?;
    record_rss(service, name, results);
    if plan.drain {
        let d = drain(&ctx.pool, DRAIN_BOUND).await?;
        if !d.drained {
            results.notes.push(format!(
                "the event pipeline had not caught up {} s after {name}: {}",
                d.seconds,
                d.left()
            ));
        }
        results.drains.insert(name.to_owned(), d);
    }
    Ok(())
}
