//! `GET /_matrix/app/v1/users/{userId}` and `GET /_matrix/app/v1/rooms/{roomAlias}`.
//!
//! Spec: <https://spec.matrix.org/latest/application-service-api/#querying>. A user query
//! creates the ghost of any valid remote ID; an alias query creates the portal of a group chat.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::{info, warn};

use super::{AppState, matrix_error};

fn not_found(what: &str) -> Response {
    matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", what)
}

/// User query: registers the ghost when the ID decodes to a valid remote user.
pub(super) async fn user(
    State(state): State<Arc<AppState>>,
    Path(user_id): Path<String>,
) -> Response {
    let bridge = &state.bridge;
    let Some((network, remote)) = bridge.parse_ghost(&user_id) else {
        return not_found("Not a user of this bridge");
    };
    let Ok(connector) = bridge.network(&network) else {
        return not_found("Network not enabled");
    };
    let remote_id = match connector.parse_user_id(&remote) {
        Ok(r) => r,
        Err(e) => {
            info!(user_id, error = %crate::error::chain(&e), "user query for an invalid remote ID");
            return not_found("Not a valid remote user");
        }
    };
    match bridge.ensure_ghost(&network, &remote_id).await {
        Ok(_) => (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response(),
        Err(e) => {
            warn!(user_id, error = %crate::error::chain(&e), "could not create ghost");
            matrix_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "Could not create the user",
            )
        }
    }
}

/// Alias query: creates the portal room of a group chat with that alias.
pub(super) async fn room_alias(
    State(state): State<Arc<AppState>>,
    Path(alias): Path<String>,
) -> Response {
    let bridge = &state.bridge;
    let Some(local) = alias
        .strip_prefix('#')
        .and_then(|a| a.split_once(':'))
        .filter(|(_, server)| *server == bridge.server_name())
        .map(|(l, _)| l)
    else {
        return not_found("Not an alias of this bridge");
    };
    let Some((network, raw_chat)) = bridge.parse_alias_localpart(local) else {
        return not_found("Not an alias of this bridge");
    };
    let Ok(connector) = bridge.network(&network) else {
        return not_found("Network not enabled");
    };
    let chat = match connector.parse_group_chat_id(&raw_chat) {
        Ok(Some(c)) => c,
        Ok(None) | Err(_) => return not_found("No such group chat"),
    };
    let key = crate::store::PortalKey::new(network.as_str(), chat.as_str(), None);
    if !matches!(bridge.portal(&key), Ok(Some(_))) {
        match connector.group_chat_exists(&chat).await {
            Ok(true) => {}
            Ok(false) => return not_found("No such group chat"),
            Err(e) => {
                info!(alias, error = %crate::error::chain(&e), "could not check that the group chat exists");
                return not_found("The group chat could not be reached");
            }
        }
    }
    // The room is made on the portal's queue, ordered with the chat's remote events.
    let opened = bridge
        .open_group_chat(&key, Some(chat.as_str().to_owned()), local.to_owned())
        .await;
    let result = match opened {
        Ok((_, true)) => Ok(()),
        // Bridged already (to a room without this alias): the alias is added to that room.
        Ok((existing, false)) => bridge.add_portal_alias(&alias, &existing.room_id).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response(),
        Err(e) => {
            warn!(alias, error = %crate::error::chain(&e), "could not create portal for alias");
            matrix_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "Could not create the room",
            )
        }
    }
}
