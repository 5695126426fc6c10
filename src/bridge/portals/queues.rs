//! The portals' queues: one ordered queue per portal (and per non-portal room, and per
//! user for presence), the task-local mark of which queue a task runs, and the bookkeeping
//! of queues waiting for each other's jobs. What runs on a queue (the failure model, the
//! handlers) is the core's, in `dispatch.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::bridge::Bridge;
use crate::bridge::dispatch::Work;
use crate::store::PortalKey;

/// Names one ordered queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum QueueKey {
    /// A Matrix room that is not a portal (management rooms, invites).
    Room(String),
    /// A portal: its remote events and the Matrix events of its room.
    Portal(PortalKey),
    /// Ephemeral events that belong to no room (presence), per sender.
    User(String),
}

impl std::fmt::Display for QueueKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueKey::Room(r) => f.write_str(r),
            QueueKey::Portal(p) => write!(f, "{p}"),
            QueueKey::User(u) => write!(f, "presence of {u}"),
        }
    }
}

/// Work on a portal from outside its queue. It answers its caller itself (through a oneshot
/// channel) and is run once: a failure is its caller's to handle, by the caller's own rules
/// (an inbox item that asked is retried by the failure model, a command answers with the error).
pub(in crate::bridge) type Job = Box<dyn FnOnce(Arc<Bridge>) -> BoxFuture<'static, ()> + Send>;

/// One entry of a queue, run in arrival order.
pub(in crate::bridge) enum Entry {
    /// A stored inbox item, by its sequence. Boxed: a queue's channel allocates room for
    /// entries in blocks, and an idle portal's queue should cost little.
    Item(u64, Box<Work>),
    /// A job (not stored).
    Job(Job),
}

type Sender = mpsc::UnboundedSender<Entry>;

tokio::task_local! {
    /// The queue a queue task runs; unset in every other task.
    pub(in crate::bridge) static CURRENT: QueueKey;
}

/// The queue the running task belongs to, if it is a queue task.
pub(in crate::bridge) fn current_queue() -> Option<QueueKey> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Whether the running task is the queue of portal `key`: the one place its record may change.
pub(in crate::bridge) fn on_queue_of(key: &PortalKey) -> bool {
    CURRENT
        .try_with(|q| matches!(q, QueueKey::Portal(k) if k == key))
        .unwrap_or(false)
}

/// Why a job on a portal's queue gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Waiting would close a circle of queues each waiting for the next (two commands in two
    /// chats, each about the other's chat, at the same moment): this one gives way.
    #[error("the chat {0} is busy with a request from this one; send the command again")]
    Circular(QueueKey),
    /// The queue ended before it answered (the bridge is stopping, or the job failed hard).
    #[error("the queue of {0} ended before answering")]
    Ended(QueueKey),
}

/// The running queues.
pub(in crate::bridge) struct Queues {
    map: Mutex<HashMap<QueueKey, Sender>>,
    /// Queue tasks waiting for a job on another queue: (waiting, waited for).
    waits: Mutex<Vec<(QueueKey, QueueKey)>>,
    /// How long a queue's task waits for its next entry before it ends.
    pub(in crate::bridge) idle: Duration,
    /// Failures of one item, outages aside, that set it aside.
    pub(in crate::bridge) quarantine_after: u32,
}

impl Queues {
    pub(in crate::bridge) fn new(idle: Duration, quarantine_after: u32) -> Self {
        Self {
            map: Mutex::default(),
            waits: Mutex::default(),
            idle,
            quarantine_after: quarantine_after.max(1),
        }
    }

