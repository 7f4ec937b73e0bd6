//! The dashboard: ES modules, a stylesheet and a page, embedded in the binary and served as
//! they are written (`runtime/dashboard/`). They need no token: they hold nothing but code,
//! and every request they make to the API carries the signed-in user's bearer token (never
//! a cookie, so no other site can make the browser act for the user).

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, InPath};

/// The dashboard's files: name, media type, contents.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../dashboard/style.css"),
    ),
    ("main.js", JS, include_str!("../../dashboard/main.js")),
    ("api.js", JS, include_str!("../../dashboard/api.js")),
    ("dom.js", JS, include_str!("../../dashboard/dom.js")),
    ("chart.js", JS, include_str!("../../dashboard/chart.js")),
    ("traffic.js", JS, include_str!("../../dashboard/traffic.js")),
    ("apps.js", JS, include_str!("../../dashboard/apps.js")),
    ("app.js", JS, include_str!("../../dashboard/app.js")),
    ("modules.js", JS, include_str!("../../dashboard/modules.js")),
    ("logs.js", JS, include_str!("../../dashboard/logs.js")),
    ("icon.svg", "image/svg+xml", include_str!("../../dashboard/icon.svg")),
];

const JS: &str = "text/javascript; charset=utf-8";

const INDEX: &str = include_str!("../../dashboard/index.html");

/// Only the dashboard's own files run, and they talk only to this API.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                      base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's page.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "The dashboard (sign in with an API token)", content_type = "text/html", body = String)))]
pub(super) async fn index() -> Response {
    asset_response("text/html; charset=utf-8", INDEX)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct AssetPath {
    /// One of the dashboard's files, such as `main.js`.
    file: String,
}

/// One of the dashboard's scripts, its stylesheet or its icon.
#[utoipa::path(get, path = "/ui/{file}", tag = "dashboard", params(AssetPath),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"), (String = "text/css"), (String = "image/svg+xml")
        )),
        (status = 404, description = "No such file", body = crate::protocol::ErrorBody)
    ))]
pub(super) async fn asset(InPath(AssetPath { file }): InPath<AssetPath>) -> Result<Response, ApiError> {
    let (_, media_type, contents) = ASSETS.iter().find(|(name, _, _)| *name == file).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not-found",
            format!("the dashboard has no file {file:?}"),
        )
    })?;
    Ok(asset_response(media_type, contents))
}

fn asset_response(media_type: &'static str, contents: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(media_type)),
        // The files change with the binary: always ask (they are small, and answered locally).
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, contents).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|(name, _, _)| *name).collect();
        let sources = ASSETS
            .iter()
            .filter(|(_, media_type, _)| *media_type == JS)
            .map(|(_, _, text)| *text)
            .chain([INDEX]);
        for source in sources {
            for import in source
                .split(['"', '\''])
                .filter(|s| s.starts_with("./") || s.starts_with("/ui/"))
            {
                let name = import.trim_start_matches("./").trim_start_matches("/ui/");
                if name.ends_with(".js") || name.ends_with(".css") || name.ends_with(".svg") {
                    assert!(served.contains(&name), "{import} is imported but not served");
                }
            }
        }
    }
}
