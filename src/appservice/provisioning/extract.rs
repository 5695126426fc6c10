//! The provisioning API's extractors: a JSON body, query and path parameters, each of which
//! answers a request that does not parse with `{"errcode", "error"}` JSON instead of axum's
//! plain-text rejection.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{MAX_PARAM, error};

/// A JSON body. Empty or not JSON: 400 `M_NOT_JSON`; JSON of the wrong shape (wrong types,
/// missing fields): 400 `M_BAD_JSON`; over the body limit: 413 `M_TOO_LARGE`. The
/// `Content-Type` is not checked.
pub(super) struct Body<T>(pub(super) T);

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
pub(super) struct Q<T>(pub(super) T);

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
pub(super) struct P<T>(pub(super) T);

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
