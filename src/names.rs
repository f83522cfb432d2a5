//! Every Redis channel and key name the gateway uses, built in one place
//! from `[redis]` (SPEC §2, §3): user, role and broadcast channels, the
//! canary channel of this instance (§4), and the users' history lists.

use crate::config::RedisConfig;

/// How channel names are built (SPEC §2 `[redis]`).
pub struct Names {
    pub user_prefix: String,
    pub role_prefix: String,
    pub room_prefix: String,
    pub broadcast: String,
    /// This instance's canary channel (SPEC §4).
    pub canary: String,
    pub history_prefix: String,
}

impl Names {
    /// The names of `[redis]`; `instance` names this process's canary.
    pub fn from_config(redis: &RedisConfig, instance: &str) -> Self {
        Self {
            user_prefix: redis.user_channel_prefix.clone(),
            role_prefix: redis.role_channel_prefix.clone(),
            room_prefix: redis.room_channel_prefix.clone(),
            broadcast: redis.broadcast_channel.clone(),
            canary: format!("ws:canary:{instance}"),
            history_prefix: redis.history_key_prefix.clone(),
        }
    }

    /// The user of a user channel.
    pub fn user_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.user_prefix.as_str())
    }

    /// Which kind of channel `channel` is, in the words of
    /// `broker_messages_total{kind}` (SPEC §8).
    pub fn kind_of(&self, channel: &str) -> &'static str {
        if channel == self.broadcast {
            "broadcast"
        } else if channel.starts_with(self.role_prefix.as_str()) {
            "role"
        } else if channel.starts_with(self.room_prefix.as_str()) {
            "room"
        } else {
            "user"
        }
    }

    /// The user's history list (SPEC §3).
    pub fn history_key(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.history_prefix)
    }

    pub fn user(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.user_prefix)
    }

    pub fn role(&self, role: &str) -> String {
        format!("{}{role}", self.role_prefix)
    }

    pub fn room(&self, room: &str) -> String {
        format!("{}{room}", self.room_prefix)
    }
}
