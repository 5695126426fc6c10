//! The connector kit: the pieces every network with gateway addresses and users' own accounts
//! needs, written once, so that a connector is mostly its protocol.
//!
//! | module | what it gives a connector |
//! |---|---|
//! | [`state`] | the state of a link or a login, reported to the core only when it changes; what the connector got at start, with one error while it has not |
//! | [`registry`] | users' own accounts in use, by account: one login per account, a newer login stops the older, logout removes only its own |
//! | [`login`] | password logins: the form, the reading of what the user typed (required fields, trimming, `-` for a default, an error naming the missing field), the flow's checks, the stored data |
//! | [`address`] | the error for a Matrix user who has no address on the gateway domain |
//! | [`send`] | split-and-send (each part in order, stop at the first failure, say which part), and fan-out delivery bookkeeping (who got a room message, retrying only those missing it) |
//!
//! Nothing here names a network: what differs (the words a user sees, the protocol's sends)
//! is passed in.

pub mod address;
pub mod login;
pub mod registry;
pub mod send;
pub mod state;

#[cfg(test)]
pub(crate) mod testing;
