//! The embedded broker: channels and history inside this process, for one
//! instance (dev mode, tests, single-node installs). Same semantics as
//! Redis: only subscribed channels deliver, history is capped and expires,
//! and delivery is asynchronous: a publish queues an [`Event`] for the
//! dispatcher (waiting while that bounded queue is full) and returns, as a
//! Redis PUBLISH returns before the subscribers read it.

use super::{BoxFuture, Broker, BrokerError, Event};
use crate::lock;
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub struct MemoryBroker {
    /// The dispatcher's queue.
    events: mpsc::Sender<Event>,
    subscribed: Mutex<HashSet<Box<str>>>,
    history: Mutex<HashMap<String, History>>,
    history_size: usize,
    history_ttl: Duration,
}

/// One history list: newest last, like the Redis list.
struct History {
    messages: VecDeque<Bytes>,
    expires: Instant,
}

impl MemoryBroker {
    pub fn new(events: mpsc::Sender<Event>, history_size: usize, history_ttl: Duration) -> Self {
        Self {
            events,
            subscribed: Mutex::new(HashSet::new()),
            history: Mutex::new(HashMap::new()),
            history_size,
            history_ttl,
        }
    }

    async fn deliver(&self, channel: &str, payload: Bytes) -> Result<(), BrokerError> {
        let subscribed = lock(&self.subscribed).contains(channel);
        if !subscribed {
            return Ok(());
        }
        let event = Event::Messages {
            channel: channel.into(),
            payloads: vec![payload],
        };
        self.events
            .send(event)
            .await
            .map_err(|_| BrokerError::Unavailable("the gateway is shutting down".into()))
    }

    fn append_history(&self, key: &str, payload: Bytes) {
        let now = Instant::now();
        let mut all = lock(&self.history);
        // Expired lists go, as Redis would drop them.
        all.retain(|_, h| h.expires > now);
        let h = all.entry(key.to_string()).or_insert_with(|| History {
            messages: VecDeque::new(),
            expires: now,
        });
        h.messages.push_back(payload);
        while h.messages.len() > self.history_size {
            h.messages.pop_front();
        }
        h.expires = now + self.history_ttl;
    }
}

impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn is_up(&self) -> bool {
        true
    }

    fn subscribe<'a>(&'a self, channels: &'a [Box<str>]) -> BoxFuture<'a, Result<(), BrokerError>> {
        lock(&self.subscribed).extend(channels.iter().cloned());
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe<'a>(
        &'a self,
        channels: &'a [Box<str>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut subscribed = lock(&self.subscribed);
        for c in channels {
            subscribed.remove(c);
        }
        Box::pin(async { Ok(()) })
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.deliver(channel, payload))
    }

    fn history<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<Bytes>, BrokerError>> {
        let now = Instant::now();
        let messages = lock(&self.history)
            .get(key)
            .filter(|h| h.expires > now)
            .map(|h| h.messages.iter().cloned().collect())
            .unwrap_or_default();
        Box::pin(async { Ok(messages) })
    }

    fn publish_with_history<'a>(
        &'a self,
        history_key: &'a str,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.append_history(history_key, payload.clone());
        Box::pin(self.deliver(channel, payload))
    }
}
