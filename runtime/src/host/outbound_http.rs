//! `slipway:deploy/outbound-http`: a hook's HTTP requests, only to the hosts its spec allows.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::bindings::hook::slipway::deploy::outbound_http::{Host, HttpRequest, HttpResponse};
use crate::bindings::{ApiError, TimedOut};
use crate::events::EventKind;
use crate::fakes::{FakeHttp, Fakes};
use crate::guest::GuestState;
use crate::host::RolloutEnv;

/// The most of an answer's body a hook receives.
const MAX_RESPONSE_BODY: usize = 1 << 20;
/// The most a hook may send.
const MAX_REQUEST_BODY: usize = 1 << 20;
/// The longest URL a hook may ask for.
const MAX_URL: usize = 4 << 10;

impl Host for GuestState {
    async fn send(&mut self, request: HttpRequest) -> wasmtime::Result<Result<HttpResponse, ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        if request.url.len() > MAX_URL {
            return Ok(Err(self.invalid(format!(
                "outbound-http: the URL is {} bytes long, over the {MAX_URL}-byte limit",
                request.url.len()
            ))));
        }
        let uri: hyper::Uri = match request.url.parse() {
            Ok(uri) => uri,
            Err(error) => {
                return Ok(Err(
                    self.invalid(format!("outbound-http: {:?} is not a URL: {error}", request.url))
                ));
            }
        };
        if uri.scheme_str() != Some("http") {
            return Ok(Err(self.invalid(format!(
                "outbound-http: {:?}: only http:// URLs are supported",
                request.url
            ))));
        }
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(80);
        let allowed = self
            .env
            .grants
            .http_hosts
            .iter()
            .any(|grant| match grant.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() => h == host && p.parse::<u16>() == Ok(port),
                _ => *grant == host,
            })
            || self.env.grants.fakes.as_ref().is_some_and(|f| f.answer_unmatched);
        if !allowed {
            return Ok(Err(ApiError::Denied(format!(
                "outbound-http to {host}:{port}: this hook may not reach that host; grant it with \"http:{host}\" in the hook's spec"
            ))));
        }
        if request.body.len() > MAX_REQUEST_BODY {
            return Ok(Err(self.invalid(format!(
                "outbound-http: the body is over the {MAX_REQUEST_BODY}-byte limit"
            ))));
        }
        let method = request.method.clone();
        let url = request.url.clone();
        let timeout = Duration::from_millis(u64::from(request.timeout_ms.max(1)))
            .min(Duration::from_millis(self.env.remaining_ms()));
        let result = match self.env.grants.fakes.clone() {
            Some(fakes) => fake_send(&fakes, &request, &host, port, timeout, &self.env).await,
            None => match send(request, uri, &host, port, timeout).await {
                Ok(result) => result,
                Err(error) => return Ok(Err(self.invalid(error))),
            },
        };
        let outcome = match &result {
            Ok(response) => format!("answered {}", response.status),
            Err(error) => crate::failure::describe_api_error(error),
        };
        self.env.record(EventKind::Log {
            level: "info".into(),
            message: format!("hook {method} {url}: {outcome}"),
        });
        Ok(result)
    }
}

/// Sends `request` to `uri`. `Err` for a request that cannot be built (invalid).
async fn send(
    request: HttpRequest,
    uri: hyper::Uri,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Result<HttpResponse, ApiError>, String> {
    let mut builder = Request::builder().method(request.method.as_str()).uri(uri);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let outgoing = builder
        .body(Full::new(Bytes::from(request.body)))
        .map_err(|error| format!("outbound-http: {error}"))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let exchange = async {
        let response = client.request(outgoing).await.map_err(|e| format!("{e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = match Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect().await {
            Ok(collected) => collected.to_bytes().to_vec(),
            Err(_) => Vec::new(),
        };
        Ok::<_, String>(HttpResponse { status, headers, body })
    };
    Ok(match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(ApiError::Infrastructure(format!(
            "outbound-http to {host}:{port}: {error}"
        ))),
        Err(_) => Err(timed_out(host, port, timeout)),
    })
}

/// Answers `request` from a simulation's fakes, taking the fake's time on the simulated
/// clock.
async fn fake_send(
    fakes: &Fakes,
    request: &HttpRequest,
    host: &str,
    port: u16,
    timeout: Duration,
    env: &RolloutEnv,
) -> Result<HttpResponse, ApiError> {
    let fake = match fakes.http_for(&request.method, &request.url) {
        Some(fake) => fake.clone(),
        None if fakes.answer_unmatched => FakeHttp {
            url: request.url.clone(),
            method: None,
            status: 200,
            body: String::new(),
            takes: Duration::ZERO,
            error: None,
        },
        None => {
            return Err(ApiError::Infrastructure(format!(
                "outbound-http {} {}: no fake in this scenario answers it; add one, e.g. [[scenario.http]] url = {:?} status = 200",
                request.method, request.url, request.url
            )));
        }
    };
    if fake.takes > timeout {
        env.cluster.sleep_ms(timeout.as_millis() as u64).await;
        return Err(timed_out(host, port, timeout));
    }
    env.cluster.sleep_ms(fake.takes.as_millis() as u64).await;
    if let Some(error) = fake.error {
        return Err(ApiError::Infrastructure(format!(
            "outbound-http to {host}:{port}: {error}"
        )));
    }
    Ok(HttpResponse {
        status: fake.status,
        headers: Vec::new(),
        body: fake.body.into_bytes(),
    })
}

fn timed_out(host: &str, port: u16, timeout: Duration) -> ApiError {
    ApiError::Timeout(TimedOut {
        message: format!(
            "outbound-http to {host}:{port}: no answer within {} ms",
            timeout.as_millis()
        ),
        counts: None,
    })
}
