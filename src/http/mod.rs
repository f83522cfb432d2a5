//! The HTTP side: a listener, a small routing table, and the handlers of
//! SPEC §7. Plain hyper, no framework: every route is visible in `route`.
//! `/metrics` is served on `server.listen`, or only on its own listener
//! when `server.metrics_listen` is set.

mod admin;
mod client_ip;
pub mod reply;
mod slots;
mod sse;
pub(crate) mod upgrade;

use crate::auth::Verifier;
use crate::broker::Broker;
use crate::canary::Canary;
use crate::config::{Capacity, Config};
use crate::hub::Hub;
use crate::log_limit::LogLimit;
use crate::metrics::Gauges;
use crate::session::Sessions;
use crate::wire::Limits;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The built-in test console (SPEC §7), compiled into the binary.
const SOCKET_TEST_PAGE: &str = include_str!("socket_test.html");

/// Everything the handlers share.
pub struct App {
    pub config: Config,
    pub instance: Arc<str>,
    pub hub: Hub,
    pub broker: Arc<dyn Broker>,
    /// The delivery canary's round trips, for the probes.
    pub canary: Arc<Canary>,
    pub verifier: Arc<Verifier>,
    pub sessions: Arc<Sessions>,
    /// Per-IP connect rate (SPEC §2 `connect_rate_per_ip`); None = unlimited.
    connect_limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// WebSockets upgraded or being upgraded, for `max_connections`.
    open_sockets: AtomicUsize,
    /// `server.max_connections`, or what the open-files limit allows.
    max_connections: usize,
    /// HTTP connections not upgraded (yet), bounded: see [`slots`].
    http_slots: Arc<slots::HttpSlots>,
    /// Concurrent WebSockets per client IP.
    per_ip: slots::PerIp,
    /// Peers whose forwarding headers name the client (`trusted_proxies`).
    trusted_proxies: Vec<crate::config::Cidr>,
    /// Refused handshakes are logged at most once a second per reason.
    refusal_log: Arc<LogLimit<&'static str>>,
}

