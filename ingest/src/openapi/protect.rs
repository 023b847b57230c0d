//! Writes the API protection this ingest runs with into the document: the key
//! schemes and the 401, 403 and 429 answers of the routes they guard (reads' 429
//! with `READ_RATE_LIMIT_PER_ADDR`), only where
//! the setting is given (the document is built at start-up, so it says what this
//! ingest does), and `/metrics` left out when `METRICS_ADDR` serves it elsewhere.

use serde_json::{json, Value};

use crate::protect::{Protect, KEY_HEADER, KEY_PARAM};

/// The operations the write key and the rate limits guard, as (path, method).
const WRITES: &[Op] = &[
    ("/api/views", "post"),
    ("/api/views/batch", "post"),
    ("/p.gif", "get"),
];
/// The writes of one view, refused whole when the key may not write its namespace
/// (a batch lists such elements instead).
const SINGLE_WRITES: &[Op] = &[("/api/views", "post"), ("/p.gif", "get")];
/// The operations the read key guards.
const READS: &[Op] = &[
    ("/api/views", "get"),
    ("/api/views/counts", "post"),
    ("/api/views/daily", "get"),
    ("/api/views/top", "get"),
    ("/api/views/badge.svg", "get"),
];

type Op = (&'static str, &'static str);

/// States `protect` in `api` (the document as JSON).
pub fn apply(api: &mut Value, protect: &Protect) {
    if let Some(keys) = &protect.write_keys {
        add_schemes(
            api,
            &[
                ("writeKey", api_key("header", KEY_HEADER.as_str())),
                ("writeKeyQuery", api_key("query", KEY_PARAM)),
            ],
        );
        for op in WRITES {
            secure(api, op, &["writeKey", "writeKeyQuery"]);
            respond(
                api,
                op,
                "401",
                "WRITE_KEYS is set: the write key is missing (missing_write_key) or not \
                 one of them (invalid_write_key); nothing was published",
            );
        }
        if keys.any_limited() {
            for op in SINGLE_WRITES {
                respond(
                    api,
                    op,
                    "403",
                    "The write key may not write this contentType (namespace_not_allowed); \
                     nothing was published",
                );
            }
        }
    }
    if protect.per_addr.is_some() || protect.per_key.is_some() {
        for op in WRITES {
            too_many(
                api,
                op,
                "Over RATE_LIMIT_PER_ADDR or RATE_LIMIT_PER_KEY (rate_limited), or a batch \
                 larger than the limit allows at once; nothing was published. See Retry-After",
            );
        }
    }
    if protect.reads_per_addr.is_some() {
        for op in READS {
            too_many(
                api,
                op,
                "Over READ_RATE_LIMIT_PER_ADDR (rate_limited). See Retry-After",
            );
        }
    }
    if protect.read_key.is_some() {
        add_schemes(
            api,
            &[
                ("readKey", json!({"type": "http", "scheme": "bearer"})),
                ("readKeyHeader", api_key("header", KEY_HEADER.as_str())),
                ("readKeyQuery", api_key("query", KEY_PARAM)),
            ],
        );
        for op in READS {
            secure(api, op, &["readKey", "readKeyHeader", "readKeyQuery"]);
            respond(
                api,
                op,
                "401",
                "READ_KEY is set: the read key is missing (missing_read_key) or wrong \
                 (invalid_read_key)",
            );
        }
    }
    if protect.metrics_addr.is_some() {
        if let Some(paths) = api["paths"].as_object_mut() {
            paths.remove("/metrics");
        }
    }
}

/// A 429 answer with its `Retry-After`.
fn too_many(api: &mut Value, op: &Op, description: &str) {
    respond(api, op, "429", description);
    if let Some(response) = operation(api, op).and_then(|o| o.pointer_mut("/responses/429")) {
        response["headers"]["Retry-After"] = json!({
            "description": "Whole seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 1},
        });
    }
}

fn api_key(place: &str, name: &str) -> Value {
    json!({"type": "apiKey", "in": place, "name": name})
}

fn add_schemes(api: &mut Value, schemes: &[(&str, Value)]) {
    for (name, scheme) in schemes {
        api["components"]["securitySchemes"][*name] = scheme.clone();
    }
}

fn operation<'a>(api: &'a mut Value, (path, method): &Op) -> Option<&'a mut Value> {
    api.get_mut("paths")?.get_mut(*path)?.get_mut(*method)
}

