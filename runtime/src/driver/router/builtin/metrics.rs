//! Per-app, per-revision request counters and their Prometheus text.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::header::HeaderValue;

use super::lock;

/// Per-app request counters, for Prometheus.
///
/// Counters for a revision appear when a table first names it and are kept for the life
/// of the router, so they never go backwards while it runs.
#[derive(Default)]
pub struct RouterMetrics {
    pub(super) revisions: Mutex<BTreeMap<u32, Arc<RevisionStats>>>,
    pub(super) unavailable: AtomicU64,
}

impl RouterMetrics {
    /// Appends this app's counters to `out` in the Prometheus text format, with their
    /// `# HELP` and `# TYPE` lines:
    /// `slipway_router_requests_total{app="..",revision="2"} N`,
    /// `slipway_router_errors_total{app="..",revision="2"} N` and
    /// `slipway_router_unavailable_total{app=".."} N`.
    ///
    /// The text format wants each metric's lines in one group with a single `# TYPE`
    /// line, so to expose several apps in one scrape use [`RouterMetrics::render_all`]
    /// rather than calling this once per app.
    pub fn render(&self, app: &str, out: &mut String) {
        RouterMetrics::render_all(&[(app, self)], out);
    }

    /// Appends the counters of several apps to `out`, each metric as one group.
    pub fn render_all(apps: &[(&str, &RouterMetrics)], out: &mut String) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail, so the results below are ignored.
        let snapshots: Vec<AppSnapshot> = apps
            .iter()
            .map(|(app, metrics)| (escape_label(app), metrics.snapshot(), metrics.unavailable()))
            .collect();
        let _ = writeln!(
            out,
            "# HELP slipway_router_requests_total Requests the built-in router proxied, by the revision that answered or failed them.\n\
             # TYPE slipway_router_requests_total counter"
        );
        for (app, revisions, _) in &snapshots {
            for (revision, requests, _) in revisions {
                let _ = writeln!(
                    out,
                    "slipway_router_requests_total{{app=\"{app}\",revision=\"{revision}\"}} {requests}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP slipway_router_errors_total Proxied requests answered with 502 or 504 because the instance failed or was too slow.\n\
             # TYPE slipway_router_errors_total counter"
        );
        for (app, revisions, _) in &snapshots {
            for (revision, _, errors) in revisions {
                let _ = writeln!(
                    out,
                    "slipway_router_errors_total{{app=\"{app}\",revision=\"{revision}\"}} {errors}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP slipway_router_unavailable_total Requests answered 503 because the app was in maintenance or had no ready instance.\n\
             # TYPE slipway_router_unavailable_total counter"
        );
        for (app, _, unavailable) in &snapshots {
            let _ = writeln!(out, "slipway_router_unavailable_total{{app=\"{app}\"}} {unavailable}");
        }
    }

    /// Requests proxied to `revision` so far (0 for a revision never seen).
    pub fn requests(&self, revision: u32) -> u64 {
        self.stats(revision).map_or(0, |s| s.requests.load(Ordering::Relaxed))
    }

    /// Requests to `revision` that ended in a 502 or 504.
    pub fn errors(&self, revision: u32) -> u64 {
        self.stats(revision).map_or(0, |s| s.errors.load(Ordering::Relaxed))
    }

    /// `revision`'s traffic in the last `window` (nothing, for a revision never routed).
    pub fn traffic(&self, revision: u32, window: std::time::Duration) -> super::traffic::TrafficStats {
        let now = crate::store::now_ms();
        self.stats(revision)
            .map(|s| s.traffic.stats(now, window))
            .unwrap_or_else(|| super::traffic::TrafficLog::default().stats(now, window))
    }

    /// Requests answered 503 because of maintenance or no ready instance.
    pub fn unavailable(&self) -> u64 {
        self.unavailable.load(Ordering::Relaxed)
    }
}

pub(super) struct RevisionStats {
    /// The `X-Slipway-Revision` value, made once so responses only clone it.
    pub(super) header: HeaderValue,
    pub(super) requests: AtomicU64,
    pub(super) errors: AtomicU64,
    /// The last minutes of it, for traffic analysis.
    pub(super) traffic: super::traffic::TrafficLog,
}

impl RouterMetrics {
    pub(super) fn stats(&self, revision: u32) -> Option<Arc<RevisionStats>> {
        lock(&self.revisions).get(&revision).cloned()
    }

    fn snapshot(&self) -> Vec<(u32, u64, u64)> {
        lock(&self.revisions)
            .iter()
            .map(|(revision, s)| {
                (
                    *revision,
                    s.requests.load(Ordering::Relaxed),
                    s.errors.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// One app's counters, read at once for rendering: the escaped app label, then
/// `(revision, requests, errors)` for each revision, then the unavailable count.
type AppSnapshot = (String, Vec<(u32, u64, u64)>, u64);

/// Escapes a Prometheus label value.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}
