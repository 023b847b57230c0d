//! A view's fields as read from a JSON object (or a query string), before any check:
//! each field a view has, as text borrowed from the input where the JSON has no
//! escapes, or the kind of JSON value it was instead. A name given twice keeps its
//! last value; names a view does not have are skipped; `null` is the same as absent.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer;
use serde_json::value::RawValue;

use super::{EventError, FieldError};

/// The fields a view has, in the Kafka form's order.
const NAMES: [&str; 9] = [
    "v",
    "eventId",
    "contentType",
    "contentId",
    "path",
    "sessionId",
    "visitorId",
    "occurredAt",
    "receivedAt",
];

/// One field's value before its check.
#[derive(Debug, Clone, Default)]
pub(super) enum Raw<'a> {
    #[default]
    Absent,
    /// `null`: absent to every check, but named as given where a value is quoted.
    Null,
    Text(Cow<'a, str>),
    /// Not a string: the kind of value (`a number`, `an object`, ...) and its JSON.
    Other(&'static str, &'a str),
}

/// The fields of one view, by [`NAMES`].
#[derive(Debug, Default)]
pub(super) struct Object<'a>([Raw<'a>; NAMES.len()]);

impl<'a> Object<'a> {
    /// Reads a JSON object.
    pub(super) fn parse(json: &'a [u8]) -> Result<Self, EventError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let read = de.deserialize_map(ObjectVisitor).and_then(|object| {
            de.end()?;
            Ok(object)
        });
        read.map_err(|e| {
            // JSON as a `Value` reads it, but not an object, is told so; anything else
            // is not JSON, with what the full check says of it.
            match check_json(json) {
                Ok(()) => match json.iter().find(|b| !b.is_ascii_whitespace()) {
                    Some(b'{') => EventError::NotJson(e.to_string()),
                    _ => EventError::NotObject,
                },
                Err(e) => EventError::NotJson(e.to_string()),
            }
        })
    }

    /// The fields named by a query string (the pixel), through `get`.
    pub(super) fn from_query(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        let mut object = Self::default();
        for (slot, name) in object.0.iter_mut().zip(NAMES) {
            if let Some(value) = get(name) {
                *slot = Raw::Text(Cow::Borrowed(value));
            }
        }
        object
    }

    /// Takes the field `name` out as text: `None` when absent, refused when not a
    /// string.
    pub(super) fn text(&mut self, name: &'static str) -> Result<Option<Cow<'a, str>>, FieldError> {
        let slot = NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| &mut self.0[i]);
        match slot.map(std::mem::take) {
            None | Some(Raw::Absent | Raw::Null) => Ok(None),
            Some(Raw::Text(text)) => Ok(Some(text)),
            Some(Raw::Other(kind, _)) => Err(FieldError::new(
                name,
                "invalid_type",
                format!("must be a string, not {kind}"),
            )),
        }
    }

    /// Field `name` as JSON, written as `serde_json` writes a value it read
    /// (`None` when absent): for `v`, and for saying what it was instead.
    pub(super) fn json(&self, name: &str) -> Option<String> {
        let i = NAMES.iter().position(|n| *n == name)?;
        match &self.0[i] {
            Raw::Absent => None,
            Raw::Null => Some("null".to_owned()),
            Raw::Text(text) => Some(serde_json::Value::from(text.as_ref()).to_string()),
            Raw::Other(_, json) => Some(
                serde_json::from_str::<serde_json::Value>(json)
                    .map_or_else(|_| (*json).to_owned(), |v| v.to_string()),
            ),
        }
    }
}

/// What a value's JSON text starts with says its kind.
fn raw<'a>(value: &'a RawValue) -> Result<Raw<'a>, serde_json::Error> {
    let json = value.get();
    Ok(match json.as_bytes().first() {
        Some(b'n') => Raw::Null,
        Some(b'"') => match serde_json::from_str::<&'a str>(json) {
            Ok(text) => Raw::Text(Cow::Borrowed(text)),
            // Escapes: the text is unescaped into a string of its own.
            Err(_) => Raw::Text(Cow::Owned(serde_json::from_str::<String>(json)?)),
        },
        Some(b'{') => Raw::Other("an object", json),
        Some(b'[') => Raw::Other("an array", json),
        Some(b't' | b'f') => Raw::Other("a boolean", json),
        _ => Raw::Other("a number", json),
    })
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Object<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object describing one view")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Object<'de>, M::Error> {
        let mut object = Object::default();
        while let Some(index) = map.next_key_seed(Name)? {
            match index {
                Some(i) => {
                    let value: &'de RawValue = map.next_value()?;
                    object.0[i] = raw(value).map_err(de::Error::custom)?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(object)
    }
}

/// A key, read as its index in [`NAMES`] without copying it.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for Name {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Option<usize>, E> {
        Ok(NAMES.iter().position(|n| *n == name))
    }
}

/// Reads `bytes` as JSON as a `serde_json::Value` would be read (UTF-8 checked, at
/// most 128 levels of nesting) without building anything: what the API calls valid
/// JSON.
pub fn check_json(bytes: &[u8]) -> serde_json::Result<()> {
    serde_json::from_slice::<AnyJson>(bytes).map(|_| ())
}

/// Any JSON value, visited and dropped. Reading it through `deserialize_any` keeps
/// serde_json's nesting limit and its UTF-8 check, which skipping a value
/// (`IgnoredAny`) has neither of.
struct AnyJson;

impl<'de> serde::Deserialize<'de> for AnyJson {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(AnyJsonVisitor)
    }
}

struct AnyJsonVisitor;

impl<'de> Visitor<'de> for AnyJsonVisitor {
    type Value = AnyJson;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_unit<E: de::Error>(self) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<AnyJson, A::Error> {
        while seq.next_element::<AnyJson>()?.is_some() {}
        Ok(AnyJson)
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<AnyJson, M::Error> {
        while map.next_entry::<AnyJson, AnyJson>()?.is_some() {}
        Ok(AnyJson)
    }
}
