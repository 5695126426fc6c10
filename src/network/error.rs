//! Errors at the connector boundary: [`NetworkError`], whose variant carries the failure
//! policy, and [`SinkError`], the core failing to store what a connector reported.

use super::PartsSent;
use crate::error::{Reason, Retry};

/// Why a call into a connector failed. The variant carries the policy ([`NetworkError::retry`]):
/// whether it is worth a retry and whether the Matrix user is told. Each [`Reason`] holds the
/// words a user or a log sees and, where there is one, the error that caused it.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The network or this connector cannot do this at all; the user is told once, no retry.
    #[error("not supported by this network: {0}")]
    Unsupported(&'static str),
    /// There is no identity that could act for this user on this network.
    #[error("not logged in to this network")]
    NotLoggedIn,
    /// The network refused the credentials; the login needs `relogin`.
    #[error("bad credentials: {0}")]
    BadCredentials(#[source] Reason),
    /// What the user typed is not valid here (the message says what is expected).
    #[error("{0}")]
    InvalidInput(#[source] Reason),
    /// The network answered that the message cannot be delivered; certain, no retry.
    #[error("undeliverable: {0}")]
    Undeliverable(#[source] Reason),
    /// A passing failure of this operation (timeout, an error the network says is
    /// temporary); the core retries with backoff and, past a bound, sets the item aside.
    #[error("temporary failure: {0}")]
    Transient(#[source] Reason),
    /// The link or connection the operation needs is down; the core waits for it, holding
    /// the portal, without counting it against the item.
    #[error("link down: {0}")]
    Down(#[source] Reason),
    /// Anything else; logged, and the user sees a generic failure notice.
    #[error("internal error: {0}")]
    Internal(#[source] Reason),
    /// A message sent in parts stopped at a part: `sent` says which parts went out before
    /// it. The policy is the failed part's (`error`); the core keeps `sent` for the message,
    /// so that a retry sends only the parts after them ([`OutgoingMessage::sent`]).
    ///
    /// [`OutgoingMessage::sent`]: super::OutgoingMessage::sent
    #[error("part {} of {}: {error}", .sent.parts + 1, .sent.total)]
    Partly {
        /// The parts delivered before the one that failed.
        sent: PartsSent,
        /// Why the part failed.
        #[source]
        error: Box<NetworkError>,
    },
}

impl NetworkError {
    /// What the failure model does with this error: `Transient` is a passing failure of
    /// the operation, `Down` an outage of the link, everything else permanent.
    pub fn retry(&self) -> Retry {
        match self {
            NetworkError::Transient(_) => Retry::Transient,
            NetworkError::Down(_) => Retry::Outage,
            NetworkError::Partly { error, .. } => error.retry(),
            _ => Retry::Never,
        }
    }

    /// The error of the failed part for [`NetworkError::Partly`], else this one.
    pub fn failed_part(&self) -> &NetworkError {
        match self {
            NetworkError::Partly { error, .. } => error.failed_part(),
            e => e,
        }
    }

    /// Whether the core should retry the same operation later.
    pub fn is_transient(&self) -> bool {
        self.retry().is_retried()
    }
}

/// The event sink failed to store an event (the store is broken or the bridge is stopping).
/// The reason carries the store's own error.
#[derive(Debug, thiserror::Error)]
#[error("could not store remote event: {0}")]
pub struct SinkError(#[source] pub Reason);

/// A connector's own storage failing is an internal error of the operation that needed it.
impl From<SinkError> for NetworkError {
    fn from(e: SinkError) -> Self {
        NetworkError::Internal(Reason::from_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variant_is_the_verdict() {
        assert_eq!(
            NetworkError::Transient("x".into()).retry(),
            Retry::Transient
        );
        assert_eq!(NetworkError::Down("x".into()).retry(), Retry::Outage);
        assert_eq!(
            NetworkError::Undeliverable("x".into()).retry(),
            Retry::Never
        );
        assert_eq!(NetworkError::Internal("x".into()).retry(), Retry::Never);
        assert!(NetworkError::Down("x".into()).is_transient());
        assert!(!NetworkError::NotLoggedIn.is_transient());
    }

    #[test]
    fn a_storage_failure_keeps_its_words_and_its_cause() {
        let io = std::io::Error::other("disk full");
        let sink = SinkError(Reason::because("write", io));
        let e = NetworkError::from(sink);
        assert_eq!(
            e.to_string(),
            "internal error: could not store remote event: write: disk full"
        );
        assert_eq!(e.retry(), Retry::Never);
        let mut causes = 0;
        let mut at: &dyn std::error::Error = &e;
        while let Some(next) = at.source() {
            causes += 1;
            at = next;
        }
        assert!(causes >= 3, "the chain reaches the I/O error");
        assert_eq!(at.to_string(), "disk full");
    }
}
