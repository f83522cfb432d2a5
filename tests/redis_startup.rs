//! Start-up against a live Redis (issue 11, item 9): the wait for the first
//! connect must see a connect that happens while it starts waiting, so a
//! gateway next to a running Redis is ready at once, every time.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Starts per run: the stall hit about one start in 47, so 120 starts miss
/// it with a probability of about 8% (two at a time, to halve the time).
const STARTS: usize = 120;
/// Well under the 5 s start-up wait the stall waited out.
const READY_WITHIN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_against_a_live_redis_is_ready_without_a_stall() {
    let redis = Redis::start();
    let began = Instant::now();
    for round in 0..STARTS / 2 {
        // The stall is inside start-up (before `listening`): time from spawn.
        let spawned = Instant::now();
        let (a, b) = tokio::join!(
            gateway().redis(&redis).no_wait_ready().start(),
            gateway().redis(&redis).no_wait_ready().start()
        );
        for (i, gw) in [a, b].iter().enumerate() {
            let start = round * 2 + i;
            let ready = wait_until(READY_WITHIN, || async {
                matches!(gw.try_get("/readyz").await, Some(r) if r.status == 200)
            })
            .await;
            let logs = gw.logs_text();
            let took = spawned.elapsed();
            assert!(
                ready && took < READY_WITHIN,
                "start {start}: /readyz 200 only after {took:?} (ready: {ready}); output:\n{logs}"
            );
            assert!(
                !logs.contains("not reachable yet"),
                "start {start}: the start-up wait missed the connect; output:\n{logs}"
            );
        }
        assert!(
            began.elapsed() < Duration::from_secs(240),
            "{STARTS} starts took too long"
        );
    }
}
