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
        let message = truncate(message, self.limits.log_line_bytes);
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

/// Cuts `message` to at most `limit` bytes on a character boundary, marking the cut.
fn truncate(mut message: String, limit: usize) -> String {
    if message.len() <= limit {
        return message;
    }
    let mut end = limit;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(" …[truncated]");
    message
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncation_respects_characters() {
        assert_eq!(super::truncate("héllo".into(), 2), "h …[truncated]");
        assert_eq!(super::truncate("short".into(), 10), "short");
    }
}
