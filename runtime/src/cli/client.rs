//! The CLI's HTTP client for the runner's API (the other side of `api.rs`), speaking the
//! typed bodies of [`crate::protocol`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::protocol::ErrorBody;
use crate::store::RolloutRow;

/// A failed API call, in words for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: the runner is not there, or went away mid-answer.
    #[error(
        "cannot reach the runner at {server}: {reason}; is `slipway serve` running? (set --server or SLIPWAY_SERVER)"
    )]
    Unreachable { server: String, reason: String },
    /// The API answered with an error.
    #[error("{message} ({status} {code})")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// Anything else (an answer we could not read).
    #[error("{0}")]
    Other(String),
}

pub struct Client {
    server: String,
    token: Option<String>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

/// How long to wait between attempts to reach a runner that went away while following.
const RECONNECT_PAUSE: Duration = Duration::from_millis(300);

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Self {
        let server = server.trim_end_matches('/').to_string();
        Client {
            server,
            token,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn unreachable(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            server: self.server.clone(),
            reason,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut request = Request::builder().method(method).uri(format!("{}{path}", self.server));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| ClientError::Other(format!("bad request: {e}")))?;
        self.http
            .request(request)
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))
    }

    /// Sends a request with a raw body and reads the typed answer, or the API's error.
    pub async fn call_raw<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let response = self
            .send(method, path, &[("content-type", content_type.to_string())], body)
            .await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Other(format!(
                    "the runner answered {status} with a body this CLI cannot read ({e}); is it a different version?"
                ))
            });
        }
        Err(api_error(status, &bytes))
    }

    /// Sends `body` as JSON and reads the typed answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Other(e.to_string()))?;
        self.call_raw(method, path, "application/json", bytes.into()).await
    }

    /// GETs `path` and hands each piece of its body to `on_chunk` as it arrives (for answers
    /// that stream, such as followed logs) until it returns false, or returns the API's error.
    pub async fn stream(&self, path: &str, mut on_chunk: impl FnMut(&[u8]) -> bool) -> Result<(), ClientError> {
        let response = self.send(Method::GET, path, &[], Bytes::new()).await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(e.to_string()))?;
            if let Some(data) = frame.data_ref()
                && !on_chunk(data)
            {
                break;
            }
        }
        Ok(())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call_raw(Method::GET, path, "application/json", Bytes::new()).await
    }

    /// Follows a rollout's server-sent events, calling `on_event` for each `rollout` event
    /// once, in order; returns its final record from the `end` event.
    ///
    /// If the runner goes away meanwhile (restarted, upgraded), keeps trying to reach it for
    /// up to `reconnect_for`, then goes on from the last event it saw: the rollout resumes on
    /// the restarted runner under the same id. `on_lost` hears when the connection drops.
    pub async fn follow(
        &self,
        rollout: &str,
        reconnect_for: Duration,
        mut on_event: impl FnMut(serde_json::Value),
        mut on_lost: impl FnMut(&ClientError),
    ) -> Result<RolloutRow, ClientError> {
        let mut last_seen: Option<u64> = None;
        let mut lost_at: Option<Instant> = None;
        loop {
            match self.follow_once(rollout, &mut last_seen, &mut on_event).await {
                Ok(end) => return Ok(end),
                Err(error @ ClientError::Unreachable { .. }) => {
                    let since = *lost_at.get_or_insert_with(|| {
                        on_lost(&error);
                        Instant::now()
                    });
                    if since.elapsed() >= reconnect_for {
                        return Err(error);
                    }
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// One connection's worth of [`Client::follow`]. A dropped connection is `Unreachable`.
    async fn follow_once(
        &self,
        rollout: &str,
        last_seen: &mut Option<u64>,
        on_event: &mut impl FnMut(serde_json::Value),
    ) -> Result<RolloutRow, ClientError> {
        let mut headers = vec![("accept", "text/event-stream".to_string())];
        if let Some(seq) = last_seen {
            headers.push(("last-event-id", seq.to_string()));
        }
        let response = self
            .send(
                Method::GET,
                &format!("/v1/rollouts/{rollout}/events"),
                &headers,
                Bytes::new(),
            )
            .await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api {
                status,
                code: "error".into(),
                message: format!("following rollout {rollout}: {message}"),
            });
        }
        let mut body = response.into_body();
        let mut buffer = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(e.to_string()))?;
            let Some(data) = frame.data_ref() else { continue };
            buffer.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = buffer.find("\n\n") {
                let message: String = buffer.drain(..end + 2).collect();
                let mut kind = "message";
                let mut id = None;
                let mut payload = String::new();
                for line in message.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        kind = if value.trim() == "end" { "end" } else { "rollout" };
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim().parse::<u64>().ok();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        payload.push_str(value.strip_prefix(' ').unwrap_or(value));
                    }
                }
                match kind {
                    "end" => {
                        return serde_json::from_str(&payload).map_err(|e| {
                            ClientError::Other(format!("the end of rollout {rollout} could not be read: {e}"))
                        });
                    }
                    "rollout" => {
                        if id.is_some_and(|id| last_seen.is_some_and(|seen| id <= seen)) {
                            continue;
                        }
                        *last_seen = id.or(*last_seen);
                        on_event(serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)));
                    }
                    _ => {}
                }
            }
        }
        Err(self.unreachable(format!(
            "the event stream of rollout {rollout} ended before the rollout did"
        )))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The API's `{code, message}` answer for a failed request, or its body as the message.
fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(error) => ClientError::Api {
            status,
            code: error.code,
            message: error.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: "error".into(),
            message: String::from_utf8_lossy(bytes).into_owned(),
        },
    }
}
