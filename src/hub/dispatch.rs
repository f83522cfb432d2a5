//! The one task that delivers. It reads the broker's [`Events`] in order:
//! it fans live messages out, begins the channels' recovery when the broker
//! reconnects and ends it with a catch-up once they are resubscribed, and
//! hands canary echoes back. Every delivery to the wires comes from this
//! task, so their order is its loop's order: no lock orders them, and none
//! is held across a socket write. A catch-up's history read, which waits on
//! Redis, runs beside it and comes back to it as a message.
//!
//! The fan-out itself is [`Hub::dispatch`]: one non-blocking `writev` per
//! recipient for every message of the channel that was waiting.

use super::Hub;
use crate::broker::{Broker, Event, Events};
use crate::canary::Canary;
use crate::protocol::Published;
use crate::resume;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A channel's history, read for its catch-up (`None`: unreadable).
type CaughtUp = (Box<str>, Option<Vec<Arc<Published>>>);

/// Runs until the broker's events end.
pub async fn run(hub: Hub, mut events: Events, broker: Arc<dyn Broker>, canary: Arc<Canary>) {
    let (read_tx, mut read) = mpsc::channel::<CaughtUp>(64);
    let canary_channel = hub.names().canary.clone();
    // The first `Reconnected` is the first connect.
    let mut connected_before = false;
    loop {
        let event = tokio::select! {
            biased;
            Some((channel, history)) = read.recv() => {
                hub.catch_up(&channel, history);
                continue;
            }
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Event::Messages { channel, payloads }) if *channel == canary_channel => {
                payloads.iter().for_each(|p| canary.echoed(p));
            }
            Some(Event::Messages { channel, payloads }) => hub.dispatch(&channel, payloads),
            Some(Event::Lagged(missed)) => {
                hub.stats().broker_lagged.fetch_add(missed, Relaxed);
                tracing::error!(missed, "the Redis reader fell behind; messages were lost");
            }
            Some(Event::Reconnected) => {
                if std::mem::replace(&mut connected_before, true) {
                    hub.stats().broker_reconnects.fetch_add(1, Relaxed);
                }
                hub.begin_recovery();
            }
            Some(Event::Confirmed(channels)) => {
                let recovering = hub.recovering_among(&channels);
                if !recovering.is_empty() {
                    tokio::spawn(read_histories(
                        hub.clone(),
                        broker.clone(),
                        recovering,
                        read_tx.clone(),
                    ));
                }
            }
        }
    }
}

/// Reads the history of each recovering user channel, one at a time, and
/// hands it to the dispatcher.
async fn read_histories(
    hub: Hub,
    broker: Arc<dyn Broker>,
    channels: Vec<Box<str>>,
    done: mpsc::Sender<CaughtUp>,
) {
    for channel in channels {
        let history = match hub.names().user_of(&channel) {
            None => None,
            Some(user) => match broker.history(&hub.names().history_key(user)).await {
                Ok(entries) => Some(resume::parse(entries)),
                Err(e) => {
                    tracing::warn!(error = %e, channel = &*channel, "history read failed; messages published while Redis was away are not delivered");
                    None
                }
            },
        };
        if done.send((channel, history)).await.is_err() {
            return;
        }
    }
}
