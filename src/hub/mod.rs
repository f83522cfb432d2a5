//! Who is connected to this instance, and fan-out to them.
//!
//! The hub maps broker channels to the local connections that want them: a
//! user's channel to that user's connections, a role's channel to the
//! connections whose token has the role; the broadcast channel reaches every
//! connection. A channel is wanted while it has at least one member: the
//! hub tells the broker's [`Desired`] when that starts and ends, and the
//! broker's reconciler turns it into SUBSCRIBE/UNSUBSCRIBE.
//!
//! Deliveries (live messages and catch-ups) come from one task, the
//! [`dispatch`]er, so their order is that task's order: no lock orders them.
//!
//! A `std::sync::Mutex` guards the state: every critical section is short
//! and has no await. Fan-out decides its recipients under the lock and
//! writes to them after releasing it (non-blocking writes into bounded
//! queues), so neither a slow client nor the syscalls delay a connect.

mod channel;
pub(crate) mod dispatch;

use crate::auth::Identity;
use crate::broker::reconcile::Desired;
use crate::lock;
use crate::log_limit::LogLimit;
use crate::metrics::{Stats, Transport};
use crate::names::Names;
use crate::protocol::validate_published;
use crate::protocol::Published;
use crate::wire::{CloseReason, Wire};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub use channel::ConnId;
use channel::{Channel, Deliveries, Members};

/// A cheap-to-clone handle to the shared hub.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// What the broker should be subscribed to.
    desired: Arc<Desired>,
    names: Names,
    max_per_user: usize,
    next_id: AtomicU64,
    stats: Arc<Stats>,
    started: Instant,
    /// Dropped publishes are logged at most once a second per reason.
    drop_log: LogLimit<&'static str>,
}

#[derive(Default)]
struct State {
    /// Every local connection: the broadcast audience.
    connections: Members,
    /// Channels with at least one local member.
    channels: HashMap<Box<str>, Channel>,
    users: usize,
    /// Connections per transport, in [`Transport::ALL`]'s order.
    by_transport: [usize; 3],
    draining: bool,
}

/// A point-in-time view of the hub for `/ws/stats` and `/ws/health`.
pub struct Snapshot {
    pub connections: usize,
    /// Per transport, in [`Transport::ALL`]'s order.
    pub by_transport: [usize; 3],
    pub users: usize,
    pub subscriptions: usize,
    pub uptime_secs: u64,
}

/// Refusal of a registration.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooManyConnections,
}

/// A registered connection; unregisters itself when dropped, so every exit
/// path of a session (including a panic) releases its subscriptions.
pub struct Registration {
    hub: Hub,
    pub id: ConnId,
    transport: Transport,
    /// Its user channel first, then roles and rooms.
    channels: Vec<Box<str>>,
    /// Resolves when every channel of this connection is subscribed; taken
    /// (and dropped) by the session once it has waited.
    pub ready: Option<oneshot::Receiver<()>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.id, self.transport, &self.channels);
    }
}

