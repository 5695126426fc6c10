//! Delays between retries, for every retry loop in the bridge.
//!
//! A [`Policy`] says how long to wait before each retry: an *envelope* that grows from an
//! initial delay to a cap (doubling, or along a fixed list of steps), a *jitter* that spreads
//! the delay within a fraction of the envelope so that many loops failing together do not
//! retry together, and optionally a bound on the number of retries. A [`Backoff`] is one
//! loop's position in its policy: [`Backoff::next_delay`] (or [`Backoff::wait`], which sleeps
//! and can be raced against a stop signal) moves it on, [`Backoff::reset`] starts it again
//! after a success.
//!
//! Contracts: a delay is never above the policy's cap; the envelope never shrinks from one
//! retry to the next; a bounded policy gives exactly `max_retries` delays, then `None`.
//! Sleeping uses the tokio clock, so tests can run it with `tokio::time::pause`.

use std::time::Duration;

use rand::Rng;

/// How the envelope grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Envelope {
    /// `initial`, doubling at each retry, up to `cap`.
    Doubling {
        /// Before the first retry.
        initial: Duration,
        /// The largest delay.
        cap: Duration,
    },
    /// The listed delays in turn, then the last one for ever (it is the cap).
    Steps(&'static [Duration]),
}

/// Where a delay falls within its envelope: the envelope scaled by a factor drawn uniformly
/// from `[low, high)`, and never above the policy's cap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    low: f64,
    high: f64,
}

impl Jitter {
    /// No jitter: the delay is the envelope.
    pub const NONE: Jitter = Jitter {
        low: 1.0,
        high: 1.0,
    };
    /// Full jitter: anywhere from zero to the envelope.
    pub const FULL: Jitter = Jitter {
        low: 0.0,
        high: 1.0,
    };
    /// Equal jitter: from half the envelope to the envelope.
    pub const EQUAL: Jitter = Jitter {
        low: 0.5,
        high: 1.0,
    };

    /// Within `fraction` of the envelope either way (`0.25`: from 75 % to 125 %; the cap
    /// still holds). `fraction` is clamped to `[0, 1]`.
    pub const fn spread(fraction: f64) -> Jitter {
        let f = fraction.clamp(0.0, 1.0);
        Jitter {
            low: 1.0 - f,
            high: 1.0 + f,
        }
    }

    /// The factor for a draw `unit` in `[0, 1)`.
    fn factor(self, unit: f64) -> f64 {
        self.low + (self.high - self.low) * unit.clamp(0.0, 1.0)
    }
}

/// How long to wait before each retry, and how many retries there are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    envelope: Envelope,
    jitter: Jitter,
    max_retries: Option<u32>,
}

impl Policy {
    /// From `initial`, doubling at each retry up to `cap`; no jitter, no bound.
    ///
    /// # Panics
    /// When `initial` is above `cap` (at compile time for a constant).
    pub const fn doubling(initial: Duration, cap: Duration) -> Policy {
        assert!(
            initial.as_nanos() <= cap.as_nanos(),
            "the initial delay is above the cap"
        );
        Policy {
            envelope: Envelope::Doubling { initial, cap },
            jitter: Jitter::NONE,
            max_retries: None,
        }
    }

    /// The same delay before every retry; no jitter, no bound.
    pub const fn constant(delay: Duration) -> Policy {
        Policy::doubling(delay, delay)
    }

    /// The delays of `steps` in turn, then the last one for every further retry (it is the
    /// cap); no jitter, no bound. For schedules that are not a doubling.
    ///
    /// # Panics
    /// When `steps` is empty or a step is shorter than the one before (at compile time for a
    /// constant).
    pub const fn steps(steps: &'static [Duration]) -> Policy {
        assert!(!steps.is_empty(), "a schedule needs a step");
        let mut i = 1;
        while i < steps.len() {
            assert!(
                steps[i - 1].as_nanos() <= steps[i].as_nanos(),
                "the steps must not shrink"
            );
            i += 1;
        }
        Policy {
            envelope: Envelope::Steps(steps),
            jitter: Jitter::NONE,
            max_retries: None,
        }
    }

