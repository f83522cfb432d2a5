//! Where messages come from: Redis, or the embedded in-memory broker.
//!
//! Both implement [`Broker`] with the same channel semantics (SPEC §3, §9):
//! a message published on a channel reaches every instance subscribed to it,
//! and the canonical publish path appends to the user's history first.
//!
//! The broker knows nothing of who is connected. It reports upward through
//! [`Events`]: messages, a lag, a reconnect, confirmed subscriptions. What
//! it should be subscribed to is told to it through [`reconcile::Desired`];
//! its reconciler owns the subscriptions (desired against confirmed,
//! retries, resubscribing after a reconnect).

pub(crate) mod memory;
pub mod reconcile;
pub mod redis;

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the broker reports, in the order it happened.
#[derive(Debug)]
pub(crate) enum Event {
    /// Messages that arrived on one channel, in order: every message of the
    /// channel that was waiting travels together (one fan-out, one write
    /// per client).
    Messages {
        channel: Box<str>,
        payloads: Vec<Bytes>,
    },
    /// The reader fell behind and this many messages were lost.
    Lagged(u64),
    /// The broker (re)connected and redoes every subscription: until their
    /// confirmation, what was published meanwhile is only in the history.
    Reconnected,
    /// These channels are subscribed: a message published from now on
    /// arrives (the subscriptions of a `Reconnected` come back this way).
    Confirmed(Vec<Box<str>>),
}

/// The stream of [`Event`]s, read by one dispatcher.
pub(crate) struct Events {
    /// Reconnects and confirmations (and the embedded broker's messages).
    control: mpsc::Receiver<Event>,
    /// Redis's messages, read straight off fred's receiver: no extra hop.
    messages: Option<redis::MessageStream>,
}

impl Events {
    /// The next event; None once the broker is gone.
    pub async fn next(&mut self) -> Option<Event> {
        let Some(messages) = &mut self.messages else {
            return self.control.recv().await;
        };
        // Both branches are cancel-safe: a message stream's `next` does
        // all its work after its one await.
        tokio::select! {
            biased;
            event = self.control.recv() => event,
            event = messages.next() => event,
        }
    }
}

/// Control events queued between the broker's tasks and the dispatcher.
const CONTROL_QUEUE: usize = 1024;

/// Why a broker command failed, in the terms a publisher must act on
/// (SPEC §7): whether the command may still take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// Certainly not done (not connected, or the broker refused it): safe
    /// to retry later.
    Unavailable(String),
    /// Sent, but no answer in time (or the connection broke meanwhile): it
    /// may still take effect. A retry must reuse the message's id.
    OutcomeUnknown(String),
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerError::Unavailable(why) => write!(f, "{why}"),
            BrokerError::OutcomeUnknown(why) => {
                write!(f, "{why}; the command may still take effect")
            }
        }
    }
}

pub trait Broker: Send + Sync {
    /// `"redis"` or `"memory"`, as `/ws/health` reports it.
    fn kind(&self) -> &'static str;

    /// True while the broker can deliver.
    fn is_up(&self) -> bool;

    /// Subscribes this instance to `channels`, returning once the broker
    /// confirmed it: a message published after the return is delivered.
    /// Only the [reconciler](reconcile) calls this and `unsubscribe`.
    fn subscribe<'a>(&'a self, channels: &'a [Box<str>]) -> BoxFuture<'a, Result<(), BrokerError>>;

    fn unsubscribe<'a>(
        &'a self,
        channels: &'a [Box<str>],
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Plain publish: live delivery only (broadcast, roles).
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The newest `history_size` entries of the history list at `key`,
    /// oldest first.
    fn history<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<Bytes>, BrokerError>>;

    /// The canonical path (SPEC §3): append to `history_key`, trim, set its
    /// expiry, and publish on `channel`, as one atomic step.
    fn publish_with_history<'a>(
        &'a self,
        history_key: &'a str,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
}

/// A started broker: the handle to publish and read history with, the
/// events for the dispatcher, what it should subscribe to, and its
/// long-lived tasks, for the server to run and join.
pub(crate) struct Started {
    pub broker: std::sync::Arc<dyn Broker>,
    pub events: Events,
    pub desired: std::sync::Arc<reconcile::Desired>,
    pub tasks: Vec<(&'static str, BoxFuture<'static, ()>)>,
}

/// How long start-up waits for Redis before serving anyway (not ready).
const REDIS_STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the broker `redis.url` names (the embedded one when empty);
/// `fixed` are the channels wanted regardless of connections.
pub(crate) async fn start(
    redis: &crate::config::RedisConfig,
    fixed: Vec<Box<str>>,
) -> Result<Started, String> {
    use std::sync::Arc;
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let desired = reconcile::Desired::new(fixed);
    let (broker, messages, mut tasks): (Arc<dyn Broker>, _, Vec<_>) = if redis.url.is_empty() {
        tracing::info!(
            "using the embedded in-memory broker: this instance works alone; \
             set redis.url (GATEWAY_REDIS_URL) to run several"
        );
        let ttl = std::time::Duration::from_secs(redis.history_ttl_secs);
        let broker = memory::MemoryBroker::new(control.clone(), redis.history_size, ttl);
        // Connected from the start: its first (and only) connect.
        desired.resync();
        (Arc::new(broker), None, Vec::new())
    } else {
        let (broker, messages, connection) =
            redis::RedisBroker::start(&redis.url, redis.history_size, redis.history_ttl_secs)?;
        if let Err(e) = broker.wait_connected(REDIS_STARTUP_WAIT).await {
            tracing::warn!(error = %e, "Redis is not reachable yet; serving, not ready, and retrying");
        }
        let watch = redis::watch_connection(connection, desired.clone());
        let tasks: Vec<(&'static str, BoxFuture<'static, ()>)> =
            vec![("redis connection watch", Box::pin(watch))];
        (Arc::new(broker), Some(messages), tasks)
    };
    let reconciler = reconcile::run(broker.clone(), desired.clone(), control);
    tasks.push(("subscription reconciler", Box::pin(reconciler)));
    Ok(Started {
        broker,
        events: Events {
            control: control_rx,
            messages,
        },
        desired,
        tasks,
    })
}
