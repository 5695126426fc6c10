//! Tests of the message bodies: PIDF both ways and by class of spelling, hostile XML,
//! typing notifications, HTML to text, splitting.

use super::*;
use crate::text::decode_entities;

#[test]
fn a_long_note_is_written_as_much_as_a_reader_keeps() {
    // Markup-heavy notes grow fivefold when escaped: each of these once made a document
    // larger than a reader takes, which then read as nothing.
    for unit in ["<a href=\"x\">", "&", "\u{1F600}", "plain text "] {
        let long = unit.repeat(MAX_XML_BODY);
        let doc = pidf(
            "sip:a@b",
            &Presence {
                state: PresenceState::Online,
                status: Some(long.clone()),
            },
        );
        assert!(doc.len() < 4 * 1024, "{unit:?}: {} bytes", doc.len());
        let read = parse_pidf(&doc).expect("reads");
        assert_eq!(read.state, PresenceState::Online);
        let expected: String = long.trim().chars().take(MAX_NOTE_CHARS).collect();
        assert_eq!(read.status.as_deref(), Some(expected.trim()));
    }
}

#[test]
fn pidf_round_trips_every_state() {
    for state in [
        PresenceState::Online,
        PresenceState::Unavailable,
        PresenceState::Offline,
    ] {
        let p = Presence {
            state,
            status: Some("in a <meeting> & more".into()),
        };
        assert_eq!(parse_pidf(&pidf("sip:a@b", &p)), Ok(p));
    }
}

#[test]
fn pidf_from_other_clients() {
    let doc = br#"<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf"
            xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:bob@x">
            <tuple id="a"><status><basic>open</basic></status></tuple>
            <person xmlns="urn:ietf:params:xml:ns:pidf:data-model"><rpid:activities><rpid:busy/></rpid:activities>
            <note>Lunch</note></person></presence>"#;
    assert_eq!(
        parse_pidf(doc),
        Ok(Presence {
            state: PresenceState::Unavailable,
            status: Some("Lunch".into())
        })
    );
    let closed = br#"<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="t"><status><basic>closed</basic></status></tuple></presence>"#;
    assert_eq!(parse_pidf(closed).unwrap().state, PresenceState::Offline);
    assert_eq!(
        parse_pidf(br#"<presence xmlns="urn:ietf:params:xml:ns:pidf"/>"#),
        Err(BodyError::Missing("tuple/status/basic"))
    );
    assert!(matches!(
        parse_pidf(b"\xff\xfe"),
        Err(BodyError::Malformed(_))
    ));
}

/// A PIDF document written the many ways XML allows: any prefixes (or none), comments
/// and whitespace between elements, the note as CDATA or with character references, and
/// attributes (namespace declarations among them) in any order.
fn pidf_spelled(
    basic: &str,
    away: bool,
    note: &str,
    prefix: &str,
    cdata: bool,
    comment: bool,
    attrs_first: bool,
) -> String {
    let p = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}:")
    };
    let decl = if prefix.is_empty() {
        format!("xmlns=\"{NS_PIDF}\"")
    } else {
        format!("xmlns:{prefix}=\"{NS_PIDF}\"")
    };
    let c = if comment { "<!-- a <b> & c -->\n " } else { "" };
    // rxml takes a comment before the root element, without whitespace after it, but
    // none after the root.
    let outer = if comment { "<!-- a <b> & c -->" } else { "" };
    let attrs = if attrs_first {
        format!("entity='sip:a@b' {decl} xmlns:r='{NS_RPID}'")
    } else {
        format!("xmlns:r='{NS_RPID}' {decl} entity='sip:a@b'")
    };
    let note = if cdata {
        format!("<![CDATA[{}]]>", note.replace("]]>", "]]]]><![CDATA[>"))
    } else {
        note.chars()
            .map(|ch| format!("&#x{:x};", u32::from(ch)))
            .collect()
    };
    let activity = if away {
        format!(
            "<dm:person xmlns:dm='{NS_DM}' id='p'>{c}<r:activities><r:away/></r:activities></dm:person>"
        )
    } else {
        String::new()
    };
    format!(
        "<?xml version='1.0' encoding='UTF-8'?>{outer}<{p}presence {attrs}>{c}<{p}tuple id='t'>{c}\
         <{p}status>{c}<{p}basic>{basic}</{p}basic></{p}status>{c}<{p}note>{note}</{p}note>\
         </{p}tuple>{activity}</{p}presence>"
    )
}

