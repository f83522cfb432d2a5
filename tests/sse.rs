//! Server-sent events (SPEC §12) with a plain HTTP client: the stream's
//! head and framing, resume with `Last-Event-ID`, pings, rooms, the
//! refusals before the stream, the end at `exp` + leeway, and the drain.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stream_as_events_after_connected() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let target = format!("/sse?token={}", token("42", &[]));
    let mut sse = Sse::open(gw.addr, &target, &[]).await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    assert!(
        sse.head.contains("content-type: text/event-stream"),
        "{}",
        sse.head
    );
    assert!(sse.head.contains("cache-control: no-cache"), "{}", sse.head);
    assert!(sse.head.contains("x-accel-buffering: no"), "{}", sse.head);
    assert!(
        sse.head.contains("transfer-encoding: chunked"),
        "HTTP/1.1 chunked (SPEC §12): {}",
        sse.head
    );
    let hello = sse.next_event().await;
    assert_eq!(hello.event.as_deref(), Some("CONNECTED"));
    assert_eq!(hello.json()["type"], "CONNECTED");
    assert_eq!(hello.json()["data"]["user_id"], "42");
    assert_eq!(
        hello.id.as_deref(),
        hello.json()["id"].as_str(),
        "id: is the resume point"
    );

    redis.wait_numsub("ws:user:42", 1).await;
    let alert = json!({"type": "BUDGET_ALERT", "id": "m1", "data": {"pct": 90}});
    redis.publish("ws:user:42", alert.to_string()).await;
    let e = sse.next_event().await;
    assert_eq!(e.id.as_deref(), Some("m1"));
    assert_eq!(e.event.as_deref(), Some("BUDGET_ALERT"));
    assert_eq!(e.json(), alert, "the published bytes");

    // A message without an id has no id: line; one with line breaks in
    // its JSON gets one data: line per line.
    let text = "{\"type\":\"NOTE\",\n\"data\":1}";
    redis.publish("ws:broadcast", text).await;
    let e = sse.next_event().await;
    assert_eq!(e.id, None);
    assert_eq!(e.data, vec!["{\"type\":\"NOTE\",", "\"data\":1}"]);

    let metrics = gw.get("/metrics").await.text();
    assert!(
        metrics.contains(r#"ws_gateway_connections{transport="sse"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_exactly_the_missed_messages() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut conn = redis.conn().await;
    let first = conn.publish_numbered("42", "SEQ", 0..=0).await.remove(0);
    let missed = conn.publish_numbered("42", "SEQ", 1..=3).await;
    let target = format!("/sse?token={}", token("42", &[]));
    let last = first["id"].as_str().unwrap();
    let mut sse = Sse::open(gw.addr, &target, &[("Last-Event-ID", last)]).await;
    let hello = sse.next_event().await;
    assert_eq!(hello.json()["data"]["recovered"], true);
    assert_eq!(hello.json()["data"]["replayed"], 3);
    for m in &missed {
        let e = sse.next_event().await;
        assert_eq!(e.json(), *m, "in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_the_stream_alive() {
    let gw = gateway()
        .env("GATEWAY_CONNECTION_PING_INTERVAL_SECS", "1")
        .start()
        .await;
    let target = format!("/sse?token={}", token("42", &[]));
    let mut sse = Sse::open(gw.addr, &target, &[]).await;
    sse.next_event().await;
    let ping = sse.next().await.expect("a ping");
    assert_eq!(ping.comment.as_deref(), Some("ping"), "{ping:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_before_the_stream() {
    let gw = gateway()
        .env("GATEWAY_CONNECTION_MAX_CONNECTIONS_PER_USER", "1")
        .start()
        .await;
    let mut sse = Sse::open(gw.addr, "/sse?token=nope", &[]).await;
    assert_eq!(sse.status, 401);
    assert_eq!(sse.body().await["error"], "invalid_token");
    let mut sse = Sse::open(gw.addr, "/sse", &[]).await;
    assert_eq!(sse.status, 401);
    assert_eq!(sse.body().await["error"], "missing_token");

    let claims = json!({"sub": "7", "channels": ["household-*"], "exp": now_secs() + 3600});
    let target = format!(
        "/sse?token={}&rooms=household-1,team-2",
        mint_claims(&claims)
    );
    let mut sse = Sse::open(gw.addr, &target, &[]).await;
    assert_eq!(sse.status, 403);
    assert_eq!(sse.body().await["error"], "forbidden");

    let bearer = format!("Bearer {}", token("42", &[]));
    let mut first = Sse::open(gw.addr, "/sse", &[("Authorization", &bearer)]).await;
    assert_eq!(first.status, 200);
    first.next_event().await;
    let mut second = Sse::open(gw.addr, "/sse", &[("Authorization", &bearer)]).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.body().await["error"], "too_many_connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_join_from_the_query() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let claims = json!({"sub": "7", "channels": ["household-*"], "exp": now_secs() + 3600});
    let target = format!("/sse?token={}&rooms=household-1", mint_claims(&claims));
    let mut sse = Sse::open(gw.addr, &target, &[]).await;
    assert_eq!(sse.status, 200);
    sse.next_event().await;
    redis.wait_numsub("ws:room:household-1", 1).await;
    let m = json!({"type": "BUDGET_UPDATED", "id": "r1"});
    redis.publish("ws:room:household-1", m.to_string()).await;
    assert_eq!(sse.next_event().await.json(), m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_ends_at_exp_plus_leeway() {
    let gw = gateway().env("GATEWAY_AUTH_LEEWAY_SECS", "0").start().await;
    let claims = json!({"sub": "42", "exp": now_secs() + 2});
    let target = format!("/sse?token={}", mint_claims(&claims));
    let mut sse = Sse::open(gw.addr, &target, &[]).await;
    assert_eq!(sse.status, 200);
    let mut ended = false;
    for _ in 0..20 {
        if sse.next().await.is_none() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the stream did not end");
    assert!(
        sse.last_chunk,
        "the stream was cut, not ended with its last chunk"
    );
    let ok = wait_until(WAIT, || async { gw.stats().await["connections"] == 0 }).await;
    assert!(ok, "the connection is gone: {}", gw.stats().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_the_stream() {
    let gw = gateway()
        .env("GATEWAY_SERVER_SHUTDOWN_DRAIN_SECS", "1")
        .start()
        .await;
    let target = format!("/sse?token={}", token("42", &[]));
    let mut sse = Sse::open(gw.addr, &target, &[]).await;
    sse.next_event().await;
    gw.sigterm();
    let mut ended = false;
    for _ in 0..20 {
        if sse.next().await.is_none() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the stream did not end on SIGTERM");
    assert!(
        sse.last_chunk,
        "the stream was cut, not ended with its last chunk"
    );
}

/// A browser asks for `/sse` on the connection that loaded its page: that
/// request is hyper's, not the stream's. It is sent, with a 307 and
/// `Connection: close`, to a fresh connection, where the stream works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_on_a_kept_alive_connection_is_redirected_to_a_fresh_one() {
    let gw = gateway().start().await;
    let target = format!("/sse?token={}", token("42", &[]));
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let requests = format!(
        "GET /healthz HTTP/1.1\r\nHost: {0}\r\n\r\nGET {target} HTTP/1.1\r\nHost: {0}\r\nAccept: text/event-stream\r\n\r\n",
        gw.addr
    );
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            got.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the connection is closed after the 307");
    let text = String::from_utf8_lossy(&got).to_lowercase();
    let second = &text[text.find("http/1.1 307").expect("a 307")..];
    assert!(
        second.contains(&format!("location: {}", target.to_lowercase())),
        "{text}"
    );
    assert!(second.contains("connection: close"), "{text}");
    let mut sse = Sse::open(gw.addr, &target, &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_event().await.event.as_deref(), Some("CONNECTED"));
}

/// A `Last-Event-ID` resume while Redis does not answer: the history
/// cannot be read, and the messages are safe there. The stream tells the
/// `EventSource` to come back (`retry:`, an ERROR event without an id, the
/// end), and the retry once Redis answers recovers exactly what was missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_while_redis_is_unreachable_asks_for_a_retry() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut conn = redis.conn().await;
    let published = conn.publish_numbered("42", "BALANCE_UPDATE", 0..=2).await;
    let ids: Vec<String> = published
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let target = format!("/sse?token={}", token("42", &[]));

    redis.pause();
    // Bounded by the subscription wait and the command timeout (5 s each).
    let headers = [("Last-Event-ID", ids[0].as_str())];
    let mut sse = Sse::open_within(gw.addr, &target, &headers, Duration::from_secs(30)).await;
    assert_eq!(
        sse.status, 200,
        "an EventSource stops for good on any other status"
    );
    let error = sse.next_event().await;
    assert_eq!(error.event.as_deref(), Some("ERROR"), "{error:?}");
    assert_eq!(error.json()["data"]["code"], "history_unavailable");
    assert_eq!(
        error.id, None,
        "the retry must keep the client's Last-Event-ID"
    );
    let retry = error.retry.expect("a retry: delay");
    assert!((1000..=10_000).contains(&retry), "retry {retry} ms");
    assert_eq!(
        sse.next().await,
        None,
        "the stream ends, so the client comes back"
    );
    assert!(
        sse.last_chunk,
        "the stream was cut, not ended with its last chunk"
    );

    redis.resume();
    let mut sse = Sse::open(gw.addr, &target, &[("Last-Event-ID", &ids[0])]).await;
    let hello = sse.next_event().await;
    assert_eq!(hello.json()["data"]["recovered"], true, "{hello:?}");
    for want in &ids[1..] {
        let e = sse.next_event().await;
        assert_eq!(
            e.id.as_deref(),
            Some(want.as_str()),
            "replayed in order: {e:?}"
        );
    }
}
