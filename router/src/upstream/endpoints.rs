//! Upstream endpoints: per-site pools with power-of-two-choices least-loaded
//! balancing, passive ejection of failing endpoints, active health state, and
//! a retry budget.
//!
//! The pools are rebuilt from the topology (a site's `upstreams`, or its
//! `router` for cross-site forwarding) whenever it changes; an endpoint that
//! survives a rebuild keeps its counters. Health checks live in the server
//! (`server::health`); this module only holds the state they write.
//!
//! What every worker must agree on (health, ejection) is shared
//! ([`Endpoint`]); what changes with every request (requests in flight, for
//! the balancing) is counted by each worker for itself (in
//! [`super::pool::Upstream`], a worker's own), so the request path writes no
//! memory another worker reads: each worker balances its own requests, as
//! nginx's worker processes do. A worker keeps its own handles on the shared
//! endpoints and refreshes them when [`Endpoints::generation`] moves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// One upstream address and what the router knows about it.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: String,
    consecutive_failures: AtomicU32,
    /// Passive ejection: until when (ms since `epoch`), 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// Active health: the last health check's verdict (true until one fails).
    healthy: AtomicBool,
    epoch: Instant,
}

impl Endpoint {
    pub fn new(addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.to_string(),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Usable: passing health checks and not ejected.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    pub fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            tracing::info!(endpoint = %self.addr, healthy, "Upstream health changed.");
        }
        if healthy {
            // A passing health check ends a passive ejection early.
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// A request to this endpoint succeeded (any response from it).
    pub fn record_success(&self) {
        // Read first: a store on every request would have every worker
        // write this cache line.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed at the connection level (connect error, reset,
    /// timeout). After `eject_after` in a row the endpoint is ejected for
    /// `eject_for`.
    pub fn record_failure(&self, eject_after: u32, eject_for: Duration) {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= eject_after {
            let until =
                self.now_ms() + u64::try_from(eject_for.as_millis()).unwrap_or(u64::MAX / 2);
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.addr, failures = n, "Upstream ejected after consecutive failures.");
        }
    }
}

/// Counts a request in flight (on a worker's counter) until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    pub fn start(counter: &'a AtomicU32) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Power of two choices among `candidates`: two distinct random picks, the
/// one with fewer requests in flight (`load`) wins. Pure apart from the RNG.
pub fn p2c<'a, T, R: Rng>(
    candidates: &[&'a T],
    load: impl Fn(&T) -> u32,
    rng: &mut R,
) -> Option<&'a T> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (x, y) = (candidates[a], candidates[b]);
            Some(if load(y) < load(x) { y } else { x })
        }
    }
}

/// All endpoints the router may send to, by address, shared across sites.
/// Read-mostly: the request path takes the read lock; an address seen for the
/// first time takes the write lock once.
#[derive(Debug, Default)]
pub struct Endpoints {
    by_addr: RwLock<HashMap<String, Arc<Endpoint>>>,
    /// Moves whenever an endpoint is dropped: workers' handles on the old
    /// one must be refreshed.
    generation: AtomicU64,
}

impl Endpoints {
    /// The endpoint for `addr`, created on first use.
    pub fn get(&self, addr: &str) -> Arc<Endpoint> {
        {
            let map = self.by_addr.read().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = map.get(addr) {
                return e.clone();
            }
        }
        let mut map = self.by_addr.write().unwrap_or_else(|p| p.into_inner());
        map.entry(addr.to_string())
            .or_insert_with(|| Arc::new(Endpoint::new(addr)))
            .clone()
    }

