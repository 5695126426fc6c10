//! Message formatting between Matrix and XMPP.
//!
//! - Matrix HTML → XMPP: plain text with XEP-0393 message styling (`*strong*`, `_emphasis_`,
//!   `~strike~`, `` `code` ``, ```` ``` ```` blocks, `>` quotes); links keep their target;
//!   Matrix pills become the name they show.
//! - XMPP → Matrix: XEP-0393 styling becomes HTML; an XHTML-IM body (XEP-0071) is sanitised to
//!   the Matrix HTML allow-list instead. The plain body stays the `body`.

mod html;
mod styling;

pub use self::html::{html_to_styled_text, sanitize_xhtml};
pub use self::styling::styled_text_to_html;

use xmpp_parsers::minidom::Element;

use crate::network::{Attachment, MessageContent, MessageKind};

const XHTML_IM: &str = "http://jabber.org/protocol/xhtml-im";

/// The Matrix users mentioned in `body`: a known nick at the start followed by `:` or `,`
/// (the XMPP convention), or as `@nick` anywhere. `nicks` holds (nick, Matrix user).
pub fn mentions(body: &str, nicks: &[(String, String)]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (nick, user) in nicks {
        if nick.is_empty() {
            continue;
        }
        let addressed = body
            .strip_prefix(nick.as_str())
            .is_some_and(|rest| rest.starts_with(':') || rest.starts_with(','));
        if addressed || body.contains(&format!("@{nick}")) {
            found.push((nick.clone(), user.clone()));
        }
    }
    found
}

/// XEP-0066 out-of-band data, the way XMPP clients send files (with XEP-0363 uploads).
pub const OOB: &str = "jabber:x:oob";

/// The file an inbound message carries by XEP-0066, with the body as its caption unless the
/// body is just the link (as clients send it).
pub fn attachment(body: &str, payloads: &[Element]) -> Option<(Attachment, String)> {
    let url = payloads
        .iter()
        .find(|p| p.is("x", OOB))?
        .get_child("url", OOB)?
        .text()
        .trim()
        .to_owned();
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 4096 {
        return None;
    }
    let name = crate::media::name_from_url(&url);
    let caption = if body.trim() == url {
        String::new()
    } else {
        body.trim().to_owned()
    };
    Some((
        Attachment {
            url,
            name,
            mimetype: None,
            size: None,
        },
        caption,
    ))
}

/// The content of an inbound XMPP message: `/me` becomes an emote; XHTML-IM (sanitised) or
/// XEP-0393 styling becomes the HTML; mentions of Matrix users' nicks become pills and
/// `mentions`.
pub fn inbound_content(
    body: &str,
    payloads: &[Element],
    nicks: &[(String, String)],
) -> MessageContent {
    let (kind, body) = match body.strip_prefix("/me ") {
        Some(rest) => (MessageKind::Emote, rest.to_owned()),
        None => (MessageKind::Text, body.to_owned()),
    };
    let mut html = payloads
        .iter()
        .find(|p| p.is("html", XHTML_IM))
        .and_then(html::sanitize_xhtml)
        .or_else(|| styled_text_to_html(&body));
    let mentioned = mentions(&body, nicks);
    if !mentioned.is_empty() {
        let mut h = html.unwrap_or_else(|| escape_html(&body));
        for (nick, user) in &mentioned {
            let pill = format!(
                "<a href=\"https://matrix.to/#/{user}\">{}</a>",
                escape_html(nick)
            );
            let escaped = escape_html(nick);
            h = if let Some(rest) = h.strip_prefix(&escaped) {
                format!("{pill}{rest}")
            } else {
                h.replacen(&format!("@{escaped}"), &pill, 1)
            };
        }
        html = Some(h);
    }
    MessageContent {
        kind,
        body,
        html,
        mentions: mentioned.into_iter().map(|(_, u)| u).collect(),
        attachment: None,
    }
}

/// The body of an outbound XMPP message: the HTML rendered as XEP-0393 styled text when the
/// Matrix message is formatted, else the plain body; `/me` for emotes.
pub fn outbound_body(content: &MessageContent) -> String {
    let text = match &content.html {
        Some(h) => html_to_styled_text(h),
        None => content.body.clone(),
    };
    match content.kind {
        MessageKind::Emote => format!("/me {text}"),
        _ => text,
    }
}

pub use crate::text::escape_markup as escape_html;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_become_pills_only_for_known_nicks() {
        let nicks = vec![("Alice".to_owned(), "@alice:hs".to_owned())];
        let c = inbound_content("Alice: lunch?", &[], &nicks);
        assert_eq!(c.mentions, vec!["@alice:hs"]);
        assert_eq!(
            c.html.as_deref(),
            Some("<a href=\"https://matrix.to/#/@alice:hs\">Alice</a>: lunch?")
        );
        let c = inbound_content("ping @room and @Alice", &[], &nicks);
        assert_eq!(c.mentions, vec!["@alice:hs"], "@room is not a mention");
        let c = inbound_content("talking about alice in passing", &[], &nicks);
        assert!(c.mentions.is_empty());
        assert!(c.html.is_none());
    }

    #[test]
    fn emotes_and_styling() {
        let c = inbound_content("/me waves *hard*", &[], &[]);
        assert_eq!(c.kind, MessageKind::Emote);
        assert_eq!(c.body, "waves *hard*");
        assert_eq!(c.html.as_deref(), Some("waves <strong>hard</strong>"));
        let out = MessageContent {
            kind: MessageKind::Emote,
            body: "waves **hard**".into(),
            html: Some("waves <strong>hard</strong>".into()),
            mentions: Vec::new(),
            attachment: None,
        };
        assert_eq!(outbound_body(&out), "/me waves *hard*");
    }
}
