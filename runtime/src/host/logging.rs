//! `slipway:deploy/logging`: log lines into the rollout's timeline, within a byte budget.

use crate::bindings::LogLevel;
use crate::bindings::strategy::slipway::deploy::logging::Host;
use crate::events::EventKind;
use crate::failure::GuestLimit;
use crate::guest::GuestState;

impl Host for GuestState {
    async fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        self.enter()?;
        self.budget.log_bytes += message.len();
        if self.budget.log_bytes > self.limits.log_bytes {
            return Err(wasmtime::Error::new(GuestLimit::LogBytes(self.limits.log_bytes)));
        }
        let message = crate::failure::cap(message, self.limits.log_line_bytes);
        let level = match level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        tracing::debug!(rollout = %self.env.rollout, level, "{message}");
        self.env.record(EventKind::Log {
            level: level.to_string(),
            message,
        });
        Ok(())
    }
}
