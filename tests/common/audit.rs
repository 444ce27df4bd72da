//! `orderflow audit` as an operator runs it, against a test's database.

use std::process::Command;

/// What one run of `orderflow audit` said.
#[derive(Debug)]
pub struct AuditRun {
    /// The exit code: 0 every invariant holds, 1 one fails, 2 the history could not be read.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl AuditRun {
    /// The report's lines naming `check` as failed, with the ids under it.
    pub fn failed(&self, check: &str) -> Option<String> {
        section(&self.stdout, "FAIL", check)
    }

    /// The lines listing `check`'s rows (listed, not failed).
    pub fn listed(&self, check: &str) -> Option<String> {
        section(&self.stdout, "LIST", check)
    }
}

fn section(report: &str, mark: &str, check: &str) -> Option<String> {
    let mut lines = report.lines().skip_while(|l| {
        let mut words = l.split_whitespace();
        !(words.next() == Some(mark) && words.next() == Some(check))
    });
    let head = lines.next()?;
    let body: Vec<&str> = lines.take_while(|l| l.starts_with("       ")).collect();
    Some(format!("{head}\n{}", body.join("\n")))
}

/// Runs the `orderflow audit` binary on `database_url`.
pub fn run(database_url: &str, extra_env: &[(&str, &str)]) -> AuditRun {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", super::redis_url())
        .env("JWT_SECRET", super::JWT_SECRET.as_str())
        .env("RUST_LOG", "warn")
        // Small reads, so that even a test's history takes several chunks.
        .env("AUDIT_CHUNK_SIZE", "7")
        .arg("audit");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("orderflow audit runs");
    AuditRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The audit passes on `database_url`: every invariant holds over the whole history.
pub fn assert_passes(database_url: &str) {
    let run = run(database_url, &[]);
    assert_eq!(
        run.code, 0,
        "orderflow audit failed:\n{}\n{}",
        run.stdout, run.stderr
    );
    assert!(run.stdout.contains("audit passed"), "{}", run.stdout);
}
