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

use std::sync::Arc;
use std::time::Duration;

use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Shared;
use super::body;
use super::dialog::Dialog;
use super::endpoint::Outgoing;
use super::handle_sip::{local_target, sender};
use super::headers;
use super::ids::{self, Local};
use crate::network::contacts::{self, Policy};
use crate::network::now_ms;
use crate::network::{NetworkError, Presence, PresenceState, RemoteEvent, RemoteEventKind};

/// A SIP user watching a Matrix user.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Watcher {
    /// The Matrix user watched.
    user: String,
    /// The SIP contact watching.
    contact: String,
    /// The subscription dialog (we are the notifier).
    dialog: Dialog,
    /// Whether the Matrix user allowed it (otherwise pending).
    active: bool,
}

/// A Matrix user watching a SIP contact.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Watch {
    user: String,
    contact: String,
    /// The subscription dialog (we are the subscriber).
    dialog: Dialog,
}

const WATCHER: &str = "watcher:";
const WATCH: &str = "watch:";
const PRESENCE: &str = "presence:";

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

/// The presence a Matrix user last published (kept across restarts).
fn presence_of(shared: &Shared, user: &str) -> Presence {
    if let Some(p) = shared.presence.lock().expect("presence lock").get(user) {
        return p.clone();
    }
    load(shared, &format!("{PRESENCE}{user}")).unwrap_or(Presence {
        state: PresenceState::Offline,
        status: None,
    })
}

/// Reads a Matrix user's current presence from the core (which asks the homeserver) and keeps
/// it as the one last published; used when a watcher is let in, so that its first NOTIFY is
/// true instead of a guess. Keeps what is known when the core cannot say.
async fn refresh_presence(shared: &Shared, user: &str) {
    let Some(p) = (match shared.sink.get() {
        Some(sink) => sink.matrix_presence(user).await,
        None => None,
    }) else {
        return;
    };
    shared
        .presence
        .lock()
        .expect("presence lock")
        .insert(user.to_owned(), p.clone());
    if let Err(e) = save(shared, &format!("{PRESENCE}{user}"), &p) {
        debug!(error = %crate::error::chain(&e), "could not keep a Matrix user's presence");
    }
}

/// After a start: the presence of every Matrix user with watchers is read again (it may have
/// changed while the bridge was down), and watchers are told when it differs.
async fn refresh_watched(shared: &Shared) {
    let mut users: Vec<String> = all::<Watcher>(shared, WATCHER)
        .into_iter()
        .filter(|(_, w)| w.active)
        .map(|(_, w)| w.user)
        .collect();
    users.sort();
    users.dedup();
    for user in users {
        let Some(sink) = shared.sink.get() else {
            return;
        };
        let Some(now) = sink.matrix_presence(&user).await else {
            continue;
        };
        if now != presence_of(shared, &user)
            && let Err(e) = publish(shared, &user, &now).await
        {
            debug!(error = %crate::error::chain(&e), "could not publish a Matrix user's presence after a start");
        }
    }
}

/// Requested expiry of a SUBSCRIBE, bounded by the configured lifetime.
fn expiry(shared: &Shared, req: &rsipstack::sip::Request) -> u32 {
    let asked = req
        .expires_header()
        .and_then(|e| e.value().trim().parse::<u32>().ok())
        .unwrap_or(3600);
    asked.min(shared.subscription_seconds)
}

