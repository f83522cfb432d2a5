//! `GET /sse` (SPEC §12): the request of an `EventSource`, read here rather
//! than by hyper, because the stream that follows is written by the
//! connection's wire, straight to the socket, as a WebSocket's is. The
//! refusals are those of `/ws` (SPEC §4), as JSON answers before the
//! stream: 401 for the token, 403 `forbidden` for a room, 429 for the
//! per-user cap.

use super::upgrade::{self, bearer, query_param};
use super::{client_ip, App};
use crate::session;
use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a client may take to send its request head, and its bound.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// `/sse` asked on a connection that served a request before (a browser
/// reuses the one that loaded the page): hyper has it, and the stream must
/// be written by a wire. A 307 to the same URL with `Connection: close`
/// sends the client, `EventSource` included (it follows redirects), to a
/// fresh connection, whose first request is taken before hyper.
pub fn on_a_fresh_connection<B>(req: &Request<B>) -> http::Response<super::reply::Body> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/sse", |p| p.as_str())
        .to_string();
    let mut response = http::Response::new(super::reply::Body::default());
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&target) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Whether the connection's first request is `GET /sse`: a look at its
/// first bytes, without reading them (a client that sends nothing is
/// hyper's to time out).
pub async fn requested(stream: &TcpStream) -> bool {
    const PREFIX: &[u8] = b"GET /sse";
    let mut buf = [0u8; PREFIX.len() + 1];
    // Bounded: a request line split across segments takes a few peeks.
    for _ in 0..20 {
        let n = match tokio::time::timeout(HEAD_TIMEOUT, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        let seen = &buf[..n];
        if n > PREFIX.len() {
            return seen.starts_with(PREFIX) && matches!(seen[PREFIX.len()], b' ' | b'?');
        }
        if !PREFIX.starts_with(seen) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Serves one `/sse` connection: reads its request, refuses or hands the
/// socket to the SSE session. `http_slot` is held until the stream is
/// admitted, which counts it like a WebSocket from then on; until then,
/// `evicted` (too many HTTP connections, this one the oldest) drops it.
pub async fn serve<S>(
    app: Arc<App>,
    mut stream: TcpStream,
    peer: SocketAddr,
    http_slot: S,
    evicted: tokio::sync::oneshot::Receiver<()>,
) {
    let head = tokio::select! {
        head = read_head(&mut stream) => head,
        _ = evicted => return,
    };
    let Some(req) = head else {
        let refusal = session::sse::refusal(400, "bad_request", "a bad request head");
        write_and_close(&mut stream, &refusal).await;
        return;
    };
    let ip = client_ip::client_ip(peer.ip(), req.headers(), &app.trusted_proxies);
    if req.uri().path() != "/sse" {
        let refusal = session::sse::refusal(404, "not_found", "no such endpoint");
        write_and_close(&mut stream, &refusal).await;
        return;
    }
    let admitted = match upgrade::admit(&app, &req, ip, false) {
        Ok((admitted, _)) => admitted,
        Err(response) => {
            write_response(&mut stream, *response).await;
            return;
        }
    };
    drop(http_slot);
    // The request head (the client's headers) is read here and not kept:
    // a stream lives for hours, and only what it needs stays with it.
    let Some(request) = stream_request(&app, &mut stream, req, ip).await else {
        return;
    };
    let _admitted = admitted;
    session::sse::run(stream, request, app.sessions.clone(), ip).await;
}

/// What the session needs from the request, once its token is checked;
/// `None` after answering a refusal.
async fn stream_request(
    app: &App,
    stream: &mut TcpStream,
    req: Request<()>,
    ip: std::net::IpAddr,
) -> Option<session::sse::Request> {
    let query = req.uri().query();
    let token = query_param(query, "token")
        .filter(|t| !t.is_empty())
        .or_else(|| {
            let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
            bearer(value).map(str::to_string)
        })
        .unwrap_or_default();
    let who = match app.verifier.verify(&token) {
        Ok(who) => who,
        Err(e) => {
            let response = upgrade::refuse(
                app,
                ip,
                StatusCode::UNAUTHORIZED,
                e.code(),
                e.message(),
                None,
            );
            write_response(stream, response).await;
            return None;
        }
    };
    let since = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query_param(query, "since"))
        .filter(|s| !s.is_empty());
    let rooms = query_param(query, "rooms")
        .map(|r| {
            r.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Some(session::sse::Request {
        who,
        since,
        rooms,
        cors_origin: cors_origin(req.headers()),
    })
}

/// An `Origin` that passed the origin check: echoed, so that a page on it
/// may read the stream.
fn cors_origin(headers: &HeaderMap) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    HeaderValue::from_str(origin).ok()?;
    Some(origin.to_string())
}

/// Reads the request head (bounded in time and size) as an
/// `http::Request`, for the checks `/ws` also makes.
async fn read_head(stream: &mut TcpStream) -> Option<Request<()>> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(());
            }
            if buf.len() > MAX_HEAD_BYTES {
                return None;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(HEAD_TIMEOUT, read).await.ok()??;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(parsed.parse(&buf), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let mut req = Request::builder().method(parsed.method?).uri(parsed.path?);
    for h in parsed.headers.iter() {
        req = req.header(h.name, h.value);
    }
    req.body(()).ok()
}

/// Writes an answer of the HTTP layer (a refusal) and closes.
async fn write_response(stream: &mut TcpStream, response: http::Response<super::reply::Body>) {
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let reason = parts.status.canonical_reason().unwrap_or("");
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", parts.status.as_u16());
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    write_and_close(stream, &bytes).await;
}

async fn write_and_close(stream: &mut TcpStream, bytes: &[u8]) {
    let write = async {
        stream.write_all(bytes).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
