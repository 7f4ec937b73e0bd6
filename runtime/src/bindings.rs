//! Host bindings generated from the WIT package in `sdk/wit`: the single source of truth for
//! every type that crosses the sandbox boundary.

/// The `strategy` world: the shared interfaces and the strategy's export.
pub mod strategy {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "strategy",
        imports: { default: async | trappable },
        exports: { default: async },
        additional_derives: [PartialEq, Eq],
    });
}

/// The `hook` world, reusing the interfaces it shares with the strategy world.
pub mod hook {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "hook",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "slipway:deploy/types": super::strategy::slipway::deploy::types,
            "slipway:deploy/logging": super::strategy::slipway::deploy::logging,
            "slipway:deploy/clock": super::strategy::slipway::deploy::clock,
            "slipway:deploy/verification": super::strategy::slipway::deploy::verification,
        },
    });
}

pub use strategy::slipway::deploy::types::{
    Error as ApiError, ExecOutput, HookContext, HookPoint, HookStatus, HttpCheck, HttpCheckReport, LogLevel, Outcome,
    ProbeReport, ReplicaCounts, Revision, RolloutContext, RouteWeight,
};

/// The version of the host API this runner implements. Modules built against any newer
/// version are refused at load time with an "upgrade the runner" message; modules built
/// against an older, semver-compatible one (0.1.0 for 0.1.1) link to this one's functions.
pub const API_VERSION: (u64, u64, u64) = (0, 1, 1);
/// The WIT package the host API lives in.
pub const API_PACKAGE: &str = "slipway:deploy";
