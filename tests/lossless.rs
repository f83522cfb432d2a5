//! Lossless delivery (SPEC §3, §4): gapless resume with `since` under load
//! while clients keep reconnecting, a Redis restart that loses nothing that
//! reached history, and the delivery canary behind `/readyz`.
//!
//! Messages are `{"type":"SEQ","id":"s<seq>","ts":…,"data":{"n":<seq>}}`,
//! published in increasing `seq` order, so what a client received can be
//! checked exactly: every seq, once, in order.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const USER: &str = "42";
/// History size for the Redis tests: larger than anything published, so
/// `since` is always found.
const HISTORY: usize = 2000;
const HISTORY_STR: &str = "2000";
/// How long a client may take to catch up once the publisher has stopped.
const CATCH_UP: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The message with sequence number `seq` (unique id, a ts).
fn seq_message(seq: u64) -> String {
    format!(
        r#"{{"type":"SEQ","id":"s{seq}","ts":{},"data":{{"n":{seq}}}}}"#,
        now_ms()
    )
}

/// `(seq, id)` of a SEQ frame.
fn parse_seq(text: &str) -> Result<(u64, String), String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("frame is not JSON ({e}): {text:?}"))?;
    if v["type"] != "SEQ" {
        return Err(format!("expected a SEQ message, got {text}"));
    }
    let seq = v["data"]["n"]
        .as_u64()
        .ok_or_else(|| format!("SEQ without data.n: {text}"))?;
    let id = v["id"]
        .as_str()
        .ok_or_else(|| format!("SEQ without a string id: {text}"))?;
    Ok((seq, id.to_string()))
}

/// The gateway's warnings and errors (and lines about Redis, canary,
/// resync, replay), last `n`, for failure messages.
fn relevant_logs(gw: &Gateway, n: usize) -> String {
    let lines: Vec<String> = gw
        .logs()
        .into_iter()
        .filter(|l| {
            let low = l.to_ascii_lowercase();
            [
                "warn", "error", "redis", "canary", "resync", "replay", "stderr",
            ]
            .iter()
            .any(|w| low.contains(w))
        })
        .collect();
    let skip = lines.len().saturating_sub(n);
    lines[skip..].join("\n")
}

/// Panics with `msg` and the relevant gateway log lines.
fn fail(gw: &Gateway, msg: impl std::fmt::Display) -> ! {
    panic!(
        "{msg}\n--- gateway log (warnings, errors, redis/canary lines; last 60) ---\n{}",
        relevant_logs(gw, 60)
    )
}