/// Any one of `schemes` is accepted.
fn secure(api: &mut Value, op: &Op, schemes: &[&str]) {
    if let Some(operation) = operation(api, op) {
        let alternatives: Vec<Value> = schemes.iter().map(|s| json!({ *s: [] })).collect();
        operation["security"] = json!(alternatives);
    }
}

fn respond(api: &mut Value, op: &Op, status: &str, description: &str) {
    if let Some(operation) = operation(api, op) {
        operation["responses"][status] = json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        });
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::Value;

    use viewpipe_schema::Namespaces;

    use crate::protect::{Protect, ProtectSettings};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        protect: ProtectSettings,
    }

    fn document(args: &[&str]) -> Value {
        let cli = Cli::try_parse_from(std::iter::once("ingest").chain(args.iter().copied()))
            .expect("settings");
        let namespaces: Namespaces = "resource,course".parse().expect("namespaces");
        let protect = Protect::build(&cli.protect, &namespaces).expect("protect");
        let mut api = crate::document(&namespaces);
        super::apply(&mut api, &protect);
        api
    }

    fn statuses(api: &Value, path: &str, method: &str) -> Vec<String> {
        api["paths"][path][method]["responses"]
            .as_object()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn unset_settings_leave_the_document_as_it_was() {
        let namespaces: Namespaces = "resource,course".parse().expect("namespaces");
        assert_eq!(document(&[]), crate::document(&namespaces));
    }

    #[test]
    fn each_setting_documents_what_it_sends() {
        let api = document(&[
            "--write-keys=web:0123456789abcdef,m:0123456789abcdeg:course",
            "--rate-limit-per-addr=10/s",
            "--read-key=0123456789abcdef-read",
            "--read-rate-limit-per-addr=50/s",
            "--metrics-addr=127.0.0.1:0",
        ]);
        let post = statuses(&api, "/api/views", "post");
        for status in ["401", "403", "429"] {
            assert!(
                post.contains(&status.to_owned()),
                "POST /api/views {post:?}"
            );
        }
        let pixel = statuses(&api, "/p.gif", "get");
        for status in ["401", "403", "429"] {
            assert!(pixel.contains(&status.to_owned()), "GET /p.gif {pixel:?}");
        }
        assert_eq!(
            api["paths"]["/p.gif"]["get"]["security"],
            serde_json::json!([{"writeKey": []}, {"writeKeyQuery": []}])
        );
        assert!(
            api["paths"]["/v.js"]["get"]["security"].is_null(),
            "the script needs no key"
        );
        let batch = statuses(&api, "/api/views/batch", "post");
        assert!(batch.contains(&"401".to_owned()) && batch.contains(&"429".to_owned()));
        assert!(
            !batch.contains(&"403".to_owned()),
            "a batch lists it per element"
        );
        assert_eq!(
            api["paths"]["/api/views"]["post"]["responses"]["429"]["headers"]["Retry-After"]
                ["schema"]["minimum"],
            1
        );
        assert_eq!(
            api["paths"]["/api/views/batch"]["post"]["security"],
            serde_json::json!([{"writeKey": []}, {"writeKeyQuery": []}])
        );
        for (path, method) in super::READS {
            let read = statuses(&api, path, method);
            assert!(
                read.contains(&"401".to_owned()) && read.contains(&"429".to_owned()),
                "{path} {read:?}"
            );
            assert!(api["paths"][path][method]["security"].is_array(), "{path}");
        }
        let schemes = &api["components"]["securitySchemes"];
        assert_eq!(schemes["writeKey"]["name"], "x-viewpipe-key");
        assert_eq!(schemes["writeKeyQuery"]["in"], "query");
        assert_eq!(schemes["readKey"]["scheme"], "bearer");
        assert!(schemes["bearer"].is_object(), "the admin scheme stays");
        assert!(api["paths"]["/metrics"].is_null());
        assert!(api["paths"]["/healthz"].is_object());
        // Admin routes keep their own scheme.
        assert_eq!(
            api["paths"]["/api/views/flush"]["post"]["security"],
            serde_json::json!([{"bearer": []}])
        );
    }

    #[test]
    fn keys_without_namespace_limits_document_no_403() {
        let api = document(&["--write-keys=web:0123456789abcdef"]);
        let post = statuses(&api, "/api/views", "post");
        assert!(post.contains(&"401".to_owned()) && !post.contains(&"403".to_owned()));
        assert!(!post.contains(&"429".to_owned()));
        assert!(statuses(&api, "/api/views", "get")
            .iter()
            .all(|s| s != "401" && s != "429"));
    }
}
