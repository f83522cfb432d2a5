//! Micro-benchmarks of the relay hot path: broker message → `validate_published`
//! → `Hub::dispatch` fan-out → each connection's `Outbox` → its writer's `take`.
//!
//! Run: `cargo bench --bench hot_path` (add `-- --quick` for a smoke run).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use ws_gateway::auth::Identity;
use ws_gateway::config::RedisConfig;
use ws_gateway::hub::{ChannelNames, Hub, Registration};
use ws_gateway::outbox::Outbox;
use ws_gateway::protocol::{validate_published, Published};

/// The per-connection queue size of the default config (`connection.send_queue`).
const SEND_QUEUE: usize = 1024;
/// Dispatches timed back to back before the outboxes are drained (untimed);
/// well below `SEND_QUEUE`, so no outbox ever overflows.
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
        ChannelNames::from_config(&RedisConfig::default(), "bench"),
        usize::MAX,
    )
}

fn identity(user_id: String) -> Identity {
    Identity {
        user_id,
        roles: vec!["customer".into()],
        exp: Some(4_102_444_800),
    }
}

/// Registers `count` connections of `user_id(i)`; the registrations must be
/// kept alive (dropping one unregisters it).
fn connect(
    hub: &Hub,
    count: usize,
    user_id: impl Fn(usize) -> String,
) -> (Vec<Registration>, Vec<Arc<Outbox>>) {
    (0..count)
        .map(|i| {
            let outbox = Arc::new(Outbox::new(SEND_QUEUE));
            let registration = hub
                .register(&identity(user_id(i)), outbox.clone())
                .expect("registration refused");
            (registration, outbox)
        })
        .unzip()
}

/// Empties every outbox, as the connection tasks would.
fn drain(outboxes: &[Arc<Outbox>], batch: &mut Vec<Arc<Published>>) {
    for outbox in outboxes {
        let closed = outbox.take(batch).now_or_never();
        assert_eq!(closed, Some(None), "an outbox overflowed or was closed");
        batch.clear();
    }
}

/// Times `Hub::dispatch(channel, payload)` only: batches of `DRAIN_EVERY`
/// dispatches are timed back to back, then the outboxes are drained with the
/// clock stopped. Included: the payload's validation, the `Arc<Published>`
/// allocation, the hub lock and one push per recipient (VecDeque capacity is
/// reused after the first drain, so pushes do not allocate). Excluded: the
/// drain and freeing the message, which the connection tasks do in production.
fn time_dispatch(
    hub: &Hub,
    channel: &str,
    payload: &Bytes,
    outboxes: &[Arc<Outbox>],
    iters: u64,
) -> Duration {
    let mut batch = Vec::with_capacity(DRAIN_EVERY as usize);
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = DRAIN_EVERY.min(iters - done);
        let start = Instant::now();
        for _ in 0..n {
            hub.dispatch(black_box(channel), payload.clone());
        }
        total += start.elapsed();
        done += n;
        drain(outboxes, &mut batch);
    }
    total
}

fn fan_out(c: &mut Criterion) {
    let payload = small_event();

    let mut group = c.benchmark_group("fanout_broadcast");
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(30);
    for n in [100usize, 1_000, 10_000] {
        let hub = hub();
        let (_registrations, outboxes) = connect(&hub, n, |i| format!("u{i}"));
        group.throughput(Throughput::Elements(n as u64));
        // One broadcast to N local connections: the worst-case fan-out, done
        // under the hub lock, so it also bounds how long connects wait.
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| time_dispatch(&hub, "ws:broadcast", &payload, &outboxes, iters))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("fanout_user");
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(30);
    for n in [1usize, 4] {
        let hub = hub();
        // Other users are connected too, so the channel lookup is realistic.
        let (_others, _) = connect(&hub, 1_000, |i| format!("other{i}"));
        let (_registrations, outboxes) = connect(&hub, n, |_| "42".to_string());
        group.throughput(Throughput::Elements(n as u64));
        // The common case: one event to one user's channel (1 or 4 devices);
        // its per-message cost is the gateway's overall message-rate ceiling.
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| time_dispatch(&hub, "ws:user:42", &payload, &outboxes, iters))
        });
    }
    group.finish();
}

fn outbox(c: &mut Criterion) {
    const BATCH: usize = 64;
    let message = Arc::new(validate_published(small_event()).unwrap());
    let outbox = Outbox::new(SEND_QUEUE);
    let mut batch = Vec::with_capacity(BATCH);
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(BATCH as u64));
    // The per-connection queue: 64 pushes (as fan-out does) then one take of
    // the whole batch (as the writer task does), uncontended; includes
    // dropping the batch's Arc clones.
    group.bench_function("push64_take", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                outbox.push(message.clone());
            }
            let closed = outbox.take(&mut batch).now_or_never();
            black_box(&batch);
            batch.clear();
            closed
        })
    });
    group.finish();
}

criterion_group!(benches, validate, fan_out, outbox);
criterion_main!(benches);
