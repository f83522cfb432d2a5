//! Behind a real load balancer: HAProxy, running the shipped
//! `deploy/haproxy/haproxy.cfg`, in front of three gateways and one Redis,
//! with active health checks on `/readyz`. 300 clients connect through it
//! while a backend publishes canonical messages to their users, and each
//! instance in turn gets SIGTERM and is replaced, as a rolling update does.
//!
//! What users see: every client ends up connected; every message reaches
//! every client of its user exactly once and in order, across the 1001
//! reconnects with `since`; and HAProxy has taken each draining instance
//! out before the first of its clients was closed (the gateways'
//! `shutdown_delay_secs`), so no reconnect is sent back to it.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

const USERS: usize = 100;
const CLIENTS_PER_USER: usize = 3;
const INSTANCES: usize = 3;
const HISTORY: usize = 1000;
/// The whole test, however it goes.
const LIMIT: Duration = Duration::from_secs(150);

/// HAProxy on loopback, killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    stats: SocketAddr,
    log: std::path::PathBuf,
    _dir: TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    /// The shipped configuration, with these gateways and fast health checks
    /// (the gateways' shutdown delay is set above two of them).
    fn start(gateways: &[u16]) -> Haproxy {
        let installed = Command::new("haproxy").arg("-v").output().is_ok();
        assert!(
            installed,
            "haproxy is not installed: scripts/test.sh installs it (apt-get install haproxy)"
        );
        let dir = TempDir::new();
        let log = dir.path().join("haproxy.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");
        let mut cmd = Command::new("haproxy");
        cmd.args(["-db", "-f", config])
            .env("HAPROXY_BIND", addr.to_string())
            .env("HAPROXY_STATS_BIND", stats.to_string())
            .env("CHECK_INTER", "100ms")
            .env("MAXCONN", "4000")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("haproxy.err")).unwrap());
        for (i, port) in gateways.iter().enumerate() {
            cmd.env(format!("GATEWAY_{}", i + 1), format!("127.0.0.1:{port}"));
        }
        let child = cmd.spawn().expect("spawn haproxy");
        Haproxy {
            child,
            addr,
            stats,
            log,
            _dir: dir,
        }
    }

    async fn servers(&self) -> Option<HashMap<String, String>> {
        servers_at(self.stats).await
    }

    fn logs(&self) -> String {
        let err = self.log.with_file_name("haproxy.err");
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(err).unwrap_or_default()
        )
    }
}

/// What the clients saw, for the assertions at the end.
#[derive(Default)]
struct Seen {
    /// When each 1001 arrived.
    closes: Mutex<Vec<Instant>>,
    /// Connects through HAProxy that did not upgrade.
    refused: AtomicU64,
}

/// HAProxy's view of the servers over time: each status change, when seen.
type Changes = Arc<Mutex<Vec<(Instant, String, String)>>>;