/// Awaits a task, re-raising its panic as is.
async fn join<T>(h: JoinHandle<T>) -> T {
    match h.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

async fn readyz_status(gw: &Gateway) -> Option<u16> {
    gw.try_get("/readyz").await.map(|r| r.status)
}

// ---------------------------------------------------------------------------
// Reconnecting clients (tests 1 and 4)
// ---------------------------------------------------------------------------

/// Publishes `per_tick` SEQ messages through the canonical path every
/// 10 ms, for at most `ticks` ticks and `limit`, or until `done()`; returns
/// the last seq published (ids are the messages' own).
///
/// It never runs more than half the history ahead of the slowest of
/// `readers` (how many messages each client has read): a client that falls
/// further behind, as one does on a loaded machine, would resume from an
/// id the history no longer holds, and `recovered: false` would then be
/// the right answer, not a loss.
async fn publish_steadily(
    port: u16,
    per_tick: u64,
    ticks: usize,
    limit: Duration,
    done: impl Fn() -> bool,
    readers: Vec<Arc<AtomicU64>>,
) -> Result<(u64, Option<Vec<String>>), String> {
    let mut conn = RespConn::try_connect(port, Duration::from_secs(2)).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut seq = 0u64;
    let slowest = || readers.iter().map(|r| r.load(Ordering::Relaxed)).min();
    for _ in 0..ticks {
        tick.tick().await;
        if done() || started.elapsed() > limit {
            break;
        }
        if slowest().is_some_and(|read| read + (HISTORY as u64) / 2 < seq) {
            continue;
        }
        for _ in 0..per_tick {
            let acked = conn
                .publish_canonical(
                    USER,
                    seq_message(seq).as_bytes(),
                    HISTORY,
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| format!("publish seq {seq}: {e}"))?;
            if !acked {
                return Err(format!("publish seq {seq}: EXEC did not return an array"));
            }
            seq += 1;
        }
    }
    Ok((seq - 1, None))
}

/// One connection of a reconnecting client.
#[derive(Debug)]
struct Session {
    since: Option<String>,
    recovered: Value,
    replayed: Value,
    /// Index in `ClientLog::seqs` of its first message.
    first: usize,
}

#[derive(Debug, Default)]
struct ClientLog {
    name: String,
    seqs: Vec<u64>,
    ids: Vec<String>,
    sessions: Vec<Session>,
}

impl ClientLog {
    fn session_of(&self, index: usize) -> (usize, &Session) {
        let k = self
            .sessions
            .iter()
            .rposition(|s| s.first <= index)
            .unwrap_or(0);
        (k, &self.sessions[k])
    }

    /// Checks that `seqs` is exactly `0..=last`, each once, in order;
    /// describes the first deviation precisely.
    fn check_gapless(&self, last: u64) -> Result<(), String> {
        let name = &self.name;
        for (i, &seq) in self.seqs.iter().enumerate() {
            let want = i as u64;
            if seq == want {
                continue;
            }
            let what = if seq > want {
                format!("gap: seqs {want}..={} never arrived", seq - 1)
            } else if self.seqs[..i].contains(&seq) {
                format!("duplicate: seq {seq} arrived a second time")
            } else {
                format!("out of order: seq {seq} after {}", self.seqs[i - 1])
            };
            let (k, s) = self.session_of(i);
            let lo = i.saturating_sub(4);
            let hi = (i + 4).min(self.seqs.len());
            return Err(format!(
                "client {name}: position {i} should be seq {want}, got {seq} ({what}). \
                 It is frame #{} of connection #{k} (since={:?}, recovered={}, replayed={}; \
                 frames up to `replayed` are the replay, the rest live). \
                 Received around it: {:?}. Connections (first frame index): {:?}",
                i - s.first,
                s.since,
                s.recovered,
                s.replayed,
                &self.seqs[lo..hi],
                self.sessions
                    .iter()
                    .map(|s| (s.first, s.since.clone(), s.replayed.clone()))
                    .collect::<Vec<_>>()
            ));
        }
        if self.seqs.len() as u64 != last + 1 {
            return Err(format!(
                "client {name}: received {} messages (last {:?}), expected seqs 0..={last}",
                self.seqs.len(),
                self.seqs.last()
            ));
        }
        Ok(())
    }
}

/// How a reconnecting client cycles.
#[derive(Clone)]
struct Cycle {
    /// How long each connection reads (random in the range, ms).
    dwell_ms: (u64, u64),
    /// How long it stays offline between connections at most (ms).
    offline_ms: u64,
    /// Bounds of the whole run.
    max_connections: usize,
    limit: Duration,
    /// Counts the client's resumed connections (for a publisher that runs
    /// until there were enough).
    resumes: Arc<AtomicU64>,
    /// How many messages the client has read (for a publisher that must
    /// not outrun the history).
    read: Arc<AtomicU64>,
}

impl Cycle {
    fn new(dwell_ms: (u64, u64)) -> Self {
        Self {
            dwell_ms,
            offline_ms: 100,
            max_connections: 200,
            limit: Duration::from_secs(45),
            resumes: Arc::default(),
            read: Arc::default(),
        }
    }
}

/// A client of `USER` that connects (the first time without `since`), reads,
/// and every dwell closes and reconnects with `since=<last id seen>` after
/// a moment offline, checking `recovered: true`. Once `last` holds the
/// publisher's final seq it stops cycling and reads until it has that seq
/// (bounded), then returns its log and its still-open connection.
async fn reconnecting_client(
    gw: Arc<Gateway>,
    name: String,
    cycle: Cycle,
    connected: mpsc::Sender<()>,
    last: watch::Receiver<Option<u64>>,
) -> Result<(ClientLog, Client), String> {
    let tok = token(USER, &[]);
    let mut log = ClientLog {
        name: name.clone(),
        ..Default::default()
    };
    let hard_deadline = Instant::now() + cycle.limit;
    let mut final_deadline: Option<Instant> = None;
    for k in 0..cycle.max_connections {
        let since = log.ids.last().cloned();
        let mut opts = ConnectOpts::token(&tok);
        if let Some(id) = &since {
            opts = opts.query("since", id);
        }
        let mut c = gw.connect_raw(&opts).await.map_err(|e| {
            format!(
                "client {name} connection #{k} (since={since:?}) refused: {}",
                describe_ws_error(&e)
            )
        })?;
        let first = c
            .next_frame(FRAME_TIMEOUT)
            .await
            .ok_or_else(|| format!("client {name} connection #{k}: no CONNECTED within 5 s"))?;
        let Frame::Text(text) = first else {
            return Err(format!(
                "client {name} connection #{k}: first frame {first:?}, expected CONNECTED"
            ));
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if v["type"] != "CONNECTED" || v["data"]["user_id"] != USER {
            return Err(format!(
                "client {name} connection #{k}: expected CONNECTED for {USER}, got {text}"
            ));
        }
        let d = &v["data"];
        let want_recovered = if since.is_some() {
            json!(true)
        } else {
            Value::Null
        };
        if d["recovered"] != want_recovered {
            return Err(format!(
                "client {name} connection #{k} with since={since:?}: CONNECTED recovered \
                 should be {want_recovered}, got {text} (after {} messages)",
                log.seqs.len()
            ));
        }
        log.sessions.push(Session {
            since: since.clone(),
            recovered: d["recovered"].clone(),
            replayed: d["replayed"].clone(),
            first: log.seqs.len(),
        });
        if k == 0 {
            let _ = connected.send(()).await;
        } else {
            cycle.resumes.fetch_add(1, Ordering::Relaxed);
        }

        let dwell = Duration::from_millis(rand::random_range(cycle.dwell_ms.0..=cycle.dwell_ms.1));
        let session_end = Instant::now() + dwell;
        for _ in 0..1_000_000u32 {
            let fin = *last.borrow();
            if let Some(f) = fin {
                if log.seqs.last().is_some_and(|&s| s >= f) {
                    return Ok((log, c));
                }
                let d = *final_deadline.get_or_insert_with(|| Instant::now() + CATCH_UP);
                if Instant::now() >= d {
                    return Err(format!(
                        "client {name}: the last seq {f} did not arrive within {CATCH_UP:?} \
                         after the publisher stopped; received {} messages, last {:?}, \
                         on connection #{k} (since={since:?})",
                        log.seqs.len(),
                        log.seqs.last()
                    ));
                }
            } else if Instant::now() >= session_end && !log.ids.is_empty() {
                // Time to reconnect (never before the first message: the
                // reconnect needs an id to resume from).
                break;
            }
            if Instant::now() >= hard_deadline {
                return Err(format!(
                    "client {name}: still running after {:?} ({} messages)",
                    cycle.limit,
                    log.seqs.len()
                ));
            }
            match c.next_frame(Duration::from_millis(100)).await {
                None | Some(Frame::Ping) => {}
                Some(Frame::Text(t)) => {
                    let (seq, id) = parse_seq(&t).map_err(|e| {
                        format!("client {name} connection #{k} (since={since:?}): {e}")
                    })?;
                    log.seqs.push(seq);
                    log.ids.push(id);
                    cycle.read.fetch_add(1, Ordering::Relaxed);
                }
                Some(other) => {
                    return Err(format!(
                        "client {name} connection #{k} (since={since:?}): unexpected {other:?} \
                         after {} messages",
                        log.seqs.len()
                    ))
                }
            }
        }
        // Messages still in flight on this connection are dropped: the next
        // one resumes after the last id actually read. Then the client stays
        // offline for a moment (part of the scenario, not a synchronisation),
        // so that the resume has something to replay.
        c.close().await;
        let offline = rand::random_range(0..=cycle.offline_ms);
        tokio::time::sleep(Duration::from_millis(offline)).await;
    }
    Err(format!("client {name}: too many reconnects"))
}

/// Test 1 and 4: one reconnecting client of `USER` per cycle; once all are
/// connected, `publish` runs (it returns the last seq published and, when
/// known, the id of each seq). Checks every client got exactly 0..=last.
/// Returns how many times each client resumed.
async fn gapless_scenario<P, F>(
    gw: Arc<Gateway>,
    redis: Option<&Redis>,
    cycles: &[Cycle],
    publish: P,
) -> Vec<usize>
where
    P: FnOnce() -> F,
    F: Future<Output = Result<(u64, Option<Vec<String>>), String>> + Send + 'static,
{
    let (last_tx, last_rx) = watch::channel(None);
    let (conn_tx, mut conn_rx) = mpsc::channel(cycles.len());
    let clients: Vec<_> = cycles
        .iter()
        .enumerate()
        .map(|(i, cycle)| {
            let name = ["A", "B", "C", "D"][i].to_string();
            tokio::spawn(reconnecting_client(
                gw.clone(),
                name,
                cycle.clone(),
                conn_tx.clone(),
                last_rx.clone(),
            ))
        })
        .collect();
    for i in 0..cycles.len() {
        let ok = tokio::time::timeout(WAIT_TIMEOUT, conn_rx.recv()).await;
        if !matches!(ok, Ok(Some(()))) {
            fail(
                &gw,
                format!("only {i} clients connected within {WAIT_TIMEOUT:?}"),
            );
        }
    }
    if let Some(redis) = redis {
        redis.wait_numsub(&format!("ws:user:{USER}"), 1).await;
    }

    let started = Instant::now();
    let published = join(tokio::spawn(publish())).await;
    let (last, ids) = published.unwrap_or_else(|e| fail(&gw, format!("publisher: {e}")));
    let publish_time = started.elapsed();
    last_tx.send(Some(last)).unwrap();

    let mut logs = Vec::new();
    let mut conns = Vec::new();
    for h in clients {
        match join(h).await {
            Ok((log, c)) => {
                logs.push(log);
                conns.push(c);
            }
            Err(e) => fail(&gw, e),
        }
    }
    for log in &logs {
        if let Err(e) = log.check_gapless(last) {
            fail(&gw, e);
        }
        if let Some(ids) = &ids {
            for (i, (&seq, id)) in log.seqs.iter().zip(&log.ids).enumerate() {
                if ids[seq as usize] != *id {
                    fail(
                        &gw,
                        format!(
                            "client {}: message #{i} (seq {seq}) has id {id}, \
                             the publish returned {}",
                            log.name, ids[seq as usize]
                        ),
                    );
                }
            }
        }
        // The point is the reconnects: make sure they happened.
        let resumed = log.sessions.iter().filter(|s| s.since.is_some()).count();
        assert!(
            resumed >= 3,
            "client {}: only {resumed} resumed connections in {publish_time:?}",
            log.name
        );
    }
    let sessions: Vec<usize> = logs.iter().map(|l| l.sessions.len()).collect();
    let replayed: Vec<u64> = logs
        .iter()
        .map(|l| l.sessions.iter().filter_map(|s| s.replayed.as_u64()).sum())
        .collect();
    eprintln!(
        "published 0..={last} in {publish_time:?}; connections per client: {sessions:?}, \
         messages replayed per client: {replayed:?}"
    );

    // No leak: exactly the clients' current connections remain.
    let n = conns.len() as u64;
    let ok = wait_until(WAIT_TIMEOUT, || async {
        gw.health().await["connections"].as_u64() == Some(n)
    })
    .await;
    if !ok {
        fail(
            &gw,
            format!(
                "expected {n} connections at the end (one per client), /ws/health says {}",
                gw.health().await
            ),
        );
    }
    for c in conns {
        c.close().await;
    }
    gw.wait_connections(0).await;
    logs.iter()
        .map(|l| l.sessions.iter().filter(|s| s.since.is_some()).count())
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Redis, under load, with reconnecting clients
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gapless_under_load_with_reconnects() {
    let redis = Redis::start();
    let port = redis.port;
    let gw = Arc::new(
        gateway()
            .redis(&redis)
            .env("GATEWAY_REDIS_HISTORY_SIZE", HISTORY_STR)
            .start()
            .await,
    );
    let cycles = [(300, 700), (500, 1000), (300, 1000)].map(Cycle::new);
    let readers = cycles.iter().map(|c| c.read.clone()).collect();
    // ~300 messages/s (3 every 10 ms) for ~8 s, through the canonical path.
    let publish =
        move || publish_steadily(port, 3, 800, Duration::from_secs(12), || false, readers);
    gapless_scenario(gw.clone(), Some(&redis), &cycles, publish).await;
}

// ---------------------------------------------------------------------------
// 1b. One client resuming every ~20 ms: each resume subscribes anew
// ---------------------------------------------------------------------------

/// The way resume broke: a user's only connection reconnects with `since`
/// every ~10 ms while the backend publishes ~2000 canonical messages/s.
/// Each reconnect unsubscribes and resubscribes the user's channel, so every
/// resume depends on the subscription being live before the history is
/// read. A message published in between would be in neither the replay nor
/// the live stream while CONNECTED says `recovered: true`; seen at ~0.3% of
/// resumes, so the test runs a thousand or more of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_single_connection_resumes_lose_nothing() {
    const RESUMES: u64 = 1000;
    let redis = Redis::start();
    let port = redis.port;
    let gw = Arc::new(
        gateway()
            .redis(&redis)
            .env("GATEWAY_REDIS_HISTORY_SIZE", HISTORY_STR)
            .env("GATEWAY_CONNECTION_MAX_CONNECTIONS_PER_USER", "1000")
            .start()
            .await,
    );
    let cycle = Cycle {
        dwell_ms: (2, 12),
        offline_ms: 2,
        max_connections: 5000,
        limit: Duration::from_secs(150),
        resumes: Arc::default(),
        read: Arc::default(),
    };
    // ~2000 messages/s (20 every 10 ms) until the client resumed 1000 times
    // (at most 120 s).
    let resumes = cycle.resumes.clone();
    let enough = move || resumes.load(Ordering::Relaxed) >= RESUMES;
    let readers = vec![cycle.read.clone()];
    let publish =
        move || publish_steadily(port, 20, 12_000, Duration::from_secs(120), enough, readers);
    let resumed = gapless_scenario(gw.clone(), Some(&redis), &[cycle], publish).await;
    assert!(
        resumed[0] as u64 >= RESUMES,
        "only {} resumes in 120 s: too few to catch a 0.3% loss",
        resumed[0]
    );
}

// ---------------------------------------------------------------------------
// 4. The embedded broker, published through the admin API
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_resume_is_gapless() {
    let gw = Arc::new(gateway().start().await);
    let addr = gw.addr;
    // ~100 messages/s for ~5 s through POST /ws/test-message/42.
    let publish = move || async move {
        let admin = admin_token();
        let auth = format!("Bearer {admin}");
        let path = format!("/ws/test-message/{USER}");
        let mut ids = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let started = Instant::now();
        for seq in 0..500u64 {
            tick.tick().await;
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
            let body = json!({"type": "SEQ", "data": {"n": seq}}).to_string();
            let r = http_request(
                addr,
                "POST",
                &path,
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                Some(body.as_bytes()),
            )
            .await
            .map_err(|e| format!("POST seq {seq}: {e}"))?;
            if r.status != 202 {
                return Err(format!("POST seq {seq}: HTTP {} {}", r.status, r.text()));
            }
            let id = r.json()["id"]
                .as_str()
                .ok_or_else(|| format!("POST seq {seq}: no id in {}", r.text()))?
                .to_string();
            ids.push(id);
        }
        Ok((ids.len() as u64 - 1, Some(ids)))
    };
    let cycles = [(300, 700), (400, 1000)].map(Cycle::new);
    gapless_scenario(gw.clone(), None, &cycles, publish).await;
}

// ---------------------------------------------------------------------------
// 2. A Redis restart loses nothing that reached history
// ---------------------------------------------------------------------------

#[derive(Default)]
struct PublisherProgress {
    acked: AtomicU64,
    failed: AtomicU64,
}

/// Reads one connection until told the target seq and it has arrived.
/// Any Close or end of stream is an error: clients must stay connected.
async fn steady_reader(
    name: &'static str,
    mut c: Client,
    target: watch::Receiver<Option<u64>>,
) -> Result<(Vec<u64>, Client), String> {
    let mut seqs: Vec<u64> = Vec::new();
    let hard_deadline = Instant::now() + Duration::from_secs(60);
    let mut final_deadline: Option<Instant> = None;
    for _ in 0..1_000_000u32 {
        if let Some(t) = *target.borrow() {
            if seqs.last().is_some_and(|&s| s >= t) {
                return Ok((seqs, c));
            }
            let d = *final_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(20));
            if Instant::now() >= d {
                return Err(format!(
                    "client {name}: the last acknowledged seq {t} did not arrive within 20 s \
                     after the publisher stopped; received {} messages, last {:?}",
                    seqs.len(),
                    seqs.last()
                ));
            }
        }
        if Instant::now() >= hard_deadline {
            return Err(format!("client {name}: still reading after 60 s"));
        }
        match c.next_frame(Duration::from_millis(100)).await {
            None | Some(Frame::Ping) => {}
            Some(Frame::Text(t)) => {
                let (seq, _) = parse_seq(&t).map_err(|e| format!("client {name}: {e}"))?;
                seqs.push(seq);
            }
            Some(other) => {
                return Err(format!(
                    "client {name}: the connection did not survive: {other:?} after {} messages \
                     (last {:?})",
                    seqs.len(),
                    seqs.last()
                ))
            }
        }
    }
    Err(format!("client {name}: too many frames"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_nothing_that_reached_history() {
    let user = "7";
    let redis = Redis::start();
    let port = redis.port;
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_REDIS_CANARY_INTERVAL_SECS", "1")
        .env("GATEWAY_REDIS_HISTORY_SIZE", HISTORY_STR)
        .start()
        .await;
    let (a, da) = gw.connect_user(&token(user, &[]), user).await;
    let (b, db) = gw.connect_user(&token(user, &[]), user).await;
    redis.wait_numsub(&format!("ws:user:{user}"), 1).await;

    let (target_tx, target_rx) = watch::channel(None);
    let reader_a = tokio::spawn(steady_reader("A", a, target_rx.clone()));
    let reader_b = tokio::spawn(steady_reader("B", b, target_rx));

    // Every ~20 ms, one canonical publish; a failed one (Redis down, refused,
    // timed out) is not acknowledged and its connection is dropped.
    let progress = Arc::new(PublisherProgress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let progress = progress.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut conn: Option<RespConn> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let started = Instant::now();
            for seq in 0..3000u64 {
                tick.tick().await;
                if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(40) {
                    break;
                }
                if conn.is_none() {
                    conn = RespConn::try_connect(port, Duration::from_millis(500))
                        .await
                        .ok();
                }
                let ok = match conn.as_mut() {
                    None => false,
                    Some(c) => match c
                        .publish_canonical(
                            user,
                            seq_message(seq).as_bytes(),
                            HISTORY,
                            Duration::from_secs(2),
                        )
                        .await
                    {
                        Ok(ok) => ok,
                        Err(_) => {
                            conn = None;
                            false
                        }
                    },
                };
                if ok {
                    acked.push(seq);
                    progress.acked.fetch_add(1, Ordering::SeqCst);
                } else {
                    progress.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
            acked
        })
    };
    let acked_at_least = |n: u64, p: Arc<PublisherProgress>| async move {
        wait_until(Duration::from_secs(15), || {
            let p = p.clone();
            async move { p.acked.load(Ordering::SeqCst) >= n }
        })
        .await
    };

    // Before the outage: some traffic.
    if !acked_at_least(50, progress.clone()).await {
        fail(&gw, "the publisher did not get 50 messages acknowledged");
    }

    // The outage.
    redis.kill();
    let failed_before = progress.failed.load(Ordering::SeqCst);
    let down = wait_until(Duration::from_secs(10), || async {
        readyz_status(&gw).await == Some(503)
    })
    .await;
    if !down {
        fail(
            &gw,
            "/readyz did not turn 503 within 10 s of Redis being killed",
        );
    }
    // Keep Redis down while the publisher fails ~75 times (~1.5 s): long
    // enough for the gateway's reconnect backoff to grow, so that after the
    // restart messages reach the (new, empty) history before the gateway has
    // resubscribed, and only its catch-up from history can deliver them.
    let hit = wait_until(Duration::from_secs(10), || async {
        progress.failed.load(Ordering::SeqCst) >= failed_before + 75
    })
    .await;
    assert!(hit, "the publisher never failed while Redis was down");
    let acked_before_restart = progress.acked.load(Ordering::SeqCst);
    let redis = tokio::task::spawn_blocking(move || Redis::start_on(port))
        .await
        .expect("restart redis");
    let restarted = Instant::now();
    let channel = format!("ws:user:{user}");
    let resubscribed = wait_until(Duration::from_secs(20), || async {
        redis.numsub(&channel).await >= 1
    })
    .await;
    if !resubscribed {
        fail(
            &gw,
            format!("{channel} was not resubscribed within 20 s of Redis being restarted"),
        );
    }
    // Acknowledged after the restart but before the gateway's subscription
    // (approximately: the check above polls): these reach the clients only
    // through the catch-up from history.
    let only_in_history = progress.acked.load(Ordering::SeqCst) - acked_before_restart;
    let up = wait_until(Duration::from_secs(20), || async {
        readyz_status(&gw).await == Some(200)
    })
    .await;
    if !up {
        fail(
            &gw,
            "/readyz did not return to 200 within 20 s of Redis being restarted",
        );
    }
    let ready_after = restarted.elapsed();

    // After the outage: some more traffic, then stop.
    if !acked_at_least(acked_before_restart + 50, progress.clone()).await {
        fail(&gw, "the publisher did not recover after the restart");
    }
    stop.store(true, Ordering::SeqCst);
    let acked = join(publisher).await;
    let failed = progress.failed.load(Ordering::SeqCst);
    let target = *acked.last().expect("something was acknowledged");
    target_tx.send(Some(target)).unwrap();
    eprintln!(
        "acknowledged {} (last {target}), failed {failed}; ready {ready_after:?} after the \
         restart; ~{only_in_history} acknowledged before the gateway resubscribed",
        acked.len()
    );

    let mut conns = Vec::new();
    for (name, h, d) in [("A", reader_a, &da), ("B", reader_b, &db)] {
        let (seqs, c) = join(h).await.unwrap_or_else(|e| fail(&gw, e));
        if let Some(w) = seqs.windows(2).find(|w| w[1] <= w[0]) {
            let pos = seqs.windows(2).position(|x| x == w).unwrap() + 1;
            fail(
                &gw,
                format!(
                    "client {name}: not strictly increasing at position {pos}: {} after {} \
                     (duplicate or reordered); around: {:?}",
                    w[1],
                    w[0],
                    &seqs[pos.saturating_sub(4)..(pos + 4).min(seqs.len())]
                ),
            );
        }
        let got: std::collections::HashSet<u64> = seqs.iter().copied().collect();
        let missing: Vec<u64> = acked.iter().copied().filter(|s| !got.contains(s)).collect();
        if !missing.is_empty() {
            let extra = seqs
                .iter()
                .filter(|s| acked.binary_search(s).is_err())
                .count();
            fail(
                &gw,
                format!(
                    "client {name} (connection {}): {} acknowledged messages never arrived: {:?}; \
                     received {} ({} of them unacknowledged); acknowledged before the restart: \
                     {acked_before_restart}",
                    d["connection_id"],
                    missing.len(),
                    missing,
                    seqs.len(),
                    extra
                ),
            );
        }
        conns.push(c);
    }
    // Still the same two connections, and they still answer.
    let health = gw.health().await;
    assert_eq!(
        health["connections"], 2,
        "the two original connections should be the only ones: {health}"
    );
    for (i, c) in conns.iter_mut().enumerate() {
        c.ping_pong(i as i64 + 1).await;
    }
    drop(redis);
}

// ---------------------------------------------------------------------------
// 3. Readiness proves delivery: the canary
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_subscriber_stops_receiving() {
    let user = "9";
    let channel = format!("ws:user:{user}");
    let redis = Redis::start();
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_REDIS_CANARY_INTERVAL_SECS", "1")
        .start()
        .await;
    let mut c = gw.user(user, &[]).await;
    redis.wait_numsub(&channel, 1).await;
    assert_eq!(readyz_status(&gw).await, Some(200), "ready at start");

    // Phase 1: Redis stays up but delivers nothing for 6 s.
    let out = redis.cli(&["CLIENT", "PAUSE", "6000", "ALL"]);
    let paused = Instant::now();
    assert_eq!(out, "OK", "CLIENT PAUSE");
    let down = wait_until(Duration::from_secs(5), || async {
        readyz_status(&gw).await == Some(503)
    })
    .await;
    if !down {
        fail(
            &gw,
            "/readyz stayed 200 for 5 s while Redis delivered nothing (CLIENT PAUSE ALL, \
             canary interval 1 s: the round trip is stale after 3 s)",
        );
    }
    let down_after = paused.elapsed();
    let up = wait_until(Duration::from_secs(15), || async {
        readyz_status(&gw).await == Some(200)
    })
    .await;
    let up_after = paused.elapsed();
    if !up {
        fail(
            &gw,
            format!("/readyz did not return to 200 within 15 s after the 6 s pause began (503 after {down_after:?})"),
        );
    }
    assert!(
        up_after >= Duration::from_secs(5),
        "/readyz returned to 200 {up_after:?} after a 6 s CLIENT PAUSE began: \
         no canary can have made the round trip yet"
    );
    eprintln!("pause: 503 after {down_after:?}, 200 again after {up_after:?}");
    // The connection survived and still receives.
    redis.wait_numsub(&channel, 1).await;
    let msg = r#"{"type":"NOTIFICATION","id":"after-pause"}"#;
    redis.publish(&channel, msg).await;
    assert_eq!(c.next_text().await, msg, "delivery after the pause");

    // Phase 2: the subscriber connection is killed; it must reconnect and
    // resubscribe, and the canary must flow on the new connection.
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let killed_at = Instant::now();
    assert!(
        killed.parse::<i64>().is_ok_and(|n| n >= 1),
        "CLIENT KILL TYPE pubsub should kill the gateway's subscriber, got {killed:?}"
    );
    let resubscribed = wait_until(Duration::from_secs(15), || async {
        redis.numsub(&channel).await >= 1
    })
    .await;
    if !resubscribed {
        fail(
            &gw,
            format!("{channel} was not resubscribed within 15 s of CLIENT KILL TYPE pubsub"),
        );
    }
    // 200 at least 4 s after the kill: the last round trip before the kill
    // is stale by then, so this needs a canary through the new connection.
    let fresh = wait_until(Duration::from_secs(15), || async {
        killed_at.elapsed() >= Duration::from_secs(4) && readyz_status(&gw).await == Some(200)
    })
    .await;
    if !fresh {
        fail(
            &gw,
            format!(
                "/readyz was not 200 (4 s or more after the subscriber was killed) within 15 s; \
                 last: {:?}",
                readyz_status(&gw).await
            ),
        );
    }
    let msg = r#"{"type":"NOTIFICATION","id":"after-kill"}"#;
    let receivers = redis.publish(&channel, msg).await;
    assert_eq!(
        receivers, 1,
        "the gateway should be subscribed to {channel}"
    );
    let mut next = c.next_frame(FRAME_TIMEOUT).await;
    if matches!(next, Some(Frame::Ping)) {
        next = c.next_frame(FRAME_TIMEOUT).await;
    }
    match next {
        Some(Frame::Text(t)) if t == msg => {}
        other => fail(
            &gw,
            format!("expected {msg} after the resubscription, got {other:?}"),
        ),
    }
}
