//! Micro-benchmarks of the relay hot path: broker message → `validate_published`
//! → `Hub::dispatch` fan-out → each connection's `Wire` (a direct write).
//!
//! Run: `cargo bench --bench hot_path` (add `-- --quick` for a smoke run).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use ws_gateway::auth::Identity;
use ws_gateway::broker::reconcile::Desired;
use ws_gateway::config::RedisConfig;
use ws_gateway::hub::{Hub, Registration};
use ws_gateway::metrics::Transport;
use ws_gateway::names::Names;
use ws_gateway::protocol::validate_published;
use ws_gateway::wire::{Encoding, Limits, Wire};

/// The per-connection queue size of the default config (`connection.send_queue`).
const SEND_QUEUE: usize = 1024;
/// Dispatches timed back to back before the clients are drained (untimed);
/// their socket buffers take that many without blocking.
const DRAIN_EVERY: u64 = 64;

/// A typical finance event as the backend publishes it (~200 bytes).
fn small_event() -> Bytes {
    let event = concat!(
        r#"{"type":"BUDGET_ALERT","id":"01JD3QK7X9V2M4N8P6R5T0W1YZ","ts":1732611234567,"#,
        r#""data":{"budget_id":"bud_7f3a9c","category":"Groceries","limit":"500.00","#,
        r#""spent":"462.18","currency":"EUR","threshold":0.9,"period":"2024-11"}}"#
    );
    Bytes::from_static(event.as_bytes())
}

/// A large event (~4 KiB): a statement digest with a list of transactions.
fn large_event() -> Bytes {
    let mut s = String::from(
        r#"{"type":"STATEMENT_READY","id":"01JD3QK7X9V2M4N8P6R5T0W1Z0","ts":1732611234567,"data":{"account_id":"acc_19c2e7","currency":"EUR","transactions":["#,
    );
    let mut i = 0;
    while s.len() < 4096 - 160 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"id":"tx_{i:06}","amount":"-{}.{:02}","merchant":"Merchant {i}","category":"Groceries","booked":"2024-11-{:02}"}}"#,
            10 + i * 7 % 90,
            i * 13 % 100,
            1 + i % 28
        ));
        i += 1;
    }
    s.push_str(r#"],"balance":"1234.56"}}"#);
    Bytes::from(s)
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_published");
    let cases = [
        ("small_event", small_event()),
        ("4k_event", large_event()),
        (
            "invalid_not_json",
            Bytes::from_static(b"BUDGET_ALERT 01JD3QK7X9V2M4N8P6R5T0W1YZ spent 462.18 of 500.00"),
        ),
    ];
    for (name, payload) in cases {
        group.throughput(Throughput::Bytes(payload.len() as u64));
        // The one JSON parse every published message gets (per instance, not
        // per recipient): its cost bounds the broker reader's message rate.
        // The `Bytes` clone is a refcount bump; the payload is never copied.
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{name}_{}B", payload.len())),
            &payload,
            |b, payload| b.iter(|| validate_published(black_box(payload.clone()))),
        );
    }
    group.finish();
}

fn hub() -> Hub {
    Hub::new(
        Names::from_config(&RedisConfig::default(), "bench"),
        usize::MAX,
        Desired::new(Vec::new()),
        Arc::default(),
    )
}

fn identity(user_id: String) -> Identity {
    Identity {
        user_id,
        roles: vec!["customer".into()],
        rooms: Vec::new(),
        exp: Some(4_102_444_800),
    }
}

/// A wire over a loopback socket pair (released, so it delivers), and the
/// client end.
fn socket_pair(rt: &tokio::runtime::Runtime, hub: &Hub) -> (Arc<Wire>, TcpStream) {
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"));
        let (server, client) = tokio::join!(listener.accept(), client);
        let limits = Limits::new(SEND_QUEUE, usize::MAX);
        let wire = Wire::new(
            server.expect("accept").0,
            limits,
            Encoding::Plain,
            hub.stats().clone(),
        );
        wire.release(&[]);
        (wire, client.expect("connect"))
    })
}

