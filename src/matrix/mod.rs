//! Bridge → homeserver: the client-server API client. The only module that builds
//! homeserver requests.
//!
//! | item | role |
//! |---|---|
//! | [`HomeserverClient`] | every call, as the bot or as a ghost, with retries and limits |
//! | [`escape`] | reversible escaping of remote identifiers into localparts |
//! | [`power`] | power levels: who may redact in a room |

pub mod client;
mod error;
pub mod escape;
pub mod power;
mod retry;

pub use client::{HomeserverClient, HsConfig, MatrixError, Membership, RoomCreation};
