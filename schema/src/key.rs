//! The counter key `"{contentType}:{contentId}"` and the namespace allow-list.

use std::fmt;

use crate::rules;

/// The longest `contentId` the contract allows.
pub(crate) const MAX_CONTENT_ID_LEN: usize = rules::CONTENT_ID.max_chars;
/// The longest `contentType` the contract allows.
pub(crate) const MAX_CONTENT_TYPE_LEN: usize = rules::CONTENT_TYPE.max_chars;

/// True when `id` is 1..=128 characters of `[A-Za-z0-9._~:-]`.
pub(crate) fn is_valid_content_id(id: &str) -> bool {
    (rules::CONTENT_ID.min_chars..=MAX_CONTENT_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'-'))
}

/// True when `ns` has the form `[a-z][a-z0-9_-]{0,31}`.
pub fn is_valid_content_type(ns: &str) -> bool {
    let mut bytes = ns.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && ns.len() <= MAX_CONTENT_TYPE_LEN
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// A validated content key. The namespace cannot contain `:`, so the first `:`
/// always separates the two parts even though a content id may contain `:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentKey {
    key: String,
    split: usize,
}

impl ContentKey {
    /// Builds a key from parts already validated by the caller's rules.
    pub fn new(content_type: &str, content_id: &str) -> Self {
        let mut key = String::with_capacity(content_type.len() + 1 + content_id.len());
        Self::write(&mut key, content_type, content_id);
        Self {
            key,
            split: content_type.len(),
        }
    }

    /// Appends the key text `"{contentType}:{contentId}"` to `out`: the one place the
    /// format is written, for callers that reuse a buffer per event.
    pub fn write(out: &mut String, content_type: &str, content_id: &str) {
        out.push_str(content_type);
        out.push(':');
        out.push_str(content_id);
    }

    /// Parses `"{contentType}:{contentId}"`, checking both parts' formats.
    pub fn parse(key: &str) -> Option<Self> {
        let (ns, id) = key.split_once(':')?;
        (is_valid_content_type(ns) && is_valid_content_id(id)).then(|| Self::new(ns, id))
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    pub fn content_type(&self) -> &str {
        &self.key[..self.split]
    }

    pub fn content_id(&self) -> &str {
        &self.key[self.split + 1..]
    }
}

impl fmt::Display for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// The `NAMESPACES` setting: which `contentType` values are accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// `*`: any name of the valid form.
    Any,
    /// A fixed list, e.g. `resource,course`.
    List(Vec<String>),
}

impl Namespaces {
    pub fn allows(&self, content_type: &str) -> bool {
        match self {
            Namespaces::Any => is_valid_content_type(content_type),
            Namespaces::List(list) => list.iter().any(|n| n == content_type),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Namespaces::Any => "any name of the form [a-z][a-z0-9_-]{0,31}".to_owned(),
            Namespaces::List(list) => list.join(", "),
        }
    }
}

impl std::str::FromStr for Namespaces {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            return Ok(Namespaces::Any);
        }
        let list: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if list.is_empty() {
            return Err("NAMESPACES must list at least one name, or be *".to_owned());
        }
        if let Some(bad) = list.iter().find(|n| !is_valid_content_type(n)) {
            return Err(format!(
                "NAMESPACES entry {bad:?} is not of the form [a-z][a-z0-9_-]{{0,31}}"
            ));
        }
        Ok(Namespaces::List(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ids() {
        assert!(is_valid_content_id("f538f5c5-1a72-4804-8eb1-3f05cea64874"));
        assert!(is_valid_content_id("a.b_c~d:e-f"));
        assert!(!is_valid_content_id(""));
        assert!(!is_valid_content_id(&"x".repeat(129)));
        assert!(is_valid_content_id(&"x".repeat(128)));
        assert!(!is_valid_content_id("a b"));
        assert!(!is_valid_content_id("a/b"));
        assert!(!is_valid_content_id("é"));
    }

    #[test]
    fn content_types() {
        assert!(is_valid_content_type("resource"));
        assert!(is_valid_content_type("a-b_9"));
        assert!(!is_valid_content_type("Resource"));
        assert!(!is_valid_content_type("9a"));
        assert!(!is_valid_content_type(""));
        assert!(!is_valid_content_type(&format!("a{}", "b".repeat(32))));
        assert!(is_valid_content_type(&format!("a{}", "b".repeat(31))));
    }

    #[test]
    fn key_round_trip_keeps_colons_in_the_id() {
        let key = ContentKey::new("course", "urn:x:1");
        assert_eq!(key.as_str(), "course:urn:x:1");
        let parsed = ContentKey::parse("course:urn:x:1").expect("valid key");
        assert_eq!(parsed.content_type(), "course");
        assert_eq!(parsed.content_id(), "urn:x:1");
        assert!(ContentKey::parse("Course:x").is_none());
        assert!(ContentKey::parse("nokey").is_none());
    }

    #[test]
    fn namespaces_setting() {
        let ns: Namespaces = "resource, course".parse().expect("valid list");
        assert!(ns.allows("course") && !ns.allows("video"));
        let any: Namespaces = "*".parse().expect("star");
        assert!(any.allows("video") && !any.allows("Video"));
        assert!("".parse::<Namespaces>().is_err());
        assert!("Bad".parse::<Namespaces>().is_err());
    }
}
