//! The error every homeserver request returns.

use crate::error::{Reason, Retry};

/// Why a homeserver request failed.
///
/// Transient failures (connection errors, HTTP 429 and 5xx) have already been retried by the
/// client when they come back as [`MatrixError::Http`] or [`MatrixError::Api`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatrixError {
    /// The homeserver answered with an error status.
    #[error("homeserver answered {status} {errcode}: {message}")]
    Api {
        /// HTTP status code, e.g. 403.
        status: u16,
        /// Matrix error code such as `M_FORBIDDEN`; empty when the body carried none (for
        /// example an HTML page from a reverse proxy).
        errcode: String,
        /// The homeserver's human-readable message, or the start of a non-JSON body.
        message: String,
    },
    /// The homeserver could not be reached or the connection broke (after all retries).
    #[error("could not reach the homeserver: {0}")]
    Http(#[source] Reason),
    /// A request could not be encoded, or a successful response could not be decoded.
    #[error("unexpected data in a homeserver exchange: {0}")]
    Decode(#[source] Reason),
    /// A user ID, room ID, alias or event ID given to the client is not valid.
    #[error("invalid Matrix identifier: {0}")]
    InvalidId(#[source] Reason),
}

impl MatrixError {
    /// What the failure model does with this error: the homeserver out of reach is an
    /// outage; 429 and 5xx (already retried by the client) are passing failures of the
    /// request; any other answer, and bad data, are permanent.
    pub fn retry(&self) -> Retry {
        match self {
            MatrixError::Http(_) => Retry::Outage,
            MatrixError::Api { status, .. } if *status >= 500 || *status == 429 => Retry::Transient,
            _ => Retry::Never,
        }
    }

    /// The Matrix error code (`M_FORBIDDEN`, `M_NOT_FOUND`, ...) when the homeserver sent one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            MatrixError::Api { errcode, .. } if !errcode.is_empty() => Some(errcode),
            _ => None,
        }
    }

    /// Whether the homeserver said the thing asked for does not exist: `M_NOT_FOUND`, or any
    /// other 404 (Synapse answers 404 `M_UNKNOWN` for a missing profile or an unknown room to
    /// join). An unknown endpoint (404 `M_UNRECOGNIZED`) is not "not found".
    pub fn is_not_found(&self) -> bool {
        match self {
            MatrixError::Api {
                status, errcode, ..
            } => errcode == "M_NOT_FOUND" || (*status == 404 && errcode != "M_UNRECOGNIZED"),
            _ => false,
        }
    }

    /// The HTTP status of an [`MatrixError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            MatrixError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, errcode: &str) -> MatrixError {
        MatrixError::Api {
            status,
            errcode: errcode.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn errcode_and_not_found() {
        assert_eq!(api(403, "M_FORBIDDEN").errcode(), Some("M_FORBIDDEN"));
        assert_eq!(api(502, "").errcode(), None);
        assert_eq!(MatrixError::Http("x".into()).errcode(), None);
        assert!(api(404, "M_NOT_FOUND").is_not_found());
        assert!(api(404, "").is_not_found());
        assert!(api(404, "M_UNKNOWN").is_not_found());
        assert!(!api(404, "M_UNRECOGNIZED").is_not_found());
        assert!(!api(403, "M_FORBIDDEN").is_not_found());
        assert!(!MatrixError::Decode("x".into()).is_not_found());
    }

    #[test]
    fn retry_verdicts() {
        assert_eq!(MatrixError::Http("x".into()).retry(), Retry::Outage);
        assert_eq!(api(502, "").retry(), Retry::Transient);
        assert_eq!(api(429, "M_LIMIT_EXCEEDED").retry(), Retry::Transient);
        assert_eq!(api(403, "M_FORBIDDEN").retry(), Retry::Never);
        assert_eq!(MatrixError::Decode("x".into()).retry(), Retry::Never);
    }

    #[test]
    fn display_names_status_and_code() {
        assert_eq!(
            api(403, "M_FORBIDDEN").to_string(),
            "homeserver answered 403 M_FORBIDDEN: m"
        );
    }
}
