//! Avatars: vCard pictures (XEP-0054, announced by hash in presence as XEP-0153 says) of
//! contacts become ghost avatars, and Matrix users' avatars answer vCard requests to their
//! gateway addresses.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::presence::Presence;
use xmpp_parsers::vcard::{Binval, Photo, Type, VCard};

pub(super) const VCARD: &str = "vcard-temp";
const VCARD_UPDATE: &str = "vcard-temp:x:update";
/// Largest picture taken from a vCard.
const MAX_PHOTO_BYTES: usize = 1 << 20;

/// The picture of a vCard, decoded; `None` without one (or when it is too large or not
/// base64). Read by hand: the crate's `VCard` refuses a photo without a `TYPE`, and decodes
/// a picture before its size is checked.
pub(super) fn photo(card: &Element) -> Option<Vec<u8>> {
    let binval = card
        .get_child("PHOTO", VCARD)?
        .get_child("BINVAL", VCARD)?
        .text();
    let compact: String = binval
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if compact.is_empty() || compact.len() > MAX_PHOTO_BYTES * 4 / 3 + 4 {
        return None;
    }
    B64.decode(compact).ok()
}

/// A base64 picture (whitespace allowed), when it decodes and is at most 1 MiB.
pub(super) fn decode(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() || compact.len() > MAX_PHOTO_BYTES * 4 / 3 + 4 {
        return None;
    }
    B64.decode(compact).ok()
}

/// The SHA-1 of a picture in hex, as XEP-0153 names pictures.
pub(super) fn sha1_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The picture hash a presence announces: `Some("")` when the contact has no picture,
/// `None` when the presence says nothing about it. Read by hand: the crate's `VCardUpdate`
/// refuses a hash with whitespace around it.
pub(super) fn announced(p: &Presence) -> Option<String> {
    let x = p.payloads.iter().find(|e| e.is("x", VCARD_UPDATE))?;
    let photo = x.get_child("photo", VCARD_UPDATE)?;
    let hash = photo.text().trim().to_ascii_lowercase();
    (hash.is_empty() || (hash.len() == 40 && hash.bytes().all(|b| b.is_ascii_hexdigit())))
        .then_some(hash)
}

/// A vCard with a full name and a picture. The crate types only the picture: the names are
/// built here.
pub(super) fn vcard(name: Option<&str>, picture: Option<(&str, &[u8])>) -> Element {
    let names = name
        .map(|name| {
            ["FN", "NICKNAME"]
                .map(|field| Element::builder(field, VCARD).append(name).build())
                .to_vec()
        })
        .unwrap_or_default();
    VCard {
        photo: picture.map(|(mimetype, bytes)| Photo {
            type_: Type {
                data: mimetype.to_owned(),
            },
            binval: Binval {
                data: bytes.to_vec(),
            },
        }),
        payloads: names,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcard_picture_round_trips_and_hashes_as_xep_0153_says() {
        let card = vcard(Some("Bob"), Some(("image/png", b"\x89PNG\r\n\x1a\nrest")));
        assert_eq!(photo(&card).unwrap(), b"\x89PNG\r\n\x1a\nrest");
        // SHA-1 of the empty string.
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        let wrapped: Element =
            "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>aGVs\n  bG8=</BINVAL></PHOTO></vCard>"
                .parse()
                .unwrap();
        assert_eq!(photo(&wrapped).unwrap(), b"hello");
        let broken: Element =
            "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>!!!</BINVAL></PHOTO></vCard>"
                .parse()
                .unwrap();
        assert_eq!(photo(&broken), None);
        assert_eq!(photo(&vcard(Some("x"), None)), None);
    }

    /// The vCard as the bridge built it by hand before the crate's types.
    fn built_vcard(name: Option<&str>, picture: Option<(&str, &[u8])>) -> Element {
        let mut card = Element::builder("vCard", VCARD).build();
        if let Some(name) = name {
            card.append_child(Element::builder("FN", VCARD).append(name).build());
            card.append_child(Element::builder("NICKNAME", VCARD).append(name).build());
        }
        if let Some((mimetype, bytes)) = picture {
            card.append_child(
                Element::builder("PHOTO", VCARD)
                    .append(Element::builder("TYPE", VCARD).append(mimetype).build())
                    .append(
                        Element::builder("BINVAL", VCARD)
                            .append(B64.encode(bytes))
                            .build(),
                    )
                    .build(),
            );
        }
        card
    }

    /// The children of `card` in a fixed order (the order of vCard fields means nothing).
    fn fields(card: &Element) -> Vec<String> {
        let mut f: Vec<String> = card
            .children()
            .map(|c| String::from(&super::super::payloads::wire(c)))
            .collect();
        f.sort();
        f
    }

    proptest::proptest! {
        /// The typed vCard carries the fields the bridge sent before, and its picture reads
        /// back.
        #[test]
        fn vcards_keep_the_wire_shape(
            name in proptest::option::of("[ -~é<>&]{0,16}"),
            picture in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 1..64)),
            mimetype in "image/[a-z]{1,8}",
        ) {
            let picture = picture.as_deref().map(|p| (mimetype.as_str(), p));
            let card = vcard(name.as_deref(), picture);
            let built = built_vcard(name.as_deref(), picture);
            proptest::prop_assert_eq!((card.name(), card.ns()), ("vCard", VCARD.to_owned()));
            proptest::prop_assert!(card.attrs().is_empty());
            proptest::prop_assert_eq!(fields(&card), fields(&built));
            proptest::prop_assert_eq!(photo(&card), picture.map(|(_, p)| p.to_vec()));
        }
    }

    #[test]
    fn presence_announcements_are_read_strictly() {
        let p = |x: &str| {
            Presence::try_from(
                format!("<presence xmlns='jabber:component:accept'>{x}</presence>")
                    .parse::<Element>()
                    .unwrap(),
            )
            .unwrap()
        };
        let hash = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
        assert_eq!(
            announced(&p(&format!(
                "<x xmlns='vcard-temp:x:update'><photo>{hash}</photo></x>"
            ))),
            Some(hash.into())
        );
        assert_eq!(
            announced(&p("<x xmlns='vcard-temp:x:update'><photo/></x>")),
            Some(String::new())
        );
        // Not ready to say, or not a hash: nothing is concluded.
        assert_eq!(announced(&p("<x xmlns='vcard-temp:x:update'/>")), None);
        assert_eq!(
            announced(&p(
                "<x xmlns='vcard-temp:x:update'><photo>../../etc</photo></x>"
            )),
            None
        );
        assert_eq!(announced(&p("")), None);
    }
}