#[test]
fn pidf_by_class_of_spelling() {
    let doc = pidf_spelled("open", true, "a ]]> b & <c>", "p", true, true, true);
    assert_eq!(
        parse_pidf(doc.as_bytes()),
        Ok(Presence {
            state: PresenceState::Unavailable,
            status: Some("a ]]> b & <c>".into())
        })
    );
    // Namespaces decide, not local names: the same names in another namespace, or none,
    // are not PIDF.
    let foreign =
        "<presence xmlns='urn:x'><tuple><status><basic>open</basic></status></tuple></presence>";
    assert_eq!(
        parse_pidf(foreign.as_bytes()),
        Err(BodyError::WrongRoot(NS_PIDF, "presence"))
    );
    let foreign_basic = format!(
        "<presence xmlns='{NS_PIDF}'><tuple><status><basic xmlns='urn:x'>open</basic></status></tuple></presence>"
    );
    assert!(parse_pidf(foreign_basic.as_bytes()).is_err());
    let foreign_away = format!(
        "<presence xmlns='{NS_PIDF}'><tuple><status><basic>open</basic></status></tuple><activities xmlns='urn:x'><away/></activities></presence>"
    );
    assert_eq!(
        parse_pidf(foreign_away.as_bytes()).unwrap().state,
        PresenceState::Online
    );
    // Several tuples: one open device is enough.
    let two = format!(
        "<presence xmlns='{NS_PIDF}'><tuple id='a'><status><basic>closed</basic></status></tuple>\
         <tuple id='b'><status><basic>open</basic></status></tuple></presence>"
    );
    assert_eq!(
        parse_pidf(two.as_bytes()).unwrap().state,
        PresenceState::Online
    );
}

#[test]
fn hostile_xml_is_refused_not_expanded() {
    // A DTD (and so any entity of its own), an undeclared prefix, a truncated document,
    // trailing garbage, nesting past the cap, and a body past the size cap.
    let bomb = format!(
        "<?xml version='1.0'?><!DOCTYPE p [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;'>]>\
         <presence xmlns='{NS_PIDF}'><tuple><status><basic>open</basic></status><note>&b;</note></tuple></presence>"
    );
    assert!(matches!(
        parse_pidf(bomb.as_bytes()),
        Err(BodyError::Malformed(_))
    ));
    for bad in [
        "<p:presence><p:tuple/></p:presence>".to_owned(),
        format!("<presence xmlns='{NS_PIDF}'><tuple><status><basic>open"),
        format!("<presence xmlns='{NS_PIDF}'/><x/>"),
        format!("<presence xmlns='{NS_PIDF}'><note>&nbsp;</note></presence>"),
        String::new(),
    ] {
        assert!(
            matches!(parse_pidf(bad.as_bytes()), Err(BodyError::Malformed(_))),
            "{bad}"
        );
    }
    let deep = format!(
        "<presence xmlns='{NS_PIDF}'>{}{}</presence>",
        "<x>".repeat(100_000),
        "</x>".repeat(100_000)
    );
    assert_eq!(
        parse_pidf(&deep.as_bytes()[..MAX_XML_BODY]),
        Err(BodyError::TooDeep)
    );
    assert_eq!(
        parse_pidf(deep.as_bytes()),
        Err(BodyError::TooLarge(deep.len()))
    );
    let long_note = format!(
        "<presence xmlns='{NS_PIDF}'><tuple><status><basic>open</basic></status><note>{}</note></tuple></presence>",
        "é".repeat(20_000)
    );
    let status = parse_pidf(long_note.as_bytes()).unwrap().status.unwrap();
    assert_eq!(status.chars().count(), MAX_NOTE_CHARS);
}

