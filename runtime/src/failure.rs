//! A guest's failure as data: which module, which digest, what kind, and what it said.
//!
//! **Invariant:** nothing a guest does reaches the runner as a panic or a hang; every way a
//! guest can fail ends here, as a [`GuestFailure`] recorded on its own rollout.

use serde::{Deserialize, Serialize};

use crate::bindings::ApiError;

/// What went wrong inside (or with) a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The strategy returned success, but the host's check of what it left behind failed:
    /// no traffic routed, a routed revision without ready instances, or the target short of
    /// its replicas.
    SuccessCheck,
    /// The target failed while the host watched it after the strategy succeeded.
    Soak,
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
            FailureKind::SuccessCheck => "success-check",
            FailureKind::Soak => "soak",
        }
    }
}

/// A guest failure, as recorded on its rollout and shown to people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema)]
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
    /// The guest was told to stop (its deadline passed, or an operator aborted the rollout)
    /// and went on calling the host instead of returning.
    #[error("{0}, and the guest went on instead of returning")]
    KeptGoing(Stop),
    /// The progress deadline passed while the guest waited on a WASI clock.
    #[error("the rollout's progress deadline passed while the guest was waiting on a clock")]
    PastDeadline,
    /// A parameter check called the host API; it belongs to no rollout and may only read
    /// its parameters.
    #[error("params-check.validate called the host API; it may only read its parameters and answer")]
    Detached,
}

/// Why a guest was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    #[error("the rollout's progress deadline passed")]
    Deadline,
    #[error("an operator aborted the rollout")]
    Aborted,
}

impl Stop {
    pub fn kind(self) -> FailureKind {
        match self {
            Stop::Deadline => FailureKind::Deadline,
            Stop::Aborted => FailureKind::Aborted,
        }
    }
}

/// The most bytes of any text a guest hands the host that is kept: an outcome's summary, an
/// error's message, a hook's failure, a path or a command line it asked for. Longer text is
/// cut (log lines have their own, configurable cap).
pub const MAX_GUEST_TEXT: usize = 4 << 10;

/// Cuts `text` to at most `limit` bytes on a character boundary, saying how much was cut.
pub fn cap(mut text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let cut = text.len();
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!(" …[{} more bytes cut]", cut - end));
    text
}

impl GuestLimit {
    pub fn kind(&self) -> FailureKind {
        match self {
            GuestLimit::Cpu(_) => FailureKind::CpuDeadline,
            GuestLimit::Memory { .. } => FailureKind::MemoryLimit,
            GuestLimit::HostCalls(_) => FailureKind::HostCallLimit,
            GuestLimit::LogBytes(_) => FailureKind::LogLimit,
            GuestLimit::KeptGoing(stop) => stop.kind(),
            GuestLimit::PastDeadline => FailureKind::Deadline,
            GuestLimit::Detached => FailureKind::InvalidCall,
        }
    }
}

/// Turns the error a guest call ended with into a kind and a message.
pub fn classify(error: &wasmtime::Error, stderr_tail: &str) -> (FailureKind, String) {
    if let Some(limit) = error.downcast_ref::<GuestLimit>() {
        return (limit.kind(), limit.to_string());
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        match trap {
            wasmtime::Trap::StackOverflow => {
                return (
                    FailureKind::StackOverflow,
                    format!(
                        "the guest overflowed its {} KiB wasm stack (unbounded recursion?)",
                        crate::engine::MAX_WASM_STACK >> 10
                    ),
                );
            }
            wasmtime::Trap::Interrupt => return (FailureKind::CpuDeadline, "the guest was interrupted".to_string()),
            wasmtime::Trap::MemoryOutOfBounds => {
                if let Some(depth) = recursion(error) {
                    // Languages that keep their stack in linear memory (Rust, C) overflow it
                    // by stepping below address 0, which wasm sees as an out-of-bounds access.
                    return (
                        FailureKind::StackOverflow,
                        format!(
                            "the guest ran out of the stack in its own memory: an out-of-bounds access {depth}; unbounded recursion, or frames too large for its stack"
                        ),
                    );
                }
            }
            _ => {}
        }
        if let Some(message) = panic_message(stderr_tail) {
            return (FailureKind::Panic, message);
        }
        return (
            FailureKind::Trap,
            with_last_words(format!("the guest trapped: {trap}"), stderr_tail),
        );
    }
    match panic_message(stderr_tail) {
        Some(message) => (FailureKind::Panic, message),
        None => (FailureKind::Trap, with_last_words(format!("{error:#}"), stderr_tail)),
    }
}

