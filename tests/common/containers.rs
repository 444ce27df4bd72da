//! Behind the `testcontainers` feature: MySQL 8 and Redis in containers, for machines with
//! a Docker engine. Enabled at run time by `ORDERFLOW_TESTCONTAINERS=1`; the containers live
//! for the whole test process.

use std::sync::OnceLock;

use testcontainers_modules::{
    mysql::Mysql,
    redis::Redis,
    testcontainers::{runners::SyncRunner, Container},
};

struct Started {
    _mysql: Container<Mysql>,
    _redis: Container<Redis>,
    mysql_url: String,
    redis_url: String,
}

fn started() -> Option<&'static Started> {
    static STARTED: OnceLock<Option<Started>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            if std::env::var("ORDERFLOW_TESTCONTAINERS").ok().as_deref() != Some("1") {
                return None;
            }
            // The blocking runner owns a runtime; keep it off the test's async runtime.
            let (mysql, redis) = std::thread::spawn(|| {
                (
                    Mysql::default().start().expect("start MySQL container"),
                    Redis::default().start().expect("start Redis container"),
                )
            })
            .join()
            .expect("containers start");
            let mysql_url = format!(
                "mysql://root@{}:{}",
                mysql.get_host().expect("host"),
                mysql.get_host_port_ipv4(3306).expect("port")
            );
            let redis_url = format!(
                "redis://{}:{}",
                redis.get_host().expect("host"),
                redis.get_host_port_ipv4(6379).expect("port")
            );
            Some(Started {
                _mysql: mysql,
                _redis: redis,
                mysql_url,
                redis_url,
            })
        })
        .as_ref()
}

pub fn mysql_url() -> Option<String> {
    started().map(|s| s.mysql_url.clone())
}

pub fn redis_url() -> Option<String> {
    started().map(|s| s.redis_url.clone())
}
