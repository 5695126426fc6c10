//! SIP users watching Matrix users ("watchers"): the bridge is the notifier (RFC 6665) for
//! its gateway domain and for own accounts. SUBSCRIBEs are let in, refused or asked about by
//! the per-domain policy; NOTIFYs carry the Matrix user's presence as PIDF.

use std::sync::Arc;

use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{all, load, save, sink_err, take_cseq};
use crate::network::contacts::{self, Policy};
use crate::network::now_ms;
use crate::network::{NetworkError, Presence, PresenceState, RemoteEvent, RemoteEventKind};
use crate::sip::Shared;
use crate::sip::body;
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::Outgoing;
use crate::sip::handle_sip::{local_target, sender};
use crate::sip::headers;
use crate::sip::ids::{self, Local};

mod changes;

pub(in crate::sip::presence) use changes::forget_expired;
pub(in crate::sip) use changes::{answer, end_watchers_of, publish};

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
    /// Changes the watcher has not been told of yet: raised before a NOTIFY is due (a new or
    /// refreshed subscription, a presence update, the user's answer), lowered by what a
    /// NOTIFY covered once it was answered. A NOTIFY cut short (the bridge stopped while it
    /// waited) leaves it raised, and the next start sends one again.
    #[serde(default)]
    owed: u32,
}

const WATCHER: &str = "watcher:";
const PRESENCE: &str = "presence:";

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
/// changed while the bridge was down), and watchers are told when it differs; then every
/// watcher still owed a NOTIFY (the last run stopped before it was answered) gets one.
pub(super) async fn refresh_watched(shared: &Shared) {
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
    for (_, w) in all::<Watcher>(shared, WATCHER) {
        if w.owed > 0
            && let Err(e) = notify(shared, &w.dialog.call_id, false).await
        {
            debug!(error = %crate::error::chain(&e), contact = %w.contact, "could not send a watcher the NOTIFY it was owed");
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
pub(in crate::sip) async fn subscribe_in(
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
    if let Some((status, headers)) = crate::sip::handle_sip::unreachable(shared, &req, &user).await
    {
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
        .is_some_and(|u| u.starts_with(crate::sip::account::ACCOUNT_PREFIX));
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
        // The first NOTIFY follows the 200 at once (RFC 6665).
        owed: 1,
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
    // Cancellable at any wait: the NOTIFY is owed in the stored watcher until answered.
    tasks.spawn_loop(async move {
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
        w.owed = w.owed.saturating_add(1);
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
    // Cancellable at any wait: the NOTIFY is owed in the stored watcher until answered (a
    // watcher that unsubscribed and is told at the next start gets `terminated`, its time
    // being up).
    tasks.spawn_loop(async move {
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
    let Some((w, cseq)) = take_cseq(shared, &key, |w: &mut Watcher| &mut w.dialog, 1).await? else {
        return Ok(());
    };
    // What this NOTIFY tells: every change owed up to now (its state is read below).
    let covered = w.owed;
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
    let mut out = Outgoing::in_dialog(&w.dialog, Method::Notify, cseq);
    out.headers.push(Header::Event("presence".into()));
    out.headers
        .push(Header::SubscriptionState(state.clone().into()));
    // NOTIFY refreshes the dialog's target (RFC 6665): it carries our Contact.
    let local_user = shared
        .addressing
        .puppet_user(&w.user)
        .unwrap_or_else(|| "isthmus".into());
    let ep = shared.endpoint()?;
    out.headers
        .push(Header::Contact(ep.contact(&local_user).into()));
    if let Some(body) = body {
        out.headers.push(Header::ContentType(body::PIDF.into()));
        out.body = body;
    }
    debug!(call_id, state, "sending a NOTIFY to a watcher");
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
    let _guard = shared.subscriptions.lock().await;
    if answer.code == 481 || state.starts_with("terminated") {
        shared.store()?.delete(&key).map_err(sink_err)?;
    } else if covered > 0
        && let Some(mut w) = load::<Watcher>(shared, &key)
    {
        // Answered (whatever the code): the watcher has been told. Changes owed since this
        // NOTIFY's state was read stay owed.
        w.owed = w.owed.saturating_sub(covered);
        save(shared, &key, &w)?;
    }
    Ok(())
}
