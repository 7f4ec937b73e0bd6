//! # Canary
//!
//! Moves traffic to the target revision in steps, checking it at each one while the active
//! revision still carries the rest, like Webscale managed deployments and Argo Rollouts'
//! canary. A bad revision reaches only a slice of users before the rollout fails and
//! Slipway rolls back.
//!
//! For each step `p` (a percentage of traffic):
//!
//! 1. the target is scaled to `p`% of its replicas (rounded up, at least 1) and they must
//!    become ready;
//! 2. the target gets `p`% of the route's weight, the active revision the rest;
//! 3. unless `p` is 100: the strategy pauses for `pause-seconds` while real traffic reaches
//!    the target, then verifies it: the readiness probe must pass on every target instance
//!    and, if `verify-path` is set, every instance must answer it with `verify-status`;
//! 4. with `analysis` set, the target's live traffic since its weight was set is judged, as
//!    the router saw it: enough requests (it waits for them), an error rate and optionally a
//!    p99 within their limits, absolute or relative to the active revision over the same
//!    window. A step that fails its analysis fails the rollout, and Slipway rolls back.
//!
//! The last step is always 100: the target runs at full size and takes all traffic. The
//! active revision keeps running at full size throughout, so each step can fall back at
//! once; Slipway retires it when it is no longer needed for rollback. The `pre` hook runs
//! first, the `post` hook once the target has all traffic.
//!
//! On an app's first deploy there is no one to compare with: the target is scaled to full
//! size and receives all traffic once every replica is ready.
//!
//! ## Parameters
//!
//! | name | default | meaning |
//! |------|---------|---------|
//! | `steps` | `[10, 50, 100]` | Traffic percentages, strictly ascending, each from 1 to 100. A final 100 is added if missing. |
//! | `pause-seconds` | `10` | How long each step below 100 runs before the target is verified. |
//! | `timeout-seconds` | `600` | How long to wait for a step's replicas to become ready. |
//! | `verify-path` | none | A path such as `"/healthz"` every target instance must answer at each step. No HTTP check without it. |
//! | `verify-status` | `200` | The status `verify-path` must answer with. |
//! | `analysis` | none | Judge each step's live traffic: `{}` for the defaults, or any of `window-seconds` (30; the pause is at least this long), `min-requests` (100), `max-error-rate` (`"1%"`, or `"+1%"` relative to the active revision), `max-p99` (`"250ms"`, or `"+50%"`), `timeout-seconds` (300, to wait for enough requests). See `slipway_sdk::analysis`. |

use serde::Deserialize;
use slipway_sdk::analysis::{Analysis, Baseline};
use slipway_sdk::{
    Error, HookPoint, Outcome, RolloutContext, RouteWeight, Strategy, clock, lifecycle, log, routing, scaling, verify,
};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    steps: Vec<u32>,
    pause_seconds: u32,
    timeout_seconds: u32,
    verify_path: Option<String>,
    verify_status: u16,
    analysis: Option<Analysis>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            steps: vec![10, 50, 100],
            pause_seconds: 10,
            timeout_seconds: 600,
            verify_path: None,
            verify_status: 200,
            analysis: None,
        }
    }
}

