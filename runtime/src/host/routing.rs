//! `slipway:deploy/routing`: route weights across revisions.

use crate::bindings::strategy::slipway::deploy::routing::Host;
use crate::bindings::{ApiError, RouteWeight};
use crate::driver::validate_weights;
use crate::guest::GuestState;

impl Host for GuestState {
    async fn set_weights(&mut self, weights: Vec<RouteWeight>) -> wasmtime::Result<Result<(), ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        for weight in &weights {
            if let Err(error) = self.known(weight.revision) {
                return Ok(Err(error));
            }
        }
        let pairs: Vec<(u32, u32)> = weights.iter().map(|w| (w.revision, w.weight)).collect();
        if let Err(error) = validate_weights(&pairs) {
            return Ok(Err(self.driver_error(error)));
        }
        let result = self.env.set_weights(&pairs).await;
        Ok(result.map_err(|e| self.driver_error(e)))
    }

    async fn weights(&mut self) -> wasmtime::Result<Vec<RouteWeight>> {
        self.enter()?;
        let weights = self.env.cluster.weights();
        Ok(weights
            .into_iter()
            .map(|(revision, weight)| RouteWeight { revision, weight })
            .collect())
    }
}
