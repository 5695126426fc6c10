//! Watches as users' own accounts: the identity a watch subscribes as (the gateway address, or
//! an account while its user's login holds it), the contacts an account watches once it is
//! connected, and the end of its watches at logout.

use std::collections::HashSet;
use std::net::SocketAddr;

use futures::StreamExt;
use rsipstack::dialog::authenticate::Credential;
use tracing::{debug, info};

use super::subscriber::{WATCH, Watch, send_subscribe, subscribe_out, watch};
use super::{all, save};
use crate::network::contacts;
use crate::network::now_ms;
use crate::sip::Shared;

/// How long an unsubscribed watch waits for its final NOTIFY.
const ENDING_GRACE_MS: u64 = 32_000;

/// Contacts subscribed to at once when a login starts watching, or ends.
const CONCURRENCY: usize = 8;

/// A user's own SIP account, as its watches subscribe with it.
pub(in crate::sip) struct OwnAccount {
    /// The user part of the contact the bridge registered for it: its key among the accounts
    /// in use, and where NOTIFYs come back to.
    pub key: String,
    /// Its address of record, `sip:user@host`.
    pub aor: String,
    /// What a challenge is answered with.
    pub credential: Credential,
    /// Its outbound proxy, when not the bridge's.
    pub proxy: Option<SocketAddr>,
}

/// Who a watch's SUBSCRIBE goes out as (its From is the dialog's local URI).
pub(super) struct Subscriber {
    /// The user part of the Contact, where NOTIFYs come back to.
    pub(super) contact_user: String,
    /// What a challenge is answered with (none for the gateway, which the proxy trusts).
    pub(super) credential: Option<Credential>,
    /// The proxy, when not the bridge's.
    pub(super) proxy: Option<SocketAddr>,
}

/// The identity `w` subscribes as: the gateway's for a gateway watch; its account's while
/// that account is in use by the watch's user, else none (the login went away: the watch is
/// not refreshed and shows nothing).
pub(super) fn subscriber(shared: &Shared, w: &Watch) -> Option<Subscriber> {
    match &w.account {
        None => Some(Subscriber {
            contact_user: shared
                .addressing
                .puppet_user(&w.user)
                .unwrap_or_else(|| "isthmus".into()),
            credential: None,
            proxy: None,
        }),
        Some(key) => {
            let own = shared.accounts.account_of(key, &w.user)?;
            Some(Subscriber {
                contact_user: own.key.clone(),
                credential: Some(own.credential.clone()),
                proxy: own.proxy,
            })
        }
    }
}

/// What a NOTIFY on `w` is told through (`RemoteEvent::via`): `Some(None)` the gateway,
/// `Some(Some(user))` the login of `user`, whose account it is and who holds it; `None` when
/// it tells nothing (an ending watch, or an account no longer in use).
pub(super) fn told_via<'w>(shared: &Shared, w: &'w Watch) -> Option<Option<&'w str>> {
    if w.ending {
        return None;
    }
    match &w.account {
        None => Some(None),
        Some(key) if shared.accounts.account_of(key, &w.user).is_some() => Some(Some(&w.user)),
        Some(_) => None,
    }
}

