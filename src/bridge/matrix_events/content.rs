//! The pure reading of Matrix message contents: what a message says to a network
//! ([`message_content`]), the relations the core follows (edits, replies), and the reply
//! fallbacks older clients put before a reply's text, which are not sent on.

use ruma::events::room::message::{MessageFormat, MessageType, Relation, RoomMessageEventContent};

use crate::network::{MessageContent, MessageKind};

/// The event an edit replaces, when `content` is an edit (`m.replace`), and the message as
/// it is now (`m.new_content`).
pub(super) fn edit_of(content: &RoomMessageEventContent) -> Option<(&str, &MessageType)> {
    match &content.relates_to {
        Some(Relation::Replacement(r)) => Some((r.event_id.as_str(), &r.new_content.msgtype)),
        _ => None,
    }
}

/// The event `content` answers (`m.in_reply_to`), whatever the relation around it: a plain
/// reply, or a thread message naming the message it follows.
pub(super) fn reply_target(content: &RoomMessageEventContent) -> Option<&str> {
    match &content.relates_to {
        Some(Relation::Reply(r)) => Some(r.in_reply_to.event_id.as_str()),
        Some(Relation::Thread(t)) => t.in_reply_to.as_ref().map(|r| r.event_id.as_str()),
        _ => None,
    }
}

/// Whether `content` is a notice (`m.notice`).
pub(super) fn is_notice(content: &RoomMessageEventContent) -> bool {
    matches!(content.msgtype, MessageType::Notice(_))
}

/// The network-neutral content of a Matrix message; `None` for kinds not bridged this way
/// (files, see `Bridge::outgoing_content`; locations; kinds the bridge does not know).
pub fn message_content(msgtype: &MessageType) -> Option<MessageContent> {
    let (kind, body, formatted) = match msgtype {
        MessageType::Text(c) => (MessageKind::Text, &c.body, &c.formatted),
        MessageType::Emote(c) => (MessageKind::Emote, &c.body, &c.formatted),
        MessageType::Notice(c) => (MessageKind::Notice, &c.body, &c.formatted),
        _ => return None,
    };
    let html = formatted
        .as_ref()
        .filter(|f| f.format == MessageFormat::Html)
        .map(|f| strip_html_reply_fallback(&f.body));
    Some(MessageContent {
        kind,
        body: strip_reply_fallback(body),
        html,
        mentions: Vec::new(),
        attachment: None,
    })
}

/// Removes the `> <@user> quoted` lines older clients put before a reply's text.
fn strip_reply_fallback(body: &str) -> String {
    if !body.starts_with("> <") {
        return body.to_owned();
    }
    let mut lines = body.lines().skip_while(|l| l.starts_with('>'));
    let mut out: Vec<&str> = Vec::new();
    if let Some(first) = lines.next()
        && !first.is_empty()
    {
        out.push(first);
    }
    out.extend(lines);
    out.join("\n")
}

