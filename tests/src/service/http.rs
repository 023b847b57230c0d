//! What a test asks an ingest over HTTP: a view posted, a count, a daily series, a
//! count waited for. Every answer is checked against the ingest's own OpenAPI
//! document (see [`Api`]).

use std::time::Duration;

use chrono::NaiveDate;
use serde_json::Value;

use super::Service;
use crate::eventually;
use crate::openapi::{Api, Checked};

impl Service {
    /// This ingest's document-checking client, made on first use.
    pub async fn api(&self) -> &Api {
        self.api.get_or_init(|| Api::new(self)).await
    }

    /// Posts `view` as JSON to `/api/views`.
    pub async fn post_view(&self, view: &Value) -> Checked {
        let api = self.api().await;
        let request = api.post(self.url("/api/views")).json(view);
        request.send().await.expect("POST /api/views")
    }

    /// The key's count from `GET /api/views`; panics unless the answer is 200 with a
    /// count.
    pub async fn count(&self, content_type: &str, content_id: &str) -> i64 {
        self.try_count(content_type, content_id)
            .await
            .unwrap_or_else(|e| panic!("GET {content_type}:{content_id}: {e}"))
    }

    /// The key's count, or what was answered instead (a 503 while a store
    /// recovers, say).
    pub async fn try_count(&self, content_type: &str, content_id: &str) -> Result<i64, String> {
        let url = format!("/api/views?contentType={content_type}&contentId={content_id}");
        let r = self.api().await.get(self.url(&url)).send().await;
        let r = r.map_err(|e| e.to_string())?;
        let body: Value = r.json().await.unwrap_or(Value::Null);
        match body["count"].as_i64() {
            Some(n) if r.status() == 200 => Ok(n),
            _ => Err(format!("{} {body}", r.status())),
        }
    }

    /// The `days` of `GET /api/views/daily` for the key over `from..=to`; panics
    /// unless the answer is 200.
    pub async fn daily(
        &self,
        content_type: &str,
        content_id: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Vec<Value> {
        let url = format!(
            "/api/views/daily?contentType={content_type}&contentId={content_id}&from={from}&to={to}"
        );
        let r = self.api().await.get(self.url(&url)).send().await;
        let r = r.expect("GET /api/views/daily");
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(
            r.status(),
            200,
            "GET daily {content_type}:{content_id}: {body}"
        );
        body["days"].as_array().cloned().expect("days")
    }

    /// Waits until the key's count is `want`: fails at once if it is ever more, and
    /// after 30 s if it is still less (or not answered).
    pub async fn wait_count(&self, content_type: &str, content_id: &str, want: i64) {
        let what = format!("{content_type}:{content_id} counts {want}");
        eventually(Duration::from_secs(30), &what, || async {
            let now = self.try_count(content_type, content_id).await?;
            assert!(
                now <= want,
                "{content_type}:{content_id} counts {now}, more than {want}"
            );
            if now == want {
                Ok(())
            } else {
                Err(format!("{now}"))
            }
        })
        .await;
    }
}
