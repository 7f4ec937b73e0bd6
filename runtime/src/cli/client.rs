//! The CLI's HTTP client for the runner's API (the other side of `api.rs`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A failed API call, in words for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the runner at {server}: {reason}; is `slipway serve` running? (set --server or SLIPWAY_SERVER)"
    )]
    Unreachable { server: String, reason: String },
    #[error("{message} ({status} {code})")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

pub struct Client {
    server: String,
    token: Option<String>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Self {
        let server = server.trim_end_matches('/').to_string();
        Client {
            server,
            token,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server))
            .header("content-type", content_type);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| ClientError::Other(format!("bad request: {e}")))?;
        self.http.request(request).await.map_err(|e| ClientError::Unreachable {
            server: self.server.clone(),
            reason: error_chain(&e),
        })
    }

    /// Sends a request and returns the JSON answer, or the API's error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let response = self.send(method, path, content_type, body).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable {
                server: self.server.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            return Ok((status, value));
        }
        Err(ClientError::Api {
            status,
            code: value["code"].as_str().unwrap_or("error").to_string(),
            message: value["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string()),
        })
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        Ok(self.call(Method::GET, path, "application/json", Bytes::new()).await?.1)
    }

    /// Follows a rollout's server-sent events, calling `on_event` for each `rollout` event;
    /// returns the data of the final `end` event (the rollout's record).
    pub async fn follow(
        &self,
        rollout: &str,
        mut on_event: impl FnMut(serde_json::Value),
    ) -> Result<serde_json::Value, ClientError> {
        let response = self
            .send(
                Method::GET,
                &format!("/v1/rollouts/{rollout}/events"),
                "application/json",
                Bytes::new(),
            )
            .await?;
        if !response.status().is_success() {
            return Err(ClientError::Other(format!(
                "following rollout {rollout} failed with {}",
                response.status()
            )));
        }
        let mut body = response.into_body();
        let mut buffer = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Unreachable {
                server: self.server.clone(),
                reason: e.to_string(),
            })?;
            let Some(data) = frame.data_ref() else { continue };
            buffer.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = buffer.find("\n\n") {
                let message: String = buffer.drain(..end + 2).collect();
                let mut kind = "message";
                let mut payload = String::new();
                for line in message.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        kind = if value.trim() == "end" { "end" } else { "rollout" };
                    } else if let Some(value) = line.strip_prefix("data:") {
                        payload.push_str(value.strip_prefix(' ').unwrap_or(value));
                    }
                }
                let value: serde_json::Value = serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null);
                match kind {
                    "end" => return Ok(value),
                    "rollout" => on_event(value),
                    _ => {}
                }
            }
        }
        Err(ClientError::Other(format!(
            "the runner closed the event stream of rollout {rollout} before it ended"
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
