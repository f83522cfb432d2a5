//! One broker channel's local state: its members, where its stream stands,
//! and the catch-up after a broker reconnect (SPEC §4).
//!
//! While the gateway's Redis connection is down, nothing arrives; the
//! backend may still write history (to a failed-over primary, say). On
//! reconnect every user channel enters *recovery*: once resubscribed, live
//! messages are held back while the history is read; then the messages
//! published after the channel's last relayed one are relayed, then the held
//! ones, skipping duplicates (the same reasoning as a client's `since`
//! resume, see [`history`](crate::history)). Clients see one ordered stream
//! with no gap and no duplicate.

use crate::history::{self, Dedupe, DEDUPE_WINDOW};
use crate::outbox::{Outbox, Push};
use crate::protocol::Published;
use std::collections::HashMap;
use std::sync::Arc;

/// Live messages held at most during one recovery; past that the recovery
/// is abandoned (logged) rather than holding memory without bound.
const MAX_HELD: usize = 10_000;

pub type ConnId = u64;

pub struct Channel {
    pub members: HashMap<ConnId, Arc<Outbox>>,
    /// True once the broker confirmed the subscription.
    pub confirmed: bool,
    /// The last message relayed here: where a catch-up resumes.
    position: Position,
    /// From a broker reconnect until the catch-up.
    recovery: Option<Box<Recovery>>,
    /// After a catch-up: live messages it already relayed.
    dedupe: Option<Box<Dedupe>>,
}

/// Where a channel's stream stands.
#[derive(Clone, Debug)]
struct Position {
    /// Id of the last relayed message that had one.
    id: Option<Arc<str>>,
    /// Its `ts` (or when the channel was created), in ms since the epoch:
    /// the fallback when the id is no longer in the history (Redis
    /// restarted empty, or the list was trimmed past it).
    ts_ms: u64,
}

struct Recovery {
    from: Position,
    held: Vec<Arc<Published>>,
}

/// How many slow consumers a fan-out found (they are closing with 4008).
pub type Overflowed = u64;

impl Channel {
    pub fn new(now_ms: u64) -> Self {
        Self {
            members: HashMap::new(),
            confirmed: false,
            position: Position {
                id: None,
                ts_ms: now_ms,
            },
            recovery: None,
            dedupe: None,
        }
    }

    /// Relays a live message to the members (or holds it during recovery).
    pub fn relay(&mut self, message: &Arc<Published>) -> Overflowed {
        if let Some(recovery) = &mut self.recovery {
            if recovery.held.len() < MAX_HELD {
                recovery.held.push(message.clone());
                return 0;
            }
            tracing::warn!("catch-up took too long; relaying live messages without it");
            let held = std::mem::take(&mut recovery.held);
            self.recovery = None;
            return self.relay_all(held) + self.relay(message);
        }
        if let Some(dedupe) = &mut self.dedupe {
            let duplicate = dedupe.is_duplicate(message);
            if dedupe.finished() {
                self.dedupe = None;
            }
            if duplicate {
                return 0;
            }
        }
        self.advance(message);
        fan_out(self.members.values(), message)
    }

    /// Moves the position past a relayed message.
    fn advance(&mut self, message: &Published) {
        if let Some(id) = &message.id {
            self.position = Position {
                id: Some(id.clone()),
                ts_ms: message.ts.unwrap_or(self.position.ts_ms),
            };
        }
    }

    fn relay_all(&mut self, messages: Vec<Arc<Published>>) -> Overflowed {
        messages.iter().map(|m| self.relay(m)).sum()
    }

    /// The broker reconnected: hold live messages until `catch_up`. A
    /// recovery already under way keeps its starting point.
    pub fn begin_recovery(&mut self) {
        if self.recovery.is_none() {
            self.recovery = Some(Box::new(Recovery {
                from: self.position.clone(),
                held: Vec::new(),
            }));
        }
    }

