//! Entry points for the fuzz targets (`tests/fuzz.rs`): the pure parts of the inbound paths,
//! reachable without a server, a homeserver or a store. Not a stable interface.

use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza::Stanza;

use crate::network::{Attachment, MessageContent};

pub use crate::sip::body::{
    BodyError, html_to_text, is_body_char, parse_iscomposing, parse_pidf, pidf, split,
};
pub use crate::sip::headers::{NameAddr, name_addr, quoted, split_list};
pub use crate::xmpp::fidelity::Kind;
pub use crate::xmpp::time::{parse as parse_xmpp_time, rfc3339};

/// What the inbound XMPP handler reads from a message before it needs the link or the store.
#[derive(Debug)]
pub struct XmppMessage {
    /// The ID the message is remembered under.
    pub id: String,
    /// The delay a sender claims, never later than now.
    pub delay_ms: Option<u64>,
    /// The delay when `server` stamped it.
    pub trusted_delay_ms: Option<u64>,
    /// Correction, retraction or reactions.
    pub kind: Option<Kind>,
    /// A moderator's removal.
    pub moderation: Option<(String, Option<String>)>,
    /// The message a reply points at.
    pub reply_target: Option<String>,
    /// The body, its reply fallback removed, as content for Matrix.
    pub content: Option<MessageContent>,
    /// A file it carries, with its caption.
    pub attachment: Option<(Attachment, String)>,
}

/// Reads `el`, as an own-account connection reads it (`jabber:client`), the way the inbound
/// handler reads a message stanza; `None` when it is not one. `server` is the account's own
/// server, `nicks` the known (nick, Matrix user) pairs.
pub fn xmpp_message(el: Element, server: &str, nicks: &[(String, String)]) -> Option<XmppMessage> {
    use crate::xmpp::{c2s, convert, fidelity, handle_xmpp};
    let Some(Stanza::Message(msg)) = c2s::from_client(el) else {
        return None;
    };
    let body = msg.bodies.values().next().cloned();
    let content = body.as_ref().map(|b| {
        let stripped = fidelity::strip_fallback(b, &msg.payloads, fidelity::REPLY);
        convert::inbound_content(&stripped, &msg.payloads, nicks)
    });
    let attachment = body
        .as_deref()
        .and_then(|b| convert::attachment(b, &msg.payloads));
    Some(XmppMessage {
        id: handle_xmpp::message_id(&msg),
        delay_ms: handle_xmpp::delay_ms(&msg),
        trusted_delay_ms: handle_xmpp::trusted_delay_ms(&msg, server),
        kind: fidelity::classify(&msg.payloads),
        moderation: fidelity::moderation(&msg.payloads),
        reply_target: fidelity::reply_target(&msg.payloads),
        content,
        attachment,
    })
}

/// Reads a homeserver transaction body as the transaction handler does: (items kept,
/// dropped, malformed, each item's room); `None` when the handler would answer 400. `echo`
/// tells the bridge's own users' echoes by (sender, room).
pub fn transaction(
    echo: &dyn Fn(&str, &str) -> bool,
    body: &[u8],
) -> Option<(usize, usize, usize, Vec<Option<String>>)> {
    crate::appservice::transactions::read_counts(echo, body)
}
