//! The API's OpenAPI 3.1 document: the routes come from the handlers' `#[utoipa::path]`
//! attributes and the schemas from the request and response types themselves.

use serde_json::{Value, json};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::protocol::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Slipway",
        description = "The API of a Slipway runner (`slipway serve`). Every request but `/healthz`, \
`/metrics`, this document and the dashboard's files (`/`, `/ui/…`) carries a token as \
`Authorization: Bearer TOKEN`. A token has one scope, `read`, `deploy` or `admin`, and each \
scope allows what the ones before it do; each operation names the scope it needs. Every error is a JSON `ErrorBody`: a stable `code` and a \
`message` for people.",
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerToken),
    tags(
        (name = "apps", description = "Apps: deploy, inspect, scale, route, maintenance, logs and traffic"),
        (name = "rollouts", description = "Rollouts: follow, pause, resume, abort; rollback, redeploy and retry start one"),
        (name = "modules", description = "Uploaded strategy and hook components"),
        (name = "meta", description = "Health, metrics and this document"),
        (name = "dashboard", description = "The dashboard's page and files (they need no token; the page asks for one)"),
    )
)]
pub struct Doc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "A token of scope read, deploy or admin (`slipway serve` writes the admin token to DATA/admin.token)"
                .to_owned(),
        );
        components.add_security_scheme("token", SecurityScheme::Http(scheme));
    }
}

/// A map keyed by revision number is a JSON object, whose keys are strings: say that they are
/// written in decimal, where the generator says they are integers.
fn string_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(names) = map.get_mut("propertyNames")
                && names.get("type").and_then(Value::as_str) == Some("integer")
            {
                *names = json!({"type": "string", "pattern": "^(0|[1-9][0-9]*)$"});
            }
            map.values_mut().for_each(string_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(string_keys),
        _ => {}
    }
}

/// The document as served: every operation that needs a token also answers 401 without one
/// (or with an unknown one) and, when it needs more than `read`, 403 for a token of too
/// small a scope, as [`super::Auth`] does.
pub fn finish(doc: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        })
    };
    string_keys(&mut doc);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return doc;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        let Some(scopes) = operation
            .pointer("/security/0/token")
            .and_then(Value::as_array)
            .cloned()
        else {
            continue;
        };
        let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else {
            continue;
        };
        responses.insert("401".to_owned(), error("No token, or one the runner does not know"));
        if scopes.iter().any(|s| s != "read") {
            responses.insert(
                "403".to_owned(),
                error("The token's scope is too small for this operation"),
            );
        }
    }
    doc
}
