//! Reading a batch body one element at a time, so what a request costs is bounded
//! by the batch limits rather than by what the client sent.
//!
//! The body is at most [`MAX_BODY`](super::batch::MAX_BODY) bytes, read whole before
//! this starts. Its elements (a JSON array's, or an NDJSON body's non-blank lines)
//! are parsed one after another and handed to the caller, who validates each and
//! keeps only the outcome; the reading stops at the first element past
//! [`MAX_EVENTS`], leaving the rest unparsed. One element is parsed only when it is
//! at most [`MAX_ELEMENT`] bytes, as much as `POST /api/views` takes.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::Deserializer as _;
use serde_json::value::RawValue;

use viewpipe_schema::FieldError;

use crate::error::ApiError;
use crate::extract;
use crate::routes::batch::MAX_EVENTS;

/// Most bytes one element may have: a single view's limit.
pub(crate) const MAX_ELEMENT: usize = extract::MAX_BODY;

/// Why one element could not be read as JSON: `(code, message)`.
pub(crate) type ElementError = (&'static str, String);

/// Why a batch body was refused whole, and how many elements had been read when it
/// was (what the refusal costs against the rate limits).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub error: ApiError,
    pub read: usize,
}

/// Reads the elements of `body`, an NDJSON body when `ndjson`, else a JSON array,
/// calling `each` with every element's index and its JSON (or why it is not JSON).
/// Answers how many elements there were; the batch is refused (and `each` called
/// no more) past [`MAX_EVENTS`], when the body is not an array, does not parse as
/// one, or holds none.
pub(crate) fn read_elements<'b, F>(body: &'b [u8], ndjson: bool, each: F) -> Result<usize, Refusal>
where
    F: FnMut(usize, Result<&'b [u8], ElementError>),
{
    let mut reader = Reader { read: 0, each };
    let outcome = if ndjson {
        reader.ndjson(body)
    } else {
        reader.array(body)
    };
    let read = reader.read;
    let error = match outcome {
        Ok(()) if read == 0 => empty(),
        Ok(()) => return Ok(read),
        Err(error) => error,
    };
    Err(Refusal { error, read })
}

struct Reader<F> {
    read: usize,
    each: F,
}

impl<'b, F: FnMut(usize, Result<&'b [u8], ElementError>)> Reader<F> {
    /// Hands on the next element, or refuses the batch when it is one too many.
    fn element(&mut self, bytes: &'b [u8]) -> Result<(), ApiError> {
        if self.read == MAX_EVENTS {
            // The one past the limit is counted, so the refusal costs MAX_EVENTS + 1.
            self.read += 1;
            return Err(too_many());
        }
        let parsed = if bytes.len() > MAX_ELEMENT {
            Err((
                "payload_too_large",
                format!(
                    "a view is at most 1 MiB; this one has {} bytes",
                    bytes.len()
                ),
            ))
        } else {
            viewpipe_schema::event::check_json(bytes)
                .map(|()| bytes)
                .map_err(|e| ("invalid_json", format!("line is not valid JSON: {e}")))
        };
        (self.each)(self.read, parsed);
        self.read += 1;
        Ok(())
    }

    fn ndjson(&mut self, body: &'b [u8]) -> Result<(), ApiError> {
        body.split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .try_for_each(|line| self.element(line))
    }

    fn array(&mut self, body: &'b [u8]) -> Result<(), ApiError> {
        let starts_array = body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'[');
        if !starts_array {
            // Valid JSON of another kind is told so; checking costs no allocation.
            return match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => Err(not_an_array()),
                Err(e) => Err(ApiError::BadJson(e.to_string())),
            };
        }
        let mut refused = None;
        let mut de = serde_json::Deserializer::from_slice(body);
        let outcome = (&mut de)
            .deserialize_seq(Elements {
                reader: self,
                refused: &mut refused,
            })
            .and_then(|()| de.end());
        match (refused, outcome) {
            // The visitor stopped the reading; serde_json's error only says so.
            (Some(error), _) => Err(error),
            (None, Ok(())) => Ok(()),
            (None, Err(e)) => Err(ApiError::BadJson(e.to_string())),
        }
    }
}

