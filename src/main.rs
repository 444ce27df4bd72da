use std::process::ExitCode;

use clap::Parser;
use orderflow::{
    auth,
    cli::{self, ArchiveCommand, Cli, Command, UsersCommand},
    config::Config,
    db, operators, router, startup,
    state::Role,
    telemetry,
};
use orderflow_jobs::{archive_run::archive, engine::pause::Pauses};

/// glibc serves a large block from its heap once a block that size was freed (its mmap
/// threshold rises to it) and keeps that memory: argon2's 19 MiB blocks, on several blocking
/// threads each with its own 64 MiB arena, left the process at ~800 MB RSS after a burst of
/// logins (bench/, heaptrack: the live peak was 80 MB). A fixed 1 MiB threshold maps large
/// blocks and unmaps them when freed. Runs before any other thread exists; covers
/// librdkafka's C allocations too.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve { role: Role::All });
    if let Command::Openapi = &command {
        let (_, doc) = router::routes(Role::All);
        return match doc.to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("orderflow: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orderflow: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Healthcheck { addr, path } = &command {
        return if runtime.block_on(cli::healthcheck(*addr, path)) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("orderflow: {e}");
            return ExitCode::from(2);
        }
    };
    // Outside the runtime: the trace exporter's blocking HTTP client must not be created or
    // dropped on an async worker thread. Dropped before the runtime, flushing what is left.
    let _telemetry = telemetry::init(config.log_format, &config.tracing);
    if let Command::Audit { json, chunk_size } = command {
        return match runtime.block_on(audit(config, json, chunk_size)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("orderflow: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match runtime.block_on(run(command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "orderflow failed");
            eprintln!("orderflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve { role } => {
            let addr = config.http_addr;
            let state = startup::init(config).await?;
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(%addr, ?role, "orderflow listening");
            startup::serve(listener, state, role, shutdown_signal()).await?;
            tracing::info!("orderflow stopped");
        }
        Command::Migrate => {
            db::create_database_if_missing(&config.database_url).await?;
            let pool = db::connect(
                &config.database_url,
                &db::PoolSettings::for_command(&config),
            )
            .await?;
            db::migrate(&pool).await?;
            tracing::info!("migrations applied");
        }
        Command::Users {
            command: UsersCommand::Promote { email },
        } => {
            let pool = db::connect(
                &config.database_url,
                &db::PoolSettings::for_command(&config),
            )
            .await?;
            auth::promote(&pool, &email).await?;
            println!("{email} is now ADMIN");
        }
        Command::Jobs { command } => {
            let pool = db::connect(
                &config.database_url,
                &db::PoolSettings::for_command(&config),
            )
            .await?;
            operators::cli::jobs(&pool, &config, command, &mut std::io::stdout()).await?;
        }
        Command::Queues { command } => {
            let pool = db::connect(
                &config.database_url,
                &db::PoolSettings::for_command(&config),
            )
            .await?;
            operators::cli::queues(&pool, &config, command, &mut std::io::stdout()).await?;
        }
        Command::Archive {
            command: ArchiveCommand::Run { older_than_days },
        } => {
            // The archive worker runs here too, so the run completes without a service running;
            // replicas that are running take part in it.
            let pool = db::connect(
                &config.database_url,
                &db::PoolSettings {
                    max_connections: 4,
                    ..db::PoolSettings::for_command(&config)
                },
            )
            .await?;
            let run = archive::ArchiveRun {
                run_key: format!("manual-{}", orderflow_jobs::engine::queue::new_job_id()),
                older_than_days: older_than_days.unwrap_or(config.archive.older_than_days),
                chunk_size: config.archive.chunk_size,
            };
            let summary = archive_now(&pool, &config, run).await?;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Healthcheck { .. } | Command::Openapi => {
            unreachable!("handled before configuration is read")
        }
        Command::Audit { .. } => unreachable!("handled with its own exit codes"),
    }
    Ok(())
}

/// Runs the audit and prints its report; returns whether every invariant holds.
async fn audit(config: Config, json: bool, chunk_size: Option<u32>) -> anyhow::Result<bool> {
    let pool = db::connect(
        &config.database_url,
        &db::PoolSettings::for_command(&config),
    )
    .await?;
    let mut settings = orderflow::audit::Settings::from_config(&config);
    if let Some(chunk) = chunk_size.filter(|c| *c > 0) {
        settings.chunk = chunk;
    }
    let report =
        orderflow::audit::run(&pool, settings, &mut orderflow::audit::Terminal::stderr()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(report.holds())
}

/// Starts an archive run on the job engine and waits for its summary.
async fn archive_now(
    pool: &sqlx::MySqlPool,
    config: &Config,
    run: archive::ArchiveRun,
) -> anyhow::Result<archive::Summary> {
    let settings = config.events.queue;
    let key = run.run_key.clone();
    orderflow_jobs::archive_run::archive::push_archive(pool, &settings, run)
        .await
        .map_err(|e| anyhow::anyhow!("queueing the archive run: {e}"))?;
    let stop = tokio_util::sync::CancellationToken::new();
    // The run honours a paused archive-run queue, as the service's workers do.
    let pauses = Pauses::new();
    tokio::spawn(pauses.clone().watch(pool.clone(), settings.poll_interval, {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));
    let worker = tokio::spawn(orderflow_workflows::run_archive_worker(
        pool.clone(),
        settings,
        config.events.shutdown_timeout,
        pauses,
        stop.clone(),
    ));
    let outcome = loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        match archive::summary(pool, &key).await? {
            Some(s) if s.finished() => break Ok(s),
            _ if archive::dead_steps(pool, &key).await? > 0 => {
                break Err(anyhow::anyhow!(
                    "archive run {key} stopped at a dead job: see `orderflow jobs dead --queue archive-run`, then `orderflow jobs retry <id>`"
                ))
            }
            _ => {}
        }
    };
    stop.cancel();
    let _ = worker.await;
    outcome
}

/// SIGTERM (orchestrators) or Ctrl-C (humans).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested; draining in-flight requests");
}
