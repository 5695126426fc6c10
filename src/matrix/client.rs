//! [`HomeserverClient`]: every client-server API call the bridge makes, as the bot or as a
//! ghost (appservice identity assertion).
//!
//! All requests go through one private send path that adds the appservice token, the
//! `?user_id=` assertion, bounded concurrency, retries with jittered backoff, debug logging and
//! the latency histogram. Requests are built with ruma's endpoint types and successful
//! responses parsed with ruma's `IncomingResponse`; error bodies become
//! [`MatrixError::Api`].
mod events;
mod media;
mod profiles;
mod rooms;
mod send;
mod state;
mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus::HistogramVec;
use ruma::api::SupportedVersions;
use ruma::api::client::{
    account::whoami, appservice::request_ping, discovery::get_supported_versions,
};
use ruma::{OwnedUserId, RoomVersionId, UserId};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use super::error::MatrixError;
use super::retry::RetryPolicy;
use crate::error::Reason;
use send::Token;
pub use types::{DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_RETRIES, HsConfig, Membership, RoomCreation};

/// How long one HTTP attempt may take before it counts as a connection error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The spec version assumed until [`HomeserverClient::versions`] has been called.
const DEFAULT_SPEC_VERSION: &str = "v1.11";

/// The bridge's client for the homeserver's client-server API.
///
/// Cheap to clone (one `Arc`); clones share the connection pool, the concurrency limit and the
/// negotiated spec versions. Every method that acts as someone takes `as_user`: `None` is the
/// bridge bot, `Some(user)` asserts that identity with `?user_id=` (the user must be in the
/// appservice's namespace, or be the bot).
///
/// Transient failures (connection errors, 429, 5xx) are retried inside each call, so a
/// returned [`MatrixError::Http`] or 5xx [`MatrixError::Api`] means the homeserver stayed
/// unavailable through all retries. Calls that create things (`create_room`, `register_ghost`,
/// `invite`, `join`) are not idempotent on the homeserver; a retry after a lost response can
/// surface as `M_ROOM_IN_USE`, `M_USER_IN_USE` (treated as success) or a 403 "already in the
/// room".
#[derive(Clone)]
pub struct HomeserverClient {
    inner: Arc<Inner>,
}

struct Inner {
    base_url: String,
    as_token: String,
    appservice_id: String,
    bot: OwnedUserId,
    server_name: String,
    http: reqwest::Client,
    limiter: Semaphore,
    policy: RetryPolicy,
    /// Cancelled at a shutdown: the waits between retries end (see [`RetryPolicy::run`]).
    stop: CancellationToken,
    versions: RwLock<SupportedVersions>,
    /// The homeserver's default room version, once read from `/capabilities`.
    default_room_version: RwLock<Option<RoomVersionId>>,
    metrics: Option<HistogramVec>,
}

impl fmt::Debug for HomeserverClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HomeserverClient")
            .field("url", &self.inner.base_url)
            .field("bot", &self.inner.bot)
            .finish_non_exhaustive()
    }
}

impl HomeserverClient {
    /// Builds the client. Does no I/O; call [`versions`](Self::versions) to negotiate spec
    /// versions (until then v1.11 is assumed).
    ///
    /// `metrics`, if given, must have exactly one label, `endpoint` (otherwise nothing is
    /// recorded); it records the latency of every HTTP attempt in seconds. Fails with [`MatrixError::InvalidId`] when the bot
    /// user ID cannot be formed and [`MatrixError::Http`] when the HTTP client cannot be built.
    pub fn new(cfg: HsConfig, metrics: Option<HistogramVec>) -> Result<Self, MatrixError> {
        Self::with_stop(cfg, metrics, CancellationToken::new())
    }

