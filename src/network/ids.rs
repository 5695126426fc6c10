//! Opaque identifiers of things on a remote network.
//!
//! The core stores, compares and prints these but never looks inside: only the connector that
//! issued an ID knows its syntax.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a connector-issued identifier.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The identifier as the connector wrote it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

opaque_id!(
    /// The short name of a network (`loopback`, `xmpp`, `sip`): lowercase ASCII letters and
    /// digits, used in ghost user IDs, metrics and commands.
    NetworkId
);
opaque_id!(
    /// A user (contact) on a remote network.
    RemoteUserId
);
opaque_id!(
    /// A conversation on a remote network: for a direct chat, usually the other party's address.
    RemoteChatId
);
opaque_id!(
    /// A message on a remote network, as the network identifies it for edits and retractions.
    RemoteMessageId
);
opaque_id!(
    /// One login of a Matrix user on a remote network (one account).
    LoginId
);

impl NetworkId {
    /// Whether `s` is usable as a network ID: 1 to 16 lowercase ASCII letters or digits.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 16
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    }
}
