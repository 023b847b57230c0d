//! Secrets stay out of help, logs and errors; the admin token's length and scheme.

use super::*;

#[tokio::test]
async fn secrets_stay_out_of_help_logs_and_errors() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let secret_env = |database_url: &str| {
        let mut env = stack.env();
        env.retain(|(k, _)| k != "DATABASE_URL");
        env.push(("DATABASE_URL".into(), database_url.into()));
        env.push((
            "REDIS_URL".into(),
            format!("redis://:{PASSWORD}@127.0.0.1:6379"),
        ));
        env.push(("ADMIN_TOKEN".into(), format!("{PASSWORD}-{ADMIN_TOKEN}")));
        env
    };
    let db_url = stack
        .env()
        .into_iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let mut leaks = Vec::new();
    let mut check = |what: &str, printed: &str| {
        if printed.contains(PASSWORD) {
            leaks.push(what.to_owned());
        }
    };
    let with_userinfo = secret_env(&format!("postgres://app:{PASSWORD}@127.0.0.1:5432/x"));
    for (name, args) in [
        ("ingest", vec!["--help"]),
        ("aggregator", vec!["--help"]),
        ("aggregator", vec!["migrate", "--help"]),
    ] {
        let (_, printed) = run(name, &args, &with_userinfo, Duration::from_secs(20)).await;
        check(&format!("{name} {}", args.join(" ")), &printed);
    }
    // A password in the query: Postgres trusts this test user, so migrate succeeds
    // and logs the URL it migrated.
    let in_query = secret_env(&format!("{db_url}?sslmode=disable&password={PASSWORD}"));
    let (code, printed) = run(
        "aggregator",
        &["migrate"],
        &in_query,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, Some(0), "migrate: {printed}");
    check("aggregator migrate with ?password=", &printed);
    // Malformed settings: refused, named, not repeated.
    for (setting, value) in [
        ("DATABASE_URL", format!("{PASSWORD}-not-a-url")),
        ("REDIS_URL", format!("{PASSWORD}-not-a-url")),
        ("KAFKA_PROPERTIES", PASSWORD.to_string()),
    ] {
        let mut env = stack.env();
        env.push((setting.to_owned(), value));
        env.push(("INGEST_ADDR".into(), "127.0.0.1:0".into()));
        let (code, printed) = run("ingest", &[], &env, Duration::from_secs(20)).await;
        assert!(
            code.is_some_and(|c| c != 0),
            "ingest with a bad {setting}: {code:?} {printed}"
        );
        assert!(
            printed.contains(setting),
            "the error names {setting}: {printed}"
        );
        check(&format!("ingest with a malformed {setting}"), &printed);
    }
    println!("outputs showing the password: {leaks:?}");
    assert!(leaks.is_empty());
    stack.cleanup().await
}

#[tokio::test]
async fn a_short_admin_token_is_refused_at_start_up() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let short = "short-admin-token-31-characters";
    let mut env = stack.env();
    env.push(("ADMIN_TOKEN".into(), short.into()));
    env.push(("INGEST_ADDR".into(), "127.0.0.1:0".into()));
    let (code, printed) = run("ingest", &[], &env, Duration::from_secs(20)).await;
    println!("ingest with a 31-character ADMIN_TOKEN: exit {code:?}, said {printed:?}");
    assert!(code.is_some_and(|c| c != 0), "refused");
    assert!(printed.contains("ADMIN_TOKEN") && printed.contains("32"));
    assert!(!printed.contains(short));
    assert_eq!(printed.trim().lines().count(), 1, "one line");
    stack.cleanup().await
}

#[tokio::test]
async fn admin_bearer_scheme_is_case_insensitive_and_failures_counted() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ingest = stack
        .spawn_ingest_process(&[("ADMIN_TOKEN", ADMIN_TOKEN)])
        .await?;
    let client = reqwest::Client::new();
    let flush = |auth: String| {
        client
            .post(ingest.url("/api/views/flush?wait=false"))
            .header("authorization", auth)
            .send()
    };
    let mut statuses = Vec::new();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        statuses.push(
            flush(format!("{scheme} {ADMIN_TOKEN}"))
                .await?
                .status()
                .as_u16(),
        );
    }
    let failures = "viewpipe_ingest_admin_auth_failures_total";
    let before = metric(&ingest, failures).await;
    let wrong = flush("bearer wrong-token".into()).await?.status().as_u16();
    let after = metric(&ingest, failures).await;
    println!("flush with Bearer/bearer/BEARER: {statuses:?}; wrong token: {wrong}; {failures} {before} -> {after}");
    assert_eq!(statuses, [202, 202, 202]);
    assert_eq!(wrong, 401);
    assert_eq!(after - before, 1.0);
    let log = std::fs::read_to_string(&ingest.log_path).unwrap_or_default();
    assert!(log.contains("admin request refused") && !log.contains("wrong-token"));
    ingest.stop(Duration::from_secs(10)).await?;
    stack.cleanup().await
}
