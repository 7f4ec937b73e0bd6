//! {{name}}: a Slipway deployment strategy. It brings the new revision up whole beside the
//! active one, moves all traffic to it once every instance is ready, then retires the
//! active revision. Change `run` to make it yours; `slipway test scenarios.toml` checks it.

use serde::Deserialize;
use slipway_sdk::{Error, Outcome, RolloutContext, RouteWeight, Strategy, log, params, routing, scaling};

/// The spec's `[strategy] params`; an unknown name is refused before anything changes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    #[serde(default = "default_timeout_seconds")]
    timeout_seconds: u64,
}

fn default_timeout_seconds() -> u64 {
    300
}

struct MyStrategy;

impl Strategy for MyStrategy {
    fn run(ctx: RolloutContext) -> Result<Outcome, Error> {
        let p: Params = params(&ctx)?;
        let target = ctx.target;
        scaling::scale(target.number, target.replicas)?;
        // A timeout comes back as an error: returning it fails the rollout, and Slipway
        // rolls back.
        let counts = scaling::wait_ready(target.number, target.replicas, p.timeout_seconds.saturating_mul(1000))?;
        log::info(&format!("{} of {} ready on revision {}", counts.ready, target.replicas, target.number));
        routing::set_weights(&[RouteWeight {
            revision: target.number,
            weight: 256,
        }])?;
        if let Some(active) = ctx.active.filter(|active| active.number != target.number) {
            scaling::scale(active.number, 0)?;
        }
        Ok(Outcome {
            summary: format!("{} replicas on revision {}", target.replicas, target.number),
        })
    }
}

slipway_sdk::export_strategy!(MyStrategy);
