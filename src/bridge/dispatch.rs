//! Ordered processing: one task per portal queue, in inbox order, parallel across queues.
//!
//! Every item in the inbox is handed to the queue of the portal it belongs to. The queue's task
//! handles items one by one and removes each from the inbox only once handled, so a crash at
//! any point leaves the item to be handled again after the restart. Idle tasks end after a
//! while and are started again by the next item.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{Instrument, debug, error, info_span, warn};

use super::Bridge;
use crate::store::{InboxItem, PortalKey};

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

type Sender = mpsc::UnboundedSender<(u64, InboxItem)>;

/// The running queues.
pub(super) struct Queues {
    map: Mutex<HashMap<QueueKey, Sender>>,
    idle: Duration,
    /// Failures of one item, outages aside, that set it aside.
    quarantine_after: u32,
}

impl Queues {
    pub(super) fn new(idle: Duration, quarantine_after: u32) -> Self {
        Self {
            map: Mutex::default(),
            idle,
            quarantine_after: quarantine_after.max(1),
        }
    }
}

/// Delay between attempts once the first ones are spent.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Delays between the first attempts for an item that failed with a passing error.
const RETRY_DELAYS: [Duration; 6] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(30),
];

impl Bridge {
    /// The queue an item belongs to: the portal's, when the item is about a portal (so a
    /// remote chat keeps one queue before and after its room exists); else the room's.
    pub fn queue_key(&self, item: &InboxItem) -> QueueKey {
        let by_room = |room: &str| match self.store.portal_by_room(room) {
            Ok(Some(p)) => QueueKey::Portal(p.key),
            _ => QueueKey::Room(room.to_owned()),
        };
        match item {
            InboxItem::Matrix { room_id, event } => match self.direct_invite_key(event.get()) {
                // A direct chat with a ghost starting: the portal's queue, so that messages
                // from the contact cannot race the invite into a second room.
                Some(key) => QueueKey::Portal(key),
                None => by_room(room_id),
            },
            InboxItem::Ephemeral { room_id, event } => match room_id {
                Some(r) => by_room(r),
                None => QueueKey::User(ephemeral_sender(event.get()).unwrap_or_default()),
            },
            InboxItem::Remote { network, event } => {
                QueueKey::Portal(super::remote_events::portal_key(network, event))
            }
        }
    }

    /// The portal a direct-chat invite of a ghost will create.
    fn direct_invite_key(&self, json: &str) -> Option<PortalKey> {
        #[derive(serde::Deserialize)]
        struct Invite {
            #[serde(rename = "type")]
            kind: String,
            sender: String,
            #[serde(default)]
            state_key: Option<String>,
            #[serde(default)]
            content: serde_json::Value,
        }
        let ev: Invite = serde_json::from_str(json).ok()?;
        if ev.kind != "m.room.member"
            || ev.content.get("membership").and_then(|m| m.as_str()) != Some("invite")
            || ev.content.get("is_direct").and_then(|d| d.as_bool()) != Some(true)
        {
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

    /// Hands a stored inbox item to its queue, starting the queue's task if needed.
    pub fn dispatch(self: &Arc<Self>, seq: u64, item: InboxItem) {
        let key = self.queue_key(&item);
        let mut map = self.queues.map.lock().expect("queues lock");
        let mut item = Some((seq, item));
        if let Some(tx) = map.get(&key) {
            match tx.send(item.take().expect("item present")) {
                Ok(()) => return,
                // The task ended after its last check; start a new one below.
                Err(mpsc::error::SendError(back)) => item = Some(back),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(item.take().expect("item present"))
            .expect("receiver is alive");
        map.insert(key.clone(), tx);
        drop(map);
        let span = info_span!("portal", queue = %key);
        let bridge = Arc::clone(self);
        self.metrics.portal_tasks.inc();
        tokio::spawn(async move { bridge.run_queue(key, rx).await }.instrument(span));
    }

    async fn run_queue(
        self: Arc<Self>,
        key: QueueKey,
        mut rx: mpsc::UnboundedReceiver<(u64, InboxItem)>,
    ) {
        loop {
            let next = tokio::time::timeout(self.queues.idle, rx.recv()).await;
            let (seq, item) = match next {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(_) => {
                    // Idle: end unless something arrived meanwhile. Senders hold the map
                    // lock while sending, so checking under it is race-free.
                    let mut map = self.queues.map.lock().expect("queues lock");
                    if rx.is_empty() {
                        map.remove(&key);
                        break;
                    }
                    continue;
                }
            };
            self.process(seq, item).await;
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
    async fn process(&self, seq: u64, item: InboxItem) {
        let mut attempt = 0;
        let mut counted = 0u32;
        loop {
            match self.handle_item(seq, &item).await {
                Ok(()) => break,
                Err(e) if e.is_transient() => {
                    if !e.is_outage() {
                        counted += 1;
                        if counted >= self.queues.quarantine_after {
                            self.set_aside(seq, &item, &e, attempt + 1).await;
                            return;
                        }
                    }
                    if attempt == RETRY_DELAYS.len() {
                        self.report_delay(&item, &e).await;
                    }
                    let delay = RETRY_DELAYS
                        .get(attempt)
                        .copied()
                        .unwrap_or(MAX_RETRY_DELAY);
                    warn!(seq, attempt, outage = e.is_outage(), error = %e, delay_ms = delay.as_millis() as u64, "handling failed, will retry");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    error!(seq, error = %e, "handling failed for good");
                    self.report_failure(&item, &e).await;
                    break;
                }
            }
        }
        if let Err(e) = self.store.inbox_remove(seq) {
            error!(seq, error = %e, "could not remove handled item from the inbox");
        }
        self.metrics.inbox_depth.set(self.store.inbox_len() as i64);
    }

    /// Moves an item that keeps failing into the quarantine and tells its sender. Should the
    /// store refuse, the item stays in the inbox (it is replayed at the next start).
    async fn set_aside(&self, seq: u64, item: &InboxItem, e: &super::BridgeError, attempts: usize) {
        let why = crate::store::QuarantineRecord {
            error: e.to_string(),
            attempts: attempts as u32,
            since_ms: super::now_ms(),
        };
        match self.store.quarantine(seq, &why).await {
            Ok(()) => {
                error!(seq, attempts, error = %e, "item set aside in the quarantine after failing too often");
                self.metrics
                    .quarantined
                    .set(self.store.quarantine_len() as i64);
                self.metrics.inbox_depth.set(self.store.inbox_len() as i64);
                self.report_quarantined(item, e).await;
            }
            Err(store) => {
                error!(seq, error = %store, "could not set the item aside; it stays in the inbox");
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

    async fn handle_item(&self, seq: u64, item: &InboxItem) -> Result<(), super::BridgeError> {
        match item {
            InboxItem::Matrix { event, .. } => self.handle_matrix_event(seq, event.get()).await,
            InboxItem::Ephemeral { event, .. } => self.handle_ephemeral(event.get()).await,
            InboxItem::Remote { network, event } => {
                self.handle_remote_event(seq, network, event).await
            }
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

fn ephemeral_sender(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct E {
        sender: Option<String>,
    }
    serde_json::from_str::<E>(json).ok()?.sender
}