    pub fn is_recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// Ends a recovery with the channel's history (oldest first), read after
    /// resubscribing; `None` if it could not be read. Returns how many
    /// missed messages were relayed, and the slow consumers found.
    pub fn catch_up(&mut self, history: Option<&[Arc<Published>]>) -> (usize, Overflowed) {
        let Some(recovery) = self.recovery.take() else {
            return (0, 0);
        };
        let missed = history.map_or_else(Vec::new, |h| missed_since(h, &recovery.from));
        self.dedupe = Dedupe::after_replay(&missed, DEDUPE_WINDOW).map(Box::new);
        let mut overflowed = 0;
        for message in &missed {
            self.advance(message);
            overflowed += fan_out(self.members.values(), message);
        }
        overflowed += self.relay_all(recovery.held);
        (missed.len(), overflowed)
    }
}

/// The history entries after `from`: after its id when the history still
/// has it, else those at least as new by `ts` (entries without `ts` cannot
/// be placed and are left out).
fn missed_since(history: &[Arc<Published>], from: &Position) -> Vec<Arc<Published>> {
    if let Some(id) = &from.id {
        let replay = history::after(history, id);
        if replay.recovered {
            return replay.messages;
        }
    }
    history
        .iter()
        .filter(|m| m.ts.is_some_and(|ts| ts >= from.ts_ms) && m.id != from.id)
        .cloned()
        .collect()
}

/// Pushes one shared message into every outbox, without waiting.
pub fn fan_out<'a>(
    outboxes: impl Iterator<Item = &'a Arc<Outbox>>,
    message: &Arc<Published>,
) -> Overflowed {
    outboxes
        .filter(|outbox| outbox.push(message.clone()) == Push::Overflowed)
        .count() as Overflowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::validate_published;
    use bytes::Bytes;

    fn message(n: u64) -> Arc<Published> {
        let text = format!(r#"{{"type":"SEQ","id":"m{n}","ts":{}}}"#, 1000 + n);
        Arc::new(validate_published(Bytes::from(text)).unwrap())
    }

    fn received(outbox: &Outbox) -> Vec<String> {
        let mut batch = Vec::new();
        futures_util::FutureExt::now_or_never(outbox.take(&mut batch));
        batch
            .iter()
            .map(|m| m.id.as_deref().unwrap_or("-").to_string())
            .collect()
    }

    fn channel_with_member() -> (Channel, Arc<Outbox>) {
        let mut channel = Channel::new(0);
        let outbox = Arc::new(Outbox::new(1000));
        channel.members.insert(1, outbox.clone());
        (channel, outbox)
    }

    #[test]
    fn catch_up_relays_the_missed_then_the_held_without_duplicates() {
        let (mut channel, outbox) = channel_with_member();
        channel.relay(&message(0));
        channel.relay(&message(1));
        channel.begin_recovery();
        // Resubscribed: 4 and 5 arrive live before the history read; the
        // history read has 0..=4 (5 was published after it).
        channel.relay(&message(4));
        channel.relay(&message(5));
        let history: Vec<_> = (0..=4).map(message).collect();
        let (missed, _) = channel.catch_up(Some(&history));
        assert_eq!(missed, 3);
        channel.relay(&message(6));
        assert_eq!(
            received(&outbox),
            ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]
        );
    }

    #[test]
    fn catch_up_after_redis_restarted_empty_uses_ts() {
        let (mut channel, outbox) = channel_with_member();
        channel.relay(&message(10));
        channel.begin_recovery();
        // The new history starts later: m10 is gone, m11 and m12 are newer.
        let history: Vec<_> = (11..=12).map(message).collect();
        channel.catch_up(Some(&history));
        assert_eq!(received(&outbox), ["m10", "m11", "m12"]);
    }

    #[test]
    fn failed_history_read_still_releases_held_messages() {
        let (mut channel, outbox) = channel_with_member();
        channel.begin_recovery();
        channel.relay(&message(1));
        assert!(received(&outbox).is_empty(), "held during recovery");
        channel.catch_up(None);
        assert_eq!(received(&outbox), ["m1"]);
        assert!(!channel.is_recovering());
    }
}
