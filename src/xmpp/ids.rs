//! XMPP addressing, both ways. See `docs/xmpp.md`.
//!
//! - An XMPP contact is identified by its bare JID, normalised to lowercase (node and domain;
//!   XMPP compares both case-insensitively). The core turns it into a ghost such as
//!   `@_xmpp_bob=40example.org:hs`.
//! - A Matrix user is reachable from XMPP at an address on the component domain. Users of the
//!   bridge's own homeserver get the shortest form, `alice@matrix.example.org`; users of other
//!   homeservers the classic gateway form `alice%other.org@matrix.example.org`. Characters a JID
//!   node may not hold are escaped as XEP-0106 says (`\2f` for `/`, `\3a` for `:`, ...).

use std::str::FromStr;

use xmpp_parsers::jid::{BareJid, Jid};

/// The characters XEP-0106 escapes, with their escape sequences.
const ESCAPES: [(char, &str); 10] = [
    ('\\', "\\5c"),
    (' ', "\\20"),
    ('"', "\\22"),
    ('&', "\\26"),
    ('\'', "\\27"),
    ('/', "\\2f"),
    (':', "\\3a"),
    ('<', "\\3c"),
    ('>', "\\3e"),
    ('@', "\\40"),
];

/// XEP-0106 escaping of a JID node.
pub fn escape_node(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match ESCAPES.iter().find(|(e, _)| *e == c) {
            Some((_, seq)) => out.push_str(seq),
            None => out.push(c),
        }
    }
    out
}

/// Inverse of [`escape_node`]; sequences that are not escapes stay as they are.
pub fn unescape_node(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        match ESCAPES.iter().find(|(_, seq)| tail.starts_with(seq)) {
            Some((c, seq)) => {
                out.push(*c);
                rest = &tail[seq.len()..];
            }
            None => {
                out.push('\\');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Why an XMPP address is refused. The messages say what a valid one looks like.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// Empty, or with spaces or control characters.
    #[error("an XMPP address looks like bob@example.org")]
    Malformed,
    /// Not a JID.
    #[error("not a valid XMPP address: {0}")]
    Invalid(#[source] xmpp_parsers::jid::Error),
    /// A server without a user.
    #[error("an XMPP address needs a user part, like bob@example.org")]
    NoUser,
    /// An address on the component's domain: a Matrix user, not an XMPP contact.
    #[error(
        "that address belongs to a Matrix user on this bridge; invite the Matrix user directly"
    )]
    Gateway,
}

/// Maps between XMPP addresses and Matrix users.
#[derive(Clone, Debug)]
pub struct Addressing {
    component: String,
    homeserver: String,
}

impl Addressing {
    /// `component` is the component's domain, `homeserver` the homeserver's server name.
    pub fn new(component: &str, homeserver: &str) -> Self {
        Self {
            component: component.to_lowercase(),
            homeserver: homeserver.to_owned(),
        }
    }

    /// The component's domain.
    pub fn component(&self) -> &str {
        &self.component
    }

    /// Parses and normalises what someone typed (or a ghost decodes to) into the bare JID of
    /// an XMPP contact: lowercase, no resource, not on the component domain.
    pub fn contact(&self, raw: &str) -> Result<BareJid, AddressError> {
        let raw = raw.trim().trim_start_matches("xmpp:");
        if raw.is_empty() || raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(AddressError::Malformed);
        }
        let jid = Jid::from_str(&raw.to_lowercase()).map_err(AddressError::Invalid)?;
        let bare = jid.to_bare();
        if bare.node().is_none() {
            return Err(AddressError::NoUser);
        }
        if bare.domain().as_str() == self.component {
            return Err(AddressError::Gateway);
        }
        Ok(bare)
    }

    /// The gateway address of a Matrix user; `None` for user IDs that cannot be expressed
    /// (uppercase or `%` in the localpart, from historical user IDs).
    pub fn puppet(&self, user_id: &str) -> Option<BareJid> {
        let (local, server) = user_id.strip_prefix('@')?.split_once(':')?;
        if local.is_empty() || local.contains('%') || local != local.to_lowercase() {
            return None;
        }
        let node = if server == self.homeserver {
            escape_node(local)
        } else {
            format!(
                "{}%{}",
                escape_node(local),
                escape_node(&server.to_lowercase())
            )
        };
        let jid = BareJid::from_str(&format!("{node}@{}", self.component)).ok()?;
        // The JID preparation folds some characters (case, width, ignorables): an address
        // that would read back as another user is not given out.
        (self.matrix_user(&jid).as_deref() == Some(user_id)).then_some(jid)
    }

    /// The address of a Matrix room hosted as a group chat: its alias with the `#` kept, so
    /// `#lobby:example.org` is `#lobby@matrix.example.org` (`#room%other.org@...` for aliases
    /// of other servers).
    pub fn hosted_room(&self, alias: &str) -> Option<BareJid> {
        let (local, server) = alias.strip_prefix('#')?.split_once(':')?;
        if local.is_empty() || local.contains('%') {
            return None;
        }
        let node = if server == self.homeserver {
            format!("#{}", escape_node(local))
        } else {
            format!(
                "#{}%{}",
                escape_node(local),
                escape_node(&server.to_lowercase())
            )
        };
        BareJid::from_str(&format!("{node}@{}", self.component)).ok()
    }

    /// The room alias a hosted group chat address stands for.
    pub fn hosted_alias(&self, jid: &BareJid) -> Option<String> {
        if jid.domain().as_str() != self.component {
            return None;
        }
        let node = jid.node()?.as_str().strip_prefix('#')?;
        let (local, server) = match node.rsplit_once('%') {
            Some((l, s)) => (unescape_node(l), unescape_node(s)),
            None => (unescape_node(node), self.homeserver.clone()),
        };
        (!local.is_empty()).then(|| format!("#{local}:{server}"))
    }

    /// The Matrix user a gateway address stands for; `None` when the address is not on the
    /// component domain, has no node, or is a hosted room.
    pub fn matrix_user(&self, jid: &BareJid) -> Option<String> {
        if jid.domain().as_str() != self.component {
            return None;
        }
        let node = jid.node()?.as_str();
        if node.starts_with('#') {
            return None;
        }
        let (local, server) = match node.rsplit_once('%') {
            Some((l, s)) => (unescape_node(l), unescape_node(s)),
            None => (unescape_node(node), self.homeserver.clone()),
        };
        if local.is_empty() || server.is_empty() {
            return None;
        }
        let user_id = format!("@{local}:{server}");
        ruma::UserId::parse(&user_id).ok().map(|u| u.to_string())
    }
}

