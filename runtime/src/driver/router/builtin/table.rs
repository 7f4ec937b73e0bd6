//! The route table: what the driver sets, compiled into weighted candidates that every
//! request picks from without a lock.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hyper::header::HeaderValue;

use super::lock;
use super::metrics::{RevisionStats, RouterMetrics};
use super::pool::{Backend, InFlight};

/// What the router serves: replaced atomically as a whole by [`BuiltinRouter::update`].
///
/// The default table has no revisions, so every request gets "no ready instances".
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// When set, every request gets the maintenance page (503) and no backend is used.
    pub maintenance: bool,
    /// The revisions that may receive traffic. Revisions with weight 0 or without
    /// backends receive none, but still appear in the metrics.
    pub revisions: Vec<RoutedRevision>,
}

/// One revision's share of the traffic and the instances that serve it.
#[derive(Clone, Debug)]
pub struct RoutedRevision {
    /// The revision number, reported in `X-Slipway-Revision` and in the metrics.
    pub revision: u32,
    /// Relative weight, 0..=256 by convention: a revision receives
    /// `weight / sum(weights)` of the requests, taken over the revisions that have at
    /// least one backend, and spreads it evenly over its backends.
    pub weight: u32,
    /// The ready instances of this revision; only ready ones belong here.
    pub backends: Vec<Arc<Backend>>,
}

/// A [`RouteTable`] prepared for picking: only revisions that can take traffic, with
/// their round-robin counters and metric handles.
pub(super) struct Routes {
    pub(super) table: Arc<RouteTable>,
    candidates: Vec<Candidate>,
    total_weight: u64,
}

pub(super) struct Candidate {
    pub(super) weight: u64,
    pub(super) backends: Vec<Arc<Backend>>,
    pub(super) next: AtomicUsize,
    pub(super) stats: Arc<RevisionStats>,
}

/// A backend picked for one request: it counts as in flight until this is dropped.
pub(super) struct Pick {
    pub(super) in_flight: InFlight,
    pub(super) stats: Arc<RevisionStats>,
}

pub(super) enum Choice {
    Routed(Pick),
    Maintenance,
    NoBackend,
}

impl Routes {
    pub(super) fn compile(table: RouteTable, metrics: &RouterMetrics) -> Routes {
        let mut stats = lock(&metrics.revisions);
        let mut stats_for = |revision: u32| {
            stats
                .entry(revision)
                .or_insert_with(|| {
                    Arc::new(RevisionStats {
                        header: HeaderValue::from(revision),
                        requests: AtomicU64::new(0),
                        errors: AtomicU64::new(0),
                        traffic: Default::default(),
                    })
                })
                .clone()
        };
        let mut candidates = Vec::new();
        for revision in &table.revisions {
            let stats = stats_for(revision.revision);
            if revision.weight > 0 && !revision.backends.is_empty() {
                candidates.push(Candidate {
                    weight: u64::from(revision.weight),
                    backends: revision.backends.clone(),
                    next: AtomicUsize::new(0),
                    stats,
                });
            }
        }
        let total_weight = candidates.iter().map(|c| c.weight).sum();
        Routes {
            table: Arc::new(table),
            candidates,
            total_weight,
        }
    }

    /// Picks a revision with probability proportional to its weight, using `random`
    /// (uniform over `u64`), then the next of its backends in round-robin order.
    /// `exclude` removes one backend from consideration, as if it were not in the table.
    pub(super) fn select(&self, random: u64, exclude: Option<&Backend>) -> Option<(&Candidate, &Arc<Backend>)> {
        let allowed = |backend: &Arc<Backend>| exclude.is_none_or(|x| !ptr::eq(Arc::as_ptr(backend), x));
        let eligible = |candidate: &&Candidate| exclude.is_none() || candidate.backends.iter().any(allowed);
        let total = match exclude {
            None => self.total_weight,
            Some(_) => self.candidates.iter().filter(eligible).map(|c| c.weight).sum(),
        };
        if total == 0 {
            return None;
        }
        // Multiply-and-shift maps `random` onto 0..total without a division or modulo bias.
        let mut point = ((u128::from(random) * u128::from(total)) >> 64) as u64;
        let candidate = self.candidates.iter().filter(eligible).find(|candidate| {
            if point < candidate.weight {
                true
            } else {
                point -= candidate.weight;
                false
            }
        })?;
        let backends = &candidate.backends;
        if backends.len() == 1 {
            return allowed(&backends[0]).then_some((candidate, &backends[0]));
        }
        let start = candidate.next.fetch_add(1, Ordering::Relaxed);
        (0..backends.len())
            .map(|i| &backends[(start + i) % backends.len()])
            .find(|b| allowed(b))
            .map(|backend| (candidate, backend))
    }
}

impl Pick {
    pub(super) fn backend(&self) -> &Backend {
        &self.in_flight.0
    }
}

/// A per-thread xorshift generator: weighted picks need fast, roughly uniform numbers,
/// not unpredictable ones, and a shared generator would be contended.
pub(super) fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}
