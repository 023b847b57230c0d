//! The admin endpoints' token, and routes and methods that do not exist.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    let mut c = Vec::new();
    // Admin.
    let admin = |name: &str,
                 method: &'static str,
                 path: &str,
                 auth: Option<String>,
                 status: u16,
                 code: &'static str| Case {
        name: name.to_owned(),
        method,
        path: path.to_owned(),
        content_type: None,
        auth,
        body: Vec::new(),
        status,
        code,
        field: None,
    };
    c.extend([
        admin(
            "flush without token",
            "POST",
            "/api/views/flush",
            None,
            401,
            "unauthorized",
        ),
        admin(
            "flush wrong token",
            "POST",
            "/api/views/flush",
            Some("Bearer wrong".into()),
            401,
            "unauthorized",
        ),
        admin(
            "flush token prefix",
            "POST",
            "/api/views/flush",
            Some(format!("Bearer {}", &TOKEN[..4])),
            401,
            "unauthorized",
        ),
        admin(
            "flush token without Bearer",
            "POST",
            "/api/views/flush",
            Some(TOKEN.into()),
            401,
            "unauthorized",
        ),
        admin(
            "flush basic auth",
            "POST",
            "/api/views/flush",
            Some("Basic dXNlcjpwYXNz".into()),
            401,
            "unauthorized",
        ),
        admin(
            "flush bad wait",
            "POST",
            "/api/views/flush?wait=maybe",
            Some(format!("Bearer {TOKEN}")),
            400,
            "invalid_value",
        ),
        admin(
            "job without token",
            "GET",
            "/api/jobs/0b8f8a52-7d1c-4d6e-9d64-8f5b1e2c3a4d",
            None,
            401,
            "unauthorized",
        ),
        admin(
            "job not a uuid",
            "GET",
            "/api/jobs/42",
            Some(format!("Bearer {TOKEN}")),
            400,
            "invalid_value",
        ),
        admin(
            "job unknown",
            "GET",
            "/api/jobs/0b8f8a52-7d1c-4d6e-9d64-8f5b1e2c3a4d",
            Some(format!("Bearer {TOKEN}")),
            404,
            "job_not_found",
        ),
    ]);
    // Routing.
    c.extend([
        admin("unknown route", "GET", "/api/nope", None, 404, "not_found"),
        admin("root", "GET", "/", None, 404, "not_found"),
        admin("unknown route", "GET", "/nope", None, 404, "not_found"),
        admin(
            "DELETE views",
            "DELETE",
            "/api/views",
            None,
            405,
            "method_not_allowed",
        ),
        admin(
            "PUT views",
            "PUT",
            "/api/views",
            None,
            405,
            "method_not_allowed",
        ),
        admin(
            "GET batch",
            "GET",
            "/api/views/batch",
            None,
            405,
            "method_not_allowed",
        ),
        admin(
            "POST daily",
            "POST",
            "/api/views/daily",
            None,
            405,
            "method_not_allowed",
        ),
        admin(
            "GET flush",
            "GET",
            "/api/views/flush",
            None,
            405,
            "method_not_allowed",
        ),
        admin(
            "POST job",
            "POST",
            "/api/jobs/x",
            None,
            405,
            "method_not_allowed",
        ),
    ]);
    c
}
