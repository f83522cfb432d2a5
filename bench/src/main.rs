//! `ws-gateway-bench`: the load-test tool (not a timed test).
//!
//! It opens N connections for U users at a controlled ramp, from several
//! 127.0.0.x source addresses, over one of the gateway's transports (`/ws`,
//! `/socket.io/` or `/sse`, `--transport`), publishes at R messages/s for D
//! seconds through Redis (broadcast, or round-robin over the users' own
//! channels) with the send time in each payload, and reports expected vs
//! received deliveries, latency percentiles, and the resource use of the
//! process under test from /proc: KiB per connection and deliveries per
//! CPU-second. With `--baseline` it first runs the same traffic against a
//! raw-TCP fan-out server (the physical limit of the machine) and reports
//! the gateway as a ratio to it, since absolute figures drift on shared
//! machines. With `--spawn-peer` the process under test is the Socket.IO 4
//! peer of `benches/peers/socketio/` (seed 000's stack) instead of the
//! gateway, driven by the same clients and the same publishes. Every phase
//! is bounded in time.
//!
//! See BENCHMARKS.md for the scenarios and commands.

mod client;
mod pacing;
mod procstat;
mod raw;
mod sse;

use clap::{Args, Parser, Subcommand, ValueEnum};
use client::Transport;
use fred::prelude::*;
use serde::Serialize;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

#[derive(Parser)]
#[command(
    name = "ws-gateway-bench",
    about = "Load-test ws-gateway (see BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive a scenario against a gateway (and optionally the raw baseline).
    /// An option given twice takes its last value (scripts/bench.sh's
    /// BENCH_ARGS override a scenario's).
    #[command(args_override_self = true)]
    Run(Box<RunArgs>),
    /// The raw-TCP fan-out baseline server (started by `run --baseline`).
    RawServer(RawServerArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Start this gateway binary for the run (listen on a free port, auth
    /// secret and limits set for load); else use --url and --pid.
    #[arg(long, conflicts_with = "spawn_peer")]
    spawn: Option<String>,
    /// Start the Socket.IO peer instead of a gateway: `node <this script>`
    /// (benches/peers/socketio/server.mjs, its packages installed with
    /// `npm ci`); implies --transport socketio.
    #[arg(long)]
    spawn_peer: Option<String>,
    /// The node binary for --spawn-peer (its pid is the one measured).
    #[arg(long, default_value = "node")]
    node: String,
    /// The endpoint the clients use: ws (`/ws`), socketio (`/socket.io/`,
    /// Engine.IO 4 over WebSocket) or sse (`/sse`). Default: ws, or
    /// socketio with --spawn-peer.
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    /// URL of the endpoint of a running server (ws://IP:PORT/ws,
    /// ws://IP:PORT/socket.io/?EIO=4&transport=websocket, http://IP:PORT/sse);
    /// default: that of --transport on 127.0.0.1:8080.
    #[arg(long)]
    url: Option<String>,
    /// PID of the running gateway, for RSS and CPU.
    #[arg(long)]
    pid: Option<u32>,
    /// Heartbeat interval of a spawned gateway or peer, in seconds
    /// (`connection.ping_interval_secs`, Engine.IO's pingInterval);
    /// default: theirs (25 s).
    #[arg(long)]
    ping_interval: Option<u64>,
    /// HMAC secret to mint tokens with (the gateway's auth.secret).
    #[arg(long, default_value = "bench-secret")]
    secret: String,
    /// Redis the gateway uses; the tool publishes there.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Distinct users (connection i belongs to user i % users); default: one per connection.
    #[arg(long)]
    users: Option<usize>,
    /// Source addresses 127.0.0.1 ..= 127.0.0.K (about 28k ephemeral ports each).
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// New connections per second during the ramp; 0 = as fast as --concurrency allows.
    #[arg(long, default_value_t = 0)]
    ramp: u32,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// What to publish.
    #[arg(long, value_enum, default_value = "broadcast")]
    publish: Publish,
    /// Messages per second (in total).
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Hold the connections idle this long before publishing (memory scenarios).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// After the last publish, wait at most this long for deliveries.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// First run the same traffic against the raw-TCP baseline and report ratios.
    #[arg(long)]
    baseline: bool,
    /// Record the gateway's RSS this often while publishing (leak checks).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    rss_every: Duration,
    /// A name for the scenario in the output.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Publish {
    /// Every message to `ws:broadcast`.
    Broadcast,
    /// Message k to `ws:user:u{k % users}`.
    User,
    /// Connect only (idle and connection set-up scenarios).
    None,
}

#[derive(Args)]
struct RawServerArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long)]
    connections: usize,
    #[arg(long)]
    rate: u32,
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 100)]
    payload: usize,
}