    /// This policy with `jitter`.
    pub const fn with_jitter(self, jitter: Jitter) -> Policy {
        Policy { jitter, ..self }
    }

    /// This policy with at most `max_retries` retries (0: none).
    pub const fn with_max_retries(self, max_retries: u32) -> Policy {
        Policy {
            max_retries: Some(max_retries),
            ..self
        }
    }

    /// The bound on retries, if any.
    pub fn max_retries(&self) -> Option<u32> {
        self.max_retries
    }

    /// The largest delay.
    pub fn cap(&self) -> Duration {
        match self.envelope {
            Envelope::Doubling { cap, .. } => cap,
            Envelope::Steps(steps) => steps[steps.len() - 1],
        }
    }

    /// The envelope before retry number `retry` (0 for the first): the delay without jitter.
    pub fn envelope(&self, retry: u32) -> Duration {
        match self.envelope {
            Envelope::Doubling { initial, cap } => initial
                .saturating_mul(2u32.saturating_pow(retry.min(31)))
                .min(cap),
            Envelope::Steps(steps) => steps[(retry as usize).min(steps.len() - 1)],
        }
    }

    /// The delay before retry number `retry` for the jitter draw `unit` in `[0, 1)`: the
    /// envelope scaled by the jitter, capped. Pure, so it can be tested without a clock.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        self.envelope(retry)
            .mul_f64(self.jitter.factor(unit))
            .min(self.cap())
    }

    /// A new loop at its first retry.
    pub fn start(self) -> Backoff {
        Backoff {
            policy: self,
            retry: 0,
        }
    }
}

/// One retry loop's place in its [`Policy`].
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: Policy,
    retry: u32,
}

