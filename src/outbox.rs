//! The bounded send queue of one connection.
//!
//! Fan-out pushes into it without waiting; the connection's task drains it
//! whole and writes the batch with one flush. A push that finds the queue
//! full closes it instead: that connection is a slow consumer (SPEC §6,
//! 4008), and nobody else waits for it or loses a message because of it.
//!
//! A `std::sync::Mutex` guards the queue: pushes and takes are a few
//! instructions with no await inside, so a blocking lock is cheaper than an
//! async one, and it is never held across a socket write.

use crate::protocol::Published;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Why the server closes a connection from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue overflowed: close 4008, dropping what is queued.
    SlowConsumer,
    /// The instance is shutting down: write what is queued, then close 1001.
    Shutdown,
}

/// What happened to a pushed message.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue was full; the outbox is now closed as a slow consumer.
    Overflowed,
    /// The outbox was already closed; the message is not delivered here.
    Closed,
}

pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the connection's task: messages arrived or the outbox closed.
    notify: Notify,
}

struct State {
    queue: VecDeque<Arc<Published>>,
    capacity: usize,
    closed: Option<CloseReason>,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                // Allocated on first push: an idle connection costs nothing here.
                queue: VecDeque::new(),
                capacity,
                closed: None,
            }),
            notify: Notify::new(),
        }
    }

    /// Queues a message without waiting.
    pub fn push(&self, message: Arc<Published>) -> Push {
        let mut state = lock(&self.state);
        if state.closed.is_some() {
            return Push::Closed;
        }
        if state.queue.len() >= state.capacity {
            state.closed = Some(CloseReason::SlowConsumer);
            state.queue = VecDeque::new();
            drop(state);
            self.notify.notify_one();
            return Push::Overflowed;
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back(message);
        drop(state);
        if was_empty {
            self.notify.notify_one();
        }
        Push::Queued
    }

    /// Closes the outbox; the connection's task sees it on its next wake.
    pub fn close(&self, reason: CloseReason) {
        let mut state = lock(&self.state);
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// The close reason, if closed.
    pub fn closed(&self) -> Option<CloseReason> {
        lock(&self.state).closed
    }

    /// Waits until there is something to do, then moves every queued message
    /// into `batch`. Returns the close reason once the outbox is closed.
    pub async fn take(&self, batch: &mut Vec<Arc<Published>>) -> Option<CloseReason> {
        loop {
            {
                let mut state = lock(&self.state);
                if state.closed.is_some() || !state.queue.is_empty() {
                    batch.extend(state.queue.drain(..));
                    return state.closed;
                }
            }
            // A notify_one() between the check and here leaves a permit, so
            // no wake-up is lost.
            self.notify.notified().await;
        }
    }

    /// Waits until the outbox is closed (used while a write is in progress).
    pub async fn wait_closed(&self) -> CloseReason {
        loop {
            if let Some(reason) = self.closed() {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

/// Locks a mutex, recovering from poisoning: every critical section here
/// leaves the state consistent, so a panic elsewhere cannot corrupt it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &'static str) -> Arc<Published> {
        Arc::new(Published {
            text: text.into(),
            id: None,
            ts: None,
        })
    }

    fn texts(batch: &[Arc<Published>]) -> Vec<&str> {
        batch.iter().map(|m| m.text.as_str()).collect()
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(msg("a")), Push::Queued);
        assert_eq!(outbox.push(msg("b")), Push::Queued);
        assert_eq!(outbox.push(msg("c")), Push::Overflowed);
        assert_eq!(outbox.push(msg("d")), Push::Closed);
        let mut batch = Vec::new();
        assert_eq!(
            outbox.take(&mut batch).await,
            Some(CloseReason::SlowConsumer)
        );
        assert!(batch.is_empty(), "a slow consumer's queue is dropped");
    }

    #[tokio::test]
    async fn take_returns_everything_in_order() {
        let outbox = Outbox::new(10);
        for m in ["1", "2", "3"] {
            outbox.push(msg(m));
        }
        let mut batch = Vec::new();
        assert_eq!(outbox.take(&mut batch).await, None);
        assert_eq!(texts(&batch), vec!["1", "2", "3"]);
        outbox.push(msg("4"));
        outbox.close(CloseReason::Shutdown);
        batch.clear();
        assert_eq!(outbox.take(&mut batch).await, Some(CloseReason::Shutdown));
        assert_eq!(texts(&batch), vec!["4"], "shutdown keeps what was queued");
    }
}
