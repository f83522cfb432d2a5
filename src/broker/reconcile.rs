//! The broker's subscriptions: what is wanted against what the broker has
//! confirmed, reconciled by one task.
//!
//! The hub says which channels it wants ([`Desired::want`] when a channel's
//! first local member arrives, [`Desired::unwant`] when its last one
//! leaves); a new connection asks for a [`Desired::confirmation`] before it
//! reads the history. Each round of [`run`] takes the channels that changed,
//! subscribes the wanted ones it lacks and unsubscribes the unwanted ones it
//! has (one command each), then releases the connections waiting for that
//! round. Because only this task talks to the broker about subscriptions,
//! commands cannot overtake each other; and because each round compares
//! with the *current* wants, any interleaving of connects and disconnects
//! ends in the right set. Failures are retried with backoff. A reconnect
//! ([`Desired::resync`]) empties the confirmed set and redoes everything,
//! reporting [`Event::Reconnected`] first and the channels, once
//! resubscribed, as [`Event::Confirmed`] (fred only logs failed
//! resubscriptions, so we do not rely on it).

use super::{Broker, BrokerError, Event};
use crate::lock;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the broker should be subscribed to. Shared by the hub (which
/// changes it) and the reconciler (which acts on it).
pub struct Desired {
    state: Mutex<State>,
    /// Wakes the reconciler when there is work.
    changed: Notify,
    /// Channels wanted regardless of connections (broadcast, the canary).
    fixed: Vec<Box<str>>,
}

#[derive(Default)]
struct State {
    /// Channels with local members.
    wanted: HashSet<Box<str>>,
    /// Work for the next round.
    round: Round,
}

/// One round's work: channels whose subscription may need to change, the
/// connections waiting for theirs, and whether everything must be redone.
#[derive(Default)]
struct Round {
    dirty: HashSet<Box<str>>,
    waiters: Vec<oneshot::Sender<()>>,
    resync: bool,
}

impl Desired {
    /// Nothing is subscribed until the broker's first connect, which is a
    /// [`Desired::resync`] like every reconnect.
    pub fn new(fixed: Vec<Box<str>>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            fixed,
        })
    }

    /// `channel` got its first local member.
    pub fn want(&self, channel: &str) {
        let mut state = lock(&self.state);
        state.wanted.insert(channel.into());
        state.round.dirty.insert(channel.into());
        drop(state);
        self.changed.notify_one();
    }

    /// `channel` lost its last local member.
    pub fn unwant(&self, channel: &str) {
        let mut state = lock(&self.state);
        state.wanted.remove(channel);
        state.round.dirty.insert(channel.into());
        drop(state);
        self.changed.notify_one();
    }

    /// Resolves once a round has confirmed `channels` subscribed (if they
    /// are still wanted then): a message published afterwards arrives.
    pub fn confirmation(&self, channels: &[Box<str>]) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut state = lock(&self.state);
        state.round.dirty.extend(channels.iter().cloned());
        state.round.waiters.push(tx);
        drop(state);
        self.changed.notify_one();
        rx
    }

    /// The broker lost its subscriptions (it reconnected): redo them all.
    pub fn resync(&self) {
        lock(&self.state).round.resync = true;
        self.changed.notify_one();
    }

    /// Takes the work queued since the last call; a resync puts every
    /// wanted channel in it.
    fn take(&self) -> Round {
        let mut state = lock(&self.state);
        let mut round = std::mem::take(&mut state.round);
        if round.resync {
            round.dirty.extend(state.wanted.iter().cloned());
            round.dirty.extend(self.fixed.iter().cloned());
        }
        round
    }

    /// Puts back the work of a failed round (a resync already moved every
    /// channel into its dirty set, so retrying it redoes everything).
    fn restore(&self, round: Round) {
        let mut state = lock(&self.state);
        state.round.dirty.extend(round.dirty);
        state.round.waiters.extend(round.waiters);
    }

    /// Whether `channel` is wanted now.
    pub fn is_wanted(&self, channel: &str) -> bool {
        self.wants(&lock(&self.state), channel)
    }

    /// Which of `channels` are wanted now (under one lock).
    fn wanted<'a>(&self, channels: &'a HashSet<Box<str>>) -> Vec<(&'a str, bool)> {
        let state = lock(&self.state);
        channels
            .iter()
            .map(|c| (&**c, self.wants(&state, c)))
            .collect()
    }

    /// The rule: a fixed channel, or one with local members.
    fn wants(&self, state: &State, channel: &str) -> bool {
        self.fixed.iter().any(|c| &**c == channel) || state.wanted.contains(channel)
    }
}

/// Runs until the dispatcher is gone.
pub(crate) async fn run(
    broker: Arc<dyn Broker>,
    desired: Arc<Desired>,
    events: mpsc::Sender<Event>,
) {
    let mut subscribed: HashSet<Box<str>> = HashSet::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        let round = desired.take();
        if round.resync {
            subscribed.clear();
            if events.send(Event::Reconnected).await.is_err() {
                return;
            }
        }
        if round.dirty.is_empty() && round.waiters.is_empty() {
            desired.changed.notified().await;
            continue;
        }
        match reconcile(broker.as_ref(), &desired, &mut subscribed, &round.dirty).await {
            Ok(newly) => {
                backoff = MIN_BACKOFF;
                if !newly.is_empty() && events.send(Event::Confirmed(newly)).await.is_err() {
                    return;
                }
                for waiter in round.waiters {
                    let _ = waiter.send(());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "subscription change failed; will retry");
                desired.restore(round);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Subscribes the wanted channels of `dirty` that are not subscribed and
/// unsubscribes the unwanted ones that are; returns the newly subscribed.
async fn reconcile(
    broker: &dyn Broker,
    desired: &Desired,
    subscribed: &mut HashSet<Box<str>>,
    dirty: &HashSet<Box<str>>,
) -> Result<Vec<Box<str>>, BrokerError> {
    let mut to_subscribe = Vec::new();
    let mut to_unsubscribe = Vec::new();
    for (channel, wanted) in desired.wanted(dirty) {
        match (wanted, subscribed.contains(channel)) {
            (true, false) => to_subscribe.push(channel.into()),
            (false, true) => to_unsubscribe.push(channel.into()),
            _ => {}
        }
    }
    if !to_subscribe.is_empty() {
        broker.subscribe(&to_subscribe).await?;
        subscribed.extend(to_subscribe.iter().cloned());
    }
    if !to_unsubscribe.is_empty() {
        broker.unsubscribe(&to_unsubscribe).await?;
        for channel in &to_unsubscribe {
            subscribed.remove(channel);
        }
    }
    Ok(to_subscribe)
}
