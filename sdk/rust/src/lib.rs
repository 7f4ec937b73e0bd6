//! Write Slipway deployment strategies and lifecycle hooks in Rust.
//!
//! A strategy is a type implementing [`Strategy`], exported with [`export_strategy!`]; build
//! the crate as a `cdylib` for `wasm32-wasip2` and the output is a component Slipway can run.
//!
//! ```ignore
//! use slipway_sdk::{Error, Outcome, RolloutContext, Strategy, scaling, routing, RouteWeight};
//!
//! struct AllAtOnce;
//!
//! impl Strategy for AllAtOnce {
//!     fn run(ctx: RolloutContext) -> Result<Outcome, Error> {
//!         let target = ctx.target;
//!         scaling::scale(target.number, target.replicas)?;
//!         scaling::wait_ready(target.number, target.replicas, 600_000)?;
//!         routing::set_weights(&[RouteWeight { revision: target.number, weight: 256 }])?;
//!         if let Some(active) = ctx.active {
//!             scaling::scale(active.number, 0)?;
//!         }
//!         Ok(Outcome { summary: format!("{} replicas on revision {}", target.replicas, target.number) })
//!     }
//! }
//!
//! slipway_sdk::export_strategy!(AllAtOnce);
//! ```
//!
//! The host API itself is documented in the WIT package `slipway:deploy` (`sdk/wit`); every
//! function there is a plain Rust function here, named in snake_case.

/// Writes the host API's error in words, naming its case: `timeout: revision 2: …`. (The
/// generated `Display` shows the Rust variant instead.)
macro_rules! describe_error {
    ($error:ident) => {
        /// The error in words, naming its case, e.g. `denied: exec of "./migrate": …`.
        pub fn describe(error: &$error) -> String {
            match error {
                $error::NotFound(m) => format!("not found: {m}"),
                $error::Invalid(m) => format!("invalid: {m}"),
                $error::Timeout(t) => format!("timeout: {}", t.message),
                $error::Denied(m) => format!("denied: {m}"),
                $error::Infrastructure(m) => format!("infrastructure: {m}"),
                $error::Aborted(m) => format!("aborted: {m}"),
                $error::VerificationFailed(m) => format!("verification failed: {m}"),
            }
        }
    };
}

pub mod analysis;
mod helpers;
pub mod verify;

pub use helpers::{IntOrPercent, log, params, parse_params, split_weights};

/// Raw bindings for the `validating-strategy` world (the `strategy` world and its parameter
/// check), generated from `sdk/wit`.
pub mod strategy {
    wit_bindgen::generate!({
        path: "../wit",
        world: "validating-strategy",
        pub_export_macro: true,
        export_macro_name: "export_strategy",
        default_bindings_module: "slipway_sdk::strategy",
        additional_derives: [PartialEq, Eq],
    });
}

/// Everything a lifecycle hook needs: its trait, its types and the functions it may call.
///
/// ```ignore
/// use slipway_sdk::hook::{Hook, HookContext, hook_env};
///
/// struct Migrate;
///
/// impl Hook for Migrate {
///     fn run(ctx: HookContext) -> Result<(), String> {
///         let out = hook_env::exec(&["./migrate".to_string()], 60_000).map_err(|e| format!("{e:?}"))?;
///         match out.exit_code {
///             Some(0) => Ok(()),
///             code => Err(format!("migration exited with {code:?}: {}", out.output_tail)),
///         }
///     }
/// }
///
/// slipway_sdk::export_hook!(Migrate);
/// ```
pub mod hook {
    /// Raw bindings for the `hook` world, generated from `sdk/wit`.
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "hook",
            pub_export_macro: true,
            export_macro_name: "export_hook",
            default_bindings_module: "slipway_sdk::hook::bindings",
            additional_derives: [PartialEq, Eq],
        });
    }

    pub use bindings::exports::slipway::deploy::hook_handler::Guest as Hook;
    pub use bindings::slipway::deploy::outbound_http::{HttpRequest, HttpResponse};
    pub use bindings::slipway::deploy::types::{
        Error, ExecOutput, HookContext, HookPoint, HttpCheck, HttpCheckReport, LogLevel, ProbeReport, Revision,
    };
    pub use bindings::slipway::deploy::{clock, hook_env, logging, outbound_http, verification};

    describe_error!(Error);
}

pub use strategy::slipway::deploy::traffic::{TrafficStats, Window};
pub use strategy::slipway::deploy::types::{
    Error, HookPoint, HookStatus, HttpCheck, HttpCheckReport, LogLevel, Outcome, ProbeReport, ReplicaCounts, Revision,
    RolloutContext, RouteWeight, TimedOut,
};
pub use strategy::slipway::deploy::{clock, lifecycle, logging, metrics, routing, scaling, traffic, verification};

describe_error!(Error);

/// A deployment strategy.
pub trait Strategy {
    /// Moves the app from `ctx.active` to `ctx.target`; see `strategy-handler.run` in the WIT.
    fn run(ctx: RolloutContext) -> Result<Outcome, Error>;

    /// Checks the parameters (`params`, JSON) when a spec naming this strategy is submitted:
    /// an error is shown to whoever submitted it (HTTP 422) and nothing is deployed. The
    /// default accepts anything; parse them as `run` does, e.g. with [`parse_params`].
    fn validate(params: &str) -> Result<(), String> {
        let _ = params;
        Ok(())
    }
}

/// Exports a type implementing [`Strategy`] as the component's strategy, with its parameter
/// check.
#[macro_export]
macro_rules! export_strategy {
    ($ty:ident) => {
        impl $crate::strategy::exports::slipway::deploy::strategy_handler::Guest for $ty {
            fn run(ctx: $crate::RolloutContext) -> Result<$crate::Outcome, $crate::Error> {
                <$ty as $crate::Strategy>::run(ctx)
            }
        }
        impl $crate::strategy::exports::slipway::deploy::params_check::Guest for $ty {
            fn validate(params: String) -> Result<(), String> {
                <$ty as $crate::Strategy>::validate(&params)
            }
        }
        $crate::strategy::export_strategy!($ty with_types_in $crate::strategy);
    };
}

/// Exports a type implementing [`hook::Hook`] as the component's lifecycle hook.
#[macro_export]
macro_rules! export_hook {
    ($ty:ident) => {
        $crate::hook::bindings::export_hook!($ty with_types_in $crate::hook::bindings);
    };
}
