//! Writes the rules the handlers enforce into the document, from the constants the
//! handlers themselves use: the text rules of [`viewpipe_schema::rules`], this
//! deployment's `NAMESPACES`, the whole-number parameters of
//! [`crate::routes::params`], the batch size, and the flush-to-job link.
//!
//! A rule is attached by field name, wherever the field appears: a property of
//! `ViewRequest` or a query or path parameter. The ingest's tests check that no
//! request field is left unconstrained and that each pattern accepts exactly what the
//! validator accepts.

use serde_json::{json, Map, Value};

use viewpipe_schema::rules::{self, TextRule};
use viewpipe_schema::Namespaces;

use crate::age::MaxEventAge;
use crate::routes::badge;
use crate::routes::batch::MAX_EVENTS;
use crate::routes::params::INT_PARAMS;

/// States every request rule in `api` (the document as JSON), `namespaces` and
/// `max_event_age` being this deployment's. It edits the JSON rather than utoipa's types because those
/// cannot say everything needed here (utoipa 5.5 writes a link's `operationId` as
/// `operation_id`).
pub fn apply(api: &mut Value, namespaces: &Namespaces, max_event_age: MaxEventAge) {
    let deployment = Deployment {
        namespaces,
        max_event_age,
    };
    for request in ["ViewRequest", "KeyRef"] {
        let fields = api.pointer_mut(&format!("/components/schemas/{request}/properties"));
        if let Some(properties) = fields.and_then(Value::as_object_mut) {
            for (name, schema) in properties {
                constrain(schema, name, &deployment);
            }
        }
    }
    if let Some(paths) = api["paths"].as_object_mut() {
        for (path, item) in paths {
            for operation in item.as_object_mut().into_iter().flat_map(Map::values_mut) {
                let parameters = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut);
                for parameter in parameters.into_iter().flatten() {
                    let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                    constrain(&mut parameter["schema"], &name, &deployment);
                }
                if path == "/api/views/batch" {
                    describe_batch(operation);
                }
                retry_after(operation);
            }
        }
    }
    link_flush_to_job(api);
}

/// This deployment's settings the rules depend on.
struct Deployment<'a> {
    namespaces: &'a Namespaces,
    max_event_age: MaxEventAge,
}

/// The rule of the field called `name`, if it has one.
fn constrain(schema: &mut Value, name: &str, deployment: &Deployment) {
    match name {
        "contentId" => text(schema, &rules::CONTENT_ID),
        "contentType" => match deployment.namespaces {
            Namespaces::Any => text(schema, &rules::CONTENT_TYPE),
            Namespaces::List(names) => {
                schema["enum"] = json!(names);
                schema["description"] = json!("One of this deployment's NAMESPACES.");
            }
        },
        "path" => text(schema, &rules::PATH),
        "sessionId" => text(schema, &rules::SESSION_ID),
        "eventId" => text(schema, &rules::EVENT_ID),
        "occurredAt" => {
            schema["format"] = json!("date-time");
            schema["pattern"] = json!(rules::TIMESTAMP_PATTERN);
            schema["description"] = json!(format!(
                "RFC 3339 with `T` between date and time. Default: when the ingest \
                 received the view. Refused when more than {} minutes in the future, or \
                 more than {} in the past (`MAX_EVENT_AGE`, code `too_old`): rules JSON \
                 Schema cannot state. Older history is loaded with `ingest publish \
                 --topic views.replay` and `aggregator backfill`.",
                rules::MAX_FUTURE_SKEW_MINUTES,
                deployment.max_event_age
            ));
        }
        "from" | "to" => {
            schema["format"] = json!("date");
            schema["pattern"] = json!(rules::DAY_PATTERN);
        }
        "id" => schema["format"] = json!("uuid"),
        "label" => {
            schema["maxLength"] = json!(badge::MAX_LABEL_CHARS);
            schema["pattern"] = json!("^[^\\u0000-\\u001f\\u007f-\\u009f\\uFFFE\\uFFFF]*$");
            schema["default"] = json!(badge::DEFAULT_LABEL);
        }
        "color" => schema["pattern"] = json!(badge::color_pattern()),
        "style" => schema["enum"] = json!(badge::STYLES),
        _ => {
            if let Some(rule) = INT_PARAMS.iter().find(|p| p.name == name) {
                schema["minimum"] = json!(rule.min);
                schema["maximum"] = json!(rule.max);
                schema["default"] = json!(rule.default);
            }
        }
    }
}

