//! `GET /ws`: the WebSocket handshake (SPEC §4), and Socket.IO's over
//! WebSocket (SPEC §11).
//!
//! Cheap refusals (not an upgrade, foreign origin, rate, capacity, draining)
//! are plain HTTP answers before the upgrade. The token is checked here too,
//! but a bad token is answered *after* the upgrade, with an ERROR frame and
//! close 4001, because a browser cannot read the status of a failed upgrade.

use super::{reply, App};
use crate::session;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The subprotocol the server selects when the client offers it.
const SUBPROTOCOL: &str = "ws-gateway";
/// Prefix of the subprotocol that carries the token (`bearer.<JWT>`).
const BEARER_PROTOCOL: &str = "bearer.";

pub fn handle(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<reply::Body> {
    // What the per-IP limits count and the logs show.
    let ip = super::client_ip::client_ip(peer.ip(), req.headers(), &app.trusted_proxies);
    let (admitted, key) = match admit(app, &req, ip, true) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    let offered = offered_protocols(req.headers());
    let token = token_from(&req, &offered).unwrap_or_default();
    let auth = app.verifier.verify(&token);
    let since = query_param(req.uri().query(), "since").filter(|s| !s.is_empty());
    let response = switching_protocols(&key, offered.iter().any(|p| p == SUBPROTOCOL));
    upgrade_then(app, req, admitted, move |socket, early, sessions| {
        session::run(socket, early, auth, since, sessions, ip)
    });
    response
}

/// `GET /socket.io/?EIO=4&transport=websocket` (SPEC §11): the same
/// refusals before the upgrade as `/ws`; the token comes after it, in the
/// CONNECT packet (or `?token=`).
pub fn handle_socketio(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<reply::Body> {
    let ip = super::client_ip::client_ip(peer.ip(), req.headers(), &app.trusted_proxies);
    let query = req.uri().query();
    match query_param(query, "transport").as_deref() {
        Some("websocket") => {}
        Some("polling") => {
            let message =
                "only the websocket transport is served: list \"websocket\" first in transports";
            return refuse(
                app,
                ip,
                StatusCode::BAD_REQUEST,
                "transport_unsupported",
                message,
                None,
            );
        }
        _ => {
            let message = "expected transport=websocket";
            return refuse(
                app,
                ip,
                StatusCode::BAD_REQUEST,
                "bad_request",
                message,
                None,
            );
        }
    }
    if query_param(query, "EIO").as_deref() != Some("4") {
        let message = "only Engine.IO 4 (socket.io-client 3 and 4) is served";
        return refuse(
            app,
            ip,
            StatusCode::BAD_REQUEST,
            "bad_request",
            message,
            None,
        );
    }
    let (admitted, key) = match admit(app, &req, ip, true) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    let token = query_param(query, "token").filter(|t| !t.is_empty());
    let response = switching_protocols(&key, false);
    upgrade_then(app, req, admitted, move |socket, early, sessions| {
        session::run_socketio(socket, early, token, sessions, ip)
    });
    response
}

/// The refusals before any upgrade (SPEC §4): not an upgrade, a foreign
/// origin, draining, capacity, the IP's limits and rate. Admitted: the
/// capacity it holds, and the upgrade's key.
pub(super) fn admit<B>(
    app: &Arc<App>,
    req: &Request<B>,
    ip: IpAddr,
    upgrade: bool,
) -> Result<(Admitted, String), Box<Response<reply::Body>>> {
    let key = match upgrade_key(req.headers()) {
        Some(key) => key,
        None if !upgrade => "",
        None => {
            let message = "not a WebSocket upgrade request";
            let status = StatusCode::BAD_REQUEST;
            return Err(Box::new(refuse(
                app,
                ip,
                status,
                "bad_request",
                message,
                None,
            )));
        }
    };
    if !origin_allowed(req.headers(), &app.config.server.allowed_origins) {
        let message = "this page's origin may not connect; see server.allowed_origins";
        let status = StatusCode::FORBIDDEN;
        return Err(Box::new(refuse(
            app,
            ip,
            status,
            "origin_not_allowed",
            message,
            None,
        )));
    }
    if app.hub.is_draining() {
        let message = "this instance is shutting down; reconnect to another";
        let status = StatusCode::SERVICE_UNAVAILABLE;
        return Err(Box::new(refuse(
            app,
            ip,
            status,
            "draining",
            message,
            Some(1),
        )));
    }
    // Held by the session from here on; refusals below drop it.
    let Some(admitted) = Admitted::capacity(app) else {
        let message = "this instance is at max_connections";
        let status = StatusCode::SERVICE_UNAVAILABLE;
        return Err(Box::new(refuse(
            app,
            ip,
            status,
            "over_capacity",
            message,
            Some(5),
        )));
    };
    let Some(admitted) = admitted.per_ip(ip) else {
        let message =
            "too many connections from this address; see connection.max_connections_per_ip";
        let status = StatusCode::TOO_MANY_REQUESTS;
        let code = "too_many_connections_per_ip";
        return Err(Box::new(refuse(app, ip, status, code, message, Some(5))));
    };
    if let Err(wait) = app.check_connect_rate(ip) {
        let message = "too many new connections from this address";
        let secs = wait.as_secs_f64().ceil() as u64;
        let status = StatusCode::TOO_MANY_REQUESTS;
        return Err(Box::new(refuse(
            app,
            ip,
            status,
            "rate_limited",
            message,
            Some(secs),
        )));
    }
    Ok((admitted, key.to_string()))
}

/// The 101 answer to an upgrade with `key`, selecting our subprotocol when
/// asked to.
fn switching_protocols(key: &str, subprotocol: bool) -> Response<reply::Body> {
    let mut response = Response::new(reply::Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if subprotocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    response
}

/// Once hyper has upgraded `req`, runs `session` on the bare TCP stream
/// (the wire writes to it directly) and what the client sent early,
/// holding `admitted` until it ends.
fn upgrade_then<F, Fut>(app: &Arc<App>, req: Request<Incoming>, admitted: Admitted, session: F)
where
    F: FnOnce(TcpStream, Vec<u8>, Arc<session::Sessions>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let sessions = app.sessions.clone();
    tokio::spawn(async move {
        let _admitted = admitted;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                // `read_buf` shares hyper's 8 KiB read buffer even when
                // empty: copy out what the client sent early and release it
                // now, not when the connection ends.
                let read_buf = parts.read_buf;
                let early = read_buf.to_vec();
                drop(read_buf);
                session(parts.io.into_inner(), early, sessions).await;
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream; dropped"),
        }
    });
}

/// A connection counted against `max_connections` (and, once admitted
/// there, against its IP's limit); uncounted when dropped, however the
/// session ends.
pub(super) struct Admitted {
    app: Arc<App>,
    ip: Option<IpAddr>,
}

impl Admitted {
    /// Counts one more WebSocket, unless the instance is at its limit.
    fn capacity(app: &Arc<App>) -> Option<Self> {
        app.open_sockets
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < app.max_connections).then_some(n + 1)
            })
            .ok()?;
        Some(Self {
            app: app.clone(),
            ip: None,
        })
    }

    /// Counts it for `ip` as well, unless `ip` is at its limit.
    fn per_ip(mut self, ip: IpAddr) -> Option<Self> {
        self.app.per_ip.admit(ip).then(|| {
            self.ip = Some(ip);
            self
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.app.open_sockets.fetch_sub(1, Relaxed);
        if let Some(ip) = self.ip {
            self.app.per_ip.release(ip);
        }
    }
}

/// A refusal before the upgrade: answered in JSON, counted, and logged
/// (reason, IP) at most once a second per reason, so that a flood of bad
/// requests cannot flood the logs; the next line says how many it skipped.
pub(super) fn refuse(
    app: &App,
    ip: IpAddr,
    status: StatusCode,
    code: &'static str,
    message: &str,
    retry_after_secs: Option<u64>,
) -> Response<reply::Body> {
    if let Some(suppressed) = app.refusal_log.check(code) {
        tracing::info!(reason = code, status = status.as_u16(), %ip, suppressed, "handshake refused");
    }
    app.hub.stats().handshake_rejections.add(code, 1);
    match retry_after_secs {
        Some(secs) => reply::retry_later(status, code, message, secs),
        None => reply::error(status, code, message),
    }
}

/// The `Sec-WebSocket-Key` of a valid upgrade request, if it is one.
fn upgrade_key(headers: &HeaderMap) -> Option<&str> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    if !has_token(header::CONNECTION, "upgrade")
        || !has_token(header::UPGRADE, "websocket")
        || !version_ok
    {
        return None;
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
}

/// Same-origin, a listed origin, or `*`. Requests without `Origin` (not
/// from a browser) are allowed: the origin check protects browsers' users
/// from cross-site pages, it does not authenticate.
pub(super) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return headers.get(header::ORIGIN).is_none();
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let origin_host = origin.split_once("://").map(|(_, host)| host);
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The token from `?token=`, `Authorization: Bearer`, or the
/// `bearer.<JWT>` subprotocol, in that order.
fn token_from<B>(req: &Request<B>, offered: &[String]) -> Option<String> {
    if let Some(token) = query_param(req.uri().query(), "token") {
        return Some(token);
    }
    if let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
    {
        return Some(token.to_string());
    }
    offered
        .iter()
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL))
        .map(str::to_string)
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The handshake's header parsing, for the fuzz targets (`fuzz/`): not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::{bearer, query_param};
    use http::{HeaderMap, Request};

    pub const SUBPROTOCOL: &str = super::SUBPROTOCOL;
    pub const BEARER_PROTOCOL: &str = super::BEARER_PROTOCOL;

    pub fn upgrade_key(headers: &HeaderMap) -> Option<&str> {
        super::upgrade_key(headers)
    }

    pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
        super::origin_allowed(headers, allowed)
    }

    pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
        super::offered_protocols(headers)
    }

    pub fn token_from<B>(req: &Request<B>, offered: &[String]) -> Option<String> {
        super::token_from(req, offered)
    }

    /// The `since` of a handshake's query, as `handle` reads it.
    pub fn since(query: Option<&str>) -> Option<String> {
        query_param(query, "since").filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(&headers(&[("host", "a.example")]), &none));
        let same = headers(&[
            ("host", "a.example:8080"),
            ("origin", "https://a.example:8080"),
        ]);
        assert!(origin_allowed(&same, &none));
        let cross = headers(&[("host", "a.example"), ("origin", "https://evil.example")]);
        assert!(!origin_allowed(&cross, &none));
        assert!(origin_allowed(&cross, &["https://evil.example".into()]));
        assert!(origin_allowed(&cross, &["*".into()]));
    }

    #[test]
    fn upgrade_detection() {
        let ok = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(upgrade_key(&ok), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(upgrade_key(&headers(&[("host", "x")])), None);
    }

    #[test]
    fn token_sources() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(
            query_param(Some("since=1&token=a.b.c"), "token").as_deref(),
            Some("a.b.c")
        );
        assert_eq!(query_param(None, "token"), None);
    }
}