/// Says how deep the guest was, when its backtrace shows a recursion: most frames in a few
/// functions.
fn recursion(error: &wasmtime::Error) -> Option<String> {
    let frames = error.downcast_ref::<wasmtime::WasmBacktrace>()?.frames();
    let mut functions: Vec<u32> = frames.iter().map(|f| f.func_index()).collect();
    let depth = functions.len();
    functions.sort_unstable();
    functions.dedup();
    if depth < 16 || functions.len() * 4 > depth {
        return None;
    }
    let name = frames
        .first()
        .and_then(|f| f.func_name())
        .map(|n| format!(" in {n}"))
        .unwrap_or_default();
    Some(format!("at least {depth} frames deep{name}"))
}

/// How many of the guest's last stderr lines a trap's message quotes.
const LAST_WORDS_LINES: usize = 5;

/// Appends the guest's last lines on stderr to `message`: for a trap they are often the only
/// account of what went wrong (a JavaScript exception, an abort message).
fn with_last_words(message: String, stderr_tail: &str) -> String {
    let lines: Vec<&str> = stderr_tail.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return message;
    }
    let last = &lines[lines.len().saturating_sub(LAST_WORDS_LINES)..];
    format!("{message}; its last words on stderr: {}", last.join(" | "))
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

/// The failure for a strategy that returned `Err(error)` from `run`, given the last call the
/// host rejected as invalid and whether (and why) the host told it to stop.
///
/// An `invalid` error counts as an invalid call only when it is the host's own rejection
/// passed on; a strategy's own `invalid` (or one it caught and replaced) is its error.
pub fn from_strategy_error(
    error: &ApiError,
    last_invalid_call: Option<&str>,
    stopped: Option<Stop>,
) -> (FailureKind, String) {
    match (error, stopped) {
        (ApiError::Invalid(message), _) if last_invalid_call == Some(message.as_str()) => (
            FailureKind::InvalidCall,
            format!("the host rejected a call as invalid: {message}"),
        ),
        (ApiError::Aborted(message), Some(stop)) => (stop.kind(), message.clone()),
        (other, _) => (FailureKind::StrategyError, describe_api_error(other)),
    }
}

/// `error` in words, naming its case.
pub fn describe_api_error(error: &ApiError) -> String {
    match error {
        ApiError::NotFound(m) => format!("not found: {m}"),
        ApiError::Invalid(m) => format!("invalid: {m}"),
        ApiError::Timeout(t) => format!("timeout: {}", t.message),
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
    fn invalid_errors_are_invalid_calls_only_when_passed_on() {
        let e = ApiError::Invalid("weight 1000".into());
        assert_eq!(
            from_strategy_error(&e, Some("weight 1000"), None).0,
            FailureKind::InvalidCall
        );
        assert_eq!(from_strategy_error(&e, None, None).0, FailureKind::StrategyError);
        // A rejected call the strategy handled does not take over its own error.
        let own = ApiError::Invalid("strategy parameters: steps must rise".into());
        let (kind, message) = from_strategy_error(&own, Some("weight 1000"), None);
        assert_eq!(kind, FailureKind::StrategyError);
        assert!(message.contains("steps must rise"), "{message}");
    }

    #[test]
    fn aborted_errors_are_classified_by_what_the_host_said() {
        let e = ApiError::Aborted("the pre hook failed: deadline of the database".into());
        assert_eq!(from_strategy_error(&e, None, None).0, FailureKind::StrategyError);
        assert_eq!(
            from_strategy_error(&e, None, Some(Stop::Deadline)).0,
            FailureKind::Deadline
        );
        assert_eq!(
            from_strategy_error(&e, None, Some(Stop::Aborted)).0,
            FailureKind::Aborted
        );
    }

    #[test]
    fn traps_quote_the_guests_last_words() {
        let message = with_last_words("the guest trapped: unreachable".into(), "a\n\nError: boom\n");
        assert_eq!(
            message,
            "the guest trapped: unreachable; its last words on stderr: a | Error: boom"
        );
        assert_eq!(with_last_words("m".into(), ""), "m");
    }

    #[test]
    fn caps_cut_on_character_boundaries() {
        assert_eq!(cap("héllo".into(), 2), "h …[5 more bytes cut]");
        assert_eq!(cap("short".into(), 10), "short");
    }
}
