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
                $error::Timeout(m) => format!("timeout: {m}"),
                $error::Denied(m) => format!("denied: {m}"),
                $error::Infrastructure(m) => format!("infrastructure: {m}"),
                $error::Aborted(m) => format!("aborted: {m}"),
                $error::VerificationFailed(m) => format!("verification failed: {m}"),
            }
        }
    };
}

mod helpers;
pub mod verify;

pub use helpers::{IntOrPercent, log, params, split_weights};

/// Raw bindings for the `strategy` world, generated from `sdk/wit`.
pub mod strategy {
    wit_bindgen::generate!({
        path: "../wit",
        world: "strategy",
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

pub use strategy::exports::slipway::deploy::strategy_handler::Guest as Strategy;
pub use strategy::slipway::deploy::types::{
    Error, HookPoint, HookStatus, HttpCheck, HttpCheckReport, LogLevel, Outcome, ProbeReport, ReplicaCounts, Revision,
    RolloutContext, RouteWeight,
};
pub use strategy::slipway::deploy::{clock, lifecycle, logging, routing, scaling, verification};

describe_error!(Error);

/// Exports a type implementing [`Strategy`] as the component's strategy.
#[macro_export]
macro_rules! export_strategy {
    ($ty:ident) => {
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
