//! Rooms (SPEC §5): SUBSCRIBE/UNSUBSCRIBE to `ws:room:{room}` as the
//! token's channels claim allows, on two instances sharing one Redis.

mod common;

use common::*;
use serde_json::{json, Value};

fn with_rooms(sub: &str, rooms: &[&str]) -> String {
    mint_claims(&json!({ "sub": sub, "exp": now_secs() + 3600, "channels": rooms }))
}

fn subscribe(room: &str) -> String {
    json!({ "type": "SUBSCRIBE", "room": room }).to_string()
}

async fn expect(c: &mut Client, kind: &str, room: &str) -> Value {
    let v = c.next_json().await;
    assert_eq!(v["type"], kind, "{v}");
    assert_eq!(v["data"]["room"], room, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_allowed_denied_at_the_limit_and_after_unsubscribe_on_two_instances() {
    let redis = Redis::start();
    let one = gateway()
        .redis(&redis)
        .env("GATEWAY_CONNECTION_MAX_ROOMS", "2")
        .start()
        .await;
    let two = gateway().redis(&redis).start().await;
    let (mut a, _) = one
        .connect_user(&with_rooms("1", &["household-7", "team-*"]), "1")
        .await;
    let (mut b, _) = two.connect_user(&with_rooms("2", &["team-*"]), "2").await;

    // Allowed, on both instances.
    a.send_text(&subscribe("team-red")).await;
    expect(&mut a, "SUBSCRIBED", "team-red").await;
    b.send_text(&subscribe("team-red")).await;
    expect(&mut b, "SUBSCRIBED", "team-red").await;
    redis.wait_numsub("ws:room:team-red", 2).await;
    let n = redis
        .publish("ws:room:team-red", r#"{"type":"ROOM","n":1}"#)
        .await;
    assert_eq!(n, 2, "one subscriber per instance");
    assert_eq!(a.next_json().await["n"], 1);
    assert_eq!(b.next_json().await["n"], 1);

    // Denied: no pattern matches.
    b.send_text(&subscribe("household-7")).await;
    b.expect_error("forbidden").await;
    // Bad names.
    for bad in ["", "a b", "x/y", &"r".repeat(129)] {
        a.send_text(&subscribe(bad)).await;
        a.expect_error("bad_request").await;
    }
    // At the limit (max_rooms = 2 on the first instance).
    a.send_text(&subscribe("household-7")).await;
    expect(&mut a, "SUBSCRIBED", "household-7").await;
    a.send_text(&subscribe("team-blue")).await;
    a.expect_error("too_many_rooms").await;
    // Subscribing again to a joined room is not one more.
    a.send_text(&subscribe("team-red")).await;
    expect(&mut a, "SUBSCRIBED", "team-red").await;

    // After unsubscribe: no more messages there, and room for another.
    a.send_text(&json!({"type":"UNSUBSCRIBE","room":"team-red"}).to_string())
        .await;
    expect(&mut a, "UNSUBSCRIBED", "team-red").await;
    redis.wait_numsub("ws:room:team-red", 1).await;
    redis
        .publish("ws:room:team-red", r#"{"type":"ROOM","n":2}"#)
        .await;
    assert_eq!(b.next_json().await["n"], 2);
    a.send_text(&subscribe("team-blue")).await;
    expect(&mut a, "SUBSCRIBED", "team-blue").await;
    redis.publish("ws:user:1", r#"{"type":"USER"}"#).await;
    assert_eq!(
        a.next_json().await["type"],
        "USER",
        "nothing from the room it left came first"
    );

    // Rooms are dropped on disconnect.
    drop(b);
    redis.wait_numsub("ws:room:team-red", 0).await;
    let metrics = one.get("/metrics").await.text();
    assert!(
        metrics.contains(r#"ws_gateway_client_messages_total{type="SUBSCRIBE"} 5"#)
            && metrics.contains(r#"ws_gateway_client_messages_total{type="invalid"} 4"#),
        "five SUBSCRIBE, four with bad names: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_is_a_subscription_and_leaving_one_never_joined_is_harmless() {
    let gw = gateway().in_process().start().await;
    let (mut c, _) = gw.connect_user(&with_rooms("1", &["*"]), "1").await;
    c.send_text(&subscribe("lobby")).await;
    expect(&mut c, "SUBSCRIBED", "lobby").await;
    c.send_text(&json!({"type":"UNSUBSCRIBE","room":"never-joined"}).to_string())
        .await;
    expect(&mut c, "UNSUBSCRIBED", "never-joined").await;
    let s = gw.get("/ws/stats").await;
    assert_eq!(s.status, 401, "stats needs admin");
    let stats = gw.stats().await;
    assert_eq!(
        stats["subscriptions"], 2,
        "the user's channel and the room: {stats}"
    );
}
