//! isthmus: a Matrix application-service bridge to other IM networks.
//!
//! | module | role |
//! |---|---|
//! | [`app`] | start-up and shutdown: command line, config, tracing, wiring |
//! | [`backoff`] | delays between retries, for every retry loop |
//! | [`tasks`] | background tasks, tracked: a shutdown cancels, drains and joins them |
//! | [`config`] | typed configuration and its validation |
//! | [`appservice`] | homeserver → bridge: the Application Service API server |
//! | [`matrix`] | bridge → homeserver: the client-server API client |
//! | [`store`] | the embedded sled store |
//! | [`error`] | the failure model's verdict on an error, reasons with causes, cause chains in logs |
//! | [`bridge`] | the core: portals, ghosts, users, logins, relay, ordered dispatch |
//! | [`commands`] | bot commands |
//! | [`network`] | the connector boundary |
//! | [`loopback`] | an in-process network for tests and demonstrations |
//! | [`metrics`] | Prometheus metrics |
//! | [`xmpp`] | the XMPP network, as a gateway component |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The allocator: jemalloc, whose background thread hands freed memory back to the system
/// within seconds of a burst (a transaction of many megabytes, a large media file), where
/// glibc's allocator keeps most of it in its per-thread arenas. See [`alloc`] and the
/// memory figures in `docs/performance.md`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod alloc;
pub mod app;
pub mod appservice;
pub mod backoff;
pub mod bridge;
pub mod commands;
pub mod config;
pub mod connectors;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod html;
pub mod loopback;
pub mod matrix;
pub mod media;
pub mod metrics;
pub mod network;
pub mod sip;
pub mod store;
pub mod tasks;
pub mod text;
pub mod xmpp;