/// Upper bound on a whole run, whatever the arguments.
const MAX_RUN: Duration = Duration::from_secs(1800);

fn main() {
    let cli = Cli::parse();
    // Many connections need many descriptors: take the hard limit.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => fail(format!("runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::RawServer(a) => raw::serve(raw::RawArgs {
                listen: a.listen,
                connections: a.connections,
                rate: a.rate,
                duration: a.duration,
                payload: a.payload,
                start_delay: Duration::from_secs(1),
            })
            .await
            .map(|()| None),
            Cmd::Run(args) => tokio::time::timeout(MAX_RUN, run(*args))
                .await
                .unwrap_or_else(|_| Err("the run exceeded its time bound".into()))
                .map(Some),
        }
    });
    match result {
        Ok(_) => {}
        Err(e) => fail(e),
    }
}

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

/// What one scenario measured.
#[derive(Serialize, Default, Clone)]
struct Measured {
    target: String,
    connections: usize,
    connect_failures: u64,
    connect_secs: f64,
    connects_per_sec: f64,
    server_cpu_ms_per_connect: f64,
    idle_rss_kib: u64,
    idle_kib_per_connection: f64,
    peak_rss_kib: u64,
    peak_kib_per_connection: f64,
    /// Server heartbeats the clients saw (and answered, where the protocol
    /// asks): never counted as deliveries.
    pings: u64,
    /// RSS (KiB) every --rss-every while publishing, first at the start.
    rss_samples_kib: Vec<u64>,
    published: u64,
    expected: u64,
    received: u64,
    lost: i64,
    closed_early: u64,
    deliveries_per_sec: f64,
    server_cpu_secs: f64,
    deliveries_per_server_cpu_sec: f64,
    loadgen_cpu_secs: f64,
    /// Deliveries whose `ts` was read (every one, for the tool's payload).
    latency_samples: u64,
    latency_ms: Latency,
}

#[derive(Serialize, Default, Clone)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

#[derive(Serialize)]
struct Report<'a> {
    label: &'a str,
    /// What was measured: "ws-gateway", "socketio-peer", or "external".
    server: &'a str,
    transport: Transport,
    publish: Publish,
    connections: usize,
    users: usize,
    rate: u32,
    duration_secs: f64,
    payload: usize,
    /// The process under test (named so for every server, so that the
    /// JSON lines of every run read alike).
    gateway: Measured,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<Measured>,
    /// Gateway deliveries per CPU-second / raw's.
    #[serde(skip_serializing_if = "Option::is_none")]
    efficiency_vs_raw: Option<f64>,
    /// The time raw needs to write one message to all connections (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_floor_ms: Option<f64>,
    /// Gateway p99 / raw floor.
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_vs_floor: Option<f64>,
}

