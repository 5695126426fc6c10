//! Ordered processing: one task per portal queue, in inbox order, parallel across queues.
//!
//! Every item in the inbox is handed to the queue of the portal it belongs to. The queue's task
//! handles items one by one and removes each from the inbox only once handled, so a crash at
//! any point leaves the item to be handled again after the restart. Idle tasks end after a
//! while and are started again by the next item.
//!
//! A portal's queue is also the only place its record changes. A change asked for from
//! anywhere else (a command, the provisioning API, an alias query, an invite in a room the
//! portal does not own) is a *job*: [`Bridge::on_portal_queue`] puts it on the portal's queue
//! behind what is already there and waits for its answer. Jobs are not stored: the caller
//! waits, and if the process ends first the caller's request fails with it (an inbox item
//! that asked is replayed, and asks again).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ruma::events::room::member::MembershipState;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, error, info_span, warn};

use super::event::{EphemeralEvent, EventKind, InvalidEphemeral, InvalidEvent, MatrixEvent};
use super::portals::queues::{CURRENT, Entry, Job, JobError, QueueKey, current_queue};
use super::{Bridge, BridgeError};
use crate::backoff::Policy;
use crate::error::{Reason, Retry, chain};
use crate::network::{NetworkId, RemoteEvent};
use crate::store::{InboxItem, PortalKey};

/// An inbox item as its queue handles it. The inbox stores a timeline event as the JSON the
/// homeserver sent; the queue gets it read ([`MatrixEvent`]), once, by whoever handed it
/// over: the transaction handler for a new event, [`Work::from`] for a stored one.
#[derive(Debug)]
pub enum Work {
    /// A timeline event, or why it cannot be read.
    Matrix(Box<Result<MatrixEvent, InvalidEvent>>),
    /// An ephemeral event (typing, receipt, presence), or why it cannot be read.
    Ephemeral(Box<Result<EphemeralEvent, InvalidEphemeral>>),
    /// An event from a remote network.
    Remote {
        /// The network it came from.
        network: NetworkId,
        /// The event.
        event: Box<RemoteEvent>,
    },
}

impl Work {
    /// A Matrix timeline event read already.
    pub fn matrix(event: Result<MatrixEvent, InvalidEvent>) -> Work {
        Work::Matrix(Box::new(event))
    }

    /// An ephemeral event read already.
    pub fn ephemeral(event: Result<EphemeralEvent, InvalidEphemeral>) -> Work {
        Work::Ephemeral(Box::new(event))
    }
}

impl From<InboxItem> for Work {
    /// Reads a stored item (a replay, a release from the quarantine, a remote event).
    fn from(item: InboxItem) -> Work {
        match item {
            InboxItem::Matrix { room_id, event } => {
                Work::matrix(MatrixEvent::read(&room_id, &event))
            }
            InboxItem::Ephemeral { event, .. } => Work::ephemeral(EphemeralEvent::read(&event)),
            InboxItem::Remote { network, event } => Work::Remote { network, event },
        }
    }
}

/// Delays between the attempts for an item that failed with a passing error: the listed
/// ones in turn, then a minute for as long as it takes (an outage is waited out; an item's
/// own failures are bounded by `bridge.quarantine_after_attempts`).
const RETRY: Policy = Policy::steps(&[
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(60),
]);

/// Retries after which the Matrix sender of an item still failing is told that its delivery
/// is delayed.
const REPORT_DELAY_AFTER: u32 = 6;

impl Bridge {
    /// The queue an item belongs to: the portal's, when the item is about a portal (so a
    /// remote chat keeps one queue before and after its room exists); else the room's.
    pub fn queue_key(&self, item: &Work) -> QueueKey {
        let by_room = |room: &str| match self.portals.by_room(room) {
            Ok(Some(p)) => QueueKey::Portal(p.key),
            _ => QueueKey::Room(room.to_owned()),
        };
        match item {
            Work::Matrix(read) => match &**read {
                // A direct chat with a ghost starting: the portal's queue, so that messages
                // from the contact cannot race the invite into a second room.
                Ok(ev) => match self.direct_invite_key(ev) {
                    Some(key) => QueueKey::Portal(key),
                    None => by_room(&ev.room_id),
                },
                Err(bad) => by_room(&bad.room_id),
            },
            Work::Ephemeral(read) => {
                let (room, sender) = match &**read {
                    Ok(ev) => ev.place(),
                    Err(bad) => bad.place(),
                };
                match room {
                    Some(r) => by_room(r),
                    None => QueueKey::User(sender.unwrap_or_default().to_owned()),
                }
            }
            Work::Remote { network, event } => {
                QueueKey::Portal(super::remote_events::portal_key(network, event))
            }
        }
    }

    /// The portal a direct-chat invite of a ghost will create.
    fn direct_invite_key(&self, ev: &MatrixEvent) -> Option<PortalKey> {
        let EventKind::Member(member) = &ev.kind else {
            return None;
        };
        if member.membership != MembershipState::Invite || member.is_direct != Some(true) {
            return None;
        }
        let (network, remote) = self.parse_ghost(ev.state_key.as_deref()?)?;
        let remote = self.networks.get(&network)?.parse_user_id(&remote).ok()?;
        Some(PortalKey::new(
            network.as_str(),
            remote.as_str(),
            Some(&ev.sender),
        ))
    }

