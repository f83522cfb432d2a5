//! Start-up and shutdown of `ws-gateway serve`.

use crate::auth::{self, Verifier};
use crate::canary::{self, Canary};
use crate::config::{Config, Loaded, DEV_LISTEN};
use crate::http::{self, App, Endpoints};
use crate::hub::{dispatch, Hub};
use crate::metrics::Stats;
use crate::names::Names;
use crate::shutdown::{self, Services};
use crate::{broker, dev_secret};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long the last closing handshakes may take after the drain window.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long the services (HTTP, dispatcher, broker tasks) may take to stop.
const SERVICES_STOP: Duration = Duration::from_secs(1);
/// How often histogram samples are folded into their buckets (between
/// scrapes, they wait in a queue).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);
/// Lifetime of the tokens printed in dev mode.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Runs the gateway until SIGTERM/SIGINT, then drains.
pub async fn run(loaded: Loaded) -> Result<(), String> {
    run_until(loaded, None, shutdown::signal()).await
}

/// Runs the gateway until `stop` resolves, then drains. `listener`, when
/// given, replaces binding `server.listen` (tests in-process on port 0).
pub async fn run_until(
    loaded: Loaded,
    listener: Option<TcpListener>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let mut config = loaded.config;
    let dev_mode = config.auth.has_no_keys();
    // Where dev mode's secret is kept; None while it lives in memory only.
    let mut dev_secret_file = None;
    if dev_mode {
        match dev_secret::load_or_create() {
            Ok(kept) => {
                config.auth.secret = kept.secret;
                dev_secret_file = Some(kept.path);
            }
            Err(e) => {
                tracing::warn!("{e}; dev mode falls back to a secret in memory");
                config.auth.secret = dev_secret::generate();
            }
        }
        if !loaded.listen_was_set {
            config.server.listen = DEV_LISTEN.into();
        }
        tracing::warn!(
            "dev mode: no auth key configured (auth.secret, secret_file, public_key_file or jwks_file); \
             signing with {}. Do not use dev mode in production.",
            describe_dev_secret(dev_secret_file.as_deref())
        );
    }
    let verifier = Arc::new(Verifier::new(&config.auth)?);
    let instance: Arc<str> = instance_id().into();
    let names = Names::from_config(&config.redis, &instance);
    let fixed_channels = vec![
        names.broadcast.as_str().into(),
        names.canary.as_str().into(),
    ];
    let canary_channel = names.canary.clone();
    let started = broker::start(&config.redis, fixed_channels).await?;
    let broker = started.broker;
    let stats = Arc::new(Stats::default());
    let hub = Hub::new(
        names,
        config.connection.max_connections_per_user,
        started.desired.clone(),
        stats.clone(),
    );
    let canary = Arc::new(Canary::default());

    let mut services = Services::default();
    for (name, task) in started.tasks {
        services.spawn_until_stopped(name, task);
    }
    services.spawn_until_stopped(
        "dispatcher",
        dispatch::run(hub.clone(), started.events, broker.clone(), canary.clone()),
    );
    // The first canary waits for its channel's subscription: published
    // before it, it would be lost and readiness would wait a whole interval.
    let canary_subscribed = started
        .desired
        .confirmation(&[canary_channel.as_str().into()]);
    let canary_rounds = canary::run(
        canary.clone(),
        broker.clone(),
        canary_channel,
        Duration::from_secs(config.redis.canary_interval_secs),
        stats.canary_round_trip.clone(),
    );
    services.spawn_until_stopped("canary", async move {
        let _ = canary_subscribed.await;
        canary_rounds.await
    });
    let reloading = verifier.clone();
    services.spawn_until_stopped("key reload", reload_keys_on_sighup(reloading));
    services.spawn_until_stopped("metrics upkeep", async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP);
        loop {
            every.tick().await;
            stats.upkeep();
        }
    });

    let listener = match listener {
        Some(listener) => listener,
        None => TcpListener::bind(config.listen_addr())
            .await
            .map_err(|e| format!("server.listen: cannot bind {}: {e}", config.server.listen))?,
    };
    let addr = listener
        .local_addr()
        .map_err(|e| format!("server.listen: {e}"))?;
    let metrics_listener = match config.server.metrics_listen.as_str() {
        "" => None,
        metrics_listen => {
            let listener = TcpListener::bind(metrics_listen)
                .await
                .map_err(|e| format!("server.metrics_listen: cannot bind {metrics_listen}: {e}"))?;
            let addr = listener
                .local_addr()
                .map_err(|e| format!("server.metrics_listen: {e}"))?;
            tracing::info!(%addr, "serving /metrics");
            Some(listener)
        }
    };
    tracing::info!(%addr, instance = %instance, broker = broker.kind(), "listening");
    if dev_mode {
        print_dev_banner(&config, addr, dev_secret_file.as_deref())?;
    }

    let drain_delay = Duration::from_secs(config.server.shutdown_delay_secs);
    let drain_window = Duration::from_secs(config.server.shutdown_drain_secs);
    let capacity = config.server.capacity(open_files_limit());
    if config.server.max_connections > capacity.max_connections {
        tracing::warn!(
            configured = config.server.max_connections,
            open_files = capacity.open_files,
            "server.max_connections does not fit the open-files limit; lowered"
        );
    }
    tracing::info!(
        max_connections = capacity.max_connections,
        http_connections = capacity.http_connections,
        reserved = capacity.reserved,
        open_files = capacity.open_files,
        "connection limits"
    );
    let app = Arc::new(App::new(
        config,
        instance,
        hub.clone(),
        broker,
        canary,
        verifier,
        capacity,
    ));
    let pruner = app.clone();
    services.spawn_until_stopped("rate-limit pruner", async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            pruner.prune_rate_limits();
        }
    });
    if let Some(listener) = metrics_listener {
        let app = app.clone();
        services.spawn("metrics http", |stop| {
            http::serve(listener, Endpoints::Metrics, app, stop)
        });
    }
    services.spawn("http", |stop| {
        http::serve(listener, Endpoints::Main, app, stop)
    });

    stop.await;
    // Keep answering HTTP while draining: /readyz says 503 and new
    // WebSockets get 503 draining, as load balancers expect. A balancer
    // that learns this from its health checks gets `shutdown_delay_secs`
    // to take the instance out before the first client is closed.
    hub.stop_accepting();
    if !drain_delay.is_zero() {
        tracing::info!(
            delay_secs = drain_delay.as_secs(),
            "shutting down: not ready"
        );
        tokio::time::sleep(drain_delay).await;
    }
    tracing::info!(
        connections = hub.connection_count(),
        drain_secs = drain_window.as_secs(),
        "shutting down: closing clients with 1001"
    );
    hub.drain(drain_window).await;
    hub.wait_empty(CLOSE_WAIT).await;
    services.stop(SERVICES_STOP).await;
    tracing::info!("stopped");
    Ok(())
}

