//! Avatars: vCard pictures (XEP-0054, announced by hash in presence as XEP-0153 says) of
//! contacts become ghost avatars, and Matrix users' avatars answer vCard requests to their
//! gateway addresses.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

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

/// What the bridge learnt of contacts' pictures in this run, behind one lock.
#[derive(Debug, Default)]
pub(super) struct Avatars {
    known: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    /// Contacts whose vCard was asked for.
    vcards_asked: HashSet<String>,
    /// The vCard picture hash (XEP-0153) each contact had when last bridged.
    vcard_hashes: HashMap<String, String>,
    /// The published avatar (XEP-0084) each contact of an own account has ("" when
    /// removed); such a contact's vCard pictures are then ignored.
    published: HashMap<String, String>,
}

/// What to do about a picture a contact's presence announced (XEP-0153).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Announced {
    /// Nothing: the picture is the one bridged, or a published avatar takes precedence.
    Known,
    /// The contact has no picture any more.
    Removed,
    /// A new picture: fetch the vCard.
    New,
}

impl Avatars {
    /// Whether this is the first time the contact's vCard is asked for in this run.
    pub fn first_vcard_ask(&self, contact: &str) -> bool {
        self.known
            .lock()
            .expect("avatar lock")
            .vcards_asked
            .insert(contact.to_owned())
    }

    /// Whether a vCard's picture (of hash `hash`) is to be bridged for the contact: not when
    /// the contact publishes an avatar (XEP-0084), nor when it is the one bridged already.
    /// Records it as bridged.
    pub fn vcard_picture(&self, contact: &str, hash: &str) -> bool {
        let mut known = self.known.lock().expect("avatar lock");
        if known.published.contains_key(contact) {
            return false;
        }
        known
            .vcard_hashes
            .insert(contact.to_owned(), hash.to_owned())
            .as_deref()
            != Some(hash)
    }

    /// A contact's presence announced picture `hash` (`""`: none).
    pub fn announced(&self, contact: &str, hash: &str) -> Announced {
        let mut known = self.known.lock().expect("avatar lock");
        if known.published.contains_key(contact)
            || known.vcard_hashes.get(contact).map(String::as_str) == Some(hash)
        {
            return Announced::Known;
        }
        if hash.is_empty() {
            known.vcard_hashes.insert(contact.to_owned(), String::new());
            return Announced::Removed;
        }
        Announced::New
    }

    /// The contact's published avatar is now `hash` (`""`: removed); false when it already
    /// was.
    pub fn set_published(&self, contact: &str, hash: &str) -> bool {
        self.known
            .lock()
            .expect("avatar lock")
            .published
            .insert(contact.to_owned(), hash.to_owned())
            .as_deref()
            != Some(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_avatars_win_over_vcards() {
        let a = Avatars::default();
        assert!(a.first_vcard_ask("bob@x"));
        assert!(!a.first_vcard_ask("bob@x"));
        assert_eq!(a.announced("bob@x", "h1"), Announced::New);
        assert!(a.vcard_picture("bob@x", "h1"));
        // The same picture again: nothing new.
        assert_eq!(a.announced("bob@x", "h1"), Announced::Known);
        assert!(!a.vcard_picture("bob@x", "h1"));
        assert_eq!(a.announced("bob@x", ""), Announced::Removed);
        assert_eq!(a.announced("bob@x", ""), Announced::Known);
        // Once the contact publishes an avatar, its vCard pictures are ignored.
        assert!(a.set_published("bob@x", "p1"));
        assert!(!a.set_published("bob@x", "p1"));
        assert_eq!(a.announced("bob@x", "h2"), Announced::Known);
        assert!(!a.vcard_picture("bob@x", "h2"));
        // Removing a published avatar is a change once.
        assert!(a.set_published("bob@x", ""));
        assert!(!a.set_published("bob@x", ""));
        assert_eq!(a.announced("carol@x", "h2"), Announced::New);
    }

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
