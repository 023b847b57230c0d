"""Keeps schemathesis's valid requests inside the API's rules that JSON Schema
cannot state, each of which the document says in words:

- `occurredAt` is refused when more than 5 minutes in the future, or older than
  `MAX_EVENT_AGE` (30 days unless set; the document can say the format, not
  "about now");
- `from` must not be after `to`, the two may span at most 366 days, and `days`
  excludes `from`/`to` (rules between parameters).

Only valid ("positive") cases are changed, and only where they break one of these;
invalid ones reach the service as generated. Loaded by `tests/tests/e2e/fuzz.rs`
through SCHEMATHESIS_HOOKS.
"""

from datetime import date, datetime, timedelta, timezone

import schemathesis

MAX_SPAN_DAYS = 366


def _positive(case):
    meta = case.meta
    return meta is None or meta.generation.mode.is_positive


MAX_EVENT_AGE = timedelta(days=30)


def _out_of_range(text):
    now = datetime.now(timezone.utc)
    try:
        at = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        # Valid RFC 3339 that Python does not read (a leap second): replaced.
        return True
    if at.tzinfo is None:
        return False
    # A day's margin inside the age, for the clock between here and the ingest.
    return at > now or at < now - MAX_EVENT_AGE + timedelta(days=1)


def _about_now(view):
    if not isinstance(view, dict) or not isinstance(view.get("occurredAt"), str):
        return
    if _out_of_range(view["occurredAt"]):
        view["occurredAt"] = datetime.now(timezone.utc).isoformat()


def _day(text):
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        return None


def _range_within_rules(query):
    if "from" not in query and "to" not in query:
        return
    query.pop("days", None)
    today = datetime.now(timezone.utc).date()
    first = _day(query.get("from", today.isoformat()))
    last = _day(query.get("to", today.isoformat()))
    if first is None or last is None:
        return
    if first > last:
        first, last = last, first
    if (last - first).days + 1 > MAX_SPAN_DAYS:
        first = last - timedelta(days=MAX_SPAN_DAYS - 1)
    query["from"], query["to"] = first.isoformat(), last.isoformat()


@schemathesis.hook
def map_case(context, case):
    if not _positive(case):
        return case
    body = case.body
    for view in body if isinstance(body, list) else [body]:
        _about_now(view)
    if isinstance(case.query, dict):
        _range_within_rules(case.query)
    return case
