//! The send path, the one place that talks HTTP: building a ruma request (token, path for the
//! negotiated versions, `?user_id=`), sending it with bounded concurrency and retries, and
//! classifying answers into success, transient and permanent failures.

use std::borrow::Cow;
use std::sync::PoisonError;
use std::time::{Duration, Instant, SystemTime};

use ruma::api::auth_scheme::{AuthScheme, SendAccessToken};
use ruma::api::error::{ErrorBody, ErrorKind, LimitExceededErrorData, RetryAfter};
use ruma::api::path_builder::{PathBuilder, SinglePath, VersionHistory};
use ruma::api::{
    AppserviceUserIdentity, EndpointError, IncomingResponseExt, OutgoingRequest,
    OutgoingRequestAppserviceExt, SupportedVersions,
};
// ruma's own re-export, so the `http` types are exactly the ones ruma's traits take.
use ruma::exports::http;
use ruma::serde::Raw;
use ruma::{OwnedRoomAliasId, RoomAliasId, UserId};
use serde_json::Value as JsonValue;
use tracing::debug;

use super::super::retry::Attempt;
use super::{HomeserverClient, MatrixError};
use crate::error::Reason;

/// Which access-token mode a request uses.
#[derive(Debug, Clone, Copy)]
pub(super) enum Token {
    /// Added where the endpoint needs it (the normal case).
    Appservice,
    /// Added even where the endpoint does not need it: profile and alias lookups, which some
    /// homeservers restrict to authenticated users.
    Always,
}

/// Picks a path for an endpoint from the negotiated spec versions.
pub(super) trait PathInput: PathBuilder {
    fn input(versions: &SupportedVersions) -> Self::Input<'_>;
}

impl PathInput for VersionHistory {
    fn input(versions: &SupportedVersions) -> Cow<'_, SupportedVersions> {
        Cow::Borrowed(versions)
    }
}

impl PathInput for SinglePath {
    fn input(_versions: &SupportedVersions) {}
}

/// A raw HTTP answer with a success status.
pub(super) struct Reply {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl HomeserverClient {
    /// The user a request acts as: `as_user`, or the bot.
    pub(super) fn acting<'a>(&'a self, as_user: Option<&'a UserId>) -> &'a UserId {
        as_user.unwrap_or(&self.inner.bot)
    }

    /// Builds the HTTP request for a ruma endpoint: base URL, path for the negotiated
    /// versions, access token, and `?user_id=` when `as_user` is given.
    fn build<R>(
        &self,
        as_user: Option<&UserId>,
        token: Token,
        request: R,
    ) -> Result<http::Request<Vec<u8>>, MatrixError>
    where
        R: OutgoingRequest,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let token = match token {
            Token::Appservice => SendAccessToken::Appservice(&self.inner.as_token),
            Token::Always => SendAccessToken::Always(&self.inner.as_token),
        };
        let identity = as_user.map(AppserviceUserIdentity::new).unwrap_or_default();
        let versions = self
            .inner
            .versions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        request
            .try_into_http_request_with_identity(
                &self.inner.base_url,
                token,
                identity,
                R::PathBuilder::input(&versions),
            )
            .map_err(|e| MatrixError::Decode(Reason::because("could not encode request", e)))
    }

