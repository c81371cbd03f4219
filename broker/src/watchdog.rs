//! A runtime watchdog: a task that asks to be woken every
//! [`TICK`] and notes when it wakes more than [`STALL`] late. Late means a
//! runtime worker ran something else that long without yielding (a long
//! walk, a lock held across a slow operation, a big batch) or the process
//! got no CPU; every delivery queued on that worker waited as long. Each
//! stall is counted (`stomp_runtime_stalls_total`) and logged at `warn`
//! (at most once a second, with the count and the longest), so a latency
//! tail can be matched to what the broker was doing. Costs one timer
//! wake-up per tick.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the watchdog asks to run.
pub const TICK: Duration = Duration::from_millis(10);

/// Lateness counted as a stall.
pub const STALL: Duration = Duration::from_millis(5);

/// How late a wake-up planned for `planned` and running at `now` is, if
/// that is a stall.
pub fn stall(planned: Instant, now: Instant) -> Option<Duration> {
    let late = now.saturating_duration_since(planned);
    (late > STALL).then_some(late)
}

/// Stalls are logged at most this often (with how many there were and
/// the longest), so that a starved process does not also flood its log.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Runs until `shutdown`.
pub async fn run(metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut logged: Option<Instant> = None;
    let (mut unlogged, mut longest) = (0u64, Duration::ZERO);
    loop {
        let planned = Instant::now() + TICK;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(planned.into()) => {}
        }
        let now = Instant::now();
        if let Some(late) = stall(planned, now) {
            metrics.runtime_stalls.fetch_add(1, Relaxed);
            unlogged += 1;
            longest = longest.max(late);
        }
        if unlogged > 0 && logged.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            tracing::warn!(
                stalls = unlogged,
                longest_ms = longest.as_secs_f64() * 1e3,
                "runtime stalls: the watchdog woke late (a task ran long without yielding, or no CPU)"
            );
            logged = Some(now);
            (unlogged, longest) = (0, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lateness_past_the_threshold_is_a_stall() {
        let t = Instant::now();
        assert_eq!(stall(t, t), None);
        assert_eq!(stall(t + TICK, t), None, "early is not late");
        assert_eq!(stall(t, t + STALL), None);
        let late = STALL + Duration::from_millis(1);
        assert_eq!(stall(t, t + late), Some(late));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_worker_is_counted() {
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(metrics.clone(), shutdown.clone()));
        // Let it arm its timer, then hold the only worker for 30 ms.
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(30));
        while metrics.runtime_stalls.load(Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        shutdown.cancel();
        task.await.expect("watchdog ends");
    }
}
