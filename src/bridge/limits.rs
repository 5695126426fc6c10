//! Rate limits on what remote senders can make the bridge create: new portals, new ghosts and
//! the invites that new chats send to Matrix users (`bridge.limits`).
//!
//! Each limit is a set of token buckets, one per key (a remote sender, a remote domain as the
//! connector groups its users, a Matrix user). A bucket holds up to `burst` tokens and gains
//! `rate` every `per_seconds`; creating something takes one token from every bucket it
//! concerns, or none when one of them is empty. Only the creation of something new asks:
//! existing portals and ghosts never do. The buckets live in memory (a restart refills them);
//! full buckets are forgotten, so memory follows the recent senders, not all of them.
//!
//! Time comes in as an argument, so the arithmetic is tested without waiting.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::{LimitsConfig, RateLimit};

/// What is limited. [`Limit::name`] is the key below `bridge.limits` and the `what` label of
/// the `bridge_rate_limited_total` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// New portals opened by one remote sender.
    PortalsPerSender,
    /// New portals opened by the senders of one remote domain.
    PortalsPerDomain,
    /// New chats from the networks inviting one Matrix user.
    InvitesPerUser,
    /// New ghosts from joins, presence and profiles of one remote domain.
    GhostsPerDomain,
    /// New ghosts from messages of one remote domain.
    MessageGhostsPerDomain,
}

impl Limit {
    /// Every limit, in the order of their index (`Limit::index`).
    pub const ALL: [Limit; 5] = [
        Limit::PortalsPerSender,
        Limit::PortalsPerDomain,
        Limit::InvitesPerUser,
        Limit::GhostsPerDomain,
        Limit::MessageGhostsPerDomain,
    ];

    /// The config key and metric label.
    pub fn name(self) -> &'static str {
        match self {
            Limit::PortalsPerSender => "portals_per_sender",
            Limit::PortalsPerDomain => "portals_per_domain",
            Limit::InvitesPerUser => "invites_per_user",
            Limit::GhostsPerDomain => "ghosts_per_domain",
            Limit::MessageGhostsPerDomain => "message_ghosts_per_domain",
        }
    }

    /// What the remote sender is told when this limit refuses what their message needed.
    pub fn reason(self) -> &'static str {
        match self {
            Limit::PortalsPerSender => "too many new chats from you; try again later",
            Limit::PortalsPerDomain => "too many new chats from your server; try again later",
            Limit::InvitesPerUser => {
                "this Matrix user gets too many new chats right now; try again later"
            }
            Limit::GhostsPerDomain | Limit::MessageGhostsPerDomain => {
                "too many new users from your server; try again later"
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn rate(self, cfg: &LimitsConfig) -> RateLimit {
        match self {
            Limit::PortalsPerSender => cfg.portals_per_sender,
            Limit::PortalsPerDomain => cfg.portals_per_domain,
            Limit::InvitesPerUser => cfg.invites_per_user,
            Limit::GhostsPerDomain => cfg.ghosts_per_domain,
            Limit::MessageGhostsPerDomain => cfg.message_ghosts_per_domain,
        }
    }
}

/// Buckets are pruned once there are more than this many (and then when their number has
/// doubled since the last pruning), so pruning costs a constant per admission on average.
const PRUNE_MIN: usize = 1024;

/// Slack for rounding: a bucket this close to a whole token has it (the refill is computed in
/// floating point, and a sender exactly at the rate must not be refused).
const EPSILON: f64 = 1e-9;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of one limit.
#[derive(Debug)]
struct Buckets {
    burst: f64,
    per_second: f64,
    map: HashMap<String, Bucket>,
    prune_above: usize,
}

impl Buckets {
    fn new(rate: RateLimit) -> Self {
        Self {
            burst: f64::from(rate.burst.max(1)),
            per_second: f64::from(rate.rate) / f64::from(rate.per_seconds.max(1)),
            map: HashMap::new(),
            prune_above: PRUNE_MIN,
        }
    }

    /// The tokens `key` has at `now` (a key never seen has a full bucket).
    fn level(&self, key: &str, now: Instant) -> f64 {
        match self.map.get(key) {
            None => self.burst,
            Some(b) => {
                let gained = now.saturating_duration_since(b.at).as_secs_f64() * self.per_second;
                (b.tokens + gained).min(self.burst)
            }
        }
    }

    /// Takes one token from `key` (the caller checked there is one).
    fn take(&mut self, key: &str, now: Instant) {
        let tokens = (self.level(key, now) - 1.0).max(0.0);
        self.map.insert(key.to_owned(), Bucket { tokens, at: now });
        if self.map.len() > self.prune_above {
            let (burst, per_second) = (self.burst, self.per_second);
            self.map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second
                    < burst - EPSILON
            });
            self.prune_above = (self.map.len() * 2).max(PRUNE_MIN);
        }
    }
}

