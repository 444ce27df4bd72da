//! What an audit found, and the readable report an operator gets.

use std::{fmt::Write, time::Duration};

use serde::Serialize;

/// Findings kept per check: the count is always exact, the ids printed are the first ones.
const KEPT: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A finding is a violation: the audit fails.
    Invariant,
    /// Findings are listed for an operator (DEAD rows, dead jobs), not failures.
    Listing,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The offending row: `order 42`, `product 7`, `outbox 13`, `job 01J…`.
    pub id: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The `check` label of `audit_violations`.
    pub name: &'static str,
    pub rule: &'static str,
    pub kind: Kind,
    /// Rows this check looked at.
    pub scanned: u64,
    /// Findings in all (only the first `KEPT` are in `findings`).
    pub count: u64,
    pub findings: Vec<Finding>,
}

impl Check {
    pub(crate) fn new(name: &'static str, kind: Kind, rule: &'static str) -> Self {
        Self {
            name,
            rule,
            kind,
            scanned: 0,
            count: 0,
            findings: Vec::new(),
        }
    }

    pub(crate) fn found(&mut self, id: String, detail: String) {
        self.count += 1;
        if self.findings.len() < KEPT {
            self.findings.push(Finding { id, detail });
        }
    }

    pub fn holds(&self) -> bool {
        self.kind == Kind::Listing || self.count == 0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub rows: u64,
    #[serde(with = "secs")]
    pub elapsed: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Report {
    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.checks.iter().all(Check::holds)
    }

    /// Violations over every invariant.
    pub fn violations(&self) -> u64 {
        self.checks
            .iter()
            .filter(|c| c.kind == Kind::Invariant)
            .map(|c| c.count)
            .sum()
    }

    pub fn failed_checks(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| !c.holds())
            .map(|c| c.name)
            .collect()
    }

    pub fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }

    /// The report for a human: one line per check, the offending ids under it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let mark = match (check.kind, check.count) {
                (Kind::Invariant, 0) => "ok  ",
                (Kind::Invariant, _) => "FAIL",
                (Kind::Listing, 0) => "none",
                (Kind::Listing, _) => "LIST",
            };
            let _ = writeln!(
                out,
                "{mark} {:<18} {} ({} checked{})",
                check.name,
                check.rule,
                check.scanned,
                match (check.kind, check.count) {
                    (_, 0) => String::new(),
                    (Kind::Invariant, n) => format!(", {n} violations"),
                    (Kind::Listing, n) => format!(", {n} listed"),
                }
            );
            for f in &check.findings {
                let _ = writeln!(out, "       {}: {}", f.id, f.detail);
            }
            if check.count > check.findings.len() as u64 {
                let _ = writeln!(
                    out,
                    "       … and {} more",
                    check.count - check.findings.len() as u64
                );
            }
        }
        let _ = writeln!(
            out,
            "\n{} rows read in {:.2} s ({:.0} rows/s)",
            self.rows,
            self.elapsed.as_secs_f64(),
            self.rows_per_sec()
        );
        if self.holds() {
            let _ = writeln!(out, "audit passed: every invariant holds");
        } else {
            let _ = writeln!(
                out,
                "audit FAILED: {} violations ({})",
                self.violations(),
                self.failed_checks().join(", ")
            );
        }
        out
    }
}
