//! Cookieless visitor ids (`VISITOR_HASH`), for unique visitors.
//!
//! A view a browser sent without a `sessionId` gets a `visitorId`: the hex of the
//! first 16 bytes of SHA-256 over the salt of the UTC day, the client's address (as
//! the protection code reads it: the TCP peer, or `TRUSTED_PROXY_HEADER`; an IPv6
//! client by its /64), the write key's app when `WRITE_KEYS` is set, and the
//! User-Agent. One browser on one network thus keeps one id for a day, in every
//! ingest (they share the day's salt through Postgres), and nothing links it to the
//! next day's id once the salt is deleted (after two days). Neither the address nor
//! the User-Agent is stored or logged: they live only in the request.
//!
//! "A browser sent it" means: the pixel (`GET /p.gif`, which only browsers and mail
//! clients load), a `text/plain` body (a beacon), or a JSON POST with an `Origin`
//! header (browsers send one with every cross-origin POST). A backend posting for
//! its users sends none of these: every view it forwards would otherwise come from
//! one "visitor", its own server.

pub mod salt;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts, HeaderValue, Method};
use chrono::Utc;
use clap::ValueEnum;
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};

use viewpipe_runtime::health::Dependency;
use viewpipe_runtime::Health;

use crate::extract::{media, Media};
use crate::metrics as m;
use crate::protect::access::WriteAccess;
use crate::protect::client::{client_addr, ClientAddr};
use crate::AppState;

pub use salt::{Salt, Salts};

/// `VISITOR_HASH`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum VisitorHash {
    /// Views a browser sent without a `sessionId` get a `visitorId`.
    #[default]
    On,
    /// No view gets one.
    Off,
}

/// Derives visitor ids with the day's salt.
pub struct Visitors {
    salts: Salts,
    health: Health,
}

impl Visitors {
    pub fn new(db: DatabaseConnection, health: Health) -> Self {
        Self {
            salts: Salts::new(db),
            health,
        }
    }

    /// The visitor id of `browser` today, or `None` when Postgres gives no salt (the
    /// view is then published without one; [`Salts`] logs why).
    async fn id_for(&self, browser: &Browser, app: Option<&str>) -> Option<String> {
        let day = Utc::now().date_naive();
        let postgres_down = self.health.is_down(Dependency::Postgres);
        match self.salts.for_day(day, postgres_down).await {
            Some(salt) => {
                metrics::counter!(m::VISITOR_IDS, "result" => "derived").increment(1);
                Some(derive(
                    &salt,
                    &browser.addr,
                    browser.user_agent.as_bytes(),
                    app,
                ))
            }
            None => {
                metrics::counter!(m::VISITOR_IDS, "result" => "no_salt").increment(1);
                None
            }
        }
    }
}

/// What a visitor id is derived from, taken from the request. It has no `Debug`:
/// nothing of it may reach a log.
pub(crate) struct Browser {
    addr: ClientAddr,
    /// Empty when the request had none.
    user_agent: HeaderValue,
}

/// The request's [`Browser`], when visitor ids are on and a browser sent it (see
/// the module notes); else nothing.
pub(crate) struct Visit(Option<Browser>);

impl FromRequestParts<AppState> for Visit {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.visitors.is_none() || !sent_by_browser(parts) {
            return Ok(Visit(None));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let Some(addr) = client_addr(peer, &parts.headers, state.protect.proxy_header.as_ref())
        else {
            return Ok(Visit(None));
        };
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(""));
        Ok(Visit(Some(Browser { addr, user_agent })))
    }
}

/// A pixel (`GET`), a beacon (`text/plain`) or a POST carrying `Origin`.
fn sent_by_browser(parts: &Parts) -> bool {
    parts.method == Method::GET
        || parts.headers.contains_key(header::ORIGIN)
        || media(parts.headers.get(header::CONTENT_TYPE)) == Some(Media::Text)
}