    /// Puts `entry` on queue `key`. When the queue has no task (it never ran, or it ended
    /// idle), returns the receiving end of a new queue, for the caller to start its task.
    pub(in crate::bridge) fn push(
        &self,
        key: &QueueKey,
        entry: Entry,
    ) -> Option<mpsc::UnboundedReceiver<Entry>> {
        let mut map = self.map.lock().expect("queues lock");
        let entry = match map.get(key) {
            Some(tx) => match tx.send(entry) {
                Ok(()) => return None,
                // The task ended after its last check; a new one starts below.
                Err(mpsc::error::SendError(back)) => back,
            },
            None => entry,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(entry)
            .unwrap_or_else(|_| unreachable!("the receiver is alive"));
        map.insert(key.clone(), tx);
        Some(rx)
    }

    /// Whether the idle task of queue `key`, whose receiving end is `rx`, ends: unless
    /// something arrived meanwhile, the queue is forgotten, and the next entry starts a new
    /// task. Senders hold the map lock while sending, so checking under it is race-free.
    pub(in crate::bridge) fn end_if_idle(
        &self,
        key: &QueueKey,
        rx: &mpsc::UnboundedReceiver<Entry>,
    ) -> bool {
        let mut map = self.map.lock().expect("queues lock");
        if rx.is_empty() {
            map.remove(key);
            return true;
        }
        false
    }

    /// Notes that queue `from` waits for a job on queue `to`, unless `to` already waits
    /// (directly or through others) for `from`: both would then wait for ever. The note is
    /// removed when the returned guard drops.
    pub(in crate::bridge) fn wait(
        &self,
        from: QueueKey,
        to: &QueueKey,
    ) -> Result<Waiting<'_>, JobError> {
        let mut waits = self.waits.lock().expect("waits lock");
        if reaches(&waits, to, &from) {
            return Err(JobError::Circular(to.clone()));
        }
        waits.push((from.clone(), to.clone()));
        Ok(Waiting {
            queues: self,
            edge: (from, to.clone()),
        })
    }
}

/// Whether `from` waits for `to`, directly or through other queues.
fn reaches(waits: &[(QueueKey, QueueKey)], from: &QueueKey, to: &QueueKey) -> bool {
    let mut seen = HashSet::new();
    let mut stack = vec![from];
    while let Some(at) = stack.pop() {
        if at == to {
            return true;
        }
        if seen.insert(at) {
            stack.extend(waits.iter().filter(|(w, _)| w == at).map(|(_, on)| on));
        }
    }
    false
}

/// A queue's wait for another queue, noted in [`Queues`] while it lasts.
pub(in crate::bridge) struct Waiting<'a> {
    queues: &'a Queues,
    edge: (QueueKey, QueueKey),
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waits = self.queues.waits.lock().expect("waits lock");
        if let Some(i) = waits.iter().position(|e| *e == self.edge) {
            waits.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portal(chat: &str) -> QueueKey {
        QueueKey::Portal(PortalKey::new("net", chat, None))
    }

    #[test]
    fn a_wait_that_would_close_a_circle_is_refused() {
        let queues = Queues::new(Duration::from_secs(1), 3);
        let room = QueueKey::Room("!r:hs".into());
        let (a, b, c) = (portal("a"), portal("b"), portal("c"));
        // A room and a portal may both wait for the same portal; chains are fine.
        let _room_on_a = queues.wait(room.clone(), &a).expect("room waits for a");
        let a_on_b = queues.wait(a.clone(), &b).expect("a waits for b");
        let _b_on_c = queues.wait(b.clone(), &c).expect("b waits for c");
        // c (or b) waiting for a or b would close a circle.
        assert!(matches!(queues.wait(c.clone(), &a), Err(JobError::Circular(k)) if k == a));
        assert!(matches!(
            queues.wait(c.clone(), &b),
            Err(JobError::Circular(_))
        ));
        assert!(matches!(
            queues.wait(b.clone(), &a),
            Err(JobError::Circular(_))
        ));
        // Once a no longer waits, the circle is open again.
        drop(a_on_b);
        let _c_on_a = queues.wait(c.clone(), &a).expect("c waits for a");
        assert_eq!(queues.waits.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_finished_wait_is_forgotten() {
        let queues = Queues::new(Duration::from_secs(1), 3);
        let (a, b) = (portal("a"), portal("b"));
        drop(queues.wait(a.clone(), &b).expect("a waits for b"));
        assert!(queues.waits.lock().unwrap().is_empty());
        let _b_on_a = queues.wait(b, &a).expect("b waits for a");
    }
}
