//! The OpenAPI 3 description served at `/openapi.json`. The API's paths come from
//! the handlers' own annotations as they are routed (`utoipa_axum::routes!`), so a
//! route cannot be served without being described; this module adds what the
//! shared health router serves and the bearer scheme, and [`rules`] writes in the
//! request rules, built at start-up for this deployment's settings.

pub mod protect;
pub mod rules;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use viewpipe_runtime::health::{HealthBody, HealthStatus};

use viewpipe_schema::entities::{JobKind, JobStatus};

use crate::api::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "viewpipe ingest",
        description = "Count content views exactly once and read the counts back. Every error body is \
                       {\"success\":false,\"error\":{\"code\",\"message\",\"field\"?}}."
    ),
    paths(healthz, readyz, metrics, openapi_json),
    components(schemas(ErrorBody, HealthBody, HealthStatus, JobKind, JobStatus)),
    modifiers(&BearerToken),
    tags(
        (name = "views", description = "Report views and read counts"),
        (name = "browser", description = "Count views from web pages and e-mail without writing code: \
                                          the script a page embeds, and the image pixel"),
        (name = "admin", description = "Operator endpoints; need Authorization: Bearer <ADMIN_TOKEN>"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub(crate) struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

// The functions below only carry descriptions: `viewpipe_runtime::Health::router`
// and `crate::api_router` serve these paths, and the OpenAPI test checks that every
// described path answers.

/// Liveness: 200 while the process's loops are alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = HealthBody), (status = 503, body = HealthBody)))]
#[allow(dead_code)]
fn healthz() {}

/// Readiness: 200 only while Kafka, Postgres and Redis (unless `none`) answer; 503
/// otherwise and once shutdown began.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = HealthBody), (status = 503, body = HealthBody)))]
#[allow(dead_code)]
fn readyz() {}

/// Prometheus metrics, text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
#[allow(dead_code)]
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, content_type = "application/json", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use viewpipe_schema::Namespaces;

    fn operation(api: &Value, path: &str, method: &str) -> Value {
        api["paths"][path][method].clone()
    }

    #[test]
    fn the_browser_ways_in_are_documented() {
        let api = crate::document(&"resource,page".parse::<Namespaces>().expect("namespaces"));
        for path in ["/api/views", "/api/views/batch"] {
            let content = &operation(&api, path, "post")["requestBody"]["content"];
            assert_eq!(
                content["text/plain"]["schema"], content["application/json"]["schema"],
                "{path}: a text/plain body is the same JSON"
            );
        }
        let pixel = operation(&api, "/p.gif", "get");
        let ok = &pixel["responses"]["200"];
        assert!(ok["content"]["image/gif"].is_object(), "{ok}");
        for header in ["Cache-Control", "Pragma", "Expires"] {
            assert!(ok["headers"][header].is_object(), "{header}");
        }
        let params: Vec<(String, bool)> = pixel["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["required"] == json!(true),
                )
            })
            .collect();
        let want = [
            ("contentType", true),
            ("contentId", true),
            ("path", false),
            ("sessionId", false),
            ("eventId", false),
        ]
        .map(|(n, r)| (n.to_owned(), r));
        assert_eq!(params, want);
        let script = operation(&api, "/v.js", "get");
        assert!(script["responses"]["200"]["content"]["text/javascript"].is_object());
        assert_eq!(pixel["tags"], json!(["browser"]));
    }
}