    /// Sends a ruma request (with retries) and parses the successful response.
    pub(super) async fn call<R>(
        &self,
        endpoint: &'static str,
        as_user: Option<&UserId>,
        token: Token,
        request: R,
    ) -> Result<R::IncomingResponse, MatrixError>
    where
        R: OutgoingRequest,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let http_request = self.build(as_user, token, request)?;
        let reply = self.execute(endpoint, http_request).await?;
        let mut response = http::Response::new(reply.body.as_slice());
        *response.status_mut() = reply.status;
        *response.headers_mut() = reply.headers;
        R::IncomingResponse::try_from_http_response(response)
            .map_err(|e| MatrixError::Decode(format!("{endpoint} response: {e}").into()))
    }

    /// The one place that talks HTTP: sends `request` until it succeeds, fails permanently or
    /// runs out of retries. Each attempt holds a concurrency permit while in flight (not while
    /// backing off).
    async fn execute(
        &self,
        endpoint: &'static str,
        request: http::Request<Vec<u8>>,
    ) -> Result<Reply, MatrixError> {
        let request = reqwest::Request::try_from(request).map_err(|e| {
            MatrixError::Decode(Reason::because("could not encode request", e.without_url()))
        })?;
        self.inner
            .policy
            .run(endpoint, &self.inner.stop, |_attempt| {
                let req = request.try_clone();
                async move {
                    match req {
                        Some(req) => self.attempt(endpoint, req).await,
                        None => Attempt::Fail(MatrixError::Decode(
                            "request body cannot be replayed".into(),
                        )),
                    }
                }
            })
            .await
    }

    /// One HTTP round trip, classified for the retry loop.
    async fn attempt(&self, endpoint: &'static str, req: reqwest::Request) -> Attempt<Reply> {
        let method = req.method().clone();
        // Only the path is logged: the query may carry identities, and never the token.
        let path = req.url().path().to_owned();
        let outcome = {
            let _permit = self
                .inner
                .limiter
                .acquire()
                .await
                .expect("the limiter is never closed");
            let started = Instant::now();
            let outcome = match self.inner.http.execute(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    resp.bytes()
                        .await
                        .map(|body| (status, headers, Vec::from(body)))
                }
                Err(e) => Err(e),
            };
            let elapsed = started.elapsed();
            // A histogram with other labels is ignored rather than panicking mid-request.
            if let Some(Ok(h)) = self
                .inner
                .metrics
                .as_ref()
                .map(|m| m.get_metric_with_label_values(&[endpoint]))
            {
                h.observe(elapsed.as_secs_f64());
            }
            (outcome, elapsed)
        };
        match outcome {
            (Err(e), elapsed) => {
                let error = Reason::from_error(e.without_url());
                debug!(%method, endpoint, path, elapsed_ms = elapsed.as_millis() as u64, %error, "homeserver request failed");
                Attempt::Retry {
                    error: MatrixError::Http(error),
                    after: None,
                }
            }
            (Ok((status, headers, body)), elapsed) => {
                debug!(%method, endpoint, path, status = status.as_u16(), elapsed_ms = elapsed.as_millis() as u64, "homeserver request");
                classify(status, headers, body)
            }
        }
    }
}

/// Success, transient failure (429, 5xx) or permanent failure, from a complete HTTP answer.
pub(super) fn classify(
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
) -> Attempt<Reply> {
    if status.as_u16() < 400 {
        return Attempt::Done(Reply {
            status,
            headers,
            body,
        });
    }
    let (error, hint) = api_error(status, &headers, &body);
    if status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Attempt::Retry { error, after: hint }
    } else {
        Attempt::Fail(error)
    }
}

/// Turns an error answer into [`MatrixError::Api`] plus the homeserver's wait hint
/// (`retry_after_ms` of `M_LIMIT_EXCEEDED`, else the `Retry-After` header).
pub(super) fn api_error(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> (MatrixError, Option<Duration>) {
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    let parsed = ruma::api::error::Error::from_http_response(response);
    let mut hint = None;
    let (errcode, message) = match parsed.body {
        ErrorBody::Standard(standard) => {
            if let ErrorKind::LimitExceeded(LimitExceededErrorData { retry_after, .. }) =
                &standard.kind
            {
                hint = retry_after.as_ref().map(retry_after_duration);
            }
            (
                standard.kind.errcode().as_str().to_owned(),
                standard.message,
            )
        }
        ErrorBody::Json(json) => {
            let errcode = json
                .get("errcode")
                .and_then(JsonValue::as_str)
                .unwrap_or_default()
                .to_owned();
            let message = match json.get("error").and_then(JsonValue::as_str) {
                Some(m) => m.to_owned(),
                None => truncate(&json.to_string()),
            };
            (errcode, message)
        }
        ErrorBody::NotJson { bytes, .. } => {
            let text = truncate(String::from_utf8_lossy(&bytes).trim());
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("no body").to_owned()
            } else {
                text
            };
            (String::new(), message)
        }
    };
    if hint.is_none() {
        hint = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| RetryAfter::try_from(v).ok())
            .as_ref()
            .map(retry_after_duration);
    }
    (
        MatrixError::Api {
            status: status.as_u16(),
            errcode,
            message,
        },
        hint,
    )
}

fn retry_after_duration(r: &RetryAfter) -> Duration {
    match r {
        RetryAfter::Delay(d) => *d,
        RetryAfter::DateTime(t) => t.duration_since(SystemTime::now()).unwrap_or_default(),
    }
}

/// At most 200 characters of a body, for error messages.
pub(super) fn truncate(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// JSON into ruma's raw type.
pub(super) fn raw<T>(value: &JsonValue) -> Result<Raw<T>, MatrixError> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|e| MatrixError::Decode(Reason::because("could not encode content", e)))
}

pub(super) fn parse_alias(alias: &str) -> Result<OwnedRoomAliasId, MatrixError> {
    RoomAliasId::parse(alias)
        .map_err(|e| MatrixError::InvalidId(Reason::because(format!("{alias:?}"), e)))
}
