//! What a connection may receive and has joined (SPEC §5): its identity
//! from the latest token, its registration with the hub (user, role and
//! room channels), and its rooms. AUTH_REFRESH, SUBSCRIBE and UNSUBSCRIBE
//! change it. Transport-neutral: each answers with what happened, and the
//! transport says it in its own words (frames on `/ws`, acks on Socket.IO).

use super::{Sessions, SUBSCRIBE_WAIT};
use crate::auth::Identity;
use crate::hub::Registration;

pub struct Access {
    pub who: Identity,
    pub registration: Registration,
    /// The rooms joined, in the order they were.
    rooms: Vec<String>,
}

/// A refusal: its SPEC §5 error code, and a message for people.
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A refresh that was accepted.
pub struct Refreshed {
    /// The new token's `exp`.
    pub exp: Option<u64>,
    /// The rooms the new token no longer allows, left.
    pub left_rooms: Vec<String>,
}

impl Access {
    pub fn new(who: Identity, registration: Registration) -> Self {
        Self {
            who,
            registration,
            rooms: Vec::new(),
        }
    }

    /// AUTH_REFRESH: a valid token for the same user replaces the identity;
    /// roles are joined and left to match, and rooms the new token no
    /// longer allows are left. An invalid token, or another user's, is
    /// refused: the connection closes with 4001.
    pub async fn refresh(
        &mut self,
        token: &str,
        sessions: &Sessions,
    ) -> Result<Refreshed, Refusal> {
        let new = match sessions.verifier.verify(token) {
            Ok(new) if new.user_id == self.who.user_id => new,
            Ok(_) => {
                let message = "the new token is for another user";
                return Err(Refusal::new("invalid_token", message));
            }
            Err(e) => return Err(Refusal::new(e.code(), e.message())),
        };
        let hub = &sessions.hub;
        let names = hub.names();
        for role in self.who.roles.iter().filter(|r| !new.roles.contains(r)) {
            hub.leave(&mut self.registration, &names.role(role));
        }
        let mut joined = Vec::new();
        for role in new.roles.iter().filter(|r| !self.who.roles.contains(r)) {
            joined.extend(hub.join(&mut self.registration, names.role(role).into()));
        }
        let (kept, left_rooms): (Vec<String>, Vec<String>) = std::mem::take(&mut self.rooms)
            .into_iter()
            .partition(|room| new.may_join(room));
        for room in &left_rooms {
            hub.leave(&mut self.registration, &names.room(room));
        }
        self.rooms = kept;
        for ready in joined {
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, ready).await;
        }
        let exp = new.exp;
        self.who = new;
        Ok(Refreshed { exp, left_rooms })
    }

    /// SUBSCRIBE: joins the room when a pattern of the channels claim allows
    /// it, within `max_rooms`; returns once the broker confirmed the
    /// subscription. Already joined: done already.
    pub async fn subscribe(&mut self, room: &str, sessions: &Sessions) -> Result<(), Refusal> {
        if self.rooms.iter().any(|r| r == room) {
            return Ok(());
        }
        if !self.who.may_join(room) {
            let message = "the token's channels claim does not allow this room";
            return Err(Refusal::new("forbidden", message));
        }
        if self.rooms.len() >= sessions.max_rooms {
            let message = format!("at most {} rooms per connection", sessions.max_rooms);
            return Err(Refusal::new("too_many_rooms", message));
        }
        let channel = sessions.hub.names().room(room).into();
        if let Some(ready) = sessions.hub.join(&mut self.registration, channel) {
            if tokio::time::timeout(SUBSCRIBE_WAIT, ready).await.is_err() {
                tracing::warn!(room, "room subscription not confirmed in time");
            }
        }
        self.rooms.push(room.to_string());
        Ok(())
    }

    /// UNSUBSCRIBE: leaves the room, if joined.
    pub fn unsubscribe(&mut self, room: &str, sessions: &Sessions) {
        if let Some(i) = self.rooms.iter().position(|r| r == room) {
            self.rooms.remove(i);
            let channel = sessions.hub.names().room(room);
            sessions.hub.leave(&mut self.registration, &channel);
        }
    }
}
