//! The one task that keeps the broker's subscriptions equal to what the hub
//! wants.
//!
//! It owns the set of channels the broker has confirmed. Each round takes the
//! hub's dirty channels, subscribes the wanted ones it lacks and unsubscribes
//! the unwanted ones it has, in one command each, then releases the
//! connections waiting for their channels. Because only this task talks to
//! the broker about subscriptions, commands cannot overtake each other; and
//! because it compares with the hub's *current* membership, any interleaving
//! of connects and disconnects ends in the right set. Failures are retried
//! with backoff; a broker reconnect empties the set and redoes everything
//! (fred only logs failed resubscriptions, so we do not rely on it).

use crate::broker::{Broker, BrokerError};
use crate::hub::{Hub, Pending};
use crate::resume;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until the process ends. `fixed` are channels wanted regardless of
/// connections (broadcast, the canary).
pub async fn run(hub: Hub, broker: Arc<dyn Broker>, fixed: Vec<Box<str>>) {
    let mut subscribed: HashSet<Box<str>> = HashSet::new();
    let mut backoff = MIN_BACKOFF;
    let mut catch_up_due = false;
    loop {
        let mut pending = hub.take_pending();
        if pending.resync {
            catch_up_due = true;
            subscribed.clear();
            pending.dirty.extend(hub.wanted_channels());
            pending.dirty.extend(fixed.iter().cloned());
        }
        if pending.dirty.is_empty() && pending.waiters.is_empty() {
            hub.pending_changed().await;
            continue;
        }
        match reconcile(&hub, broker.as_ref(), &fixed, &mut subscribed, &pending).await {
            Ok(()) => {
                backoff = MIN_BACKOFF;
                if std::mem::take(&mut catch_up_due) {
                    // Resubscribed: now the history can be read (see channel).
                    tokio::spawn(catch_up(hub.clone(), broker.clone()));
                }
                for waiter in pending.waiters {
                    let _ = waiter.send(());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "subscription change failed; will retry");
                // A resync already moved every channel into `dirty`, so
                // retrying the dirty set redoes it whole.
                hub.restore_pending(Pending {
                    resync: false,
                    ..pending
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Catches every recovering user channel up from its history.
async fn catch_up(hub: Hub, broker: Arc<dyn Broker>) {
    for channel in hub.recovering_channels() {
        let names = hub.names();
        let Some(user) = names.user_of(&channel) else {
            hub.catch_up(&channel, None);
            continue;
        };
        let key = names.history_key(user);
        let history = match broker.history(&key).await {
            Ok(entries) => Some(resume::parse(entries)),
            Err(e) => {
                tracing::warn!(error = %e, channel = &*channel, "history read failed; messages published while Redis was away are not delivered");
                None
            }
        };
        hub.catch_up(&channel, history);
    }
}

async fn reconcile(
    hub: &Hub,
    broker: &dyn Broker,
    fixed: &[Box<str>],
    subscribed: &mut HashSet<Box<str>>,
    pending: &Pending,
) -> Result<(), BrokerError> {
    let mut to_subscribe = Vec::new();
    let mut to_unsubscribe = Vec::new();
    let mut already = Vec::new();
    for channel in &pending.dirty {
        let wanted = fixed.contains(channel) || hub.wants(channel);
        match (wanted, subscribed.contains(channel)) {
            (true, false) => to_subscribe.push(channel.clone()),
            (true, true) => already.push(channel.clone()),
            (false, true) => to_unsubscribe.push(channel.clone()),
            (false, false) => {}
        }
    }
    if !to_subscribe.is_empty() {
        broker.subscribe(&to_subscribe).await?;
        subscribed.extend(to_subscribe.iter().cloned());
        already.extend(to_subscribe);
    }
    hub.confirm(&already);
    if !to_unsubscribe.is_empty() {
        broker.unsubscribe(&to_unsubscribe).await?;
        for channel in &to_unsubscribe {
            subscribed.remove(channel);
        }
    }
    Ok(())
}
