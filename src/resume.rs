//! Resume without gap or duplicate (SPEC §4): where a client (or, after a
//! Redis reconnect, a channel) left off in a user's history, and merging
//! the replay with the live stream. The client's `since` resume and the
//! channel catch-up both use [`replay`] and [`Dedupe`]; SSE's
//! `Last-Event-ID` and Socket.IO's offset will too.
//!
//! The order of events is what makes it exact: the gateway subscribes first
//! (confirmed by Redis), then reads the history. Every message is therefore
//! in the history read, in the live stream, or in both; and the ones in both
//! are exactly those published between the subscription and the read. The
//! canonical publish path appends and publishes in one transaction, so the
//! live stream comes in history order: the duplicates are a prefix of it,
//! ending at the last message of the history read. So:
//!
//! - replay = the history entries after the resume point;
//! - then live, skipping ids that were replayed, until the last replayed id
//!   shows up live (or a time limit passes: it never shows up when it was
//!   published before the subscription, and then there are no duplicates).
//!
//! The resume point is the id of the last message seen, on any channel. A
//! broadcast's id is not in the user's history; when the id is not found
//! but is a ULID (or, for a channel, its last message had a `ts`), the point
//! is placed by time: every entry newer than it, looking back
//! [`CLOCK_SKEW`] more, so that nothing is skipped for a publisher's clock
//! being ahead; what comes a second time clients drop by id.

use crate::protocol::{validate_published, Published};
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long live messages are checked against a replay at most. Long enough
/// for any message published before the history read to arrive live.
const DEDUPE_WINDOW: Duration = Duration::from_secs(30);

/// How far the time rule looks back beyond the resume point's time: the
/// clock skew allowed between publishers and gateways.
pub const CLOCK_SKEW_MS: u64 = 2_000;

/// What to replay after a resume point.
#[derive(Debug, PartialEq)]
pub struct Replay {
    /// Whether the history reaches back to the point: false when it was
    /// trimmed or expired past it, or the point cannot be placed.
    pub recovered: bool,
    /// The messages after it, oldest first, each id once.
    pub messages: Vec<Arc<Published>>,
}

/// Where a stream was left: the id of the last message seen, and its time
/// (ms since the epoch) when known.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub id: Option<Arc<str>>,
    pub time_ms: Option<u64>,
}

impl Point {
    /// A client's `since`: placed by its ULID time when not found.
    pub fn since(id: &str) -> Self {
        Self {
            id: Some(id.into()),
            time_ms: ulid_ms(id),
        }
    }

    /// Just after `message` (its ULID time, else its `ts`).
    pub fn after(message: &Published) -> Self {
        Self {
            id: message.id.clone(),
            time_ms: time_of(message),
        }
    }

    /// A moment with no message yet (a channel's creation).
    pub fn at(time_ms: u64) -> Self {
        Self {
            id: None,
            time_ms: Some(time_ms),
        }
    }
}

/// How old a history may be: lists expire `ttl_ms` after their last write.
#[derive(Debug, Clone, Copy)]
pub struct Horizon {
    pub now_ms: u64,
    pub ttl_ms: u64,
}

/// The time of a ULID id, in ms since the epoch.
fn ulid_ms(id: &str) -> Option<u64> {
    ulid::Ulid::from_string(id).ok().map(|u| u.timestamp_ms())
}

/// When a message was published: its ULID id's time, else its `ts`.
fn time_of(message: &Published) -> Option<u64> {
    message.id.as_deref().and_then(ulid_ms).or(message.ts)
}

/// What to replay from `history` (oldest first) after `from`: the entries
/// after its id when the history has it, else those placed at or after its
/// time minus [`CLOCK_SKEW_MS`] (entries that have neither a ULID id nor a
/// `ts` cannot be placed and are left out).
pub fn replay(history: &[Arc<Published>], from: &Point, horizon: Horizon) -> Replay {
    if let Some(id) = &from.id {
        let found = after(history, id);
        if found.recovered {
            return found;
        }
    }
    let Some(time_ms) = from.time_ms else {
        return Replay {
            recovered: false,
            messages: Vec::new(),
        };
    };
    let cutoff = time_ms.saturating_sub(CLOCK_SKEW_MS);
    let newer: Vec<_> = history
        .iter()
        .filter(|m| time_of(m).is_some_and(|t| t >= cutoff))
        .cloned()
        .collect();
    let recovered = match history.iter().find_map(|m| time_of(m)) {
        Some(oldest) => oldest <= time_ms,
        None if history.is_empty() => horizon.now_ms.saturating_sub(time_ms) < horizon.ttl_ms,
        None => false,
    };
    Replay {
        recovered,
        messages: unique(&newer, from.id.as_deref()),
    }
}

