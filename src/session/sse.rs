//! Server-sent events (SPEC §12), for networks that break WebSockets: the
//! session of a `GET /sse` whose request the HTTP layer has read and whose
//! token it has checked. The stream is written by the connection's wire,
//! as a WebSocket's is: every event's bytes are built once per message and
//! shared by every SSE recipient.

use super::access::Access;
use super::deadlines::{Beat, Heartbeat};
use super::{
    closed, opened, replay_then_release, subscribed, End, Sessions, HISTORY_UNAVAILABLE,
    HISTORY_UNAVAILABLE_MESSAGE,
};
use crate::auth::Identity;
use crate::hub::Refused;
use crate::logsafe::Escaped;
use crate::metrics::Transport;
use crate::protocol::{self, http_chunk, sse_event, LAST_CHUNK};
use crate::wire::{CloseReason, Encoding, Wire};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The `: ping` comment, as a chunk (checked in the tests below).
const PING: &[u8] = b"8\r\n: ping\n\n\r\n";

/// How long the last bytes of a closing stream may take to leave.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// A client sends nothing after its request: no idle timeout.
const NEVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What an SSE request asks for, read by the HTTP layer.
pub struct Request {
    pub who: Identity,
    /// `Last-Event-ID`, else `?since=`.
    pub since: Option<String>,
    /// `?rooms=a,b`.
    pub rooms: Vec<String>,
    /// The page's origin, when it may read the stream cross-origin.
    pub cors_origin: Option<String>,
}