async fn run(args: RunArgs) -> Result<(), String> {
    let users = args.users.unwrap_or(args.connections).max(1);
    let transport = match (args.transport, &args.spawn_peer) {
        (Some(t), Some(_)) if t != Transport::SocketIo => {
            return Err("the Socket.IO peer (--spawn-peer) speaks --transport socketio only".into())
        }
        (Some(t), _) => t,
        (None, Some(_)) => Transport::SocketIo,
        (None, None) => Transport::Ws,
    };
    let raw = if args.baseline {
        if args.publish != Publish::Broadcast {
            return Err("--baseline compares broadcast fan-out; use --publish broadcast".into());
        }
        // The raw server speaks /ws's framing, whatever the transport
        // measured after it.
        let server = Spawned::raw_server(&args)?;
        let url = Transport::Ws.url(server.addr);
        let target = Target {
            name: "raw",
            transport: Transport::Ws,
            url: &url,
            addr: server.addr,
            pid: &server.pid,
        };
        let measured = scenario(&args, users, &target, Source::Raw).await;
        drop(server);
        Some(measured?)
    } else {
        None
    };

    let (spawned, name, url, pid) = match (&args.spawn, &args.spawn_peer) {
        (Some(bin), _) => {
            let g = Spawned::gateway(bin, &args)?;
            let (url, pid) = (transport.url(g.addr), g.pid.clone());
            (Some(g), "ws-gateway", url, pid)
        }
        (None, Some(script)) => {
            let p = Spawned::peer(script, &args)?;
            let (url, pid) = (transport.url(p.addr), p.pid.clone());
            (Some(p), "socketio-peer", url, pid)
        }
        (None, None) => (
            None,
            "external",
            args.url
                .clone()
                .unwrap_or_else(|| transport.url(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)))),
            args.pid.map_or("".to_string(), |p| p.to_string()),
        ),
    };
    if pid.is_empty() {
        return Err(
            "give --pid of the server (or --spawn / --spawn-peer) so its RSS and CPU can be read"
                .into(),
        );
    }
    let target = Target {
        name: if name == "socketio-peer" {
            "peer"
        } else {
            "gateway"
        },
        transport,
        url: &url,
        addr: target_addr(&url)?,
        pid: &pid,
    };
    let measured = scenario(&args, users, &target, Source::Redis).await?;
    drop(spawned);

    let efficiency = raw.as_ref().map(|r| {
        ratio(
            measured.deliveries_per_server_cpu_sec,
            r.deliveries_per_server_cpu_sec,
        )
    });
    let floor = raw
        .as_ref()
        .map(|r| 1000.0 * args.connections as f64 / r.deliveries_per_server_cpu_sec.max(1.0));
    let report = Report {
        label: &args.label,
        server: name,
        transport,
        publish: args.publish,
        connections: args.connections,
        users,
        rate: args.rate,
        duration_secs: args.duration.as_secs_f64(),
        payload: args.payload,
        p99_vs_floor: floor.map(|f| ratio(measured.latency_ms.p99, f)),
        gateway: measured,
        raw,
        efficiency_vs_raw: efficiency,
        raw_floor_ms: floor,
    };
    print_summary(&report);
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

/// The server one scenario drives, and how.
struct Target<'a> {
    /// "raw", "gateway" or "peer", in the output.
    name: &'static str,
    transport: Transport,
    url: &'a str,
    addr: SocketAddr,
    pid: &'a str,
}

/// Where the messages come from.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// The tool publishes to Redis; the gateway relays.
    Redis,
    /// The raw server generates them itself.
    Raw,
}

