//! What a hostile client must not be able to do (issue 11): flood the logs,
//! hold an admin request open by trickling its body, exhaust the open-files
//! limit so that the probes die, or hide behind a proxy's address.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from `stream` until `done` says the bytes so far suffice, the peer
/// closes, or `limit` passes; returns what arrived.
async fn read_until(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// The `suppressed=N` of a log line, if it has one.
fn suppressed_of(line: &str) -> Option<u64> {
    let rest = &line[line.find("suppressed=")? + "suppressed=".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Item 4: refusals and dropped publishes are logged at a bounded rate.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_refusals_log_a_bounded_number_of_lines_with_the_suppressed_count() {
    const FLOOD: usize = 20_000;
    const STATUS: &[u8] = b"HTTP/1.1 400";
    let gw = gateway().start().await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!("GET /ws HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr);
    let (mut reader, mut writer) = stream.split();
    let write = async {
        let all = request.repeat(FLOOD);
        writer.write_all(all.as_bytes()).await.unwrap();
    };
    let read = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        // The last bytes of the previous read: a status split across two
        // reads still counts, and none counts twice (they are shorter).
        let mut carry: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while seen < FLOOD && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => {
                    carry.extend_from_slice(&buf[..n]);
                    seen += count(&carry, STATUS);
                    carry.drain(..carry.len().saturating_sub(STATUS.len() - 1));
                }
            }
        }
        seen
    };
    let ((), answered) = tokio::join!(write, read);
    assert!(
        answered >= FLOOD,
        "only {answered} of {FLOOD} pipelined requests were answered"
    );
    // Each line accounts for itself and the refusals suppressed before it;
    // the ones after the last line are reported by the next, a second on.
    let refusal_lines = || -> Vec<String> {
        gw.logs()
            .into_iter()
            .filter(|l| l.contains("handshake refused"))
            .collect()
    };
    let accounted = |lines: &[String]| -> u64 {
        lines.len() as u64 + lines.iter().filter_map(|l| suppressed_of(l)).sum::<u64>()
    };
    let all_reported = wait_until(Duration::from_secs(10), || async {
        let _ = gw.try_get("/ws").await;
        accounted(&refusal_lines()) >= FLOOD as u64
    })
    .await;
    let lines = refusal_lines();
    assert!(
        all_reported,
        "the lines account for {} of at least {FLOOD} refusals: {lines:#?}",
        accounted(&lines)
    );
    assert!(
        lines.len() <= 20,
        "{} refusal lines for {FLOOD} refusals in a few seconds",
        lines.len()
    );
    assert!(
        lines.iter().any(|l| suppressed_of(l).unwrap_or(0) > 0),
        "no line reported a suppressed count: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_publish_in_the_first_second_of_uptime_is_logged() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    redis.publish("ws:broadcast", "not json").await;
    let counted = wait_until(WAIT_TIMEOUT, || async {
        gw.stats().await["messages_dropped"].as_u64() >= Some(1)
    })
    .await;
    assert!(counted, "the invalid publish was not counted as dropped");
    let stats = gw.stats().await;
    assert_eq!(
        stats["uptime_secs"], 0,
        "the test needs the drop within the first second of uptime: {stats}"
    );
    let logged = wait_until(Duration::from_secs(2), || async {
        gw.logs()
            .iter()
            .any(|l| l.contains("dropped a published message"))
    })
    .await;
    assert!(logged, "the drop was not logged:\n{}", gw.logs_text());
}

// ---------------------------------------------------------------------------
// Item 8: an admin body has a deadline.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_body_trickled_slowly_is_answered_408() {
    let gw = gateway().start().await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /ws/broadcast HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 64\r\n\r\n",
        gw.addr,
        admin_token()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    // One byte every 500 ms: never all 64 within the test's bound.
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let got = read_until(&mut reader, Duration::from_secs(15), |got| {
        got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}")
    })
    .await;
    trickle.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "expected 408 within 15 s, after {:?} got {text:?}",
        started.elapsed()
    );
    assert!(text.contains(r#""error":"request_timeout""#), "{text}");
}

// ---------------------------------------------------------------------------
// Item 2: at the open-files limit, the probes still answer.
// ---------------------------------------------------------------------------

/// GETs `path` on a fresh connection and wants 200 within `limit`.
async fn assert_answers_quickly(gw: &Gateway, path: &str, limit: Duration) {
    let asked = Instant::now();
    let answer = tokio::time::timeout(limit, http_request(gw.addr, "GET", path, &[], None)).await;
    match answer {
        Ok(Ok(r)) => assert_eq!(r.status, 200, "GET {path}: {}", r.text()),
        Ok(Err(e)) => panic!("GET {path} failed after {:?}: {e}", asked.elapsed()),
        Err(_) => panic!("GET {path} unanswered after {limit:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_files_limit_upgrades_are_refused_and_the_probes_answer() {
    const NOFILE: u64 = 256;
    let gw = gateway().nofile(NOFILE).start().await;

    // WebSockets until the instance says over_capacity (well before EMFILE).
    let mut clients = Vec::new();
    let refusal = loop {
        assert!(
            clients.len() < NOFILE as usize,
            "{} WebSockets accepted under an open-files limit of {NOFILE}",
            clients.len()
        );
        let user = format!("u{}", clients.len());
        match gw
            .connect_raw(&ConnectOpts::token(&token(&user, &[])))
            .await
        {
            Ok(mut c) => {
                c.expect_connected(&user).await;
                clients.push(c);
            }
            Err(e) => break expect_refusal(Err(e)),
        }
    };
    assert_eq!(refusal.status, 503, "{}", refusal.body);
    assert_eq!(refusal.json()["error"], "over_capacity");
    assert!(clients.len() >= 100, "only {} accepted", clients.len());

    // Idle sockets and never-finished request heads, more than the limit
    // leaves room for.
    let mut idle = Vec::new();
    for i in 0..NOFILE {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(s);
    }
    for _ in 0..3 {
        for path in ["/healthz", "/readyz", "/ws/health"] {
            assert_answers_quickly(&gw, path, Duration::from_secs(1)).await;
        }
    }
    // And more upgrades are still refused at once, not left hanging.
    let r = expect_refusal(
        gw.connect_raw(&ConnectOpts::token(&token("late", &[])))
            .await,
    );
    assert_eq!(r.status, 503, "{}", r.body);
    let limits = gw
        .logs()
        .into_iter()
        .find(|l| l.contains("connection limits"))
        .unwrap_or_else(|| panic!("no `connection limits` line:\n{}", gw.logs_text()));
    assert!(limits.contains("open_files=256"), "{limits}");
    assert!(
        !gw.logs_text().contains("accept failed"),
        "the gateway ran out of descriptors:\n{}",
        gw.logs_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_capped() {
    let gw = gateway()
        .env("GATEWAY_CONNECTION_MAX_CONNECTIONS_PER_IP", "2")
        .in_process()
        .start()
        .await;
    let a = gw.user("a", &[]).await;
    let _b = gw.user("b", &[]).await;
    let r = expect_refusal(gw.connect_raw(&ConnectOpts::token(&token("c", &[]))).await);
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"], "too_many_connections_per_ip");
    assert!(r.header("retry-after").is_some());
    a.close().await;
    // The slot comes back once the session has ended.
    let again = wait_until(WAIT_TIMEOUT, || async {
        gw.connect_raw(&ConnectOpts::token(&token("c", &[])))
            .await
            .is_ok()
    })
    .await;
    assert!(again, "a closed connection's slot did not come back");
    let metrics = gw.get("/metrics").await.text();
    assert!(
        metrics.contains(r#"reason="too_many_connections_per_ip"} 1"#),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------
// Item 10: behind a trusted proxy, the forwarded client IP is counted.
// ---------------------------------------------------------------------------

/// Connects user `user` as if through a proxy that forwarded for `client`.
async fn connect_via(gw: &Gateway, user: &str, client: &str) -> Result<Client, String> {
    let opts = ConnectOpts::token(&token(user, &[])).header("X-Forwarded-For", client);
    gw.connect_raw(&opts)
        .await
        .map_err(|e| describe_ws_error(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_per_ip_cap_counts_the_forwarded_ip() {
    let gw = gateway()
        .env("GATEWAY_CONNECTION_MAX_CONNECTIONS_PER_IP", "2")
        .env("GATEWAY_SERVER_TRUSTED_PROXIES", "127.0.0.0/8")
        .start()
        .await;
    let mut kept = Vec::new();
    for user in ["a1", "a2"] {
        kept.push(connect_via(&gw, user, "198.51.100.1").await.unwrap());
    }
    let third = connect_via(&gw, "a3", "198.51.100.1").await;
    assert!(
        third.as_ref().is_err_and(|e| e.contains("429")),
        "a third from one forwarded IP: {:?}",
        third.as_ref().map(|_| "accepted")
    );
    // Other clients of the same proxy are counted apart; a client-written
    // entry left of the proxy's does not change who it is.
    for (user, chain) in [("b1", "198.51.100.2"), ("b2", "6.6.6.6, 198.51.100.2")] {
        kept.push(connect_via(&gw, user, chain).await.unwrap());
    }
    let spoofed = connect_via(&gw, "b3", "7.7.7.7, 198.51.100.2").await;
    assert!(spoofed.is_err(), "a spoofed leftmost entry escaped the cap");
    let logs = gw.logs_text();
    assert!(
        logs.contains("ip=198.51.100.1") && logs.contains("ip=198.51.100.2"),
        "the logs show the forwarded IPs:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_forwarding_headers_are_ignored() {
    let gw = gateway()
        .env("GATEWAY_CONNECTION_MAX_CONNECTIONS_PER_IP", "2")
        .start()
        .await;
    let _a = connect_via(&gw, "a1", "198.51.100.1").await.unwrap();
    let _b = connect_via(&gw, "a2", "198.51.100.2").await.unwrap();
    let third = connect_via(&gw, "a3", "198.51.100.3").await;
    assert!(
        third.as_ref().is_err_and(|e| e.contains("429")),
        "all three come from 127.0.0.1: {:?}",
        third.as_ref().map(|_| "accepted")
    );
    assert!(!gw.logs_text().contains("ip=198.51.100"));
}
