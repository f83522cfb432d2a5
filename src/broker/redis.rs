//! Redis through fred: two connections per instance, however many clients.
//!
//! - `subscriber` is in pub/sub mode: it holds every SUBSCRIBE and receives
//!   all messages. The dispatcher reads fred's broadcast channel through a
//!   [`MessageStream`]. That channel is bounded (fred's default is 32); it
//!   is sized large here, and a lag is reported rather than ending the
//!   reader the way fred's own `on_message` helper would.
//! - `publisher` runs ordinary commands: the canonical publish transaction.
//!
//! On reconnect [`watch_connection`] asks the reconciler to resync, and it
//! resubscribes every channel itself and checks the result.
//!
//! A subscribe returns once Redis has it, not when fred wrote it: a PING on
//! the subscriber connection follows each SUBSCRIBE (see `subscribe`).

use super::reconcile::Desired;
use super::{BoxFuture, Broker, BrokerError, Event};
use bytes::Bytes;
use fred::prelude::*;
use fred::types::config::Server;
use fred::types::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};

/// Messages fred may buffer between its socket reader and our reader task.
/// Our reader never waits on a client (it writes without blocking, queuing
/// only what a full socket does not take), and takes every waiting message
/// into one fan-out, so it keeps up; the size covers bursts.
const MESSAGE_BUFFER: usize = 64 * 1024;

/// How long one Redis command may take before it fails (a publish during an
/// outage answers with an error instead of hanging).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct RedisBroker {
    subscriber: Client,
    publisher: Publisher,
}

/// The publishing half, on its own for the `publish` command.
pub struct Publisher {
    client: Client,
    history_size: i64,
    history_ttl_secs: i64,
}

/// When Redis cannot be reached at the first connect.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FirstConnect {
    /// Keep trying with the reconnect policy (a server: it serves, not
    /// ready, until Redis is up).
    Retry,
    /// Fail at once with the reason (a one-shot command).
    Fail,
}

fn build_client(config: &Config, first: FirstConnect) -> Result<Client, String> {
    let mut config = config.clone();
    // fred's default gives up for good when the first connect fails.
    config.fail_fast = first == FirstConnect::Fail;
    Builder::from_config(config)
        .with_performance_config(|p| {
            p.broadcast_channel_capacity = MESSAGE_BUFFER;
            p.default_command_timeout = COMMAND_TIMEOUT;
        })
        // No silent re-send after a reconnect: a command whose connection
        // broke fails, and its caller decides (a publish answers
        // outcome_unknown; the reconciler redoes everything).
        .with_connection_config(|c| c.max_command_attempts = 1)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()
        .map_err(|e| describe(&e))
}

fn parse_url(url: &str) -> Result<Config, String> {
    Config::from_url(url).map_err(|e| format!("redis.url: {}", e.details()))
}

impl Publisher {
    /// Starts connecting; commands wait for the connection (up to the
    /// command timeout).
    pub fn start(
        url: &str,
        history_size: usize,
        history_ttl_secs: u64,
        first: FirstConnect,
    ) -> Result<Self, String> {
        let client = build_client(&parse_url(url)?, first)?;
        client.connect();
        Ok(Self {
            client,
            history_size: i64::try_from(history_size).unwrap_or(i64::MAX),
            history_ttl_secs: i64::try_from(history_ttl_secs).unwrap_or(i64::MAX),
        })
    }

    pub async fn wait_connected(&self, limit: Duration) -> Result<(), String> {
        wait_for_connect(&self.client, limit).await
    }