/// Removes the `<mx-reply>` block older clients put before a reply's formatted text.
fn strip_html_reply_fallback(html: &str) -> String {
    match (html.find("<mx-reply>"), html.find("</mx-reply>")) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{}", &html[..a], &html[b + "</mx-reply>".len()..])
        }
        _ => html.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn message(content: serde_json::Value) -> RoomMessageEventContent {
        serde_json::from_value(content).expect("message content")
    }

    fn convert(content: serde_json::Value) -> Option<MessageContent> {
        message_content(&message(content).msgtype)
    }

    #[test]
    fn text_emote_and_notice_are_converted_and_nothing_else() {
        for (msgtype, kind) in [
            ("m.text", MessageKind::Text),
            ("m.emote", MessageKind::Emote),
            ("m.notice", MessageKind::Notice),
        ] {
            let c = convert(json!({"msgtype": msgtype, "body": "hello"})).expect(msgtype);
            assert_eq!((c.kind, c.body.as_str(), c.html), (kind, "hello", None));
        }
        for content in [
            json!({"msgtype": "m.image", "body": "x.png", "url": "mxc://hs/x"}),
            json!({"msgtype": "m.file", "body": "x.pdf", "url": "mxc://hs/x"}),
            json!({"msgtype": "m.location", "body": "here", "geo_uri": "geo:1,2"}),
            json!({"msgtype": "org.example.custom", "body": "?"}),
        ] {
            assert!(convert(content.clone()).is_none(), "{content}");
        }
    }

    #[test]
    fn formatted_bodies_are_kept_only_as_html() {
        let html = convert(json!({"msgtype": "m.text", "body": "*b*",
            "format": "org.matrix.custom.html", "formatted_body": "<b>b</b>"}))
        .unwrap();
        assert_eq!(html.html.as_deref(), Some("<b>b</b>"));
        let other = convert(json!({"msgtype": "m.text", "body": "*b*",
            "format": "org.example.markdown", "formatted_body": "**b**"}))
        .unwrap();
        assert_eq!(other.html, None);
        let emote = convert(json!({"msgtype": "m.emote", "body": "waves",
            "format": "org.matrix.custom.html", "formatted_body": "<i>waves</i>"}))
        .unwrap();
        assert_eq!(emote.html.as_deref(), Some("<i>waves</i>"));
    }

    #[test]
    fn reply_fallbacks_are_stripped() {
        for (body, out) in [
            ("plain text", "plain text"),
            ("> a quote that is no reply", "> a quote that is no reply"),
            ("> <@a:hs> old\n\nnew", "new"),
            ("> <@a:hs> old\n> more\n\nnew\nsecond", "new\nsecond"),
            ("> <@a:hs> old\nnew", "new"),
            ("> <@a:hs> only a quote", ""),
        ] {
            assert_eq!(strip_reply_fallback(body), out, "{body:?}");
        }
        for (html, out) in [
            ("<mx-reply><blockquote>q</blockquote></mx-reply>new", "new"),
            ("a<mx-reply>q</mx-reply>b", "ab"),
            ("no reply", "no reply"),
            ("</mx-reply>x<mx-reply>", "</mx-reply>x<mx-reply>"),
            ("<mx-reply>never closed", "<mx-reply>never closed"),
        ] {
            assert_eq!(strip_html_reply_fallback(html), out, "{html:?}");
        }
        let c = convert(json!({
            "msgtype": "m.text", "body": "> <@a:hs> old\n> more\n\nnew text",
            "format": "org.matrix.custom.html",
            "formatted_body": "<mx-reply><blockquote>old</blockquote></mx-reply><b>new</b> text"
        }))
        .unwrap();
        assert_eq!(c.body, "new text");
        assert_eq!(c.html.as_deref(), Some("<b>new</b> text"));
    }

    #[test]
    fn relations_are_read_by_kind() {
        let text = json!({"msgtype": "m.text", "body": "x"});
        let with = |relation: serde_json::Value| {
            let mut c = text.clone();
            c["m.relates_to"] = relation;
            message(c)
        };
        let plain = message(text.clone());
        assert_eq!(
            (edit_of(&plain).is_some(), reply_target(&plain)),
            (false, None)
        );
        let reply = with(json!({"m.in_reply_to": {"event_id": "$r"}}));
        assert_eq!(
            (edit_of(&reply).is_some(), reply_target(&reply)),
            (false, Some("$r"))
        );
        let thread = with(json!({"rel_type": "m.thread", "event_id": "$root",
            "is_falling_back": true, "m.in_reply_to": {"event_id": "$last"}}));
        assert_eq!(reply_target(&thread), Some("$last"));
        let bare_thread = with(json!({"rel_type": "m.thread", "event_id": "$root"}));
        assert_eq!(reply_target(&bare_thread), None);
        let custom = with(json!({"rel_type": "org.example", "event_id": "$x",
            "m.in_reply_to": {"event_id": "$r"}}));
        assert_eq!(reply_target(&custom), Some("$r"));
        let mut edit = text.clone();
        edit["m.new_content"] = json!({"msgtype": "m.emote", "body": "new"});
        edit["m.relates_to"] = json!({"rel_type": "m.replace", "event_id": "$old"});
        let edit = message(edit);
        let (target, new) = edit_of(&edit).expect("an edit");
        assert_eq!(target, "$old");
        assert!(matches!(new, MessageType::Emote(e) if e.body == "new"));
        assert_eq!(reply_target(&edit), None);
        let notice = message(json!({"msgtype": "m.notice", "body": "n"}));
        assert!(is_notice(&notice) && !is_notice(&plain));
    }

    proptest! {
        /// Whatever follows the quoted lines of a reply is kept as it is; a body that does
        /// not start like a reply fallback is never changed.
        #[test]
        fn only_the_fallback_is_stripped(
            quotes in proptest::collection::vec("[^\n\r]{0,12}", 1..4),
            text in "[a-z ][a-z ]{0,10}(\n[a-z ]{1,10}){0,3}",
            other in "[^>][^\r]{0,30}",
        ) {
            let body = format!("> <@a:hs> {}\n\n{text}", quotes.join("\n> "));
            prop_assert_eq!(strip_reply_fallback(&body), text.clone());
            prop_assert_eq!(strip_reply_fallback(&other), other.clone());
            let html = format!("{other}<mx-reply>{}</mx-reply>{text}", quotes.join(""));
            if !other.contains("mx-reply>") && !quotes.join("").contains("mx-reply>") {
                prop_assert_eq!(strip_html_reply_fallback(&html), format!("{other}{text}"));
            }
        }
    }
}