/// The buckets of every limit. Shared by the portal tasks; the lock is never held across an
/// await.
#[derive(Debug)]
pub struct Limits {
    buckets: Mutex<Vec<Buckets>>,
}

impl Limits {
    /// Empty (full) buckets for the configured limits.
    pub fn new(cfg: &LimitsConfig) -> Self {
        Self {
            buckets: Mutex::new(
                Limit::ALL
                    .iter()
                    .map(|l| Buckets::new(l.rate(cfg)))
                    .collect(),
            ),
        }
    }

    /// Admits one creation that counts against each `(limit, key)` of `asks` (distinct pairs):
    /// when every bucket has a token, one is taken from each; otherwise none is taken and the
    /// first limit without a token is returned.
    pub fn admit(&self, asks: &[(Limit, &str)], now: Instant) -> Result<(), Limit> {
        let mut buckets = self.buckets.lock().expect("limits lock");
        if let Some((limit, _)) = asks
            .iter()
            .find(|(l, key)| buckets[l.index()].level(key, now) < 1.0 - EPSILON)
        {
            return Err(*limit);
        }
        for (limit, key) in asks {
            buckets[limit.index()].take(key, now);
        }
        Ok(())
    }

    /// Gives back the tokens an [`Limits::admit`] of the same `asks` took, when what was
    /// admitted could not be created after all (the homeserver failed, say): a retry of the
    /// same item must not use up the budget.
    pub fn refund(&self, asks: &[(Limit, &str)], now: Instant) {
        let mut buckets = self.buckets.lock().expect("limits lock");
        for (limit, key) in asks {
            let b = &mut buckets[limit.index()];
            if b.map.contains_key(*key) {
                let tokens = (b.level(key, now) + 1.0).min(b.burst);
                b.map.insert((*key).to_owned(), Bucket { tokens, at: now });
            }
        }
    }

