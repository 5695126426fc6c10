//! Tests of external group chats: joins, occupants and nicks, quotes, private notices.

use super::*;

#[test]
fn a_join_that_did_not_go_out_is_undone() {
    let rooms = Rooms::default();
    assert_eq!(rooms.add_puppet("r@m", "@a:hs", "a"), None);
    assert_eq!(rooms.add_puppet("r@m", "@b:hs", "b"), None);
    assert_eq!(rooms.primary("r@m").as_deref(), Some("@a:hs"));
    // A rename whose join failed: the old nick again.
    let before = rooms.add_puppet("r@m", "@b:hs", "bee");
    rooms.undo_add_puppet("r@m", "@b:hs", before);
    assert_eq!(rooms.puppet_nick("r@m", "@b:hs").as_deref(), Some("b"));
    assert!(rooms.is_puppet_nick("r@m", "b") && !rooms.is_puppet_nick("r@m", "bee"));
    // A first join that failed: the room is forgotten with its last puppet.
    rooms.undo_add_puppet("r@m", "@b:hs", None);
    assert_eq!(rooms.remove_puppet("r@m", "@a:hs"), Some(Some("a".into())));
    assert!(!rooms.is_room("r@m") && !rooms.has_puppets("r@m"));
    assert_eq!(rooms.remove_puppet("r@m", "@a:hs"), None);
}

#[test]
fn occupants_and_nicks_are_tracked_per_room() {
    let rooms = Rooms::default();
    // Occupants of a room the bridge is not in are not kept.
    rooms.occupant_seen("r@m", "bob", Some("bob@x".into()), false);
    assert_eq!(rooms.occupant_real("r@m", "bob"), None);
    rooms.add_puppet("r@m", "@a:hs", "a");
    rooms.occupant_seen("r@m", "bob", Some("bob@x".into()), false);
    assert_eq!(rooms.occupant_real("r@m", "bob").as_deref(), Some("bob@x"));
    let room = BareJid::from_str("r@m").unwrap();
    assert_eq!(
        rooms.occupant_nick(&room, "bob@x", None).as_deref(),
        Some("bob")
    );
    rooms.occupant_seen("r@m", "bob", None, true);
    assert_eq!(rooms.occupant_nick(&room, "bob@x", None), None);
    // The room renames a puppet: recorded once.
    assert_eq!(
        rooms.puppet_renamed("r@m", "@a:hs", "a2").as_deref(),
        Some("a")
    );
    assert_eq!(rooms.puppet_renamed("r@m", "@a:hs", "a2"), None);
    assert_eq!(
        rooms.puppet_nicks("r@m"),
        vec![("a2".into(), "@a:hs".into())]
    );
}

#[test]
fn traffic_times_are_persisted_every_30_seconds() {
    let rooms = Rooms::default();
    assert!(rooms.note_seen("r@m", 100_000));
    assert!(!rooms.note_seen("r@m", 129_999));
    assert!(rooms.note_seen("r@m", 130_000));
    assert!(rooms.note_seen("s@m", 129_999));
}

#[test]
fn nicks_are_cleaned() {
    assert_eq!(nick_for("  Alice \n", "@alice:hs"), "Alice");
    assert_eq!(nick_for("\u{7}", "@alice:hs"), "alice");
    assert_eq!(nick_for(&"x".repeat(100), "@a:hs").len(), 64);
}

#[test]
fn join_requests_keep_the_wire_shape() {
    let built = |attr: &'static str, value: &str| {
        Element::builder("x", ns::MUC)
            .append(
                Element::builder("history", ns::MUC)
                    .attr(
                        xmpp_parsers::minidom::rxml::NcName::try_from(attr).unwrap(),
                        value,
                    )
                    .build(),
            )
            .build()
    };
    let from = Jid::from_str("u@matrix.example.org/isthmus").unwrap();
    let room = BareJid::from_str("lobby@conference.example.org").unwrap();
    let x = |stanza: Option<Stanza>| match stanza {
        Some(Stanza::Presence(p)) => p.payloads.into_iter().find(|e| e.is("x", ns::MUC)),
        _ => None,
    };
    assert_eq!(
        x(join_presence(from.clone(), &room, "u", false)),
        Some(built("maxstanzas", "0"))
    );
    assert_eq!(
        x(join_presence_backfill(from.clone(), &room, "u")),
        Some(built("maxstanzas", &BACKFILL_MESSAGES.to_string()))
    );
    assert_eq!(
        x(join_presence_since(
            from.clone(),
            &room,
            "u",
            false,
            Some(1_795_728_662_123)
        )),
        Some(built("since", "2026-11-26T21:31:02.123Z"))
    );
    assert_eq!(x(join_presence(from, &room, "u", true)), None);
    let private: Element = MucUser::default().into();
    assert_eq!(private, Element::builder("x", ns::MUC_USER).build());
}

