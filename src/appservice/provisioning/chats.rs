//! The provisioning API's chat calls: the user's contacts, and a direct chat with an
//! identifier found or started.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::extract::{P, Q};
use super::{AppState, Who, bridge_error, error, network};
use crate::bridge::BridgeError;
use crate::network::NetworkError;

pub(super) async fn contacts(State(state): State<Arc<AppState>>, Q(who): Q<Who>) -> Response {
    let network = match network(&state.bridge, &who) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let Some(client) = state.bridge.user_client(&who.user_id, &network) else {
        return error(
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "no identity on this network",
        );
    };
    let sender = state.bridge.matrix_sender(&who.user_id).await;
    match client.contacts(&sender).await {
        Ok(list) => {
            let b = &state.bridge;
            let out: Vec<Value> = list
                .into_iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "mxid": b.ghost_user_id(&network, c.id.as_str()),
                        "sees_presence": c.sees_presence,
                        "watched": c.watched,
                        "pending": c.pending,
                    })
                })
                .collect();
            Json(json!({"contacts": out})).into_response()
        }
        Err(NetworkError::Unsupported(_)) => Json(json!({"contacts": []})).into_response(),
        Err(e) => bridge_error(BridgeError::Network { network, source: e }),
    }
}

/// Resolves an identifier; with `create`, also opens the direct chat.
pub(super) async fn resolve_or_create(
    state: &AppState,
    who: &Who,
    identifier: &str,
    create: bool,
) -> Response {
    let network = match network(&state.bridge, who) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let b = &state.bridge;
    let connector = b.network(&network).expect("checked");
    let id = match connector.parse_user_id(identifier) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::NOT_FOUND, "M_NOT_FOUND", e),
    };
    let room = if create {
        // Made on the portal's queue, so a message from the contact at the same moment
        // finds this room rather than making its own.
        match b.open_direct_chat(&network, &id, &who.user_id).await {
            Ok((p, _)) => Some(p.room_id),
            Err(e) => return bridge_error(e),
        }
    } else {
        let key = crate::store::PortalKey::new(network.as_str(), id.as_str(), Some(&who.user_id));
        b.portal(&key).ok().flatten().map(|p| p.room_id)
    };
    Json(json!({
        "id": id,
        "mxid": b.ghost_user_id(&network, id.as_str()),
        "dm_room_mxid": room,
    }))
    .into_response()
}

pub(super) async fn resolve(
    State(state): State<Arc<AppState>>,
    P(identifier): P<String>,
    Q(who): Q<Who>,
) -> Response {
    resolve_or_create(&state, &who, &identifier, false).await
}

pub(super) async fn create_dm(
    State(state): State<Arc<AppState>>,
    P(identifier): P<String>,
    Q(who): Q<Who>,
) -> Response {
    resolve_or_create(&state, &who, &identifier, true).await
}
