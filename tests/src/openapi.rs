//! Every answer the API tests get is checked against the ingest's own OpenAPI
//! document: [`Api`] is a small HTTP client with `reqwest`'s shape whose `send`
//! validates the JSON body against the schema the document gives for the route,
//! method and status, so what is sent and what is documented cannot drift apart.
//!
//! The check is stricter than the document: an object may carry only the properties
//! its schema lists (`additionalProperties: false` is added to every object schema),
//! so a field a handler sends but the document lacks fails the test. The published
//! document leaves that out on purpose: clients should accept fields added later.

use std::sync::Arc;

use anyhow::{bail, Context};
use reqwest::header::HeaderMap;
use reqwest::{IntoUrl, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::Service;

/// The ingest's OpenAPI document, made strict (see the module's notes).
pub struct Document {
    doc: Value,
    /// `components`, strict, placed beside every schema validated so that the
    /// document's `#/components/schemas/..` references resolve.
    components: Value,
}

impl Document {
    /// Reads `/openapi.json` from `ingest`.
    pub async fn fetch(ingest: &Service) -> anyhow::Result<Self> {
        let doc: Value = reqwest::get(ingest.url("/openapi.json"))
            .await?
            .error_for_status()?
            .json()
            .await
            .context("/openapi.json is not JSON")?;
        let mut components = doc.get("components").cloned().unwrap_or(json!({}));
        forbid_unlisted_properties(&mut components);
        Ok(Self { doc, components })
    }

    /// The document's path template matching `path` (`/api/jobs/{id}` for
    /// `/api/jobs/42`).
    fn template(&self, path: &str) -> Option<&str> {
        let paths = self.doc.get("paths")?.as_object()?;
        let given: Vec<&str> = path.split('/').collect();
        paths.keys().map(String::as_str).find(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == given.len()
                && parts
                    .iter()
                    .zip(&given)
                    .all(|(t, g)| t == g || (t.starts_with('{') && t.ends_with('}')))
        })
    }

    /// Checks one answer. Errors name the route, the status and what is wrong.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        status: u16,
        body: &[u8],
    ) -> anyhow::Result<()> {
        if method == Method::OPTIONS {
            return Ok(()); // a CORS preflight: the CORS protocol, not an operation
        }
        let Some(template) = self.template(path) else {
            // Routes the document does not have (a 404 for a made-up path) must
            // still answer with the error model.
            return self.check_error_body(path, status, body);
        };
        let method_name = method.as_str().to_lowercase();
        let operation = &self.doc["paths"][template][&method_name];
        if operation.is_null() {
            // 405 for a method the route does not have: the error model.
            return self.check_error_body(path, status, body);
        }
        let responses = &operation["responses"];
        let Some(response) = responses.get(status.to_string()) else {
            if status >= 400 {
                return self.check_error_body(path, status, body);
            }
            bail!("{method} {template} answered {status}, which its document does not list");
        };
        let Some(schema) = response.pointer("/content/application~1json/schema") else {
            return Ok(()); // not JSON (`/metrics`), or no body documented
        };
        self.validate(schema, body)
            .with_context(|| format!("{method} {template} {status}"))
    }

    fn check_error_body(&self, path: &str, status: u16, body: &[u8]) -> anyhow::Result<()> {
        if status < 400 {
            bail!("{path} answered {status}, and the document has no such route");
        }
        self.validate(&json!({"$ref": "#/components/schemas/ErrorBody"}), body)
            .with_context(|| format!("{path} {status} (the error model)"))
    }

    fn validate(&self, schema: &Value, body: &[u8]) -> anyhow::Result<()> {
        let instance: Value = serde_json::from_slice(body).with_context(|| {
            format!(
                "the body is not JSON: {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )
        })?;
        let mut schema = schema.clone();
        forbid_unlisted_properties(&mut schema);
        let mut root = json!({ "components": self.components });
        if let (Some(root), Some(schema)) = (root.as_object_mut(), schema.as_object()) {
            root.extend(schema.clone());
        }
        let validator = jsonschema::validator_for(&root)
            .map_err(|e| anyhow::anyhow!("the document's schema does not compile: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("at {:?}: {e}", e.instance_path().to_string()))
            .collect();
        if !errors.is_empty() {
            bail!(
                "the body does not match the document: {}; body: {instance}",
                errors.join("; ")
            );
        }
        Ok(())
    }
}

/// Adds `additionalProperties: false` to every object schema that lists its
/// properties and says nothing about others.
fn forbid_unlisted_properties(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(forbid_unlisted_properties);
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_unlisted_properties),
        _ => {}
    }
}

/// An HTTP client for the API tests: `reqwest`'s calls, and every answer checked
/// against the [`Document`] (a mismatch panics, naming the route and the field).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    doc: Arc<Document>,
}

impl Api {
    /// A client checking answers against `ingest`'s document.
    pub async fn new(ingest: &Service) -> Self {
        let doc = Document::fetch(ingest)
            .await
            .expect("the ingest's OpenAPI document");
        Self {
            http: reqwest::Client::new(),
            doc: Arc::new(doc),
        }
    }

    pub fn request(&self, method: Method, url: impl IntoUrl) -> ApiRequest {
        ApiRequest {
            inner: self.http.request(method, url),
            doc: self.doc.clone(),
        }
    }

    pub fn get(&self, url: impl IntoUrl) -> ApiRequest {
        self.request(Method::GET, url)
    }

    pub fn post(&self, url: impl IntoUrl) -> ApiRequest {
        self.request(Method::POST, url)
    }
}

/// A request being built (see [`Api`]).
pub struct ApiRequest {
    inner: reqwest::RequestBuilder,
    doc: Arc<Document>,
}

impl ApiRequest {
    pub fn json<T: serde::Serialize + ?Sized>(self, body: &T) -> Self {
        Self {
            inner: self.inner.json(body),
            ..self
        }
    }

    pub fn body(self, body: impl Into<reqwest::Body>) -> Self {
        Self {
            inner: self.inner.body(body),
            ..self
        }
    }

    pub fn header(self, name: &str, value: impl AsRef<str>) -> Self {
        Self {
            inner: self.inner.header(name, value.as_ref()),
            ..self
        }
    }

    pub fn bearer_auth(self, token: &str) -> Self {
        Self {
            inner: self.inner.bearer_auth(token),
            ..self
        }
    }

    /// Sends, reads the whole answer and checks it against the document.
    pub async fn send(self) -> reqwest::Result<Checked> {
        let (client, request) = self.inner.build_split();
        let request = request?;
        let (method, path) = (request.method().clone(), request.url().path().to_owned());
        let response = client.execute(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        if let Err(e) = self.doc.check(&method, &path, status.as_u16(), &body) {
            panic!("the answer is not what /openapi.json documents: {e:#}");
        }
        Ok(Checked {
            status,
            headers,
            body,
        })
    }
}

/// A whole answer, already checked against the document.
pub struct Checked {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Checked {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub async fn json<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }

    pub async fn text(&self) -> Result<String, std::string::FromUtf8Error> {
        String::from_utf8(self.body.clone())
    }

    /// The body as it came (an image, a script).
    pub fn bytes(&self) -> &[u8] {
        &self.body
    }
}