#[test]
fn occupants_prefer_real_jids() {
    let room = BareJid::from_str("lobby@conference.example.org").unwrap();
    assert_eq!(
        occupant_id(&room, "bob", Some("bob@example.org")),
        "bob@example.org"
    );
    assert_eq!(
        occupant_id(&room, "bob", None),
        "lobby@conference.example.org/bob"
    );
}

#[test]
fn quotes_are_one_short_line() {
    assert_eq!(quote(""), "");
    assert_eq!(quote("  \n "), "");
    assert_eq!(quote("hello"), "hello");
    assert_eq!(quote(" two\n\n  lines\t"), "two lines");
    let long = "word ".repeat(40);
    let q = quote(&long);
    assert!(q.ends_with("word…"), "{q}");
    assert!(q.chars().count() <= QUOTED_CHARS + 1, "{q}");
    let exact = "é".repeat(QUOTED_CHARS);
    assert_eq!(quote(&exact), exact);
    let over = "é".repeat(QUOTED_CHARS + 1);
    assert_eq!(quote(&over), format!("{}…", "é".repeat(QUOTED_CHARS)));
    // A cut at a space does not end in one.
    let spaced = format!("{} tail", "x".repeat(QUOTED_CHARS - 1));
    assert_eq!(quote(&spaced), format!("{}…", "x".repeat(QUOTED_CHARS - 1)));
}

#[test]
fn the_sender_is_found_by_nick_or_real_jid() {
    let room = BareJid::from_str("lobby@conference.example.org").unwrap();
    let mut occupants = HashMap::new();
    occupants.insert("a/b @c".to_owned(), None);
    occupants.insert("bobby".to_owned(), Some("bob@example.org".to_owned()));
    // Known by nick: that nick, odd characters and all, while it is in the room.
    let odd = "lobby@conference.example.org/a/b @c";
    assert_eq!(
        occupant_nick(&room, &occupants, odd, Some("a/b @c")).as_deref(),
        Some("a/b @c")
    );
    let gone = "lobby@conference.example.org/gone";
    assert_eq!(occupant_nick(&room, &occupants, gone, Some("gone")), None);
    // Known by real JID: followed to its current nick.
    for nick in [Some("bob"), Some("bobby"), None] {
        assert_eq!(
            occupant_nick(&room, &occupants, "bob@example.org", nick).as_deref(),
            Some("bobby")
        );
    }
    assert_eq!(
        occupant_nick(&room, &occupants, "carol@example.org", Some("bobby")),
        None,
        "never someone else's nick"
    );
}

#[test]
fn an_undelivered_message_is_told_in_private_from_the_puppet() {
    let room = BareJid::from_str("lobby@conference.example.org").unwrap();
    let from = Jid::from_str("alice@matrix.example.org/isthmus").unwrap();
    let s = undelivered_notice(
        from,
        &room,
        "a/b @c",
        "hello\u{1}\n  world",
        "too many new users from your server; try again later",
    )
    .unwrap();
    let el = Element::from(crate::xmpp::xml_safe::stanza(s).unwrap());
    assert_eq!(el.attr("type"), Some("chat"));
    assert_eq!(el.attr("from"), Some("alice@matrix.example.org/isthmus"));
    assert_eq!(el.attr("to"), Some("lobby@conference.example.org/a/b @c"));
    assert!(el.has_child("x", ns::MUC_USER), "a MUC private message");
    let body = el.get_child("body", ns::DEFAULT_NS).unwrap().text();
    assert_eq!(
        body,
        "Your message was not bridged to Matrix: too many new users from your server; try again later\n> hello\u{FFFD} world"
    );
    let mut xml = Vec::new();
    el.write_to(&mut xml).unwrap();
    Element::from_str(&String::from_utf8(xml).unwrap()).unwrap();

    // Without text (a file without caption), only the reason.
    let from = Jid::from_str("alice@matrix.example.org/isthmus").unwrap();
    let el = Element::from(undelivered_notice(from, &room, "bob", "", "why").unwrap());
    assert_eq!(
        el.get_child("body", ns::DEFAULT_NS).unwrap().text(),
        "Your message was not bridged to Matrix: why"
    );
}

#[test]
fn a_nick_that_is_no_address_gets_no_notice() {
    let room = BareJid::from_str("lobby@conference.example.org").unwrap();
    let from = Jid::from_str("alice@matrix.example.org/isthmus").unwrap();
    for nick in ["", &"n".repeat(1100)] {
        assert!(undelivered_notice(from.clone(), &room, nick, "hi", "why").is_none());
    }
}

#[test]
fn join_presence_asks_for_no_history() {
    let room = BareJid::from_str("lobby@conference.example.org").unwrap();
    let from = Jid::from_str("alice@matrix.example.org/isthmus").unwrap();
    let s = join_presence(from, &room, "Alice", false).unwrap();
    let xml = String::from(&Element::from(s));
    assert!(
        xml.contains("to='lobby@conference.example.org/Alice'"),
        "{xml}"
    );
    assert!(xml.contains("maxstanzas='0'"), "{xml}");
}