/// SUBSCRIBE from a SIP user.
pub(super) async fn subscribe_in(
    shared: &Arc<Shared>,
    tx: &mut Transaction,
) -> Result<(), rsipstack::Error> {
    let req = tx.original.clone();
    let event = headers::header_value(&req.headers, "Event").unwrap_or_default();
    if event.split(';').next().map(str::trim) != Some("presence") {
        return tx
            .reply_with(
                StatusCode::BadEvent,
                vec![Header::Other("Allow-Events".into(), "presence".into())],
                None,
            )
            .await;
    }
    let call_id = headers::call_id(&req);
    let expires = expiry(shared, &req);
    let to_tag = req
        .to_header()
        .ok()
        .map(|t| headers::name_addr(t.value()))
        .and_then(|n| n.tag);
    if to_tag.is_some() {
        return refresh_in(shared, tx, &call_id, expires).await;
    }
    let Some(Local::User(user)) = local_target(shared, &req) else {
        return tx.reply(StatusCode::NotFound).await;
    };
    if let Some((status, headers)) = super::handle_sip::unreachable(shared, &req, &user).await {
        return tx.reply_with(status, headers, None).await;
    }
    let Some((contact, display)) = sender(shared, &req) else {
        return tx.reply(StatusCode::BadRequest).await;
    };
    let Ok(store) = shared.store() else {
        return tx.reply(StatusCode::ServiceUnavailable).await;
    };
    let sub = contacts::get(store, &user, &contact).unwrap_or_default();
    // A user's own account is theirs: watchers are always asked about, never let in (or
    // turned away) by the gateway's policy.
    let own_account = req
        .uri
        .user()
        .is_some_and(|u| u.starts_with(super::account::ACCOUNT_PREFIX));
    let policy = if own_account {
        Policy::Ask
    } else {
        shared.policy.for_contact(&contact)
    };
    if policy == Policy::Deny || sub.denied {
        info!(%contact, %user, denied = sub.denied, "presence subscription refused");
        return tx.reply(StatusCode::Forbidden).await;
    }
    let active = sub.from || policy == Policy::Accept;
    let from = headers::name_addr(req.from_header().map(|f| f.value()).unwrap_or(""));
    let remote_target = headers::header_values(&req.headers, "Contact")
        .first()
        .map(|c| headers::name_addr(c).uri)
        .unwrap_or_else(|| from.uri.clone());
    let Ok(ep) = shared.endpoint() else {
        return tx.reply(StatusCode::ServiceUnavailable).await;
    };
    let local_tag = ep.tag();
    let dialog = Dialog {
        call_id: call_id.clone(),
        // Our URI is the To of the SUBSCRIBE (a proxy may have rewritten the Request-URI).
        local_uri: req
            .to_header()
            .map(|t| headers::name_addr(t.value()).uri)
            .unwrap_or_else(|_| req.uri.to_string()),
        local_tag: local_tag.clone(),
        remote_uri: from.uri.clone(),
        remote_tag: from.tag.clone().unwrap_or_default(),
        remote_target,
        // As the notifier, the route set is the Record-Route list in order.
        routes: headers::header_values(&req.headers, "Record-Route")
            .iter()
            .map(|r| headers::name_addr(r).uri)
            .collect(),
        cseq: 0,
        expires_at_ms: now_ms() + u64::from(expires) * 1000,
        granted_s: u64::from(expires),
    };
    let watcher = Watcher {
        user: user.clone(),
        contact: contact.clone(),
        dialog,
        active,
    };
    {
        let _guard = shared.subscriptions.lock().await;
        // One subscription per watcher, user and address (the gateway address and an own
        // account are two): a new one replaces the older.
        for (key, old) in all::<Watcher>(shared, WATCHER) {
            if old.user == user
                && old.contact == contact
                && old.dialog.local_uri == watcher.dialog.local_uri
            {
                let _ = store.delete(&key);
            }
        }
        if save(shared, &format!("{WATCHER}{call_id}"), &watcher).is_err() {
            return tx.reply(StatusCode::ServerInternalError).await;
        }
        let _ = contacts::update(store, &user, &contact, |s| {
            if active {
                s.from = true;
                s.pending_in = false;
            } else {
                s.pending_in = true;
            }
        });
    }
    let local_user = ids::escape_user(
        &shared
            .addressing
            .puppet_user(&user)
            .unwrap_or_else(|| "isthmus".into()),
    );
    // The To tag of the 2xx must be the dialog's local tag.
    let mut to = req.to_header()?.clone();
    to = format!("{};tag={local_tag}", to.value()).into();
    tx.original.headers.unique_push(Header::To(to));
    tx.reply_with(
        StatusCode::OK,
        vec![
            Header::Expires(expires.into()),
            Header::Contact(ep.contact(&local_user).into()),
        ],
        None,
    )
    .await?;
    info!(%contact, %user, active, "SIP presence subscription");
    if !active && sub.pending_in {
        debug!("contact request already pending");
    } else if !active && let Some(sink) = shared.sink.get() {
        let ev =
            RemoteEvent::direct(&contact, &user, RemoteEventKind::ContactRequest).named(display);
        if let Err(e) = sink.push(ev).await {
            warn!(error = %crate::error::chain(&e), "could not store a contact request");
        }
    }
    let shared = shared.clone();
    let Ok(tasks) = shared.tasks().cloned() else {
        return Ok(());
    };
    tasks.spawn(async move {
        if active {
            refresh_presence(&shared, &user).await;
        }
        let _ = notify(&shared, &call_id, false).await;
    });
    Ok(())
}

/// A refresh or an unsubscription inside an existing watcher dialog.
async fn refresh_in(
    shared: &Arc<Shared>,
    tx: &mut Transaction,
    call_id: &str,
    expires: u32,
) -> Result<(), rsipstack::Error> {
    let key = format!("{WATCHER}{call_id}");
    let ok = {
        let _guard = shared.subscriptions.lock().await;
        let Some(mut w) = load::<Watcher>(shared, &key) else {
            drop(_guard);
            // Unknown dialog (expired or never seen): the watcher subscribes anew.
            return tx.reply(StatusCode::CallTransactionDoesNotExist).await;
        };
        w.dialog.expires_at_ms = now_ms() + u64::from(expires) * 1000;
        save(shared, &key, &w).is_ok()
    };
    if !ok {
        return tx.reply(StatusCode::ServerInternalError).await;
    }
    tx.reply_with(StatusCode::OK, vec![Header::Expires(expires.into())], None)
        .await?;
    let shared = shared.clone();
    let call_id = call_id.to_owned();
    let Ok(tasks) = shared.tasks().cloned() else {
        return Ok(());
    };
    tasks.spawn(async move {
        let _ = notify(&shared, &call_id, expires == 0).await;
        if expires == 0 {
            let _guard = shared.subscriptions.lock().await;
            if let Ok(store) = shared.store() {
                let _ = store.delete(&format!("{WATCHER}{call_id}"));
            }
        }
    });
    Ok(())
}

