//! Resume without gap or duplicate (SPEC §4): merging a user's history list
//! with the live stream.
//!
//! The order of events is what makes it exact: the gateway subscribes first,
//! then reads the history. Every message is therefore in the history read,
//! in the live stream, or in both; and the ones in both are exactly those
//! published between the subscription and the read. The canonical publish
//! path appends and publishes in one transaction, so the live stream comes
//! in history order: the duplicates are a prefix of it, ending at the last
//! message of the history read. So:
//!
//! - replay = the history entries after the client's last id;
//! - then live, skipping ids that were replayed, until the last replayed id
//!   shows up live (or a time limit passes: it never shows up when it was
//!   published before the subscription, and then there are no duplicates).

use crate::protocol::{validate_published, Published};
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long live messages are checked against a replay at most. Long enough
/// for any message published before the history read to arrive live.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(30);

/// What to replay after a given id.
#[derive(Debug, PartialEq)]
pub struct Replay {
    /// Whether the id was found (false: trimmed, expired or unknown).
    pub recovered: bool,
    /// The messages after it, oldest first.
    pub messages: Vec<Arc<Published>>,
}

/// Parses a history list (oldest first) into messages, skipping entries that
/// are not valid messages (they were never delivered live either).
pub fn parse(history: Vec<Bytes>) -> Vec<Arc<Published>> {
    history
        .into_iter()
        .filter_map(|entry| validate_published(entry).ok().map(Arc::new))
        .collect()
}

/// The messages of `history` after the one with id `since`, each id once.
///
/// A publish retried after a timeout (SPEC §7) can leave one id twice in
/// the history: the replay starts after its *first* occurrence (starting
/// after the last could skip what came between) and sends every id once.
pub fn after(history: &[Arc<Published>], since: &str) -> Replay {
    match history.iter().position(|m| m.id.as_deref() == Some(since)) {
        Some(i) => Replay {
            recovered: true,
            messages: unique(&history[i + 1..], since),
        },
        None => Replay {
            recovered: false,
            messages: Vec::new(),
        },
    }
}

/// `messages` without repeated ids and without `seen`, in order.
fn unique(messages: &[Arc<Published>], seen: &str) -> Vec<Arc<Published>> {
    let mut ids: HashSet<&str> = HashSet::from([seen]);
    messages
        .iter()
        .filter(|m| m.id.as_deref().is_none_or(|id| ids.insert(id)))
        .cloned()
        .collect()
}

/// Filters live messages that a replay already delivered.
#[derive(Debug)]
pub struct Dedupe {
    ids: HashSet<Arc<str>>,
    last: Arc<str>,
    until: Instant,
}

impl Dedupe {
    /// A filter for the live stream after `replayed`; None when nothing was
    /// replayed (nothing can be duplicated).
    pub fn after_replay(replayed: &[Arc<Published>], window: Duration) -> Option<Self> {
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
    pub fn is_duplicate(&mut self, message: &Published) -> bool {
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
    pub fn finished(&self) -> bool {
        self.ids.is_empty() || Instant::now() >= self.until
    }
}

/// Whether a live message is to be skipped as a duplicate of a replay;
/// drops the filter once it is finished. Call for each live message in order.
pub fn skip(dedupe: &mut Option<Box<Dedupe>>, message: &Published) -> bool {
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
        let mut dedupe = Dedupe::after_replay(&replay.messages, DEDUPE_WINDOW).map(Box::new);
        for m in live {
            if !skip(&mut dedupe, m) {
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
