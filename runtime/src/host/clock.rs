//! `slipway:deploy/clock`: the rollout's clock, virtual under simulation.

use crate::bindings::ApiError;
use crate::bindings::strategy::slipway::deploy::clock::Host;
use crate::failure::Stop;
use crate::guest::GuestState;

impl Host for GuestState {
    async fn now(&mut self) -> wasmtime::Result<u64> {
        self.enter()?;
        Ok(self.env.cluster.now_ms())
    }

    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<Result<(), ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        let remaining = self.env.remaining_ms();
        let env = self.env.clone();
        if env
            .unless_aborted(env.cluster.sleep_ms(ms.min(remaining)))
            .await
            .is_err()
        {
            return Ok(Err(self.stop(Stop::Aborted)));
        }
        if ms >= remaining {
            return Ok(Err(self.stop(Stop::Deadline)));
        }
        Ok(Ok(()))
    }
}