/// The visitor of a JSON array: each element is taken as raw JSON (borrowed from
/// the body, not copied) and handed on; past the limit it stops with an error and
/// leaves the batch's refusal in `refused`.
struct Elements<'r, F> {
    reader: &'r mut Reader<F>,
    refused: &'r mut Option<ApiError>,
}

impl<'de, F: FnMut(usize, Result<&'de [u8], ElementError>)> Visitor<'de> for Elements<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of views")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element_seed(Raw)? {
            if let Err(error) = self.reader.element(raw.get().as_bytes()) {
                *self.refused = Some(error);
                return Err(de::Error::custom("batch refused"));
            }
        }
        Ok(())
    }
}

/// One element as raw JSON.
struct Raw;

impl<'de> DeserializeSeed<'de> for Raw {
    type Value = &'de RawValue;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        serde::Deserialize::deserialize(de)
    }
}

fn empty() -> ApiError {
    FieldError::new("body", "empty_batch", "the batch holds no views").into()
}

fn too_many() -> ApiError {
    FieldError::new(
        "body",
        "too_many_events",
        format!("a batch holds at most {MAX_EVENTS} views; this one has more"),
    )
    .into()
}

fn not_an_array() -> ApiError {
    FieldError::new(
        "body",
        "invalid_type",
        "expected a JSON array of views (or NDJSON with Content-Type: application/x-ndjson)",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `body`, answering each element's outcome (`"ok"` or its code) or the
    /// batch's refusal code with how many elements it cost.
    fn read(body: &[u8], ndjson: bool) -> Result<Vec<&'static str>, (&'static str, usize)> {
        let mut seen = Vec::new();
        let outcome = read_elements(body, ndjson, |index, element| {
            assert_eq!(index, seen.len());
            seen.push(element.map_or_else(|(code, _)| code, |_| "ok"));
        });
        match outcome {
            Ok(n) => {
                assert_eq!(n, seen.len());
                Ok(seen)
            }
            Err(r) => Err((r.error.code(), r.read)),
        }
    }

    #[test]
    fn elements_are_handed_on_one_by_one() {
        assert_eq!(read(br#" [{"a":1}, 2, "x"] "#, false), Ok(vec!["ok"; 3]));
        assert_eq!(
            read(b"{\"a\":1}\n\n  \nx\r\n[1]", true),
            Ok(vec!["ok", "invalid_json", "ok"])
        );
        let big = format!("[\"{}\"]", "p".repeat(MAX_ELEMENT));
        assert_eq!(read(big.as_bytes(), false), Ok(vec!["payload_too_large"]));
    }

    #[test]
    fn a_batch_is_refused_whole_with_what_it_cost() {
        assert_eq!(read(b"[]", false), Err(("empty_batch", 0)));
        assert_eq!(read(b"\n \n", true), Err(("empty_batch", 0)));
        assert_eq!(read(br#"{"a":1}"#, false), Err(("invalid_type", 0)));
        assert_eq!(read(b"{", false), Err(("invalid_json", 0)));
        assert_eq!(read(b"[1, 2, {", false), Err(("invalid_json", 2)));
        assert_eq!(read(b"[1] 2", false), Err(("invalid_json", 1)));
    }

    #[test]
    fn reading_stops_at_the_first_element_past_the_limit() {
        let fits = format!("[{}1]", "1,".repeat(MAX_EVENTS - 1));
        assert_eq!(
            read(fits.as_bytes(), false).map(|v| v.len()),
            Ok(MAX_EVENTS)
        );
        // Past the limit the rest is not read, broken or not.
        let over = format!("[{}1, {{{{{{", "1,".repeat(MAX_EVENTS));
        assert_eq!(
            read(over.as_bytes(), false),
            Err(("too_many_events", MAX_EVENTS + 1))
        );
        let lines = "x\n".repeat(5 * MAX_EVENTS);
        assert_eq!(
            read(lines.as_bytes(), true),
            Err(("too_many_events", MAX_EVENTS + 1))
        );
    }
}
