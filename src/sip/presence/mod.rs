//! Presence both ways (RFC 3856 SUBSCRIBE/NOTIFY with PIDF bodies).
//!
//! - SIP users watching Matrix users ("watchers"): the bridge is the notifier for its gateway
//!   domain. A new watcher is accepted, refused or asked about by the per-domain policy; the
//!   Matrix user answers with `accept` / `deny`. The answer is remembered, so a watcher that
//!   subscribes again (after expiry or a restart) is not asked twice.
//! - Matrix users watching SIP contacts: after the first message to a contact the bridge
//!   subscribes on the user's behalf and turns NOTIFYs into ghost presence.
//!
//! Both kinds of dialog are stored in the connector's storage under their Call-ID, refreshed
//! before they expire, and so survive a restart of the bridge.
//!
//! `notifier/` serves the watchers; `subscriber.rs` keeps the bridge's own subscriptions;
//! `own.rs` the identity each subscribes as, and those of users' own accounts.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::network::NetworkError;
use crate::network::now_ms;
use crate::sip::Shared;

mod notifier;
mod own;
mod subscriber;

pub(super) use self::notifier::{answer, end_watchers_of, publish, subscribe_in};
pub(super) use self::own::{OwnAccount, unwatch_account, watch_contacts};
pub(super) use self::subscriber::{notify_in, watch};

fn sink_err(e: impl std::error::Error + Send + Sync + 'static) -> NetworkError {
    NetworkError::Internal(crate::error::Reason::from_error(e))
}

fn load<T: for<'de> Deserialize<'de>>(shared: &Shared, key: &str) -> Option<T> {
    let store = shared.store().ok()?;
    serde_json::from_value(store.get(key).ok()??).ok()
}

fn save<T: Serialize>(shared: &Shared, key: &str, value: &T) -> Result<(), NetworkError> {
    let v = serde_json::to_value(value).map_err(sink_err)?;
    shared.store()?.put(key, &v).map_err(sink_err)
}

/// The subscription stored under `key` with the next `numbers` CSeqs of its dialog taken
/// (the first is returned; a request that may be challenged keeps a second for its answer)
/// and stored, under the subscriptions lock so that two requests of one dialog never share
/// a CSeq; `None` when it is gone.
async fn take_cseq<T>(
    shared: &Shared,
    key: &str,
    dialog: impl FnOnce(&mut T) -> &mut crate::sip::dialog::Dialog,
    numbers: u32,
) -> Result<Option<(T, u32)>, NetworkError>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let _guard = shared.subscriptions.lock().await;
    let Some(mut stored) = load::<T>(shared, key) else {
        return Ok(None);
    };
    let dialog = dialog(&mut stored);
    let cseq = dialog.next_cseq();
    for _ in 1..numbers {
        dialog.next_cseq();
    }
    save(shared, key, &stored)?;
    Ok(Some((stored, cseq)))
}

fn all<T: for<'de> Deserialize<'de>>(shared: &Shared, prefix: &str) -> Vec<(String, T)> {
    let Ok(store) = shared.store() else {
        return Vec::new();
    };
    store
        .scan(prefix)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, serde_json::from_value(v).ok()?)))
        .collect()
}

/// Every 10 s: refreshes our subscriptions when a quarter of their time is left (or they
/// were never confirmed), and forgets watchers whose subscription ran out.
pub(super) async fn maintain(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    notifier::refresh_watched(&shared).await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.changed() => return,
        }
        if shared.endpoint().is_err() || shared.store().is_err() {
            continue;
        }
        let now = now_ms();
        subscriber::refresh_due(&shared, now).await;
        notifier::forget_expired(&shared, now).await;
    }
}
