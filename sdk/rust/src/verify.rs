//! Waiting for and checking a revision, with errors that name the revision and the numbers:
//! the steps blue-green and canary share, for any strategy to reuse.

use crate::{Error, HttpCheck, ReplicaCounts, TimedOut, scaling, verification};

/// How many instance failures an error quotes before summarising the rest.
const MAX_QUOTED_FAILURES: usize = 5;

/// Per-request timeout of [`revision`]'s HTTP check.
const CHECK_TIMEOUT_MS: u32 = 5000;

/// Waits until `want` instances of `revision` are ready; on a timeout the error says how many
/// became ready and how many failed to start.
pub fn wait_ready(revision: u32, want: u32, timeout_s: u32) -> Result<ReplicaCounts, Error> {
    scaling::wait_ready(revision, want, u64::from(timeout_s) * 1000).map_err(|error| match error {
        Error::Timeout(TimedOut { counts: Some(c), .. }) => {
            let failed = if c.failed > 0 {
                format!(" ({} failed to start)", c.failed)
            } else {
                String::new()
            };
            Error::Timeout(TimedOut {
                message: format!(
                    "revision {revision}: only {} of {want} new replicas became ready within {timeout_s} s{failed}",
                    c.ready
                ),
                counts: Some(c),
            })
        }
        other => other,
    })
}

/// Checks `revision` afresh: every instance must pass its readiness probe (at least
/// `at_least` of them), and, when `http` names a path and status, answer `GET path` with it.
/// `wait-ready` saw each instance pass once; this catches ones that failed since, or that are
/// ready yet answer their real routes wrongly.
pub fn revision(revision: u32, at_least: u32, http: Option<(&str, u16)>) -> Result<(), Error> {
    let probe = verification::probe(revision)?;
    if probe.probed < at_least || probe.ready != probe.probed {
        return Err(Error::VerificationFailed(format!(
            "revision {revision}: readiness probe passed on {} of {} instances, at least {at_least} expected{}",
            probe.ready,
            probe.probed,
            quote(&probe.failures)
        )));
    }
    let Some((path, status)) = http else { return Ok(()) };
    if at_least == 0 {
        crate::log::info(&format!("revision {revision} has no replicas: skipping GET {path}"));
        return Ok(());
    }
    let report = verification::check_http(&HttpCheck {
        revision,
        path: path.to_string(),
        expect_status: status,
        timeout_ms: CHECK_TIMEOUT_MS,
    })?;
    if report.checked == 0 || report.passed != report.checked {
        return Err(Error::VerificationFailed(format!(
            "revision {revision}: GET {path} answered {status} on {} of {} instances{}",
            report.passed,
            report.checked,
            quote(&report.failures)
        )));
    }
    crate::log::info(&format!(
        "revision {revision}: GET {path} answered {status} on all {} instances",
        report.checked
    ));
    Ok(())
}

/// Formats instance failures for an error, keeping it to a readable length.
fn quote(failures: &[String]) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let mut text = format!(": {}", failures[..failures.len().min(MAX_QUOTED_FAILURES)].join("; "));
    if failures.len() > MAX_QUOTED_FAILURES {
        text.push_str(&format!("; and {} more", failures.len() - MAX_QUOTED_FAILURES));
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_at_most_five_failures() {
        assert_eq!(super::quote(&[]), "");
        let many: Vec<String> = (1..=7).map(|i| format!("i{i}")).collect();
        assert_eq!(super::quote(&many), ": i1; i2; i3; i4; i5; and 2 more");
    }
}
