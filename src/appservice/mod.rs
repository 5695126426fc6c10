//! Homeserver → bridge: the Application Service API server.
//!
//! Every route under `/_matrix/app/` (and the legacy unprefixed ones) requires the hs_token.
//! The transaction handler commits the transaction to the store and answers; it never waits
//! on a remote network. Queries may talk to the homeserver (registering a ghost, creating a
//! room) because the homeserver waits for their answer anyway.

mod auth;
mod login_page;
mod provisioning;
mod query;
mod server;
mod thirdparty;
pub(crate) mod transactions;

pub use server::{ListenerLimits, serve};

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;

use crate::bridge::Bridge;

/// Shared state of the HTTP handlers.
pub struct AppState {
    /// The core.
    pub bridge: Arc<Bridge>,
    /// The token the homeserver must present.
    pub hs_token: String,
    /// Whether `?access_token=` is accepted.
    pub allow_query_token: bool,
    /// The provisioning API's shared secret; the API answers 404 without one.
    pub provisioning_secret: Option<String>,
}

/// A Matrix-style error response.
pub fn matrix_error(status: StatusCode, errcode: &str, error: &str) -> Response {
    (
        status,
        axum::Json(json!({"errcode": errcode, "error": error})),
    )
        .into_response()
}

/// The router with every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.bridge.config().appservice.max_body_bytes;
    let app = Router::new()
        .route("/transactions/{txn_id}", put(transactions::push))
        .route("/users/{user_id}", get(query::user))
        .route("/rooms/{room_alias}", get(query::room_alias))
        .route("/ping", post(ping))
        .route("/thirdparty/protocol/{protocol}", get(thirdparty::protocol))
        .route(
            "/thirdparty/user/{protocol}",
            get(thirdparty::user_by_fields),
        )
        .route(
            "/thirdparty/location/{protocol}",
            get(thirdparty::location_by_fields),
        )
        .route("/thirdparty/user", get(thirdparty::user_by_id))
        .route("/thirdparty/location", get(thirdparty::location_by_alias))
        .method_not_allowed_fallback(method_not_allowed);
    let legacy = Router::new()
        .route("/transactions/{txn_id}", put(transactions::push))
        .route("/users/{user_id}", get(query::user))
        .route("/rooms/{room_alias}", get(query::room_alias))
        .method_not_allowed_fallback(method_not_allowed);
    let protected = Router::new()
        .nest("/_matrix/app/v1", app)
        .merge(legacy)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_hs_token,
        ));
    Router::new()
        .nest(
            "/_matrix/provision/v3",
            provisioning::router(Arc::clone(&state)),
        )
        .route(
            "/_isthmus/media/{server}/{media_id}/{expires}/{signature}/{name}",
            get(media_link),
        )
        .route(
            "/_isthmus/login/{token}",
            get(login_page::show)
                .post(login_page::submit)
                .layer(DefaultBodyLimit::max(login_page::MAX_FORM_BYTES)),
        )
        .route("/metrics", get(metrics))
        .route("/health", get(ready))
        .route("/_matrix/mau/live", get(live))
        .route("/_matrix/mau/ready", get(ready))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn ping() -> Response {
    axum::Json(json!({})).into_response()
}

/// The process runs and answers.
async fn live() -> Response {
    axum::Json(json!({"ok": true})).into_response()
}

/// The bridge can take traffic: 503 while the store cannot write (the homeserver's
/// transactions and remote traffic are refused then, see `store/health.rs`).
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.bridge.store_failure() {
        None => axum::Json(json!({"ok": true})).into_response(),
        Some(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ok": false, "error": format!("the store cannot write: {error}")})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.bridge.refresh_gauges();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.bridge.metrics().render(),
    )
        .into_response()
}

/// A signed, expiring link to a Matrix file (see `crate::media`): the file, from the
/// homeserver's authenticated media, served so that a browser never runs it.
async fn media_link(
    State(state): State<Arc<AppState>>,
    axum::extract::Path((server, media_id, expires, signature, _name)): axum::extract::Path<(
        String,
        String,
        u64,
        String,
        String,
    )>,
) -> Response {
    let bridge = &state.bridge;
    let Some(links) = bridge.file_links() else {
        return not_found().await;
    };
    let now = crate::bridge::now_ms() / 1000;
    match links.check(&server, &media_id, expires, &signature, now) {
        Ok(()) => {}
        Err("expired") => {
            return matrix_error(StatusCode::GONE, "M_EXPIRED", "This link has expired");
        }
        Err(_) => {
            return matrix_error(StatusCode::FORBIDDEN, "M_FORBIDDEN", "Invalid link");
        }
    }
    match bridge.download_media(&server, &media_id).await {
        Ok((bytes, content_type)) => {
            bridge.metrics().event("to_remote", "file_served", "ok");
            let ct = content_type.unwrap_or_else(|| "application/octet-stream".into());
            (
                [
                    (axum::http::header::CONTENT_TYPE, ct),
                    (
                        axum::http::header::CONTENT_SECURITY_POLICY,
                        "sandbox; default-src 'none'".into(),
                    ),
                    (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
                    (
                        axum::http::header::CACHE_CONTROL,
                        "private, max-age=3600".into(),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => {
            tracing::info!(error = %crate::error::chain(&e), "a linked file could not be read from the homeserver");
            bridge.metrics().event("to_remote", "file_served", "failed");
            matrix_error(
                StatusCode::NOT_FOUND,
                "M_NOT_FOUND",
                "The file is not available",
            )
        }
    }
}

async fn not_found() -> Response {
    matrix_error(
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "Unrecognized request",
    )
}

async fn method_not_allowed() -> Response {
    matrix_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
        "Method not allowed for this endpoint",
    )
}
