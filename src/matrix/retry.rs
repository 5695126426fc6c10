//! Retry policy for homeserver requests: jittered exponential backoff (`crate::backoff`)
//! that honours the homeserver's own hints (`retry_after_ms`, `Retry-After`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::error::MatrixError;
use crate::backoff::{Jitter, Policy};

/// What one attempt of a request came to.
#[derive(Debug)]
pub(super) enum Attempt<T> {
    /// Finished: success, hand the value back.
    Done(T),
    /// Transient failure (connection error, 429, 5xx): try again, after at least `after` if
    /// the homeserver said so.
    Retry {
        /// What to return if no retry is left.
        error: MatrixError,
        /// The homeserver's own wait hint.
        after: Option<Duration>,
    },
    /// Permanent failure (4xx other than 429, encoding errors): give up now.
    Fail(MatrixError),
}

/// Before the first retry of a homeserver request; doubles for each further one.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest computed wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// The longest wait taken from a homeserver hint, so a bogus hint cannot stall a portal for
/// hours.
const MAX_HINT: Duration = Duration::from_secs(300);

/// How often and how long to wait between attempts.
#[derive(Debug, Clone)]
pub(super) struct RetryPolicy {
    /// The backoff between attempts, bounded by the number of retries after the first
    /// attempt.
    pub backoff: Policy,
    /// Largest wait taken from a homeserver hint.
    pub max_hint: Duration,
}

impl RetryPolicy {
    /// The policy the client uses: 250 ms doubling to 30 s with equal jitter (each wait
    /// between half and all of the doubled delay), `max_retries` retries; hints honoured up
    /// to 5 minutes.
    pub fn new(max_retries: u32) -> Self {
        Self {
            backoff: Policy::doubling(FIRST_DELAY, MAX_DELAY)
                .with_jitter(Jitter::EQUAL)
                .with_max_retries(max_retries),
            max_hint: MAX_HINT,
        }
    }

    /// [`new`](Self::new) with another first delay (tests shorten it).
    #[cfg(test)]
    pub fn with_first_delay(max_retries: u32, first: Duration) -> Self {
        Self {
            backoff: Policy::doubling(first, MAX_DELAY.max(first))
                .with_jitter(Jitter::EQUAL)
                .with_max_retries(max_retries),
            max_hint: MAX_HINT,
        }
    }

    /// The wait before retry number `retry` (0 for the first retry).
    ///
    /// `unit` in `[0, 1)` is the jitter draw (see [`Policy::delay`]). A homeserver hint
    /// raises the wait to at least the hint (capped at `max_hint`).
    #[cfg(test)]
    fn delay(&self, retry: u32, hint: Option<Duration>, unit: f64) -> Duration {
        with_hint(self.backoff.delay(retry, unit), hint, self.max_hint)
    }

    /// Runs `attempt` until it is done, fails permanently, the retries run out, or `stop`
    /// is cancelled (a shutdown): then no further attempt is made and the last error is
    /// returned at once, however long the wait before the next retry would have been (a
    /// homeserver hint may ask for minutes). An attempt in flight is not cut. `attempt` gets
    /// the attempt number (0 for the first try). `what` names the request in logs.
    ///
    /// (A plain closure returning a future, not an async closure: futures from async closures
    /// are not provably `Send` across higher-ranked lifetimes, which `tokio::spawn` needs.)
    pub async fn run<T, F, Fut>(
        &self,
        what: &str,
        stop: &CancellationToken,
        attempt: F,
    ) -> Result<T, MatrixError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        self.run_with_sleep(what, attempt, |delay| async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => false,
                () = tokio::time::sleep(delay) => true,
            }
        })
        .await
    }

    /// [`run`](Self::run) with the wait between attempts supplied by `sleep`, so tests can
    /// observe the delays without waiting. `sleep` resolves to whether the wait ran out
    /// (false: it was cut by a stop, and no further attempt is made).
    async fn run_with_sleep<T, F, Fut, S, SFut>(
        &self,
        what: &str,
        mut attempt: F,
        mut sleep: S,
    ) -> Result<T, MatrixError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Attempt<T>>,
        S: FnMut(Duration) -> SFut,
        SFut: Future<Output = bool>,
    {
        let mut backoff = self.backoff.start();
        loop {
            let n = backoff.retries();
            match attempt(n).await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { error, after } => {
                    let Some(delay) = backoff.next_delay() else {
                        warn!(request = what, attempts = n + 1, error = %error, "homeserver request failed, no retries left");
                        return Err(error);
                    };
                    let delay = with_hint(delay, after, self.max_hint);
                    warn!(
                        request = what,
                        attempt = n + 1,
                        delay_ms = delay.as_millis() as u64,
                        error = %error,
                        "homeserver request failed, retrying"
                    );
                    if !sleep(delay).await {
                        debug!(
                            request = what,
                            attempts = n + 1,
                            "the bridge is stopping; no further retry"
                        );
                        return Err(error);
                    }
                }
            }
        }
    }
}

