//! Matrix users watching SIP contacts: the bridge subscribes (RFC 6665) on a user's behalf
//! after their first message to a contact, refreshes the subscription, and turns NOTIFYs
//! into ghost presence.

use std::sync::Arc;

use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{all, load, save, sink_err, take_cseq};
use crate::network::contacts;
use crate::network::now_ms;
use crate::network::{NetworkError, RemoteEvent, RemoteEventKind};
use crate::sip::Shared;
use crate::sip::body;
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::Outgoing;
use crate::sip::headers;
use crate::sip::ids;

/// A Matrix user watching a SIP contact.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Watch {
    user: String,
    contact: String,
    /// The subscription dialog (we are the subscriber).
    dialog: Dialog,
}

const WATCH: &str = "watch:";

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
    let presence = if state.starts_with("terminated") {
        let _guard = shared.subscriptions.lock().await;
        if let Ok(store) = shared.store() {
            let _ = store.delete(&key);
            let _ = contacts::update(store, &w.user, &w.contact, |s| {
                s.to = false;
                s.asked_out = false;
            });
        }
        info!(contact = %w.contact, user = %w.user, %state, "presence subscription ended by the contact");
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
    if let (Some(p), Some(sink)) = (presence, shared.sink.get()) {
        let ev = RemoteEvent::direct(&w.contact, &w.user, RemoteEventKind::Presence(p));
        if let Err(e) = sink.push(ev).await {
            warn!(error = %crate::error::chain(&e), "could not store a presence update");
        }
    }
    Ok(())
}

/// Subscribes to a contact's presence for a Matrix user, unless already subscribed.
pub(in crate::sip) async fn watch(
    shared: &Shared,
    user: &str,
    contact: &str,
) -> Result<(), NetworkError> {
    let ep = shared.endpoint()?;
    let Some(local_uri) = shared.addressing.puppet_uri(user) else {
        return Err(NetworkError::InvalidInput(
            "this Matrix user has no SIP address".into(),
        ));
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
        dialog,
    };
    {
        let _guard = shared.subscriptions.lock().await;
        // Checked and inserted under the lock, so two quick messages make one subscription;
        // a contact that refused is not asked again (until the user writes after a restart).
        let existing = all::<Watch>(shared, WATCH)
            .into_iter()
            .any(|(_, w)| w.user == user && w.contact == contact);
        let refused = shared
            .refused
            .lock()
            .expect("refused lock")
            .contains(&(user.to_owned(), contact.to_owned()));
        if existing || refused {
            return Ok(());
        }
        save(shared, &format!("{WATCH}{}", w.dialog.call_id), &w)?;
        let _ = contacts::update(shared.store()?, user, contact, |s| s.asked_out = true);
    }
    subscribe_out(shared, &w.dialog.call_id).await
}

/// Sends (or refreshes) our SUBSCRIBE for a stored watch.
async fn subscribe_out(shared: &Shared, call_id: &str) -> Result<(), NetworkError> {
    let key = format!("{WATCH}{call_id}");
    let Some((w, cseq)) = take_cseq(shared, &key, |w: &mut Watch| &mut w.dialog).await? else {
        return Ok(());
    };
    let ep = shared.endpoint()?;
    let local_user = shared
        .addressing
        .puppet_user(&w.user)
        .unwrap_or_else(|| "isthmus".into());
    let mut headers = w.dialog.route_headers();
    headers.extend([
        Header::Event("presence".into()),
        Header::Accept(body::PIDF.into()),
        Header::Expires(shared.subscription_seconds.into()),
        Header::Contact(ep.contact(&local_user).into()),
    ]);
    let out = Outgoing {
        method: Method::Subscribe,
        uri: &w.dialog.remote_target,
        from: w.dialog.local_header(),
        to: w.dialog.remote_header(),
        call_id: Some(w.dialog.call_id.clone()),
        cseq,
        headers,
        body: Vec::new(),
        credential: None,
        proxy: None,
    };
    let answer = ep
        .send(out)
        .await
        .map_err(|e| NetworkError::Transient(crate::error::Reason::from_error(e)))?;
    let _guard = shared.subscriptions.lock().await;
    let Some(mut w) = load::<Watch>(shared, &key) else {
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
                .insert((w.user.clone(), w.contact.clone()));
        }
        info!(contact = %w.contact, code = answer.code, "presence subscription not accepted");
        drop(_guard);
        if restart {
            return Box::pin(watch(shared, &w.user, &w.contact)).await;
        }
        Ok(())
    }
}

/// Refreshes our subscriptions when a quarter of their time is left (or they were never
/// confirmed).
pub(super) async fn refresh_due(shared: &Shared, now: u64) {
    for (_, w) in all::<Watch>(shared, WATCH) {
        // A quarter of the time the notifier granted.
        let period = w.dialog.granted_s.max(40).saturating_mul(1000);
        let due =
            w.dialog.expires_at_ms == 0 || w.dialog.expires_at_ms.saturating_sub(now) < period / 4;
        if due && let Err(e) = subscribe_out(shared, &w.dialog.call_id).await {
            debug!(error = %crate::error::chain(&e), contact = %w.contact, "presence subscription refresh failed; retrying");
        }
    }
}