async fn scenario(
    args: &RunArgs,
    users: usize,
    server: &Target<'_>,
    source: Source,
) -> Result<Measured, String> {
    let (target, pid, addr, transport) = (server.name, server.pid, server.addr, server.transport);
    eprintln!(
        "[{target}] opening {} {transport:?} connections to {}",
        args.connections, server.url
    );
    let stats = client::Stats::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let before = sample(pid)?;

    // Ramp.
    let ramp_started = Instant::now();
    let (done_tx, mut done_rx) = mpsc::channel::<Result<(), String>>(1024);
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let tokens = Arc::new(mint_tokens(&args.secret, users, source)?);
    let ramp_interval = (args.ramp > 0).then(|| Duration::from_secs(1) / args.ramp);
    for i in 0..args.connections {
        if let Some(every) = ramp_interval {
            tokio::time::sleep_until((ramp_started + every * i as u32).into()).await;
        }
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let token = tokens.get(i % users).map_or("", String::as_str);
        // Socket.IO sends its token in the CONNECT packet, as seed 000's
        // clients do; the others in the URL.
        let url = match (transport, token) {
            (Transport::SocketIo, _) | (_, "") => server.url.to_string(),
            _ => with_query(server.url, "token", token),
        };
        let source_ip = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(args.sources.max(1))) as u8);
        let (stats, stop, done) = (stats.clone(), stop_rx.clone(), done_tx.clone());
        let tokens = tokens.clone();
        tokio::spawn(async move {
            match transport {
                Transport::Ws => {
                    let connected = client::connect(addr, &url, source_ip);
                    connect_then_read(connected, permit, done, |ws| {
                        client::read::<client::Plain>(ws, i, stats, stop)
                    })
                    .await
                }
                Transport::SocketIo => {
                    let token = tokens.get(i % users).map_or("", String::as_str);
                    let connected = client::connect_socketio(addr, &url, token, source_ip);
                    connect_then_read(connected, permit, done, |ws| {
                        client::read::<client::SocketIo>(ws, i, stats, stop)
                    })
                    .await
                }
                Transport::Sse => {
                    let connected = client::connect_sse(addr, &url, source_ip);
                    connect_then_read(connected, permit, done, |sse| {
                        client::read_sse(sse, i, stats, stop)
                    })
                    .await
                }
            }
        });
    }
    let mut failures = 0u64;
    let mut first_error = None;
    for _ in 0..args.connections {
        match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
            _ => return Err("connections stopped completing for 60 s".into()),
        }
    }
    let connect_secs = ramp_started.elapsed().as_secs_f64();
    let after_ramp = sample(pid)?;
    if let Some(e) = first_error {
        eprintln!("[{target}] {failures} connections failed, first: {e}");
    }
    let open = (args.connections as u64 - failures) as usize;
    eprintln!("[{target}] {open} connected in {connect_secs:.2} s");

    tokio::time::sleep(args.idle).await;
    let idle = sample(pid)?;

    // Publish and drain, sampling the peak RSS meanwhile.
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(idle.rss_kib));
    let samples = Arc::new(std::sync::Mutex::new(vec![idle.rss_kib]));
    let sampler = {
        let (peak, samples, pid) = (peak.clone(), samples.clone(), pid.to_string());
        let every = args.rss_every.max(Duration::from_millis(250));
        tokio::spawn(async move {
            let mut last_sample = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Some(s) = procstat::sample(&pid) {
                    peak.fetch_max(s.rss_kib, Relaxed);
                    if last_sample.elapsed() >= every {
                        last_sample = Instant::now();
                        if let Ok(mut v) = samples.lock() {
                            v.push(s.rss_kib);
                        }
                    }
                }
            }
        })
    };
    let own_before = procstat::sample("self").unwrap_or_default();
    let cpu_before = sample(pid)?;
    let publish_started = Instant::now();
    let (published, expected) = match (source, args.publish) {
        (_, Publish::None) => (0, 0),
        (Source::Raw, _) => {
            // The raw server starts one second after the last connection.
            tokio::time::sleep(args.duration + Duration::from_secs(1)).await;
            let n = (args.duration.as_secs_f64() * f64::from(args.rate)).round() as u64;
            (n, n * open as u64)
        }
        (Source::Redis, mode) => publish(args, users, mode, open).await?,
    };
    let publish_secs = publish_started.elapsed().as_secs_f64();
    let drain_deadline = Instant::now() + args.drain;
    while stats.received.load(Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = sample(pid)?;
    let own_after = procstat::sample("self").unwrap_or_default();
    sampler.abort();
    // Stop the readers and wait (bounded) until each has flushed its samples.
    let _ = stop_tx.send(true);
    let flushed = Instant::now() + Duration::from_secs(10);
    while stats.readers.load(Relaxed) > 0 && Instant::now() < flushed {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let received = stats.received.load(Relaxed);
    let server_cpu = (cpu_after.cpu.saturating_sub(cpu_before.cpu)).as_secs_f64();
    let latency = stats.latency();
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let per_conn = |rss: u64| rss.saturating_sub(before.rss_kib) as f64 / open.max(1) as f64;
    let peak_rss = peak.load(Relaxed);
    Ok(Measured {
        target: target.into(),
        connections: open,
        connect_failures: failures,
        connect_secs,
        connects_per_sec: open as f64 / connect_secs.max(1e-9),
        server_cpu_ms_per_connect: 1000.0 * after_ramp.cpu.saturating_sub(before.cpu).as_secs_f64()
            / open.max(1) as f64,
        idle_rss_kib: idle.rss_kib,
        idle_kib_per_connection: per_conn(idle.rss_kib),
        peak_rss_kib: peak_rss,
        peak_kib_per_connection: per_conn(peak_rss),
        pings: stats.pings.load(Relaxed),
        rss_samples_kib: samples.lock().map(|v| v.clone()).unwrap_or_default(),
        published,
        expected,
        received,
        lost: expected as i64 - received as i64,
        closed_early: stats.closed_early.load(Relaxed),
        deliveries_per_sec: received as f64 / publish_secs.max(1e-9),
        server_cpu_secs: server_cpu,
        deliveries_per_server_cpu_sec: if server_cpu > 0.0 {
            received as f64 / server_cpu
        } else {
            0.0
        },
        loadgen_cpu_secs: own_after.cpu.saturating_sub(own_before.cpu).as_secs_f64(),
        latency_samples: latency.len(),
        latency_ms: Latency {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: latency.max() as f64 / 1000.0,
        },
    })
}

/// Awaits one client's `connected`, frees its handshake permit, reports the
/// outcome on `done`, then (connected) runs `read` to its end.
async fn connect_then_read<C, R>(
    connected: impl Future<Output = Result<C, String>>,
    permit: OwnedSemaphorePermit,
    done: mpsc::Sender<Result<(), String>>,
    read: impl FnOnce(C) -> R,
) where
    R: Future<Output = ()>,
{
    let connected = connected.await;
    drop(permit);
    match connected {
        Ok(client) => {
            let _ = done.send(Ok(())).await;
            read(client).await;
        }
        Err(e) => {
            let _ = done.send(Err(e)).await;
        }
    }
}

/// `url` with `name=value` added to its query (a JWT needs no escaping).
fn with_query(url: &str, name: &str, value: &str) -> String {
    let join = if url.contains('?') { '&' } else { '?' };
    format!("{url}{join}{name}={value}")
}

fn sample(pid: &str) -> Result<procstat::Sample, String> {
    procstat::sample(pid)
        .ok_or_else(|| format!("cannot read /proc/{pid} (is the process running?)"))
}

fn mint_tokens(secret: &str, users: usize, source: Source) -> Result<Vec<String>, String> {
    if source == Source::Raw {
        return Ok(Vec::new());
    }
    let auth = ws_gateway::config::AuthConfig {
        secret: secret.to_string(),
        ..Default::default()
    };
    (0..users)
        .map(|u| {
            ws_gateway::auth::mint(
                &auth,
                &ws_gateway::auth::Mint {
                    sub: &format!("u{u}"),
                    roles: &[],
                    ttl: Duration::from_secs(24 * 3600),
                },
            )
        })
        .collect()
}

/// Publishes through Redis; returns (published, expected deliveries).
async fn publish(
    args: &RunArgs,
    users: usize,
    mode: Publish,
    open: usize,
) -> Result<(u64, u64), String> {
    let config = Config::from_url(&args.redis).map_err(|e| e.to_string())?;
    let client = Builder::from_config(config)
        .build()
        .map_err(|e| e.to_string())?;
    client.init().await.map_err(|e| format!("redis: {e}"))?;
    // Connections per user: connection i belongs to user i % users.
    let per_user = |u: usize| (open / users + usize::from(u < open % users)) as u64;
    let mut pacer = pacing::Pacer::new(args.rate, args.duration);
    let (mut published, mut expected) = (0u64, 0u64);
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some(seq) = pacer.next().await {
        let (channel, audience) = match mode {
            Publish::User => {
                let u = seq as usize % users;
                (format!("ws:user:u{u}"), per_user(u))
            }
            _ => ("ws:broadcast".to_string(), open as u64),
        };
        let payload = pacing::payload(seq, args.payload);
        let client = client.clone();
        // Not awaited one by one: fred pipelines them on one connection.
        in_flight.spawn(async move {
            let r: Result<i64, _> = client.publish(channel, payload).await;
            r.is_ok()
        });
        while let Some(done) = in_flight.try_join_next() {
            if !matches!(done, Ok(true)) {
                eprintln!("a publish failed");
            }
        }
        published += 1;
        expected += audience;
    }
    while in_flight.join_next().await.is_some() {}
    let _ = client.quit().await;
    Ok((published, expected))
}

/// The loopback address of `ws://IP:PORT/…` or `http://IP:PORT/…`: the
/// load stays on this machine.
fn target_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("--url must start with ws:// (ws, socketio) or http:// (sse)")?;
    let host_port = rest.split(['/', '?']).next().unwrap_or(rest);
    let addr: SocketAddr = host_port
        .parse()
        .map_err(|_| format!("--url needs an IP:port, got {host_port}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--url must be on loopback (127.0.0.0/8), got {}",
            addr.ip()
        ));
    }
    Ok(addr)
}

