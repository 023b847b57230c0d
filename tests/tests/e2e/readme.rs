//! What README.md tells a newcomer to paste works as pasted, on the settings
//! `deploy/local/run` starts the ingest with: its script and pixel snippets,
//! copied from the README itself, loaded in headless Chromium from another origin.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use viewpipe_tests::browser::{chromium_binary, Chromium, PageServer, Profile};
use viewpipe_tests::{log_dir, Stack};

/// Where the README's snippets send views.
const EXAMPLE_HOST: &str = "https://views.example.com";

fn repo_file(path: &str) -> String {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The README's line that begins with `start`.
fn snippet(readme: &str, start: &str) -> String {
    readme
        .lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("README.md has no line starting {start:?}"))
        .to_owned()
}

/// The default `deploy/local/run` gives `name` (`export NAME="${NAME:-value}"`).
fn run_default(run: &str, name: &str) -> String {
    let marker = format!("{name}:-");
    let start = run
        .find(&marker)
        .unwrap_or_else(|| panic!("deploy/local/run sets no default {name}"))
        + marker.len();
    run[start..]
        .split('}')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readmes_browser_snippets_count_as_pasted_on_the_local_defaults() {
    chromium_binary();
    let (readme, run) = (repo_file("README.md"), repo_file("deploy/local/run"));
    let script = snippet(
        &readme,
        &format!("<script defer src=\"{EXAMPLE_HOST}/v.js\""),
    );
    let pixel = snippet(&readme, &format!("<img src=\"{EXAMPLE_HOST}/p.gif"));
    let namespaces = run_default(&run, "NAMESPACES");
    let origins = run_default(&run, "CORS_ORIGINS");
    let stack = Stack::start().await.expect("stack");
    let ingest = stack
        .spawn_ingest(&[("NAMESPACES", &namespaces), ("CORS_ORIGINS", &origins)])
        .await
        .expect("ingest");
    let _aggregator = stack.spawn_aggregator(&[]).await.expect("aggregator");
    let api = ingest.url("");
    let api = api.trim_end_matches('/');
    let page = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>docs</title>
{script}
</head><body>
{pixel}
<script>
addEventListener("load", function () {{
  setTimeout(function () {{
    var img = document.querySelector("img");
    fetch("/report", {{ method: "POST", body: JSON.stringify({{
      script: typeof window.viewpipe, pixel: img.naturalWidth + "x" + img.naturalHeight }}) }});
  }}, 500);
}});
</script></body></html>"#
    )
    .replace(EXAMPLE_HOST, api);
    let pages: HashMap<String, String> = [("/docs/intro/".to_owned(), page)].into();
    let mut server = PageServer::start(pages).await.expect("page server");
    let url = format!("http://localhost:{}/docs/intro/", server.addr.port());
    let profile = Profile::new(&stack.id).expect("profile");
    let log = log_dir().join(format!("{}-chromium-readme.log", stack.id));
    let browser = Chromium::open(&url, &profile, &log).expect("chromium");
    let report = server
        .report(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#} (browser log: {})", log.display()));
    browser.close().await;
    println!("README snippets on NAMESPACES={namespaces} CORS_ORIGINS={origins}: {report}");
    assert_eq!(report, json!({"script": "object", "pixel": "1x1"}));
    stack.wait_published(2).await;
    stack
        .wait_flushed_total(2, Duration::from_secs(60))
        .await
        .expect("flushed");
    let totals = stack.totals().await.expect("totals");
    assert_eq!(
        totals.into_iter().collect::<Vec<_>>(),
        [
            ("page:docs:intro".to_owned(), 1),
            ("page:pricing".to_owned(), 1)
        ]
    );
}
