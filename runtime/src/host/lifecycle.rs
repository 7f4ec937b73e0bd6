//! `slipway:deploy/lifecycle`: hooks, maintenance mode and progress.

use crate::bindings::strategy::slipway::deploy::lifecycle::Host;
use crate::bindings::{ApiError, HookPoint, HookStatus};
use crate::events::EventKind;
use crate::guest::GuestState;

impl Host for GuestState {
    async fn run_hook(&mut self, point: HookPoint) -> wasmtime::Result<Result<HookStatus, ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        let name = crate::hooks::point_name(point);
        let env = self.env.clone();
        let result = env.hooks.run_hook(point, &env).await;
        self.env.record(crate::hooks::event(point, &result));
        Ok(result.map_err(|message| ApiError::Aborted(format!("the {name} hook failed: {message}"))))
    }

    async fn set_maintenance(&mut self, on: bool) -> wasmtime::Result<Result<(), ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        let result = self.env.set_maintenance(on).await;
        Ok(result.map_err(|e| self.driver_error(e)))
    }

    async fn progress(&mut self, percent: u8, message: String) -> wasmtime::Result<()> {
        self.enter()?;
        let message: String = message.chars().take(200).collect();
        let percent = percent.min(100);
        // Strategies report from loops; the same report twice in a row says nothing new.
        let report = (percent, message);
        if self.budget.last_progress.as_ref() == Some(&report) {
            return Ok(());
        }
        self.env.record(EventKind::Progress {
            percent: report.0,
            message: report.1.clone(),
        });
        self.budget.last_progress = Some(report);
        Ok(())
    }
}
