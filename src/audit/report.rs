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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &'static str, kind: Kind, findings: u64) -> Check {
        let mut c = Check::new(name, kind, "a rule");
        c.scanned = 10;
        for i in 0..findings {
            c.found(format!("order {i}"), "broken".into());
        }
        c
    }

    fn report(checks: Vec<Check>) -> Report {
        Report {
            checks,
            rows: 300,
            elapsed: Duration::from_millis(1500),
        }
    }

    #[test]
    fn every_finding_is_counted_and_the_first_ones_kept() {
        let c = check("many", Kind::Invariant, KEPT as u64 + 3);
        assert_eq!(c.count, KEPT as u64 + 3);
        assert_eq!(c.findings.len(), KEPT);
        assert_eq!(c.findings[KEPT - 1].id, format!("order {}", KEPT - 1));
        let one = check("one", Kind::Invariant, 1);
        assert_eq!((one.count, one.findings.len()), (1, 1));
    }

    #[test]
    fn an_invariant_fails_on_a_finding_and_a_listing_never_does() {
        assert!(check("clean", Kind::Invariant, 0).holds());
        assert!(!check("broken", Kind::Invariant, 1).holds());
        assert!(check("listed", Kind::Listing, 4).holds());
        assert!(check("empty list", Kind::Listing, 0).holds());

        let passing = report(vec![
            check("clean", Kind::Invariant, 0),
            check("listed", Kind::Listing, 4),
        ]);
        assert!(passing.holds());
        assert_eq!(passing.violations(), 0, "listings are not violations");
        assert!(passing.failed_checks().is_empty());

        let failing = report(vec![
            check("clean", Kind::Invariant, 0),
            check("stock", Kind::Invariant, 2),
            check("listed", Kind::Listing, 4),
            check("totals", Kind::Invariant, 3),
        ]);
        assert!(!failing.holds());
        assert_eq!(failing.violations(), 5);
        assert_eq!(failing.failed_checks(), ["stock", "totals"]);
    }

    #[test]
    fn the_rate_is_rows_over_seconds() {
        assert_eq!(report(Vec::new()).rows_per_sec(), 200.0);
        let instant = Report {
            checks: Vec::new(),
            rows: 5,
            elapsed: Duration::ZERO,
        };
        assert!(instant.rows_per_sec().is_finite());
    }

    #[test]
    fn the_rendered_report_marks_each_check_and_its_verdict() {
        let failing = report(vec![
            check("clean", Kind::Invariant, 0),
            check("stock", Kind::Invariant, KEPT as u64 + 2),
            check("dead", Kind::Listing, 1),
            check("quiet", Kind::Listing, 0),
        ]);
        let text = failing.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ok   clean "), "{text}");
        assert!(lines[0].ends_with("a rule (10 checked)"), "{text}");
        assert!(lines[1].starts_with("FAIL stock "), "{text}");
        assert!(
            lines[1].ends_with(&format!("(10 checked, {} violations)", KEPT + 2)),
            "{text}"
        );
        assert_eq!(lines[2], "       order 0: broken");
        assert!(text.contains("       … and 2 more\n"), "{text}");
        assert!(text.contains("LIST dead "), "{text}");
        assert!(text.contains("(10 checked, 1 listed)"), "{text}");
        assert!(!text.contains("… and 0 more"), "{text}");
        assert!(text.contains("none quiet "), "{text}");
        assert!(
            text.contains("\n300 rows read in 1.50 s (200 rows/s)\n"),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("audit FAILED: {} violations (stock)\n", KEPT + 2)),
            "{text}"
        );
        let passing = report(vec![check("clean", Kind::Invariant, 0)]).render();
        assert!(
            passing.ends_with("audit passed: every invariant holds\n"),
            "{passing}"
        );
    }

    #[test]
    fn the_elapsed_time_serializes_as_seconds() {
        let json = serde_json::to_value(report(Vec::new())).unwrap();
        assert_eq!(json["elapsed"], 1.5);
        assert_eq!(json["rows"], 300);
    }
}
