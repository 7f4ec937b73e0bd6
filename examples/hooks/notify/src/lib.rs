//! Example lifecycle hook: notifies a webhook about the rollout.
//!
//! POSTs a JSON document describing the rollout to `url`:
//!
//! ```json
//! {"app": "hello", "rollout": "…", "point": "post", "target": 4, "active": 3, "attempt": 1}
//! ```
//!
//! (`active` is `null` on an app's first deploy.) An answer with a status other than 2xx
//! fails the hook unless `ignore-status` is true; the hook's `policy` then decides what
//! happens to the rollout. A webhook that cannot be reached always fails the hook.
//!
//! Parameters (the hook's `params` in the spec):
//!
//! - `url` (required): an absolute `http://` URL; its host must be granted.
//! - `headers`: an object of extra request headers, e.g. `{ authorization = "Bearer …" }`.
//!   `content-type` is `application/json` unless given here.
//! - `ignore-status`: log a non-2xx answer as a warning instead of failing (default false).
//! - `timeout-seconds`: how long to wait for the answer (default 10); the hook's own
//!   `timeout` caps it.
//!
//! The hook needs `grants = ["http:HOST"]` (or `"http:HOST:PORT"`) for the URL's host.
//! Build and upload it (from the workspace root):
//!
//! ```sh
//! cargo build --target wasm32-wasip2 --release -p example-hook-notify
//! slipway module push target/wasm32-wasip2/release/example_hook_notify.wasm --name notify
//! ```
//!
//! and use it in `slipway.toml`:
//!
//! ```toml
//! [hooks.post]
//! module = "notify"
//! params = { url = "http://chat.internal:8080/hooks/deploys" }
//! timeout = "30s"
//! policy = "ignore"
//! grants = ["http:chat.internal:8080"]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use slipway_sdk::hook::{Hook, HookContext, HookPoint, HttpRequest, LogLevel, logging, outbound_http};

/// Example parameters, shown in the error for missing or malformed ones.
const EXAMPLE: &str = r#"params = { url = "http://chat.internal:8080/hooks/deploys" }"#;

/// How much of an answer's body goes into a failure or log line.
const BODY_SNIPPET: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    ignore_status: bool,
    #[serde(default = "default_timeout_seconds")]
    timeout_seconds: u32,
}

fn default_timeout_seconds() -> u32 {
    10
}

struct Notify;

impl Hook for Notify {
    fn run(ctx: HookContext) -> Result<(), String> {
        let raw = if ctx.params.trim().is_empty() {
            "{}"
        } else {
            ctx.params.as_str()
        };
        let params: Params =
            serde_json::from_str(raw).map_err(|e| format!("notify: bad params ({e}); expected e.g. {EXAMPLE}"))?;
        let Some(url) = params.url.filter(|url| !url.trim().is_empty()) else {
            return Err(format!(
                "notify: params.url is required: the webhook's http:// URL, e.g. {EXAMPLE}"
            ));
        };
        if params.timeout_seconds == 0 {
            return Err("notify: params.timeout-seconds must be at least 1".to_string());
        }

        let document = serde_json::json!({
            "app": ctx.app,
            "rollout": ctx.rollout,
            "point": point_name(ctx.point),
            "target": ctx.target.number,
            "active": ctx.active.map(|revision| revision.number),
            "attempt": ctx.attempt,
        });
        let mut headers: Vec<(String, String)> = params.headers.into_iter().collect();
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("content-type".to_string(), "application/json".to_string()));
        }
        let request = HttpRequest {
            method: "POST".to_string(),
            url: url.clone(),
            headers,
            body: document.to_string().into_bytes(),
            timeout_ms: params.timeout_seconds.saturating_mul(1000),
        };

        logging::log(
            LogLevel::Info,
            &format!(
                "notify: POST {url} ({} of revision {})",
                point_name(ctx.point),
                ctx.target.number
            ),
        );
        let response = outbound_http::send(&request)
            .map_err(|e| format!("notify: POST {url}: {}", slipway_sdk::hook::describe(&e)))?;
        let status = response.status;
        if (200..300).contains(&status) {
            logging::log(LogLevel::Info, &format!("notify: webhook answered {status}"));
            return Ok(());
        }
        let body = snippet(&response.body);
        let answer = if body.is_empty() {
            format!("{status}")
        } else {
            format!("{status}: {body}")
        };
        if params.ignore_status {
            logging::log(
                LogLevel::Warn,
                &format!("notify: webhook answered {answer} (ignored: ignore-status is set)"),
            );
            Ok(())
        } else {
            Err(format!("notify: webhook answered {answer}"))
        }
    }
}

/// The start of an answer's body, as text on one line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(BODY_SNIPPET) {
        Some((end, _)) => format!("{} …", &text[..end]),
        None => text,
    }
}

fn point_name(point: HookPoint) -> &'static str {
    match point {
        HookPoint::Pre => "pre",
        HookPoint::Mid => "mid",
        HookPoint::Post => "post",
        HookPoint::Rollback => "rollback",
    }
}

slipway_sdk::export_hook!(Notify);
