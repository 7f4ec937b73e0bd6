//! `slipway:deploy/traffic`: what the router saw of each revision's requests.

use std::time::Duration;

use crate::bindings::strategy::slipway::deploy::traffic::Host;
use crate::bindings::{ApiError, GuestTraffic, Window};
use crate::driver::TrafficStats;
use crate::guest::GuestState;

impl Host for GuestState {
    async fn stats(&mut self, revision: u32, window: Window) -> wasmtime::Result<Result<GuestTraffic, ApiError>> {
        self.enter()?;
        if let Err(error) = self.known(revision) {
            return Ok(Err(error));
        }
        let now = self.env.cluster.now_ms();
        let ms = match window {
            Window::LastMs(ms) => ms,
            Window::Since(since) if since <= now => now - since,
            Window::Since(since) => {
                return Ok(Err(self.invalid(format!(
                    "traffic stats: `since` {since} is {} ms in the future; pass a time clock.now returned",
                    since - now
                ))));
            }
        };
        let result = self.env.cluster.traffic(revision, Duration::from_millis(ms)).await;
        Ok(result
            .map(|stats| guest_traffic(revision, stats))
            .map_err(|e| self.driver_error(e)))
    }
}

fn guest_traffic(revision: u32, stats: TrafficStats) -> GuestTraffic {
    let [informational, successful, redirected, client_errors, server_errors] = stats.by_class;
    GuestTraffic {
        revision,
        window_ms: stats.window_ms,
        requests: stats.requests,
        informational,
        successful,
        redirected,
        client_errors,
        server_errors,
        connection_errors: stats.connection_errors,
        p50_us: stats.p50_us,
        p90_us: stats.p90_us,
        p99_us: stats.p99_us,
    }
}