/// `delay`, raised to the homeserver's hint when it gave one (capped at `max_hint`).
fn with_hint(delay: Duration, hint: Option<Duration>, max_hint: Duration) -> Duration {
    match hint {
        Some(h) => delay.max(h.min(max_hint)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn err() -> MatrixError {
        MatrixError::Api {
            status: 429,
            errcode: "M_LIMIT_EXCEEDED".into(),
            message: "slow".into(),
        }
    }

    #[test]
    fn backoff_doubles_from_250ms_and_caps_at_30s() {
        let p = RetryPolicy::new(6);
        // Upper end of the jitter range: the full backoff (minus a hair).
        let top = |r| p.delay(r, None, 0.999_999);
        assert!(top(0) <= ms(250) && top(0) > ms(249));
        assert!(top(1) <= ms(500) && top(1) > ms(499));
        assert!(top(2) <= ms(1000) && top(2) > ms(999));
        assert!(top(6) <= ms(16_000) && top(6) > ms(15_990));
        assert!(top(7) <= ms(30_000) && top(7) > ms(29_990));
        assert!(top(40) <= ms(30_000), "huge retry counts must not overflow");
        // Lower end: half.
        assert_eq!(p.delay(0, None, 0.0), ms(125));
        assert_eq!(p.delay(3, None, 0.0), ms(1000));
    }

    #[test]
    fn hint_is_a_floor_and_is_capped() {
        let p = RetryPolicy::new(6);
        assert_eq!(p.delay(0, Some(ms(2000)), 0.0), ms(2000));
        // A hint shorter than the backoff does not shorten it.
        assert_eq!(p.delay(3, Some(ms(10)), 0.0), ms(1000));
        // An absurd hint is capped.
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(86_400)), 0.0),
            Duration::from_secs(300)
        );
    }

    /// Runs `policy` over scripted attempt outcomes; returns the result, the number of
    /// attempts and the delays slept.
    async fn script(
        policy: &RetryPolicy,
        mut outcome: impl FnMut(u32) -> Attempt<u32>,
    ) -> (Result<u32, MatrixError>, u32, Vec<Duration>) {
        let mut calls = 0;
        let mut slept = Vec::new();
        let out = policy
            .run_with_sleep(
                "test",
                |n| {
                    calls += 1;
                    std::future::ready(outcome(n))
                },
                |d| {
                    slept.push(d);
                    std::future::ready(true)
                },
            )
            .await;
        (out, calls, slept)
    }

    #[tokio::test]
    async fn retries_honour_retry_after_then_succeed() {
        let p = RetryPolicy::new(6);
        let (out, calls, slept) = script(&p, |n| {
            if n < 2 {
                Attempt::Retry {
                    error: err(),
                    after: Some(ms(5000)),
                }
            } else {
                Attempt::Done(n)
            }
        })
        .await;
        assert_eq!(out, Ok(2));
        assert_eq!(calls, 3);
        // Each retry waited at least the 5 s the homeserver asked for.
        assert_eq!(slept.len(), 2);
        assert!(slept.iter().all(|d| *d >= ms(5000)), "{slept:?}");
    }

    #[tokio::test]
    async fn gives_up_after_max_retries_with_the_last_error() {
        let p = RetryPolicy::new(3);
        let (out, calls, slept) = script(&p, |_| Attempt::Retry {
            error: err(),
            after: None,
        })
        .await;
        assert_eq!(out, Err(err()));
        assert_eq!(calls, 4, "one try plus three retries");
        // Jittered exponential backoff: [125, 250), [250, 500), [500, 1000) ms.
        assert_eq!(slept.len(), 3);
        for (d, base) in slept.iter().zip([250, 500, 1000]) {
            assert!(*d >= ms(base / 2) && *d <= ms(base), "{slept:?}");
        }
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let p = RetryPolicy::new(6);
        let forbidden = MatrixError::Api {
            status: 403,
            errcode: "M_FORBIDDEN".into(),
            message: "no".into(),
        };
        let (out, calls, slept) = script(&p, |_| Attempt::Fail(forbidden.clone())).await;
        assert_eq!(out, Err(forbidden));
        assert_eq!(calls, 1);
        assert!(slept.is_empty());
    }

    #[tokio::test]
    async fn zero_retries_means_one_attempt() {
        let p = RetryPolicy::new(0);
        let (out, calls, _) = script(&p, |_| Attempt::Retry {
            error: err(),
            after: None,
        })
        .await;
        assert_eq!(out, Err(err()));
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn a_stop_during_a_wait_ends_the_retries_with_the_last_error() {
        // Whatever the wait (the backoff, or a homeserver hint of minutes), a stop ends it
        // and no attempt follows.
        for (retries, hint) in [(6, None), (6, Some(ms(120_000))), (1, Some(ms(1)))] {
            let p = RetryPolicy::new(retries);
            let mut calls = 0;
            let mut waits = 0;
            let out: Result<u32, _> = p
                .run_with_sleep(
                    "test",
                    |_| {
                        calls += 1;
                        std::future::ready(Attempt::Retry {
                            error: err(),
                            after: hint,
                        })
                    },
                    |_| {
                        waits += 1;
                        std::future::ready(false)
                    },
                )
                .await;
            assert_eq!(out, Err(err()));
            assert_eq!((calls, waits), (1, 1), "retries {retries}, hint {hint:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn run_gives_up_as_soon_as_the_stop_is_cancelled() {
        let p = RetryPolicy::new(6);
        let stop = CancellationToken::new();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let run = p.run("test", &stop, |_| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::future::ready(Attempt::<u32>::Retry {
                error: err(),
                after: Some(Duration::from_secs(60)),
            })
        });
        let cancel = async {
            tokio::time::sleep(ms(1500)).await;
            stop.cancel();
        };
        let (out, ()) = tokio::join!(run, cancel);
        assert_eq!(out, Err(err()));
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(
            started.elapsed(),
            ms(1500),
            "ended when the stop came, not after the hint"
        );

        // Already stopped: one attempt, no wait.
        let started = tokio::time::Instant::now();
        let out: Result<u32, _> = p
            .run("test", &stop, |_| {
                std::future::ready(Attempt::Retry {
                    error: err(),
                    after: None,
                })
            })
            .await;
        assert_eq!(out, Err(err()));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
