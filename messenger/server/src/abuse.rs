//! Rate limits a logged-in stranger cannot get around: keyed by user (not device or
//! connection, so more devices or tokens buy nothing), by target account, by
//! (requester, target) pair, and by client IP where no identity exists yet.
//!
//! Every limit is a governor GCRA bucket whose size is also its burst; state of quiet keys is
//! pruned by the janitor. docs/security-model.md ("Abuse controls") lists them all.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use qrpc::Status;

use crate::config::Limits;

pub(crate) fn per_second(n: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

pub(crate) fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn per_hour(n: u32) -> Quota {
    Quota::per_hour(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// Every server-side rate limit.
pub struct Limiters {
    clock: DefaultClock,
    /// Sealed (not logged-in) enqueues per client IP.
    pub sealed_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    /// Messages per sending user.
    pub messages_per_user: DefaultKeyedRateLimiter<String>,
    /// Messages to strangers per sending user.
    pub stranger_messages_per_user: DefaultKeyedRateLimiter<String>,
    /// Other writes per user.
    pub writes_per_user: DefaultKeyedRateLimiter<String>,
    /// Key-package fetches per (requesting user, target user).
    pub key_packages_per_pair: DefaultKeyedRateLimiter<(String, String)>,
    /// Key-package fetches per requesting user.
    pub key_packages_per_user: DefaultKeyedRateLimiter<String>,
    /// Registration and login starts per client IP, whatever the connection is bound to.
    pub logins_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    /// Login starts per target account.
    pub logins_per_account: DefaultKeyedRateLimiter<String>,
    /// Session resumes per client IP.
    pub resumes_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    /// Typing notifications per user.
    pub typing_per_user: DefaultKeyedRateLimiter<String>,
    /// Channel invitations per inviting user.
    pub channel_invites_per_user: DefaultKeyedRateLimiter<String>,
    /// Key-bundle publishes per device (each may grow the key-transparency log).
    pub key_publishes_per_device: DefaultKeyedRateLimiter<(String, String)>,
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters").finish_non_exhaustive()
    }
}

impl Limiters {
    /// Limiters sized by the configuration.
    pub fn new(l: &Limits) -> Self {
        Self {
            clock: DefaultClock::default(),
            sealed_per_ip: RateLimiter::keyed(per_second(l.sealed_enqueues_per_second_per_ip)),
            messages_per_user: RateLimiter::keyed(per_second(l.messages_per_second_per_user)),
            stranger_messages_per_user: RateLimiter::keyed(per_minute(
                l.stranger_messages_per_minute_per_user,
            )),
            writes_per_user: RateLimiter::keyed(per_second(l.writes_per_second_per_user)),
            key_packages_per_pair: RateLimiter::keyed(per_minute(
                l.key_package_fetches_per_minute_per_pair,
            )),
            key_packages_per_user: RateLimiter::keyed(per_minute(
                l.key_package_fetches_per_minute_per_user,
            )),
            logins_per_ip: RateLimiter::keyed(per_minute(l.logins_per_minute_per_ip)),
            logins_per_account: RateLimiter::keyed(per_minute(l.logins_per_minute_per_account)),
            resumes_per_ip: RateLimiter::keyed(per_minute(l.resumes_per_minute_per_ip)),
            typing_per_user: RateLimiter::keyed(per_minute(l.typing_per_minute_per_user)),
            channel_invites_per_user: RateLimiter::keyed(per_minute(
                l.channel_invites_per_minute_per_user,
            )),
            key_publishes_per_device: RateLimiter::keyed(per_hour(
                l.key_publishes_per_hour_per_device,
            )),
        }
    }

    /// Takes `n` cells from `key`'s bucket, or refuses with `ResourceExhausted` naming `what`
    /// and when to retry. Nothing is taken when refused.
    pub fn check<K: Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        n: u32,
        what: &str,
    ) -> Result<(), Status> {
        check_with(&self.clock, limiter, key, n, what)
    }

    /// Forgets keys whose buckets are full again (idle), so distinct keys do not grow memory.
    pub fn prune(&self) {
        self.sealed_per_ip.retain_recent();
        self.messages_per_user.retain_recent();
        self.stranger_messages_per_user.retain_recent();
        self.writes_per_user.retain_recent();
        self.key_packages_per_pair.retain_recent();
        self.key_packages_per_user.retain_recent();
        self.logins_per_ip.retain_recent();
        self.logins_per_account.retain_recent();
        self.resumes_per_ip.retain_recent();
        self.typing_per_user.retain_recent();
        self.key_publishes_per_device.retain_recent();
        self.channel_invites_per_user.retain_recent();
    }

    /// Keys held across all limiters (for tests and metrics).
    pub fn keys(&self) -> usize {
        self.sealed_per_ip.len()
            + self.messages_per_user.len()
            + self.stranger_messages_per_user.len()
            + self.writes_per_user.len()
            + self.key_packages_per_pair.len()
            + self.key_packages_per_user.len()
            + self.logins_per_ip.len()
            + self.logins_per_account.len()
            + self.resumes_per_ip.len()
            + self.typing_per_user.len()
    }
}

/// Takes `n` cells from `key`'s bucket, or refuses with `ResourceExhausted` naming `what`
/// and when to retry. Nothing is taken when refused.
pub(crate) fn check_with<K: Hash + Eq + Clone>(
    clock: &DefaultClock,
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    n: u32,
    what: &str,
) -> Result<(), Status> {
    let Some(n) = NonZeroU32::new(n) else {
        return Ok(());
    };
    match limiter.check_key_n(key, n) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => {
            let wait = not_until.wait_time_from(clock.now());
            Err(Status::resource_exhausted(format!(
                "rate limit: too many {what}; retry in {} ms",
                wait.as_millis().max(1)
            )))
        }
        Err(_) => Err(Status::resource_exhausted(format!(
            "rate limit: more {what} in one call than the limit allows at once"
        ))),
    }
}
