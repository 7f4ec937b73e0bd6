//! # Recreate
//!
//! Stops every instance of the active revision before starting the target, like the
//! `Recreate` strategy of OpenShift DeploymentConfigs. Use it when two revisions must never
//! run side by side: a schema migration the old code cannot live with, a singleton worker,
//! an exclusive lock on a volume. The price is downtime between the last old instance
//! stopping and the first new one becoming ready; by default a maintenance page covers it.
//!
//! The order is:
//!
//! 1. the `pre` hook;
//! 2. the maintenance page goes on (unless `maintenance: false`) and the route points at the
//!    target alone, so it gets traffic as soon as it is ready;
//! 3. the active revision is scaled to 0 and the strategy waits until its last instance has
//!    drained and stopped;
//! 4. the `mid` hook: the place for migrations, with nothing old running;
//! 5. one replica of the target is started and must become ready before the rest are
//!    started, so a broken revision fails fast on one instance instead of all of them;
//! 6. the target is scaled to its full size and every replica must become ready;
//! 7. the maintenance page goes off, then the `post` hook.
//!
//! On an app's first deploy there is nothing to stop: the target is scaled to full size and
//! receives all traffic once every replica is ready.
//!
//! ## Parameters
//!
//! | name | default | meaning |
//! |------|---------|---------|
//! | `timeout-seconds` | `600` | How long each wait may take: the old revision stopping, the first new replica becoming ready, then the rest. |
//! | `maintenance` | `true` | Show the maintenance page while no revision is running. With `false` the route answers 503 meanwhile. |

use serde::Deserialize;
use slipway_sdk::{
    Error, HookPoint, Outcome, ReplicaCounts, RolloutContext, RouteWeight, Strategy, TimedOut, lifecycle, log, routing,
    scaling,
};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    timeout_seconds: u32,
    maintenance: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            timeout_seconds: 600,
            maintenance: true,
        }
    }
}

impl Params {
    fn validate(self) -> Result<Self, Error> {
        if self.timeout_seconds == 0 {
            return Err(Error::Invalid(
                "strategy parameters: timeout-seconds must be at least 1".into(),
            ));
        }
        Ok(self)
    }
}

struct Recreate;

impl Strategy for Recreate {
    fn validate(params: &str) -> Result<(), String> {
        let params = slipway_sdk::parse_params::<Params>(params).and_then(Params::validate);
        params.map(drop).map_err(|e| slipway_sdk::describe(&e))
    }

    fn run(ctx: RolloutContext) -> Result<Outcome, Error> {
        let params = slipway_sdk::params::<Params>(&ctx)?.validate()?;
        let target = ctx.target;
        let (new, replicas, timeout_s) = (target.number, target.replicas, params.timeout_seconds);

        lifecycle::run_hook(HookPoint::Pre)?;
        let active = ctx.active.filter(|active| active.number != new);
        let counts = match active {
            None => {
                log::info(&format!("first deploy: scaling revision {new} to {replicas}"));
                scaling::scale(new, replicas)?;
                let counts = wait_ready(new, replicas, timeout_s, |c| {
                    all_ready_failed(new, replicas, timeout_s, c)
                })?;
                route_all_to(new)?;
                counts
            }
            Some(active) => recreate(active.number, new, replicas, &params, ctx.resumed)?,
        };
        lifecycle::progress(100, &format!("all traffic on revision {new}"));
        lifecycle::run_hook(HookPoint::Post)?;

        Ok(Outcome {
            summary: format!(
                "{} of {replicas} replicas on revision {new}",
                counts.ready.min(replicas)
            ),
        })
    }
}

slipway_sdk::export_strategy!(Recreate);

fn recreate(old: u32, new: u32, replicas: u32, params: &Params, resumed: bool) -> Result<ReplicaCounts, Error> {
    let timeout_s = params.timeout_seconds;
    log::info(&format!(
        "recreating: stopping revision {old} before starting revision {new}{}",
        if resumed { " (resumed)" } else { "" }
    ));
    if params.maintenance {
        lifecycle::set_maintenance(true)?;
    }
    // Point the route at the target now: old instances leave rotation as they drain, and
    // the target takes traffic the moment it is ready.
    route_all_to(new)?;
    lifecycle::progress(10, &format!("stopping revision {old}"));
    stop(old, new, timeout_s)?;
    lifecycle::progress(30, &format!("revision {old} stopped"));

    // The target is only ever started after the mid hook, so a started target means a
    // resumed rollout whose mid hook (often a migration) already succeeded.
    if scaling::counts(new)?.desired == 0 {
        lifecycle::run_hook(HookPoint::Mid)?;
    } else {
        log::info(&format!(
            "revision {new} was already started: not running the mid hook again"
        ));
    }
    let counts = start(new, replicas, timeout_s)?;
    if params.maintenance {
        lifecycle::set_maintenance(false)?;
    }
    Ok(counts)
}