async fn start_gateway(redis: &Redis, port: u16) -> Gateway {
    gateway()
        .redis(redis)
        .arg("--listen")
        .arg(&format!("127.0.0.1:{port}"))
        .env("GATEWAY_SERVER_SHUTDOWN_DELAY_SECS", "1")
        .env("GATEWAY_SERVER_SHUTDOWN_DRAIN_SECS", "2")
        .env("GATEWAY_SERVER_TRUSTED_PROXIES", "127.0.0.1")
        .env("GATEWAY_REDIS_HISTORY_SIZE", &HISTORY.to_string())
        .start()
        .await
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Canonical publishes (history, then channel), two users every 10 ms in
/// turn, until `stop`; returns how many each user got.
async fn publish(redis_port: u16, stop: watch::Receiver<bool>) -> Result<Vec<u64>, String> {
    let mut conn = RespConn::try_connect(redis_port, Duration::from_secs(2)).await?;
    let mut counts = vec![0u64; USERS];
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut next = 0;
    for _ in 0..15_000 {
        tick.tick().await;
        if *stop.borrow() {
            return Ok(counts);
        }
        for _ in 0..2 {
            let user = next % USERS;
            next += 1;
            let n = counts[user];
            let message = format!(
                r#"{{"type":"SEQ","id":"u{user}-{n}","ts":{},"data":{{"n":{n}}}}}"#,
                now_ms()
            );
            let acked = conn
                .publish_canonical(
                    &format!("u{user}"),
                    message.as_bytes(),
                    HISTORY,
                    Duration::from_secs(5),
                )
                .await?;
            if !acked {
                return Err(format!("publish u{user}-{n}: refused"));
            }
            counts[user] += 1;
        }
    }
    Err("the publisher was never stopped".into())
}

/// A client of user `u{user}` through HAProxy: reads SEQ messages, and on
/// a 1001 reconnects at once with `since` = the last id it read, as the
/// README tells clients to. Once `last` says how many messages its user
/// got, it returns what it read when it has them all, and its connection.
async fn client(
    haproxy: SocketAddr,
    user: usize,
    last: watch::Receiver<Option<Arc<Vec<u64>>>>,
    seen: Arc<Seen>,
    connected: mpsc::Sender<()>,
) -> Result<(Vec<u64>, Client), String> {
    let name = format!("u{user}");
    let tok = token(&name, &[]);
    let mut seqs: Vec<u64> = Vec::new();
    let mut last_id: Option<String> = None;
    let started = Instant::now();
    for attempt in 0..200 {
        let mut opts = ConnectOpts::token(&tok);
        if let Some(id) = &last_id {
            opts = opts.query("since", id);
        }
        let mut c = match connect_ws(haproxy, &opts).await {
            Ok(c) => c,
            Err(e) => {
                seen.refused.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() > LIMIT {
                    return Err(format!("{name}: refused at the end: {e}"));
                }
                // A client's backoff, not a synchronisation.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let hello = match c.next_frame(FRAME_TIMEOUT).await {
            Some(Frame::Text(t)) => serde_json::from_str::<Value>(&t).map_err(|e| e.to_string())?,
            other => return Err(format!("{name} connection #{attempt}: {other:?}")),
        };
        let want = if last_id.is_some() {
            Value::Bool(true)
        } else {
            Value::Null
        };
        if hello["type"] != "CONNECTED" || hello["data"]["recovered"] != want {
            return Err(format!(
                "{name} connection #{attempt} (since {last_id:?}): {hello}"
            ));
        }
        if attempt == 0 {
            let _ = connected.send(()).await;
        }
        loop {
            if started.elapsed() > LIMIT {
                return Err(format!("{name}: still reading after {LIMIT:?}"));
            }
            let done = last.borrow().as_ref().map(|counts| counts[user]);
            if done.is_some_and(|n| seqs.len() as u64 >= n) {
                return Ok((seqs, c));
            }
            match c.next_frame(Duration::from_millis(200)).await {
                None | Some(Frame::Ping) => {}
                Some(Frame::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).map_err(|e| format!("{e}: {t}"))?;
                    let n = v["data"]["n"]
                        .as_u64()
                        .ok_or_else(|| format!("{name}: not a SEQ: {t}"))?;
                    seqs.push(n);
                    last_id = v["id"].as_str().map(str::to_string);
                }
                Some(Frame::Close(Some(1001))) => {
                    seen.closes.lock().unwrap().push(Instant::now());
                    break;
                }
                Some(other) => {
                    return Err(format!(
                        "{name} connection #{attempt}: {other:?} after {} messages",
                        seqs.len()
                    ))
                }
            }
        }
    }
    Err(format!("{name}: too many reconnects"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_haproxy_loses_nothing_and_duplicates_nothing() {
    let redis = Redis::start();
    let ports: Vec<u16> = (0..INSTANCES).map(|_| free_port()).collect();
    let mut gateways = Vec::new();
    for &port in &ports {
        gateways.push(start_gateway(&redis, port).await);
    }
    let haproxy = Haproxy::start(&ports);
    let all_up = wait_until(WAIT_TIMEOUT, || async {
        haproxy
            .servers()
            .await
            .is_some_and(|s| s.len() == INSTANCES && s.values().all(|v| v == "UP"))
    })
    .await;
    assert!(
        all_up,
        "HAProxy never saw the gateways up: {}",
        haproxy.logs()
    );

    // HAProxy's view, recorded as it changes.
    let changes: Changes = Arc::default();
    let (watching_tx, watching) = watch::channel(true);
    let watcher = {
        let (changes, stats) = (changes.clone(), haproxy.stats);
        tokio::spawn(async move {
            let mut known: HashMap<String, String> = HashMap::new();
            for _ in 0..20_000 {
                if !*watching.borrow() {
                    return;
                }
                if let Some(now) = servers_at(stats).await {
                    for (server, status) in now {
                        if known.get(&server) != Some(&status) {
                            changes.lock().unwrap().push((
                                Instant::now(),
                                server.clone(),
                                status.clone(),
                            ));
                            known.insert(server, status);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let seen = Arc::new(Seen::default());
    let (last_tx, last_rx) = watch::channel(None);
    let (connected_tx, mut connected_rx) = mpsc::channel(USERS * CLIENTS_PER_USER);
    let clients: Vec<_> = (0..USERS * CLIENTS_PER_USER)
        .map(|i| {
            let user = i % USERS;
            tokio::spawn(client(
                haproxy.addr,
                user,
                last_rx.clone(),
                seen.clone(),
                connected_tx.clone(),
            ))
        })
        .collect();
    for i in 0..clients.len() {
        let ok = tokio::time::timeout(Duration::from_secs(30), connected_rx.recv()).await;
        assert!(matches!(ok, Ok(Some(()))), "only {i} clients connected");
    }
    for user in 0..USERS {
        redis.wait_numsub(&format!("ws:user:u{user}"), 1).await;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let publisher = tokio::spawn(publish(redis.port, stop_rx));

    // The rolling update: each instance drains, exits, and is replaced on
    // its address; the next waits until HAProxy has the replacement up.
    let mut windows = Vec::new();
    for i in 0..INSTANCES {
        let server = format!("gw{}", i + 1);
        let signalled = Instant::now();
        gateways[i].sigterm();
        let exit = gateways[i].wait_exit(Duration::from_secs(30)).await;
        assert!(
            exit.is_some_and(|s| s.success()),
            "{server} did not exit cleanly: {exit:?}\n{}",
            gateways[i].logs_text()
        );
        windows.push((server.clone(), signalled, Instant::now()));
        gateways[i] = start_gateway(&redis, ports[i]).await;
        let up = wait_until(WAIT_TIMEOUT, || async {
            haproxy
                .servers()
                .await
                .is_some_and(|s| s.get(&server).is_some_and(|v| v == "UP"))
        })
        .await;
        assert!(up, "HAProxy never saw the new {server} up");
    }

    // Some traffic after the last restart too, then the final counts.
    // (Part of the scenario, not a synchronisation.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_tx.send(true).unwrap();
    let counts = publisher
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("publisher: {e}"));
    last_tx.send(Some(Arc::new(counts.clone()))).unwrap();

    let mut open = Vec::new();
    for (i, handle) in clients.into_iter().enumerate() {
        let user = i % USERS;
        let (seqs, c) = handle.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        let want: Vec<u64> = (0..counts[user]).collect();
        assert_eq!(
            seqs, want,
            "client {i} of u{user}: every message once, in order"
        );
        open.push(c);
    }
    let _ = watching_tx.send(false);
    let _ = watcher.await;

    // Every client is connected at the end, to the new instances.
    let mut total = 0;
    for gw in &gateways {
        total += gw.health().await["connections"].as_u64().unwrap_or(0);
    }
    assert_eq!(total as usize, open.len(), "connections at the end");

    // HAProxy took each draining instance out before its first close.
    let changes = changes.lock().unwrap().clone();
    let closes = seen.closes.lock().unwrap().clone();
    for (server, signalled, exited) in &windows {
        let down = changes
            .iter()
            .find(|(at, s, status)| s == server && at > signalled && status.starts_with("DOWN"))
            .map(|(at, _, _)| *at);
        let first_close = closes
            .iter()
            .filter(|at| *at > signalled && *at < exited)
            .min()
            .copied();
        let (Some(down), Some(first_close)) = (down, first_close) else {
            panic!(
                "{server}: down at {down:?}, first close at {first_close:?}; changes {changes:?}"
            );
        };
        assert!(
            down < first_close,
            "{server}: HAProxy had it down {:?} after SIGTERM, but the first client was closed \
             {:?} after it",
            down - *signalled,
            first_close - *signalled
        );
    }
    let refused = seen.refused.load(Ordering::Relaxed);
    assert_eq!(
        refused, 0,
        "reconnects refused through HAProxy: it sent clients to an instance that could not take them"
    );
    let messages: u64 = counts.iter().sum();
    eprintln!(
        "{} clients, {messages} messages to {USERS} users, {} closes with 1001, all delivered once",
        open.len(),
        closes.len()
    );
}

/// Each gateway server's status ("UP", "DOWN", …) from HAProxy's stats CSV.
async fn servers_at(stats: SocketAddr) -> Option<HashMap<String, String>> {
    let r = http_request(stats, "GET", "/stats;csv", &[], None)
        .await
        .ok()?;
    let text = r.text();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let status = header.iter().position(|h| *h == "status")?;
    Some(
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.first() == Some(&"gateways") && f[1].starts_with("gw"))
            .map(|f| (f[1].to_string(), f[status].to_string()))
            .collect(),
    )
}
