//! A tansu broker (a separate process speaking the Kafka protocol, as in CI) of the test's
//! own, reached only through a [`FaultProxy`]: the proxy's address is the broker's
//! *advertised* address, so the metadata answers send every client connection, not only the
//! bootstrap one, through the proxy, and cutting the proxy cuts the broker off entirely.
//!
//! The binary is `TEST_TANSU_BIN`, default `$HOME/.cache/orderflow-tools/bin/tansu` (where
//! `.ci/run` builds it). A test that needs one fails with how to get it when it is missing:
//! the point of these tests is the real process, which the embedded broker cannot stand for.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::proxy::FaultProxy;

pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("TEST_TANSU_BIN").filter(|b| !b.is_empty()) {
        return bin.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/orderflow-tools/bin/tansu")
}

pub struct ProxiedBroker {
    pub proxy: FaultProxy,
    /// Where tansu itself listens (only the proxy connects there).
    pub listener: SocketAddr,
    process: Child,
    pub log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl ProxiedBroker {
    /// Starts the proxy, then tansu listening on a free port and advertising the proxy;
    /// returns once tansu accepts connections.
    pub async fn start() -> Self {
        let bin = binary();
        let listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proxy = FaultProxy::start(listener).await;
        let log = std::env::temp_dir().join(format!(
            "orderflow-tansu-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let out = std::fs::File::create(&log).expect("tansu log file");
        let process = Command::new(&bin)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://{listener}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{}", proxy.addr))
            .arg("--storage-engine")
            .arg(format!("memory://tansu-{}/", listener.port()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu at {} ({e}): this test runs a real Kafka-protocol broker. \
                     Set TEST_TANSU_BIN, or build it as .ci/run does: cargo install tansu \
                     --version 0.6.0 --locked --features dynostore --root ~/.cache/orderflow-tools",
                    bin.display()
                )
            });
        let broker = Self {
            proxy,
            listener,
            process,
            log,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(listener).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not listen on {listener} within 30 s; its log: {}",
                broker.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        broker
    }

    /// The bootstrap address clients are given: the proxy.
    pub fn bootstrap(&self) -> String {
        self.proxy.addr.to_string()
    }
}

impl Drop for ProxiedBroker {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if std::thread::panicking() {
            eprintln!("tansu's log is kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
