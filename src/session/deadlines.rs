//! A connection's deadlines: the server's heartbeat (a Ping every
//! `ping_interval_secs`, a close when nothing arrived from the client for
//! `idle_timeout_secs`), on one timer. The token's expiry comes here next.

use std::time::Duration;

/// The server's side of the heartbeat: a Ping every `interval`, and a close
/// when nothing arrived from the client for `idle`.
pub struct Heartbeat {
    interval: Duration,
    idle: Duration,
    next_ping: tokio::time::Instant,
    last_heard: tokio::time::Instant,
}

/// What the heartbeat timer found due.
#[derive(Debug, PartialEq)]
pub enum Beat {
    Ping,
    Idle,
}

impl Heartbeat {
    pub fn new(interval: Duration, idle: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            interval,
            idle,
            next_ping: now + interval,
            last_heard: now,
        }
    }

    pub fn heard_from_client(&mut self) {
        self.last_heard = tokio::time::Instant::now();
    }

    pub fn next_deadline(&self) -> tokio::time::Instant {
        self.next_ping.min(self.last_heard + self.idle)
    }

    /// What is due at `now`; a ping due moves the next one an interval on.
    pub fn due(&mut self, now: tokio::time::Instant) -> Option<Beat> {
        if now >= self.last_heard + self.idle {
            return Some(Beat::Idle);
        }
        if now >= self.next_ping {
            // After a long write, one ping, not a burst of missed ones.
            self.next_ping = now + self.interval;
            return Some(Beat::Ping);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn heartbeat_pings_and_times_out() {
        let mut hb = Heartbeat::new(Duration::from_secs(2), Duration::from_secs(5));
        let start = tokio::time::Instant::now();
        assert_eq!(hb.next_deadline(), start + Duration::from_secs(2));
        assert_eq!(hb.due(start + Duration::from_secs(1)), None);
        assert_eq!(hb.due(start + Duration::from_secs(2)), Some(Beat::Ping));
        assert_eq!(hb.next_deadline(), start + Duration::from_secs(4));
        tokio::time::advance(Duration::from_secs(3)).await;
        hb.heard_from_client();
        assert_eq!(hb.due(start + Duration::from_secs(6)), Some(Beat::Ping));
        assert_eq!(hb.due(start + Duration::from_secs(7)), None);
        assert_eq!(hb.due(start + Duration::from_secs(8)), Some(Beat::Idle));
    }
}
