//! What one revision's traffic looked like over the last minutes: requests by status class,
//! connection errors and a latency histogram, in one-second slots, so a window such as "the
//! last 30 seconds" is answered exactly to the second.
//!
//! Latency is the time from sending a request on to the answer's head arriving: what the
//! instance took, without the client's own transfer. The histogram has eight buckets per
//! power of two, so a quantile is reported as its bucket's upper bound: never lower than the
//! truth, at most an eighth above it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How far back traffic is kept.
pub const KEPT: Duration = Duration::from_secs(300);

/// Buckets per power of two: 2^3, each at most 12.5 % wide.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Latencies up to 2^27 µs (about two minutes) have buckets of their own; longer ones share
/// the last.
const BUCKETS: usize = ((27 - SUB_BITS + 2) as u64 * SUB) as usize;

/// One revision's traffic in a window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrafficStats {
    /// The window, in milliseconds, that these figures cover.
    pub window_ms: u64,
    /// Requests that got an answer or failed.
    pub requests: u64,
    /// Answers by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub by_class: [u64; 5],
    /// Requests that got no answer: the instance refused, reset or timed out (the router
    /// answered 502 or 504).
    pub connection_errors: u64,
    /// Latency quantiles in microseconds, when there was at least one answer.
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
}

impl TrafficStats {
    /// 5xx answers and connection errors, as a share of all requests (0 when there were none).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        (self.by_class[4] + self.connection_errors) as f64 / self.requests as f64
    }
}

struct Slot {
    second: u64,
    by_class: [u64; 5],
    connection_errors: u64,
    latency: Box<[u32; BUCKETS]>,
}

impl Slot {
    fn new(second: u64) -> Slot {
        Slot {
            second,
            by_class: [0; 5],
            connection_errors: 0,
            latency: Box::new([0; BUCKETS]),
        }
    }
}

/// The bucket of a latency: below [`SUB`] µs one each, then [`SUB`] per power of two.
fn bucket(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let power = 63 - us.leading_zeros();
    let sub = (us >> (power - SUB_BITS)) & (SUB - 1);
    ((u64::from(power - SUB_BITS + 1) * SUB + sub) as usize).min(BUCKETS - 1)
}

/// The largest latency in bucket `index`.
fn upper_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let (group, sub) = (index / SUB, index % SUB);
    let power = group as u32 + SUB_BITS - 1;
    ((SUB + sub + 1) << (power - SUB_BITS)) - 1
}

/// One revision's recent traffic.
#[derive(Default)]
pub struct TrafficLog {
    slots: Mutex<VecDeque<Slot>>,
}

impl TrafficLog {
    /// An answer with `status` that took `latency`, at `now_ms` (Unix milliseconds).
    pub fn answered(&self, now_ms: u64, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.with_slot(now_ms, |slot| {
            slot.by_class[class] += 1;
            slot.latency[bucket(us)] += 1;
        });
    }

    /// A request that got no answer, at `now_ms`.
    pub fn failed(&self, now_ms: u64) {
        self.with_slot(now_ms, |slot| slot.connection_errors += 1);
    }

    fn with_slot(&self, now_ms: u64, change: impl FnOnce(&mut Slot)) {
        let second = now_ms / 1000;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.back().is_none_or(|s| s.second < second) {
            while slots.front().is_some_and(|s| s.second + KEPT.as_secs() <= second) {
                slots.pop_front();
            }
            slots.push_back(Slot::new(second));
        }
        // A clock that stepped back lands in the newest slot.
        change(slots.back_mut().expect("a slot was just ensured"));
    }