    /// Keeps only the endpoints in `addrs` (called on topology change).
    pub fn retain(&self, addrs: &[String]) {
        let mut map = self.by_addr.write().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|a, _| addrs.contains(a));
        if map.len() != before {
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Moves when an endpoint has been dropped (see [`Self::retain`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn all(&self) -> Vec<Arc<Endpoint>> {
        let map = self.by_addr.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }
}

/// Picks one of `candidates`: p2c (on `load`) among the available ones; if
/// none is available, among all of them (a "panic mode" as in Envoy: better
/// to try a suspect endpoint than to fail every request).
pub fn pick<'a, T>(
    candidates: &[&'a T],
    endpoint: impl Fn(&T) -> &Endpoint,
    load: impl Fn(&T) -> u32,
) -> Option<&'a T> {
    // The common single-endpoint case needs no choice (and no allocation).
    if let [only] = candidates {
        return Some(only);
    }
    let available: Vec<&'a T> = candidates
        .iter()
        .copied()
        .filter(|c| endpoint(c).is_available())
        .collect();
    let mut rng = rand::thread_rng();
    if available.is_empty() {
        p2c(candidates, load, &mut rng)
    } else {
        p2c(&available, load, &mut rng)
    }
}

/// A retry budget: retries may add at most `percent`% to the request rate
/// (Finagle/linkerd style). Each request deposits `percent` credits, each
/// retry withdraws 100; the balance is capped so a quiet period cannot save
/// up an unbounded burst of retries.
#[derive(Debug)]
pub struct RetryBudget {
    percent: i64,
    balance: AtomicI64,
    cap: i64,
}

impl RetryBudget {
    /// A retry costs this many credits.
    const RETRY_COST: i64 = 100;

    pub fn new(percent: u32) -> RetryBudget {
        RetryBudget {
            percent: i64::from(percent),
            // Start with room for a few retries, and never save more than 10.
            balance: AtomicI64::new(3 * Self::RETRY_COST),
            cap: 10 * Self::RETRY_COST,
        }
    }

    pub fn deposit(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b + self.percent).min(self.cap))
            });
    }

    /// Takes a retry from the budget if there is one.
    pub fn try_withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= Self::RETRY_COST).then_some(b - Self::RETRY_COST)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// An endpoint and a load, for the balancing tests.
    struct E(Arc<Endpoint>, AtomicU32);

    fn e(addr: &str) -> E {
        E(Arc::new(Endpoint::new(addr)), AtomicU32::new(0))
    }

    fn load(x: &E) -> u32 {
        x.1.load(Ordering::Relaxed)
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let a = e("a");
        let b = e("b");
        let busy: Vec<InFlight> = (0..5).map(|_| InFlight::start(&a.1)).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let c = p2c(&[&a, &b], load, &mut rng).unwrap();
            assert_eq!(c.0.addr, "b");
        }
        drop(busy);
        assert_eq!(load(&a), 0);
    }

    #[test]
    fn p2c_spreads_over_many() {
        let eps: Vec<E> = (0..4).map(|i| e(&i.to_string())).collect();
        let refs: Vec<&E> = eps.iter().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(p2c(&refs, load, &mut rng).unwrap().0.addr.clone());
        }
        assert_eq!(seen.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_and_recovery() {
        let e = Endpoint::new("x");
        e.record_failure(3, Duration::from_secs(5));
        e.record_failure(3, Duration::from_secs(5));
        assert!(e.is_available());
        e.record_failure(3, Duration::from_secs(5));
        assert!(e.is_ejected());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!e.is_ejected());
        // A success in between resets the count.
        e.record_failure(3, Duration::from_secs(5));
        e.record_success();
        e.record_failure(3, Duration::from_secs(5));
        e.record_failure(3, Duration::from_secs(5));
        assert!(e.is_available());
    }

    #[test]
    fn pick_avoids_unavailable_but_never_returns_nothing() {
        let (a, b) = (e("a"), e("b"));
        let both = [&a, &b];
        a.0.set_healthy(false);
        for _ in 0..50 {
            assert_eq!(pick(&both, |x| &*x.0, load).unwrap().0.addr, "b");
        }
        b.0.set_healthy(false);
        assert!(
            pick(&both, |x| &*x.0, load).is_some(),
            "panic mode still picks"
        );
        assert!(pick::<E>(&[], |x| &*x.0, load).is_none());
    }

    #[test]
    fn dropping_an_endpoint_moves_the_generation() {
        let pool = Endpoints::default();
        let a = pool.get("a");
        pool.get("b");
        let g = pool.generation();
        pool.retain(&["a".to_string(), "b".to_string()]);
        assert_eq!(pool.generation(), g, "nothing dropped");
        pool.retain(&["a".to_string()]);
        assert_ne!(pool.generation(), g);
        assert!(
            Arc::ptr_eq(&a, &pool.get("a")),
            "a survivor keeps its state"
        );
    }

    #[test]
    fn budget_limits_retries() {
        let b = RetryBudget::new(20);
        // The initial allowance.
        assert!(b.try_withdraw() && b.try_withdraw() && b.try_withdraw());
        assert!(!b.try_withdraw());
        // 5 requests at 20% earn one retry.
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
    }
}
