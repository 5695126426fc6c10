//! `GET /_matrix/app/v1/thirdparty/...`: third-party lookups, answered from what the
//! connectors describe.
//!
//! Spec: <https://spec.matrix.org/latest/application-service-api/#third-party-networks>.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AppState, matrix_error};
use crate::bridge::Bridge;
use crate::network::Connector;

fn by_protocol<'a>(bridge: &'a Bridge, protocol: &str) -> Option<&'a Arc<dyn Connector>> {
    bridge
        .connectors()
        .map(|(_, c)| c)
        .find(|c| c.info().protocol == protocol)
}

fn unknown_protocol() -> Response {
    matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "Unknown protocol")
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// `GET /thirdparty/protocol/{protocol}`
pub(super) async fn protocol(
    State(state): State<Arc<AppState>>,
    Path(protocol): Path<String>,
) -> Response {
    let Some(c) = by_protocol(&state.bridge, &protocol) else {
        return unknown_protocol();
    };
    let info = c.info();
    let field_types: serde_json::Map<String, Value> = info
        .user_fields
        .iter()
        .chain(&info.location_fields)
        .map(|f| {
            (
                f.name.clone(),
                json!({"regexp": f.regexp, "placeholder": f.placeholder}),
            )
        })
        .collect();
    ok(json!({
        "user_fields": info.user_fields.iter().map(|f| &f.name).collect::<Vec<_>>(),
        "location_fields": info.location_fields.iter().map(|f| &f.name).collect::<Vec<_>>(),
        "icon": "",
        "field_types": field_types,
        "instances": [{
            "desc": info.display_name,
            "network_id": info.id.as_str(),
            "fields": {},
        }],
    }))
}

/// `GET /thirdparty/user/{protocol}?field=value`
pub(super) async fn user_by_fields(
    State(state): State<Arc<AppState>>,
    Path(protocol): Path<String>,
    Query(fields): Query<BTreeMap<String, String>>,
) -> Response {
    let bridge = &state.bridge;
    let Some(c) = by_protocol(bridge, &protocol) else {
        return unknown_protocol();
    };
    let info = c.info();
    let Some(field) = info.user_fields.first() else {
        return ok(json!([]));
    };
    let Some(raw) = fields.get(&field.name) else {
        return ok(json!([]));
    };
    match c.parse_user_id(raw) {
        Ok(id) => ok(json!([{
            "userid": bridge.ghost_user_id(&info.id, id.as_str()),
            "protocol": protocol,
            "fields": {field.name.clone(): id.as_str()},
        }])),
        Err(_) => ok(json!([])),
    }
}

/// `GET /thirdparty/location/{protocol}?field=value`
pub(super) async fn location_by_fields(
    State(state): State<Arc<AppState>>,
    Path(protocol): Path<String>,
    Query(fields): Query<BTreeMap<String, String>>,
) -> Response {
    let bridge = &state.bridge;
    let Some(c) = by_protocol(bridge, &protocol) else {
        return unknown_protocol();
    };
    let info = c.info();
    let Some(field) = info.location_fields.first() else {
        return ok(json!([]));
    };
    let Some(raw) = fields.get(&field.name) else {
        return ok(json!([]));
    };
    match c.parse_group_chat_id(raw) {
        Ok(Some(chat)) => ok(json!([{
            "alias": format!("#{}:{}", bridge.alias_localpart(&info.id, chat.as_str()), bridge.server_name()),
            "protocol": protocol,
            "fields": {field.name.clone(): chat.as_str()},
        }])),
        _ => ok(json!([])),
    }
}

/// `GET /thirdparty/user?userid=@ghost:server`
pub(super) async fn user_by_id(
    State(state): State<Arc<AppState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let bridge = &state.bridge;
    let Some(user) = q.get("userid") else {
        return matrix_error(
            StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
            "userid is required",
        );
    };
    let Some((network, remote)) = bridge.parse_ghost(user) else {
        return ok(json!([]));
    };
    let Some(c) = bridge.connector(&network) else {
        return ok(json!([]));
    };
    let info = c.info();
    let field = info
        .user_fields
        .first()
        .map(|f| f.name.clone())
        .unwrap_or_else(|| "id".into());
    ok(json!([{"userid": user, "protocol": info.protocol, "fields": {field: remote}}]))
}

/// `GET /thirdparty/location?alias=#alias:server`
pub(super) async fn location_by_alias(
    State(state): State<Arc<AppState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let bridge = &state.bridge;
    let Some(alias) = q.get("alias") else {
        return matrix_error(
            StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
            "alias is required",
        );
    };
    let Some(local) = alias
        .strip_prefix('#')
        .and_then(|a| a.split_once(':'))
        .filter(|(_, s)| *s == bridge.server_name())
        .map(|(l, _)| l)
    else {
        return ok(json!([]));
    };
    let Some((network, chat)) = bridge.parse_alias_localpart(local) else {
        return ok(json!([]));
    };
    let Some(c) = bridge.connector(&network) else {
        return ok(json!([]));
    };
    let info = c.info();
    let field = info
        .location_fields
        .first()
        .map(|f| f.name.clone())
        .unwrap_or_else(|| "id".into());
    ok(json!([{"alias": alias, "protocol": info.protocol, "fields": {field: chat}}]))
}
