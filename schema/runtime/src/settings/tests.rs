//! Tests of the shared settings: their parsing and what they show of secrets.

use super::*;

#[test]
fn urls_hide_their_password() {
    let url: SecretUrl = "postgres://app:hunter2@db.example:5432/viewpipe"
        .parse()
        .expect("url");
    assert_eq!(
        url.to_string(),
        "postgres://app:***@db.example:5432/viewpipe"
    );
    assert!(!format!("{url:?}").contains("hunter2"));
    assert_eq!(url.address(), "db.example:5432");
    assert_eq!(
        url.expose(),
        "postgres://app:hunter2@db.example:5432/viewpipe"
    );
    let plain: SecretUrl = "redis://127.0.0.1:6379".parse().expect("url");
    assert_eq!(plain.to_string(), "redis://127.0.0.1:6379");
    assert_eq!(plain.address(), "127.0.0.1:6379");
}

#[test]
fn every_form_of_password_is_hidden() {
    for (url, shown, address) in [
        (
            "postgres://app@db:5432/vp?sslmode=require&password=hunter2",
            "postgres://app@db:5432/vp?sslmode=require&password=***",
            "db:5432",
        ),
        (
            "postgres://db/vp?password=hunter2@x&user=app",
            "postgres://db/vp?password=***&user=app",
            "db",
        ),
        (
            "postgres://app:hun@ter2@db/vp",
            "postgres://app:***@db/vp",
            "db",
        ),
        (
            "postgres://app:hun?ter2@db/vp",
            "postgres://app:***@db/vp",
            "db",
        ),
        (
            "redis://:hunter2@cache:6379",
            "redis://:***@cache:6379",
            "cache:6379",
        ),
        (
            "postgres://db/vp?sslpassword=hunter2&x&hunter2",
            "postgres://db/vp?sslpassword=***&***&***",
            "db",
        ),
        ("postgres://hun/ter2@db/vp", "postgres://***@db/vp", "db"),
    ] {
        let parsed: SecretUrl = url.parse().expect("url");
        assert_eq!(parsed.to_string(), shown, "{url}");
        assert_eq!(parsed.address(), address, "{url}");
        assert!(!format!("{parsed:?}").contains("hunter2"), "{url}");
    }
}

#[test]
fn redis_none_selects_database_only_mode() {
    assert!(matches!(
        "none".parse::<RedisSetting>(),
        Ok(RedisSetting::Disabled)
    ));
    assert!(matches!(
        "redis://x:1".parse::<RedisSetting>(),
        Ok(RedisSetting::Url(_))
    ));
    assert!("localhost".parse::<RedisSetting>().is_err());
}

#[test]
fn durations_carry_their_unit() {
    assert_eq!(millis("250"), Ok(Duration::from_millis(250)));
    assert!(millis("2s").is_err());
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("5h").is_err());
}

#[test]
fn secrets_do_not_debug_print() {
    let token: Secret = "s3cret".parse().expect("token");
    assert_eq!(format!("{token:?}"), "Secret(***)");
}