    /// [`new`](Self::new), with the signal of a shutdown: once `stop` is cancelled, a request
    /// waiting to be retried makes no further attempt and ends with its last error (a
    /// passing one, so the caller keeps its work for the next start). A request in flight
    /// is not cut.
    pub fn with_stop(
        cfg: HsConfig,
        metrics: Option<HistogramVec>,
        stop: CancellationToken,
    ) -> Result<Self, MatrixError> {
        let policy = RetryPolicy::new(cfg.max_retries);
        Self::with_policy(cfg, metrics, policy, stop)
    }

    /// [`with_stop`](Self::with_stop) with an explicit retry policy (tests shorten the
    /// backoff).
    fn with_policy(
        cfg: HsConfig,
        metrics: Option<HistogramVec>,
        policy: RetryPolicy,
        stop: CancellationToken,
    ) -> Result<Self, MatrixError> {
        let bot = UserId::parse(format!("@{}:{}", cfg.bot_localpart, cfg.server_name))
            .map_err(|e| MatrixError::InvalidId(Reason::because("bot user", e)))?;
        // reqwest is built without a default crypto provider; installing one twice fails
        // harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("isthmus/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| MatrixError::Http(Reason::from_error(e.without_url())))?;
        let default_versions =
            SupportedVersions::from_parts(&[DEFAULT_SPEC_VERSION.to_owned()], &BTreeMap::new());
        Ok(Self {
            inner: Arc::new(Inner {
                base_url: cfg.url.trim_end_matches('/').to_owned(),
                as_token: cfg.as_token,
                appservice_id: cfg.appservice_id,
                bot,
                server_name: cfg.server_name,
                http,
                limiter: Semaphore::new(cfg.max_concurrency.max(1)),
                policy,
                stop,
                versions: RwLock::new(default_versions),
                default_room_version: RwLock::new(None),
                metrics,
            }),
        })
    }

    /// The bridge bot's user ID (`@{bot_localpart}:{server_name}`).
    pub fn bot_user_id(&self) -> &UserId {
        &self.inner.bot
    }

    /// The homeserver's server name.
    pub fn server_name(&self) -> &str {
        &self.inner.server_name
    }

    // ----- discovery and appservice -----

    /// `GET /_matrix/client/versions`: the spec versions the homeserver supports. Later
    /// requests use the newest paths those versions allow.
    pub async fn versions(&self) -> Result<Vec<String>, MatrixError> {
        let resp = self
            .call(
                "versions",
                None,
                Token::Appservice,
                get_supported_versions::Request::new(),
            )
            .await?;
        let supported = SupportedVersions::from_parts(&resp.versions, &resp.unstable_features);
        if supported.versions.is_empty() {
            warn!(versions = ?resp.versions, "homeserver lists no spec version known to the bridge; assuming {DEFAULT_SPEC_VERSION}");
        } else {
            *self
                .inner
                .versions
                .write()
                .unwrap_or_else(PoisonError::into_inner) = supported;
        }
        Ok(resp.versions)
    }

    /// `GET /account/whoami`: who the homeserver thinks `as_user` is. A cheap way to check the
    /// token and the connection.
    pub async fn whoami(&self, as_user: Option<&UserId>) -> Result<OwnedUserId, MatrixError> {
        let resp = self
            .call(
                "whoami",
                as_user,
                Token::Appservice,
                whoami::v3::Request::new(),
            )
            .await?;
        Ok(resp.user_id)
    }

    /// `POST /_matrix/client/v1/appservice/{appservice_id}/ping`: asks the homeserver to ping
    /// the bridge's appservice endpoint with `txn_id`; returns the round trip the homeserver
    /// measured. A successful ping also makes the homeserver retry queued transactions now.
    pub async fn ping_appservice(&self, txn_id: &str) -> Result<Duration, MatrixError> {
        let mut req = request_ping::v1::Request::new(self.inner.appservice_id.clone());
        req.transaction_id = Some(txn_id.into());
        let resp = self.call("ping", None, Token::Appservice, req).await?;
        Ok(resp.duration)
    }
}

#[cfg(test)]
mod tests;
