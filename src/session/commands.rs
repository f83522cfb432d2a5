//! What a client may send (SPEC §5) and what it gets back: every client
//! command in one place, with the client's rate limit and the strike count
//! that ends sustained abuse with 1008. Transport-neutral: a transport
//! hands it the client's text and sends the reply. PING is answered here;
//! AUTH_REFRESH, SUBSCRIBE and UNSUBSCRIBE come back as an [`Action`] for
//! the session, which holds the identity and the rooms they change.

use crate::metrics::Stats;
use crate::protocol::{self, ClientMessage};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Strikes at which the connection is closed with 1008. A refused message
/// (rate-limited, invalid, forbidden) is a strike; strikes fade at
/// [`STRIKES_FORGIVEN_PER_SEC`], so an occasional mistake never adds up
/// while a flood does, however many accepted messages it mixes in.
const MAX_STRIKES: f64 = 10.0;
const STRIKES_FORGIVEN_PER_SEC: f64 = 1.0;

/// One connection's command handling.
pub struct Commands {
    budget: ClientBudget,
    strikes: Strikes,
}

/// What a client's message comes to.
pub enum Verdict {
    /// Send this back.
    Reply(Utf8Bytes),
    /// For the session to carry out.
    Act(Action),
    /// Too many refused messages: close with 1008.
    Abuse,
}

/// The commands that change what the connection is and receives.
#[derive(Debug, PartialEq)]
pub enum Action {
    Refresh { token: String },
    Subscribe { room: String },
    Unsubscribe { room: String },
}

impl Commands {
    /// `rate`: client messages per second (bursts of twice that); 0 =
    /// unlimited.
    pub fn new(rate: u32) -> Self {
        Self {
            budget: ClientBudget::new(rate),
            strikes: Strikes::default(),
        }
    }

    /// Handles one text message from the client, counted in `stats` by
    /// its type.
    pub fn handle(&mut self, text: &str, stats: &Stats) -> Verdict {
        let (verdict, kind) = if self.budget.take() {
            answer(text)
        } else {
            let message = "too many messages; slow down";
            let reply = protocol::error("rate_limited", message);
            (Verdict::Reply(reply), Kind::RateLimited)
        };
        stats.client_messages.add(kind.label(), 1);
        if kind.is_refused() && self.refused() {
            return Verdict::Abuse;
        }
        verdict
    }

    /// Handles one Socket.IO event (SPEC §11), counted like the `/ws`
    /// command it stands for; events the gateway does not know are ignored
    /// (counted as `unknown`, no strike: Socket.IO apps emit freely).
    /// `Err(true)`: refused, and that makes the client an abuser.
    pub fn socketio_event(
        &mut self,
        name: &str,
        args: &[serde_json::Value],
        stats: &Stats,
    ) -> Result<Option<Action>, (&'static str, bool)> {
        if !self.budget.take() {
            stats.client_messages.add(Kind::RateLimited.label(), 1);
            return Err(("rate_limited", self.refused()));
        }
        let field = |key: &str| {
            let value = args
                .first()
                .and_then(|a| a.get(key))
                .and_then(|v| v.as_str());
            value.map(str::to_string)
        };
        let room = || field("room").filter(|room| protocol::valid_room(room));
        let (action, kind) = match name {
            "subscribe" => (
                room().map(|room| Action::Subscribe { room }),
                Kind::Subscribe,
            ),
            "unsubscribe" => (
                room().map(|room| Action::Unsubscribe { room }),
                Kind::Unsubscribe,
            ),
            "auth_refresh" => (
                field("token").map(|token| Action::Refresh { token }),
                Kind::AuthRefresh,
            ),
            _ => {
                stats.client_messages.add(Kind::Unknown.label(), 1);
                return Ok(None);
            }
        };
        match action {
            Some(action) => {
                stats.client_messages.add(kind.label(), 1);
                Ok(Some(action))
            }
            None => {
                stats.client_messages.add(Kind::Invalid.label(), 1);
                Err(("bad_request", self.refused()))
            }
        }
    }

    /// Counts a refusal (also the session's: a forbidden room, say); true
    /// when that makes the client an abuser.
    pub fn refused(&mut self) -> bool {
        self.strikes.add(Instant::now()) >= MAX_STRIKES
    }
}

/// Refusals, fading over time.
#[derive(Default)]
struct Strikes {
    count: f64,
    last: Option<Instant>,
}

