//! Key encoding. Parts of a composite key are joined by a 0x1F (unit separator) byte, which
//! cannot occur in Matrix IDs and which connectors must not use in remote IDs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::network::{NetworkId, RemoteChatId};

pub(super) const SEP: u8 = 0x1f;

/// Joins key parts with the separator.
pub(super) fn key(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        out.extend_from_slice(p.as_bytes());
    }
    out
}

/// A prefix that matches every key starting with `parts` as whole parts.
pub(super) fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut k = key(parts);
    k.push(SEP);
    k
}

/// Identifies a portal: a remote chat on a network, and for direct chats the Matrix user it
/// belongs to (the same remote contact has one DM portal per Matrix user).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortalKey {
    /// The network.
    pub network: NetworkId,
    /// The remote chat.
    pub chat: RemoteChatId,
    /// For a direct chat: the Matrix user on this side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<String>,
}

impl PortalKey {
    /// Builds a key.
    pub fn new(network: &str, chat: &str, receiver: Option<&str>) -> Self {
        Self {
            network: NetworkId::new(network),
            chat: RemoteChatId::new(chat),
            receiver: receiver.map(str::to_owned),
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        key(&[
            self.network.as_str(),
            self.chat.as_str(),
            self.receiver.as_deref().unwrap_or(""),
        ])
    }

    /// Parses the stored form.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut parts = s.split(SEP as char);
        let network = parts.next()?;
        let chat = parts.next()?;
        let receiver = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self::new(
            network,
            chat,
            (!receiver.is_empty()).then_some(receiver),
        ))
    }
}

impl fmt::Display for PortalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.network, self.chat)?;
        if let Some(r) = &self.receiver {
            write!(f, " for {r}")?;
        }
        Ok(())
    }
}

/// Bytes for a dump: UTF-8 as a string, anything else as `hex:...`.
pub(super) fn dump_bytes(b: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(b) {
        Ok(s) if !s.starts_with("hex:") => serde_json::Value::String(s.to_owned()),
        _ => {
            let mut out = String::from("hex:");
            for byte in b {
                out.push_str(&format!("{byte:02x}"));
            }
            serde_json::Value::String(out)
        }
    }
}

/// Why a dumped key or value does not read back.
#[derive(Debug, thiserror::Error)]
pub(super) enum UndumpError {
    /// Neither text nor `hex:` bytes.
    #[error("a key or value is not a string")]
    NotString,
    /// `hex:` with an odd number of digits.
    #[error("odd number of hex digits")]
    OddHex,
    /// `hex:` with something else than hex digits.
    #[error(transparent)]
    Hex(#[from] std::num::ParseIntError),
}

/// Inverse of [`dump_bytes`].
pub(super) fn undump_bytes(v: &serde_json::Value) -> Result<Vec<u8>, UndumpError> {
    let s = v.as_str().ok_or(UndumpError::NotString)?;
    match s.strip_prefix("hex:") {
        None => Ok(s.as_bytes().to_vec()),
        Some(hex) => {
            if hex.len() % 2 != 0 {
                return Err(UndumpError::OddHex);
            }
            (0..hex.len())
                .step_by(2)
                .map(|i| Ok(u8::from_str_radix(&hex[i..i + 2], 16)?))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_key_round_trip() {
        for k in [
            PortalKey::new("xmpp", "bob@example.org", Some("@alice:hs")),
            PortalKey::new("sip", "room", None),
        ] {
            assert_eq!(PortalKey::decode(&k.encode()), Some(k));
        }
        assert_eq!(PortalKey::decode(b"only\x1ftwo"), None);
    }

    #[test]
    fn dump_round_trip() {
        for b in [&b"plain"[..], &[0, 1, 255][..], b"hex:looks-like-hex", b""] {
            assert_eq!(undump_bytes(&dump_bytes(b)).unwrap(), b);
        }
        assert!(undump_bytes(&serde_json::json!("hex:abc")).is_err());
    }
}
