//! Matrix users watching SIP contacts: the bridge subscribes (RFC 6665) on a user's behalf
//! after their first message to a contact, refreshes the subscription, and turns NOTIFYs
//! into ghost presence.
//!
//! A watch subscribes as one identity: the user's gateway address (the bridge-wide link), or
//! the user's own account (its address of record, with its credentials and proxy), which
//! watches the contacts of the user's direct chats once it is connected. What an account's
//! watch tells is that login's (`RemoteEvent::via`): the core forgets it when the login goes
//! down, and at logout the account's watches are unsubscribed.

use std::sync::Arc;

use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::own::{OwnAccount, Subscriber, subscriber, told_via};
use super::{all, load, save, sink_err, take_cseq};
use crate::network::contacts;
use crate::network::now_ms;
use crate::network::{NetworkError, RemoteEvent, RemoteEventKind};
use crate::sip::Shared;
use crate::sip::body;
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::{Answer, Outgoing};
use crate::sip::headers;
use crate::sip::ids;

/// A Matrix user watching a SIP contact.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Watch {
    pub(super) user: String,
    pub(super) contact: String,
    /// The user's own account it subscribes as (its key, [`OwnAccount::key`]); `None`: the
    /// user's gateway address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) account: Option<String>,
    /// Unsubscribed (its account logged out): it shows nothing any more, and is forgotten
    /// when the final NOTIFY comes or, at the latest, when `dialog.expires_at_ms` passes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) ending: bool,
    /// The subscription dialog (we are the subscriber).
    pub(super) dialog: Dialog,
}

pub(super) const WATCH: &str = "watch:";

/// NOTIFY for one of our own subscriptions.
pub(in crate::sip) async fn notify_in(
    shared: &Arc<Shared>,
    tx: &mut Transaction,
) -> Result<(), rsipstack::Error> {
    let req = tx.original.clone();
    let call_id = headers::call_id(&req);
    let key = format!("{WATCH}{call_id}");
    let Some(w) = load::<Watch>(shared, &key) else {
        return tx.reply(StatusCode::CallTransactionDoesNotExist).await;
    };
    let state = headers::header_value(&req.headers, "Subscription-State")
        .unwrap_or_default()
        .to_ascii_lowercase();
    // A NOTIFY may come before the 2xx of the SUBSCRIBE: it confirms the dialog, with its
    // Contact as the remote target and its Record-Route (in order) as the route set.
    if w.dialog.remote_tag.is_empty()
        && let Some(tag) = req
            .from_header()
            .ok()
            .and_then(|f| headers::name_addr(f.value()).tag)
    {
        let _guard = shared.subscriptions.lock().await;
        if let Some(mut fresh) = load::<Watch>(shared, &key)
            && fresh.dialog.remote_tag.is_empty()
        {
            fresh.dialog.remote_tag = tag;
            if let Some(c) = headers::header_values(&req.headers, "Contact").first() {
                fresh.dialog.remote_target = headers::name_addr(c).uri;
            }
            fresh.dialog.routes = headers::header_values(&req.headers, "Record-Route")
                .iter()
                .map(|r| headers::name_addr(r).uri)
                .collect();
            let _ = save(shared, &key, &fresh);
        }
    }
    tx.reply(StatusCode::OK).await?;
    let via = told_via(shared, &w);
    let presence = if state.starts_with("terminated") {
        let _guard = shared.subscriptions.lock().await;
        if let Ok(store) = shared.store() {
            let _ = store.delete(&key);
            if !w.ending {
                let _ = contacts::update(store, &w.user, &w.contact, |s| {
                    s.to = false;
                    s.asked_out = false;
                });
            }
        }
        if !w.ending {
            info!(contact = %w.contact, user = %w.user, %state, "presence subscription ended by the contact");
        }
        None
    } else if via.is_none() {
        None
    } else {
        if state.starts_with("active")
            && let Ok(store) = shared.store()
        {
            let _ = contacts::update(store, &w.user, &w.contact, |s| s.to = true);
        }
        match body::parse_pidf(&req.body) {
            Ok(p) => Some(p),
            Err(e) => {
                if !req.body.is_empty() {
                    debug!(contact = %w.contact, error = %e, "unreadable PIDF in a NOTIFY");
                }
                None
            }
        }
    };
    if let (Some(p), Some(sink), Some(via)) = (presence, shared.sink.get(), via) {
        let ev = RemoteEvent::direct(&w.contact, &w.user, RemoteEventKind::Presence(p)).via(via);
        if let Err(e) = sink.push(ev).await {
            warn!(error = %crate::error::chain(&e), "could not store a presence update");
        }
    }
    Ok(())
}

