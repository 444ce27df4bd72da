//! replay: retries of keys whose first request already committed, with the same body. The
//! service answers from the stored response (one indexed read, no transaction), so this is
//! what a retry storm costs; each answer must be 201, marked `Idempotent-Replayed: true`,
//! with the first response's body byte for byte.

use std::{sync::Arc, time::Duration};

use serde::Serialize;

use super::{Ctx, Settled};
use crate::{
    load::{self, Spec},
    machine::{CpuMeter, CpuUse},
    stats::{round, Outcome, Summary},
};

#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    pub concurrency: usize,
    /// Distinct settled keys cycled through.
    pub keys: usize,
    #[serde(flatten)]
    pub summary: Summary,
    /// Replays per second ÷ new orders per second in spread.
    pub vs_create_rate: Option<f64>,
    pub cpu: CpuUse,
}

pub async fn run(
    ctx: &Ctx,
    settled: Vec<Settled>,
    concurrency: usize,
    duration: Duration,
    create_rate: Option<f64>,
) -> anyhow::Result<ReplayResult> {
    anyhow::ensure!(
        !settled.is_empty(),
        "replay needs committed keys, and spread committed none"
    );
    let keys = settled.len();
    let settled = Arc::new(settled);
    let api = ctx.api.clone();
    let users = ctx.users.clone();
    let cpu = CpuMeter::start(Some(ctx.service_pid));
    let (rec, elapsed) = load::run(Spec::closed(concurrency, duration), move |slot| {
        let api = api.clone();
        let users = users.clone();
        let settled = settled.clone();
        async move {
            let s = &settled[(slot.seq % settled.len() as u64) as usize];
            match api
                .create_order(&users[s.user].token, &s.key, &s.body)
                .await
            {
                Ok(a) if a.status == 201 && a.replayed && a.body == s.response => Outcome::Ok,
                Ok(a) if a.status == 201 && !a.replayed => {
                    Outcome::Wrong("a retry was not marked Idempotent-Replayed".into())
                }
                Ok(a) if a.status == 201 => {
                    Outcome::Wrong("a replay differs from the first response".into())
                }
                Ok(a) => a.outcome(),
                Err(e) => Outcome::Transport(e.to_string()),
            }
        }
    })
    .await;
    let summary = rec.summary(elapsed, &[]);
    Ok(ReplayResult {
        concurrency,
        keys,
        vs_create_rate: create_rate
            .filter(|r| *r > 0.0)
            .map(|r| round(summary.ok_per_sec / r, 2)),
        summary,
        cpu: cpu.stop(),
    })
}