/// Registers `count` connections of `user_id(i)`; the registrations must be
/// kept alive (dropping one unregisters it).
fn connect(
    rt: &tokio::runtime::Runtime,
    hub: &Hub,
    count: usize,
    user_id: impl Fn(usize) -> String,
) -> Connections {
    let mut connections = Connections::default();
    for i in 0..count {
        let (wire, client) = socket_pair(rt, hub);
        let registration = hub
            .register(&identity(user_id(i)), wire.clone(), Transport::WebSocket)
            .expect("registration refused");
        connections.registrations.push(registration);
        connections.wires.push(wire);
        connections.clients.push(client);
    }
    // Let the reactor see the new sockets writable: until it has, a
    // non-blocking write reports WouldBlock without trying.
    settle(rt);
    connections
}

#[derive(Default)]
struct Connections {
    registrations: Vec<Registration>,
    wires: Vec<Arc<Wire>>,
    clients: Vec<TcpStream>,
}

/// One turn of the reactor, so socket readiness is up to date.
fn settle(rt: &tokio::runtime::Runtime) {
    rt.block_on(tokio::time::sleep(Duration::from_millis(1)));
}

/// Reads and discards what the clients received, as real clients would,
/// and flushes what the wires had to queue (the sessions' job).
fn drain(rt: &tokio::runtime::Runtime, connections: &Connections) {
    let mut buf = vec![0u8; 64 * 1024];
    for (wire, client) in connections.wires.iter().zip(&connections.clients) {
        while matches!(client.try_read(&mut buf), Ok(n) if n > 0) {}
        while wire.has_pending() {
            rt.block_on(wire.flush()).expect("flush");
            while matches!(client.try_read(&mut buf), Ok(n) if n > 0) {}
        }
        assert!(wire.closed().is_none(), "a connection overflowed");
    }
    settle(rt);
}

/// Times `Hub::dispatch(channel, payload)` only: batches of `DRAIN_EVERY`
/// dispatches are timed back to back, then the clients' sockets are drained
/// with the clock stopped (and anything queued flushed). Included: the payload's validation, the
/// `Arc<Published>` allocation, the hub lock, and per recipient a direct
/// non-blocking `writev` of the frame to its loopback socket (the kernel's
/// share dominates). Excluded: the clients reading.
fn time_dispatch(
    rt: &tokio::runtime::Runtime,
    hub: &Hub,
    channel: &str,
    payload: &Bytes,
    connections: &Connections,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = DRAIN_EVERY.min(iters - done);
        let start = Instant::now();
        for _ in 0..n {
            hub.dispatch(black_box(channel), [payload.clone()]);
        }
        total += start.elapsed();
        done += n;
        drain(rt, connections);
    }
    total
}

fn fan_out(c: &mut Criterion) {
    let payload = small_event();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Sockets need the runtime's reactor; writes are non-blocking, no polling.
    let _reactor = rt.enter();

    let mut group = c.benchmark_group("fanout_broadcast");
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(30);
    // Two descriptors per connection: 4,000 stays well under 20,000.
    for n in [100usize, 1_000, 4_000] {
        let hub = hub();
        let connections = connect(&rt, &hub, n, |i| format!("u{i}"));
        group.throughput(Throughput::Elements(n as u64));
        // One broadcast to N local connections: the worst-case fan-out.
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                time_dispatch(&rt, &hub, "ws:broadcast", &payload, &connections, iters)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("fanout_user");
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(30);
    for n in [1usize, 4] {
        let hub = hub();
        // Other users are connected too, so the channel lookup is realistic.
        let _others = connect(&rt, &hub, 1_000, |i| format!("other{i}"));
        let connections = connect(&rt, &hub, n, |_| "42".to_string());
        group.throughput(Throughput::Elements(n as u64));
        // The common case: one event to one user's channel (1 or 4 devices);
        // its per-message cost is the gateway's overall message-rate ceiling.
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                time_dispatch(&rt, &hub, "ws:user:42", &payload, &connections, iters)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, validate, fan_out);
criterion_main!(benches);