/// Follows, through `user`'s own account now connected, the presence of the contacts of
/// their direct chats: a watch for each contact the account does not watch yet, and the
/// account's watches refreshed (what they told was forgotten when the login went down or the
/// bridge stopped; a refresh makes the contact tell it again).
pub(in crate::sip) async fn watch_contacts(shared: &Shared, user: &str, account: &OwnAccount) {
    let Some(sink) = shared.sink.get() else {
        return;
    };
    let chats = sink.direct_chats(user).await;
    let mine: Vec<Watch> = all::<Watch>(shared, WATCH)
        .into_iter()
        .map(|(_, w)| w)
        .filter(|w| !w.ending && w.user == user && w.account.as_deref() == Some(&account.key))
        .collect();
    let watched: HashSet<&str> = mine.iter().map(|w| w.contact.as_str()).collect();
    let fresh: Vec<&str> = chats
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !watched.contains(c))
        .collect();
    let refreshes = futures::stream::iter(&mine).for_each_concurrent(CONCURRENCY, |w| async move {
        if let Err(e) = subscribe_out(shared, &w.dialog.call_id).await {
            debug!(error = %crate::error::chain(&e), contact = %w.contact, "could not refresh an account's presence subscription");
        }
    });
    refreshes.await;
    futures::stream::iter(fresh)
        .for_each_concurrent(CONCURRENCY, |contact| async move {
            if let Err(e) = watch(shared, user, contact, Some(account)).await {
                debug!(error = %crate::error::chain(&e), %contact, "could not subscribe to a contact's presence through an account");
            }
        })
        .await;
    info!(user, account = %account.aor, contacts = chats.len(), "watching the contacts of an own account");
}

/// Ends the watches of `user`'s own account at its logout: each is marked ending (it shows
/// nothing from now on) and unsubscribed (SUBSCRIBE, Expires: 0), and is forgotten when its
/// final NOTIFY comes, or [`ENDING_GRACE_MS`] later. Then the other watches of the same
/// contacts (the gateway's, other users' accounts') are refreshed: a ghost's presence last
/// told through this account is forgotten with the login, and they tell it again.
pub(in crate::sip) async fn unwatch_account(shared: &Shared, user: &str, account: &OwnAccount) {
    let mut ending = Vec::new();
    {
        let _guard = shared.subscriptions.lock().await;
        let watches = all::<Watch>(shared, WATCH);
        let through_gateway: HashSet<(&str, &str)> = watches
            .iter()
            .filter(|(_, w)| w.account.is_none() && !w.ending)
            .map(|(_, w)| (w.user.as_str(), w.contact.as_str()))
            .collect();
        for (key, w) in &watches {
            if w.ending || w.user != user || w.account.as_deref() != Some(&account.key) {
                continue;
            }
            let mut w = w.clone();
            w.ending = true;
            w.dialog.expires_at_ms = now_ms() + ENDING_GRACE_MS;
            // Numbers for the unsubscribe and the answer to a challenge.
            let cseq = w.dialog.next_cseq();
            w.dialog.next_cseq();
            if save(shared, key, &w).is_err() {
                continue;
            }
            if !through_gateway.contains(&(user, w.contact.as_str()))
                && let Ok(store) = shared.store()
            {
                let _ = contacts::update(store, user, &w.contact, |s| {
                    s.to = false;
                    s.asked_out = false;
                });
            }
            ending.push((w, cseq));
        }
    }
    let contacts: HashSet<String> = ending.iter().map(|(w, _)| w.contact.clone()).collect();
    futures::stream::iter(&ending)
        .for_each_concurrent(CONCURRENCY, |(w, cseq)| async move {
            let sub = Subscriber {
                contact_user: account.key.clone(),
                credential: Some(account.credential.clone()),
                proxy: account.proxy,
            };
            match send_subscribe(shared, w, &sub, *cseq, 0).await {
                Ok(a) => debug!(contact = %w.contact, code = a.code, "account's presence subscription ended"),
                Err(e) => debug!(error = %crate::error::chain(&e), contact = %w.contact, "could not end an account's presence subscription"),
            }
        })
        .await;
    let others: Vec<Watch> = all::<Watch>(shared, WATCH)
        .into_iter()
        .map(|(_, w)| w)
        .filter(|w| !w.ending && contacts.contains(&w.contact))
        .collect();
    futures::stream::iter(&others)
        .for_each_concurrent(CONCURRENCY, |w| async move {
            if let Err(e) = subscribe_out(shared, &w.dialog.call_id).await {
                debug!(error = %crate::error::chain(&e), contact = %w.contact, "presence subscription refresh failed; retrying");
            }
        })
        .await;
    info!(user, account = %account.aor, ended = ending.len(), "an own account's presence subscriptions ended");
}

#[cfg(test)]
mod tests;
