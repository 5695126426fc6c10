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

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::{AppState, matrix_error};
use crate::bridge::{Bridge, BridgeError, LoginProgress};
use crate::config::PermissionLevel;
use crate::network::{LoginId, NetworkError, NetworkId};

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
        .route("/login/flows", get(flows))
        .route("/login/start/{flow}", post(login_start))
        .route("/login/step/{process}/{step}/user_input", post(login_step))
        .route("/logout/{login}", post(logout))
        .route("/logins", get(logins))
        .route("/contacts", get(contacts))
        .route("/resolve_identifier/{identifier}", get(resolve))
        .route("/create_dm/{identifier}", post(create_dm))
        .method_not_allowed_fallback(super::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state, auth))
}

/// Query parameters every call takes.
#[derive(Deserialize)]
struct Who {
    user_id: String,
    #[serde(default)]
    network: Option<String>,
}

fn error(status: StatusCode, errcode: &str, message: impl std::fmt::Display) -> Response {
    matrix_error(status, errcode, &message.to_string())
}

/// A JSON body. Empty or not JSON: 400 `M_NOT_JSON`; JSON of the wrong shape (wrong types,
/// missing fields): 400 `M_BAD_JSON`; over the body limit: 413 `M_TOO_LARGE`. The
/// `Content-Type` is not checked.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    "M_TOO_LARGE"
                } else {
                    "M_NOT_JSON"
                };
                error(e.status(), code, e.body_text())
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
                "the body is empty; send a JSON object",
            ));
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
                format!("the body is not JSON: {e}"),
            )
        })?;
        serde_json::from_value(value).map(Body).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
                format!("the body has the wrong shape: {e}"),
            )
        })
    }
}

/// Query parameters; malformed ones answer 400 `M_INVALID_PARAM`.
struct Q<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Q(t))
            .map_err(|e| error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", e.body_text()))
    }
}

/// Path parameters, each at most [`MAX_PARAM`] bytes; malformed or too long ones answer 400
/// `M_INVALID_PARAM`.
struct P<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for P<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let raw = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| error(e.status(), "M_INVALID_PARAM", e.body_text()))?;
        if let Some((name, _)) = raw.iter().find(|(_, v)| v.len() > MAX_PARAM) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "M_INVALID_PARAM",
                format!("{name} is longer than {MAX_PARAM} bytes"),
            ));
        }
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| P(t))
            .map_err(|e| {
                let status = e.status();
                let code = if status.is_client_error() {
                    "M_INVALID_PARAM"
                } else {
                    "M_UNKNOWN"
                };
                error(status, code, e.body_text())
            })
    }
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

async fn flows(State(state): State<Arc<AppState>>, Q(who): Q<Who>) -> Response {
    let network = match network(&state.bridge, &who) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let connector = state.bridge.network(&network).expect("checked");
    Json(json!({"flows": connector.login_flows()})).into_response()
}

/// The next step of a login, as the API shows it.
async fn step_json(
    bridge: &Bridge,
    user: &str,
    progress: LoginProgress,
    instructions: Option<String>,
) -> Value {
    match progress {
        LoginProgress::Done(name) => json!({
            "type": "complete",
            "complete": {"user_login_id": name},
        }),
        LoginProgress::Ask(_, step_instructions) => {
            let fields: Vec<Value> = bridge
                .login_remaining_fields(user)
                .await
                .into_iter()
                .map(|f| json!({"id": f.id, "name": f.name, "type": if f.secret { "password" } else { "text" }}))
                .collect();
            json!({
                "type": "user_input",
                "login_id": user,
                "step_id": "fields",
                "instructions": step_instructions.or(instructions).unwrap_or_default(),
                "user_input": {"fields": fields},
            })
        }
    }
}

async fn login_start(
    State(state): State<Arc<AppState>>,
    P(flow): P<String>,
    Q(who): Q<Who>,
) -> Response {
    let network = match network(&state.bridge, &who) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    state.bridge.cancel_login(&who.user_id).await;
    match state
        .bridge
        .begin_login(&who.user_id, &network, Some(&flow))
        .await
    {
        Ok(p) => Json(step_json(&state.bridge, &who.user_id, p, None).await).into_response(),
        Err(e) => bridge_error(e),
    }
}

async fn login_step(
    State(state): State<Arc<AppState>>,
    P((process, _step)): P<(String, String)>,
    Q(who): Q<Who>,
    Body(input): Body<BTreeMap<String, String>>,
) -> Response {
    if process != who.user_id {
        return error(
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "no such login process",
        );
    }
    if input.len() > MAX_FIELDS {
        return error(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            format!("at most {MAX_FIELDS} fields"),
        );
    }
    if let Some((id, _)) = input
        .iter()
        .find(|(id, v)| id.len() > MAX_PARAM || v.len() > MAX_FIELD)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            format!("field {id:.40} is longer than {MAX_FIELD} bytes"),
        );
    }
    let fields = state.bridge.login_remaining_fields(&who.user_id).await;
    if fields.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "no login in progress; start one",
        );
    }
    let mut last = None;
    for f in fields {
        let Some(value) = input.get(&f.id) else {
            return error(
                StatusCode::BAD_REQUEST,
                "M_MISSING_PARAM",
                format!("field {} is required", f.id),
            );
        };
        if value.chars().any(char::is_control) {
            return error(
                StatusCode::BAD_REQUEST,
                "M_INVALID_PARAM",
                format!("field {} has control characters", f.id),
            );
        }
        match state.bridge.login_input(&who.user_id, value).await {
            Ok(p) => last = Some(p),
            Err(e) => return bridge_error(e),
        }
    }
    match last {
        Some(p) => Json(step_json(&state.bridge, &who.user_id, p, None).await).into_response(),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "no step"),
    }
}

async fn logout(
    State(state): State<Arc<AppState>>,
    P(login): P<String>,
    Q(who): Q<Who>,
) -> Response {
    let network = match network(&state.bridge, &who) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let id = (login != "all").then(|| LoginId::new(login.as_str()));
    match state
        .bridge
        .logout(&who.user_id, &network, id.as_ref())
        .await
    {
        Ok(names) if names.is_empty() => {
            error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such login")
        }
        Ok(names) => Json(json!({"logged_out": names})).into_response(),
        Err(e) => bridge_error(e),
    }
}

async fn logins(State(state): State<Arc<AppState>>, Q(who): Q<Who>) -> Response {
    let list: Vec<Value> = state
        .bridge
        .stored_logins_of(&who.user_id)
        .unwrap_or_default()
        .into_iter()
        .map(|(network, l)| {
            let state_now = state
                .bridge
                .login_client(&who.user_id, &NetworkId::new(network.as_str()), &l.id)
                .map(|c| c.state().as_str());
            json!({"network": network, "id": l.id, "name": l.remote_name, "state": state_now.unwrap_or("UNKNOWN_ERROR")})
        })
        .collect();
    Json(json!({"logins": list})).into_response()
}

async fn contacts(State(state): State<Arc<AppState>>, Q(who): Q<Who>) -> Response {
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
async fn resolve_or_create(
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

async fn resolve(
    State(state): State<Arc<AppState>>,
    P(identifier): P<String>,
    Q(who): Q<Who>,
) -> Response {
    resolve_or_create(&state, &who, &identifier, false).await
}

async fn create_dm(
    State(state): State<Arc<AppState>>,
    P(identifier): P<String>,
    Q(who): Q<Who>,
) -> Response {
    resolve_or_create(&state, &who, &identifier, true).await
}