/// Subscribes to a contact's presence for a Matrix user, as their gateway address (`account`
/// `None`) or as their own account, unless that identity already watches the contact.
pub(in crate::sip) async fn watch(
    shared: &Shared,
    user: &str,
    contact: &str,
    account: Option<&OwnAccount>,
) -> Result<(), NetworkError> {
    let ep = shared.endpoint()?;
    let local_uri = match account {
        Some(own) => own.aor.clone(),
        None => shared.addressing.puppet_uri(user).ok_or_else(|| {
            NetworkError::InvalidInput("this Matrix user has no SIP address".into())
        })?,
    };
    let target = ids::contact_uri(contact);
    let dialog = Dialog {
        call_id: ep.call_id(),
        local_uri,
        local_tag: ep.tag(),
        remote_uri: target.clone(),
        remote_tag: String::new(),
        remote_target: target,
        routes: Vec::new(),
        cseq: 0,
        expires_at_ms: 0,
        granted_s: 0,
    };
    let w = Watch {
        user: user.to_owned(),
        contact: contact.to_owned(),
        account: account.map(|a| a.key.clone()),
        ending: false,
        dialog,
    };
    {
        let _guard = shared.subscriptions.lock().await;
        // Checked and inserted under the lock, so two quick messages make one subscription;
        // a contact that refused is not asked again (until the user writes after a restart).
        let existing = all::<Watch>(shared, WATCH)
            .into_iter()
            .any(|(_, o)| same_watch(&o, &w));
        let refused = shared
            .refused
            .lock()
            .expect("refused lock")
            .contains(&refusal(&w));
        // An account watches only while its user's login holds it (a watch started as the
        // login connected may come after its logout).
        let unheld =
            account.is_some_and(|own| shared.accounts.account_of(&own.key, user).is_none());
        if existing || refused || unheld {
            return Ok(());
        }
        save(shared, &format!("{WATCH}{}", w.dialog.call_id), &w)?;
        let _ = contacts::update(shared.store()?, user, contact, |s| s.asked_out = true);
    }
    subscribe_out(shared, &w.dialog.call_id).await
}

/// Whether `a` and `b` watch the same contact for the same user as the same identity (an
/// ending watch watches nothing).
fn same_watch(a: &Watch, b: &Watch) -> bool {
    !a.ending && a.user == b.user && a.contact == b.contact && a.account == b.account
}

/// How a contact's refusal of `w` is remembered: per user, contact and identity.
fn refusal(w: &Watch) -> (String, String, Option<String>) {
    (w.user.clone(), w.contact.clone(), w.account.clone())
}

/// Sends a SUBSCRIBE on `w`'s dialog as `sub`, asking for `expires` seconds (0 ends it).
pub(super) async fn send_subscribe(
    shared: &Shared,
    w: &Watch,
    sub: &Subscriber,
    cseq: u32,
    expires: u32,
) -> Result<Answer, NetworkError> {
    let ep = shared.endpoint()?;
    let mut out = Outgoing::in_dialog(&w.dialog, Method::Subscribe, cseq);
    out.headers.extend([
        Header::Event("presence".into()),
        Header::Accept(body::PIDF.into()),
        Header::Expires(expires.into()),
        Header::Contact(ep.contact(&sub.contact_user).into()),
    ]);
    out.credential = sub.credential.as_ref();
    out.proxy = sub.proxy;
    ep.send(out)
        .await
        .map_err(|e| NetworkError::Transient(crate::error::Reason::from_error(e)))
}