impl App {
    pub fn new(
        config: Config,
        instance: Arc<str>,
        hub: Hub,
        broker: Arc<dyn Broker>,
        canary: Arc<Canary>,
        verifier: Arc<Verifier>,
        capacity: Capacity,
    ) -> Self {
        let c = &config.connection;
        // One limit for the refusals logged here and by the sessions.
        let refusal_log = Arc::new(LogLimit::new(Duration::from_secs(1)));
        let sessions = Arc::new(Sessions {
            refusal_log: refusal_log.clone(),
            hub: hub.clone(),
            broker: broker.clone(),
            instance: instance.clone(),
            history_ttl: Duration::from_secs(config.redis.history_ttl_secs),
            ping_interval: Duration::from_secs(c.ping_interval_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            send_queue: Limits::new(c.send_queue, c.send_queue_bytes),
            max_message_bytes: config.server.max_message_bytes,
            client_messages_per_sec: c.client_messages_per_sec,
            verifier: verifier.clone(),
            leeway: Duration::from_secs(config.auth.leeway_secs),
            max_rooms: c.max_rooms,
            socketio_events: Arc::new(crate::engineio::Events::new(
                &config.socketio.events,
                &config.socketio.payload,
            )),
        });
        let connect_limiter = NonZeroU32::new(c.connect_rate_per_ip).map(|rate| {
            let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let per_ip = slots::PerIp::new(config.connection.max_connections_per_ip);
        let trusted_proxies = config.server.trusted_proxies();
        Self {
            config,
            instance,
            hub,
            broker,
            canary,
            verifier,
            sessions,
            connect_limiter,
            open_sockets: AtomicUsize::new(0),
            max_connections: capacity.max_connections,
            http_slots: slots::HttpSlots::new(capacity.http_connections),
            per_ip,
            trusted_proxies,
            refusal_log,
        }
    }

    /// Takes one connect from `ip`'s budget; on refusal, how long to wait.
    fn check_connect_rate(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.connect_limiter else {
            return Ok(());
        };
        limiter.check_key(&ip).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
        })
    }

    /// Forgets idle per-IP buckets so the limiter does not grow forever.
    pub fn prune_rate_limits(&self) {
        if let Some(limiter) = &self.connect_limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// The state behind `/ws/health` and `/readyz`, read once per request.
    fn probe(&self) -> Probe {
        let interval = Duration::from_secs(self.config.redis.canary_interval_secs);
        let canary_age = self.canary.age();
        Probe {
            broker_up: self.broker.is_up(),
            canary_age,
            canary_fresh: canary_age.is_some_and(|age| age <= 3 * interval),
            draining: self.hub.is_draining(),
        }
    }
}

/// What `/ws/health` and `/readyz` judge by (SPEC §4, §7). Both verdicts
/// come from here, so the two endpoints cannot disagree.
struct Probe {
    broker_up: bool,
    /// Since the last delivery canary round trip; None before the first.
    canary_age: Option<Duration>,
    /// A round trip within three canary intervals.
    canary_fresh: bool,
    draining: bool,
}

impl Probe {
    /// Why delivery fails, if it does; `/ws/health` is degraded then.
    /// "Up" is only the broker's connection: a broker that hangs shows as
    /// a stale canary.
    fn delivery_problem(&self) -> Option<&'static str> {
        if !self.broker_up {
            Some("broker_down")
        } else if !self.canary_fresh {
            Some("canary_stale")
        } else {
            None
        }
    }

    /// Why the instance must not take traffic, if so: the same as
    /// `delivery_problem`, except that draining comes first.
    fn not_ready_reason(&self) -> Option<&'static str> {
        if self.draining {
            Some("draining")
        } else {
            self.delivery_problem()
        }
    }
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, PartialEq)]
pub enum Endpoints {
    /// `server.listen`: all of SPEC §7 (`/metrics` unless it has its own).
    Main,
    /// `server.metrics_listen`: `/metrics` only.
    Metrics,
}

/// Accepts HTTP connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    app: Arc<App>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = app.http_slots.room() => {}
            _ = shutdown.changed() => return,
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // Small messages must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let (slot, mut evicted) = app.http_slots.take();
        let app = app.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            if endpoints == Endpoints::Main {
                // A socket that sends nothing can still be evicted.
                let sse = tokio::select! {
                    sse = sse::requested(&stream) => sse,
                    _ = &mut evicted => return,
                };
                if sse {
                    sse::serve(app, stream, peer, slot, evicted).await;
                    return;
                }
            }
            let _slot = slot;
            let service = service_fn(|req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, endpoints, req, peer).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                // The oldest of too many: dropped, its socket closed.
                _ = &mut evicted => {}
                _ = shutdown.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// The endpoints of SPEC §7.
enum Route<'a> {
    WebSocket,
    /// `/sse` as a later request of a kept-alive connection (the first is
    /// taken before hyper, see [`sse`]).
    SseAgain,
    Liveness,
    Readiness,
    Health,
    Console,
    Metrics,
    Stats,
    Broadcast,
    TestMessage(&'a str),
}

impl<'a> Route<'a> {
    fn resolve(path: &'a str) -> Option<Self> {
        Some(match path {
            "/ws" => Route::WebSocket,
            "/sse" => Route::SseAgain,
            "/healthz" => Route::Liveness,
            "/readyz" => Route::Readiness,
            "/ws/health" => Route::Health,
            "/socket-test.html" => Route::Console,
            "/metrics" => Route::Metrics,
            "/ws/stats" | "/api/socket/status" => Route::Stats,
            "/ws/broadcast" | "/api/socket/notify/system" => Route::Broadcast,
            _ => Route::TestMessage(
                path.strip_prefix("/ws/test-message/")
                    .or_else(|| path.strip_prefix("/api/socket/notify/user/"))?,
            ),
        })
    }

