//! # Rolling
//!
//! Replaces the active revision's instances with the target's a few at a time, the way a
//! Kubernetes Deployment or an OpenShift DeploymentConfig with the `Rolling` strategy does.
//! New instances are started while old ones keep serving; an old instance is stopped only
//! once enough new ones are ready to take its place. Traffic follows readiness: each
//! revision gets a share of the route in proportion to its ready instances.
//!
//! Two bounds, resolved against the target's replica count `R`, shape every wave:
//!
//! * at most `R + max-surge` instances are asked for at any time, counting both revisions;
//! * at least `R - max-unavailable` instances are ready at any time.
//!
//! As in Kubernetes, an old instance that was scaled down no longer counts against the
//! surge while it drains its last requests: the next wave starts as soon as new instances
//! are ready, never waiting on a drain.
//!
//! If new instances never become ready the rollout stops there and fails, with the old
//! revision still serving: readiness acts as the canary. Slipway then rolls back.
//!
//! On an app's first deploy there is nothing to replace: the target is scaled to `R` and
//! receives all traffic once every replica is ready.
//!
//! ## Parameters
//!
//! | name | default | meaning |
//! |------|---------|---------|
//! | `max-surge` | `"25%"` | How many instances may exist above `R` during the rollout: a count (`2`) or a percentage of `R` (`"25%"`, rounded up). |
//! | `max-unavailable` | `"25%"` | How many of `R` may be not ready during the rollout: a count or a percentage of `R` (rounded down). |
//! | `timeout-seconds` | `600` | How long to wait for the next new replica to become ready before failing. |
//!
//! `max-surge` and `max-unavailable` cannot both be 0 (after rounding): nothing could ever
//! be replaced.
//!
//! ```sh
//! slipway simulate --strategy builtin:rolling --replicas 10 --params '{"max-surge": 1, "max-unavailable": 0}'
//! ```

use serde::Deserialize;
use slipway_sdk::{
    Error, HookPoint, IntOrPercent, Outcome, ReplicaCounts, RolloutContext, RouteWeight, Strategy, TimedOut, lifecycle,
    log, routing, scaling, split_weights,
};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    max_surge: IntOrPercent,
    max_unavailable: IntOrPercent,
    timeout_seconds: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            max_surge: IntOrPercent::Percent(25),
            max_unavailable: IntOrPercent::Percent(25),
            timeout_seconds: 600,
        }
    }
}

impl Params {
    /// Resolves the bounds for `replicas`, rejecting ones that could never finish.
    fn bounds(&self, replicas: u32) -> Result<Bounds, Error> {
        if self.timeout_seconds == 0 {
            return Err(Error::Invalid(
                "strategy parameters: timeout-seconds must be at least 1".into(),
            ));
        }
        let bounds = Bounds {
            replicas,
            surge: self.max_surge.resolve(replicas, true),
            unavailable: self.max_unavailable.resolve(replicas, false),
        };
        // With no room above R and none below it, no old instance could ever be replaced.
        if replicas > 0 && bounds.surge == 0 && bounds.unavailable == 0 {
            return Err(Error::Invalid(format!(
                "strategy parameters: max-surge ({}) and max-unavailable ({}) both resolve to 0 \
                 for {replicas} replicas, so no instance could ever be replaced; \
                 set max-surge to at least 1 or raise max-unavailable",
                show(self.max_surge),
                show(self.max_unavailable),
            )));
        }
        Ok(bounds)
    }
}

fn show(value: IntOrPercent) -> String {
    match value {
        IntOrPercent::Count(n) => n.to_string(),
        IntOrPercent::Percent(p) => format!("\"{p}%\""),
    }
}

/// The rollout's limits, resolved against the target's replica count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bounds {
    replicas: u32,
    surge: u32,
    unavailable: u32,
}

impl Bounds {
    fn max_total(self) -> u32 {
        self.replicas.saturating_add(self.surge)
    }

    fn min_available(self) -> u32 {
        self.replicas.saturating_sub(self.unavailable)
    }
}

/// The desired replica count of each revision after one wave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    old: u32,
    new: u32,
}

