//! The handshake's header parsing (src/http/upgrade.rs): the upgrade check,
//! the origin check, the offered subprotocols, the token's three sources
//! and `since`, over arbitrary headers and query strings.
//!
//! Properties: never panics; offered subprotocols are non-empty, trimmed,
//! comma-free, and every one of them is in a header; a missing `Origin` is
//! allowed, an unreadable one is not, `*` and a listed origin (any case)
//! are, and same-origin is; the token comes from `?token=`, else
//! `Authorization: Bearer`, else `bearer.<token>`, in that order; `bearer`
//! takes exactly the scheme `bearer` (any case) and a trimmed token; and a
//! value written into a query by a form encoder reads back the same.
#![no_main]

use arbitrary::Arbitrary;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Request;
use libfuzzer_sys::fuzz_target;
use ws_gateway::fuzzing::handshake as h;

#[derive(Arbitrary, Debug)]
enum Name {
    Connection,
    Upgrade,
    Version,
    Key,
    Origin,
    Host,
    Protocol,
    Authorization,
    Other,
}

impl Name {
    fn header(&self) -> HeaderName {
        match self {
            Name::Connection => header::CONNECTION,
            Name::Upgrade => header::UPGRADE,
            Name::Version => header::SEC_WEBSOCKET_VERSION,
            Name::Key => header::SEC_WEBSOCKET_KEY,
            Name::Origin => header::ORIGIN,
            Name::Host => header::HOST,
            Name::Protocol => header::SEC_WEBSOCKET_PROTOCOL,
            Name::Authorization => header::AUTHORIZATION,
            Name::Other => HeaderName::from_static("x-other"),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<(Name, Vec<u8>)>,
    query: Option<String>,
    allowed: Vec<String>,
    /// A (name, value) pair written into a query by a form encoder.
    pair: (String, String),
    free_text: String,
}

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name.header(), value);
        }
    }
    let readable = |name: HeaderName| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    };

    // The upgrade check.
    if let Some(key) = h::upgrade_key(&headers) {
        assert!(!key.is_empty());
        assert_eq!(
            headers.get(header::SEC_WEBSOCKET_KEY).map(|v| v.as_bytes()),
            Some(key.as_bytes())
        );
        assert!(headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13"));
    }

    // The origin check.
    let allowed = h::origin_allowed(&headers, &input.allowed);
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => assert!(allowed, "no Origin: not a browser, allowed"),
        Some(Err(_)) => assert!(!allowed, "an unreadable Origin allowed"),
        Some(Ok(origin)) => {
            let listed = input
                .allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(origin));
            let same = match (
                origin.split_once("://"),
                headers.get(header::HOST).and_then(|v| v.to_str().ok()),
            ) {
                (Some((_, o)), Some(host)) => o.eq_ignore_ascii_case(host),
                _ => false,
            };
            assert_eq!(allowed, listed || same, "origin {origin:?}");
        }
    }

    // The offered subprotocols.
    let offered = h::offered_protocols(&headers);
    let values = readable(header::SEC_WEBSOCKET_PROTOCOL);
    for p in &offered {
        assert!(!p.is_empty() && !p.contains(','));
        assert_eq!(p.trim(), p);
        assert!(values.iter().any(|v| v.contains(p.as_str())));
    }
    let listed: usize = values
        .iter()
        .map(|v| v.split(',').filter(|p| !p.trim().is_empty()).count())
        .sum();
    assert_eq!(offered.len(), listed);

    // `bearer` on any text.
    check_bearer(&input.free_text);
    for v in readable(header::AUTHORIZATION) {
        check_bearer(v);
    }

    // The token's sources and `since`, on a request with this query.
    let query = input.query.as_deref();
    let uri = match query {
        Some(q) => format!("/ws?{q}"),
        None => "/ws".to_string(),
    };
    if let Ok(mut req) = Request::builder().uri(&uri).body(()) {
        *req.headers_mut() = headers.clone();
        let query = req.uri().query();
        let token = h::token_from(&req, &offered);
        let expected = h::query_param(query, "token")
            .or_else(|| {
                req.headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(h::bearer)
                    .map(str::to_string)
            })
            .or_else(|| {
                offered
                    .iter()
                    .find_map(|p| p.strip_prefix(h::BEARER_PROTOCOL))
                    .map(str::to_string)
            });
        assert_eq!(token, expected);
        if let Some(since) = h::since(query) {
            assert!(!since.is_empty());
        }
    }

    // A form-encoded pair reads back, first occurrence first.
    let (name, value) = &input.pair;
    let written = form_urlencoded::Serializer::new(String::new())
        .append_pair(name, value)
        .append_pair(name, "second")
        .finish();
    assert_eq!(
        h::query_param(Some(&written), name).as_deref(),
        Some(value.as_str()),
        "query {written:?}"
    );
    assert_eq!(h::query_param(None, name), None);
});

fn check_bearer(value: &str) {
    match h::bearer(value) {
        Some(token) => {
            let (scheme, rest) = value.split_once(' ').expect("a scheme and a token");
            assert!(scheme.eq_ignore_ascii_case("bearer"));
            assert_eq!(token, rest.trim());
        }
        None => assert!(value
            .split_once(' ')
            .is_none_or(|(scheme, _)| !scheme.eq_ignore_ascii_case("bearer"))),
    }
}
