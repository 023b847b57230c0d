//! v.js in a real browser: what the script says in the console when a view is refused.

use super::*;

/// A page embedding `/v.js` of the ingest at `?api=` with `data-type` `?type=`,
/// which keeps what the script says in the console and reports it: after its first
/// warning and a second more, or after 10 s without one. With `?manual=1` it also
/// counts one view by hand once the first warning came.
const CONSOLE_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>v.js and the console</title>
<script>
  var query = new URLSearchParams(location.search);
  var warnings = [];
  var warn = console.warn;
  console.warn = function () {
    warnings.push(Array.prototype.join.call(arguments, " "));
    warn.apply(console, arguments);
  };
  var script = document.createElement("script");
  script.src = query.get("api") + "/v.js";
  script.dataset.type = query.get("type");
  script.dataset.id = "console";
  document.head.appendChild(script);
  addEventListener("load", function () {
    var started = Date.now();
    (function wait() {
      if (warnings.length > 0 || Date.now() - started > 10000) {
        if (query.get("manual") && window.viewpipe) {
          window.viewpipe.view({ contentId: "console-manual" });
        }
        setTimeout(function () {
          fetch("/report", { method: "POST", body: JSON.stringify({ warnings: warnings }) });
        }, 1000);
      } else {
        setTimeout(wait, 50);
      }
    })();
  });
</script>
</head><body></body></html>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_script_says_in_the_console_why_a_view_was_refused() {
    chromium_binary();
    let stack = Stack::start().await.expect("stack");
    let pages = HashMap::from([("/console".to_owned(), CONSOLE_PAGE.to_owned())]);
    let mut server = PageServer::start(pages).await.expect("page server");
    let site = format!("http://localhost:{}", server.addr.port());
    // Two ingests: one that lets the page's origin read its answers, one that does
    // not (CORS_ORIGINS unset, the default).
    let open = stack
        .spawn_ingest(&[NAMESPACES, ("CORS_ORIGINS", &site)])
        .await
        .expect("ingest");
    let closed = stack.spawn_ingest(&[NAMESPACES]).await.expect("ingest");
    let profile = Profile::new(&stack.id).expect("browser profile");
    let mut warnings = HashMap::new();
    for (what, query) in [
        ("refused", format!("api={}&type=video", origin_of(&open))),
        (
            "unreadable",
            format!("api={}&type=page&manual=1", origin_of(&closed)),
        ),
    ] {
        let log = log_dir().join(format!("{}-chromium-console-{what}.log", stack.id));
        let browser =
            Chromium::open(&format!("{site}/console?{query}"), &profile, &log).expect("chromium");
        let report = server
            .report(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:#} (browser log: {})", log.display()));
        browser.close().await;
        warnings.insert(what, report["warnings"].clone());
    }
    drop(profile);
    let refused = &warnings["refused"];
    assert_eq!(
        refused,
        &json!([
            "viewpipe: the view of video:console was not counted (400 unknown_namespace): contentType: \"video\" is not an allowed content type (allowed: page, resource)"
        ]),
        "the refusal, with the API's code and message"
    );
    let note = format!(
        "viewpipe: no answer from the ingest could be read on this page: it does not list \
         {site} in CORS_ORIGINS, or the network failed. Views are still sent; refused ones \
         cannot be reported here"
    );
    assert_eq!(
        warnings["unreadable"],
        json!([note]),
        "said once, for two views"
    );
    // Both views of the page the ingest gives no CORS headers were published.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.published().await, 2, "the unreadable page's 2 views");
    eprintln!(
        "v.js in the console: a refused view (data-type=\"video\") -> {refused}; from an origin not in CORS_ORIGINS -> one note for 2 views, both published"
    );
}
