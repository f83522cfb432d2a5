//! A connection's deadlines, on one timer: the server's heartbeat (a Ping
//! every `ping_interval_secs`, a close when nothing arrived from the client
//! for `idle_timeout_secs`) and the token's expiry (TOKEN_EXPIRING 60 s
//! before `exp`, a close with 4001 at `exp` + leeway; SPEC §5).

use std::time::Duration;

/// The server's side of the heartbeat: a Ping every `interval`, and a close
/// when nothing arrived from the client for `idle`.
pub struct Heartbeat {
    interval: Duration,
    idle: Duration,
    next_ping: tokio::time::Instant,
    last_heard: tokio::time::Instant,
    expiry: Option<Expiry>,
}

/// How long before `exp` the client is told its token is expiring.
pub const EXPIRY_NOTICE: Duration = Duration::from_secs(60);

/// The token's deadlines.
struct Expiry {
    exp: u64,
    /// When TOKEN_EXPIRING is due; None once sent.
    notice_at: Option<tokio::time::Instant>,
    close_at: tokio::time::Instant,
}

/// What the heartbeat timer found due.
#[derive(Debug, PartialEq)]
pub enum Beat {
    Ping,
    Idle,
    /// Send TOKEN_EXPIRING with this `exp`.
    Expiring(u64),
    /// `exp` + leeway passed: close with 4001.
    Expired,
}

impl Heartbeat {
    pub fn new(interval: Duration, idle: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            interval,
            idle,
            next_ping: now + interval,
            last_heard: now,
            expiry: None,
        }
    }

    /// The token's expiry (seconds since the epoch; None: it never
    /// expires), replacing any earlier one. TOKEN_EXPIRING is told once per
    /// `exp`: a refresh to the same `exp` is not told again.
    pub fn expire_at(&mut self, exp: Option<u64>, leeway: Duration) {
        let told = self
            .expiry
            .as_ref()
            .filter(|e| e.notice_at.is_none())
            .map(|e| e.exp);
        self.expiry = exp.map(|exp| {
            let now = tokio::time::Instant::now();
            let left_ms = (exp * 1000).saturating_sub(crate::publish::unix_millis());
            let at_exp = now + Duration::from_millis(left_ms);
            let notice_at = at_exp.checked_sub(EXPIRY_NOTICE).unwrap_or(now).max(now);
            Expiry {
                exp,
                notice_at: (told != Some(exp)).then_some(notice_at),
                close_at: at_exp + leeway,
            }
        });
    }

    pub fn heard_from_client(&mut self) {
        self.last_heard = tokio::time::Instant::now();
    }

    pub fn next_deadline(&self) -> tokio::time::Instant {
        let heartbeat = self.next_ping.min(self.last_heard + self.idle);
        match &self.expiry {
            Some(e) => heartbeat
                .min(e.close_at)
                .min(e.notice_at.unwrap_or(e.close_at)),
            None => heartbeat,
        }
    }

    /// What is due at `now`; a ping due moves the next one an interval on.
    pub fn due(&mut self, now: tokio::time::Instant) -> Option<Beat> {
        if let Some(e) = &mut self.expiry {
            if now >= e.close_at {
                return Some(Beat::Expired);
            }
            if e.notice_at.is_some_and(|at| now >= at) {
                e.notice_at = None;
                return Some(Beat::Expiring(e.exp));
            }
        }
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

    #[tokio::test(start_paused = true)]
    async fn expiry_notice_then_close_and_a_refresh_moves_them() {
        let hour = Duration::from_secs(3600);
        let mut hb = Heartbeat::new(hour, hour);
        let start = tokio::time::Instant::now();
        let exp = crate::publish::unix_millis() / 1000 + 120;
        hb.expire_at(Some(exp), Duration::from_secs(5));
        let notice = hb.next_deadline();
        assert!(
            notice <= start + Duration::from_secs(60) && notice > start + Duration::from_secs(58)
        );
        assert_eq!(hb.due(notice), Some(Beat::Expiring(exp)));
        let close = hb.next_deadline();
        assert!(
            close > start + Duration::from_secs(123) && close <= start + Duration::from_secs(125)
        );
        assert_eq!(hb.due(close - Duration::from_secs(1)), None);
        // A refresh with a later exp moves both.
        hb.expire_at(Some(exp + 600), Duration::from_secs(5));
        assert_eq!(hb.due(close), None);
        hb.expire_at(None, Duration::from_secs(5));
        assert_eq!(hb.next_deadline(), start + hour);
        // A token that expires within the notice period is told at once.
        hb.expire_at(Some(exp - 100), Duration::ZERO);
        assert_eq!(hb.due(start), Some(Beat::Expiring(exp - 100)));
    }

    /// A refresh to a token with the same `exp` (a backend that hands out
    /// the same token again) is not told again: a client that refreshes on
    /// every TOKEN_EXPIRING would loop until `exp`.
    #[tokio::test(start_paused = true)]
    async fn a_refresh_to_the_same_exp_is_not_told_twice() {
        let hour = Duration::from_secs(3600);
        let mut hb = Heartbeat::new(hour, hour);
        let start = tokio::time::Instant::now();
        let exp = crate::publish::unix_millis() / 1000 + 30;
        hb.expire_at(Some(exp), Duration::from_secs(5));
        assert_eq!(hb.due(start), Some(Beat::Expiring(exp)));
        hb.expire_at(Some(exp), Duration::from_secs(5));
        assert_eq!(hb.due(start), None, "told once per exp");
        // A later exp, still within the notice, is told.
        hb.expire_at(Some(exp + 10), Duration::from_secs(5));
        assert_eq!(hb.due(start), Some(Beat::Expiring(exp + 10)));
    }
}