/// Parses a history list (oldest first) into messages, skipping entries that
/// are not valid messages (they were never delivered live either).
pub fn parse(history: Vec<Bytes>) -> Vec<Arc<Published>> {
    history
        .into_iter()
        .filter_map(|entry| validate_published(entry).ok().map(Arc::new))
        .collect()
}

/// The messages of `history` after the one with id `since`, each id once;
/// not recovered when the id is not there.
///
/// A publish retried after a timeout (SPEC §7) can leave one id twice in
/// the history: the replay starts after its *first* occurrence (starting
/// after the last could skip what came between) and sends every id once.
fn after(history: &[Arc<Published>], since: &str) -> Replay {
    match history.iter().position(|m| m.id.as_deref() == Some(since)) {
        Some(i) => Replay {
            recovered: true,
            messages: unique(&history[i + 1..], Some(since)),
        },
        None => Replay {
            recovered: false,
            messages: Vec::new(),
        },
    }
}

/// `messages` without repeated ids and without `seen`, in order.
fn unique(messages: &[Arc<Published>], seen: Option<&str>) -> Vec<Arc<Published>> {
    let mut ids: HashSet<&str> = seen.into_iter().collect();
    messages
        .iter()
        .filter(|m| m.id.as_deref().is_none_or(|id| ids.insert(id)))
        .cloned()
        .collect()
}

/// Filters live messages that a replay already delivered.
#[derive(Debug)]
struct Dedupe {
    ids: HashSet<Arc<str>>,
    last: Arc<str>,
    until: Instant,
}

impl Dedupe {
    /// A filter for the live stream after `replayed`; None when nothing was
    /// replayed (nothing can be duplicated).
    fn after_replay(replayed: &[Arc<Published>], window: Duration) -> Option<Self> {
        let ids: HashSet<Arc<str>> = replayed.iter().filter_map(|m| m.id.clone()).collect();
        let last = replayed.iter().rev().find_map(|m| m.id.clone())?;
        Some(Self {
            ids,
            last,
            until: Instant::now() + window,
        })
    }

    /// True if `message` was already replayed. Call for each live message
    /// in order; once `finished`, drop the filter.
    fn is_duplicate(&mut self, message: &Published) -> bool {
        let Some(id) = &message.id else {
            return false;
        };
        if !self.ids.contains(id) {
            return false;
        }
        if *id == self.last {
            // Everything live from now on was published after the read.
            self.ids.clear();
        }
        true
    }

    /// The filter has nothing left to do.
    fn finished(&self) -> bool {
        self.ids.is_empty() || Instant::now() >= self.until
    }
}

/// Live messages around a replay, the one hold-then-dedupe rule of both a
/// client's resume (each connection's wire) and a channel's catch-up after
/// a reconnect: while the replay is being prepared, live messages are held;
/// once it is out, the held ones and later ones pass, minus the replay's
/// duplicates.
#[derive(Debug, Default)]
pub struct Gate {
    held: Option<Vec<Arc<Published>>>,
    dedupe: Option<Box<Dedupe>>,
}

/// What the gate does with a live message.
#[derive(Debug, PartialEq)]
pub enum Admit {
    /// Kept until [`Gate::open`].
    Held,
    /// Already sent by the replay: drop it.
    Duplicate,
    Pass,
}

impl Gate {
    /// A gate that holds from the start.
    pub fn holding() -> Self {
        Self {
            held: Some(Vec::new()),
            dedupe: None,
        }
    }