/// A child process killed on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a child and waits (bounded) for its `addr=` line on stdout.
fn start_child(mut cmd: Command, what: &str) -> Result<(ChildGuard, SocketAddr), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().map_err(|e| format!("start {what}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let guard = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| format!("{what} did not report its address within 30 s"))?;
    Ok((guard, addr))
}

/// A process under test that this tool started: killed when dropped.
struct Spawned {
    _child: ChildGuard,
    addr: SocketAddr,
    pid: String,
}

impl Spawned {
    fn start(cmd: Command, what: &str) -> Result<Self, String> {
        let (child, addr) = start_child(cmd, what)?;
        let pid = child.0.id().to_string();
        Ok(Self {
            _child: child,
            addr,
            pid,
        })
    }

    /// The raw-TCP baseline, for the same traffic as `args`.
    fn raw_server(args: &RunArgs) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.args(["raw-server", "--listen", "127.0.0.1:0"])
            .args(["--connections", &args.connections.to_string()])
            .args(["--rate", &args.rate.to_string()])
            .args(["--duration", &format!("{}ms", args.duration.as_millis())])
            .args(["--payload", &args.payload.to_string()]);
        Self::start(cmd, "raw-server")
    }

    /// The gateway binary `bin`, on a free port, with limits set for load.
    fn gateway(bin: &str, args: &RunArgs) -> Result<Self, String> {
        // It runs in a temp dir (no ./gateway.toml), so resolve the path here.
        let bin = std::fs::canonicalize(bin).map_err(|e| format!("--spawn {bin}: {e}"))?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &args.redis,
        ])
        .env("GATEWAY_AUTH_SECRET", &args.secret)
        .env("GATEWAY_CONNECTION_CONNECT_RATE_PER_IP", "0")
        .env("GATEWAY_CONNECTION_MAX_CONNECTIONS_PER_USER", "100000")
        .env("RUST_LOG", "warn,ws_gateway::server=info")
        .current_dir(std::env::temp_dir());
        if let Some(secs) = args.ping_interval {
            cmd.env("GATEWAY_CONNECTION_PING_INTERVAL_SECS", secs.to_string());
        }
        Self::start(cmd, "ws-gateway")
    }

    /// The Socket.IO peer: `node <script>` itself (not npm, so that the
    /// pid measured is node's), on a free port, with the gateway's secret.
    /// It prints `addr=` as the gateway does.
    fn peer(script: &str, args: &RunArgs) -> Result<Self, String> {
        let script =
            std::fs::canonicalize(script).map_err(|e| format!("--spawn-peer {script}: {e}"))?;
        let dir = script.parent().unwrap_or(Path::new("/"));
        if !dir.join("node_modules").is_dir() {
            return Err(format!(
                "{} has no node_modules: run `npm ci` there (scripts/bench.sh does)",
                dir.display()
            ));
        }
        let mut cmd = Command::new(&args.node);
        cmd.arg(&script)
            .args(["--listen", "127.0.0.1:0", "--redis-url", &args.redis])
            .env("GATEWAY_AUTH_SECRET", &args.secret)
            .env("NODE_ENV", "production")
            .current_dir(dir);
        if let Some(secs) = args.ping_interval {
            cmd.env("GATEWAY_CONNECTION_PING_INTERVAL_SECS", secs.to_string());
        }
        Self::start(cmd, "the Socket.IO peer")
    }
}

