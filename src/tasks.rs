//! Background tasks, tracked so that a shutdown can wait for them: cancel, drain, join.
//!
//! Every task the bridge starts goes through one [`Tasks`], which the app owns and hands to
//! the core (`Bridge::tasks`) and to each connector (`EventSink::tasks`). A shutdown
//! ([`Tasks::shutdown`]) cancels, so long-lived loops end at their next safe point, then
//! waits, with a bound, for every task to finish; only then does the app flush the store.
//! A task that holds acknowledged work (a portal queue handling an inbox item) finishes that
//! item first; what it had not started stays in the inbox and is replayed at the next start.
//!
//! This is the only module that calls `tokio::spawn` (tests aside).

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// The bridge's background tasks and the signal that asks them to stop. Clones share both.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// Tasks still running when a shutdown's bound ran out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} background tasks were still running after the shutdown bound")]
pub struct Lingering(pub usize);

impl Tasks {
    /// A new set, not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` in the background, tracked: a shutdown waits for it. A task that runs for
    /// long must end when [`Tasks::cancelled`] resolves (or use [`Tasks::spawn_loop`]).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Runs `task` in the background until it ends or the set is cancelled, whichever comes
    /// first: for loops (and delayed one-offs) that hold no acknowledged work, so that any
    /// await point is a safe place to stop.
    pub fn spawn_loop<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                _ = task => {}
            }
        })
    }

    /// Resolves once a shutdown began.
    pub fn cancelled(&self) -> WaitForCancellationFutureOwned {
        self.cancel.clone().cancelled_owned()
    }

    /// A signal cancelled when a shutdown begins, for code that holds no task of its own
    /// (the homeserver client's waits between retries). Cancelling it cancels nothing else.
    pub fn stop_signal(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    /// Whether a shutdown began.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Tasks running now.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no task runs.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Asks every task to stop ([`Tasks::cancelled`] resolves), without waiting.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Cancels, then waits up to `bound` for every task to finish, those started meanwhile
    /// included. Tasks still running after it are named by their number and left to the
    /// runtime's end.
    pub async fn shutdown(&self, bound: Duration) -> Result<(), Lingering> {
        self.cancel();
        self.tracker.close();
        match tokio::time::timeout(bound, self.tracker.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Lingering(self.tracker.len())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_waits_for_work_in_flight_and_ends_loops() {
        let tasks = Tasks::new();
        // Work in flight: it finishes only when told, and notes that it did.
        let (go, wait) = oneshot::channel::<()>();
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        tasks.spawn(async move {
            let _ = wait.await;
            flag.store(true, Ordering::SeqCst);
        });
        // A loop that would run for ever, and one that selects on cancellation itself.
        tasks.spawn_loop(std::future::pending::<()>());
        let cancelled = tasks.cancelled();
        tasks.spawn(async move {
            tokio::pin!(cancelled);
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = &mut cancelled => break,
                }
            }
        });
        assert_eq!(tasks.len(), 3);
        let stopping = tokio::spawn({
            let tasks = tasks.clone();
            async move { tasks.shutdown(Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(tasks.is_cancelled());
        assert!(!stopping.is_finished(), "the shutdown did not wait");
        assert_eq!(tasks.len(), 1, "the loops did not end on cancellation");
        go.send(()).unwrap();
        assert_eq!(stopping.await.unwrap(), Ok(()));
        assert!(done.load(Ordering::SeqCst), "the work in flight was cut");
        assert!(tasks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_gives_up_after_its_bound() {
        let tasks = Tasks::new();
        tasks.spawn(std::future::pending::<()>());
        let start = tokio::time::Instant::now();
        assert_eq!(
            tasks.shutdown(Duration::from_secs(10)).await,
            Err(Lingering(1))
        );
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_started_during_a_shutdown_is_waited_for_and_sees_it() {
        let tasks = Tasks::new();
        let (go, wait) = oneshot::channel::<()>();
        let (seen_tx, seen_rx) = oneshot::channel::<bool>();
        let inner = tasks.clone();
        tasks.spawn(async move {
            let _ = wait.await;
            // Started after the cancel: tracked all the same, and told at once.
            let cancelled = inner.is_cancelled();
            inner.spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = seen_tx.send(cancelled);
            });
        });
        let stopping = tokio::spawn({
            let tasks = tasks.clone();
            async move { tasks.shutdown(Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        go.send(()).unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(stopping.await.unwrap(), Ok(()));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(seen_rx.await, Ok(true));
    }
}