    /// Starts holding (a hold under way keeps what it has).
    pub fn hold(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// How many messages are held.
    pub fn held(&self) -> usize {
        self.held.as_ref().map_or(0, Vec::len)
    }

    /// Nothing held and nothing to filter: every message passes.
    pub fn is_clear(&self) -> bool {
        self.held.is_none() && self.dedupe.is_none()
    }

    /// Decides a live message; call for each in order.
    pub fn admit(&mut self, message: &Arc<Published>) -> Admit {
        if let Some(held) = &mut self.held {
            held.push(message.clone());
            return Admit::Held;
        }
        if skip(&mut self.dedupe, message) {
            Admit::Duplicate
        } else {
            Admit::Pass
        }
    }

    /// Ends the hold once `replayed` is out: returns the held messages, to
    /// be admitted again in order (the replay's duplicates then drop).
    pub fn open(&mut self, replayed: &[Arc<Published>]) -> Vec<Arc<Published>> {
        self.dedupe = Dedupe::after_replay(replayed, DEDUPE_WINDOW).map(Box::new);
        self.held.take().unwrap_or_default()
    }

    /// Ends the hold without a replay (it took too long): returns the held
    /// messages; the filter of an earlier replay stays.
    pub fn abandon(&mut self) -> Vec<Arc<Published>> {
        self.held.take().unwrap_or_default()
    }

    /// Drops what is held (the connection is closing).
    pub fn discard(&mut self) {
        self.held = None;
    }
}

/// Whether a live message is to be skipped as a duplicate of a replay;
/// drops the filter once it is finished. Call for each live message in order.
fn skip(dedupe: &mut Option<Box<Dedupe>>, message: &Published) -> bool {
    let Some(filter) = dedupe else {
        return false;
    };
    let duplicate = filter.is_duplicate(message);
    if filter.finished() {
        *dedupe = None;
    }
    duplicate
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(id: u32) -> Arc<Published> {
        let text = format!(r#"{{"type":"SEQ","id":"m{id}"}}"#);
        Arc::new(validate_published(Bytes::from(text)).unwrap())
    }

    fn ids(messages: &[Arc<Published>]) -> Vec<String> {
        messages
            .iter()
            .map(|m| m.id.as_deref().unwrap_or("-").to_string())
            .collect()
    }

    #[test]
    fn replay_after_an_id() {
        let history: Vec<_> = (0..5).map(message).collect();
        let r = after(&history, "m2");
        assert!(r.recovered);
        assert_eq!(ids(&r.messages), vec!["m3", "m4"]);
        let r = after(&history, "m4");
        assert!(r.recovered && r.messages.is_empty());
        let r = after(&history, "gone");
        assert!(!r.recovered && r.messages.is_empty());
    }

    /// A message with a ULID id of time `ms`.
    fn at(ms: u64) -> Arc<Published> {
        let id = ulid::Ulid::from_parts(ms, u128::from(ms)).to_string();
        let text = format!(r#"{{"type":"SEQ","id":"{id}"}}"#);
        Arc::new(validate_published(Bytes::from(text)).unwrap())
    }

    fn ulid_at(ms: u64) -> String {
        ulid::Ulid::from_parts(ms, 7).to_string()
    }

    const NOW: Horizon = Horizon {
        now_ms: 100_000,
        ttl_ms: 50_000,
    };

    #[test]
    fn an_unknown_ulid_is_placed_by_time_with_the_skew_margin() {
        let history: Vec<_> = [10_000, 20_000, 21_000, 23_000].map(at).to_vec();
        // A broadcast seen at 22 s: from 20 s on (2 s look-back).
        let r = replay(&history, &Point::since(&ulid_at(22_000)), NOW);
        assert!(r.recovered, "the history reaches back to 22 s");
        assert_eq!(r.messages, history[1..]);
        // Older than the oldest entry: everything, but not recovered.
        let r = replay(&history, &Point::since(&ulid_at(5_000)), NOW);
        assert!(!r.recovered);
        assert_eq!(r.messages, history);
        // An id that is neither found nor a ULID cannot be placed.
        let r = replay(&history, &Point::since("gone"), NOW);
        assert!(!r.recovered && r.messages.is_empty());
    }

    #[test]
    fn entries_are_placed_by_ulid_else_ts_else_not_at_all() {
        let entry =
            |text: &str| Arc::new(validate_published(Bytes::from(text.to_string())).unwrap());
        let history = vec![
            entry(r#"{"type":"A","id":"a","ts":30000}"#),
            entry(r#"{"type":"B","id":"b"}"#),
            at(31_000),
        ];
        let r = replay(&history, &Point::since(&ulid_at(29_000)), NOW);
        assert_eq!(ids(&r.messages), ["a", &*history[2].id.clone().unwrap()]);
        assert!(!r.recovered, "the oldest entry (30 s) is newer than 29 s");
    }

    #[test]
    fn an_entry_with_an_empty_id_is_replayed_after_a_point_without_one() {
        // Found by fuzz/resume: a point without an id (a channel's creation,
        // or after a message without one) drops entries whose id is "".
        let entry = r#"{"type":"A","id":"","ts":30000}"#;
        let history = vec![Arc::new(validate_published(Bytes::from(entry)).unwrap())];
        let r = replay(&history, &Point::at(29_000), NOW);
        assert_eq!(ids(&r.messages), [""]);
    }

    #[test]
    fn an_empty_history_reaches_back_within_its_ttl() {
        let young = Point::since(&ulid_at(NOW.now_ms - 1_000));
        assert!(replay(&[], &young, NOW).recovered);
        let old = Point::since(&ulid_at(NOW.now_ms - NOW.ttl_ms - 1));
        assert!(!replay(&[], &old, NOW).recovered);
    }

    #[test]
    fn a_retried_publish_is_replayed_once() {
        // m1 retried after a timeout: in the history twice, m2 between.
        let history: Vec<_> = [0, 1, 2, 1, 3].into_iter().map(message).collect();
        assert_eq!(ids(&after(&history, "m0").messages), ["m1", "m2", "m3"]);
        assert_eq!(ids(&after(&history, "m1").messages), ["m2", "m3"]);
    }

    #[test]
    fn invalid_history_entries_are_skipped() {
        let parsed = parse(vec![
            Bytes::from_static(br#"{"type":"A","id":"1"}"#),
            Bytes::from_static(b"junk"),
            Bytes::from_static(br#"{"type":"B","id":"2"}"#),
        ]);
        assert_eq!(ids(&parsed), vec!["1", "2"]);
    }

    #[test]
    fn dedupe_ends_at_the_last_replayed_id() {
        let replayed: Vec<_> = (3..6).map(message).collect();
        let mut d = Dedupe::after_replay(&replayed, DEDUPE_WINDOW).unwrap();
        assert!(d.is_duplicate(&message(4)));
        assert!(!d.finished());
        assert!(d.is_duplicate(&message(5)));
        assert!(d.finished());
        assert!(Dedupe::after_replay(&[], DEDUPE_WINDOW).is_none());
    }

    /// What a client receives: the replay, then the live stream filtered.
    fn merged(
        snapshot: &[Arc<Published>],
        since: &str,
        live: &[Arc<Published>],
    ) -> (bool, Vec<String>) {
        let replay = after(snapshot, since);
        let mut out = replay.messages.clone();
        // Live messages may arrive before the replay is out (held) or after.
        let (early, late) = live.split_at(live.len() / 2);
        let mut gate = Gate::holding();
        for m in early {
            assert_eq!(gate.admit(m), Admit::Held);
        }
        for m in gate.open(&replay.messages).iter().chain(late) {
            if gate.admit(m) == Admit::Pass {
                out.push(m.clone());
            }
        }
        (replay.recovered, ids(&out))
    }

    proptest! {
        /// Messages 0..n are published in order. The client has seen up to
        /// `seen`; the new connection subscribes after message `sub` was
        /// published and reads the history after message `read` (sub <= read),
        /// which holds the newest `keep` messages. Live = everything after
        /// `sub`. The client must get every message after `seen`, once, in
        /// order, whenever the history still holds `seen`.
        #[test]
        fn no_gap_no_duplicate(
            n in 1u32..60,
            seen_frac in 0.0f64..1.0,
            sub_frac in 0.0f64..1.0,
            read_frac in 0.0f64..1.0,
            keep in 1usize..80,
        ) {
            let all: Vec<_> = (0..n).map(message).collect();
            let seen = ((n - 1) as f64 * seen_frac) as u32;
            let sub = seen + ((n - 1 - seen) as f64 * sub_frac) as u32;
            let read = sub + ((n - 1 - sub) as f64 * read_frac) as u32;
            let published = &all[..=read as usize];
            let snapshot = &published[published.len().saturating_sub(keep)..];
            let live = &all[sub as usize + 1..];
            let (recovered, got) = merged(snapshot, &format!("m{seen}"), live);
            let in_history = snapshot.iter().any(|m| m.id.as_deref() == Some(&*format!("m{seen}")));
            prop_assert_eq!(recovered, in_history);
            if recovered {
                let expected: Vec<String> = (seen + 1..n).map(|i| format!("m{i}")).collect();
                prop_assert_eq!(got, expected);
            } else {
                // Not recoverable: live only, still without duplicates.
                prop_assert_eq!(got, ids(live));
            }
        }
    }
}
