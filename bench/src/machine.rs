//! What the numbers were measured on, and per-process readings from /proc: memory of the
//! service (VmRSS, VmHWM) and CPU time of the service, the database server and the bench
//! itself, so a report can say where the cores went.

use std::time::Instant;

use serde::Serialize;

use crate::stats::round;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub date: String,
    pub nproc: usize,
    pub memory_mib: u64,
    pub cpu_model: String,
    pub kernel: String,
    pub database_server: String,
    /// 1-minute load average when the run started: other work on the machine skews results.
    pub loadavg_at_start: f64,
}

impl Machine {
    pub fn read(database_server: String) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: field_kib(&meminfo, "MemTotal").unwrap_or(0) / 1024,
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            database_server,
            loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0),
        }
    }
}

/// A `Name:   123 kB` line of /proc/<pid>/status or /proc/meminfo.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A field of /proc/<pid>/status in KiB (VmRSS: now; VmHWM: the peak so far).
pub fn status_kib(pid: u32, name: &str) -> Option<u64> {
    field_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        name,
    )
}

/// User + system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields after it are space-separated.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Linux reports CPU time in USER_HZ, 100 on every architecture the bench runs on.
pub const TICKS_PER_SEC: f64 = 100.0;

/// The local MariaDB/MySQL server process, if it runs on this machine.
pub fn database_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        matches!(comm.trim(), "mariadbd" | "mysqld").then_some(pid)
    })
}

/// CPU used between `start` and `stop`, in cores (1.0 = one core busy the whole time).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    pub service_cores: Option<f64>,
    pub database_cores: Option<f64>,
    pub bench_cores: Option<f64>,
}

pub struct CpuMeter {
    pids: [Option<u32>; 3],
    ticks: [Option<u64>; 3],
    at: Instant,
}

impl CpuMeter {
    pub fn start(service_pid: Option<u32>) -> Self {
        let pids = [service_pid, database_pid(), Some(std::process::id())];
        Self {
            ticks: pids.map(|p| p.and_then(cpu_ticks)),
            pids,
            at: Instant::now(),
        }
    }

    pub fn stop(&self) -> CpuUse {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let cores = |i: usize| {
            let before = self.ticks[i]?;
            let after = cpu_ticks(self.pids[i]?)?;
            Some(round(
                after.saturating_sub(before) as f64 / TICKS_PER_SEC / secs,
                2,
            ))
        };
        CpuUse {
            service_cores: cores(0),
            database_cores: cores(1),
            bench_cores: cores(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        assert!(status_kib(std::process::id(), "VmRSS").unwrap() > 0);
        assert!(cpu_ticks(std::process::id()).is_some());
        assert_eq!(field_kib("VmHWM:\t  2048 kB\n", "VmHWM"), Some(2048));
    }
}

/// Statements and commits the database server ran during a run (`SHOW GLOBAL STATUS`),
/// whoever sent them: the service's requests and its workers, or the ceiling's connections.
/// Divided by the orders of the run, they say what one order costs the database. The server
/// is shared with anything else running on it, so this is exact only on a quiet server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DbWork {
    pub statements_per_order: Option<f64>,
    pub commits_per_order: Option<f64>,
}

pub struct DbMeter {
    before: Option<(u64, u64)>,
}

async fn db_counters(pool: &sqlx::MySqlPool) -> Option<(u64, u64)> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_commit')")
            .fetch_all(pool)
            .await
            .ok()?;
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    Some((get("Questions")?, get("Com_commit")?))
}

impl DbMeter {
    pub async fn start(pool: &sqlx::MySqlPool) -> Self {
        Self {
            before: db_counters(pool).await,
        }
    }

    pub async fn stop(&self, pool: &sqlx::MySqlPool, orders: u64) -> DbWork {
        let (Some((q0, c0)), Some((q1, c1))) = (self.before, db_counters(pool).await) else {
            return DbWork::default();
        };
        let per = |n: u64| (orders > 0).then(|| round(n as f64 / orders as f64, 2));
        DbWork {
            statements_per_order: per(q1.saturating_sub(q0)),
            commits_per_order: per(c1.saturating_sub(c0)),
        }
    }
}
