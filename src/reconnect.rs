//! Backoff, and the reconnect loop every long-running role (consumer,
//! relay) runs its session in: a lost connection is retried, never fatal.

use std::time::{Duration, Instant};

use crate::shutdown::Shutdown;

/// How long a broken session waits before reconnecting, at most.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// A session that lasted this long was healthy: the next failure starts
/// the backoff from the bottom again.
const HEALTHY: Duration = Duration::from_secs(30);

/// Exponential backoff: 100 ms, doubling up to a maximum.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn up_to(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(100),
            max,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

/// Runs `session` until it returns `Ok` (it saw `shutdown`) or shutdown is
/// triggered, reconnecting with backoff after each error.
pub fn until_shutdown(
    role: &str,
    shutdown: &Shutdown,
    mut session: impl FnMut() -> anyhow::Result<()>,
) {
    let mut backoff = Backoff::up_to(RECONNECT_MAX);
    while !shutdown.is_triggered() {
        let started = Instant::now();
        match session() {
            Ok(()) => return,
            Err(error) => {
                if started.elapsed() > HEALTHY {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!("{role}: {error:#}; reconnecting in {delay:?}");
                shutdown.sleep(delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_maximum_and_resets() {
        let mut backoff = Backoff::up_to(Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