impl Hub {
    pub fn new(
        names: Names,
        max_per_user: usize,
        desired: Arc<Desired>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                desired,
                names,
                max_per_user,
                next_id: AtomicU64::new(1),
                stats,
                started: Instant::now(),
                drop_log: LogLimit::new(Duration::from_secs(1)),
            }),
        }
    }

    pub fn names(&self) -> &Names {
        &self.shared.names
    }

    /// The instance's counters (wires count their own deliveries).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    /// Adds a connection to its user's and roles' channels.
    pub fn register(
        &self,
        who: &Identity,
        wire: Arc<Wire>,
        transport: Transport,
    ) -> Result<Registration, Refused> {
        let names = &self.shared.names;
        let mut channels: Vec<Box<str>> = Vec::with_capacity(1 + who.roles.len());
        channels.push(names.user(&who.user_id).into());
        for role in &who.roles {
            let channel: Box<str> = names.role(role).into();
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        let id = self.shared.next_id.fetch_add(1, Relaxed);

        let mut state = lock(&self.shared.state);
        let user_count = state
            .channels
            .get(&channels[0])
            .map_or(0, |c| c.members.len());
        if user_count >= self.shared.max_per_user {
            return Err(Refused::TooManyConnections);
        }
        if user_count == 0 {
            state.users += 1;
        }
        state.connections.insert(id, wire.clone());
        state.by_transport[transport as usize] += 1;
        for name in &channels {
            self.add_member(&mut state, name, id, &wire);
        }
        drop(state);
        // Even a channel subscribed long ago is confirmed by the next
        // round: a stale "subscribed" cannot release a connection early.
        let ready = self.shared.desired.confirmation(&channels);
        let stats = &self.shared.stats;
        stats.connections_opened.add(transport.label(), 1);
        Ok(Registration {
            hub: self.clone(),
            id,
            transport,
            channels,
            ready: Some(ready),
        })
    }

    /// Adds a registered connection to one more channel (a room, a role
    /// from a refreshed token). The receiver resolves once the broker has
    /// confirmed the subscription; None when it was a member already.
    pub fn join(
        &self,
        registration: &mut Registration,
        channel: Box<str>,
    ) -> Option<oneshot::Receiver<()>> {
        if registration.channels.contains(&channel) {
            return None;
        }
        let mut state = lock(&self.shared.state);
        let wire = state.connections.get(registration.id)?.clone();
        self.add_member(&mut state, &channel, registration.id, &wire);
        drop(state);
        let ready = self
            .shared
            .desired
            .confirmation(std::slice::from_ref(&channel));
        registration.channels.push(channel);
        Some(ready)
    }

    /// Takes a registered connection out of one channel it joined; never its
    /// user channel.
    pub fn leave(&self, registration: &mut Registration, channel: &str) {
        let Some(i) = registration.channels.iter().position(|c| &**c == channel) else {
            return;
        };
        if i == 0 {
            return;
        }
        registration.channels.remove(i);
        let mut state = lock(&self.shared.state);
        self.remove_member(&mut state, channel, registration.id);
    }

    /// Adds `id` to a channel, creating it (and wanting its subscription)
    /// for its first member. Under the hub's lock, so the broker learns of
    /// wants and unwants in membership order.
    fn add_member(&self, state: &mut State, name: &str, id: ConnId, wire: &Arc<Wire>) {
        let channel = state.channels.entry(name.into()).or_insert_with(|| {
            self.shared.desired.want(name);
            Channel::new(crate::publish::unix_millis())
        });
        channel.members.insert(id, wire.clone());
    }

    /// Removes `id` from a channel, dropping the channel (and its
    /// subscription) with its last member; true when it did.
    fn remove_member(&self, state: &mut State, name: &str, id: ConnId) -> bool {
        let Some(channel) = state.channels.get_mut(name) else {
            return false;
        };
        channel.members.remove(id);
        if !channel.members.is_empty() {
            return false;
        }
        state.channels.remove(name);
        self.shared.desired.unwant(name);
        true
    }

    fn unregister(&self, id: ConnId, transport: Transport, channels: &[Box<str>]) {
        let mut state = lock(&self.shared.state);
        if !state.connections.remove(id) {
            return;
        }
        state.by_transport[transport as usize] -= 1;
        for (i, name) in channels.iter().enumerate() {
            // The user channel comes first: its last member was the user's.
            if self.remove_member(&mut state, name, id) && i == 0 {
                state.users -= 1;
            }
        }
    }

    /// Relays messages that arrived on `channel`, in order, to every local
    /// member. Called by the [`dispatch`]er only, with every message of the
    /// channel that was waiting, without waiting on any client: each member
    /// gets all of them in one write (see [`wire`](crate::wire)).
    pub fn dispatch(&self, channel: &str, payloads: impl IntoIterator<Item = Bytes>) {
        let stats = &self.shared.stats;
        let mut valid = Deliveries::new();
        let mut received = 0;
        let mut dropped = Vec::new();
        for payload in payloads {
            received += 1;
            match validate_published(payload) {
                Ok(published) => valid.push(Arc::new(published)),
                Err(invalid) => {
                    self.log_drop(channel, invalid.as_str());
                    dropped.push(invalid.as_str());
                }
            }
        }
        // Received before dropped: a scrape never sees a drop of a message
        // not counted as received.
        let kind = self.shared.names.kind_of(channel);
        stats.broker_messages.add(kind, received);
        for reason in dropped {
            stats.messages_dropped.add(reason, 1);
        }
        if valid.is_empty() {
            return;
        }
        let (messages, recipients) = {
            let mut state = lock(&self.shared.state);
            let state = &mut *state;
            if channel == self.shared.names.broadcast {
                (valid, state.connections.recipients())
            } else if let Some(entry) = state.channels.get_mut(channel) {
                let mut messages = Deliveries::new();
                for message in &valid {
                    entry.relay(message, &mut messages);
                }
                if messages.is_empty() {
                    return;
                }
                (messages, entry.members.recipients())
            } else {
                return;
            }
        };
        self.deliver(&messages, &recipients);
    }

    /// Writes (or queues) the messages to each recipient, outside the hub's
    /// lock: a connect or disconnect never waits for a fan-out's syscalls.
    /// The latency is observed once per message per pass, not per recipient.
    fn deliver(&self, messages: &Deliveries, recipients: &[Arc<Wire>]) {
        for wire in recipients {
            wire.deliver(messages);
        }
        let now_ms = crate::publish::unix_millis();
        let latency = &self.shared.stats.delivery_latency;
        for ts in messages.iter().filter_map(|m| m.ts) {
            latency.record(now_ms.saturating_sub(ts) as f64 / 1000.0);
        }
    }

    /// The channels among `confirmed` that wait for a catch-up after a
    /// broker reconnect.
    pub fn recovering_among(&self, confirmed: &[Box<str>]) -> Vec<Box<str>> {
        let state = lock(&self.shared.state);
        confirmed
            .iter()
            .filter(|name| {
                state
                    .channels
                    .get(*name)
                    .is_some_and(Channel::is_recovering)
            })
            .cloned()
            .collect()
    }

    /// Ends a channel's recovery with its history (`None`: unreadable).
    /// Called by the [`dispatch`]er only, like `dispatch`.
    pub fn catch_up(&self, channel: &str, history: Option<Vec<Arc<Published>>>) {
        let mut messages = Deliveries::new();
        let (missed, recipients) = {
            let mut state = lock(&self.shared.state);
            let Some(entry) = state.channels.get_mut(channel) else {
                return;
            };
            let missed = entry.catch_up(history.as_deref(), &mut messages);
            let recipients = entry.members.recipients();
            (missed, recipients)
        };
        self.deliver(&messages, &recipients);
        if missed > 0 {
            self.shared
                .stats
                .replayed_messages
                .fetch_add(missed as u64, Relaxed);
            tracing::info!(
                channel,
                missed,
                "delivered what was published while Redis was away"
            );
        }
    }

    fn log_drop(&self, channel: &str, reason: &'static str) {
        if let Some(suppressed) = self.shared.drop_log.check(reason) {
            tracing::warn!(
                channel,
                reason,
                suppressed,
                dropped_total = self.shared.stats.messages_dropped.total(),
                "dropped a published message: it must be a JSON object with a string \"type\", at most 1 MiB (logged at most once a second)"
            );
        }
    }

    /// The broker reconnected: until its catch-up, each user channel holds
    /// its live messages (what was published meanwhile is in its history).
    pub fn begin_recovery(&self) {
        let mut state = lock(&self.shared.state);
        let names = &self.shared.names;
        for (name, c) in state.channels.iter_mut() {
            if names.user_of(name).is_some() {
                c.begin_recovery();
            }
        }
    }

    /// Drains: refuses new connections, then tells every open one to close
    /// (1001), spread evenly over `window` so that their reconnects do not
    /// hit the other instances all at once.
    ///
    /// Each wire is let go as soon as it is told: the socket closes when
    /// its session ends (after its closing handshake), and a client's
    /// `onclose` fires then, not at the end of the window.
    pub async fn drain(&self, window: Duration) {
        const STEP: Duration = Duration::from_millis(100);
        let wires: Vec<Arc<Wire>> = {
            let mut state = lock(&self.shared.state);
            state.draining = true;
            state.connections.recipients().to_vec()
        };
        let steps = (window.as_millis() / STEP.as_millis()).max(1) as usize;
        let per_step = wires.len().div_ceil(steps).max(1);
        let mut wires = wires.into_iter();
        for step in 0..steps {
            if step > 0 {
                tokio::time::sleep(STEP).await;
            }
            let mut told = 0;
            for wire in wires.by_ref().take(per_step) {
                wire.close(CloseReason::Shutdown);
                told += 1;
            }
            if told == 0 {
                break;
            }
        }
    }

    /// From now on the instance is draining: not ready, and new
    /// connections are refused; [`Hub::drain`] then closes the open ones.
    pub fn stop_accepting(&self) {
        lock(&self.shared.state).draining = true;
    }

    pub fn is_draining(&self) -> bool {
        lock(&self.shared.state).draining
    }

    pub fn connection_count(&self) -> usize {
        lock(&self.shared.state).connections.len()
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = lock(&self.shared.state);
        Snapshot {
            connections: state.connections.len(),
            by_transport: state.by_transport,
            users: state.users,
            subscriptions: state.channels.len(),
            uptime_secs: self.shared.started.elapsed().as_secs(),
        }
    }

    /// Waits until every connection is gone, at most `limit`.
    pub async fn wait_empty(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Limits;

    fn hub(max_per_user: usize) -> Hub {
        Hub::new(
            Names::from_config(&crate::config::RedisConfig::default(), "test"),
            max_per_user,
            Desired::new(Vec::new()),
            Arc::default(),
        )
    }

    fn who(user: &str, roles: &[&str]) -> Identity {
        Identity {
            user_id: user.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            rooms: Vec::new(),
            exp: None,
        }
    }

    /// A wire over a loopback socket pair, released (not holding), and the
    /// client end.
    async fn wire(stats: &Arc<Stats>) -> (Arc<Wire>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (server, client) = tokio::join!(listener.accept(), client);
        let wire = Wire::new(
            server.unwrap().0,
            Limits::new(8, usize::MAX),
            crate::wire::Encoding::Plain,
            stats.clone(),
        );
        wire.release(&[]);
        (wire, client.unwrap())
    }

    /// Reads `n` small unmasked text frames.
    async fn texts(client: &mut tokio::net::TcpStream, n: usize) -> Vec<String> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        for _ in 0..n {
            let mut header = [0u8; 2];
            client.read_exact(&mut header).await.unwrap();
            assert_eq!(header[0], 0x81, "a final text frame");
            let mut payload = vec![0u8; usize::from(header[1])];
            client.read_exact(&mut payload).await.unwrap();
            out.push(String::from_utf8(payload).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn membership_is_reference_counted() {
        let hub = hub(16);
        let wanted = |channel| hub.shared.desired.is_wanted(channel);
        let a = hub
            .register(
                &who("42", &["ops"]),
                wire(hub.stats()).await.0,
                Transport::WebSocket,
            )
            .unwrap();
        let b = hub
            .register(
                &who("42", &[]),
                wire(hub.stats()).await.0,
                Transport::WebSocket,
            )
            .unwrap();
        assert!(wanted("ws:user:42") && wanted("ws:role:ops"));
        assert_eq!(hub.snapshot().subscriptions, 2);
        drop(a);
        assert!(wanted("ws:user:42"));
        assert!(!wanted("ws:role:ops"));
        drop(b);
        assert!(!wanted("ws:user:42"));
        assert_eq!(hub.snapshot().users, 0);
    }

    #[tokio::test]
    async fn per_user_limit() {
        let hub = hub(2);
        let _a = hub
            .register(
                &who("1", &[]),
                wire(hub.stats()).await.0,
                Transport::WebSocket,
            )
            .unwrap();
        let _b = hub
            .register(
                &who("1", &[]),
                wire(hub.stats()).await.0,
                Transport::WebSocket,
            )
            .unwrap();
        assert_eq!(
            hub.register(
                &who("1", &[]),
                wire(hub.stats()).await.0,
                Transport::WebSocket
            )
            .err(),
            Some(Refused::TooManyConnections)
        );
        assert!(hub
            .register(
                &who("2", &[]),
                wire(hub.stats()).await.0,
                Transport::WebSocket
            )
            .is_ok());
    }

    #[tokio::test]
    async fn dispatch_routes_and_forwards_the_bytes() {
        let hub = hub(16);
        let ((w42, mut c42), (w43, mut c43), (wops, mut cops)) = (
            wire(hub.stats()).await,
            wire(hub.stats()).await,
            wire(hub.stats()).await,
        );
        let _r1 = hub
            .register(&who("42", &[]), w42, Transport::WebSocket)
            .unwrap();
        let _r2 = hub
            .register(&who("43", &[]), w43, Transport::WebSocket)
            .unwrap();
        let _r3 = hub
            .register(&who("44", &["ops"]), wops, Transport::WebSocket)
            .unwrap();
        hub.dispatch("ws:user:42", [Bytes::from_static(br#"{"type":"A"}"#)]);
        hub.dispatch("ws:role:ops", [Bytes::from_static(br#"{"type":"B"}"#)]);
        hub.dispatch("ws:user:42", [Bytes::from_static(b"nope")]);
        // Several waiting messages: one write each, in order.
        hub.dispatch(
            "ws:broadcast",
            [
                Bytes::from_static(br#"{"type":"C"}"#),
                Bytes::from_static(b"nope"),
                Bytes::from_static(br#"{"type":"D"}"#),
            ],
        );
        let (a, b, c, d) = (
            r#"{"type":"A"}"#,
            r#"{"type":"B"}"#,
            r#"{"type":"C"}"#,
            r#"{"type":"D"}"#,
        );
        assert_eq!(texts(&mut c42, 3).await, [a, c, d]);
        assert_eq!(texts(&mut c43, 2).await, [c, d]);
        assert_eq!(texts(&mut cops, 3).await, [b, c, d]);
        assert_eq!(hub.stats().messages_dropped.get("invalid_payload"), 2);
        assert_eq!(hub.stats().broker_messages.get("user"), 2);
        assert_eq!(hub.stats().broker_messages.get("role"), 1);
        assert_eq!(hub.stats().broker_messages.get("broadcast"), 3);
        assert_eq!(hub.stats().messages_delivered.load(Relaxed), 8);
    }
}
