//! Running one job on several threads at once over numbered items: each
//! thread sets itself up (a connection, a publisher), then takes items
//! until none are left. Bulk placing and the benchmark's phases share it.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

/// Hands out the item numbers `0..count` to the threads of one [`fan_out`].
#[derive(Debug)]
pub struct Items {
    next: AtomicU64,
    count: u64,
    stopped: AtomicBool,
}

impl Items {
    fn new(count: u64) -> Self {
        Self {
            next: AtomicU64::new(0),
            count,
            stopped: AtomicBool::new(false),
        }
    }

    /// The next item, or `None` when all are taken or another thread failed.
    pub fn take(&self) -> Option<u64> {
        self.take_up_to(1).map(|items| items.start)
    }

    /// Up to `n` consecutive items (fewer at the end), or `None`.
    pub fn take_up_to(&self, n: u64) -> Option<Range<u64>> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let first = self.next.fetch_add(n.max(1), Ordering::Relaxed);
        (first < self.count).then(|| first..(first + n.max(1)).min(self.count))
    }

    /// How many items there are in all.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether a thread failed and the others should wind down.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

/// How long the work of a [`fan_out`] took, from the moment the last thread
/// finished its setup (so connecting is not timed) until all were done.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub started: Instant,
    pub elapsed: Duration,
}

/// Runs `work` on `threads` threads at once over the items `0..count`. Each
/// thread first builds its own state with `setup`; all start working
/// together once every thread is set up. `work` takes items from [`Items`]
/// until it returns `None`. The first error (of a setup or a work) stops
/// the others from taking more items and is returned once all finished.
pub fn fan_out<S>(
    threads: u16,
    count: u64,
    setup: &(dyn Fn() -> anyhow::Result<S> + Sync),
    work: &(dyn Fn(&mut S, &Items) -> anyhow::Result<()> + Sync),
) -> anyhow::Result<Timing> {
    let threads = usize::from(threads.max(1));
    let items = Items::new(count);
    let ready = Barrier::new(threads);
    let started: Mutex<Option<Instant>> = Mutex::new(None);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let fail = |error: anyhow::Error| {
        items.stop();
        first_error.lock().unwrap().get_or_insert(error);
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let state = setup();
                // Every thread reaches the barrier, even after a failed
                // setup, or the others would wait for ever.
                if ready.wait().is_leader() {
                    *started.lock().unwrap() = Some(Instant::now());
                }
                let result = state.and_then(|mut state| work(&mut state, &items));
                if let Err(error) = result {
                    fail(error);
                }
            });
        }
    });
    let started = started.into_inner().unwrap().unwrap_or_else(Instant::now);
    match first_error.into_inner().unwrap() {
        Some(error) => Err(error),
        None => Ok(Timing {
            started,
            elapsed: started.elapsed(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_item_is_taken_exactly_once_across_threads() {
        let sum = AtomicU64::new(0);
        let taken = AtomicU64::new(0);
        fan_out(8, 1000, &|| Ok(()), &|_, items| {
            while let Some(n) = items.take() {
                sum.fetch_add(n, Ordering::Relaxed);
                taken.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(taken.into_inner(), 1000);
        assert_eq!(sum.into_inner(), (0..1000).sum::<u64>());
    }

    #[test]
    fn batches_end_at_the_count() {
        let items = Items::new(10);
        assert_eq!(items.take_up_to(4), Some(0..4));
        assert_eq!(items.take_up_to(4), Some(4..8));
        assert_eq!(items.take_up_to(4), Some(8..10));
        assert_eq!(items.take_up_to(4), None);
    }

    #[test]
    fn a_failed_setup_stops_the_others_and_is_returned() {
        let calls = AtomicU64::new(0);
        let error = fan_out(
            4,
            u64::MAX,
            &|| {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    anyhow::bail!("no connection")
                }
                Ok(())
            },
            &|_, items| {
                while items.take().is_some() {}
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "no connection");
    }
}