    /// Refuses at once when not connected: fred would queue the command
    /// until it reconnects, and a timeout then could not tell "never sent"
    /// from "sent, unanswered".
    fn connected(&self) -> Result<(), BrokerError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("not connected to Redis".into()))
        }
    }

    pub async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BrokerError> {
        self.connected()?;
        let _receivers: i64 = self
            .client
            .publish(channel, payload)
            .await
            .map_err(command_error)?;
        Ok(())
    }

    /// The newest `history_size` entries, oldest first. Bounded even when a
    /// backend skipped the LTRIM: a resume never reads (or replays) more.
    /// A read has no outcome to be unsure of: it waits for a reconnect
    /// (bounded by the command timeout), as a catch-up right after one must.
    pub async fn history(&self, key: &str) -> Result<Vec<Bytes>, BrokerError> {
        self.client
            .lrange(key, -self.history_size, -1)
            .await
            .map_err(command_error)
    }

    /// RPUSH + LTRIM + EXPIRE + PUBLISH in one MULTI/EXEC.
    pub async fn publish_with_history(
        &self,
        history_key: &str,
        channel: &str,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        self.connected()?;
        // Queued client-side; only `exec` sends the transaction.
        let trx = self.client.multi();
        let queued = async {
            let _: Value = trx.rpush(history_key, payload.clone()).await?;
            let _: Value = trx.ltrim(history_key, -self.history_size, -1).await?;
            let _: Value = trx.expire(history_key, self.history_ttl_secs, None).await?;
            trx.publish::<Value, _, _>(channel, payload).await
        };
        queued
            .await
            .map_err(|e| BrokerError::Unavailable(describe(&e)))?;
        let _: Value = trx.exec(true).await.map_err(command_error)?;
        Ok(())
    }
}

impl RedisBroker {
    /// Connects both clients and starts the reader and reconnect tasks. Does
    /// not wait for Redis: until it answers, the broker reports down.
    /// Returns the broker and what its subscriber receives.
    pub fn start(
        url: &str,
        history_size: usize,
        history_ttl_secs: u64,
    ) -> Result<(Self, MessageStream, ConnectionEvents), String> {
        let subscriber = build_client(&parse_url(url)?, FirstConnect::Retry)?;
        // Subscribed before connecting: the first connect is an event too.
        let messages = MessageStream {
            messages: subscriber.message_rx(),
            next: None,
        };
        let connection = ConnectionEvents {
            reconnects: subscriber.reconnect_rx(),
            errors: subscriber.error_rx(),
        };
        subscriber.connect();
        let publisher = Publisher::start(url, history_size, history_ttl_secs, FirstConnect::Retry)?;
        let broker = Self {
            subscriber,
            publisher,
        };
        Ok((broker, messages, connection))
    }

    /// Waits up to `limit` for both connections.
    pub async fn wait_connected(&self, limit: Duration) -> Result<(), String> {
        wait_for_connect(&self.subscriber, limit).await?;
        self.publisher.wait_connected(limit).await
    }
}

/// Messages one event carries at most, so that a fan-out pass stays short;
/// far more than a busy instance finds waiting.
const MAX_GATHERED: usize = 256;

/// What the subscriber receives, as [`Event`]s. Every message already
/// waiting joins the event (consecutive messages of one channel travel
/// together), so each client gets them in one write: the busier the
/// instance, the fewer syscalls per delivery, with no timer and no wake-up.
/// Read straight off fred's receiver by the dispatcher: no task between.
pub(crate) struct MessageStream {
    messages: broadcast::Receiver<Message>,
    /// The first message of the next event (another channel's).
    next: Option<Message>,
}

