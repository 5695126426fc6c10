//! SIP addressing, both ways. See `docs/sip.md`.
//!
//! - A SIP contact is identified by its address of record without scheme or parameters,
//!   `user@host` (the host in lowercase, the user part as sent: SIP compares user parts
//!   case-sensitively). The core turns it into a ghost such as `@_sip_bob=40corp.example:hs`.
//! - A Matrix user is reachable from SIP at an address on the gateway domain. Users of the
//!   bridge's own homeserver get `sip:alice@matrix.example.org`; users of other homeservers
//!   `sip:alice!other.org@matrix.example.org` (`!` cannot occur in a Matrix localpart).
//! - A Matrix room with SIP members (SIP has no group chats of its own) has the address
//!   `sip:~r.<id>@matrix.example.org`, where `<id>` is derived from the room ID; `~` cannot
//!   occur in a Matrix localpart either, so the forms never collide.

/// Why a SIP address is refused. The messages say what a valid one looks like.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not a SIP address at all.
    #[error("a SIP address looks like sip:bob@example.org")]
    Malformed,
    /// A host without a user.
    #[error("a SIP address looks like sip:bob@example.org (the user part is missing)")]
    NoUser,
    /// An address on the gateway domain: a Matrix user, not a SIP contact.
    #[error(
        "that address belongs to a Matrix user on this bridge; invite the Matrix user directly"
    )]
    Gateway,
}

/// The prefix of a room's address (a fan-out chat).
pub const ROOM_PREFIX: &str = "~r.";

/// What a user part on the gateway domain stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Local {
    /// A Matrix user, by full user ID.
    User(String),
    /// A Matrix room with SIP members, by its chat ID (`~r.<id>`).
    Room(String),
}

/// Addressing between Matrix IDs and SIP URIs for one gateway domain.
#[derive(Clone, Debug)]
pub struct Addressing {
    domain: String,
    homeserver: String,
}

impl Addressing {
    /// Addressing for gateway domain `domain` and homeserver `homeserver`.
    pub fn new(domain: &str, homeserver: &str) -> Self {
        Self {
            domain: domain.to_ascii_lowercase(),
            homeserver: homeserver.to_ascii_lowercase(),
        }
    }

    /// The gateway domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Parses a SIP address a user typed or a header carried (`sip:bob@corp.example`,
    /// `<sip:bob@corp.example;transport=tcp>`, `bob@corp.example`) into `user@host`.
    /// Addresses on the gateway domain are refused: they are Matrix users.
    pub fn contact(&self, raw: &str) -> Result<String, AddressError> {
        let aor = parse_aor(raw)?;
        if aor.rsplit_once('@').is_some_and(|(_, h)| h == self.domain) {
            return Err(AddressError::Gateway);
        }
        Ok(aor)
    }

    /// The user part of a Matrix user's gateway address; `None` for user IDs that cannot be
    /// expressed (uppercase or characters outside the Matrix localpart grammar).
    pub fn puppet_user(&self, user_id: &str) -> Option<String> {
        let (local, server) = user_id.strip_prefix('@')?.split_once(':')?;
        if local.is_empty() || !local.bytes().all(is_localpart_byte) {
            return None;
        }
        let server = server.to_ascii_lowercase();
        if server == self.homeserver {
            Some(local.to_owned())
        } else if !server.is_empty() && server.bytes().all(is_server_byte) {
            Some(format!("{local}!{server}"))
        } else {
            None
        }
    }

    /// The gateway address of a Matrix user, as a URI.
    pub fn puppet_uri(&self, user_id: &str) -> Option<String> {
        Some(format!(
            "sip:{}@{}",
            self.puppet_user(user_id)?,
            self.domain
        ))
    }

    /// The address of a room's fan-out chat.
    pub fn room_uri(&self, chat: &str) -> String {
        format!("sip:{chat}@{}", self.domain)
    }

    /// What a user part on the gateway domain stands for; `None` when it is neither a valid
    /// Matrix user nor a room.
    pub fn local(&self, user_part: &str) -> Option<Local> {
        let user = percent_decode(user_part)?;
        if let Some(id) = user.strip_prefix(ROOM_PREFIX) {
            return (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
                .then(|| Local::Room(user.clone()));
        }
        let (local, server) = match user.split_once('!') {
            Some((l, s)) => (l, s.to_ascii_lowercase()),
            None => (user.as_str(), self.homeserver.clone()),
        };
        if local.is_empty()
            || !local.bytes().all(is_localpart_byte)
            || server.is_empty()
            || !server.bytes().all(is_server_byte)
        {
            return None;
        }
        Some(Local::User(format!("@{local}:{server}")))
    }
}

/// The chat ID of a Matrix room's fan-out chat: `~r.` and 26 base-32 characters (130 bits)
/// of the SHA-256 of the room ID: stable, and no room can be made to share another's.
pub fn room_chat(room_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, room_id.as_bytes());
    let bytes = digest.as_ref();
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::from(ROOM_PREFIX);
    for i in 0..26 {
        let bit = i * 5;
        let word = u16::from(bytes[bit / 8]) << 8 | u16::from(bytes[bit / 8 + 1]);
        let v = (word >> (11 - bit % 8)) & 31;
        out.push(char::from(ALPHABET[v as usize]));
    }
    out
}

/// Lowercase Matrix localpart grammar (`a-z 0-9 . _ = - / +`).
fn is_localpart_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+')
}

fn is_server_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
}