/// Computes the next wave from what the host observes now.
///
/// Pure, so that the rollout is a function of observed state: run it again after a restart
/// and it carries on from wherever the instances are.
fn next_step(old: ReplicaCounts, new: ReplicaCounts, bounds: Bounds) -> Step {
    // What is asked for counts against the surge; instances draining after a scale-down do
    // not, so a slow drain never holds up the next wave (Kubernetes counts the same way).
    let room = bounds
        .max_total()
        .saturating_sub(old.desired.saturating_add(new.desired));
    let new_desired = bounds.replicas.min(new.desired.saturating_add(room));

    // Only ready instances keep the app available, and an instance being drained after a
    // scale-down is not one we can count on, hence the clamp to `desired`.
    let old_ready = old.ready.min(old.desired);
    let new_ready = new.ready.min(new.desired);
    // Old instances that are not ready serve nobody: they can always go.
    let unhealthy_old = old.desired - old_ready;
    let removable = (old_ready + new_ready).saturating_sub(bounds.min_available()) + unhealthy_old;
    let old_desired = old.desired - old.desired.min(removable);

    Step {
        old: old_desired,
        new: new_desired,
    }
}

/// Done once the target is fully ready and nothing more is asked of the old revision.
fn finished(old: ReplicaCounts, new: ReplicaCounts, replicas: u32) -> bool {
    new.ready >= replicas && old.desired == 0
}

struct Rolling;

impl Strategy for Rolling {
    /// Checks the parameters' types and forms; whether the bounds leave room to move depends
    /// on the replica count, and is checked when the rollout starts.
    fn validate(params: &str) -> Result<(), String> {
        let params = slipway_sdk::parse_params::<Params>(params);
        params.map(drop).map_err(|e| slipway_sdk::describe(&e))
    }

    fn run(ctx: RolloutContext) -> Result<Outcome, Error> {
        let params: Params = slipway_sdk::params(&ctx)?;
        let target = ctx.target;
        let bounds = params.bounds(target.replicas)?;
        let timeout_s = params.timeout_seconds;

        lifecycle::run_hook(HookPoint::Pre)?;
        let new = match ctx.active.filter(|active| active.number != target.number) {
            None => first_deploy(target.number, target.replicas, timeout_s)?,
            Some(active) => {
                log::info(&format!(
                    "rolling from revision {} to {}: at most {} instances in total, at least {} ready{}",
                    active.number,
                    target.number,
                    bounds.max_total(),
                    bounds.min_available(),
                    if ctx.resumed { " (resumed)" } else { "" },
                ));
                roll(active.number, target.number, bounds, timeout_s)?
            }
        };
        routing::set_weights(&[RouteWeight {
            revision: target.number,
            weight: 256,
        }])?;
        lifecycle::progress(100, &format!("all traffic on revision {}", target.number));
        lifecycle::run_hook(HookPoint::Post)?;

        Ok(Outcome {
            summary: format!(
                "{} of {} replicas on revision {}",
                new.ready.min(target.replicas),
                target.replicas,
                target.number
            ),
        })
    }
}

slipway_sdk::export_strategy!(Rolling);

/// Nothing to replace: bring the target up to full size.
fn first_deploy(new: u32, replicas: u32, timeout_s: u32) -> Result<ReplicaCounts, Error> {
    log::info(&format!("first deploy: scaling revision {new} to {replicas}"));
    scaling::scale(new, replicas)?;
    let mut counts = scaling::counts(new)?;
    while counts.ready < replicas {
        report(new, counts.ready, replicas, None);
        counts = wait_next_ready(new, counts, timeout_s)?;
    }
    Ok(counts)
}

/// Moves capacity wave by wave until the target is fully ready and the old revision empty.
///
/// Every iteration starts from fresh counts, so a resumed rollout needs no special case.
fn roll(old: u32, new: u32, bounds: Bounds, timeout_s: u32) -> Result<ReplicaCounts, Error> {
    loop {
        let (old_counts, new_counts) = (scaling::counts(old)?, scaling::counts(new)?);
        if finished(old_counts, new_counts, bounds.replicas) {
            return Ok(new_counts);
        }

        let step = next_step(old_counts, new_counts, bounds);
        if step.new != new_counts.desired {
            log::info(&format!(
                "scaling revision {new} from {} to {} (at most {} instances in total)",
                new_counts.desired,
                step.new,
                bounds.max_total()
            ));
            scaling::scale(new, step.new)?;
        }
        if step.old != old_counts.desired {
            log::info(&format!(
                "scaling revision {old} from {} to {} (at least {} must stay ready; {} are)",
                old_counts.desired,
                step.old,
                bounds.min_available(),
                old_counts.ready + new_counts.ready
            ));
            scaling::scale(old, step.old)?;
        }
        let changed = step
            != Step {
                old: old_counts.desired,
                new: new_counts.desired,
            };

        let (old_counts, new_counts) = if changed {
            (scaling::counts(old)?, scaling::counts(new)?)
        } else {
            (old_counts, new_counts)
        };
        follow_readiness(old, old_counts, new, new_counts)?;
        report(new, new_counts.ready, bounds.replicas, Some((old, old_counts.ready)));

        if !changed {
            // With nothing to scale, only a new instance becoming ready lets the rollout on.
            wait_next_ready(new, new_counts, timeout_s)?;
        }
    }
}

