//! The delivery canary (SPEC §4): readiness that proves delivery.
//!
//! Every interval the instance publishes a numbered canary on its own channel
//! `ws:canary:{instance}` and waits for it to come back through its
//! subscriber. A connection that is up but silently receives nothing (after
//! a failover, a paused or killed subscriber) stops the round trips, and
//! `/readyz` fails after three intervals: the load balancer takes the
//! instance out instead of sending it clients it cannot serve.

use crate::broker::Broker;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the broker's reader and readiness need to know of the canary.
pub struct Canary {
    /// The highest sequence number that came back through the broker.
    echo: watch::Sender<u64>,
    /// The origin of `ok_ms`.
    started: Instant,
    /// When a round trip last completed, in ms since `started`; 0 = never.
    ok_ms: AtomicU64,
}

impl Default for Canary {
    fn default() -> Self {
        Self {
            echo: watch::Sender::new(0),
            started: Instant::now(),
            ok_ms: AtomicU64::new(0),
        }
    }
}

impl Canary {
    /// A canary came back through the broker (called by the dispatcher).
    pub fn echoed(&self, payload: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Echo {
            seq: u64,
        }
        if let Ok(Echo { seq }) = serde_json::from_slice(payload) {
            self.echo.send_if_modified(|highest| {
                let newer = seq > *highest;
                *highest = (*highest).max(seq);
                newer
            });
        }
    }

    fn returned(&self) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        self.ok_ms.store(now_ms.max(1), Relaxed);
    }

    /// How long ago the last round trip completed; None before the first.
    pub fn age(&self) -> Option<Duration> {
        let ok_ms = self.ok_ms.load(Relaxed);
        let now_ms = self.started.elapsed().as_millis() as u64;
        (ok_ms > 0).then(|| Duration::from_millis(now_ms.saturating_sub(ok_ms)))
    }
}

/// Runs until the process ends: publishes on `channel` (this instance's
/// canary channel) every `interval`, and records each round trip in
/// `round_trips`.
pub async fn run(
    canary: Arc<Canary>,
    broker: Arc<dyn Broker>,
    channel: String,
    interval: Duration,
    round_trips: metrics::Histogram,
) {
    let mut echoes = canary.echo.subscribe();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    loop {
        ticks.tick().await;
        seq += 1;
        let sent = Instant::now();
        let payload = Bytes::from(format!(r#"{{"type":"CANARY","seq":{seq}}}"#));
        let round_trip = async {
            broker
                .publish(&channel, payload)
                .await
                .map_err(|e| e.to_string())?;
            echoes
                .wait_for(|echoed| *echoed >= seq)
                .await
                .map_err(|_| "canary receiver closed".to_string())?;
            Ok::<_, String>(())
        };
        match tokio::time::timeout(interval, round_trip).await {
            Ok(Ok(())) => {
                canary.returned();
                round_trips.record(sent.elapsed().as_secs_f64());
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "canary not published"),
            Err(_) => tracing::warn!(seq, "canary did not come back within one interval"),
        }
    }
}
