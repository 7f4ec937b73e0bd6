//! Host bindings generated from the WIT packages: `sdk/wit` for the current host API, and the
//! frozen `sdk/wit/released/` copy of every older minor version the runner still serves. They
//! are the single source of truth for every type that crosses the sandbox boundary.

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

/// Host API 0.1.x, frozen: modules built against 0.1.0 or 0.1.1 link here, and the host
/// implements it by translating to and from the current API (`host/v0_1.rs`).
pub mod v0_1 {
    /// The 0.1 `strategy` world.
    pub mod strategy {
        wasmtime::component::bindgen!({
            path: "../sdk/wit/released/slipway-deploy@0.1.1.wit",
            world: "strategy",
            imports: { default: async | trappable },
            exports: { default: async },
            additional_derives: [PartialEq, Eq],
        });
    }

    /// The 0.1 `hook` world.
    pub mod hook {
        wasmtime::component::bindgen!({
            path: "../sdk/wit/released/slipway-deploy@0.1.1.wit",
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
}

pub use strategy::slipway::deploy::traffic::{TrafficStats as GuestTraffic, Window};
pub use strategy::slipway::deploy::types::{
    Error as ApiError, ExecOutput, HookContext, HookPoint, HookStatus, HttpCheck, HttpCheckReport, LogLevel, Outcome,
    ProbeReport, ReplicaCounts, Revision, RolloutContext, RouteWeight, TimedOut,
};

/// The version of the host API this runner implements. Modules built against any newer
/// version are refused at load time with an "upgrade the runner" message; modules built
/// against an older one link to the frozen bindings of their minor version ([`v0_1`]).
pub const API_VERSION: (u64, u64, u64) = (0, 2, 0);
/// The WIT package the host API lives in.
pub const API_PACKAGE: &str = "slipway:deploy";
/// The export a `validating-strategy` adds: its parameter check.
pub const PARAMS_CHECK: &str = "slipway:deploy/params-check@0.2.0";