/// Sends (or refreshes) our SUBSCRIBE for a stored watch, as the identity it subscribes as;
/// nothing for a watch that has none now (its account is not in use) or that is ending.
pub(super) async fn subscribe_out(shared: &Shared, call_id: &str) -> Result<(), NetworkError> {
    let key = format!("{WATCH}{call_id}");
    let Some(found) = load::<Watch>(shared, &key) else {
        return Ok(());
    };
    let Some(sub) = subscriber(shared, &found).filter(|_| !found.ending) else {
        return Ok(());
    };
    // A watch with credentials keeps a second number for the answer to a challenge.
    let numbers = if sub.credential.is_some() { 2 } else { 1 };
    let Some((w, cseq)) = take_cseq(shared, &key, |w: &mut Watch| &mut w.dialog, numbers).await?
    else {
        return Ok(());
    };
    let answer = send_subscribe(shared, &w, &sub, cseq, shared.subscription_seconds).await?;
    let _guard = shared.subscriptions.lock().await;
    // Gone, or ended (its account logged out) while the SUBSCRIBE was out.
    let Some(mut w) = load::<Watch>(shared, &key).filter(|w| !w.ending) else {
        return Ok(());
    };
    if (200..300).contains(&answer.code) {
        let resp = &answer.response;
        let granted = resp
            .expires_header()
            .and_then(|e| e.value().trim().parse::<u64>().ok())
            .unwrap_or(u64::from(shared.subscription_seconds));
        let granted = granted.min(u64::from(shared.subscription_seconds));
        w.dialog.expires_at_ms = now_ms() + granted * 1000;
        w.dialog.granted_s = granted;
        if w.dialog.remote_tag.is_empty() {
            if let Some(tag) = resp
                .to_header()
                .ok()
                .and_then(|t| headers::name_addr(t.value()).tag)
            {
                w.dialog.remote_tag = tag;
            }
            if let Some(c) = headers::header_values(&resp.headers, "Contact").first() {
                w.dialog.remote_target = headers::name_addr(c).uri;
            }
            // As the subscriber, the route set is the Record-Route list reversed.
            let mut routes: Vec<String> = headers::header_values(&resp.headers, "Record-Route")
                .iter()
                .map(|r| headers::name_addr(r).uri)
                .collect();
            routes.reverse();
            w.dialog.routes = routes;
        }
        save(shared, &key, &w)?;
        debug!(contact = %w.contact, granted, "presence subscription confirmed");
        Ok(())
    } else if matches!(answer.code, 408 | 480 | 500..=599) {
        // A passing failure: the dialog stays, the next round tries again.
        debug!(contact = %w.contact, code = answer.code, "presence subscription refresh failed; will retry");
        Ok(())
    } else {
        // Refused, or the dialog is gone: forget it. A 481 to a refresh (the contact forgot
        // the dialog) starts a new subscription; any other refusal is remembered.
        let refresh = !w.dialog.remote_tag.is_empty();
        shared.store()?.delete(&key).map_err(sink_err)?;
        let restart = answer.code == 481 && refresh;
        let _ = contacts::update(shared.store()?, &w.user, &w.contact, |s| {
            s.asked_out = false;
            s.to = false;
        });
        if !restart {
            shared
                .refused
                .lock()
                .expect("refused lock")
                .insert(refusal(&w));
        }
        info!(contact = %w.contact, code = answer.code, "presence subscription not accepted");
        drop(_guard);
        if restart {
            let own = match &w.account {
                Some(key) => match shared.accounts.account_of(key, &w.user) {
                    Some(own) => Some(own),
                    None => return Ok(()),
                },
                None => None,
            };
            return Box::pin(watch(shared, &w.user, &w.contact, own.as_deref())).await;
        }
        Ok(())
    }
}

/// Refreshes our subscriptions when a quarter of their time is left (or they were never
/// confirmed); forgets those that ended: an unsubscribed one whose final NOTIFY did not come,
/// and an account's whose login is gone once its time ran out.
pub(super) async fn refresh_due(shared: &Shared, now: u64) {
    for (key, w) in all::<Watch>(shared, WATCH) {
        let gone = w.ending || subscriber(shared, &w).is_none();
        if gone {
            if w.dialog.expires_at_ms <= now {
                let _guard = shared.subscriptions.lock().await;
                if let Ok(store) = shared.store() {
                    let _ = store.delete(&key);
                }
                debug!(contact = %w.contact, user = %w.user, "ended presence subscription forgotten");
            }
            continue;
        }
        // A quarter of the time the notifier granted.
        let period = w.dialog.granted_s.max(40).saturating_mul(1000);
        let due =
            w.dialog.expires_at_ms == 0 || w.dialog.expires_at_ms.saturating_sub(now) < period / 4;
        if due && let Err(e) = subscribe_out(shared, &w.dialog.call_id).await {
            debug!(error = %crate::error::chain(&e), contact = %w.contact, "presence subscription refresh failed; retrying");
        }
    }
}