    fn method(&self) -> Method {
        match self {
            Route::Broadcast | Route::TestMessage(_) => Method::POST,
            _ => Method::GET,
        }
    }

    fn needs_admin(&self) -> bool {
        matches!(
            self,
            Route::Stats | Route::Broadcast | Route::TestMessage(_)
        )
    }
}

async fn route(
    app: &Arc<App>,
    endpoints: Endpoints,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<reply::Body> {
    let path = req.uri().path().to_string();
    let socketio = &app.config.socketio;
    let socketio_path =
        socketio.enabled && (path == socketio.path || path == socketio.path.trim_end_matches('/'));
    if socketio_path && endpoints == Endpoints::Main {
        if req.method() != Method::GET {
            return reply::method_not_allowed("GET");
        }
        return upgrade::handle_socketio(app, req, peer);
    }
    let metrics_apart = !app.config.server.metrics_listen.is_empty();
    let route = match (Route::resolve(&path), endpoints) {
        (Some(Route::Metrics), Endpoints::Main) if metrics_apart => None,
        (Some(route), Endpoints::Main) => Some(route),
        (Some(Route::Metrics), Endpoints::Metrics) => Some(Route::Metrics),
        (_, Endpoints::Metrics) => None,
        (None, _) => None,
    };
    let Some(route) = route else {
        return reply::not_found();
    };
    let method = req.method();
    let allowed = route.method();
    if method != allowed && !(allowed == Method::GET && method == Method::HEAD) {
        return reply::method_not_allowed(allowed.as_str());
    }
    if route.needs_admin() {
        if let Some(refusal) = admin::refusal(app, &req) {
            return refusal;
        }
    }
    match route {
        Route::WebSocket => upgrade::handle(app, req, peer),
        Route::SseAgain => sse::on_a_fresh_connection(&req),
        Route::Liveness => reply::json(StatusCode::OK, &json!({ "status": "ok" })),
        Route::Readiness => readyz(app),
        Route::Health => health(app),
        Route::Console => reply::html(SOCKET_TEST_PAGE),
        Route::Metrics => metrics(app),
        Route::Stats => admin::stats(app),
        Route::Broadcast => admin::publish(app, req, admin::Target::Broadcast).await,
        Route::TestMessage(user_id) if valid_user_id(user_id) => {
            admin::publish(app, req, admin::Target::User(user_id)).await
        }
        Route::TestMessage(_) => {
            reply::error(StatusCode::BAD_REQUEST, "bad_request", "invalid user id")
        }
    }
}

fn valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.contains('/')
}

fn health(app: &App) -> Response<reply::Body> {
    let probe = app.probe();
    let (status, word) = match probe.delivery_problem() {
        None => (StatusCode::OK, "ok"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "degraded"),
    };
    reply::json(
        status,
        &json!({
            "status": word,
            "broker": app.broker.kind(),
            "broker_up": probe.broker_up,
            "canary_age_ms": probe.canary_age.map(|age| age.as_millis() as u64),
            "draining": probe.draining,
            "connections": app.hub.connection_count(),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}

fn metrics(app: &App) -> Response<reply::Body> {
    let snapshot = app.hub.snapshot();
    let gauges = Gauges {
        connections: snapshot.by_transport,
        users: snapshot.users,
        subscriptions: snapshot.subscriptions,
        broker_up: app.broker.is_up(),
        ready: app.probe().not_ready_reason().is_none(),
    };
    reply::prometheus(app.hub.stats().render(&gauges))
}

fn readyz(app: &App) -> Response<reply::Body> {
    match app.probe().not_ready_reason() {
        None => reply::json(StatusCode::OK, &json!({ "status": "ready" })),
        Some(why) => reply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "not_ready", "reason": why }),
        ),
    }
}
