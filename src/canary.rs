//! The delivery canary (SPEC §4): readiness that proves delivery.
//!
//! Every interval the instance publishes a numbered canary on its own channel
//! `ws:canary:{instance}` and waits for it to come back through its
//! subscriber. A connection that is up but silently receives nothing (after
//! a failover, a paused or killed subscriber) stops the round trips, and
//! `/readyz` fails after three intervals: the load balancer takes the
//! instance out instead of sending it clients it cannot serve.

use crate::broker::Broker;
use crate::hub::Hub;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs until the process ends.
pub async fn run(hub: Hub, broker: Arc<dyn Broker>, interval: Duration) {
    let channel = hub.names().canary.clone();
    let mut echoes = hub.canary_echoes();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    loop {
        ticks.tick().await;
        metrics::gauge!("ws_gateway_broker_up").set(if broker.is_up() { 1.0 } else { 0.0 });
        seq += 1;
        let sent = Instant::now();
        let payload = Bytes::from(format!(r#"{{"type":"CANARY","seq":{seq}}}"#));
        let round_trip = async {
            broker.publish(&channel, payload).await?;
            echoes
                .wait_for(|echoed| *echoed >= seq)
                .await
                .map_err(|_| "canary receiver closed".to_string())?;
            Ok::<_, String>(())
        };
        match tokio::time::timeout(interval, round_trip).await {
            Ok(Ok(())) => {
                let rtt = sent.elapsed();
                hub.canary_returned();
                metrics::histogram!("ws_gateway_canary_round_trip_seconds")
                    .record(rtt.as_secs_f64());
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "canary not published"),
            Err(_) => tracing::warn!(seq, "canary did not come back within one interval"),
        }
    }
}
