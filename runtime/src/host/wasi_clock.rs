//! `wasi:clocks/monotonic-clock` on the rollout's clock. It replaces wasmtime-wasi's own,
//! whose subscriptions sleep on the machine's clock: a guest's `std::thread::sleep` (or any
//! language runtime's timer) then waits in virtual time under `slipway simulate`, and never
//! past the rollout's progress deadline under `serve`.

use std::sync::Arc;

use wasmtime::component::Resource;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::{Duration, Host, Instant};

use crate::failure::GuestLimit;
use crate::guest::GuestState;
use crate::host::RolloutEnv;

impl Host for GuestState {
    fn now(&mut self) -> wasmtime::Result<Instant> {
        Ok(monotonic_ns(&self.env))
    }

    fn resolution(&mut self) -> wasmtime::Result<Instant> {
        Ok(1_000_000)
    }

    fn subscribe_instant(&mut self, when: Instant) -> wasmtime::Result<Resource<DynPollable>> {
        let now = monotonic_ns(&self.env);
        self.subscribe(when.saturating_sub(now))
    }

    fn subscribe_duration(&mut self, duration: Duration) -> wasmtime::Result<Resource<DynPollable>> {
        self.subscribe(duration)
    }
}

impl GuestState {
    /// A pollable ready `ns` nanoseconds from now by the rollout's clock. Once the progress
    /// deadline has passed there is nothing left to wait for: the guest is stopped.
    fn subscribe(&mut self, ns: u64) -> wasmtime::Result<Resource<DynPollable>> {
        if self.env.remaining_ms() == 0 {
            return Err(wasmtime::Error::new(GuestLimit::PastDeadline));
        }
        // Whole milliseconds, rounded up, so a short sleep is never a busy loop.
        let ms = ns.div_ceil(1_000_000);
        let until_ms = self.env.cluster.now_ms().saturating_add(ms);
        let timer = RolloutTimer {
            env: self.env.clone(),
            until_ms,
            yielded: false,
        };
        let resource = self.table().push(timer)?;
        wasmtime_wasi::p2::subscribe(self.table(), resource)
    }
}

/// Nanoseconds since the rollout started, by its clock.
fn monotonic_ns(env: &RolloutEnv) -> u64 {
    env.cluster
        .now_ms()
        .saturating_sub(env.started_at_ms)
        .saturating_mul(1_000_000)
}

/// A timer on the rollout's clock that also ends at the progress deadline or an abort.
struct RolloutTimer {
    env: Arc<RolloutEnv>,
    until_ms: u64,
    yielded: bool,
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for RolloutTimer {
    async fn ready(&mut self) {
        let wait = self
            .until_ms
            .saturating_sub(self.env.cluster.now_ms())
            .min(self.env.remaining_ms());
        if wait == 0 {
            // A timer already due is how a guest polls without blocking; yield, so one that
            // does so in a loop never starves the runner's other tasks.
            if !self.yielded {
                self.yielded = true;
                tokio::task::yield_now().await;
            }
            return;
        }
        let env = self.env.clone();
        // Either way the guest wakes; an abort is then answered at its next host call.
        let _ = env.unless_aborted(env.cluster.sleep_ms(wait)).await;
    }
}