    /// How many keys `limit` remembers (for tests of the pruning).
    #[cfg(test)]
    fn remembered(&self, limit: Limit) -> usize {
        self.buckets.lock().expect("limits lock")[limit.index()]
            .map
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn limits(rate: u32, per_seconds: u32, burst: u32) -> Limits {
        let r = RateLimit {
            rate,
            per_seconds,
            burst,
        };
        Limits::new(&LimitsConfig {
            portals_per_sender: r,
            portals_per_domain: r,
            invites_per_user: r,
            ghosts_per_domain: r,
            message_ghosts_per_domain: r,
        })
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let l = limits(2, 60, 3);
        let t0 = Instant::now();
        let ask = [(Limit::PortalsPerSender, "bob")];
        for _ in 0..3 {
            assert_eq!(l.admit(&ask, t0), Ok(()));
        }
        assert_eq!(l.admit(&ask, t0), Err(Limit::PortalsPerSender));
        // Two tokens a minute: one after 30 s, not before.
        assert!(l.admit(&ask, t0 + Duration::from_secs(29)).is_err());
        assert_eq!(l.admit(&ask, t0 + Duration::from_secs(30)), Ok(()));
        assert!(l.admit(&ask, t0 + Duration::from_secs(31)).is_err());
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.admit(&ask, later), Ok(()));
        }
        assert!(l.admit(&ask, later).is_err());
    }

    #[test]
    fn keys_and_limits_are_independent() {
        let l = limits(1, 60, 1);
        let t = Instant::now();
        assert_eq!(l.admit(&[(Limit::PortalsPerSender, "a")], t), Ok(()));
        assert_eq!(l.admit(&[(Limit::PortalsPerSender, "b")], t), Ok(()));
        assert_eq!(l.admit(&[(Limit::PortalsPerDomain, "a")], t), Ok(()));
        assert!(l.admit(&[(Limit::PortalsPerSender, "a")], t).is_err());
    }

    #[test]
    fn a_refusal_takes_no_token_from_the_other_buckets() {
        let l = limits(1, 3600, 2);
        let t = Instant::now();
        // The domain's two tokens go to a and b; c is refused by the domain.
        for sender in ["a", "b"] {
            let ask = [
                (Limit::PortalsPerSender, sender),
                (Limit::PortalsPerDomain, "evil.example"),
            ];
            assert_eq!(l.admit(&ask, t), Ok(()));
        }
        let ask = [
            (Limit::PortalsPerSender, "c"),
            (Limit::PortalsPerDomain, "evil.example"),
        ];
        assert_eq!(l.admit(&ask, t), Err(Limit::PortalsPerDomain));
        // c's own bucket is still full: two from another domain pass.
        for _ in 0..2 {
            let ask = [
                (Limit::PortalsPerSender, "c"),
                (Limit::PortalsPerDomain, "other.example"),
            ];
            assert_eq!(l.admit(&ask, t), Ok(()));
        }
    }

    #[test]
    fn a_refund_gives_the_token_back_up_to_the_burst() {
        let l = limits(1, 3600, 1);
        let t = Instant::now();
        let ask = [
            (Limit::InvitesPerUser, "@u:hs"),
            (Limit::PortalsPerSender, "bob"),
        ];
        l.admit(&ask, t).unwrap();
        assert!(l.admit(&ask, t).is_err());
        l.refund(&ask, t);
        l.admit(&ask, t).unwrap();
        // Refunds never fill a bucket beyond its size.
        l.refund(&ask, t);
        l.refund(&ask, t);
        l.admit(&ask, t).unwrap();
        assert!(l.admit(&ask, t).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let l = limits(1, 1, 1);
        let t0 = Instant::now();
        for i in 0..PRUNE_MIN {
            let key = format!("s{i}");
            l.admit(&[(Limit::GhostsPerDomain, &key)], t0).unwrap();
        }
        assert_eq!(l.remembered(Limit::GhostsPerDomain), PRUNE_MIN);
        // A second later every bucket refilled: the next admission prunes them.
        let t1 = t0 + Duration::from_secs(1);
        l.admit(&[(Limit::GhostsPerDomain, "new")], t1).unwrap();
        assert_eq!(l.remembered(Limit::GhostsPerDomain), 1);
        // Forgetting a full bucket changes nothing: s0 again has its one token.
        l.admit(&[(Limit::GhostsPerDomain, "s0")], t1).unwrap();
        assert!(l.admit(&[(Limit::GhostsPerDomain, "s0")], t1).is_err());
    }

    proptest! {
        /// However requests come, no key gets more than the burst plus what the rate refilled
        /// over the time they span.
        #[test]
        fn never_more_than_burst_plus_rate(
            rate in 1u32..10,
            per_seconds in 1u32..120,
            burst in 1u32..20,
            steps in proptest::collection::vec((0u64..5_000, 0usize..3), 1..300),
        ) {
            let l = limits(rate, per_seconds, burst);
            let t0 = Instant::now();
            let mut t = t0;
            let mut admitted = [0u64; 3];
            for (dt_ms, key) in &steps {
                t += Duration::from_millis(*dt_ms);
                let k = ["a", "b", "c"][*key];
                if l.admit(&[(Limit::PortalsPerDomain, k)], t).is_ok() {
                    admitted[*key] += 1;
                }
            }
            let span = (t - t0).as_secs_f64();
            let bound = f64::from(burst) + span * f64::from(rate) / f64::from(per_seconds);
            for n in admitted {
                prop_assert!(n as f64 <= bound + 1e-6, "{n} admitted, bound {bound}");
            }
        }

        /// A sender who keeps within the rate is never refused.
        #[test]
        fn a_sender_within_the_rate_is_never_refused(
            rate in 1u32..10,
            per_seconds in 1u32..120,
            burst in 1u32..20,
            n in 1usize..200,
        ) {
            let l = limits(rate, per_seconds, burst);
            let gap = Duration::from_secs_f64(f64::from(per_seconds) / f64::from(rate));
            let mut t = Instant::now();
            for _ in 0..n {
                prop_assert!(l.admit(&[(Limit::InvitesPerUser, "@u:hs")], t).is_ok());
                t += gap;
            }
        }
    }
}