#[test]
fn typing_both_ways() {
    assert_eq!(parse_iscomposing(&iscomposing(true)), Ok(true));
    assert_eq!(parse_iscomposing(&iscomposing(false)), Ok(false));
    assert_eq!(
        parse_iscomposing(b"<isComposing/>"),
        Err(BodyError::WrongRoot(NS_ISCOMPOSING, "isComposing"))
    );
    let spelled = format!(
        "<!-- c --><t:isComposing xmlns:t='{NS_ISCOMPOSING}'><t:state><![CDATA[act]]>&#x69;ve</t:state></t:isComposing>"
    );
    assert_eq!(parse_iscomposing(spelled.as_bytes()), Ok(true));
}

proptest::proptest! {
    #[test]
    fn pidf_reads_every_spelling(
        state in proptest::sample::select(vec![
            PresenceState::Online,
            PresenceState::Unavailable,
            PresenceState::Offline,
        ]),
        note in "\\PC{0,40}",
        prefix in proptest::sample::select(vec!["", "p", "pidf", "x-y.z"]),
        cdata: bool,
        comment: bool,
        attrs_first: bool,
    ) {
        let (basic, away) = match state {
            PresenceState::Online => ("open", false),
            PresenceState::Unavailable => ("open", true),
            PresenceState::Offline => ("closed", false),
        };
        let doc = pidf_spelled(basic, away, &note, prefix, cdata, comment, attrs_first);
        let expected: String = note.trim().chars().take(MAX_NOTE_CHARS).collect();
        proptest::prop_assert_eq!(
            parse_pidf(doc.as_bytes()),
            Ok(Presence { state, status: (!expected.is_empty()).then_some(expected) })
        );
    }

    #[test]
    fn any_bytes_are_read_or_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let _ = parse_pidf(&bytes);
        let _ = parse_iscomposing(&bytes);
    }
}

#[test]
fn html_becomes_text() {
    assert_eq!(
        html_to_text("<p>Hello <b>you</b> &amp; me</p><p>bye&#33;<br>x</p>"),
        "Hello you & me\nbye!\nx"
    );
    assert_eq!(html_to_text("a<script>alert(1)</script>b"), "ab");
    assert_eq!(html_to_text("<unclosed"), "");
    // Each block element ends with a line break, closed by its end tag or not; a stray
    // end tag closes nothing.
    assert_eq!(html_to_text("<p>a<p>b</p>c</p>d"), "ab\nc\nd");
    assert_eq!(html_to_text("a</p>b<p/>c"), "ab\nc");
    assert_eq!(decode_entities("&bogus; &#x1F600;"), "&bogus; 😀");
}

proptest::proptest! {
    #[test]
    fn text_conversions_never_panic(s in "\\PC{0,64}") {
        let _ = decode_entities(&s);
        let _ = html_to_text(&s);
        let _ = parse_pidf(s.as_bytes());
        let _ = parse_iscomposing(s.as_bytes());
        let _ = split(&s, 17);
    }
}

#[test]
fn entities_next_to_wide_characters() {
    assert_eq!(decode_entities("&中文中文"), "&中文中文");
    assert_eq!(html_to_text("<p>&中文中文 &amp;</p>"), "&中文中文 &");
}

#[test]
fn split_respects_limits_and_characters() {
    let text = "word ".repeat(100);
    let parts = split(text.trim(), 64);
    assert!(parts.iter().all(|p| p.len() <= 64));
    assert_eq!(parts.join(" "), text.trim());
    let emoji = "😀".repeat(50);
    let parts = split(&emoji, 30);
    assert!(parts.iter().all(|p| p.len() <= 30));
    assert_eq!(parts.concat(), emoji);
    assert_eq!(split("", 100), vec![String::new()]);
}
