//! A guest's failure as data: which module, which digest, what kind, and what it said.
//!
//! **Invariant:** nothing a guest does reaches the runner as a panic or a hang; every way a
//! guest can fail ends here, as a [`GuestFailure`] recorded on its own rollout.

use serde::{Deserialize, Serialize};

use crate::bindings::ApiError;

/// What went wrong inside (or with) a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// It ran its own code for longer than its CPU budget.
    CpuDeadline,
    /// It tried to grow its memory past the cap.
    MemoryLimit,
    /// It recursed past the wasm stack limit.
    StackOverflow,
    /// It panicked (or raised an uncaught exception); the message is its own.
    Panic,
    /// It trapped for another reason (for example an out-of-bounds access).
    Trap,
    /// It made a call the host rejected as invalid and then gave up with that error.
    InvalidCall,
    /// It made more host calls than its budget allows.
    HostCallLimit,
    /// It wrote more log bytes than its budget allows.
    LogLimit,
    /// The rollout's progress deadline passed.
    Deadline,
    /// An operator aborted the rollout.
    Aborted,
    /// The strategy returned an error of its own.
    StrategyError,
    /// The module could not be loaded at all.
    InvalidModule,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::CpuDeadline => "cpu-deadline",
            FailureKind::MemoryLimit => "memory-limit",
            FailureKind::StackOverflow => "stack-overflow",
            FailureKind::Panic => "panic",
            FailureKind::Trap => "trap",
            FailureKind::InvalidCall => "invalid-call",
            FailureKind::HostCallLimit => "host-call-limit",
            FailureKind::LogLimit => "log-limit",
            FailureKind::Deadline => "deadline",
            FailureKind::Aborted => "aborted",
            FailureKind::StrategyError => "strategy-error",
            FailureKind::InvalidModule => "invalid-module",
        }
    }
}

/// A guest failure, as recorded on its rollout and shown to people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{module} ({short}) failed: {kind}: {message}", short = short_digest(digest), kind = kind.as_str())]
pub struct GuestFailure {
    /// The module's name: `builtin:rolling`, a file name, or an uploaded name.
    pub module: String,
    /// `sha256:…` of the component.
    pub digest: String,
    pub kind: FailureKind,
    /// What happened, in words.
    pub message: String,
    /// The last bytes the guest wrote to stderr, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
}

fn short_digest(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

/// Limits the host enforces by trapping the guest. Carried inside the trap's error so the
/// failure can be classified afterwards.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestLimit {
    #[error("the guest used its whole CPU budget of {0} ms")]
    Cpu(u64),
    #[error("the guest tried to grow its memory to {desired} bytes, over the cap of {cap} bytes")]
    Memory { desired: usize, cap: usize },
    #[error("the guest made more than {0} host calls")]
    HostCalls(u64),
    #[error("the guest wrote more than {0} bytes of log messages")]
    LogBytes(usize),
}

impl GuestLimit {
    pub fn kind(&self) -> FailureKind {
        match self {
            GuestLimit::Cpu(_) => FailureKind::CpuDeadline,
            GuestLimit::Memory { .. } => FailureKind::MemoryLimit,
            GuestLimit::HostCalls(_) => FailureKind::HostCallLimit,
            GuestLimit::LogBytes(_) => FailureKind::LogLimit,
        }
    }
}

/// Turns the error a guest call ended with into a kind and a message.
pub fn classify(error: &wasmtime::Error, stderr_tail: &str) -> (FailureKind, String) {
    if let Some(limit) = error.downcast_ref::<GuestLimit>() {
        return (limit.kind(), limit.to_string());
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::StackOverflow => (
                FailureKind::StackOverflow,
                format!(
                    "the guest overflowed its {} KiB wasm stack (unbounded recursion?)",
                    crate::engine::MAX_WASM_STACK >> 10
                ),
            ),
            wasmtime::Trap::Interrupt => (FailureKind::CpuDeadline, "the guest was interrupted".to_string()),
            _ => match panic_message(stderr_tail) {
                Some(message) => (FailureKind::Panic, message),
                None => (FailureKind::Trap, format!("the guest trapped: {trap}")),
            },
        };
    }
    match panic_message(stderr_tail) {
        Some(message) => (FailureKind::Panic, message),
        None => (FailureKind::Trap, format!("{error:#}")),
    }
}

/// The panic message from a guest's stderr: Rust's `panicked at FILE:LINE:COL:\nMESSAGE`, or
/// the last line of a Python traceback.
fn panic_message(stderr: &str) -> Option<String> {
    if let Some(at) = stderr.rfind("panicked at ") {
        let rest = &stderr[at + "panicked at ".len()..];
        let (location, message) = rest.split_once('\n').unwrap_or((rest, ""));
        let message: Vec<&str> = message.lines().take_while(|l| !l.starts_with("note:")).collect();
        let location = location.trim_end_matches(':');
        return Some(format!("panicked at {location}: {}", message.join(" ").trim()));
    }
    if stderr.contains("Traceback (most recent call last)") {
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty())?;
        return Some(format!("uncaught exception: {}", last.trim()));
    }
    None
}

/// The failure for a strategy that returned `Err(error)` from `run`.
pub fn from_strategy_error(error: &ApiError, last_invalid_call: Option<&str>) -> (FailureKind, String) {
    match error {
        ApiError::Invalid(message) if last_invalid_call.is_some() => (
            FailureKind::InvalidCall,
            format!(
                "the host rejected a call as invalid: {}",
                last_invalid_call.unwrap_or(message)
            ),
        ),
        ApiError::Aborted(message) if message.contains("deadline") => (FailureKind::Deadline, message.clone()),
        ApiError::Aborted(message) if message.contains("by an operator") => (FailureKind::Aborted, message.clone()),
        other => (FailureKind::StrategyError, describe_api_error(other)),
    }
}

/// `error` in words, naming its case.
pub fn describe_api_error(error: &ApiError) -> String {
    match error {
        ApiError::NotFound(m) => format!("not found: {m}"),
        ApiError::Invalid(m) => format!("invalid: {m}"),
        ApiError::Timeout(m) => format!("timeout: {m}"),
        ApiError::Denied(m) => format!("denied: {m}"),
        ApiError::Infrastructure(m) => format!("infrastructure: {m}"),
        ApiError::Aborted(m) => format!("aborted: {m}"),
        ApiError::VerificationFailed(m) => format!("verification failed: {m}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_panics_keep_their_message() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:7:5:\nfixture panicked: the canary exploded\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).unwrap(),
            "panicked at src/lib.rs:7:5: fixture panicked: the canary exploded"
        );
    }

    #[test]
    fn python_tracebacks_keep_their_last_line() {
        let stderr = "Traceback (most recent call last):\n  File \"app.py\", line 3\nValueError: bad wave\n";
        assert_eq!(
            panic_message(stderr).unwrap(),
            "uncaught exception: ValueError: bad wave"
        );
    }

    #[test]
    fn invalid_errors_after_a_rejected_call_are_invalid_calls() {
        let e = ApiError::Invalid("weight 1000".into());
        assert_eq!(from_strategy_error(&e, Some("weight 1000")).0, FailureKind::InvalidCall);
        assert_eq!(from_strategy_error(&e, None).0, FailureKind::StrategyError);
    }
}
