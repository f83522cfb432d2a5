//! Tokens that expire on open connections (SPEC §5): TOKEN_EXPIRING, the
//! close with 4001 at `exp` + leeway, and AUTH_REFRESH moving it, changing
//! roles and rooms. AUTH_REFRESH's refusals are in `lifecycle.rs`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn claims(sub: &str, ttl_secs: u64, roles: &[&str], rooms: &[&str]) -> Value {
    json!({ "sub": sub, "exp": now_secs() + ttl_secs, "roles": roles, "channels": rooms })
}

fn refresh(token: &str) -> String {
    format!(r#"{{"type":"AUTH_REFRESH","token":"{token}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_refresh_the_connection_closes_with_4001_at_exp() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_AUTH_LEEWAY_SECS", "0")
        .start()
        .await;
    let jwt = mint_claims(&claims("42", 3, &[], &[]));
    let (mut c, _) = gw.connect_user(&jwt, "42").await;
    // Within a minute of exp: told at once.
    let v = c.next_json().await;
    assert_eq!(v["type"], "TOKEN_EXPIRING", "{v}");
    let exp = v["data"]["exp"].as_u64().expect("data.exp");
    assert!(exp >= now_secs() && exp <= now_secs() + 3, "{v}");
    let (texts, code, got_close) = c.read_until_close(Duration::from_secs(10)).await;
    assert!(texts.is_empty(), "{texts:?}");
    assert!(got_close);
    assert_eq!(code, Some(4001));
    assert!(now_secs() >= exp, "closed before exp");
    let counted = wait_until(WAIT_TIMEOUT, || async {
        let metrics = gw.get("/metrics").await.text();
        metrics.contains(r#"ws_gateway_connections_closed_total{reason="token_expired"} 1"#)
    })
    .await;
    assert!(counted, "{}", gw.get("/metrics").await.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_moves_the_deadline() {
    let gw = gateway()
        .in_process()
        .env("GATEWAY_AUTH_LEEWAY_SECS", "0")
        .start()
        .await;
    let (mut c, _) = gw
        .connect_user(&mint_claims(&claims("42", 3, &[], &[])), "42")
        .await;
    assert_eq!(c.next_json().await["type"], "TOKEN_EXPIRING");
    let later = claims("42", 3600, &[], &[]);
    c.send_text(&refresh(&mint_claims(&later))).await;
    let v = c.next_json().await;
    assert_eq!(v["type"], "AUTH_REFRESHED", "{v}");
    assert_eq!(v["data"]["exp"], later["exp"], "{v}");
    // Past the old exp, still open and quiet.
    c.expect_silence(Duration::from_secs(5)).await;
    c.ping_pong(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_removes_a_role_and_a_room() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let jwt = mint_claims(&claims("42", 3600, &["ops"], &["team-*"]));
    let (mut c, _) = gw.connect_user(&jwt, "42").await;
    c.send_text(r#"{"type":"SUBSCRIBE","room":"team-1"}"#).await;
    assert_eq!(c.next_json().await["type"], "SUBSCRIBED");
    redis.publish("ws:role:ops", r#"{"type":"ROLE"}"#).await;
    assert_eq!(c.next_json().await["type"], "ROLE");
    redis.publish("ws:room:team-1", r#"{"type":"ROOM"}"#).await;
    assert_eq!(c.next_json().await["type"], "ROOM");

    c.send_text(&refresh(&mint_claims(&claims("42", 3600, &[], &[]))))
        .await;
    let v = c.next_json().await;
    assert_eq!(v["type"], "UNSUBSCRIBED", "{v}");
    assert_eq!(v["data"]["room"], "team-1", "{v}");
    assert_eq!(c.next_json().await["type"], "AUTH_REFRESHED");
    redis.wait_numsub("ws:role:ops", 0).await;
    redis.wait_numsub("ws:room:team-1", 0).await;
    redis.publish("ws:role:ops", r#"{"type":"ROLE"}"#).await;
    redis.publish("ws:room:team-1", r#"{"type":"ROOM"}"#).await;
    redis.publish("ws:user:42", r#"{"type":"USER"}"#).await;
    assert_eq!(
        c.next_json().await["type"],
        "USER",
        "the role and the room are gone, the user channel stays"
    );

    // A refresh that adds a role joins its channel.
    c.send_text(&refresh(&mint_claims(&claims(
        "42",
        3600,
        &["billing"],
        &[],
    ))))
    .await;
    assert_eq!(c.next_json().await["type"], "AUTH_REFRESHED");
    redis.wait_numsub("ws:role:billing", 1).await;
    redis
        .publish("ws:role:billing", r#"{"type":"BILLING"}"#)
        .await;
    assert_eq!(c.next_json().await["type"], "BILLING");
}

/// A user id with a newline (a backend signed it) must not start a forged
/// line in the text log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_id_cannot_forge_a_log_line() {
    let gw = gateway().start().await;
    let sub = "42\nFORGED level=ERROR message=\"pwned\"";
    let jwt = mint_claims(&json!({ "sub": sub, "exp": now_secs() + 3600 }));
    let (c, _) = gw.connect_user(&jwt, sub).await;
    c.close().await;
    let logged = wait_until(WAIT_TIMEOUT, || async {
        gw.logs().iter().any(|l| l.contains("connection closed"))
    })
    .await;
    assert!(logged, "{}", gw.logs_text());
    let logs = gw.logs();
    assert!(
        !logs.iter().any(|l| l.starts_with("FORGED")),
        "a forged line:\n{}",
        gw.logs_text()
    );
    assert!(
        logs.iter().any(|l| l.contains(r#"42\nFORGED"#)),
        "the user id is logged, escaped:\n{}",
        gw.logs_text()
    );
}