/// Splits traffic in proportion to ready instances, touching the route only if that changes it.
fn follow_readiness(old: u32, old_counts: ReplicaCounts, new: u32, new_counts: ReplicaCounts) -> Result<(), Error> {
    let wanted = split_weights(&[
        (old, old_counts.ready.min(old_counts.desired)),
        (new, new_counts.ready.min(new_counts.desired)),
    ]);
    if wanted.is_empty() {
        // Nothing is ready anywhere; a route of all zeros would only turn a slow start into 503s.
        return Ok(());
    }
    let mut now: Vec<(u32, u32)> = routing::weights()
        .into_iter()
        .filter(|w| w.weight > 0)
        .map(|w| (w.revision, w.weight))
        .collect();
    now.sort_unstable();
    let mut next: Vec<(u32, u32)> = wanted.iter().map(|w| (w.revision, w.weight)).collect();
    next.sort_unstable();
    if now != next {
        log::info(&format!("routing by readiness: {}", describe(&wanted)));
        routing::set_weights(&wanted)?;
    }
    Ok(())
}

fn describe(weights: &[RouteWeight]) -> String {
    let parts: Vec<String> = weights
        .iter()
        .map(|w| format!("revision {} at {}", w.revision, w.weight))
        .collect();
    parts.join(", ")
}

fn report(new: u32, ready: u32, replicas: u32, old: Option<(u32, u32)>) {
    let percent = if replicas == 0 {
        100
    } else {
        (u64::from(ready.min(replicas)) * 100 / u64::from(replicas)) as u8
    };
    let mut message = format!("{} of {replicas} replicas of revision {new} ready", ready.min(replicas));
    if let Some((old, old_ready)) = old {
        message.push_str(&format!("; {old_ready} ready on revision {old}"));
    }
    // Keep 100 for "all traffic moved", which comes after the last wave.
    lifecycle::progress(percent.min(99), &message);
}

