//! What a connection may receive and has joined (SPEC §5): its identity
//! from the latest token, its registration with the hub (user, role and
//! room channels), and its rooms. AUTH_REFRESH, SUBSCRIBE and UNSUBSCRIBE
//! change it; each answers with the frames to send.

use super::{Sessions, SUBSCRIBE_WAIT};
use crate::auth::Identity;
use crate::hub::Registration;
use crate::protocol;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub struct Access {
    pub who: Identity,
    pub registration: Registration,
    /// The rooms joined, in the order they were.
    rooms: Vec<String>,
}

/// A refusal: the ERROR frame to send.
pub struct Refusal(pub Utf8Bytes);

impl Access {
    pub fn new(who: Identity, registration: Registration) -> Self {
        Self {
            who,
            registration,
            rooms: Vec::new(),
        }
    }

    /// AUTH_REFRESH: a valid token for the same user replaces the identity;
    /// roles are joined and left to match, rooms the new token no longer
    /// allows are left (one UNSUBSCRIBED each), then AUTH_REFRESHED. An
    /// invalid token, or another user's, is refused: the connection closes
    /// with 4001.
    pub async fn refresh(
        &mut self,
        token: &str,
        sessions: &Sessions,
    ) -> Result<Vec<Utf8Bytes>, Refusal> {
        let new = match sessions.verifier.verify(token) {
            Ok(new) if new.user_id == self.who.user_id => new,
            Ok(_) => {
                let message = "the new token is for another user";
                return Err(Refusal(protocol::error("invalid_token", message)));
            }
            Err(e) => return Err(Refusal(protocol::error(e.code(), e.message()))),
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
        let mut frames = Vec::new();
        let (kept, dropped): (Vec<String>, Vec<String>) = std::mem::take(&mut self.rooms)
            .into_iter()
            .partition(|room| new.may_join(room));
        for room in dropped {
            hub.leave(&mut self.registration, &names.room(&room));
            frames.push(protocol::unsubscribed(&room));
        }
        self.rooms = kept;
        for ready in joined {
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, ready).await;
        }
        frames.push(protocol::auth_refreshed(new.exp));
        self.who = new;
        Ok(frames)
    }

    /// SUBSCRIBE: joins the room when a pattern of the channels claim allows
    /// it, within `max_rooms`; SUBSCRIBED once the broker confirmed the
    /// subscription. Already joined: SUBSCRIBED again.
    pub async fn subscribe(
        &mut self,
        room: &str,
        sessions: &Sessions,
    ) -> Result<Utf8Bytes, Refusal> {
        if self.rooms.iter().any(|r| r == room) {
            return Ok(protocol::subscribed(room));
        }
        if !self.who.may_join(room) {
            let message = "the token's channels claim does not allow this room";
            return Err(Refusal(protocol::error("forbidden", message)));
        }
        if self.rooms.len() >= sessions.max_rooms {
            let message = format!("at most {} rooms per connection", sessions.max_rooms);
            return Err(Refusal(protocol::error("too_many_rooms", &message)));
        }
        let channel = sessions.hub.names().room(room).into();
        if let Some(ready) = sessions.hub.join(&mut self.registration, channel) {
            if tokio::time::timeout(SUBSCRIBE_WAIT, ready).await.is_err() {
                tracing::warn!(room, "room subscription not confirmed in time");
            }
        }
        self.rooms.push(room.to_string());
        Ok(protocol::subscribed(room))
    }

    /// UNSUBSCRIBE: leaves the room, if joined; UNSUBSCRIBED either way.
    pub fn unsubscribe(&mut self, room: &str, sessions: &Sessions) -> Utf8Bytes {
        if let Some(i) = self.rooms.iter().position(|r| r == room) {
            self.rooms.remove(i);
            let channel = sessions.hub.names().room(room);
            sessions.hub.leave(&mut self.registration, &channel);
        }
        protocol::unsubscribed(room)
    }
}
