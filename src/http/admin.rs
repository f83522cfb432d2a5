//! The admin API (SPEC §7): stats, and publishing through the canonical
//! path so a running gateway (and the embedded broker) can be driven with
//! curl.

use super::{reply, upgrade::bearer, App};
use crate::auth::Admin;
use crate::broker::BrokerError;
use crate::publish;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Largest admin request body: a 1 MiB message plus room for JSON framing.
const MAX_BODY: usize = crate::protocol::MAX_PUBLISHED_BYTES + 1024;
/// How long a whole admin body may take to arrive: one trickled a byte at
/// a time must not hold the request, and its socket, open indefinitely.
const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Checks admin credentials; the refusal to send when they fail.
pub fn refusal<B>(app: &App, req: &Request<B>) -> Option<Response<reply::Body>> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match app.verifier.admin(token) {
        Admin::Allowed => None,
        Admin::Unauthorized => Some(reply::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <admin token or admin_api_key>",
        )),
        Admin::Forbidden => Some(reply::error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token does not have the admin role",
        )),
    }
}

pub fn stats(app: &App) -> Response<reply::Body> {
    let s = app.hub.stats();
    let snapshot = app.hub.snapshot();
    reply::json(
        StatusCode::OK,
        &json!({
            "instance": &*app.instance,
            "uptime_secs": snapshot.uptime_secs,
            "connections": snapshot.connections,
            "users": snapshot.users,
            "subscriptions": snapshot.subscriptions,
            "messages_received": s.broker_messages.total(),
            "messages_delivered": s.messages_delivered.load(Relaxed),
            "messages_dropped": s.messages_dropped.total(),
            "slow_consumer_disconnects": s.slow_consumer_disconnects.load(Relaxed),
            "broker_up": app.broker.is_up(),
            "broker_reconnects": s.broker_reconnects.load(Relaxed),
        }),
    )
}

/// Where an admin publish goes.
pub enum Target<'a> {
    User(&'a str),
    Broadcast,
}

/// `POST /ws/test-message/{user_id}` and `POST /ws/broadcast`.
pub async fn publish(
    app: &App,
    req: Request<Incoming>,
    target: Target<'_>,
) -> Response<reply::Body> {
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_DEADLINE, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Err(_) => {
            return reply::error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive within 10 s",
            )
        }
        Ok(Err(_)) => {
            return reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the message is larger than 1 MiB",
            )
        }
    };
    let if_empty = match target {
        Target::User(_) => publish::IfEmpty::TestNotification,
        Target::Broadcast => publish::IfEmpty::Refuse,
    };
    let message = match publish::from_body(&body, if_empty) {
        Ok(m) => m,
        Err(why) => return reply::error(StatusCode::BAD_REQUEST, "bad_request", &why),
    };
    let names = app.hub.names();
    let (channel, result) = match target {
        Target::User(user_id) => {
            let channel = names.user(user_id);
            let key = names.history_key(user_id);
            let result = app
                .broker
                .publish_with_history(&key, &channel, message.bytes)
                .await;
            (channel, result)
        }
        Target::Broadcast => {
            let channel = names.broadcast.clone();
            let result = app.broker.publish(&channel, message.bytes).await;
            (channel, result)
        }
    };
    match result {
        Ok(()) => reply::json(
            StatusCode::ACCEPTED,
            &json!({ "id": message.id, "channel": channel }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, channel, id = %message.id, "admin publish failed");
            let (status, code, advice) = match e {
                BrokerError::OutcomeUnknown(_) => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "outcome_unknown",
                    "Redis did not answer in time: the message may still be delivered; \
                     retry with the same id (replay and clients drop repeated ids)",
                ),
                BrokerError::Unavailable(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    "the broker did not accept the message: it was not published; retry later",
                ),
            };
            reply::json(
                status,
                &json!({ "error": code, "message": advice, "id": message.id }),
            )
        }
    }
}
