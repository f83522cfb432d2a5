//! What a client may send (SPEC §5) and what it gets back: every client
//! command in one place (PING today; AUTH_REFRESH, SUBSCRIBE and
//! UNSUBSCRIBE next), with the client's rate limit and the strike count
//! that ends sustained abuse with 1008. Transport-neutral: a transport
//! hands it the client's text and sends the reply.

use crate::metrics::Stats;
use crate::protocol::{self, ClientMessage};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Refused client messages in a row (rate-limited or invalid) after which
/// the connection is closed with 1008.
const MAX_STRIKES: u32 = 10;

/// One connection's command handling.
pub struct Commands {
    budget: ClientBudget,
    /// Refused messages in a row.
    strikes: u32,
}

/// What a client's message comes to.
pub enum Verdict {
    /// Send this back.
    Reply(Utf8Bytes),
    /// Too many refused messages in a row: close with 1008.
    Abuse,
}

impl Commands {
    /// `rate`: client messages per second (bursts of twice that); 0 =
    /// unlimited.
    pub fn new(rate: u32) -> Self {
        Self {
            budget: ClientBudget::new(rate),
            strikes: 0,
        }
    }

    /// Handles one text message from the client, counted in `stats` by
    /// its type.
    pub fn handle(&mut self, text: &str, stats: &Stats) -> Verdict {
        let (reply, kind) = if self.budget.take() {
            answer(text)
        } else {
            let message = "too many messages; slow down";
            (protocol::error("rate_limited", message), Kind::RateLimited)
        };
        stats.client_messages.add(kind.label(), 1);
        let accepted = kind.is_accepted();
        self.strikes = if accepted { 0 } else { self.strikes + 1 };
        if self.strikes >= MAX_STRIKES {
            Verdict::Abuse
        } else {
            Verdict::Reply(reply)
        }
    }
}

/// What a client's message was, for `client_messages_total{type}`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Ping,
    Unknown,
    Invalid,
    RateLimited,
}

impl Kind {
    /// In the words of [`metrics::CLIENT_MESSAGE_TYPES`](crate::metrics::CLIENT_MESSAGE_TYPES).
    fn label(self) -> &'static str {
        match self {
            Kind::Ping => "PING",
            Kind::Unknown => "unknown",
            Kind::Invalid => "invalid",
            Kind::RateLimited => "rate_limited",
        }
    }

    /// Whether the message was valid (a refused one is a strike).
    fn is_accepted(self) -> bool {
        self == Kind::Ping
    }
}

/// The answer to a client's text message (SPEC §5), and what it was.
fn answer(text: &str) -> (Utf8Bytes, Kind) {
    match protocol::parse_client(text) {
        Ok(ClientMessage::Ping { ts }) => (protocol::pong(ts), Kind::Ping),
        Ok(ClientMessage::Unknown(kind)) => {
            let shown: String = kind.chars().take(64).collect();
            let message = format!("unknown message type {shown:?}");
            (protocol::error("unknown_type", &message), Kind::Unknown)
        }
        Err(e) => (protocol::error(e.code, &e.message), Kind::Invalid),
    }
}

/// A token bucket for the client's own messages: `rate` per second, bursts
/// of twice that. Two numbers per connection; no shared state.
struct ClientBudget {
    rate: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl ClientBudget {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self {
            rate,
            tokens: 2.0 * rate,
            last: tokio::time::Instant::now(),
        }
    }

    /// Takes one message from the budget; false when it is spent.
    fn take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(2.0 * self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn client_budget_allows_bursts_then_the_rate() {
        let mut budget = ClientBudget::new(5);
        assert_eq!(
            (0..10).filter(|_| budget.take()).count(),
            10,
            "burst = 2x rate"
        );
        assert!(!budget.take());
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!((0..10).filter(|_| budget.take()).count(), 2);
        let mut unlimited = ClientBudget::new(0);
        assert!((0..1000).all(|_| unlimited.take()));
    }

    #[test]
    fn ten_refused_messages_in_a_row_are_abuse() {
        let stats = Stats::default();
        let mut commands = Commands::new(0);
        for _ in 0..9 {
            assert!(matches!(commands.handle("nope", &stats), Verdict::Reply(_)));
        }
        assert!(matches!(
            commands.handle(r#"{"type":"PING"}"#, &stats),
            Verdict::Reply(_)
        ));
        for _ in 0..9 {
            assert!(matches!(commands.handle("nope", &stats), Verdict::Reply(_)));
        }
        assert!(matches!(commands.handle("nope", &stats), Verdict::Abuse));
        assert_eq!(stats.client_messages.get("invalid"), 19);
        assert_eq!(stats.client_messages.get("PING"), 1);
    }

    #[test]
    fn every_kind_is_a_counted_type() {
        let kinds = [Kind::Ping, Kind::Unknown, Kind::Invalid, Kind::RateLimited];
        let labels: Vec<&str> = kinds.iter().map(|k| k.label()).collect();
        assert_eq!(labels, crate::metrics::CLIENT_MESSAGE_TYPES);
    }
}
