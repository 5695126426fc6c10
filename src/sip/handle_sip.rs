//! SIP → bridge: requests from the proxy.
//!
//! A MESSAGE is answered 200 only once its event is stored, so a message the bridge
//! acknowledged is never lost; what the bridge refuses gets the 4xx that says why.

use std::sync::Arc;

use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, StatusCode};
use rsipstack::transaction::TransactionReceiver;
use rsipstack::transaction::transaction::Transaction;
use tracing::{debug, info, warn};

use super::Shared;
use super::body;
use super::endpoint::{self, ALLOW};
use super::headers;
use super::ids::Local;
use crate::network::{
    MatrixUserStatus, MessageContent, MessageKind, RemoteEvent, RemoteEventKind, RemoteMessageId,
};

/// Largest MESSAGE body accepted.
const MAX_BODY: usize = 64 * 1024;
/// Content types a MESSAGE may carry.
const ACCEPT: &str = "text/plain, text/html, application/im-iscomposing+xml";

/// Handles incoming requests until the endpoint stops. MESSAGEs are handled in the order they
/// arrive; presence work that waits on the network runs in its own tasks.
pub(super) async fn serve(
    shared: Arc<Shared>,
    mut incoming: TransactionReceiver,
    stopping: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopping);
    loop {
        // A request in hand is answered; none is taken once the bridge stops (its sender
        // gets no answer and sends it again).
        let next = tokio::select! {
            biased;
            () = &mut stopping => break,
            next = incoming.recv() => next,
        };
        let Some(mut tx) = next else { break };
        if let Err(e) = handle(&shared, &mut tx).await {
            debug!(error = %crate::error::chain(&e), "could not answer a SIP request");
        }
    }
    debug!("SIP endpoint stopped");
}

async fn handle(shared: &Arc<Shared>, tx: &mut Transaction) -> Result<(), rsipstack::Error> {
    let req = tx.original.clone();
    if !trusted_source(shared, &req) {
        warn!(method = %req.method, "SIP request from an untrusted address refused");
        return tx.reply(StatusCode::Forbidden).await;
    }
    match req.method {
        Method::Message => message(shared, tx).await,
        Method::Subscribe => super::presence::subscribe_in(shared, tx).await,
        Method::Notify => super::presence::notify_in(shared, tx).await,
        Method::Options => {
            tx.reply_with(
                StatusCode::OK,
                vec![Header::Allow(ALLOW.into()), Header::Accept(ACCEPT.into())],
                None,
            )
            .await
        }
        Method::Ack => Ok(()),
        _ => {
            tx.reply_with(
                StatusCode::MethodNotAllowed,
                vec![Header::Allow(ALLOW.into())],
                None,
            )
            .await
        }
    }
}

/// Whether the request came from the proxy or another trusted address: the transport source
/// the endpoint recorded, never anything the sender wrote.
fn trusted_source(shared: &Shared, req: &rsipstack::sip::Request) -> bool {
    let Some(source) = req.header_value(endpoint::SOURCE_HEADER) else {
        return false;
    };
    let Ok(ip) = source.trim_matches(['[', ']']).parse::<std::net::IpAddr>() else {
        return false;
    };
    let ip = ip.to_canonical();
    ip == shared.proxy.ip() || shared.trusted.contains(&ip)
}

/// The user part of the Request-URI, when its host is the gateway domain.
pub(super) fn local_target(shared: &Shared, req: &rsipstack::sip::Request) -> Option<Local> {
    let aor = super::ids::parse_aor(&req.uri.to_string()).ok()?;
    let (user, host) = aor.rsplit_once('@')?;
    if user.starts_with(super::account::ACCOUNT_PREFIX) {
        // The contact registered for a user's own account.
        return shared.accounts.user_of(user).map(Local::User);
    }
    let host = host.split(':').next().unwrap_or(host);
    if host != shared.addressing.domain() {
        return None;
    }
    shared.addressing.local(&super::ids::escape_user(user))
}

/// The sender of a request: its address and display name.
pub(super) fn sender(
    shared: &Shared,
    req: &rsipstack::sip::Request,
) -> Option<(String, Option<String>)> {
    let from = headers::name_addr(req.from_header().ok()?.value());
    let aor = shared.addressing.contact(&from.uri).ok()?;
    // A display name becomes a Matrix display name: short, printable, or none.
    let display = from.display.as_deref().and_then(crate::text::display_name);
    Some((aor, display))
}

/// How long a sender is asked to wait when the homeserver cannot say whether a user exists.
const RETRY_AFTER_SECONDS: &str = "30";