/// Waits for one more new instance to become ready; a timeout fails the rollout.
fn wait_next_ready(new: u32, counts: ReplicaCounts, timeout_s: u32) -> Result<ReplicaCounts, Error> {
    let want = counts.ready + 1;
    scaling::wait_ready(new, want, u64::from(timeout_s) * 1000).map_err(|error| match error {
        Error::Timeout(TimedOut { counts: seen, .. }) => {
            let now = seen.unwrap_or(counts);
            let failed = if now.failed > 0 {
                format!("; {} failed", now.failed)
            } else {
                String::new()
            };
            Error::Timeout(TimedOut {
                message: format!(
                    "revision {new}: only {} of {} new replicas became ready, \
                     and no further one within {timeout_s} s{failed}",
                    now.ready, now.desired
                ),
                counts: Some(now),
            })
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(desired: u32, current: u32, ready: u32) -> ReplicaCounts {
        ReplicaCounts {
            desired,
            current,
            ready,
            failed: 0,
        }
    }

    fn bounds(replicas: u32, surge: u32, unavailable: u32) -> Bounds {
        Bounds {
            replicas,
            surge,
            unavailable,
        }
    }

    /// Drives `next_step` against a model cluster where a scaled-down instance drains for
    /// one wave before it stops and a new instance becomes ready one wave after it starts
    /// (only one per wave when `slow`), and checks both bounds at every point.
    fn simulate(old_replicas: u32, b: Bounds, slow: bool) {
        let mut old = counts(old_replicas, old_replicas, old_replicas);
        let mut new = counts(0, 0, 0);
        let max_total = b.max_total().max(old_replicas);
        let min_available = b.min_available().min(old_replicas);
        for _ in 0..1000 {
            if finished(old, new, b.replicas) {
                return;
            }
            let step = next_step(old, new, b);
            // Scale: new instances start unready; removed old ones leave rotation at once
            // (unready ones first) but keep existing while they drain.
            new.desired = step.new;
            new.current = new.current.max(step.new);
            old.desired = step.old;
            old.ready = old.ready.min(step.old);
            assert!(
                old.desired + new.desired <= max_total,
                "surge exceeded: {old:?} {new:?} {b:?}"
            );
            assert!(
                old.ready + new.ready >= min_available,
                "availability lost: {old:?} {new:?} {b:?}"
            );
            // One wave later.
            old.current = old.desired;
            let starting = new.current - new.ready;
            new.ready += if slow { starting.min(1) } else { starting };
        }
        panic!("did not finish: {old:?} {new:?} {b:?}");
    }

    #[test]
    fn default_bounds_for_ten_replicas() {
        let p = Params::default().bounds(10).unwrap();
        assert_eq!(p, bounds(10, 3, 2));
        assert_eq!((p.max_total(), p.min_available()), (13, 8));
    }

    #[test]
    fn first_wave_surges_and_drops_unavailable() {
        let step = next_step(counts(10, 10, 10), counts(0, 0, 0), bounds(10, 3, 2));
        assert_eq!(step, Step { old: 8, new: 3 });
    }

    #[test]
    fn surge_only_replaces_one_at_a_time() {
        let b = bounds(3, 1, 0);
        let step = next_step(counts(3, 3, 3), counts(0, 0, 0), b);
        assert_eq!(step, Step { old: 3, new: 1 });
        // Until the new instance is ready nothing else may happen.
        assert_eq!(next_step(counts(3, 3, 3), counts(1, 1, 0), b), Step { old: 3, new: 1 });
        assert_eq!(next_step(counts(3, 3, 3), counts(1, 1, 1), b), Step { old: 2, new: 1 });
    }

    #[test]
    fn unavailable_only_stops_before_starting() {
        let b = bounds(3, 0, 1);
        assert_eq!(next_step(counts(3, 3, 3), counts(0, 0, 0), b), Step { old: 2, new: 0 });
        assert_eq!(next_step(counts(2, 2, 2), counts(0, 0, 0), b), Step { old: 2, new: 1 });
    }

    #[test]
    fn draining_instances_do_not_hold_up_the_next_wave() {
        // Old was scaled to 2 and its third instance still drains: the next new one starts.
        let step = next_step(counts(2, 3, 2), counts(1, 1, 1), bounds(3, 1, 0));
        assert_eq!(step.new, 2);
    }

    #[test]
    fn unready_old_instances_can_always_go() {
        let step = next_step(counts(4, 4, 2), counts(0, 0, 0), bounds(4, 0, 0));
        assert_eq!(step.old, 2);
    }

    #[test]
    fn never_scales_new_beyond_replicas() {
        let step = next_step(counts(0, 0, 0), counts(2, 2, 2), bounds(3, 5, 0));
        assert_eq!(step.new, 3);
    }

    #[test]
    fn finishes_within_bounds() {
        let cases = [
            (1, 1, 0),
            (1, 0, 1),
            (3, 1, 0),
            (3, 0, 1),
            (10, 3, 2),
            (10, 0, 10),
            (10, 10, 0),
            (7, 2, 3),
        ];
        for slow in [false, true] {
            for (replicas, surge, unavailable) in cases {
                simulate(replicas, bounds(replicas, surge, unavailable), slow);
            }
            // Changing size while rolling.
            simulate(10, bounds(4, 1, 1), slow);
            simulate(2, bounds(6, 2, 1), slow);
            simulate(5, bounds(0, 0, 0), slow);
            // First deploy.
            simulate(0, bounds(4, 1, 1), slow);
        }
    }

    #[test]
    fn rejects_bounds_that_cannot_progress() {
        let params = Params {
            max_surge: IntOrPercent::Count(0),
            ..Params::default()
        };
        let Err(Error::Invalid(message)) = params.bounds(3) else {
            panic!("accepted")
        };
        assert!(message.contains("both resolve to 0 for 3 replicas"), "{message}");
        assert!(message.contains("max-surge to at least 1"), "{message}");
        // Nothing to replace when the target has no replicas.
        assert!(params.bounds(0).is_ok());
    }

    fn parse(json: &str) -> Result<Params, Error> {
        slipway_sdk::params(&RolloutContext {
            app: "shop".into(),
            rollout: "r-1".into(),
            target: slipway_sdk::Revision { number: 2, replicas: 3 },
            active: None,
            others: Vec::new(),
            params: json.into(),
            resumed: false,
        })
    }

    #[test]
    fn parses_params_with_defaults() {
        let p = parse(r#"{"max-surge": 2}"#).unwrap();
        assert_eq!(p.max_surge, IntOrPercent::Count(2));
        assert_eq!(p.max_unavailable, IntOrPercent::Percent(25));
        assert_eq!(p.timeout_seconds, 600);
        assert_eq!(parse("").unwrap().max_surge, IntOrPercent::Percent(25));
        let Err(Error::Invalid(message)) = parse(r#"{"max_surge": 2}"#) else {
            panic!("accepted")
        };
        assert!(message.contains("unknown field `max_surge`"), "{message}");
        let Err(Error::Invalid(message)) = parse(r#"{"max-unavailable": "lots"}"#) else {
            panic!("accepted")
        };
        assert!(message.contains("expected a count"), "{message}");
    }
}
