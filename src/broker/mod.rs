//! Where messages come from: Redis, or the embedded in-memory broker.
//!
//! Both implement [`Broker`] with the same channel semantics (SPEC §3, §9):
//! a message published on a channel reaches every instance subscribed to it,
//! and the canonical publish path appends to the user's history first. Both
//! deliver incoming messages straight into the [`Hub`](crate::hub::Hub).

pub mod memory;
pub mod redis;

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a broker command failed, in the terms a publisher must act on
/// (SPEC §7): whether the command may still take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// Certainly not done (not connected, or the broker refused it): safe
    /// to retry later.
    Unavailable(String),
    /// Sent, but no answer in time (or the connection broke meanwhile): it
    /// may still take effect. A retry must reuse the message's id.
    OutcomeUnknown(String),
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerError::Unavailable(why) => write!(f, "{why}"),
            BrokerError::OutcomeUnknown(why) => {
                write!(f, "{why}; the command may still take effect")
            }
        }
    }
}

pub trait Broker: Send + Sync {
    /// `"redis"` or `"memory"`, as `/ws/health` reports it.
    fn kind(&self) -> &'static str;

    /// True while the broker can deliver.
    fn is_up(&self) -> bool;

    /// Subscribes this instance to `channels`, returning once the broker
    /// confirmed it: a message published after the return is delivered.
    fn subscribe<'a>(&'a self, channels: &'a [Box<str>]) -> BoxFuture<'a, Result<(), BrokerError>>;

    fn unsubscribe<'a>(
        &'a self,
        channels: &'a [Box<str>],
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Plain publish: live delivery only (broadcast, roles).
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The newest `history_size` entries of the history list at `key`,
    /// oldest first.
    fn history<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<Bytes>, BrokerError>>;

    /// The canonical path (SPEC §3): append to `history_key`, trim, set its
    /// expiry, and publish on `channel`, as one atomic step.
    fn publish_with_history<'a>(
        &'a self,
        history_key: &'a str,
        channel: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
}
