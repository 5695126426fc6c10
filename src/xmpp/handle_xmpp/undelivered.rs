//! Telling an XMPP sender that a message did not reach Matrix.

use super::*;

/// The error message that tells the XMPP sender of `event` that it did not reach Matrix
/// (RFC 6120 §8.3: a message of type `error` with the original ID, from the address it was
/// sent to). `None` for what is not a direct message, or when the addresses cannot be made.
pub(in crate::xmpp) fn undelivered_error(
    addressing: &crate::xmpp::ids::Addressing,
    event: &crate::network::RemoteEvent,
    full: Option<Jid>,
    reason: &str,
) -> Option<Stanza> {
    let crate::network::RemoteEventKind::Message { id, .. } = &event.kind else {
        return None;
    };
    if event.chat_kind != crate::network::ChatKind::Direct {
        return None;
    }
    let from = addressing.puppet(event.receiver.as_deref()?)?;
    let bare = Jid::from_str(event.sender.as_str()).ok()?;
    // To the client that wrote, when known: servers drop errors sent to a bare JID.
    let to = full
        .filter(|f| f.to_bare() == bare.to_bare())
        .unwrap_or(bare);
    Some(hosted::undelivered_error(
        Jid::from(from),
        to,
        id.as_str(),
        reason,
    ))
}

/// What tells the XMPP sender of group chat message `event` that it did not reach Matrix.
/// In a room the gateway hosts: the error message of RFC 6120 §8.3 from the room, to the
/// address the occupant wrote from (their full JID while they are in the room, else the one
/// last seen, else their bare JID). In a group chat hosted elsewhere: a private message
/// (XEP-0045 §7.5) from the room's primary puppet to the sender's nick, quoting the
/// message's beginning. `None` for what is not a group message, and when nobody can be
/// addressed (the bridge or the sender left the room).
pub(in crate::xmpp) fn group_undelivered(
    shared: &Shared,
    event: &crate::network::RemoteEvent,
    reason: &str,
) -> Option<Stanza> {
    let RemoteEventKind::Message { id, content, .. } = &event.kind else {
        return None;
    };
    if event.chat_kind != crate::network::ChatKind::Group {
        return None;
    }
    let room = BareJid::from_str(event.chat.as_str()).ok()?;
    let nick = event.sender_name.as_deref();
    if room.domain().as_str() == shared.addressing.component() {
        let sender = BareJid::from_str(event.sender.as_str()).ok()?;
        let present = shared.hosted.occupant_address(room.as_str(), &sender, nick);
        let to = present
            .or_else(|| {
                shared
                    .resources
                    .of(sender.as_str())
                    .filter(|f| f.to_bare() == sender)
            })
            .unwrap_or_else(|| Jid::from(sender));
        return Some(hosted::undelivered_error(
            Jid::from(room),
            to,
            id.as_str(),
            reason,
        ));
    }
    let Some(occupant) = shared
        .rooms
        .occupant_nick(&room, event.sender.as_str(), nick)
    else {
        debug!(room = %room, sender = %event.sender, "the sender of an undelivered group message, or the bridge, is not in the room; nobody to tell");
        return None;
    };
    let puppet = shared
        .rooms
        .primary(room.as_str())
        .and_then(|user| shared.addressing.puppet(&user))?;
    muc::undelivered_notice(
        muc::puppet_full(&puppet),
        &room,
        &occupant,
        &content.body,
        reason,
    )
}
