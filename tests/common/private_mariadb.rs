//! A MariaDB server of one test's own, for faults that stall a whole server: a global read
//! lock (`FLUSH TABLES WITH READ LOCK`) on the shared server would stall every other test
//! running beside it. It takes a few seconds to start: a data directory made by
//! `mariadb-install-db`, then `mariadbd` on a free port, stopped and removed on drop.
//!
//! The binaries come from `TEST_MARIADB_INSTALL_DB` and `TEST_MARIADBD`, else the Debian
//! package's paths (the machines the suite runs on have MariaDB installed).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct PrivateMariaDb {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn binary(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl PrivateMariaDb {
    pub async fn start() -> Self {
        let install = binary("TEST_MARIADB_INSTALL_DB", "/usr/bin/mariadb-install-db");
        let server = binary("TEST_MARIADBD", "/usr/sbin/mariadbd");
        let dir = std::env::temp_dir().join(format!(
            "orderflow-mariadb-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("data directory");
        let data = dir.join("data");
        let status = Command::new(&install)
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg("--auth-root-authentication-method=normal")
            .arg(format!("--datadir={}", data.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{install} (a private MariaDB for this test): {e}"));
        assert!(status.success(), "{install} failed: {status}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new(&server)
            .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"])
            .args(["--skip-name-resolve", "--skip-log-bin"])
            .arg("--innodb-buffer-pool-size=64M")
            .arg(format!("--port={port}"))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            // Its own temporary files: the shared server's are in /tmp.
            .arg(format!("--tmpdir={}", dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{server}: {e}"));
        let db = Self { child, dir, port };
        let url = db.server_url();
        for _ in 0..300 {
            if let Ok(pool) = sqlx::MySqlPool::connect(&url).await {
                pool.close().await;
                return db;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the private MariaDB on port {port} did not start");
    }

    /// The server, with no database selected.
    pub fn server_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/mysql", self.port)
    }

    /// A database on this server (the service creates it at start).
    pub fn database_url(&self, name: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{name}", self.port)
    }
}