impl Strikes {
    /// One more strike at `now`; the count after it.
    fn add(&mut self, now: Instant) -> f64 {
        if let Some(last) = self.last {
            let forgiven = now.duration_since(last).as_secs_f64() * STRIKES_FORGIVEN_PER_SEC;
            self.count = (self.count - forgiven).max(0.0);
        }
        self.last = Some(now);
        self.count += 1.0;
        self.count
    }
}

/// What a client's message was, for `client_messages_total{type}`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Ping,
    AuthRefresh,
    Subscribe,
    Unsubscribe,
    Unknown,
    Invalid,
    RateLimited,
}

impl Kind {
    /// In the words of [`metrics::CLIENT_MESSAGE_TYPES`](crate::metrics::CLIENT_MESSAGE_TYPES).
    fn label(self) -> &'static str {
        match self {
            Kind::Ping => "PING",
            Kind::AuthRefresh => "AUTH_REFRESH",
            Kind::Subscribe => "SUBSCRIBE",
            Kind::Unsubscribe => "UNSUBSCRIBE",
            Kind::Unknown => "unknown",
            Kind::Invalid => "invalid",
            Kind::RateLimited => "rate_limited",
        }
    }

    /// Whether the message was refused here (a strike).
    fn is_refused(self) -> bool {
        matches!(self, Kind::Unknown | Kind::Invalid | Kind::RateLimited)
    }
}

/// What a client's text message (SPEC §5) comes to, and what it was.
fn answer(text: &str) -> (Verdict, Kind) {
    match protocol::parse_client(text) {
        Ok(ClientMessage::Ping { ts }) => (Verdict::Reply(protocol::pong(ts)), Kind::Ping),
        Ok(ClientMessage::AuthRefresh { token }) => {
            (Verdict::Act(Action::Refresh { token }), Kind::AuthRefresh)
        }
        Ok(ClientMessage::Subscribe { room }) => {
            (Verdict::Act(Action::Subscribe { room }), Kind::Subscribe)
        }
        Ok(ClientMessage::Unsubscribe { room }) => (
            Verdict::Act(Action::Unsubscribe { room }),
            Kind::Unsubscribe,
        ),
        Ok(ClientMessage::Unknown(kind)) => {
            let shown: String = kind.chars().take(64).collect();
            let message = format!("unknown message type {shown:?}");
            (
                Verdict::Reply(protocol::error("unknown_type", &message)),
                Kind::Unknown,
            )
        }
        Err(e) => (
            Verdict::Reply(protocol::error(e.code, &e.message)),
            Kind::Invalid,
        ),
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

    #[tokio::test(start_paused = true)]
    async fn ten_refused_messages_in_a_row_are_abuse() {
        let stats = Stats::default();
        let mut commands = Commands::new(0);
        for _ in 0..9 {
            assert!(matches!(commands.handle("nope", &stats), Verdict::Reply(_)));
        }
        assert!(matches!(commands.handle("nope", &stats), Verdict::Abuse));
        assert_eq!(stats.client_messages.get("invalid"), 10);
    }

    /// The probe's flood: at 10x the rate limit, the accepted messages mixed
    /// in used to reset the count, and the client stayed connected.
    #[tokio::test(start_paused = true)]
    async fn a_flood_with_accepted_messages_mixed_in_is_abuse() {
        let stats = Stats::default();
        let mut commands = Commands::new(20);
        let ping = r#"{"type":"PING"}"#;
        let mut abused = false;
        // 200 messages a second for up to 5 s.
        for _ in 0..1000 {
            if matches!(commands.handle(ping, &stats), Verdict::Abuse) {
                abused = true;
                break;
            }
            tokio::time::advance(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            abused,
            "{} rate_limited answers",
            stats.client_messages.get("rate_limited")
        );
        assert!(
            stats.client_messages.get("PING") > 0,
            "accepted ones were mixed in"
        );
    }

    /// A mistake now and then is forgiven.
    #[tokio::test(start_paused = true)]
    async fn occasional_refusals_fade() {
        let stats = Stats::default();
        let mut commands = Commands::new(0);
        for _ in 0..100 {
            assert!(matches!(commands.handle("nope", &stats), Verdict::Reply(_)));
            tokio::time::advance(std::time::Duration::from_millis(1100)).await;
        }
    }

    #[test]
    fn every_kind_is_a_counted_type() {
        let kinds = [
            Kind::Ping,
            Kind::AuthRefresh,
            Kind::Subscribe,
            Kind::Unsubscribe,
            Kind::Unknown,
            Kind::Invalid,
            Kind::RateLimited,
        ];
        let labels: Vec<&str> = kinds.iter().map(|k| k.label()).collect();
        assert_eq!(labels, crate::metrics::CLIENT_MESSAGE_TYPES);
    }
}