    /// Hands a stored inbox item to its queue, starting the queue's task if needed; a
    /// timeline event is read here.
    pub fn dispatch(self: &Arc<Self>, seq: u64, item: InboxItem) {
        self.dispatch_work(seq, Work::from(item));
    }

    /// Hands a stored inbox item, read already, to its queue, starting the queue's task if
    /// needed.
    pub fn dispatch_work(self: &Arc<Self>, seq: u64, item: Work) {
        let key = self.queue_key(&item);
        self.enqueue(key, Entry::Item(seq, Box::new(item)));
    }

    /// Runs `job` on the queue of portal `key`, after everything already queued there, and
    /// returns its answer. Every change to a portal made from outside its queue goes through
    /// here, so that it is ordered with the portal's own events (a remote message and a
    /// `start-chat` for the same contact cannot both create a room).
    ///
    /// On that queue already (a handler of the portal's own item, or a job there), `job` runs
    /// at once. From another queue the wait is noted, and refused with [`JobError::Circular`]
    /// when the target already waits for the caller's queue. The job is not stored; if the
    /// process ends before it ran, the caller never gets an answer either.
    pub(super) async fn on_portal_queue<T, F, Fut>(
        &self,
        key: &PortalKey,
        job: F,
    ) -> Result<T, BridgeError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Bridge>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, BridgeError>> + Send + 'static,
    {
        let target = QueueKey::Portal(key.clone());
        let Some(me) = self.me.upgrade() else {
            return Err(JobError::Ended(target).into());
        };
        let current = current_queue();
        if current.as_ref() == Some(&target) {
            return job(me).await;
        }
        let _waiting = match current {
            Some(from) => Some(self.portals.queues().wait(from, &target)?),
            None => None,
        };
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |bridge| {
            async move {
                // The caller may have gone (an HTTP client hung up); the job ran all the same.
                let _ = tx.send(job(bridge).await);
            }
            .boxed()
        });
        me.enqueue(target.clone(), Entry::Job(job));
        rx.await.map_err(|_| JobError::Ended(target))?
    }

    /// Puts an entry on queue `key`, starting the queue's task if needed.
    fn enqueue(self: &Arc<Self>, key: QueueKey, entry: Entry) {
        let Some(rx) = self.portals.queues().push(&key, entry) else {
            return;
        };
        let span = info_span!("portal", queue = %key);
        let bridge = Arc::clone(self);
        self.metrics.portal_tasks.inc();
        let task = CURRENT.scope(key.clone(), bridge.run_queue(key, rx));
        self.tasks.spawn(task.instrument(span));
    }

    /// A queue's task: its entries one by one, until it idles or the bridge stops. A stop
    /// lets the entry in hand finish (an inbox item is handled and removed, or stays for the
    /// next start), and takes no further one: those are in the inbox, or are jobs whose
    /// callers are told the queue ended.
    async fn run_queue(self: Arc<Self>, key: QueueKey, mut rx: mpsc::UnboundedReceiver<Entry>) {
        let stopping = self.tasks.cancelled();
        tokio::pin!(stopping);
        loop {
            let next = tokio::select! {
                biased;
                () = &mut stopping => {
                    debug!("the bridge is stopping; the queue takes nothing more");
                    break;
                }
                next = tokio::time::timeout(self.portals.queues().idle, rx.recv()) => next,
            };
            let entry = match next {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(_) if self.portals.queues().end_if_idle(&key, &rx) => break,
                // Something arrived meanwhile.
                Err(_) => continue,
            };
            match entry {
                // Boxed, so that the task of an idle queue holds only this loop's small state,
                // not room for the deepest handler's (the largest future of the bridge).
                Entry::Item(seq, item) => Box::pin(self.process(seq, *item)).await,
                Entry::Job(job) => job(Arc::clone(&self)).await,
            }
        }
        self.metrics.portal_tasks.dec();
        debug!("portal queue idle, task ended");
    }

    /// Handles one item, then removes it from the inbox.
    ///
    /// The failure model: a permanent failure ends the tries and the sender is told. A passing
    /// failure is retried with backoff capped at a minute, holding the portal's queue so that
    /// order is kept; after the first few tries the Matrix sender is told that delivery is
    /// delayed. An outage (homeserver unreachable, store failing, network link down) is waited
    /// out for as long as it lasts. Any other passing failure counts against the item: past
    /// `bridge.quarantine_after_attempts` of them the item is set aside in the quarantine
    /// (its sender is told, admins see it in the `quarantine` command and the
    /// `bridge_quarantined_items` metric), and the portal goes on with its next item.
    async fn process(&self, seq: u64, item: Work) {
        let mut retry = RETRY.start();
        let mut counted = 0u32;
        loop {
            let Err(e) = self.handle_item(seq, &item).await else {
                break;
            };
            let verdict = e.retry();
            if verdict != Retry::Never && self.tasks.is_cancelled() {
                // Cut by the shutdown (the homeserver client makes no retry once it began):
                // not the item's fault, so not counted; it stays in the inbox for the next
                // start.
                debug!(seq, error = %chain(&e), "the bridge is stopping; the item waits for the next start");
                return;
            }
            if verdict == Retry::Never {
                error!(seq, error = %chain(&e), "handling failed for good");
                self.report_failure(&item, &e).await;
                break;
            }
            let attempt = retry.retries();
            let outage = verdict == Retry::Outage;
            if !outage {
                counted += 1;
                if counted >= self.portals.queues().quarantine_after {
                    self.set_aside(seq, &item, &e, attempt as usize + 1).await;
                    return;
                }
            }
            if attempt == REPORT_DELAY_AFTER {
                self.report_delay(&item, &e).await;
            }
            let delay = retry.next_delay().unwrap_or(RETRY.cap());
            warn!(seq, attempt, outage, error = %chain(&e), delay_ms = delay.as_millis() as u64, "handling failed, will retry");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.tasks.cancelled() => {
                    // Not handled: it stays in the inbox, and the next start tries again.
                    debug!(seq, "the bridge is stopping; the item waits for the next start");
                    return;
                }
            }
        }
        if let Err(e) = self.store.inbox_remove(seq) {
            error!(seq, error = %chain(&e), "could not remove handled item from the inbox");
        }
    }

    /// Moves an item that keeps failing into the quarantine and tells its sender. Should the
    /// store refuse, the item stays in the inbox (it is replayed at the next start).
    async fn set_aside(&self, seq: u64, item: &Work, e: &super::BridgeError, attempts: usize) {
        let why = crate::store::QuarantineRecord {
            error: e.to_string(),
            attempts: attempts as u32,
            since_ms: super::now_ms(),
        };
        match self.store.quarantine(seq, &why).await {
            Ok(()) => {
                error!(seq, attempts, error = %chain(e), "item set aside in the quarantine after failing too often");
                self.metrics
                    .quarantined
                    .set(self.store.quarantine_len() as i64);
                self.report_quarantined(item, e).await;
            }
            Err(store) => {
                error!(seq, error = %chain(&store), "could not set the item aside; it stays in the inbox");
            }
        }
    }

    /// Sends quarantined item `seq` back to its queue, behind what arrived meanwhile.
    /// Returns whether there was such an item.
    pub async fn release_quarantined(&self, seq: u64) -> Result<bool, crate::store::StoreError> {
        let Some(me) = self.me.upgrade() else {
            return Ok(false);
        };
        let Some((new, item)) = self.store.release(seq).await? else {
            return Ok(false);
        };
        self.metrics
            .quarantined
            .set(self.store.quarantine_len() as i64);
        me.dispatch(new, item);
        Ok(true)
    }

    /// The items in the quarantine, oldest first: sequence, a short description, why.
    pub fn quarantined(
        &self,
    ) -> Result<Vec<(u64, String, crate::store::QuarantineRecord)>, crate::store::StoreError> {
        Ok(self
            .store
            .quarantined()?
            .into_iter()
            .map(|(seq, item, why)| (seq, describe(&item), why))
            .collect())
    }

    async fn handle_item(&self, seq: u64, item: &Work) -> Result<(), super::BridgeError> {
        match item {
            Work::Matrix(read) => match &**read {
                Ok(ev) => self.handle_matrix_event(seq, ev).await,
                Err(bad) => Err(BridgeError::Invalid(Reason::from_error(bad.clone()))),
            },
            Work::Ephemeral(read) => match &**read {
                Ok(ev) => self.handle_ephemeral(ev).await,
                Err(bad) => Err(BridgeError::Invalid(Reason::from_error(bad.clone()))),
            },
            Work::Remote { network, event } => self.handle_remote_event(seq, network, event).await,
        }
    }

    /// Dispatches everything left in the inbox by an earlier run, oldest first.
    pub fn replay_inbox(self: &Arc<Self>) -> Result<usize, crate::store::StoreError> {
        self.metrics
            .quarantined
            .set(self.store.quarantine_len() as i64);
        let pending = self.store.inbox_pending()?;
        let n = pending.len();
        for (seq, item) in pending {
            self.dispatch(seq, item);
        }
        Ok(n)
    }
}

/// What an item is, for an admin: the room or network and the kind of event.
fn describe(item: &InboxItem) -> String {
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        sender: String,
    }
    match item {
        InboxItem::Matrix { room_id, event }
        | InboxItem::Ephemeral {
            room_id: Some(room_id),
            event,
        } => {
            let e: E = serde_json::from_str(event.get()).unwrap_or(E {
                kind: "?".into(),
                sender: "?".into(),
            });
            format!("{} from {} in {room_id}", e.kind, e.sender)
        }
        InboxItem::Ephemeral { room_id: None, .. } => "an ephemeral event".into(),
        InboxItem::Remote { network, event } => format!(
            "{network} event from {} in {}",
            event.sender.as_str(),
            event.chat.as_str()
        ),
    }
}