/// An XMPP message ID derived from a Matrix event ID (FNV-1a, 64 bits): the same for every
/// copy of a message (a retry, a replay, the history a joining occupant gets).
pub(super) fn stable_id(event_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in event_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("isthmus-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a() -> Addressing {
        Addressing::new("matrix.example.org", "example.org")
    }

    #[test]
    fn contacts_are_normalised() {
        assert_eq!(
            a().contact("Bob@Example.ORG/phone").unwrap().to_string(),
            "bob@example.org"
        );
        assert_eq!(
            a().contact("xmpp:bob@example.org").unwrap().to_string(),
            "bob@example.org"
        );
        assert!(
            a().contact("example.org").is_err(),
            "a domain is not a contact"
        );
        assert!(
            a().contact("alice@matrix.example.org").is_err(),
            "puppets are never ghosted"
        );
        assert!(a().contact("bob@exa mple.org").is_err());
        assert!(
            a().contact("bob@example.org\n").is_ok(),
            "surrounding whitespace is trimmed"
        );
        assert!(a().contact("bo\u{0}b@example.org").is_err());
    }

    #[test]
    fn own_users_get_the_short_form() {
        let a = a();
        assert_eq!(
            a.puppet("@alice:example.org").unwrap().to_string(),
            "alice@matrix.example.org"
        );
        assert_eq!(
            a.puppet("@bob:other.net").unwrap().to_string(),
            "bob%other.net@matrix.example.org"
        );
        assert_eq!(
            a.puppet("@we/ird:example.org").unwrap().to_string(),
            "we\\2fird@matrix.example.org"
        );
        assert_eq!(a.puppet("@Upper:example.org"), None);
        // Found by the fuzz target `xmpp_addressing_round_trips`: addresses that JID
        // preparation folds, or that name a hosted room, would read back as someone else.
        for id in [
            "@\u{feff}:other.org",
            "@#lobby:example.org",
            "@bob:Other.net",
        ] {
            assert_eq!(a.puppet(id), None, "{id}");
        }
        assert_eq!(
            a.matrix_user(&BareJid::from_str("alice@matrix.example.org").unwrap())
                .as_deref(),
            Some("@alice:example.org")
        );
        assert_eq!(
            a.matrix_user(&BareJid::from_str("alice@elsewhere.org").unwrap()),
            None
        );
        assert_eq!(
            a.matrix_user(&BareJid::from_str("matrix.example.org").unwrap()),
            None
        );
    }

    #[test]
    fn hosted_rooms_keep_the_alias_sigil() {
        let a = a();
        let jid = a.hosted_room("#lobby:example.org").unwrap();
        assert_eq!(jid.to_string(), "#lobby@matrix.example.org");
        assert_eq!(a.hosted_alias(&jid).as_deref(), Some("#lobby:example.org"));
        assert_eq!(a.matrix_user(&jid), None, "a room is not a user");
        let other = a.hosted_room("#x:other.net").unwrap();
        assert_eq!(a.hosted_alias(&other).as_deref(), Some("#x:other.net"));
        assert_eq!(
            a.hosted_alias(&BareJid::from_str("alice@matrix.example.org").unwrap()),
            None
        );
    }

    proptest! {
        #[test]
        fn puppet_addresses_round_trip(
            local in "[a-z0-9._=/-]{1,30}",
            server in prop_oneof![Just("example.org".to_owned()), "[a-z][a-z0-9]{0,10}\\.[a-z]{2,5}(:[1-9][0-9]{0,3})?"],
        ) {
            let a = a();
            let user = format!("@{local}:{server}");
            let jid = a.puppet(&user).expect("every lowercase localpart has an address");
            prop_assert_eq!(jid.domain().as_str(), "matrix.example.org");
            prop_assert_eq!(a.matrix_user(&jid), Some(user));
        }

        #[test]
        fn node_escaping_round_trips(s in "\\PC{0,40}") {
            prop_assert_eq!(unescape_node(&escape_node(&s)), s);
        }

        #[test]
        fn contact_normalisation_is_idempotent(node in "[a-zA-Z0-9._-]{1,20}", domain in "[a-zA-Z][a-zA-Z0-9]{0,10}\\.[a-zA-Z]{2,5}") {
            let a = a();
            let once = a.contact(&format!("{node}@{domain}")).unwrap();
            let twice = a.contact(&once.to_string()).unwrap();
            prop_assert_eq!(&once, &twice);
            prop_assert_eq!(once.to_string(), once.to_string().to_lowercase());
        }
    }
}
