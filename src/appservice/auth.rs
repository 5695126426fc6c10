//! hs_token check, in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;
use tracing::warn;

use super::{AppState, matrix_error};

/// The token a request presents: the `Authorization: Bearer` header, else (only when allowed)
/// the legacy `access_token` query parameter. When both are present they must agree.
fn presented_token(req: &Request, allow_query: bool) -> Result<Option<String>, &'static str> {
    let header = match req.headers().get(axum::http::header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let v = v.to_str().map_err(|_| "malformed Authorization header")?;
            Some(
                v.strip_prefix("Bearer ")
                    .ok_or("Authorization header is not a Bearer token")?
                    .trim()
                    .to_owned(),
            )
        }
    };
    let query = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| percent_decode(v))
    });
    match (header, query) {
        (Some(h), Some(q)) if h != q => Err("Authorization header and access_token disagree"),
        (Some(h), _) => Ok(Some(h)),
        (None, Some(q)) if allow_query => Ok(Some(q)),
        (None, Some(_)) => {
            Err("access_token in the query is not accepted; send an Authorization header")
        }
        (None, None) => Ok(None),
    }
}

/// Decodes `%XX` escapes and `+` of a query value.
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Middleware: lets a request through only with the right hs_token.
pub(super) async fn require_hs_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    match presented_token(&req, state.allow_query_token) {
        Ok(Some(token)) if bool::from(token.as_bytes().ct_eq(state.hs_token.as_bytes())) => {
            next.run(req).await
        }
        Ok(Some(_)) => {
            warn!(path = %req.uri().path(), "request with a wrong hs_token refused");
            matrix_error(StatusCode::FORBIDDEN, "M_FORBIDDEN", "Bad token supplied")
        }
        Ok(None) => {
            warn!(path = %req.uri().path(), "request without a token refused");
            matrix_error(StatusCode::FORBIDDEN, "M_FORBIDDEN", "Missing token")
        }
        Err(why) => {
            warn!(path = %req.uri().path(), why, "request with a bad token refused");
            matrix_error(StatusCode::FORBIDDEN, "M_FORBIDDEN", why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, auth: Option<&str>) -> Request {
        let mut b = axum::http::Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn token_sources() {
        assert_eq!(
            presented_token(&req("/x", Some("Bearer abc")), false),
            Ok(Some("abc".into()))
        );
        assert_eq!(presented_token(&req("/x", None), false), Ok(None));
        assert!(presented_token(&req("/x?access_token=abc", None), false).is_err());
        assert_eq!(
            presented_token(&req("/x?access_token=a%2Bc", None), true),
            Ok(Some("a+c".into()))
        );
        assert!(presented_token(&req("/x?access_token=zzz", Some("Bearer abc")), true).is_err());
        assert!(presented_token(&req("/x", Some("Basic abc")), false).is_err());
    }
}