impl Backoff {
    /// The delay before the next retry, moving on to the one after; `None` once a bounded
    /// policy's retries are spent (then it stays `None` until [`reset`](Self::reset)).
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.next_with(rand::rng().random::<f64>())
    }

    /// [`next_delay`](Self::next_delay) with the jitter draw given.
    fn next_with(&mut self, unit: f64) -> Option<Duration> {
        if self.policy.max_retries.is_some_and(|max| self.retry >= max) {
            return None;
        }
        let delay = self.policy.delay(self.retry, unit);
        self.retry = self.retry.saturating_add(1);
        Some(delay)
    }

    /// Sleeps for the next delay and returns `true`; returns `false` at once when the
    /// retries are spent. Dropping the future (say, because a stop signal won a
    /// `tokio::select!`) leaves the loop moved on by one retry.
    pub async fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(delay) => {
                tokio::time::sleep(delay).await;
                true
            }
            None => false,
        }
    }

    /// Back to the first retry, after a success.
    pub fn reset(&mut self) {
        self.retry = 0;
    }

    /// Retries taken since the start or the last reset.
    pub fn retries(&self) -> u32 {
        self.retry
    }

    /// Moves on to retry number `retry` unless it is there already or further: for a failure
    /// that will not change soon, whose retries should start slower.
    pub fn skip_to(&mut self, retry: u32) {
        self.retry = self.retry.max(retry);
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const STEPS: &[Duration] = &[
        Duration::from_millis(500),
        Duration::from_secs(1),
        Duration::from_secs(5),
        Duration::from_secs(60),
    ];

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::NONE),
            Just(Jitter::FULL),
            Just(Jitter::EQUAL),
            (0.0..1.0f64).prop_map(Jitter::spread),
        ]
    }

    fn policy() -> impl Strategy<Value = Policy> {
        let doubling = (0u64..10_000, 0u64..200_000).prop_map(|(a, b)| {
            let (initial, cap) = (a.min(b), a.max(b));
            Policy::doubling(ms(initial), ms(cap))
        });
        let steps = Just(Policy::steps(STEPS));
        (prop_oneof![doubling, steps], jitter()).prop_map(|(p, j)| p.with_jitter(j))
    }

    proptest! {
        #[test]
        fn a_delay_stays_within_its_jitter_and_under_the_cap(
            p in policy(),
            retry in 0u32..100,
            unit in 0.0..1.0f64,
        ) {
            let d = p.delay(retry, unit);
            let env = p.envelope(retry).as_secs_f64();
            prop_assert!(d <= p.cap(), "{d:?} above the cap {:?}", p.cap());
            let (low, high) = (env * p.jitter.low, env * p.jitter.high);
            let secs = d.as_secs_f64();
            prop_assert!(secs >= low - 1e-6, "{secs} below {low}");
            prop_assert!(secs <= high + 1e-6, "{secs} above {high}");
        }

        #[test]
        fn the_envelope_never_shrinks(p in policy(), retry in 0u32..200) {
            prop_assert!(p.envelope(retry) <= p.envelope(retry + 1));
            prop_assert!(p.envelope(retry) <= p.cap());
        }

        #[test]
        fn a_bounded_loop_gives_exactly_its_retries_and_reset_starts_again(
            p in policy(),
            max in 0u32..20,
            units in proptest::collection::vec(0.0..1.0f64, 40),
        ) {
            let mut b = p.with_max_retries(max).start();
            let mut given = 0;
            for (i, u) in units.iter().enumerate() {
                match b.next_with(*u) {
                    Some(d) => {
                        prop_assert_eq!(d, p.delay(i as u32, *u));
                        given += 1;
                    }
                    None => prop_assert!(given == max),
                }
            }
            prop_assert_eq!(given, max.min(40));
            b.reset();
            prop_assert_eq!(b.retries(), 0);
            if max > 0 {
                prop_assert_eq!(b.next_with(0.5), Some(p.delay(0, 0.5)));
            } else {
                prop_assert_eq!(b.next_with(0.5), None);
            }
        }
    }

    #[test]
    fn doubling_grows_from_the_initial_delay_to_the_cap() {
        let p = Policy::doubling(ms(250), Duration::from_secs(30));
        let envelope: Vec<_> = (0..9).map(|r| p.envelope(r)).collect();
        assert_eq!(
            envelope,
            [250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000].map(ms)
        );
        assert_eq!(p.envelope(u32::MAX), Duration::from_secs(30), "no overflow");
        assert_eq!(Policy::constant(ms(2000)).envelope(7), ms(2000));
    }

    #[test]
    fn steps_are_taken_in_turn_then_the_last_for_ever() {
        let p = Policy::steps(STEPS);
        let delays: Vec<_> = (0..6).map(|r| p.delay(r, 0.3)).collect();
        assert_eq!(delays, [500, 1000, 5000, 60_000, 60_000, 60_000].map(ms));
        assert_eq!(p.cap(), Duration::from_secs(60));
    }

    #[test]
    fn jitter_ranges() {
        let p = Policy::doubling(ms(1000), ms(1000));
        assert_eq!(p.with_jitter(Jitter::FULL).delay(0, 0.0), ms(0));
        assert_eq!(p.with_jitter(Jitter::EQUAL).delay(0, 0.0), ms(500));
        let spread = Policy::doubling(ms(1000), ms(4000)).with_jitter(Jitter::spread(0.25));
        assert_eq!(spread.delay(0, 0.0), ms(750));
        assert_eq!(spread.delay(0, 0.5), ms(1000));
        // The spread reaches above the envelope, but never above the cap.
        assert_eq!(spread.delay(3, 0.99), ms(4000));
    }

    #[test]
    fn skip_to_only_moves_forward() {
        let mut b = Policy::doubling(ms(1000), ms(60_000)).start();
        b.skip_to(5);
        assert_eq!(b.next_with(0.0), Some(ms(32_000)));
        b.skip_to(2);
        assert_eq!(b.retries(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_delay_and_a_stop_signal_can_win() {
        let mut b = Policy::doubling(ms(1000), ms(8000))
            .with_max_retries(2)
            .start();
        let start = tokio::time::Instant::now();
        assert!(b.wait().await);
        assert_eq!(start.elapsed(), ms(1000));
        // A stop that comes first ends the wait; the retry is used all the same.
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::time::sleep(ms(100)).await;
            let _ = tx.send(true);
        });
        let stopped = tokio::select! {
            _ = b.wait() => false,
            _ = rx.changed() => true,
        };
        assert!(stopped);
        assert_eq!(start.elapsed(), ms(1100));
        // Spent: no sleep at all.
        assert!(!b.wait().await);
        assert_eq!(start.elapsed(), ms(1100));
    }
}
