//! Publishing at a steady rate, and the benchmark payload.

use crate::client::now_micros;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// Ticks per second of the publisher: fine enough for smooth rates, coarse
/// enough to cost nothing.
const TICKS_PER_SEC: u32 = 100;

/// Yields sequence numbers `rate` times a second for `duration`, in bursts
/// on 10 ms ticks, computed from the elapsed time so rounding never drifts.
pub struct Pacer {
    ticks: tokio::time::Interval,
    start: Instant,
    rate: f64,
    total: u64,
    next: u64,
}

impl Pacer {
    pub fn new(rate: u32, duration: Duration) -> Self {
        let mut ticks = tokio::time::interval(Duration::from_secs(1) / TICKS_PER_SEC);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        Self {
            ticks,
            start: Instant::now(),
            rate: f64::from(rate),
            total: (duration.as_secs_f64() * f64::from(rate)).round() as u64,
            next: 0,
        }
    }

    /// The next sequence number, when it is due; None when all were sent.
    pub async fn next(&mut self) -> Option<u64> {
        loop {
            if self.next >= self.total {
                return None;
            }
            let due = (self.start.elapsed().as_secs_f64() * self.rate).ceil() as u64;
            if self.next < due {
                self.next += 1;
                return Some(self.next - 1);
            }
            self.ticks.tick().await;
        }
    }
}

/// `{"type":"BENCH","ts":<µs now>,"seq":N,"pad":"xx…"}`, padded to about
/// `size` bytes.
pub fn payload(seq: u64, size: usize) -> String {
    let head = format!(
        r#"{{"type":"BENCH","ts":{},"seq":{seq},"pad":""#,
        now_micros()
    );
    let pad = size.saturating_sub(head.len() + 2);
    let mut text = head;
    text.extend(std::iter::repeat_n('x', pad));
    text.push_str("\"}");
    text
}
