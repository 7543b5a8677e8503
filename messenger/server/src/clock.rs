//! The server's time source: the system clock in production, a manual clock that moves only
//! when told to in tests, so that expiry is tested by advancing time rather than waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Milliseconds since the Unix epoch by the system clock.
fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where the server reads the time: every expiry (sessions, queued messages, endpoints,
/// login attempts) and every timestamp it stores comes from one `Clock`.
///
/// Cloning is cheap and every clone reads the same time.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

struct Manual {
    now_ms: AtomicU64,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::System"),
            Some(m) => write!(f, "Clock::Manual({})", m.now_ms.load(Ordering::Acquire)),
        }
    }
}

impl Clock {
    /// The system clock (the default).
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that starts at the system's current time and then moves only by
    /// [`advance`](Self::advance): for tests of expiry that must not wait on real time.
    pub fn manual() -> Self {
        let now = system_now_ms();
        Self {
            manual: Some(Arc::new(Manual {
                now_ms: AtomicU64::new(now),
                changed: watch::Sender::new(now),
            })),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.manual {
            None => system_now_ms(),
            Some(m) => m.now_ms.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock forward by `by` and wakes everything waiting on it; the system
    /// clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Some(m) = &self.manual {
            let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            let now = m.now_ms.fetch_add(by, Ordering::AcqRel).saturating_add(by);
            m.changed.send_replace(now);
        }
    }

    /// Completes once the clock reads `deadline_ms` or later.
    pub async fn sleep_until(&self, deadline_ms: u64) {
        match &self.manual {
            None => {
                let remaining = deadline_ms.saturating_sub(system_now_ms());
                tokio::time::sleep(Duration::from_millis(remaining)).await;
            }
            Some(m) => {
                let mut changed = m.changed.subscribe();
                // The sender lives in `m`, which this future borrows: `wait_for` cannot fail.
                let _ = changed.wait_for(|now| *now >= deadline_ms).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_only_when_advanced_past_their_deadline() {
        use futures::FutureExt as _;
        let clock = Clock::manual();
        let start = clock.now_ms();
        let mut sleep = std::pin::pin!(clock.sleep_until(start + 1_000));
        assert!((&mut sleep).now_or_never().is_none());
        clock.advance(Duration::from_millis(999));
        assert!(
            (&mut sleep).now_or_never().is_none(),
            "woke before its deadline"
        );
        clock.advance(Duration::from_millis(1));
        assert!(
            (&mut sleep).now_or_never().is_some(),
            "did not wake at its deadline"
        );
        assert_eq!(clock.now_ms(), start + 1_000);
    }
}
