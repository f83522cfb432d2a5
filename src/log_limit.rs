//! Rate-limited log lines: at most one line per interval per key, and the
//! line that resumes logging says how many were suppressed before it. A
//! flood of the same event (refused handshakes, dropped publishes) then
//! costs a line a second, not one per event, and loses no count.

use crate::lock;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One limiter for a family of log lines, keyed by what tells them apart
/// (a reason). Keys must come from a fixed set: the map never shrinks.
pub struct LogLimit<K> {
    interval: Duration,
    /// Per key: when it was last logged and what was suppressed since.
    /// A std mutex: no await inside, one lookup per event.
    slots: Mutex<HashMap<K, Slot>>,
}

struct Slot {
    logged: Instant,
    suppressed: u64,
}

impl<K: Eq + Hash> LogLimit<K> {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Whether to log an event of `key` now: `Some(n)` with the number of
    /// events suppressed since its last line, or None to suppress this one.
    /// A key's first event is always logged.
    pub fn check(&self, key: K) -> Option<u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: K, now: Instant) -> Option<u64> {
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(&key) else {
            slots.insert(
                key,
                Slot {
                    logged: now,
                    suppressed: 0,
                },
            );
            return Some(0);
        };
        if now.saturating_duration_since(slot.logged) >= self.interval {
            slot.logged = now;
            Some(std::mem::take(&mut slot.suppressed))
        } else {
            slot.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_per_key_with_the_suppressed_count() {
        let limit = LogLimit::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limit.check_at("a", t0), Some(0), "the first is logged");
        assert_eq!(limit.check_at("b", t0), Some(0), "keys are apart");
        for ms in 1..=5 {
            assert_eq!(limit.check_at("a", t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.check_at("a", t0 + Duration::from_secs(1)), Some(5));
        assert_eq!(limit.check_at("a", t0 + Duration::from_secs(3)), Some(0));
        assert_eq!(limit.check_at("b", t0 + Duration::from_millis(999)), None);
    }
}