fn text(schema: &mut Value, rule: &TextRule) {
    schema["minLength"] = json!(rule.min_chars);
    schema["maxLength"] = json!(rule.max_chars);
    schema["pattern"] = json!(rule.pattern);
    let said = format!("{} {}.", rule.field, rule.message);
    let description = match schema["description"].as_str() {
        Some(d) if !d.is_empty() => format!("{d} {said}"),
        _ => said,
    };
    schema["description"] = json!(description);
}

/// A batch holds 1 to `MAX_EVENTS` elements, each checked on its own: an element
/// that is not a valid `ViewRequest` is listed in `rejected` and does not fail the
/// request, so the document admits any element and names the one it expects.
fn describe_batch(operation: &mut Value) {
    let content = operation
        .pointer_mut("/requestBody/content")
        .and_then(Value::as_object_mut);
    for media in content.into_iter().flat_map(Map::values_mut) {
        let array = &mut media["schema"];
        array["minItems"] = json!(1);
        array["maxItems"] = json!(MAX_EVENTS);
        array["items"] = json!({
            "description": "A ViewRequest. An element that is not one is listed in \
                            `rejected` by its index; the others are still counted.",
            "anyOf": [{"$ref": "#/components/schemas/ViewRequest"}, {}],
        });
    }
}

/// Every 503 says when to try again.
fn retry_after(operation: &mut Value) {
    // (`get_mut`: indexing a `Value` mutably would add the keys it looks for.)
    let response = operation
        .get_mut("responses")
        .and_then(|r| r.get_mut("503"));
    if let Some(response) = response {
        response["headers"]["Retry-After"] = json!({
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 1},
        });
    }
}

