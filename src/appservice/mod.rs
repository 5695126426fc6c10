//! Homeserver → bridge: the Application Service API server.
//!
//! Every route under `/_matrix/app/` (and the legacy unprefixed ones) requires the hs_token.
//! The transaction handler commits the transaction to the store and answers; it never waits
//! on a remote network. Queries may talk to the homeserver (registering a ghost, creating a
//! room) because the homeserver waits for their answer anyway.

mod auth;
mod provisioning;
mod query;
mod thirdparty;
mod transactions;

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
    let max_body = state.bridge.config.appservice.max_body_bytes;
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
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/_matrix/mau/live", get(health))
        .route("/_matrix/mau/ready", get(health))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn ping() -> Response {
    axum::Json(json!({})).into_response()
}

async fn health() -> Response {
    axum::Json(json!({"ok": true})).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.bridge.refresh_gauges();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.bridge.metrics.render(),
    )
        .into_response()
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
