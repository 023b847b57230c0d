//! Who may write and read: extractors the handlers take before their body, so a
//! request without its key is refused before its body is read.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts};

use crate::error::ApiError;
use crate::extract::RawQuery;
use crate::protect::client::{client_addr, ClientAddr};
use crate::protect::{refused_by, Protect, KEY_HEADER, KEY_PARAM};
use crate::AppState;

/// A write that passed the key check: which key it carried, the client's address
/// (when addresses are limited) and whether a crawler sent it (when crawlers are
/// dropped).
pub(crate) struct WriteAccess {
    /// The `WRITE_KEYS` entry the key matched (`None` while keys are off).
    entry: Option<usize>,
    pub addr: Option<ClientAddr>,
    /// The User-Agent is a known crawler's, and `BOT_FILTER=drop`.
    pub bot: bool,
}

impl FromRequestParts<AppState> for WriteAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let protect = &state.protect;
        let entry = match &protect.write_keys {
            None => None,
            Some(keys) => {
                let given = match header_value(parts, &KEY_HEADER) {
                    Some(key) => Some(key),
                    None => query_key(parts, state).await?,
                };
                let Some(given) = given else {
                    return Err(refused_by(ApiError::MissingWriteKey));
                };
                match keys.find(&given) {
                    Some(entry) => Some(entry),
                    None => return Err(refused_by(ApiError::InvalidWriteKey)),
                }
            }
        };
        let addr = match protect.per_addr {
            Some(_) => peer_client(parts, protect),
            None => None,
        };
        let bot = protect.bots.as_ref().is_some_and(|bots| {
            parts
                .headers
                .get(header::USER_AGENT)
                .is_some_and(|ua| bots.is_bot(&String::from_utf8_lossy(ua.as_bytes())))
        });
        Ok(Self { entry, addr, bot })
    }
}

impl WriteAccess {
    /// The app of the key, as an index into `WriteKeys::apps`.
    pub fn app(&self, protect: &Protect) -> Option<usize> {
        let keys = protect.write_keys.as_ref()?;
        Some(keys.entry(self.entry?)?.app)
    }

    /// The name of the key's app (`None` while keys are off).
    pub(crate) fn app_name<'a>(&self, protect: &'a Protect) -> Option<&'a str> {
        let app = self.app(protect)?;
        Some(protect.write_keys.as_ref()?.app_name(app))
    }

    /// Refuses a namespace the key may not write (not counted: the caller counts).
    pub(crate) fn may_write(&self, protect: &Protect, namespace: &str) -> Result<(), ApiError> {
        let (Some(keys), Some(entry)) = (&protect.write_keys, self.entry) else {
            return Ok(());
        };
        match keys.entry(entry) {
            Some(key) if !key.may_write(namespace) => Err(ApiError::NamespaceNotAllowed {
                app: keys.app_name(key.app).to_owned(),
                namespace: namespace.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Takes `cost` views from the rate limits, or refuses the whole request.
    pub(crate) fn admit(&self, protect: &Protect, cost: usize) -> Result<(), ApiError> {
        protect.admit(self.addr, self.app(protect), cost as u64)
    }

    /// Charges a request refused for another reason `cost` views (see
    /// [`Protect::charge`]); 429 when the budget was already spent.
    pub(crate) fn charge(&self, protect: &Protect, cost: usize) -> Result<(), ApiError> {
        protect.charge(self.addr, self.app(protect), cost as u64)
    }
}

/// A read that passed the read key check (always, while `READ_KEY` is unset).
pub(crate) struct ReadAccess;

impl FromRequestParts<AppState> for ReadAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let protect = &state.protect;
        if let Some(key) = &protect.read_key {
            match read_key_given(parts, state).await? {
                None => return Err(refused_by(ApiError::MissingReadKey)),
                Some(given) if key.matches(&given) => {}
                Some(_) => return Err(refused_by(ApiError::InvalidReadKey)),
            }
        }
        if protect.reads_per_addr.is_some() {
            protect.admit_read(peer_client(parts, protect))?;
        }
        Ok(ReadAccess)
    }
}

/// Whether a write's answer may carry a count: always while `READ_KEY` is unset,
/// otherwise only when the request carries the read key as a read would (Bearer,
/// header or `?key=`). A write without it is not refused; its answer leaves the
/// count out, so writing does not become a way around the read key.
pub(crate) struct CountVisible(pub bool);

impl FromRequestParts<AppState> for CountVisible {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(key) = &state.protect.read_key else {
            return Ok(CountVisible(true));
        };
        // A query that does not parse carries no key; the write itself is judged
        // by the extractors that need the query.
        let given = read_key_given(parts, state).await.ok().flatten();
        Ok(CountVisible(given.is_some_and(|given| key.matches(&given))))
    }
}

/// The read key a request carries: `Authorization: Bearer`, else the key header,
/// else `?key=`.
async fn read_key_given(parts: &mut Parts, state: &AppState) -> Result<Option<String>, ApiError> {
    let bearer = bearer(parts).map(str::to_owned);
    match bearer.or_else(|| header_value(parts, &KEY_HEADER)) {
        Some(given) => Ok(Some(given)),
        None => query_key(parts, state).await,
    }
}

/// The client's address: the peer's, or the trusted proxy header's.
fn peer_client(parts: &Parts, protect: &Protect) -> Option<ClientAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    client_addr(peer, &parts.headers, protect.proxy_header.as_ref())
}

/// The token of an `Authorization: Bearer <token>` header (the scheme's case does
/// not matter, RFC 7235), unless absent or empty.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A header's value, unless absent or empty.
fn header_value(parts: &Parts, name: &header::HeaderName) -> Option<String> {
    let value = parts.headers.get(name)?;
    let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
    (!text.is_empty()).then_some(text)
}

/// `?key=`, unless absent or empty.
async fn query_key(parts: &mut Parts, state: &AppState) -> Result<Option<String>, ApiError> {
    let query = RawQuery::from_request_parts(parts, state).await?;
    Ok(query
        .get(KEY_PARAM)
        .filter(|k| !k.is_empty())
        .map(str::to_owned))
}