impl MessageStream {
    /// The next event; None once the client is gone. Cancel-safe: all the
    /// work happens after its one await.
    pub async fn next(&mut self) -> Option<Event> {
        let first = match self.next.take() {
            Some(message) => message,
            None => match self.messages.recv().await {
                Ok(message) => message,
                Err(RecvError::Lagged(missed)) => return Some(Event::Lagged(missed)),
                Err(RecvError::Closed) => return None,
            },
        };
        let mut payloads = vec![payload(first.value)];
        while payloads.len() < MAX_GATHERED {
            match self.messages.try_recv() {
                Ok(message) if message.channel == first.channel => {
                    payloads.push(payload(message.value));
                }
                Ok(message) => {
                    self.next = Some(message);
                    break;
                }
                // Reported by the next call's `recv`.
                Err(TryRecvError::Lagged(_) | TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        let channel = Box::from(&*first.channel);
        Some(Event::Messages { channel, payloads })
    }
}

fn payload(value: Value) -> Bytes {
    match value {
        Value::String(s) => s.into_inner(),
        Value::Bytes(b) => b,
        _ => Bytes::new(), // not a text payload: dropped by validation
    }
}

/// The subscriber connection's (re)connects and errors.
pub(crate) struct ConnectionEvents {
    reconnects: broadcast::Receiver<Server>,
    errors: broadcast::Receiver<(Error, Option<Server>)>,
}

/// Watches the subscriber connection: every connect, the first included,
/// redoes every subscription (what was published before it is only in the
/// history, even for clients that connected while Redis was down). Logs
/// connection errors. Runs until the client is gone.
pub(crate) async fn watch_connection(connection: ConnectionEvents, desired: Arc<Desired>) {
    let ConnectionEvents {
        mut reconnects,
        mut errors,
    } = connection;
    loop {
        tokio::select! {
            event = reconnects.recv() => match event {
                Ok(server) => {
                    tracing::info!(%server, "connected to Redis; resubscribing");
                    desired.resync();
                }
                Err(RecvError::Lagged(_)) => desired.resync(),
                Err(RecvError::Closed) => break,
            },
            event = errors.recv() => match event {
                Ok((error, _)) => tracing::warn!(error = %describe(&error), "Redis connection error"),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
        }
    }
}

/// How often the start-up wait looks at the connection state.
const CONNECT_POLL: Duration = Duration::from_millis(10);

/// Waits up to `limit` for `client`'s connection. fred's `wait_for_connect`
/// alone can miss it: it reads the state, then subscribes to the connect
/// notification, and a connect between the two is never seen (fred 10.1,
/// `runtime/_tokio.rs`). Polling the state as well sees every connect;
/// fred's wait still reports a fail-fast connect's error.
async fn wait_for_connect(client: &Client, limit: Duration) -> Result<(), String> {
    let polled = async {
        let mut every = tokio::time::interval(CONNECT_POLL);
        loop {
            every.tick().await;
            if client.is_connected() {
                return Ok(());
            }
        }
    };
    let waited = async {
        tokio::select! {
            result = client.wait_for_connect() => result,
            connected = polled => connected,
        }
    };
    match tokio::time::timeout(limit, waited).await {
        Ok(result) => result.map_err(|e| describe(&e)),
        Err(_) => Err(format!(
            "cannot reach Redis: no connection within {} s",
            limit.as_secs()
        )),
    }
}

/// A failed command, by whether it may still take effect (SPEC §7).
fn command_error(e: Error) -> BrokerError {
    match e.kind() {
        // Written, then no answer or the connection broke: Redis may have
        // it (a stalled Redis runs its input buffer when it resumes).
        ErrorKind::Timeout | ErrorKind::IO => BrokerError::OutcomeUnknown(describe(&e)),
        _ => BrokerError::Unavailable(describe(&e)),
    }
}

/// A fred error as a sentence. Its I/O errors carry a Rust debug dump
/// (`Os { code: 111, kind: ConnectionRefused, message: "Connection
/// refused" }`): keep the message.
fn describe(e: &Error) -> String {
    let details = e.details();
    match e.kind() {
        ErrorKind::IO => {
            let message = details
                .split_once("message: \"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map_or(details, |(message, _)| message);
            format!("cannot reach Redis: {message}")
        }
        ErrorKind::Timeout => format!(
            "Redis did not answer within {} s",
            COMMAND_TIMEOUT.as_secs()
        ),
        ErrorKind::Auth => format!("Redis refused the credentials: {details}"),
        ErrorKind::Url | ErrorKind::Config => format!("redis.url: {details}"),
        _ => format!("Redis: {details}"),
    }
}

impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn is_up(&self) -> bool {
        self.subscriber.is_connected() && self.publisher.client.is_connected()
    }

    fn subscribe<'a>(&'a self, channels: &'a [Box<str>]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let names: Vec<&str> = channels.iter().map(|c| &**c).collect();
            self.subscriber
                .subscribe(names)
                .await
                .map_err(command_error)?;
            // fred answers SUBSCRIBE once it is written, and drops Redis's
            // reply. Redis answers one connection's commands in order, so
            // the reply to a PING sent after it on the same connection
            // proves the subscription is live: only then may the caller
            // read the history (see `history`) and say CONNECTED.
            let _: Value = self.subscriber.ping(None).await.map_err(command_error)?;
            Ok(())
        })
    }

    fn unsubscribe<'a>(
        &'a self,
        channels: &'a [Box<str>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let names: Vec<&str> = channels.iter().map(|c| &**c).collect();
            self.subscriber
                .unsubscribe(names)
                .await
                .map_err(command_error)
        })
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.publisher.publish(channel, payload))
    }

    fn history<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<Bytes>, BrokerError>> {
        Box::pin(self.publisher.history(key))
    }

    fn publish_with_history<'a>(
        &'a self,
        history_key: &'a str,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(
            self.publisher
                .publish_with_history(history_key, channel, payload),
        )
    }
}
