//! One broker channel's local state: its members, where its stream stands,
//! and the catch-up after a broker reconnect (SPEC §4). It decides what to
//! deliver; the hub delivers it, outside its lock.
//!
//! While the gateway's Redis connection is down, nothing arrives; the
//! backend may still write history (to a failed-over primary, say). On
//! reconnect every user channel enters *recovery*: once resubscribed, live
//! messages are held back while the history is read; then the messages
//! published after the channel's last relayed one are relayed, then the held
//! ones, skipping duplicates (the same rule as a client's `since` resume,
//! see [`resume`](crate::resume)). Clients see one ordered stream with no
//! gap and no duplicate.

use crate::protocol::Published;
use crate::resume::{self, Admit, Gate, Horizon, Point};
use crate::wire::Wire;
use std::collections::HashMap;
use std::sync::Arc;

/// Live messages held at most during one recovery; past that the recovery
/// is abandoned (logged) rather than holding memory without bound.
const MAX_HELD: usize = 10_000;

pub type ConnId = u64;

/// Messages to deliver to a channel's members, in order.
pub type Deliveries = Vec<Arc<Published>>;

/// The wires a fan-out writes to.
pub type Recipients = Arc<[Arc<Wire>]>;

/// Connections of a channel (or of the whole instance), with a cached array
/// of them for fan-out: one `Arc` clone per message instead of one per
/// recipient. Rebuilt by the first fan-out after a change.
#[derive(Default)]
pub struct Members {
    map: HashMap<ConnId, Arc<Wire>>,
    snapshot: Option<Recipients>,
}

impl Members {
    pub fn insert(&mut self, id: ConnId, wire: Arc<Wire>) {
        self.map.insert(id, wire);
        self.snapshot = None;
    }

    /// Removes a member; false if it was not one.
    pub fn remove(&mut self, id: ConnId) -> bool {
        let removed = self.map.remove(&id).is_some();
        if removed {
            self.snapshot = None;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, id: ConnId) -> Option<&Arc<Wire>> {
        self.map.get(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Everyone, for a fan-out.
    pub fn recipients(&mut self) -> Recipients {
        let map = &self.map;
        self.snapshot
            .get_or_insert_with(|| map.values().cloned().collect())
            .clone()
    }
}

pub struct Channel {
    pub members: Members,
    /// The last message relayed here (or the channel's creation): where a
    /// catch-up resumes.
    position: Point,
    /// From a broker reconnect until the catch-up: where the channel stood.
    recovering_from: Option<Box<Point>>,
    /// Holds live messages during a recovery, then drops what the catch-up
    /// already relayed.
    gate: Gate,
}

impl Channel {
    pub fn new(now_ms: u64) -> Self {
        Self {
            members: Members::default(),
            position: Point::at(now_ms),
            recovering_from: None,
            gate: Gate::default(),
        }
    }

    /// Decides what a live message means for the members: itself, nothing
    /// (held during recovery, or a duplicate of the catch-up), or more.
    pub fn relay(&mut self, message: &Arc<Published>, out: &mut Deliveries) {
        match self.gate.admit(message) {
            Admit::Held if self.gate.held() > MAX_HELD => {
                tracing::warn!("catch-up took too long; relaying live messages without it");
                self.recovering_from = None;
                for m in self.gate.abandon() {
                    self.relay(&m, out);
                }
            }
            Admit::Held | Admit::Duplicate => {}
            Admit::Pass => {
                self.advance(message);
                out.push(message.clone());
            }
        }
    }

    /// Moves the position past a relayed message that has an id (one
    /// without cannot be found again), keeping the last known time for an
    /// id that has none: the fallback when the id is no longer in the
    /// history (Redis restarted empty, or the list was trimmed past it).
    fn advance(&mut self, message: &Published) {
        if message.id.is_some() {
            let time_ms = Point::after(message).time_ms.or(self.position.time_ms);
            self.position = Point {
                time_ms,
                ..Point::after(message)
            };
        }
    }

    /// The broker reconnected: hold live messages until `catch_up`. A
    /// recovery already under way keeps its starting point.
    pub fn begin_recovery(&mut self) {
        if self.recovering_from.is_none() {
            self.recovering_from = Some(Box::new(self.position.clone()));
        }
        self.gate.hold();
    }

    pub fn is_recovering(&self) -> bool {
        self.recovering_from.is_some()
    }

    /// Ends a recovery with the channel's history (oldest first), read after
    /// resubscribing; `None` if it could not be read. Adds the missed
    /// messages, then the held ones, to `out`; returns how many were missed.
    pub fn catch_up(&mut self, history: Option<&[Arc<Published>]>, out: &mut Deliveries) -> usize {
        let Some(from) = self.recovering_from.take() else {
            return 0;
        };
        let missed = history.map_or_else(Vec::new, |h| missed_since(h, &from));
        for message in &missed {
            self.advance(message);
        }
        let held = self.gate.open(&missed);
        let count = missed.len();
        out.extend(missed);
        for message in &held {
            self.relay(message, out);
        }
        count
    }
}

/// The history entries after `from`, by the client's resume rule.
fn missed_since(history: &[Arc<Published>], from: &Point) -> Vec<Arc<Published>> {
    // Expiry does not matter here: a channel's position is never older
    // than this process.
    let horizon = Horizon {
        now_ms: 0,
        ttl_ms: u64::MAX,
    };
    let replay = resume::replay(history, from, horizon);
    if !replay.recovered {
        tracing::warn!(
            "the history no longer reaches back to where the channel was; \
             messages published while Redis was away may be missing"
        );
    }
    replay.messages
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

    fn ids(out: &Deliveries) -> Vec<&str> {
        out.iter().map(|m| m.id.as_deref().unwrap_or("-")).collect()
    }

    #[test]
    fn catch_up_relays_the_missed_then_the_held_without_duplicates() {
        let mut channel = Channel::new(0);
        let mut out = Vec::new();
        channel.relay(&message(0), &mut out);
        channel.relay(&message(1), &mut out);
        channel.begin_recovery();
        // Resubscribed: 4 and 5 arrive live before the history read; the
        // history read has 0..=4 (5 was published after it).
        channel.relay(&message(4), &mut out);
        channel.relay(&message(5), &mut out);
        let history: Vec<_> = (0..=4).map(message).collect();
        assert_eq!(channel.catch_up(Some(&history), &mut out), 3);
        channel.relay(&message(6), &mut out);
        assert_eq!(ids(&out), ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]);
    }

    #[test]
    fn catch_up_after_redis_restarted_empty_uses_ts() {
        let mut channel = Channel::new(0);
        let mut out = Vec::new();
        channel.relay(&message(10), &mut out);
        channel.begin_recovery();
        // The new history starts later: m10 is gone, m11 and m12 are newer.
        let history: Vec<_> = (11..=12).map(message).collect();
        channel.catch_up(Some(&history), &mut out);
        assert_eq!(ids(&out), ["m10", "m11", "m12"]);
    }

    #[test]
    fn failed_history_read_still_releases_held_messages() {
        let mut channel = Channel::new(0);
        let mut out = Vec::new();
        channel.begin_recovery();
        channel.relay(&message(1), &mut out);
        assert!(out.is_empty(), "held during recovery");
        channel.catch_up(None, &mut out);
        assert_eq!(ids(&out), ["m1"]);
        assert!(!channel.is_recovering());
    }
}
