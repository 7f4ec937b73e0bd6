//! Host API 0.1.x, served to modules built against it: each function translates its
//! arguments to the current API, calls the current implementation, and translates the answer
//! back. Only the shapes differ (0.1's `timeout` error carries a string alone); what a call
//! does is the same, so a 0.1 module behaves exactly as it did on the runner it was built for.

use crate::bindings::hook::slipway::deploy as now_hook;
use crate::bindings::strategy::slipway::deploy as now;
use crate::bindings::v0_1::hook::slipway::deploy as old_hook;
use crate::bindings::v0_1::strategy::slipway::deploy as old;
use crate::guest::GuestState;

/// A value of one API version as the same value of another.
pub(crate) trait Translate<T> {
    fn translate(self) -> T;
}

macro_rules! same {
    ($($ty:ty),*) => {
        $(impl Translate<$ty> for $ty {
            fn translate(self) -> $ty {
                self
            }
        })*
    };
}
same!((), bool, u8, u16, u32, u64, i32, String);

impl<A: Translate<B>, B> Translate<Option<B>> for Option<A> {
    fn translate(self) -> Option<B> {
        self.map(Translate::translate)
    }
}

impl<A: Translate<B>, B> Translate<Vec<B>> for Vec<A> {
    fn translate(self) -> Vec<B> {
        self.into_iter().map(Translate::translate).collect()
    }
}

impl<A: Translate<C>, B: Translate<D>, C, D> Translate<(C, D)> for (A, B) {
    fn translate(self) -> (C, D) {
        (self.0.translate(), self.1.translate())
    }
}

impl<A: Translate<C>, B: Translate<D>, C, D> Translate<Result<C, D>> for Result<A, B> {
    fn translate(self) -> Result<C, D> {
        self.map(Translate::translate).map_err(Translate::translate)
    }
}

/// Records with the same fields in both versions, translated field by field, both ways.
macro_rules! records {
    ($($a:ident :: $name:ident <=> $b:ident { $($field:ident),* $(,)? })*) => {
        $(
            impl Translate<$b::$name> for $a::$name {
                fn translate(self) -> $b::$name {
                    $b::$name { $($field: self.$field.translate()),* }
                }
            }
            impl Translate<$a::$name> for $b::$name {
                fn translate(self) -> $a::$name {
                    $a::$name { $($field: self.$field.translate()),* }
                }
            }
        )*
    };
}

/// Enums with the same cases in both versions.
macro_rules! enums {
    ($($a:ident :: $name:ident <=> $b:ident { $($case:ident),* $(,)? })*) => {
        $(
            impl Translate<$b::$name> for $a::$name {
                fn translate(self) -> $b::$name {
                    match self { $($a::$name::$case => $b::$name::$case),* }
                }
            }
            impl Translate<$a::$name> for $b::$name {
                fn translate(self) -> $a::$name {
                    match self { $($b::$name::$case => $a::$name::$case),* }
                }
            }
        )*
    };
}

mod t0 {
    pub use crate::bindings::v0_1::hook::slipway::deploy::outbound_http::{HttpRequest, HttpResponse};
    pub use crate::bindings::v0_1::strategy::slipway::deploy::types::*;
}
mod t1 {
    pub use crate::bindings::hook::slipway::deploy::outbound_http::{HttpRequest, HttpResponse};
    pub use crate::bindings::strategy::slipway::deploy::types::*;
}

records! {
    t0::Revision <=> t1 { number, replicas }
    t0::ReplicaCounts <=> t1 { desired, current, ready, failed }
    t0::RouteWeight <=> t1 { revision, weight }
    t0::RolloutContext <=> t1 { app, rollout, target, active, others, params, resumed }
    t0::Outcome <=> t1 { summary }
    t0::ProbeReport <=> t1 { revision, probed, ready, failures }
    t0::HttpCheck <=> t1 { revision, path, expect_status, timeout_ms }
    t0::HttpCheckReport <=> t1 { checked, passed, failures }
    t0::HookContext <=> t1 { app, rollout, point, target, active, params, attempt }
    t0::ExecOutput <=> t1 { exit_code, output_tail }
    t0::HttpRequest <=> t1 { method, url, headers, body, timeout_ms }
    t0::HttpResponse <=> t1 { status, headers, body }
}