    /// The traffic of the last `window` before `now_ms`, whole seconds (the current one
    /// included), at most [`KEPT`].
    pub fn stats(&self, now_ms: u64, window: Duration) -> TrafficStats {
        let window = window.clamp(Duration::from_secs(1), KEPT);
        let seconds = window.as_secs().max(1);
        let newest = now_ms / 1000;
        let oldest = (newest + 1).saturating_sub(seconds);
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut stats = TrafficStats {
            window_ms: seconds * 1000,
            ..TrafficStats::default()
        };
        let mut latency = [0u64; BUCKETS];
        for slot in slots.iter().filter(|s| s.second >= oldest && s.second <= newest) {
            for (total, n) in stats.by_class.iter_mut().zip(slot.by_class) {
                *total += n;
            }
            stats.connection_errors += slot.connection_errors;
            for (total, n) in latency.iter_mut().zip(slot.latency.iter()) {
                *total += u64::from(*n);
            }
        }
        let answered: u64 = stats.by_class.iter().sum();
        stats.requests = answered + stats.connection_errors;
        let quantile = |q: f64| {
            if answered == 0 {
                return None;
            }
            let rank = ((answered as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            latency.iter().enumerate().find_map(|(index, n)| {
                seen += n;
                (seen >= rank).then(|| upper_bound(index))
            })
        };
        stats.p50_us = quantile(0.50);
        stats.p90_us = quantile(0.90);
        stats.p99_us = quantile(0.99);
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_latency_and_bound_it_from_above() {
        let mut last = 0;
        for us in 0..200_000u64 {
            let index = bucket(us);
            assert!(index >= last, "buckets grow with latency ({us} µs)");
            last = index;
            assert!(upper_bound(index) >= us, "{us} µs > bound {}", upper_bound(index));
            if us >= 8 {
                assert!(
                    upper_bound(index) as f64 <= us as f64 * 1.25 + 1.0,
                    "{us} µs: bound {}",
                    upper_bound(index)
                );
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn a_window_counts_its_seconds_only_and_quantiles_follow_the_latencies() {
        let log = TrafficLog::default();
        let start = 1_000_000_000;
        // An old second: 10 answers at 100 ms, 10 errors.
        for _ in 0..10 {
            log.answered(start, 200, Duration::from_millis(100));
            log.failed(start);
        }
        // Ten seconds later: 95 fast answers, 4 slow 500s, one 404.
        let now = start + 10_000;
        for _ in 0..95 {
            log.answered(now, 200, Duration::from_millis(2));
        }
        for _ in 0..4 {
            log.answered(now, 503, Duration::from_millis(80));
        }
        log.answered(now, 404, Duration::from_millis(1));
        let recent = log.stats(now + 500, Duration::from_secs(5));
        assert_eq!(recent.window_ms, 5000);
        assert_eq!(recent.requests, 100);
        assert_eq!(recent.by_class, [0, 95, 0, 1, 4]);
        assert_eq!(recent.connection_errors, 0);
        assert!((recent.error_rate() - 0.04).abs() < 1e-9);
        let p50 = recent.p50_us.unwrap();
        assert!((2000..=2250).contains(&p50), "p50 {p50}");
        let p99 = recent.p99_us.unwrap();
        assert!((80_000..=90_000).contains(&p99), "p99 {p99}");

        let all = log.stats(now, Duration::from_secs(60));
        assert_eq!(all.requests, 120);
        assert_eq!(all.connection_errors, 10);
        assert!((all.error_rate() - 14.0 / 120.0).abs() < 1e-9);

        let empty = log.stats(now + 30_000, Duration::from_secs(5));
        assert_eq!((empty.requests, empty.p50_us), (0, None));
        assert_eq!(empty.error_rate(), 0.0);
    }

    #[test]
    fn slots_older_than_what_is_kept_are_dropped() {
        let log = TrafficLog::default();
        for second in 0..1000 {
            log.answered(second * 1000, 200, Duration::from_millis(1));
        }
        assert_eq!(log.slots.lock().unwrap().len(), KEPT.as_secs() as usize);
        assert_eq!(log.stats(999_000, Duration::from_secs(3600)).requests, KEPT.as_secs());
    }
}
