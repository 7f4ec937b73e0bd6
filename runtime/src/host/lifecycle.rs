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
        let status = match &result {
            Ok(HookStatus::NotConfigured) => "not configured".to_string(),
            Ok(HookStatus::Succeeded) => "succeeded".to_string(),
            Ok(HookStatus::FailureIgnored) => "failed (ignored by policy)".to_string(),
            Err(message) => format!("failed: {message}"),
        };
        self.env.record(EventKind::Hook {
            point: name.to_string(),
            status,
        });
        Ok(result.map_err(|message| ApiError::Aborted(format!("the {name} hook failed: {message}"))))
    }

    async fn set_maintenance(&mut self, on: bool) -> wasmtime::Result<Result<(), ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        let result = self.env.cluster.set_maintenance(on).await;
        Ok(result.map_err(|e| self.driver_error(e)))
    }

    async fn progress(&mut self, percent: u8, message: String) -> wasmtime::Result<()> {
        self.enter()?;
        let message: String = message.chars().take(200).collect();
        self.env.record(EventKind::Progress {
            percent: percent.min(100),
            message,
        });
        Ok(())
    }
}