fn print_summary(r: &Report) {
    let label = if r.label.is_empty() { "run" } else { r.label };
    let transport = match r.transport {
        Transport::Ws => "/ws",
        Transport::SocketIo => "/socket.io/",
        Transport::Sse => "/sse",
    };
    eprintln!(
        "\n== {label}: {} {transport}, {} connections, {} users, {:?} at {}/s for {:.0}s, {} B payload",
        r.server, r.connections, r.users, r.publish, r.rate, r.duration_secs, r.payload
    );
    for m in [Some(&r.gateway), r.raw.as_ref()].into_iter().flatten() {
        eprintln!(
            "{:>8}: connect {:.0}/s ({:.3} ms CPU each, {} failed) | idle {:.1} KiB/conn, peak {:.1} KiB/conn",
            m.target,
            m.connects_per_sec,
            m.server_cpu_ms_per_connect,
            m.connect_failures,
            m.idle_kib_per_connection,
            m.peak_kib_per_connection
        );
        eprintln!(
            "{:>8}  delivered {}/{} (lost {}, closed early {}, {} pings) | {:.0} deliveries/s | {:.0} per server CPU-s ({:.2} s CPU) | loadgen {:.2} s CPU",
            "",
            m.received,
            m.expected,
            m.lost,
            m.closed_early,
            m.pings,
            m.deliveries_per_sec,
            m.deliveries_per_server_cpu_sec,
            m.server_cpu_secs,
            m.loadgen_cpu_secs
        );
        eprintln!(
            "{:>8}  latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ({} samples)",
            "",
            m.latency_ms.p50,
            m.latency_ms.p90,
            m.latency_ms.p99,
            m.latency_ms.p999,
            m.latency_ms.max,
            m.latency_samples
        );
    }
    if let (Some(e), Some(f), Some(p)) = (r.efficiency_vs_raw, r.raw_floor_ms, r.p99_vs_floor) {
        eprintln!("   ratio: {e:.2}x raw deliveries per CPU-second; raw floor {f:.1} ms, gateway p99 = {p:.2}x floor");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_join_the_query() {
        assert_eq!(
            with_query("ws://127.0.0.1:1/ws", "token", "a.b.c"),
            "ws://127.0.0.1:1/ws?token=a.b.c"
        );
        assert_eq!(
            with_query("http://127.0.0.1:1/sse?rooms=r", "token", "t"),
            "http://127.0.0.1:1/sse?rooms=r&token=t"
        );
    }

    #[test]
    fn targets_stay_on_loopback() {
        assert_eq!(
            target_addr("ws://127.0.0.1:8080/ws"),
            Ok("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            target_addr("ws://127.0.0.2:9/socket.io/?EIO=4&transport=websocket"),
            Ok("127.0.0.2:9".parse().unwrap())
        );
        assert_eq!(
            target_addr("http://127.0.0.1:7/sse"),
            Ok("127.0.0.1:7".parse().unwrap())
        );
        assert!(target_addr("ws://10.0.0.1:8080/ws").is_err());
        assert!(target_addr("https://127.0.0.1:8080/sse").is_err());
    }
}