impl Params {
    /// Checks the values and completes `steps` with the final 100.
    fn validate(mut self) -> Result<Self, Error> {
        let invalid = |message: String| Err(Error::Invalid(format!("strategy parameters: {message}")));
        if self.steps.is_empty() {
            return invalid("steps is empty; list traffic percentages such as [10, 50, 100]".into());
        }
        if let Some(&bad) = self.steps.iter().find(|&&p| !(1..=100).contains(&p)) {
            return invalid(format!(
                "step {bad} in steps {:?} is not a percentage from 1 to 100",
                self.steps
            ));
        }
        if let Some(pair) = self.steps.windows(2).find(|pair| pair[0] >= pair[1]) {
            return invalid(format!(
                "steps {:?} must be strictly ascending, but {} is followed by {}",
                self.steps, pair[0], pair[1]
            ));
        }
        if self.steps.last() != Some(&100) {
            self.steps.push(100);
        }
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

/// How many target replicas serve step `percent`: enough for its share, and at least one.
fn step_replicas(replicas: u32, percent: u32) -> u32 {
    let scaled = (u64::from(replicas) * u64::from(percent)).div_ceil(100);
    u32::try_from(scaled).unwrap_or(u32::MAX).max(1)
}

/// The target's route weight at step `percent`, out of 256.
fn step_weight(percent: u32) -> u32 {
    ((256 * percent + 50) / 100).clamp(1, 256)
}

/// The step to carry on from, given the target's current share of the route (out of 256):
/// the last step whose share is already in place. That step runs again (its scaling and
/// routing change nothing; its pause and checks are repeated, as they may not have
/// finished), so a restarted rollout neither pulls traffic back nor skips a check.
fn resume_from(steps: &[u32], share: u32) -> usize {
    steps.iter().rposition(|&p| step_weight(p) <= share).unwrap_or(0)
}

/// The target's share of the route now, scaled to 256.
fn current_share(weights: &[RouteWeight], new: u32) -> u32 {
    let total: u64 = weights.iter().map(|w| u64::from(w.weight)).sum();
    let own: u64 = weights
        .iter()
        .filter(|w| w.revision == new)
        .map(|w| u64::from(w.weight))
        .sum();
    (own * 256).checked_div(total).map_or(0, |share| share as u32)
}

struct Canary;

impl Strategy for Canary {
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
        let mut analysed = None;
        let counts = match active {
            Some(active) if replicas > 0 => {
                analysed = canary(active.number, new, replicas, &params, ctx.resumed)?;
                scaling::counts(new)?
            }
            _ => {
                if active.is_some() {
                    log::info(&format!("revision {new} has no replicas: nothing to canary"));
                } else {
                    log::info(&format!("first deploy: scaling revision {new} to {replicas}"));
                }
                scaling::scale(new, replicas)?;
                let counts = verify::wait_ready(new, replicas, params.timeout_seconds)?;
                routing::set_weights(&[RouteWeight {
                    revision: new,
                    weight: 256,
                }])?;
                lifecycle::progress(100, &format!("all traffic on revision {new}"));
                counts
            }
        };
        lifecycle::run_hook(HookPoint::Post)?;

        let mut summary = format!(
            "{} of {replicas} replicas on revision {new}",
            counts.ready.min(replicas)
        );
        if let Some(active) = active {
            summary.push_str(&format!("; revision {} kept for rollback", active.number));
        }
        if let Some(line) = analysed {
            summary.push_str(&format!("; last analysis: {line}"));
        }
        Ok(Outcome { summary })
    }
}

slipway_sdk::export_strategy!(Canary);

/// Runs the steps; returns the last analysis' verdict, if there was one.
fn canary(old: u32, new: u32, replicas: u32, params: &Params, resumed: bool) -> Result<Option<String>, Error> {
    let first = resume_from(&params.steps, current_share(&routing::weights(), new));
    log::info(&format!(
        "canary from revision {old} to {new} in steps {:?}{}",
        params.steps,
        if resumed {
            format!(" (resumed at {}%)", params.steps[first])
        } else {
            String::new()
        }
    ));
    let mut verdict = None;
    for &percent in &params.steps[first..] {
        let want = step_replicas(replicas, percent);
        // Never scale the target down: a resumed rollout may already be further along.
        if scaling::counts(new)?.desired < want {
            log::info(&format!("step {percent}%: scaling revision {new} to {want}"));
            scaling::scale(new, want)?;
        }
        verify::wait_ready(new, want, params.timeout_seconds)?;

        let weights = if percent == 100 {
            vec![RouteWeight {
                revision: new,
                weight: 256,
            }]
        } else {
            let weight = step_weight(percent);
            vec![
                RouteWeight {
                    revision: old,
                    weight: 256 - weight,
                },
                RouteWeight { revision: new, weight },
            ]
        };
        routing::set_weights(&weights)?;
        let weights_set = clock::now();
        lifecycle::progress(
            percent as u8,
            &format!("{percent}% of traffic on revision {new} ({want} of {replicas} replicas)"),
        );
        if percent == 100 {
            break;
        }

        let pause = match &params.analysis {
            Some(analysis) => params.pause_seconds.max(analysis.window_seconds),
            None => params.pause_seconds,
        };
        clock::sleep(u64::from(pause) * 1000)?;
        verify::revision(
            new,
            want,
            params.verify_path.as_deref().map(|path| (path, params.verify_status)),
        )?;
        if let Some(analysis) = &params.analysis {
            let line = analysis
                .run(new, weights_set, Baseline::SameWindow(old))
                .map_err(|error| match error {
                    Error::VerificationFailed(line) => {
                        Error::VerificationFailed(format!("analysis at step {percent}%: {line}"))
                    }
                    other => other,
                })?;
            verdict = Some(line);
        }
        log::info(&format!("step {percent}%: revision {new} verified"));
    }
    Ok(verdict)
}

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
        assert_eq!(p.steps, [10, 50, 100]);
        assert_eq!((p.pause_seconds, p.timeout_seconds, p.verify_status), (10, 600, 200));
        assert_eq!(p.verify_path, None);
    }

    #[test]
    fn appends_the_final_step() {
        assert_eq!(parse(r#"{"steps": [5, 25]}"#).unwrap().steps, [5, 25, 100]);
        assert_eq!(parse(r#"{"steps": [100]}"#).unwrap().steps, [100]);
    }

    #[test]
    fn rejects_bad_params() {
        assert!(invalid(r#"{"steps": [50, 10]}"#).contains("strictly ascending, but 50 is followed by 10"));
        assert!(invalid(r#"{"steps": [10, 10]}"#).contains("strictly ascending"));
        assert!(invalid(r#"{"steps": [0, 50]}"#).contains("step 0 in steps [0, 50] is not a percentage"));
        assert!(invalid(r#"{"steps": [150]}"#).contains("from 1 to 100"));
        assert!(invalid(r#"{"steps": []}"#).contains("steps is empty"));
        assert!(invalid(r#"{"steps": "10,50"}"#).contains("expected a sequence"));
        assert!(invalid(r#"{"pause": 5}"#).contains("unknown field `pause`"));
        assert!(invalid(r#"{"verify-path": "healthz"}"#).contains("must start with '/'"));
        assert!(invalid(r#"{"verify-status": 1000}"#).contains("from 100 to 599"));
    }

    #[test]
    fn replicas_per_step_round_up_to_at_least_one() {
        assert_eq!(step_replicas(10, 10), 1);
        assert_eq!(step_replicas(10, 50), 5);
        assert_eq!(step_replicas(3, 10), 1);
        assert_eq!(step_replicas(3, 50), 2);
        assert_eq!(step_replicas(3, 100), 3);
        assert_eq!(step_replicas(1, 1), 1);
    }

    #[test]
    fn weights_per_step() {
        assert_eq!(step_weight(10), 26);
        assert_eq!(step_weight(50), 128);
        assert_eq!(step_weight(99), 253);
        assert_eq!(step_weight(1), 3);
        assert_eq!(step_weight(100), 256);
    }

    #[test]
    fn resumes_at_the_step_in_place() {
        let steps = [10, 50, 100];
        assert_eq!(resume_from(&steps, 0), 0);
        assert_eq!(resume_from(&steps, step_weight(10)), 0);
        assert_eq!(resume_from(&steps, 100), 0);
        assert_eq!(resume_from(&steps, step_weight(50)), 1);
        assert_eq!(resume_from(&steps, 256), 2);
    }

    #[test]
    fn share_is_relative_to_all_weights() {
        let w = |revision, weight| RouteWeight { revision, weight };
        assert_eq!(current_share(&[], 2), 0);
        assert_eq!(current_share(&[w(1, 256)], 2), 0);
        assert_eq!(current_share(&[w(1, 230), w(2, 26)], 2), 26);
        assert_eq!(current_share(&[w(2, 256)], 2), 256);
        // Someone set weights out of 100 instead of 256: still half.
        assert_eq!(current_share(&[w(1, 50), w(2, 50)], 2), 128);
    }
}
