//! Example custom strategy: moves the app from the active revision to the target in waves
//! of a fixed number of replicas.
//!
//! Each wave scales the target up by `wave-size`, waits for the new instances to be ready,
//! splits traffic in proportion to the ready instances that stay, and scales the active
//! revision down by the same amount. The last step sends all traffic to the target. The
//! app's `pre` and `post` hooks run before the first wave and after the last.
//!
//! Parameters (the spec's strategy `params`):
//!
//! - `wave-size`: replicas per wave, at least 1 (default 1).
//! - `timeout-seconds`: how long each wave may wait for its instances to be ready (default 120).
//!
//! Build it (from the workspace root):
//!
//! ```sh
//! cargo build --target wasm32-wasip2 --release -p example-strategy-waves
//! ```
//!
//! Try it against the simulator:
//!
//! ```sh
//! slipway simulate --strategy target/wasm32-wasip2/release/example_strategy_waves.wasm --replicas 6
//! ```

use serde::Deserialize;
use slipway_sdk::{
    Error, HookPoint, HookStatus, Outcome, RolloutContext, RouteWeight, Strategy, lifecycle, log, params, routing,
    scaling, split_weights,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    #[serde(default = "default_wave_size")]
    wave_size: u32,
    #[serde(default = "default_timeout_seconds")]
    timeout_seconds: u64,
}

fn default_wave_size() -> u32 {
    1
}

fn default_timeout_seconds() -> u64 {
    120
}

struct Waves;

impl Strategy for Waves {
    fn run(ctx: RolloutContext) -> Result<Outcome, Error> {
        let p: Params = params(&ctx)?;
        if p.wave_size == 0 {
            return Err(Error::Invalid(
                "strategy parameters: wave-size must be at least 1".into(),
            ));
        }
        let timeout_ms = p.timeout_seconds.saturating_mul(1000);
        let target = ctx.target;
        // On a redeploy of the serving revision there is nothing to move away from.
        let active = ctx.active.filter(|a| a.number != target.number);

        hook(HookPoint::Pre)?;

        // Start from what the host observes, so that a resumed rollout carries on where it was.
        let mut target_up = scaling::counts(target.number)?.desired.min(target.replicas);
        let mut active_left = match active {
            Some(a) => scaling::counts(a.number)?.desired,
            None => 0,
        };

        let mut wave = 0;
        while target_up < target.replicas {
            wave += 1;
            let step = p.wave_size.min(target.replicas - target_up);
            target_up += step;
            lifecycle::progress(
                percent(target_up - step, target.replicas),
                &format!("wave {wave}: scaling revision {} to {target_up}", target.number),
            );

            scaling::scale(target.number, target_up)?;
            let ready = scaling::wait_ready(target.number, target_up, timeout_ms)?.ready;

            // Traffic follows the ready instances that remain after this wave, so no weight
            // points at instances that are about to be drained.
            let mut shares = vec![(target.number, ready)];
            if let Some(a) = active {
                active_left = active_left.saturating_sub(step);
                let active_ready = scaling::counts(a.number)?.ready.min(active_left);
                shares.push((a.number, active_ready));
            }
            let weights = split_weights(&shares);
            routing::set_weights(&weights)?;
            log::info(&format!(
                "wave {wave}: {ready} ready on revision {}, weights {}",
                target.number,
                describe(&weights)
            ));

            if let Some(a) = active {
                scaling::scale(a.number, active_left)?;
            }
        }

        routing::set_weights(&[RouteWeight {
            revision: target.number,
            weight: 256,
        }])?;
        if let Some(a) = active.filter(|_| active_left > 0) {
            // The active revision had more replicas than the target: retire the rest.
            scaling::scale(a.number, 0)?;
        }
        lifecycle::progress(100, &format!("revision {} serves all traffic", target.number));

        hook(HookPoint::Post)?;

        Ok(Outcome {
            summary: format!(
                "{} of {} replicas on revision {} in {wave} wave(s) of up to {}",
                target.replicas, target.replicas, target.number, p.wave_size
            ),
        })
    }
}

/// Runs the app's hook at `point`; its failure policy decides whether an error comes back.
fn hook(point: HookPoint) -> Result<(), Error> {
    let name = match point {
        HookPoint::Pre => "pre",
        HookPoint::Mid => "mid",
        HookPoint::Post => "post",
        HookPoint::Rollback => "rollback",
    };
    match lifecycle::run_hook(point)? {
        HookStatus::NotConfigured => {}
        HookStatus::Succeeded => log::info(&format!("{name} hook succeeded")),
        HookStatus::FailureIgnored => log::warn(&format!("{name} hook failed; its policy ignores that")),
    }
    Ok(())
}

fn percent(done: u32, total: u32) -> u8 {
    if total == 0 {
        100
    } else {
        (u64::from(done) * 100 / u64::from(total)).min(100) as u8
    }
}

fn describe(weights: &[RouteWeight]) -> String {
    weights
        .iter()
        .map(|w| format!("r{}={}", w.revision, w.weight))
        .collect::<Vec<_>>()
        .join(" ")
}

slipway_sdk::export_strategy!(Waves);
