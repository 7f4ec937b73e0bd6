//! # Blue-green
//!
//! Brings the target revision up at full size beside the active one, verifies it while it
//! takes no traffic, then moves all traffic to it in one atomic route change. The active
//! revision keeps running at full size, untouched: if anything goes wrong later, switching
//! back is instant. Slipway retires it when it is no longer needed for rollback.
//!
//! Costs twice the capacity for the length of the rollout; in exchange users never see a
//! mix of revisions and never see an unverified one.
//!
//! The order is:
//!
//! 1. the `pre` hook;
//! 2. the target is scaled to full size and every replica must become ready;
//! 3. the readiness probe is run afresh on every target instance and must pass on all;
//! 4. if `verify-path` is set, every target instance must answer `GET verify-path` with
//!    `verify-status`;
//! 5. all traffic switches to the target;
//! 6. with `analysis` set, the target's live traffic right after the switch is judged (see
//!    the canary); relative limits compare with the active revision's last window before the
//!    switch. If it fails, traffic switches straight back and the rollout fails;
//! 7. the `post` hook.
//!
//! A failed wait or check fails the rollout before any user reaches the target.
//!
//! On an app's first deploy there is nothing to switch from: the target is scaled to full
//! size and receives all traffic once every replica is ready.
//!
//! ## Parameters
//!
//! | name | default | meaning |
//! |------|---------|---------|
//! | `timeout-seconds` | `600` | How long to wait for every target replica to become ready. |
//! | `verify-path` | none | A path such as `"/healthz"` that every target instance must answer before the switch. No HTTP check without it. |
//! | `verify-status` | `200` | The status `verify-path` must answer with. |
//! | `analysis` | none | Judge the traffic after the switch: `{}` for the defaults, or any of `window-seconds` (30), `min-requests` (100), `max-error-rate` (`"1%"`, or `"+1%"`), `max-p99` (`"250ms"`, or `"+50%"`), `timeout-seconds` (300). See `slipway_sdk::analysis`. |

use serde::Deserialize;
use slipway_sdk::analysis::{Analysis, Baseline};
use slipway_sdk::{
    Error, HookPoint, Outcome, RolloutContext, RouteWeight, Strategy, Window, clock, lifecycle, log, routing, scaling,
    traffic, verify,
};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    timeout_seconds: u32,
    verify_path: Option<String>,
    verify_status: u16,
    analysis: Option<Analysis>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            timeout_seconds: 600,
            verify_path: None,
            verify_status: 200,
            analysis: None,
        }
    }
}

impl Params {
    fn validate(self) -> Result<Self, Error> {
        let invalid = |message: String| Err(Error::Invalid(format!("strategy parameters: {message}")));
        if self.timeout_seconds == 0 {
            return invalid("timeout-seconds must be at least 1".into());
        }
        if let Some(path) = &self.verify_path
            && !path.starts_with('/')
        {
            return invalid(format!("verify-path {path:?} must start with '/', as in \"/healthz\""));
        }
        if let Some(Err(message)) = self.analysis.as_ref().map(Analysis::check) {
            return invalid(message);
        }
        if !(100..=599).contains(&self.verify_status) {
            return invalid(format!(
                "verify-status {} is not an HTTP status; use one from 100 to 599, such as 200",
                self.verify_status
            ));
        }
        Ok(self)
    }
}

struct BlueGreen;

impl Strategy for BlueGreen {
    fn validate(params: &str) -> Result<(), String> {
        let params = slipway_sdk::parse_params::<Params>(params).and_then(Params::validate);
        params.map(drop).map_err(|e| slipway_sdk::describe(&e))
    }