enums! {
    t0::HookPoint <=> t1 { Pre, Mid, Post, Rollback }
    t0::HookStatus <=> t1 { NotConfigured, Succeeded, FailureIgnored }
    t0::LogLevel <=> t1 { Trace, Debug, Info, Warn, Error }
}

impl Translate<t0::Error> for t1::Error {
    fn translate(self) -> t0::Error {
        match self {
            t1::Error::NotFound(m) => t0::Error::NotFound(m),
            t1::Error::Invalid(m) => t0::Error::Invalid(m),
            // 0.1 has the words only; the counts are in them already.
            t1::Error::Timeout(t) => t0::Error::Timeout(t.message),
            t1::Error::Denied(m) => t0::Error::Denied(m),
            t1::Error::Infrastructure(m) => t0::Error::Infrastructure(m),
            t1::Error::Aborted(m) => t0::Error::Aborted(m),
            t1::Error::VerificationFailed(m) => t0::Error::VerificationFailed(m),
        }
    }
}

impl Translate<t1::Error> for t0::Error {
    fn translate(self) -> t1::Error {
        match self {
            t0::Error::NotFound(m) => t1::Error::NotFound(m),
            t0::Error::Invalid(m) => t1::Error::Invalid(m),
            t0::Error::Timeout(message) => t1::Error::Timeout(t1::TimedOut { message, counts: None }),
            t0::Error::Denied(m) => t1::Error::Denied(m),
            t0::Error::Infrastructure(m) => t1::Error::Infrastructure(m),
            t0::Error::Aborted(m) => t1::Error::Aborted(m),
            t0::Error::VerificationFailed(m) => t1::Error::VerificationFailed(m),
        }
    }
}

/// Implements a 0.1 interface's `Host` by calling the current one: every argument and the
/// answer translated.
macro_rules! serve {
    ($old:ident :: $iface:ident => $now:ident { $(fn $f:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)* }) => {
        impl $old::$iface::Host for GuestState {
            $(async fn $f(&mut self, $($arg: $ty),*) -> wasmtime::Result<$ret> {
                let answer = $now::$iface::Host::$f(self, $($arg.translate()),*).await?;
                Ok(answer.translate())
            })*
        }
    };
}

impl old::types::Host for GuestState {}

serve!(old::logging => now {
    fn log(level: t0::LogLevel, message: String) -> ();
});
serve!(old::clock => now {
    fn now() -> u64;
    fn sleep(ms: u64) -> Result<(), t0::Error>;
});
serve!(old::scaling => now {
    fn scale(revision: u32, replicas: u32) -> Result<(), t0::Error>;
    fn counts(revision: u32) -> Result<t0::ReplicaCounts, t0::Error>;
    fn wait_ready(revision: u32, ready: u32, timeout_ms: u64) -> Result<t0::ReplicaCounts, t0::Error>;
    fn wait_stopped(revision: u32, current: u32, timeout_ms: u64) -> Result<t0::ReplicaCounts, t0::Error>;
});
serve!(old::routing => now {
    fn set_weights(weights: Vec<t0::RouteWeight>) -> Result<(), t0::Error>;
    fn weights() -> Vec<t0::RouteWeight>;
});
serve!(old::verification => now {
    fn probe(revision: u32) -> Result<t0::ProbeReport, t0::Error>;
    fn check_http(check: t0::HttpCheck) -> Result<t0::HttpCheckReport, t0::Error>;
});
serve!(old::lifecycle => now {
    fn run_hook(point: t0::HookPoint) -> Result<t0::HookStatus, t0::Error>;
    fn set_maintenance(on: bool) -> Result<(), t0::Error>;
    fn progress(percent: u8, message: String) -> ();
});
serve!(old_hook::hook_env => now_hook {
    fn exec(args: Vec<String>, timeout_ms: u64) -> Result<t0::ExecOutput, t0::Error>;
});
serve!(old_hook::outbound_http => now_hook {
    fn send(request: t0::HttpRequest) -> Result<t0::HttpResponse, t0::Error>;
});