/// Sends a watcher the current state of its subscription: the Matrix user's presence when
/// active, no body while pending, `terminated` when `end` (or when refused).
async fn notify(shared: &Shared, call_id: &str, end: bool) -> Result<(), NetworkError> {
    notify_with(shared, call_id, end.then_some("timeout")).await
}

/// [`notify`], ending the subscription with `end` as the reason when given.
async fn notify_with(
    shared: &Shared,
    call_id: &str,
    end: Option<&str>,
) -> Result<(), NetworkError> {
    let key = format!("{WATCHER}{call_id}");
    let (w, cseq) = {
        let _guard = shared.subscriptions.lock().await;
        let Some(mut w) = load::<Watcher>(shared, &key) else {
            return Ok(());
        };
        let cseq = w.dialog.next_cseq();
        save(shared, &key, &w)?;
        (w, cseq)
    };
    let now = now_ms();
    let left = w.dialog.expires_at_ms.saturating_sub(now) / 1000;
    let refused = !w.active
        && contacts::get(shared.store()?, &w.user, &w.contact)
            .map(|s| !s.pending_in && !s.from)
            .unwrap_or(false);
    let (state, body) = if let Some(reason) = end {
        (format!("terminated;reason={reason}"), None)
    } else if left == 0 {
        ("terminated;reason=timeout".to_owned(), None)
    } else if refused {
        ("terminated;reason=rejected".to_owned(), None)
    } else if w.active {
        let entity = w.dialog.local_uri.clone();
        (
            format!("active;expires={left}"),
            Some(body::pidf(&entity, &presence_of(shared, &w.user))),
        )
    } else {
        (format!("pending;expires={left}"), None)
    };
    let mut headers = w.dialog.route_headers();
    headers.push(Header::Event("presence".into()));
    headers.push(Header::SubscriptionState(state.clone().into()));
    // NOTIFY refreshes the dialog's target (RFC 6665): it carries our Contact.
    let local_user = shared
        .addressing
        .puppet_user(&w.user)
        .unwrap_or_else(|| "isthmus".into());
    headers.push(Header::Contact(
        shared.endpoint()?.contact(&local_user).into(),
    ));
    if body.is_some() {
        headers.push(Header::ContentType(body::PIDF.into()));
    }
    let ep = shared.endpoint()?;
    let out = Outgoing {
        method: Method::Notify,
        uri: &w.dialog.remote_target,
        from: w.dialog.local_header(),
        to: w.dialog.remote_header(),
        call_id: Some(w.dialog.call_id.clone()),
        cseq,
        headers,
        body: body.unwrap_or_default(),
        credential: None,
        proxy: None,
    };
    let answer = ep
        .send(out)
        .await
        .map_err(|e| NetworkError::Transient(crate::error::Reason::from_error(e)))?;
    debug!(
        call_id,
        state,
        code = answer.code,
        "NOTIFY sent to a watcher"
    );
    if answer.code == 481 || state.starts_with("terminated") {
        let _guard = shared.subscriptions.lock().await;
        shared.store()?.delete(&key).map_err(sink_err)?;
    }
    Ok(())
}

/// Sends a Matrix user's presence to every watcher allowed to see it.
pub(super) async fn publish(
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
pub(super) async fn end_watchers_of(shared: &Shared, address: &str) {
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
pub(super) async fn answer(
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

/// NOTIFY for one of our own subscriptions.
pub(super) async fn notify_in(
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
pub(super) async fn watch(shared: &Shared, user: &str, contact: &str) -> Result<(), NetworkError> {
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
    let (w, cseq) = {
        let _guard = shared.subscriptions.lock().await;
        let Some(mut w) = load::<Watch>(shared, &key) else {
            return Ok(());
        };
        let cseq = w.dialog.next_cseq();
        save(shared, &key, &w)?;
        (w, cseq)
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

/// Every 10 s: refreshes our subscriptions when a quarter of their time is left (or they
/// were never confirmed), and forgets watchers whose subscription ran out.
pub(super) async fn maintain(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    refresh_watched(&shared).await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.changed() => return,
        }
        if shared.endpoint().is_err() || shared.store().is_err() {
            continue;
        }
        let now = now_ms();
        for (_, w) in all::<Watch>(&shared, WATCH) {
            // A quarter of the time the notifier granted.
            let period = w.dialog.granted_s.max(40).saturating_mul(1000);
            let due = w.dialog.expires_at_ms == 0
                || w.dialog.expires_at_ms.saturating_sub(now) < period / 4;
            if due && let Err(e) = subscribe_out(&shared, &w.dialog.call_id).await {
                debug!(error = %crate::error::chain(&e), contact = %w.contact, "presence subscription refresh failed; retrying");
            }
        }
        for (key, w) in all::<Watcher>(&shared, WATCHER) {
            if w.dialog.expires_at_ms < now {
                let _guard = shared.subscriptions.lock().await;
                if let Ok(store) = shared.store() {
                    let _ = store.delete(&key);
                }
            }
        }
    }
}