/// A flush's answer links to its job, so a client (or a fuzzer) can follow it.
fn link_flush_to_job(api: &mut Value) {
    let responses = api
        .pointer_mut("/paths/~1api~1views~1flush/post/responses")
        .and_then(Value::as_object_mut);
    for (status, response) in responses.into_iter().flatten() {
        if status == "200" || status == "202" {
            response["links"]["GetJob"] = json!({
                "operationId": "get_job",
                "parameters": {"id": "$response.body#/jobId"},
                "description": "The flush job this request started",
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::{json, Value};

    use viewpipe_schema::{Namespaces, View};

    /// `ViewRequest` as the document states it, compiled with formats asserted.
    fn view_schema(namespaces: &Namespaces) -> jsonschema::Validator {
        let api = crate::document(namespaces);
        let schema = api["components"]["schemas"]["ViewRequest"].clone();
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("ViewRequest compiles")
    }

    /// Strings around every rule's edges: each character of the first 0x250 code
    /// points and some beyond, alone and after a valid character, and runs of a
    /// valid character at and around each length limit.
    fn candidates() -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let odd = ['\u{2028}', '\u{FEFF}', 'é', '中', '😀', '\u{10FFFF}'];
        for c in (0..0x250u32).filter_map(char::from_u32).chain(odd) {
            out.push(c.to_string());
            out.push(format!("a{c}"));
        }
        for n in [0, 1, 2, 31, 32, 33, 127, 128, 129, 2047, 2048, 2049] {
            out.push("a".repeat(n));
            out.push("é".repeat(n));
        }
        out.extend(["resource", "course", "video", "Resource", "a-b_9", "9a"].map(String::from));
        out
    }

    /// The schema and `View::from_api` agree on `value` put in `field`.
    fn disagreements(namespaces: &Namespaces, field: &str, values: &[Value]) -> Vec<String> {
        let schema = view_schema(namespaces);
        let now = Utc::now();
        let mut out = Vec::new();
        for value in values {
            let mut view = json!({"contentId": "a", "contentType": "resource"});
            view[field] = value.clone();
            let by_schema = schema.is_valid(&view);
            let json = serde_json::to_vec(&view).expect("json");
            let by_service = View::from_api(&json, namespaces, now).is_ok();
            if by_schema != by_service {
                out.push(format!(
                    "{field}={value}: schema {by_schema}, service {by_service}"
                ));
            }
        }
        out
    }

    #[test]
    fn the_badges_options_are_documented_as_they_are_checked() {
        let api = crate::document(&Namespaces::Any);
        let params = api["paths"]["/api/views/badge.svg"]["get"]["parameters"]
            .as_array()
            .expect("badge parameters")
            .clone();
        let mut values: Vec<String> = candidates();
        values.extend(
            [
                "blue",
                "orange",
                "lightgrey",
                "4c1",
                "4C1",
                "abcdef",
                "abcdefa",
                "fff0",
                "chartreuse",
                "#fff",
                "flat",
                "flat-square",
                "plastic",
            ]
            .map(String::from),
        );
        let mut wrong = Vec::new();
        for name in ["label", "color", "style"] {
            let param = params.iter().find(|p| p["name"] == name).expect(name);
            let schema = jsonschema::validator_for(&param["schema"]).expect("compiles");
            for value in &values {
                let by_schema = schema.is_valid(&json!(value));
                let query = crate::extract::RawQuery(vec![(name.to_owned(), value.clone())]);
                let by_service = crate::routes::badge::check_look(&query).is_ok();
                if by_schema != by_service {
                    wrong.push(format!(
                        "{name}={value:?}: schema {by_schema}, service {by_service}"
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn the_document_accepts_exactly_the_text_the_service_accepts() {
        let mut values: Vec<Value> = candidates().into_iter().map(Value::from).collect();
        values.extend([json!(null), json!(5), json!(true), json!([]), json!({})]);
        let list: Namespaces = "resource,course".parse().expect("namespaces");
        let mut wrong = Vec::new();
        for namespaces in [&list, &Namespaces::Any] {
            for field in ["contentId", "contentType", "path", "sessionId", "eventId"] {
                wrong.extend(disagreements(namespaces, field, &values));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} disagreements: {:#?}",
            wrong.len(),
            &wrong[..wrong.len().min(20)]
        );
    }

    #[test]
    fn the_document_accepts_exactly_the_timestamps_the_service_accepts() {
        let values = [
            "2026-11-21T10:00:00Z",
            "2026-11-21T10:00:00.123+01:00",
            "2026-11-21t10:00:00z",
            "2026-11-21 10:00:00Z",
            "2026-11-21T10:00:00",
            "2026-11-21",
            "2026-02-30T10:00:00Z",
            "2026-11-21T24:00:00Z",
            "2016-12-31T23:59:60Z",
            "1-11-21T10:00:00Z",
            "+2026-11-21T10:00:00Z",
            "2026-11-21T1:00:00Z",
            "2026-11-21T10:00:00+0100",
            "2026-11-21T10:00:00.Z",
            "2026-11-21T10:00:00,5Z",
            "2026-11-21T10:00:00.1234567891Z",
            "2026-11-21T10:00:00-00:00",
            "2026-11-21T10:00:00Z\n",
            "",
        ]
        .map(Value::from);
        let list: Namespaces = "resource".parse().expect("namespaces");
        let wrong = disagreements(&list, "occurredAt", &values);
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Every parameter and every `ViewRequest` and `KeyRef` field states a rule: a pattern, an
    /// enum, a format or a range.
    #[test]
    fn no_request_field_is_left_without_its_rule() {
        let api = crate::document(&Namespaces::Any);
        let ruled = |s: &Value| {
            ["pattern", "enum", "format", "minimum"]
                .iter()
                .any(|k| s.get(k).is_some())
                || s["type"] == "boolean"
        };
        let mut bare = Vec::new();
        for (path, item) in api["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("operations") {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if !ruled(&p["schema"]) {
                        bare.push(format!("{method} {path} {}", p["name"]));
                    }
                }
            }
        }
        for request in ["ViewRequest", "KeyRef"] {
            let fields = &api["components"]["schemas"][request]["properties"];
            for (name, schema) in fields.as_object().expect("properties") {
                if !ruled(schema) {
                    bare.push(format!("{request}.{name}"));
                }
            }
        }
        assert!(bare.is_empty(), "without a rule: {bare:?}");
        let batch = &api["paths"]["/api/views/batch"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"];
        assert_eq!(
            (batch["minItems"].clone(), batch["maxItems"].clone()),
            (json!(1), json!(super::MAX_EVENTS))
        );
    }
}
