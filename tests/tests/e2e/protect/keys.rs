//! Write keys: required when set, limiting the namespaces and the apps they may
//! write.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_keys_are_required_and_limit_namespaces_and_apps() {
    let stack = Stack::start().await.expect("stack");
    let keys = format!("web:{WEB_KEY},mobile:{MOBILE_KEY}:course");
    let ingest = stack
        .spawn_ingest(&[("WRITE_KEYS", keys.as_str())])
        .await
        .expect("ingest");
    let api = Api::new(&ingest).await;
    let url = ingest.url("/api/views");
    let batch_url = ingest.url("/api/views/batch");
    let code = |body: &Value| {
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // Refused before anything is read or published.
    let refusals = [
        ("no key", url.clone(), None, "missing_write_key"),
        (
            "empty key",
            format!("{url}?key="),
            None,
            "missing_write_key",
        ),
        (
            "wrong header",
            url.clone(),
            Some("wrong-key-0123456789abcdef"),
            "invalid_write_key",
        ),
        (
            "key prefix",
            url.clone(),
            Some(&WEB_KEY[..16]),
            "invalid_write_key",
        ),
        (
            "wrong query",
            format!("{url}?key=wrong-key-0123456789abc"),
            None,
            "invalid_write_key",
        ),
        ("batch no key", batch_url.clone(), None, "missing_write_key"),
        (
            "batch wrong key",
            batch_url.clone(),
            Some("nope"),
            "invalid_write_key",
        ),
    ];
    for (what, target, key, want) in &refusals {
        let body = if target.ends_with("batch") {
            json!([view("x")])
        } else {
            view("x")
        };
        let mut request = api.post(target.as_str()).json(&body);
        if let Some(key) = key {
            request = request.header("x-viewpipe-key", *key);
        }
        let r = request.send().await.expect("post");
        let body: Value = r.json().await.expect("json");
        assert_eq!(
            (r.status().as_u16(), code(&body)),
            (401, (*want).to_owned()),
            "{what}: {body}"
        );
        assert!(r.headers().contains_key("www-authenticate"), "{what}");
    }
    // The key is checked before the body: a broken body without a key is a 401.
    let r = api
        .post(&url)
        .header("content-type", "application/json")
        .body("{broken")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401);
    // A key limited to `course` may not write `resource`.
    let r = api
        .post(&url)
        .header("x-viewpipe-key", MOBILE_KEY)
        .json(&view("r1"))
        .send()
        .await
        .expect("post");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (r.status().as_u16(), code(&body)),
        (403, "namespace_not_allowed".into()),
        "{body}"
    );
    assert_eq!(body["error"]["field"], "contentType");
    assert_eq!(stack.published().await, 0, "nothing refused was published");

    // The right keys: header or query, and a limited key in its namespace.
    for request in [
        api.post(&url)
            .header("x-viewpipe-key", WEB_KEY)
            .json(&view("w1")),
        api.post(format!("{url}?key={WEB_KEY}")).json(&view("w1")),
        api.post(&url)
            .header("x-viewpipe-key", MOBILE_KEY)
            .json(&json!({"contentId": "c1", "contentType": "course"})),
    ] {
        let r = request.send().await.expect("post");
        assert_eq!(r.status().as_u16(), 202);
    }
    // In a batch, an element the key may not write is rejected; the others count.
    let r = api
        .post(&batch_url)
        .header("x-viewpipe-key", MOBILE_KEY)
        .json(&json!([
            {"contentId": "c1", "contentType": "course"},
            {"contentId": "r1", "contentType": "resource"},
            {"contentId": "c2", "contentType": "course"},
            {"contentType": "course"},
        ]))
        .send()
        .await
        .expect("batch");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (r.status().as_u16(), body["accepted"].as_i64()),
        (202, Some(2)),
        "{body}"
    );
    let rejected: Vec<(i64, String)> = body["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| (r["index"].as_i64().unwrap_or(-1), code(r)))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, "namespace_not_allowed".into()),
            (3, "missing_field".into())
        ]
    );
    assert_eq!(stack.published().await, 5);

    // RATE_LIMIT_PER_KEY: per app, whatever the address.
    let limited = stack
        .spawn_ingest(&[("WRITE_KEYS", keys.as_str()), ("RATE_LIMIT_PER_KEY", "4/m")])
        .await
        .expect("ingest with a per-app limit");
    let doc = Document::fetch(&limited).await.expect("document");
    let lurl = limited.url("/api/views");
    let mut statuses = Vec::new();
    for source in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        for _ in 0..2 {
            let client = client_from(source);
            let answer = send(
                &doc,
                client
                    .post(&lurl)
                    .header("x-viewpipe-key", WEB_KEY)
                    .json(&view("w2")),
            )
            .await;
            if answer.status != 202 {
                assert_limited(&answer, "web over its limit");
                let message = answer.body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("app web"), "{message}");
                assert!(!message.contains(WEB_KEY), "the key must not be echoed");
            }
            statuses.push(answer.status);
        }
    }
    assert_eq!(
        statuses,
        [202, 202, 202, 202, 429, 429],
        "web's 4/m over three addresses"
    );
    let mobile = send(
        &doc,
        reqwest::Client::new()
            .post(&lurl)
            .header("x-viewpipe-key", MOBILE_KEY)
            .json(&json!({"contentId": "c3", "contentType": "course"})),
    )
    .await;
    assert_eq!(mobile.status, 202, "another app has its own budget");
    assert_eq!(stack.published().await, 10);

    // Settings that cannot work stop start-up, naming the setting and not the key.
    for (settings, says) in [
        (vec![("RATE_LIMIT_PER_KEY", "5/s")], "RATE_LIMIT_PER_KEY"),
        (
            vec![("WRITE_KEYS", "web:web-key-0123456789abcdef:video")],
            "WRITE_KEYS names namespace \"video\"",
        ),
        (
            vec![("WRITE_KEYS", "web:short-secret")],
            "WRITE_KEYS: entry 1 (app web)",
        ),
    ] {
        let Err(e) = stack.spawn_ingest(&settings).await else {
            panic!("{settings:?} started");
        };
        let e = format!("{e:#}");
        assert!(e.contains(says), "{settings:?}: {e}");
        assert!(!e.contains("short-secret"), "{e}");
    }
    println!(
        "write keys: {} refusals 401 before reading the body, 403 outside the key's namespaces, nothing published; header and ?key= accepted; batch element refused by namespace; per-app limit across addresses; bad settings stop start-up",
        refusals.len() + 1
    );
}
