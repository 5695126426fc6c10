//! The provisioning API, `/_matrix/provision/v3/...`: what the management room offers, as JSON
//! over HTTP, for integration managers and web front ends. The shape follows the mautrix
//! bridges' API. Documented in `docs/provisioning.md` (with an OpenAPI file).
//!
//! Every request carries `Authorization: Bearer <provisioning secret>` and the Matrix user it
//! acts for as `?user_id=@user:server`; the user's permission level applies as in the
//! management room.
//!
//! Every answer that is not a success is `{"errcode", "error"}` JSON, also for requests that
//! do not parse: the handlers take their inputs through [`Body`], [`Q`] and [`P`], which turn
//! axum's plain-text rejections into Matrix errors. The acting user must be a valid Matrix
//! user ID of at most 255 bytes and not one of the bridge's own users (the bot, a ghost);
//! every other string is bounded too.
//!
//! `provisioning.rs` holds the routes, the authentication and the shared checks; `extract.rs`
//! the extractors, `logins.rs` and `chats.rs` the calls by topic.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use self::extract::Q;
use super::{AppState, matrix_error};
use crate::bridge::{Bridge, BridgeError};
use crate::config::PermissionLevel;
use crate::network::{NetworkError, NetworkId};

mod chats;
mod extract;
mod logins;

/// Longest user ID the Matrix specification allows, in bytes.
const MAX_USER_ID: usize = 255;
/// Longest other path segment or query value, in bytes (network, flow, login, identifier).
const MAX_PARAM: usize = 1024;
/// Longest value of one login field, in bytes.
const MAX_FIELD: usize = 4096;
/// Most fields one login step takes.
const MAX_FIELDS: usize = 32;

/// The routes, to nest under `/_matrix/provision/v3`.
pub(super) fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/login/flows", get(logins::flows))
        .route("/login/start/{flow}", post(logins::login_start))
        .route(
            "/login/step/{process}/{step}/user_input",
            post(logins::login_step),
        )
        .route("/logout/{login}", post(logins::logout))
        .route("/logins", get(logins::logins))
        .route("/contacts", get(chats::contacts))
        .route("/resolve_identifier/{identifier}", get(chats::resolve))
        .route("/create_dm/{identifier}", post(chats::create_dm))
        .method_not_allowed_fallback(super::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state, auth))
}

/// Query parameters every call takes.
#[derive(Deserialize)]
pub(super) struct Who {
    pub(super) user_id: String,
    #[serde(default)]
    pub(super) network: Option<String>,
}

fn error(status: StatusCode, errcode: &str, message: impl std::fmt::Display) -> Response {
    matrix_error(status, errcode, &message.to_string())
}

fn bridge_error(e: BridgeError) -> Response {
    match e {
        BridgeError::Invalid(m) => error(StatusCode::BAD_REQUEST, "M_BAD_JSON", m.to_string()),
        BridgeError::Network {
            source: NetworkError::BadCredentials(m),
            ..
        } => error(StatusCode::FORBIDDEN, "FI.MAU.BAD_CREDENTIALS", m),
        BridgeError::Network {
            source: NetworkError::InvalidInput(m),
            ..
        } => error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", m),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", other),
    }
}

/// Checks the shared secret (constant time) and that the user may use the bridge.
async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(secret) = state.provisioning_secret.as_deref() else {
        return error(
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "the provisioning API is not enabled",
        );
    };
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(secret.as_bytes())) {
        return error(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "invalid provisioning secret",
        );
    }
    let user = match acting_user(&state.bridge, req.uri().query().unwrap_or("")) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if state.bridge.level(&user) >= PermissionLevel::User {
        next.run(req).await
    } else {
        error(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "this user may not use the bridge",
        )
    }
}

/// The user a call acts for, from `?user_id=`: given once, a valid Matrix user ID of at most
/// 255 bytes, not the bridge's bot or one of its ghosts. Also bounds every query value.
fn acting_user(bridge: &Bridge, query: &str) -> Result<String, Box<Response>> {
    let bad = |code: &str, why: String| Box::new(error(StatusCode::BAD_REQUEST, code, why));
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                super::auth::percent_decode(k),
                super::auth::percent_decode(v),
            )
        })
        .collect();
    if let Some((k, _)) = pairs.iter().find(|(k, v)| k.len() + v.len() > MAX_PARAM) {
        return Err(bad(
            "M_INVALID_PARAM",
            format!("the query parameter {k:.40} is longer than {MAX_PARAM} bytes"),
        ));
    }
    let mut users = pairs.iter().filter(|(k, _)| k == "user_id").map(|(_, v)| v);
    let Some(user) = users.next() else {
        return Err(bad("M_MISSING_PARAM", "user_id is required".into()));
    };
    if users.next().is_some() {
        return Err(bad(
            "M_INVALID_PARAM",
            "user_id is given more than once".into(),
        ));
    }
    if user.len() > MAX_USER_ID {
        return Err(bad(
            "M_INVALID_PARAM",
            format!("user_id is longer than {MAX_USER_ID} bytes"),
        ));
    }
    if let Err(e) = ruma::UserId::parse(user.as_str()) {
        return Err(bad(
            "M_INVALID_PARAM",
            format!("user_id is not a Matrix user ID such as @alice:example.org ({e})"),
        ));
    }
    if bridge.in_namespace(user) || bridge.is_bridge_user(user) {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "user_id is the bridge's bot or one of its ghosts; act for a Matrix user of the bridge",
        )));
    }
    Ok(user.clone())
}

/// The network a call is about: the named one, or the only one with logins / enabled.
fn network(bridge: &Bridge, who: &Who) -> Result<NetworkId, Box<Response>> {
    match &who.network {
        Some(n) => {
            let id = NetworkId::new(n.as_str());
            bridge
                .network(&id)
                .map(|_| id)
                .map_err(|e| Box::new(error(StatusCode::NOT_FOUND, "M_NOT_FOUND", e)))
        }
        None => bridge.only_network().cloned().ok_or_else(|| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                "M_MISSING_PARAM",
                "name the network with ?network=",
            ))
        }),
    }
}

async fn whoami(State(state): State<Arc<AppState>>, Q(who): Q<Who>) -> Response {
    let b = &state.bridge;
    let logins: Vec<Value> = b
        .all_logins_of(&who.user_id)
        .into_iter()
        .map(|(n, l)| json!({"network": n, "id": l.id, "name": l.remote_name, "state": l.client.state().as_str()}))
        .collect();
    let networks: Vec<Value> = b
        .connectors()
        .map(|(id, c)| {
            json!({
                "id": id,
                "displayname": c.info().display_name,
                "login_flows": c.login_flows(),
                "bridge_wide_identity": c.bridge_client().is_some(),
            })
        })
        .collect();
    let management_room = b.management_room_of(&who.user_id).ok().flatten();
    Json(json!({
        "user_id": who.user_id,
        "permission_level": format!("{:?}", b.level(&who.user_id)).to_lowercase(),
        "management_room": management_room,
        "logins": logins,
        "networks": networks,
    }))
    .into_response()
}