/// Decodes `%XX` escapes of a SIP user part; `None` for bad escapes or non-UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The address of record (`user@host`) in a SIP URI or name-addr.
pub fn parse_aor(raw: &str) -> Result<String, AddressError> {
    let raw = raw.trim();
    // A name-addr: the URI is between angle brackets.
    let uri = match (raw.find('<'), raw.rfind('>')) {
        (Some(a), Some(b)) if a < b => &raw[a + 1..b],
        _ => raw,
    };
    let lower = uri.to_ascii_lowercase();
    let rest = if lower.starts_with("sip:") {
        &uri[4..]
    } else if lower.starts_with("sips:") {
        &uri[5..]
    } else if lower.contains(':') && !lower.contains('@') {
        return Err(AddressError::Malformed);
    } else {
        uri
    };
    // Parameters and headers end the address; they follow the host, as a user part may hold
    // `;` and `?` (RFC 3261 §25.1), and it never holds `@`.
    let Some((user, hostport)) = rest.split_once('@') else {
        return Err(AddressError::NoUser);
    };
    let hostport = hostport.split([';', '?', '>']).next().unwrap_or("");
    let user = percent_decode(user).ok_or(AddressError::Malformed)?;
    let host = hostport.to_ascii_lowercase();
    // The default port names the same address.
    let host = host.strip_suffix(":5060").unwrap_or(&host).to_owned();
    let user_ok = !user.is_empty()
        && user.len() <= 128
        && user
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !matches!(c, '<' | '>' | '"' | '@'));
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !user_ok || !host_ok {
        return Err(AddressError::Malformed);
    }
    Ok(format!("{user}@{host}"))
}

/// Escapes a user part for use in a SIP URI (RFC 3261 `user` grammar).
pub fn escape_user(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A contact's `user@host` as a SIP URI.
pub fn contact_uri(aor: &str) -> String {
    match aor.rsplit_once('@') {
        Some((user, host)) => format!("sip:{}@{host}", escape_user(user)),
        None => format!("sip:{aor}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a() -> Addressing {
        Addressing::new("matrix.corp.example", "example.org")
    }

    #[test]
    fn contacts_are_normalised() {
        let a = a();
        for raw in [
            "sip:bob@Corp.Example",
            "<sip:bob@corp.example;transport=tcp>",
            "\"Bob\" <sip:bob@corp.example>;tag=abc",
            "bob@corp.example",
            "sips:bob@corp.example:5060",
        ] {
            assert_eq!(a.contact(raw).unwrap(), "bob@corp.example", "{raw}");
        }
        assert_eq!(a.contact("sip:b%2Bo@x.org").unwrap(), "b+o@x.org");
        assert!(a.contact("sip:b%20o@x.org").is_err());
        assert!(a.contact("tel:+123").is_err());
        assert!(a.contact("sip:corp.example").is_err());
        assert!(a.contact("sip:alice@matrix.corp.example").is_err());
        assert!(a.contact("sip:bo<b@x.org").is_err());
    }

    #[test]
    fn user_parts_with_separators_round_trip() {
        // Found by the fuzz target `sip_addressing`: `;` and `?` may stand unescaped in a user
        // part, and were taken for the start of the parameters.
        for aor in ["a;b@x.org", "?@x.org", "t;phone-context=+1@x.org"] {
            assert_eq!(parse_aor(&contact_uri(aor)).as_deref(), Ok(aor));
        }
        assert_eq!(
            parse_aor("<sip:a;b@X.org;transport=tcp?subject=x@y>").as_deref(),
            Ok("a;b@x.org")
        );
    }

    #[test]
    fn matrix_users_and_rooms() {
        let a = a();
        assert_eq!(a.puppet_user("@alice:example.org").unwrap(), "alice");
        assert_eq!(
            a.puppet_uri("@alice:other.net").unwrap(),
            "sip:alice!other.net@matrix.corp.example"
        );
        assert_eq!(a.puppet_user("@Alice:example.org"), None);
        assert_eq!(
            a.local("alice"),
            Some(Local::User("@alice:example.org".into()))
        );
        assert_eq!(
            a.local("alice!Other.net"),
            Some(Local::User("@alice:other.net".into()))
        );
        let chat = room_chat("!abc:example.org");
        assert_eq!(chat.len(), 29);
        assert_eq!(chat, room_chat("!abc:example.org"));
        assert_ne!(chat, room_chat("!abd:example.org"));
        assert_eq!(a.local(&chat), Some(Local::Room(chat.clone())));
        assert_eq!(a.local("~r."), None);
        assert_eq!(a.local("Bob"), None);
        assert_eq!(a.local("a%zz"), None);
    }

    proptest! {
        #[test]
        fn matrix_users_round_trip(local in "[a-z0-9._=/+-]{1,20}", server in "(example\\.org|[a-z]{1,8}\\.[a-z]{2,4})") {
            let a = a();
            let user = format!("@{local}:{server}");
            let part = a.puppet_user(&user).unwrap();
            prop_assert_eq!(a.local(&part), Some(Local::User(user.clone())));
            // Through an escaped URI and back.
            let uri = format!("sip:{}@matrix.corp.example", escape_user(&part));
            let back = parse_aor(&uri).unwrap();
            let user_part = back.rsplit_once('@').unwrap().0;
            prop_assert_eq!(a.local(user_part), Some(Local::User(user)));
        }

        #[test]
        fn contacts_round_trip(user in "[a-zA-Z0-9._+%!*()-]{1,20}", host in "[a-z]{1,10}\\.[a-z]{2,4}") {
            let a = a();
            prop_assume!(!user.contains('%'));
            let aor = format!("{user}@{host}");
            let uri = contact_uri(&aor);
            prop_assert_eq!(a.contact(&uri).unwrap(), aor.clone());
            prop_assert_eq!(a.contact(&format!("<{uri}>;tag=x")).unwrap(), aor);
        }
    }
}
