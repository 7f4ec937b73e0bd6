//! `slipway:deploy/types`: declarations, and the one place driver types become WIT types.

use crate::bindings::strategy::slipway::deploy::types::Host;
use crate::bindings::{HttpCheckReport, ProbeReport, ReplicaCounts};
use crate::driver::{Counts, HttpResult, ProbeResult};
use crate::guest::GuestState;

impl Host for GuestState {}

impl From<Counts> for ReplicaCounts {
    fn from(c: Counts) -> Self {
        ReplicaCounts {
            desired: c.desired,
            current: c.current,
            ready: c.ready,
            failed: c.failed,
        }
    }
}

impl From<HttpResult> for HttpCheckReport {
    fn from(r: HttpResult) -> Self {
        HttpCheckReport {
            checked: r.checked,
            passed: r.passed,
            failures: r.failures,
        }
    }
}

/// A probe of `revision` as the guest sees it.
pub(crate) fn probe_report(revision: u32, r: ProbeResult) -> ProbeReport {
    ProbeReport {
        revision,
        probed: r.probed,
        ready: r.ready,
        failures: r.failures,
    }
}
