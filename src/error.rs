//! What every error of the bridge shares: the failure model's verdict ([`Retry`]), a message
//! with its cause ([`Reason`]), and the way a log prints a cause chain ([`chain`]).
//!
//! The convention: an error's message says what failed and includes the text of its direct
//! cause (`cannot bind UDP 0.0.0.0:5060: address in use`), so that what a user or a log sees
//! is whole; the cause itself is also kept as the error's `source`, for code that needs to
//! look at it and for [`chain`], which prints the deeper causes that the message left out.

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// What the failure model does with a failure (ARCHITECTURE.md, "The failure model"). Every
/// error type the core sees answers it through its own `retry()`; nothing decides it from an
/// error's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Permanent: it can never succeed as it is. The sender is told; no retry.
    Never,
    /// A passing failure of this one operation (a timeout, a 5xx, a temporary refusal):
    /// retried with backoff, and counted, so that an item that keeps failing is set aside.
    Transient,
    /// An outage of something every operation needs (the homeserver cannot be reached, the
    /// store cannot write, a link is down): waited out with backoff, not counted against the
    /// item.
    Outage,
}

impl Retry {
    /// Whether trying again later may succeed.
    pub fn is_retried(self) -> bool {
        self != Retry::Never
    }
}

/// A failure's message, for users and logs, and the error that caused it when there is one.
///
/// Displays as the message, followed by `: ` and the cause's [`chain`] when there is a cause
/// (only the chain for a reason made [`from_error`](Self::from_error)). Cheap to clone; two
/// reasons are equal when they display alike.
#[derive(Clone)]
pub struct Reason {
    message: Cow<'static, str>,
    source: Option<Arc<dyn Error + Send + Sync + 'static>>,
}

impl Reason {
    /// A reason without an underlying error.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A reason caused by `source`; displays as `message: source`.
    pub fn because(
        message: impl Into<Cow<'static, str>>,
        source: impl Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A reason that is `source` itself: displays as its chain.
    pub fn from_error(source: impl Error + Send + Sync + 'static) -> Self {
        Self::because("", source)
    }

    /// The message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            None => f.write_str(&self.message),
            Some(source) if self.message.is_empty() => write!(f, "{}", chain(source.as_ref())),
            Some(source) => write!(f, "{}: {}", self.message, chain(source.as_ref())),
        }
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Reason");
        d.field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl Error for Reason {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

impl PartialEq for Reason {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Reason {}

impl From<String> for Reason {
    fn from(message: String) -> Self {
        Reason::new(message)
    }
}

impl From<&'static str> for Reason {
    fn from(message: &'static str) -> Self {
        Reason::new(message)
    }
}

/// Displays `error` with its whole cause chain, `outer: cause: deeper cause`, leaving out a
/// cause whose text the words before it already hold. For logs: `error = %chain(&e)`.
pub fn chain<'a>(error: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(error)
}

/// See [`chain`].
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.0.to_string();
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = s.source();
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer failed")]
    struct Outer(#[source] Reason);

    #[test]
    fn a_reason_shows_its_cause_and_keeps_it() {
        let io = std::io::Error::other("disk on fire");
        let r = Reason::because("cannot write", io);
        assert_eq!(r.to_string(), "cannot write: disk on fire");
        assert_eq!(r.message(), "cannot write");
        assert_eq!(
            r.source().map(|s| s.to_string()).as_deref(),
            Some("disk on fire")
        );
        assert_eq!(Reason::from("plain").to_string(), "plain");
        assert!(Reason::new("plain").source().is_none());
        let nested = Reason::from_error(Reason::because("b", std::io::Error::other("c")));
        assert_eq!(nested.to_string(), "b: c");
    }

    #[test]
    fn the_chain_prints_each_cause_once() {
        let e = Outer(Reason::because(
            "cannot write",
            std::io::Error::other("disk on fire"),
        ));
        // The reason already shows the I/O error; it is not repeated.
        assert_eq!(
            chain(&e).to_string(),
            "outer failed: cannot write: disk on fire"
        );
        let plain = std::io::Error::other("alone");
        assert_eq!(chain(&plain).to_string(), "alone");
    }

    #[test]
    fn retry_verdicts() {
        assert!(!Retry::Never.is_retried());
        assert!(Retry::Transient.is_retried());
        assert!(Retry::Outage.is_retried());
    }
}