/// Rereads `secret_file`, `public_key_file` and `jwks_file` on each SIGHUP:
/// keys rotate without a restart, and a bad file keeps the old keys.
async fn reload_keys_on_sighup(verifier: Arc<Verifier>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: keys reload only on restart");
            return std::future::pending().await;
        }
    };
    while hangups.recv().await.is_some() {
        match verifier.reload() {
            Ok(()) => tracing::info!("SIGHUP: keys reloaded"),
            Err(e) => tracing::warn!(error = %e, "SIGHUP: keys not reloaded; the old ones stay"),
        }
    }
}

/// The soft open-files limit (`main` raises it to the hard one first).
fn open_files_limit() -> u64 {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, _hard)) => soft,
        Err(e) => {
            // 1024 is the usual default soft limit: a safe guess.
            tracing::warn!(error = %e, "cannot read the open-files limit; assuming 1024");
            1024
        }
    }
}

/// `$HOSTNAME` (the pod name on Kubernetes) plus a random suffix, so two
/// processes never share a canary channel.
fn instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ws-gateway".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Which secret dev mode signs with, for its warning.
fn describe_dev_secret(file: Option<&Path>) -> String {
    match file {
        Some(path) => format!(
            "the dev-mode secret kept in {} (`ws-gateway token --sub ID [--roles ...]` uses it too)",
            path.display()
        ),
        None => "a generated secret valid for this run only".into(),
    }
}

/// Prints what a new user needs to see an event arrive (SPEC §9);
/// `secret_file` is where the secret is kept, if it is.
fn print_dev_banner(
    config: &Config,
    addr: std::net::SocketAddr,
    secret_file: Option<&Path>,
) -> Result<(), String> {
    let mint = |sub: &str, roles: &[String]| {
        auth::mint(
            &config.auth,
            &auth::Mint {
                sub,
                roles,
                ttl: DEV_TOKEN_TTL,
            },
        )
    };
    let user = mint("demo", &[])?;
    let admin = mint("demo-admin", std::slice::from_ref(&config.auth.admin_role))?;
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let (lifetime, more_tokens) = match secret_file {
        Some(path) => (
            format!(
                "also after a restart: the secret is kept in {}",
                path.display()
            ),
            "\n  more tokens:           ws-gateway token --sub ID [--roles a,b]",
        ),
        None => ("this run only".to_string(), ""),
    };
    println!(
        "\n\
         ws-gateway is running in dev mode (tokens valid for 24 h, {lifetime})\n\
         \n  user token (sub=demo): {user}\
         \n  admin token:           {admin}\
         \n\
         \n  test console:          http://{host}/socket-test.html#token={user}&admin={admin}&autoconnect\
         \n  publish a test event:  curl -X POST -H 'Authorization: Bearer {admin}' http://{host}/ws/test-message/demo\
         {more_tokens}\n"
    );
    Ok(())
}
