//! The `orderflow` command line.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::state::Role;

#[derive(Debug, Parser)]
#[command(
    name = "orderflow",
    version,
    about = "Orders, inventory and notifications, exactly once"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default command).
    Serve {
        /// `all` serves the API and runs the background workers; `api` and `worker` split them.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
    },
    /// Create the database if missing and apply pending migrations, then exit.
    Migrate,
    /// Manage accounts.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Operate the job table: list dead jobs, show one, retry or discard them.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// The job queues: list them, or pause and resume one (for every replica).
    Queues {
        #[command(subcommand)]
        command: Option<QueuesCommand>,
    },
    /// Archive finished orders now.
    Archive {
        #[command(subcommand)]
        command: ArchiveCommand,
    },
    /// Check the invariants over the whole history, live and archived; exit 0 when all hold,
    /// 1 when any fails (the offending ids are printed), 2 when the history cannot be read.
    Audit {
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Rows per read (defaults to AUDIT_CHUNK_SIZE).
        #[arg(long)]
        chunk_size: Option<u32>,
    },
    /// Print the OpenAPI document (the one served at /api-docs/openapi.json) and exit.
    Openapi,
    /// Exit 0 when the local service answers its liveness probe (for container healthchecks).
    Healthcheck {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        #[arg(long, default_value = "/actuator/health/liveness")]
        path: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Give an existing account the ADMIN role.
    Promote { email: String },
}

#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Move COMPLETED/CANCELLED orders older than N days to the archive, then print the summary.
    Run {
        /// Defaults to ARCHIVE_OLDER_THAN_DAYS.
        #[arg(long)]
        older_than_days: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List dead jobs (attempts exhausted or refused for good).
    Dead {
        /// Only this queue (publish-outbox, consume-notification).
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// One job as JSON: payload, state, attempt history (newest first) with errors and
    /// trace links, and for a publish job the outbox rows it carries.
    Show { id: String },
    /// Put a dead job back in its queue; `--all-dead` retries every dead job (at most 1000,
    /// in one transaction), given the count expected (`--expect N`; `--dry-run` counts).
    Retry {
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<String>,
        #[arg(long)]
        all_dead: bool,
        /// With --all-dead: only this queue.
        #[arg(long, requires = "all_dead")]
        queue: Option<String>,
        /// With --all-dead: how many dead jobs you expect to retry; refused if that is not
        /// how many match (required when any do).
        #[arg(long, requires = "all_dead")]
        expect: Option<u64>,
        /// With --all-dead: count the dead jobs, change nothing.
        #[arg(long, requires = "all_dead", conflicts_with = "expect")]
        dry_run: bool,
    },
    /// Set a dead job aside for good; a publish job's DEAD outbox rows become DISCARDED.
    Discard { id: String },
}

#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Stop every replica fetching from this queue (within one poll interval).
    Pause { queue: String },
    /// Let every replica fetch from this queue again.
    Resume { queue: String },
}

/// A dependency-free HTTP/1.1 GET that reports whether the status was 2xx.
pub async fn healthcheck(addr: SocketAddr, path: &str) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.starts_with(b"HTTP/1.1 2"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), probe).await,
        Ok(Ok(true))
    )
}
