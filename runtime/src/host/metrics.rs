//! `slipway:deploy/metrics`: instant queries on the Prometheus the app's spec grants.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::bindings::ApiError;
use crate::bindings::strategy::slipway::deploy::metrics::Host;
use crate::events::EventKind;
use crate::guest::GuestState;

/// The longest query a strategy may send.
const MAX_QUERY: usize = 8 << 10;
/// How long a query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of Prometheus' answer read.
const MAX_ANSWER: usize = 1 << 20;

impl Host for GuestState {
    async fn query_prometheus(&mut self, query: String) -> wasmtime::Result<Result<f64, ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        let Some(base) = self.env.grants.prometheus.clone() else {
            return Ok(Err(ApiError::Denied(
                "query-prometheus: the app's spec grants no Prometheus; add grants = [\"prometheus:http://HOST:PORT\"] to its [strategy]".into(),
            )));
        };
        if query.len() > MAX_QUERY {
            return Ok(Err(self.invalid(format!(
                "query-prometheus: the query is {} bytes long, over the {MAX_QUERY}-byte limit",
                query.len()
            ))));
        }
        let url = format!(
            "{}/api/v1/query?{}",
            base.trim_end_matches('/'),
            form_urlencoded::Serializer::new(String::new())
                .append_pair("query", &query)
                .finish()
        );
        let timeout = QUERY_TIMEOUT.min(Duration::from_millis(self.env.remaining_ms()));
        let env = self.env.clone();
        let answer = match env.unless_aborted(tokio::time::timeout(timeout, get(&url))).await {
            Err(aborted) => return Ok(Err(aborted)),
            Ok(Err(_)) => Err(ApiError::Infrastructure(format!(
                "query-prometheus: {base} gave no answer within {} s",
                timeout.as_secs()
            ))),
            Ok(Ok(Err(error))) => Err(ApiError::Infrastructure(format!("query-prometheus: {base}: {error}"))),
            Ok(Ok(Ok((status, body)))) => value_of(status, &body)
                .map_err(|message| ApiError::Invalid(format!("query-prometheus: `{query}` on {base}: {message}"))),
        };
        let outcome = match &answer {
            Ok(value) => format!("= {value}"),
            Err(error) => crate::failure::describe_api_error(error),
        };
        self.env.record(EventKind::Log {
            level: "info".into(),
            message: format!("prometheus `{query}` {outcome}"),
        });
        Ok(answer)
    }
}

async fn get(url: &str) -> Result<(u16, Bytes), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(uri).await.map_err(|e| format!("{e}"))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok((status, body.to_bytes()))
}

/// The one number in an instant query's answer, or what Prometheus said instead.
fn value_of(status: u16, body: &[u8]) -> Result<f64, String> {
    let answer: Value = serde_json::from_slice(body).map_err(|_| {
        format!(
            "HTTP {status} with a body that is not Prometheus' JSON: {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })?;
    if answer["status"] != "success" {
        return Err(format!(
            "{}: {}",
            answer["errorType"].as_str().unwrap_or("error"),
            answer["error"].as_str().unwrap_or("no message")
        ));
    }
    let data = &answer["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([one]) => &one["value"],
            Some([]) => return Err("the result is empty: no series matched".into()),
            Some(many) => {
                return Err(format!(
                    "the result has {} series; aggregate it to one, e.g. with sum(…)",
                    many.len()
                ));
            }
            None => return Err("the answer's vector is not a list".into()),
        },
        other => {
            return Err(format!(
                "the result is a {}, not a number; query a scalar or an instant vector",
                other.unwrap_or("nothing")
            ));
        }
    };
    let value = sample[1]
        .as_str()
        .and_then(|text| text.parse::<f64>().ok())
        .ok_or_else(|| format!("the sample {sample} has no number"))?;
    if value.is_nan() {
        return Err("the value is NaN (a division by zero, such as an error rate with no requests?)".into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::value_of;

    #[test]
    fn reads_scalars_and_single_samples_and_says_what_else_came() {
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"0.25"]}}"#;
        assert_eq!(value_of(200, scalar), Ok(0.25));
        let one = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"3"]}]}}"#;
        assert_eq!(value_of(200, one), Ok(3.0));
        let none = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(value_of(200, none).unwrap_err().contains("no series matched"));
        let two =
            br#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#;
        assert!(value_of(200, two).unwrap_err().contains("2 series"));
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        assert!(value_of(200, nan).unwrap_err().contains("NaN"));
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert_eq!(value_of(400, bad).unwrap_err(), "bad_data: parse error at char 3");
        assert!(value_of(502, b"<html>").unwrap_err().contains("HTTP 502"));
    }
}
