//! Rate limiting with governor (GCRA), keyed per peer IP, per bound identity, and per method.
//!
//! A call over any applicable limit ends with `ResourceExhausted` before its handler runs.
//! Per-key state is pruned as keys go quiet, so many distinct peers do not grow memory forever.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::TryFutureExt;
use futures::future::{Either, Ready};
use governor::DefaultKeyedRateLimiter;
use governor::clock::{Clock, DefaultClock};
use tower::{BoxError, Layer, Service};

use crate::body::ServerRequest;
use crate::context::{PeerIdentity, RequestContext};
use crate::status::Status;

/// A rate: calls replenish one at a time at a steady period, up to a burst.
///
/// `Quota::per_second(n)` allows `n` calls at once and one more every `1/n` s after that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    burst: NonZeroU32,
    period: Duration,
}

impl Quota {
    /// `n` calls per second, `n` at once.
    pub fn per_second(n: NonZeroU32) -> Self {
        Self::spread(Duration::from_secs(1), n)
    }

    /// `n` calls per minute, `n` at once.
    pub fn per_minute(n: NonZeroU32) -> Self {
        Self::spread(Duration::from_secs(60), n)
    }

    /// `n` calls per hour, `n` at once.
    pub fn per_hour(n: NonZeroU32) -> Self {
        Self::spread(Duration::from_secs(3600), n)
    }

    /// One call every `period`, one at a time; `None` for a zero period.
    pub fn with_period(period: Duration) -> Option<Self> {
        (!period.is_zero()).then_some(Self {
            burst: NonZeroU32::MIN,
            period,
        })
    }

    /// The same rate, with at most `burst` calls at once.
    pub fn allow_burst(self, burst: NonZeroU32) -> Self {
        Self { burst, ..self }
    }

    /// Calls allowed at once.
    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// How often one more call is allowed.
    pub fn period(&self) -> Duration {
        self.period
    }

    fn spread(total: Duration, n: NonZeroU32) -> Self {
        Self {
            burst: n,
            period: (total / n.get()).max(Duration::from_nanos(1)),
        }
    }

    fn limiter<K: Hash + Eq + Clone>(self) -> DefaultKeyedRateLimiter<K> {
        // A period is never zero (see the constructors), so governor always has its quota.
        let quota = governor::Quota::with_period(self.period)
            .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MAX))
            .allow_burst(self.burst);
        governor::RateLimiter::keyed(quota)
    }
}

/// How often (in checks) idle keys are pruned.
const PRUNE_EVERY: u64 = 4096;

/// Who a per-method limit counts against: the bound identity, or the IP before login.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Caller {
    Ip(IpAddr),
    PeerIdentity(PeerIdentity),
}

struct Limits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_identity: Option<DefaultKeyedRateLimiter<PeerIdentity>>,
    per_method: HashMap<u16, DefaultKeyedRateLimiter<Caller>>,
    checks: AtomicU64,
    clock: DefaultClock,
}

impl Limits {
    fn check(&self, ctx: &RequestContext) -> Result<(), Status> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune();
        }
        let ip = ctx.remote_address().ip();
        let identity = ctx.identity();
        if let Some(limiter) = &self.per_ip {
            self.check_key(limiter, &ip, "peer address")?;
        }
        if let (Some(limiter), Some(identity)) = (&self.per_identity, &identity) {
            self.check_key(limiter, identity, "identity")?;
        }
        if let Some(limiter) = self.per_method.get(&ctx.method_id()) {
            let caller = identity.map_or(Caller::Ip(ip), Caller::PeerIdentity);
            self.check_key(limiter, &caller, "method")?;
        }
        Ok(())
    }

    fn check_key<K: Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        what: &str,
    ) -> Result<(), Status> {
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            Status::resource_exhausted(format!(
                "rate limit per {what} exceeded; retry in {} ms",
                wait.as_millis().max(1)
            ))
        })
    }

    fn prune(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
        }
        if let Some(l) = &self.per_identity {
            l.retain_recent();
        }
        for l in self.per_method.values() {
            l.retain_recent();
        }
    }
}

/// Builds a [`RateLimitLayer`].
#[derive(Debug, Default)]
pub struct RateLimitLayerBuilder {
    per_ip: Option<Quota>,
    per_identity: Option<Quota>,
    per_method: HashMap<u16, Quota>,
}

impl RateLimitLayerBuilder {
    /// Limits calls per peer IP address, across all its connections.
    pub fn per_ip(mut self, quota: Quota) -> Self {
        self.per_ip = Some(quota);
        self
    }

    /// Limits calls per bound identity, across all its connections and addresses.
    pub fn per_identity(mut self, quota: Quota) -> Self {
        self.per_identity = Some(quota);
        self
    }

    /// Limits calls of one method per caller (its identity once bound, its IP before). The
    /// method is a generated `MethodInfo` constant or a raw id.
    pub fn per_method(mut self, method: impl crate::method::MethodRef, quota: Quota) -> Self {
        self.per_method.insert(method.method_id(), quota);
        self
    }

    /// The layer.
    pub fn build(self) -> RateLimitLayer {
        RateLimitLayer {
            limits: Arc::new(Limits {
                per_ip: self.per_ip.map(Quota::limiter),
                per_identity: self.per_identity.map(Quota::limiter),
                per_method: self
                    .per_method
                    .into_iter()
                    .map(|(id, q)| (id, q.limiter()))
                    .collect(),
                checks: AtomicU64::new(0),
                clock: DefaultClock::default(),
            }),
        }
    }
}

/// Ends calls over their rate limit with `ResourceExhausted`. Clones share the same counters.
#[derive(Clone)]
pub struct RateLimitLayer {
    limits: Arc<Limits>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("per_ip", &self.limits.per_ip.is_some())
            .field("per_identity", &self.limits.per_identity.is_some())
            .field("per_method", &self.limits.per_method.len())
            .finish()
    }
}

impl RateLimitLayer {
    /// A builder with no limits set.
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder::default()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limits: Arc::clone(&self.limits),
        }
    }
}

/// The service [`RateLimitLayer`] produces.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<ServerRequest<B>> for RateLimit<S>
where
    S: Service<ServerRequest<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<
        Ready<Result<S::Response, BoxError>>,
        futures::future::MapErr<S::Future, fn(S::Error) -> BoxError>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: ServerRequest<B>) -> Self::Future {
        if let Err(status) = self.limits.check(req.context()) {
            return Either::Left(futures::future::ready(Err(Box::new(status))));
        }
        Either::Right(
            self.inner
                .call(req)
                .map_err(Into::into as fn(S::Error) -> BoxError),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    #[test]
    fn quotas_spread_their_rate_and_bound_the_burst() {
        let q = Quota::per_minute(n(120));
        assert_eq!(
            (q.burst().get(), q.period()),
            (120, Duration::from_millis(500))
        );
        let q = Quota::per_hour(n(3)).allow_burst(n(1));
        assert_eq!(
            (q.burst().get(), q.period()),
            (1, Duration::from_secs(1200))
        );
        assert!(Quota::with_period(Duration::ZERO).is_none());
        // A huge rate still has a period: never a zero that governor would refuse.
        assert!(!Quota::per_second(NonZeroU32::MAX).period().is_zero());

        // The limiter built from a quota admits the burst, then refuses.
        let limiter = Quota::per_hour(n(2)).limiter::<u8>();
        assert!(limiter.check_key(&1).is_ok());
        assert!(limiter.check_key(&1).is_ok());
        assert!(limiter.check_key(&1).is_err());
        assert!(limiter.check_key(&2).is_ok(), "keys are independent");
    }
}
