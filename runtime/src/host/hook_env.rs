//! `slipway:deploy/hook-env`: capabilities a hook may be granted. None is granted yet, so
//! every call says so plainly and the hook can react.

use crate::bindings::hook::slipway::deploy::hook_env::Host;
use crate::bindings::{ApiError, ExecOutput};
use crate::guest::GuestState;

impl Host for GuestState {
    async fn exec(
        &mut self,
        args: Vec<String>,
        _timeout_ms: u64,
    ) -> wasmtime::Result<Result<ExecOutput, ApiError>> {
        self.enter()?;
        let program = args.first().cloned().unwrap_or_default();
        Ok(Err(ApiError::Denied(format!(
            "exec of {program:?}: this hook is not granted the exec capability; grant it in the app's spec"
        ))))
    }
}
