//! `slipway:deploy/verification`: fresh readiness probes and HTTP checks.

use crate::bindings::strategy::slipway::deploy::verification::Host;
use crate::bindings::{ApiError, HttpCheck, HttpCheckReport, ProbeReport};
use crate::events::EventKind;
use crate::guest::GuestState;

/// The longest per-request timeout an HTTP check may ask for.
const MAX_CHECK_TIMEOUT_MS: u32 = 60_000;
/// The longest path an HTTP check may ask for.
const MAX_CHECK_PATH: usize = 2 << 10;

impl Host for GuestState {
    async fn probe(&mut self, revision: u32) -> wasmtime::Result<Result<ProbeReport, ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        if let Err(error) = self.known(revision) {
            return Ok(Err(error));
        }
        let result = self.env.cluster.probe(revision).await;
        if let Ok(report) = &result {
            self.env.record(EventKind::Probed {
                revision,
                probed: report.probed,
                ready: report.ready,
            });
        }
        Ok(result
            .map(|r| super::types::probe_report(revision, r))
            .map_err(|e| self.driver_error(e)))
    }

    async fn check_http(&mut self, check: HttpCheck) -> wasmtime::Result<Result<HttpCheckReport, ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        if let Err(error) = self.known(check.revision) {
            return Ok(Err(error));
        }
        if check.path.len() > MAX_CHECK_PATH {
            return Ok(Err(self.invalid(format!(
                "check-http: the path is {} bytes long, over the {MAX_CHECK_PATH}-byte limit",
                check.path.len()
            ))));
        }
        if !check.path.starts_with('/') || check.path.contains(char::is_whitespace) {
            return Ok(Err(self.invalid(format!(
                "check-http: path {:?} must start with / and contain no spaces",
                check.path
            ))));
        }
        if check.timeout_ms == 0 || check.timeout_ms > MAX_CHECK_TIMEOUT_MS {
            return Ok(Err(self.invalid(format!(
                "check-http: timeout of {} ms is out of range 1..={MAX_CHECK_TIMEOUT_MS}",
                check.timeout_ms
            ))));
        }
        let result = self
            .env
            .cluster
            .check_http(
                check.revision,
                &check.path,
                check.expect_status,
                std::time::Duration::from_millis(u64::from(check.timeout_ms)),
            )
            .await;
        if let Ok(report) = &result {
            self.env.record(EventKind::HttpChecked {
                revision: check.revision,
                path: check.path.clone(),
                checked: report.checked,
                passed: report.passed,
            });
        }
        Ok(result.map(HttpCheckReport::from).map_err(|e| self.driver_error(e)))
    }
}