/// The answer to a request for Matrix user `user` who cannot receive: 404 when there is no
/// such user (or it is one of the bridge's own, or may not use the bridge), 480 with
/// Retry-After when the homeserver cannot tell now. `None` when the user can receive, or
/// when the request is for a user's own account (that user is known).
pub(super) async fn unreachable(
    shared: &Shared,
    req: &rsipstack::sip::Request,
    user: &str,
) -> Option<(StatusCode, Vec<Header>)> {
    if req
        .uri
        .user()
        .is_some_and(|u| u.starts_with(super::account::ACCOUNT_PREFIX))
    {
        return None;
    }
    let Some(sink) = shared.sink.get() else {
        return Some((
            StatusCode::TemporarilyUnavailable,
            vec![Header::Other(
                "Retry-After".into(),
                RETRY_AFTER_SECONDS.into(),
            )],
        ));
    };
    match sink.matrix_user_status(user).await {
        MatrixUserStatus::Reachable => None,
        MatrixUserStatus::NotFound => {
            info!(user, method = %req.method, "SIP request for a Matrix user who does not exist");
            Some((StatusCode::NotFound, Vec::new()))
        }
        MatrixUserStatus::Unknown => Some((
            StatusCode::TemporarilyUnavailable,
            vec![Header::Other(
                "Retry-After".into(),
                RETRY_AFTER_SECONDS.into(),
            )],
        )),
    }
}

async fn message(shared: &Arc<Shared>, tx: &mut Transaction) -> Result<(), rsipstack::Error> {
    let req = tx.original.clone();
    let Some(target) = local_target(shared, &req) else {
        return tx.reply(StatusCode::NotFound).await;
    };
    if let Local::User(user) = &target
        && let Some((status, headers)) = unreachable(shared, &req, user).await
    {
        return tx.reply_with(status, headers, None).await;
    }
    let Some((contact, display)) = sender(shared, &req) else {
        return tx.reply(StatusCode::BadRequest).await;
    };
    if req.body.len() > MAX_BODY {
        return tx.reply(StatusCode::RequestEntityTooLarge).await;
    }
    let content_type = headers::header_value(&req.headers, "Content-Type")
        .unwrap_or_else(|| "text/plain".into())
        .to_ascii_lowercase();
    let media = content_type.split(';').next().unwrap_or("").trim();
    let kind = match media {
        "text/plain" | "text/html" => {
            let Ok(text) = std::str::from_utf8(&req.body) else {
                return tx.reply(StatusCode::BadRequest).await;
            };
            let text = if media == "text/html" {
                body::html_to_text(text)
            } else {
                text.trim_end().to_owned()
            };
            if text.trim().is_empty() {
                return tx.reply(StatusCode::OK).await;
            }
            let content = match text.strip_prefix("/me ") {
                Some(rest) => MessageContent {
                    kind: MessageKind::Emote,
                    ..MessageContent::text(rest)
                },
                None => MessageContent::text(text),
            };
            let cseq = req.cseq_header().ok().and_then(|c| c.seq().ok());
            RemoteEventKind::Message {
                id: RemoteMessageId::new(format!(
                    "{}#{}",
                    headers::call_id(&req),
                    cseq.unwrap_or(0)
                )),
                content,
                reply_to: None,
            }
        }
        body::ISCOMPOSING => match body::parse_iscomposing(&req.body) {
            Ok(active) => RemoteEventKind::Typing { active },
            Err(e) => {
                debug!(error = %e, "unreadable typing notification");
                return tx.reply(StatusCode::BadRequest).await;
            }
        },
        _ => {
            return tx
                .reply_with(
                    StatusCode::UnsupportedMediaType,
                    vec![Header::Accept(ACCEPT.into())],
                    None,
                )
                .await;
        }
    };
    let event = match &target {
        Local::User(user) => RemoteEvent::direct(&contact, user, kind),
        Local::Room(chat) => RemoteEvent::fanout(chat, &contact, kind),
    }
    .named(display);
    let Some(sink) = shared.sink.get() else {
        return tx.reply(StatusCode::ServiceUnavailable).await;
    };
    match sink.push(event).await {
        Ok(()) => {
            debug!(from = %contact, "SIP MESSAGE stored");
            tx.reply(StatusCode::OK).await
        }
        Err(e) => {
            // Temporary: the sender may send it again (RFC 3261 §21.5.4).
            info!(error = %crate::error::chain(&e), "could not store a SIP MESSAGE; answering 503");
            tx.reply(StatusCode::ServiceUnavailable).await
        }
    }
}