impl Visit {
    /// The visitor id for this request's views that carry no `sessionId` (`None`
    /// for a request no browser sent, or without a salt).
    pub async fn id(&self, state: &AppState, access: &WriteAccess) -> Option<String> {
        let browser = self.0.as_ref()?;
        let visitors: &Arc<Visitors> = state.visitors.as_ref()?;
        visitors
            .id_for(browser, access.app_name(&state.protect))
            .await
    }
}

/// The visitor id: hex of the first 16 bytes of SHA-256(salt, address, app,
/// User-Agent). The salt and the address have fixed lengths and the app is
/// length-prefixed, so no two inputs run into each other.
pub fn derive(salt: &Salt, addr: &ClientAddr, user_agent: &[u8], app: Option<&str>) -> String {
    let mut hash = Sha256::new();
    hash.update(salt.bytes());
    hash.update(addr.octets());
    let app = app.unwrap_or_default().as_bytes();
    // App names have at most 64 characters (`WRITE_KEYS`), so one byte holds the length.
    hash.update([app.len().min(255) as u8]);
    hash.update(app);
    hash.update(user_agent);
    let digest = hash.finalize();
    let mut id = String::with_capacity(32);
    for byte in &digest[..16] {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    id
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn addr(ip: &str) -> ClientAddr {
        ClientAddr::new(ip.parse::<IpAddr>().expect("ip"))
    }

    const CHROME: &[u8] = b"Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0.0.0 Safari/537.36";
    const FIREFOX: &[u8] =
        b"Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0";

    #[test]
    fn the_same_inputs_give_the_same_id_and_any_change_another() {
        let today = Salt::from_bytes(&[7; 32]).expect("salt");
        let tomorrow = Salt::from_bytes(&[8; 32]).expect("salt");
        let home = addr("203.0.113.7");
        let id = derive(&today, &home, CHROME, None);
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| HEX.contains(&b)), "{id}");
        assert_eq!(id, derive(&today, &home, CHROME, None), "deterministic");
        let others = [
            ("another day's salt", derive(&tomorrow, &home, CHROME, None)),
            (
                "another address",
                derive(&today, &addr("203.0.113.8"), CHROME, None),
            ),
            ("another browser", derive(&today, &home, FIREFOX, None)),
            ("no User-Agent", derive(&today, &home, b"", None)),
            ("an app", derive(&today, &home, CHROME, Some("web"))),
            ("another app", derive(&today, &home, CHROME, Some("shop"))),
        ];
        for (what, other) in &others {
            assert_ne!(&id, other, "{what}");
        }
        // The app is length-prefixed: moving bytes between it and the User-Agent
        // changes the id.
        assert_ne!(
            derive(&today, &home, b"bMozilla", Some("we")),
            derive(&today, &home, b"Mozilla", Some("web"))
        );
    }

    #[test]
    fn ipv6_clients_keep_their_id_within_their_64() {
        let salt = Salt::from_bytes(&[1; 32]).expect("salt");
        let id = |ip| derive(&salt, &addr(ip), CHROME, None);
        assert_eq!(id("2001:db8:1:2::1"), id("2001:db8:1:2:ffff::9"));
        assert_ne!(id("2001:db8:1:2::1"), id("2001:db8:1:3::1"));
        assert_eq!(id("::ffff:192.0.2.1"), id("192.0.2.1"));
    }

    #[test]
    fn a_known_value() {
        // Pins the input layout: a change to it changes every visitor's id, which
        // must be a deliberate decision (ids of the same day would no longer match).
        let salt = Salt::from_bytes(&[0; 32]).expect("salt");
        let id = derive(&salt, &addr("192.0.2.1"), b"UA", None);
        let mut input = vec![0u8; 32];
        input.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]);
        input.push(0);
        input.extend_from_slice(b"UA");
        let digest = Sha256::digest(&input);
        let want: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id, want);
    }
}
