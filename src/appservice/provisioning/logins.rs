//! The provisioning API's login calls: the flows a network offers, a login's steps, logging
//! out, the user's logins.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::extract::{Body, P, Q};
use super::{AppState, MAX_FIELD, MAX_FIELDS, MAX_PARAM, Who, bridge_error, error, network};
use crate::bridge::{Bridge, LoginProgress};
use crate::network::{LoginId, NetworkId};

pub(super) async fn flows(State(state): State<Arc<AppState>>, Q(who): Q<Who>) -> Response {
    let network = match network(&state.bridge, &who) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let connector = state.bridge.network(&network).expect("checked");
    Json(json!({"flows": connector.login_flows()})).into_response()
}

/// The next step of a login, as the API shows it.
pub(super) async fn step_json(
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

pub(super) async fn login_start(
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

pub(super) async fn login_step(
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

pub(super) async fn logout(
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

pub(super) async fn logins(State(state): State<Arc<AppState>>, Q(who): Q<Who>) -> Response {
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