    fn run(ctx: RolloutContext) -> Result<Outcome, Error> {
        let params = slipway_sdk::params::<Params>(&ctx)?.validate()?;
        let target = ctx.target;
        let (new, replicas) = (target.number, target.replicas);

        lifecycle::run_hook(HookPoint::Pre)?;
        let active = ctx.active.filter(|active| active.number != new);
        match active {
            None => log::info(&format!("first deploy: scaling revision {new} to {replicas}")),
            Some(active) => log::info(&format!(
                "blue-green: starting revision {new} at {replicas} replicas beside revision {}{}",
                active.number,
                if ctx.resumed { " (resumed)" } else { "" }
            )),
        }
        // Idempotent, so a resumed rollout simply runs it again.
        if scaling::counts(new)?.desired != replicas {
            scaling::scale(new, replicas)?;
        }
        lifecycle::progress(10, &format!("starting {replicas} replicas of revision {new}"));
        let counts = verify::wait_ready(new, replicas, params.timeout_seconds)?;

        if let Some(active) = active {
            lifecycle::progress(50, &format!("verifying revision {new}"));
            verify::revision(
                new,
                replicas,
                params.verify_path.as_deref().map(|path| (path, params.verify_status)),
            )?;
            log::info(&format!(
                "revision {new} verified: switching all traffic from revision {}",
                active.number
            ));
        }
        // What the active revision served just before the switch, for relative limits.
        let before = match (active, &params.analysis) {
            (Some(active), Some(analysis)) => Some(traffic::stats(
                active.number,
                Window::LastMs(u64::from(analysis.window_seconds) * 1000),
            )?),
            _ => None,
        };
        routing::set_weights(&[RouteWeight {
            revision: new,
            weight: 256,
        }])?;
        let switched = clock::now();
        let mut verdict = None;
        if let (Some(active), Some(analysis)) = (active, &params.analysis) {
            lifecycle::progress(90, &format!("all traffic on revision {new}: analysing it"));
            clock::sleep(u64::from(analysis.window_seconds) * 1000)?;
            let baseline = before.map_or(Baseline::None, Baseline::Measured);
            match analysis.run(new, switched, baseline) {
                Ok(line) => verdict = Some(line),
                Err(error) => {
                    log::warn(&format!("switching all traffic back to revision {}", active.number));
                    routing::set_weights(&[RouteWeight {
                        revision: active.number,
                        weight: 256,
                    }])?;
                    return Err(match error {
                        Error::VerificationFailed(line) => {
                            Error::VerificationFailed(format!("analysis after the switch: {line}"))
                        }
                        other => other,
                    });
                }
            }
        }
        lifecycle::progress(100, &format!("all traffic on revision {new}"));
        lifecycle::run_hook(HookPoint::Post)?;

        let mut summary = format!(
            "{} of {replicas} replicas on revision {new}",
            counts.ready.min(replicas)
        );
        if let Some(active) = active {
            summary.push_str(&format!("; revision {} kept for rollback", active.number));
        }
        if let Some(line) = verdict {
            summary.push_str(&format!("; analysis: {line}"));
        }
        Ok(Outcome { summary })
    }
}

slipway_sdk::export_strategy!(BlueGreen);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Params, Error> {
        slipway_sdk::params::<Params>(&RolloutContext {
            app: "shop".into(),
            rollout: "r-1".into(),
            target: slipway_sdk::Revision { number: 2, replicas: 3 },
            active: None,
            others: Vec::new(),
            params: json.into(),
            resumed: false,
        })?
        .validate()
    }

    fn invalid(json: &str) -> String {
        match parse(json) {
            Err(Error::Invalid(message)) => message,
            other => panic!("{json} gave {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let p = parse("{}").unwrap();
        assert_eq!((p.timeout_seconds, p.verify_path, p.verify_status), (600, None, 200));
        let p = parse(r#"{"verify-path": "/healthz", "verify-status": 204}"#).unwrap();
        assert_eq!((p.verify_path.as_deref(), p.verify_status), (Some("/healthz"), 204));
    }

    #[test]
    fn rejects_bad_params() {
        assert!(invalid(r#"{"verify_path": "/x"}"#).contains("unknown field `verify_path`"));
        assert!(invalid(r#"{"verify-path": "healthz"}"#).contains("must start with '/'"));
        assert!(invalid(r#"{"verify-status": 42}"#).contains("from 100 to 599"));
        assert!(invalid(r#"{"timeout-seconds": 0}"#).contains("at least 1"));
    }
}
