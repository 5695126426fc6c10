//! What changes a watcher's subscription from the Matrix side: a new presence published to
//! the watchers allowed to see it, an own account's logout ending its watchers, the Matrix
//! user's answer to a request, and subscriptions that ran out.

use super::*;

/// Sends a Matrix user's presence to every watcher allowed to see it.
pub(in crate::sip) async fn publish(
    shared: &Shared,
    user: &str,
    presence: &Presence,
) -> Result<(), NetworkError> {
    shared
        .presence
        .lock()
        .expect("presence lock")
        .insert(user.to_owned(), presence.clone());
    save(shared, &format!("{PRESENCE}{user}"), presence)?;
    // Owed first, all of them, so that a stop in the middle leaves the rest to the next start.
    {
        let _guard = shared.subscriptions.lock().await;
        for (key, mut w) in all::<Watcher>(shared, WATCHER) {
            if w.user == user && w.active {
                w.owed = w.owed.saturating_add(1);
                save(shared, &key, &w)?;
            }
        }
    }
    for (_, w) in all::<Watcher>(shared, WATCHER) {
        if w.user == user
            && w.active
            && let Err(e) = notify(shared, &w.dialog.call_id, false).await
        {
            debug!(error = %crate::error::chain(&e), contact = %w.contact, "presence not delivered to a watcher");
        }
    }
    Ok(())
}

/// Ends every subscription to `address` (an own account that logged out): its watchers are
/// told the resource is gone and stop seeing the Matrix user's presence.
pub(in crate::sip) async fn end_watchers_of(shared: &Shared, address: &str) {
    for (_, w) in all::<Watcher>(shared, WATCHER) {
        if w.dialog.local_uri.eq_ignore_ascii_case(address)
            && let Err(e) = notify_with(shared, &w.dialog.call_id, Some("noresource")).await
        {
            debug!(error = %crate::error::chain(&e), contact = %w.contact, "could not end a watcher's subscription");
            if let Ok(store) = shared.store() {
                let _ = store.delete(&format!("{WATCHER}{}", w.dialog.call_id));
            }
        }
    }
}

/// The Matrix user's answer to a watcher's request.
pub(in crate::sip) async fn answer(
    shared: &Shared,
    user: &str,
    contact: &str,
    accept: bool,
) -> Result<(), NetworkError> {
    {
        let _guard = shared.subscriptions.lock().await;
        contacts::update(shared.store()?, user, contact, |s| {
            s.pending_in = false;
            s.from = accept;
            s.denied = !accept;
        })
        .map_err(sink_err)?;
        for (key, mut w) in all::<Watcher>(shared, WATCHER) {
            if w.user == user && w.contact == contact {
                w.active = accept;
                w.owed = w.owed.saturating_add(1);
                save(shared, &key, &w)?;
            }
        }
    }
    if accept {
        refresh_presence(shared, user).await;
    }
    for (_, w) in all::<Watcher>(shared, WATCHER) {
        if w.user == user && w.contact == contact {
            notify(shared, &w.dialog.call_id, false).await?;
        }
    }
    Ok(())
}

/// Forgets watchers whose subscription ran out.
pub(in crate::sip::presence) async fn forget_expired(shared: &Shared, now: u64) {
    for (key, w) in all::<Watcher>(shared, WATCHER) {
        if w.dialog.expires_at_ms < now {
            let _guard = shared.subscriptions.lock().await;
            if let Ok(store) = shared.store() {
                let _ = store.delete(&key);
            }
        }
    }
}
