//! Bridge → homeserver: the client-server API client. The only module that builds
//! homeserver requests.
//!
//! | item | role |
//! |---|---|
//! | [`HomeserverClient`] | every call, as the bot or as a ghost, with retries and limits |
//! | [`escape`] | reversible escaping of remote identifiers into localparts |

pub mod client;
mod error;
pub mod escape;
mod retry;

pub use client::{HomeserverClient, HsConfig, MatrixError, Membership, RoomCreation};
