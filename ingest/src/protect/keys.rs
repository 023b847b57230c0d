//! API keys: `WRITE_KEYS` (per app, optionally limited to some namespaces) and
//! `READ_KEY`, and the constant-time comparison every key and token goes through.
//!
//! A key is a secret: `Debug` shows the app names and namespaces, never a key, and
//! a parse error says which entry is wrong without repeating it.

use std::fmt;

use viewpipe_runtime::settings::Secret;
use viewpipe_schema::key::is_valid_content_type;

/// Fewest characters a key may have.
pub(crate) const MIN_KEY_CHARS: usize = 16;
/// Most characters a key may have.
pub(crate) const MAX_KEY_CHARS: usize = 256;
/// Most characters an app name may have.
pub(crate) const MAX_APP_CHARS: usize = 64;

/// Compares without returning early, so the time taken does not tell how much of a
/// guess was right (it does depend on the lengths).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// A key as the settings give it: 16 to 256 characters of `[A-Za-z0-9._~-]`, the
/// characters a URL carries as they are (so `?key=` needs no encoding). `openssl
/// rand -hex 24` makes one.
#[derive(Clone)]
pub struct ApiKey(Secret);

impl ApiKey {
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// True when `given` is this key (in constant time).
    pub fn matches(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.expose().as_bytes())
    }
}

impl std::str::FromStr for ApiKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let chars = s.chars().count();
        if !(MIN_KEY_CHARS..=MAX_KEY_CHARS).contains(&chars) {
            return Err(format!(
                "a key must have {MIN_KEY_CHARS} to {MAX_KEY_CHARS} characters; this one has {chars}"
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
        {
            return Err("a key may only hold the characters A-Z a-z 0-9 . _ ~ -".to_owned());
        }
        s.parse().map(ApiKey)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// One entry of `WRITE_KEYS`.
#[derive(Clone)]
pub struct WriteKey {
    /// Index of the app in [`WriteKeys::apps`].
    pub app: usize,
    pub key: ApiKey,
    /// The namespaces this key may write; `None`: every one `NAMESPACES` allows.
    pub namespaces: Option<Vec<String>>,
}

/// `WRITE_KEYS`: comma-separated `<app>:<key>` or `<app>:<key>:<ns1>|<ns2>`. An app
/// may have several keys (to rotate one without downtime); each key is unique.
#[derive(Clone)]
pub struct WriteKeys {
    apps: Vec<String>,
    keys: Vec<WriteKey>,
}

impl WriteKeys {
    /// The app names, each once, in the order first given.
    pub(crate) fn apps(&self) -> &[String] {
        &self.apps
    }

    pub(crate) fn app_name(&self, app: usize) -> &str {
        self.apps.get(app).map_or("", String::as_str)
    }

    /// The index of the entry whose key is `given`. Every key is compared, with no
    /// early exit, so the time taken does not tell which key (or how much of one)
    /// was guessed.
    pub fn find(&self, given: &str) -> Option<usize> {
        let mut found = None;
        for (i, entry) in self.keys.iter().enumerate() {
            if entry.key.matches(given) {
                found = Some(i);
            }
        }
        found
    }

    /// The entry [`WriteKeys::find`] found.
    pub fn entry(&self, index: usize) -> Option<&WriteKey> {
        self.keys.get(index)
    }

    /// The namespaces named by some key (to check them against `NAMESPACES`).
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.keys
            .iter()
            .filter_map(|k| k.namespaces.as_ref())
            .flatten()
            .map(String::as_str)
    }

    /// True when some key may write only some namespaces.
    pub(crate) fn any_limited(&self) -> bool {
        self.keys.iter().any(|k| k.namespaces.is_some())
    }
}

impl WriteKey {
    /// True when this key may write `namespace` (already allowed by `NAMESPACES`).
    pub(crate) fn may_write(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == namespace))
    }
}

fn is_valid_app(app: &str) -> bool {
    (1..=MAX_APP_CHARS).contains(&app.len())
        && app
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

impl std::str::FromStr for WriteKeys {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = WriteKeys {
            apps: Vec::new(),
            keys: Vec::new(),
        };
        let entries = s.split(',').map(str::trim).filter(|e| !e.is_empty());
        for (n, entry) in entries.enumerate() {
            let n = n + 1;
            let mut parts = entry.split(':');
            let (app, key, namespaces) = (parts.next(), parts.next(), parts.next());
            let (Some(app), Some(key), None) = (app, key, parts.next()) else {
                return Err(format!(
                    "entry {n} is not <app>:<key> or <app>:<key>:<ns1>|<ns2>"
                ));
            };
            if !is_valid_app(app) {
                return Err(format!(
                    "entry {n}: the app name must be 1 to {MAX_APP_CHARS} characters of [a-z0-9_-]"
                ));
            }
            let key: ApiKey = key
                .parse()
                .map_err(|e| format!("entry {n} (app {app}): {e}"))?;
            let namespaces = match namespaces {
                None => None,
                Some(list) => {
                    let list: Vec<String> = list.split('|').map(str::to_owned).collect();
                    if let Some(bad) = list.iter().find(|ns| !is_valid_content_type(ns)) {
                        return Err(format!(
                            "entry {n} (app {app}): namespace {bad:?} is not of the form [a-z][a-z0-9_-]{{0,31}}"
                        ));
                    }
                    Some(list)
                }
            };
            if out.find(key.expose()).is_some() {
                return Err(format!(
                    "entry {n} (app {app}): this key is already given to an earlier entry"
                ));
            }
            let index = match out.apps.iter().position(|a| a == app) {
                Some(i) => i,
                None => {
                    out.apps.push(app.to_owned());
                    out.apps.len() - 1
                }
            };
            out.keys.push(WriteKey {
                app: index,
                key,
                namespaces,
            });
        }
        if out.keys.is_empty() {
            return Err("lists no key".to_owned());
        }
        Ok(out)
    }
}