fn route_all_to(revision: u32) -> Result<(), Error> {
    routing::set_weights(&[RouteWeight { revision, weight: 256 }])
}

/// Scales the old revision to 0 and waits until its last instance has stopped.
fn stop(old: u32, new: u32, timeout_s: u32) -> Result<(), Error> {
    if scaling::counts(old)?.desired != 0 {
        log::info(&format!("scaling revision {old} to 0"));
        scaling::scale(old, 0)?;
    }
    match scaling::wait_stopped(old, 0, u64::from(timeout_s) * 1000) {
        Ok(_) => Ok(()),
        Err(Error::Timeout(TimedOut { counts, .. })) => {
            let left = counts.map_or(0, |c| c.current);
            Err(Error::Timeout(TimedOut {
                message: format!(
                    "revision {old}: {left} instances were still running {timeout_s} s after scaling \
                     it to 0; revision {new} was not started"
                ),
                counts,
            }))
        }
        Err(other) => Err(other),
    }
}

/// Starts the target: one replica first, then the rest.
///
/// Never scales the target down, so a resumed rollout that had already got further carries
/// on from there.
fn start(new: u32, replicas: u32, timeout_s: u32) -> Result<ReplicaCounts, Error> {
    if replicas == 0 {
        scaling::scale(new, 0)?;
        return scaling::counts(new);
    }
    if scaling::counts(new)?.desired < 1 {
        log::info(&format!("starting the first replica of revision {new}"));
        scaling::scale(new, 1)?;
    }
    wait_ready(new, 1, timeout_s, |c| {
        format!(
            "first replica of revision {new} did not become ready within {timeout_s} s{}; \
             the other {} were not started",
            failed(c),
            replicas - 1
        )
    })?;
    lifecycle::progress(60, &format!("first replica of revision {new} ready"));

    if replicas > 1 {
        log::info(&format!("first replica ready: scaling revision {new} to {replicas}"));
        scaling::scale(new, replicas)?;
    }
    wait_ready(new, replicas, timeout_s, |c| {
        all_ready_failed(new, replicas, timeout_s, c)
    })
}

/// Waits for `want` ready instances; on a timeout `explain` words the error from the counts.
fn wait_ready(
    revision: u32,
    want: u32,
    timeout_s: u32,
    explain: impl FnOnce(ReplicaCounts) -> String,
) -> Result<ReplicaCounts, Error> {
    scaling::wait_ready(revision, want, u64::from(timeout_s) * 1000).map_err(|error| match error {
        Error::Timeout(TimedOut {
            counts: Some(counts), ..
        }) => Error::Timeout(TimedOut {
            message: explain(counts),
            counts: Some(counts),
        }),
        other => other,
    })
}

fn all_ready_failed(new: u32, replicas: u32, timeout_s: u32, counts: ReplicaCounts) -> String {
    format!(
        "revision {new}: only {} of {replicas} new replicas became ready within {timeout_s} s{}",
        counts.ready,
        failed(counts)
    )
}

fn failed(counts: ReplicaCounts) -> String {
    if counts.failed > 0 {
        format!(" ({} failed to start)", counts.failed)
    } else {
        String::new()
    }
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

    #[test]
    fn defaults() {
        let p = parse("{}").unwrap();
        assert_eq!((p.timeout_seconds, p.maintenance), (600, true));
        assert!(!parse(r#"{"maintenance": false}"#).unwrap().maintenance);
    }

    #[test]
    fn rejects_bad_params() {
        let Err(Error::Invalid(m)) = parse(r#"{"timeout": 5}"#) else {
            panic!("accepted")
        };
        assert!(m.contains("unknown field `timeout`"), "{m}");
        let Err(Error::Invalid(m)) = parse(r#"{"timeout-seconds": 0}"#) else {
            panic!("accepted")
        };
        assert!(m.contains("at least 1"), "{m}");
        let Err(Error::Invalid(m)) = parse(r#"{"maintenance": "yes"}"#) else {
            panic!("accepted")
        };
        assert!(m.contains("expected a boolean"), "{m}");
    }

    #[test]
    fn timeout_messages_name_the_numbers() {
        let counts = ReplicaCounts {
            desired: 3,
            current: 3,
            ready: 1,
            failed: 2,
        };
        assert_eq!(
            all_ready_failed(2, 3, 600, counts),
            "revision 2: only 1 of 3 new replicas became ready within 600 s (2 failed to start)"
        );
    }
}