/// An HTTP answer before the stream, in SPEC §4's JSON.
pub fn refusal(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Runs one SSE client to its end.
pub async fn run(socket: TcpStream, request: Request, sessions: Arc<Sessions>, ip: IpAddr) {
    let hub = &sessions.hub;
    let stats = hub.stats();
    let wire = Wire::new(socket, sessions.send_queue, Encoding::Sse, stats.clone());
    let Request {
        who,
        since,
        rooms,
        cors_origin,
    } = request;
    let user = Escaped(&who.user_id).to_string();
    let mut registration = match hub.register(&who, wire.clone(), Transport::Sse) {
        Ok(r) => r,
        Err(Refused::TooManyConnections) => {
            sessions.refused("too_many_connections", Some(&user), ip);
            let message = "this user has too many open connections";
            refuse(&wire, &refusal(429, "too_many_connections", message)).await;
            return;
        }
    };
    subscribed(&mut registration, &user).await;
    let mut access = Access::new(who, registration);
    for room in &rooms {
        if !protocol::valid_room(room) {
            let message = format!("{room:?} is not a room name");
            refuse(&wire, &refusal(400, "bad_request", &message)).await;
            return;
        }
        if let Err(refused) = access.subscribe(room, &sessions).await {
            let status = if refused.code == "forbidden" {
                403
            } else {
                400
            };
            refuse(&wire, &refusal(status, refused.code, &refused.message)).await;
            return;
        }
    }
    let resume_point = ulid::Ulid::new().to_string();
    let user_id = &access.who.user_id;
    let Ok(replay) = sessions
        .replay_since(user_id, since.as_deref(), &user, ip)
        .await
    else {
        drop(access);
        // A 200 whose stream ends at once: an `EventSource` reconnects
        // after `retry` with the same Last-Event-ID (a non-200 would stop
        // it for good).
        let mut response = stream_head(cors_origin.as_deref());
        let error = protocol::error(HISTORY_UNAVAILABLE, HISTORY_UNAVAILABLE_MESSAGE);
        let retry = format!("retry: {}\n", retry_ms());
        response.extend_from_slice(&http_chunk(retry.as_bytes()));
        response.extend_from_slice(&sse_event(None, "ERROR", error.as_bytes()));
        response.extend_from_slice(LAST_CHUNK);
        refuse(&wire, &response).await;
        return;
    };
    let connection_id = access.registration.id.to_string();
    let started = Instant::now();
    opened(&user, &connection_id, ip, Transport::Sse, replay.as_ref());
    {
        // Scoped: nothing of the start stays in the stream's future.
        let hello = protocol::connected(
            &resume_point,
            &connection_id,
            &access.who.user_id,
            &sessions.instance,
            sessions.ping_interval.as_secs(),
            replay.as_ref().map(|r| r.recovered),
            replay.as_ref().map_or(0, |r| r.messages.len()),
        );
        let mut head = stream_head(cors_origin.as_deref());
        head.extend_from_slice(&sse_event(
            Some(&resume_point),
            "CONNECTED",
            hello.as_bytes(),
        ));
        wire.send_raw(&head);
    }
    drop((cors_origin, since, rooms, resume_point));
    replay_then_release(&wire, replay);
    let end = serve(&wire, &sessions, &access).await;
    drop(access);
    closed(&sessions, &user, &connection_id, started, end);
    wire.linger(Duration::from_secs(1)).await;
}

/// The response head: an endless, chunked event stream that no proxy may
/// buffer or cache (SPEC §12). Chunked, not ended by the close, so that a
/// client or proxy can tell a stream the gateway ended (the last chunk)
/// from one that broke.
fn stream_head(cors_origin: Option<&str>) -> Vec<u8> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
         cache-control: no-cache\r\nx-accel-buffering: no\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n",
    );
    if let Some(origin) = cors_origin {
        head.push_str(&format!(
            "access-control-allow-origin: {origin}\r\nvary: origin\r\n"
        ));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// When an `EventSource` told to come back does so: 2-5 s, spread so that
/// the clients of an outage do not return at once.
fn retry_ms() -> u64 {
    rand::random_range(2000..5000)
}

/// Writes a refusal, then lets the socket go (bounded).
async fn refuse(wire: &Wire, response: &[u8]) {
    wire.send_raw(response);
    let _ = tokio::time::timeout(Duration::from_secs(1), wire.flush()).await;
    wire.linger(Duration::from_secs(1)).await;
}

/// The stream: what the fan-out could not write at once, a `: ping`
/// comment every `ping_interval`, TOKEN_EXPIRING, and the end at `exp` +
/// leeway, on a drain, for a slow consumer, or when the client leaves.
async fn serve(wire: &Wire, cfg: &Sessions, access: &Access) -> End {
    let mut heartbeat = Heartbeat::new(cfg.ping_interval, NEVER);
    heartbeat.expire_at(access.who.exp, cfg.leeway);
    let timer = tokio::time::sleep_until(heartbeat.next_deadline());
    tokio::pin!(timer);
    loop {
        match wire.closed() {
            Some(CloseReason::SlowConsumer) => return End::SlowConsumer,
            Some(CloseReason::Shutdown) => {
                end_stream(wire).await;
                return End::Shutdown;
            }
            None => {}
        }
        let flushing = wire.has_pending();
        tokio::select! {
            flushed = wire.flush(), if flushing => {
                if flushed.is_err() {
                    return End::ClientGone;
                }
            }
            () = wire.changed() => {}
            () = wire.client_gone() => return End::ClientGone,
            () = &mut timer => {
                match heartbeat.due(tokio::time::Instant::now()) {
                    Some(Beat::Expired) => {
                        end_stream(wire).await;
                        return End::TokenExpired;
                    }
                    Some(Beat::Expiring(exp)) => {
                        let event = protocol::token_expiring(exp);
                        wire.send_raw(&sse_event(None, "TOKEN_EXPIRING", event.as_bytes()));
                    }
                    Some(Beat::Ping) => wire.send_raw(PING),
                    Some(Beat::Idle) | None => {}
                }
                timer.as_mut().reset(heartbeat.next_deadline());
            }
        }
    }
}

/// Ends the stream as the gateway means to: the last chunk after what is
/// queued, given [`CLOSE_GRACE`] to leave.
async fn end_stream(wire: &Wire) {
    wire.send_raw(LAST_CHUNK);
    let _ = tokio::time::timeout(CLOSE_GRACE, wire.flush()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ping_is_one_chunk() {
        assert_eq!(PING, &http_chunk(b": ping\n\n")[..]);
    }
}