impl fmt::Debug for WriteKeys {
    /// App names and namespaces only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for k in &self.keys {
            match &k.namespaces {
                Some(ns) => list.entry(&format_args!(
                    "{}:***:{}",
                    self.app_name(k.app),
                    ns.join("|")
                )),
                None => list.entry(&format_args!("{}:***", self.app_name(k.app))),
            };
        }
        list.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1-0123456789abcdef";
    const K2: &str = "k2-0123456789abcdef";
    const K3: &str = "k3-0123456789abcdef";

    fn keys(s: &str) -> Result<WriteKeys, String> {
        s.parse()
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret2"));
        assert!(!constant_time_eq(b"", b"s3cret"));
    }

    #[test]
    fn write_keys_parse_and_find_their_app() {
        let k = keys(&format!(
            "web:{K1}, mobile:{K2}:course , web:{K3}:course|resource"
        ))
        .expect("valid");
        assert_eq!(k.apps(), ["web", "mobile"]);
        let find = |key| k.find(key).and_then(|i| k.entry(i));
        let web = find(K1).expect("K1");
        assert_eq!((k.app_name(web.app), web.namespaces.clone()), ("web", None));
        assert!(web.may_write("resource") && web.may_write("course"));
        let mobile = find(K2).expect("K2");
        assert_eq!(k.app_name(mobile.app), "mobile");
        assert!(mobile.may_write("course") && !mobile.may_write("resource"));
        let rotated = find(K3).expect("K3");
        assert_eq!(rotated.app, web.app, "two keys of one app share it");
        assert!(k.find("k1-0123456789abcdeF").is_none());
        assert!(k.find(&K1[..16]).is_none());
        assert!(k.find("").is_none());
        assert!(k.any_limited());
        assert_eq!(
            k.namespaces().collect::<Vec<_>>(),
            ["course", "course", "resource"]
        );
    }

    #[test]
    fn write_keys_never_show_a_key() {
        let k = keys(&format!("web:{K1},mobile:{K2}:course")).expect("valid");
        let shown = format!("{k:?}");
        assert_eq!(shown, r#"[web:***, mobile:***:course]"#);
        assert!(!shown.contains(K1) && !shown.contains(K2));
    }

    #[test]
    fn bad_write_keys_are_refused_without_repeating_the_key() {
        for (given, says) in [
            ("", "lists no key"),
            (" , ", "lists no key"),
            ("web", "entry 1 is not"),
            (&format!("Web:{K1}"), "entry 1: the app name"),
            (&format!("we b:{K1}"), "entry 1: the app name"),
            (&format!(":{K1}"), "entry 1: the app name"),
            ("web:short-key", "entry 1 (app web): a key must have 16"),
            (
                &format!("web:{K1},app:has space in it ok"),
                "entry 2 (app app): a key may only hold",
            ),
            (&format!("web:{K1}:"), "namespace \"\" is not"),
            (&format!("web:{K1}:Course"), "namespace \"Course\" is not"),
            (&format!("web:{K1}:a:b"), "entry 1 is not"),
            (
                &format!("web:{K1},other:{K1}"),
                "entry 2 (app other): this key is already given",
            ),
        ] {
            let err = keys(given).expect_err(given);
            assert!(err.contains(says), "{given:?}: {err}");
            assert!(!err.contains(K1), "{given:?}: the message repeats the key");
        }
    }

    #[test]
    fn api_keys() {
        let key: ApiKey = "abcdefghij-_.~0123".parse().expect("valid");
        assert!(key.matches("abcdefghij-_.~0123"));
        assert!(!key.matches("abcdefghij-_.~012"));
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
        assert!("a".repeat(15).parse::<ApiKey>().is_err());
        assert!("a".repeat(257).parse::<ApiKey>().is_err());
        assert!("a".repeat(256).parse::<ApiKey>().is_ok());
        assert!("abcdefghij0123456+".parse::<ApiKey>().is_err());
        assert!("abcdefghij012345é".parse::<ApiKey>().is_err());
    }
}
