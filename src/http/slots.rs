//! What each accepted socket may hold: a bounded number of HTTP connections
//! that have not (yet) become WebSockets, and per-IP counts of WebSockets.
//!
//! HTTP connections are not refused when all slots are taken: the oldest
//! is closed to make room. Idle or trickling sockets are always the oldest
//! (a probe is answered within milliseconds), so a flood of them cannot
//! keep `/healthz` from being read, and the total stays within the
//! open-files budget ([`crate::config::Capacity`]).

use crate::lock;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, Notify};

/// Connections told to close but whose sockets may still be open, before
/// the accept loop waits for them: closing takes a turn of their task.
const CLOSING: usize = 8;

/// The HTTP connections open now, oldest first.
pub struct HttpSlots {
    max: usize,
    /// A std mutex: no await inside, one insert or remove per connection.
    state: Mutex<Slots>,
    /// A slot was released (its socket closed).
    freed: Notify,
}

#[derive(Default)]
struct Slots {
    next: u64,
    /// By accept order; the sender closes that connection.
    open: BTreeMap<u64, oneshot::Sender<()>>,
    /// Slots not yet released: `open` plus those told to close.
    live: usize,
}

/// One HTTP connection's slot, released when dropped.
pub struct HttpSlot {
    slots: Arc<HttpSlots>,
    id: u64,
}

impl HttpSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            state: Mutex::default(),
            freed: Notify::new(),
        })
    }

    /// Waits until a new connection fits: those told to make room must
    /// have closed their sockets, or a burst of accepts would outrun them
    /// into EMFILE. Short: every connection counted beyond `max` has been
    /// told to close, and does so at its task's next turn.
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if lock(&self.state).live < self.max + CLOSING {
                return;
            }
            freed.await;
        }
    }

    /// A slot for a new connection, closing the oldest one if all are
    /// taken; the receiver resolves when this one must close.
    pub fn take(self: &Arc<Self>) -> (HttpSlot, oneshot::Receiver<()>) {
        let (close, closed) = oneshot::channel();
        let mut state = lock(&self.state);
        if state.open.len() >= self.max {
            if let Some((_, oldest)) = state.open.pop_first() {
                let _ = oldest.send(());
            }
        }
        let id = state.next;
        state.next += 1;
        state.open.insert(id, close);
        state.live += 1;
        drop(state);
        let slot = HttpSlot {
            slots: self.clone(),
            id,
        };
        (slot, closed)
    }
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        let mut state = lock(&self.slots.state);
        state.open.remove(&self.id);
        state.live -= 1;
        drop(state);
        self.slots.freed.notify_waiters();
    }
}

/// Concurrent WebSockets per client IP (`connection.max_connections_per_ip`).
pub struct PerIp {
    /// 0 = unlimited.
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counts: Mutex::default(),
        }
    }

    /// Counts one more connection of `ip`, unless it is at the limit.
    pub fn admit(&self, ip: IpAddr) -> bool {
        if self.max == 0 {
            return true;
        }
        let mut counts = lock(&self.counts);
        let n = counts.entry(ip).or_default();
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// A connection `admit`ted for `ip` ended.
    pub fn release(&self, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                // Emptied entries go, so the map holds connected IPs only.
                counts.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_http_connection_makes_room() {
        let slots = HttpSlots::new(2);
        let (a, mut a_closed) = slots.take();
        let (_b, mut b_closed) = slots.take();
        let (_c, _) = slots.take();
        assert!(a_closed.try_recv().is_ok(), "the oldest is closed");
        assert!(b_closed.try_recv().is_err());
        assert_eq!(lock(&slots.state).live, 3, "a is closing, not closed");
        drop(a);
        assert_eq!(lock(&slots.state).open.len(), 2);
        assert_eq!(lock(&slots.state).live, 2);
    }

    #[test]
    fn per_ip_counts_and_forgets() {
        let per_ip = PerIp::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(per_ip.admit(ip) && per_ip.admit(ip));
        assert!(!per_ip.admit(ip));
        assert!(per_ip.admit("10.0.0.2".parse().unwrap()));
        per_ip.release(ip);
        assert!(per_ip.admit(ip));
        per_ip.release(ip);
        per_ip.release(ip);
        assert_eq!(lock(&per_ip.counts).get(&ip), None);
    }
}
