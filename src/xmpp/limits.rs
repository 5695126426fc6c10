//! Inbound limits on the component stream, enforced on the bytes before the XML parser sees
//! them: the size of one stanza, the nesting depth, and no DTDs, entity declarations or
//! comments (`<!`). A stream that breaks a limit fails with an I/O error, which closes the link
//! (it reconnects); memory stays bounded by the size cap and the parser never sees the input.
//!
//! The counter of bytes since the last stanza is reset by the link after each stanza.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared view of the limits and of the bytes read since the last stanza.
#[derive(Clone, Debug)]
pub struct Guard {
    since_stanza: Arc<AtomicUsize>,
    max_bytes: usize,
    max_depth: usize,
}

impl Guard {
    /// Limits of `max_bytes` per stanza and `max_depth` nesting (the stream root counts as 1).
    pub fn new(max_bytes: usize, max_depth: usize) -> Self {
        Self {
            since_stanza: Arc::default(),
            max_bytes,
            max_depth,
        }
    }

    /// Called after each complete stanza.
    pub fn stanza_done(&self) {
        self.since_stanza.store(0, Ordering::Relaxed);
    }
}

/// Where the scanner is in the markup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Text,
    /// Just after `<`.
    Open,
    /// Inside a start tag; `slash` when the last non-space byte was `/`.
    StartTag {
        slash: bool,
    },
    /// Inside an end tag.
    EndTag,
    /// Inside a quoted attribute value of a start tag.
    Quoted(u8),
    /// Inside `<? ... ?>`.
    Instruction,
}

/// A byte stream with the limits applied to what is read.
#[derive(Debug)]
pub struct Limited<S> {
    inner: S,
    guard: Guard,
    state: State,
    depth: usize,
}

impl<S> Limited<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, guard: Guard) -> Self {
        Self {
            inner,
            guard,
            state: State::Text,
            depth: 0,
        }
    }

    /// The wrapped stream (to secure it with TLS, say).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Feeds bytes to the scanner; an error names the broken limit.
    fn scan(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        let total = self
            .guard
            .since_stanza
            .fetch_add(bytes.len(), Ordering::Relaxed)
            + bytes.len();
        if total > self.guard.max_bytes {
            return Err("stanza larger than networks.xmpp.max_stanza_bytes");
        }
        for &b in bytes {
            self.state = match (self.state, b) {
                (State::Text, b'<') => State::Open,
                (State::Text, _) => State::Text,
                (State::Open, b'/') => State::EndTag,
                (State::Open, b'?') => State::Instruction,
                (State::Open, b'!') => {
                    return Err("DTDs, entities, comments and CDATA are refused");
                }
                (State::Open, _) => {
                    self.depth += 1;
                    if self.depth > self.guard.max_depth {
                        return Err("nesting deeper than networks.xmpp.max_depth");
                    }
                    State::StartTag { slash: false }
                }
                (State::StartTag { .. }, q @ (b'"' | b'\'')) => State::Quoted(q),
                (State::StartTag { slash }, b'>') => {
                    if slash {
                        self.depth -= 1;
                    }
                    State::Text
                }
                (State::StartTag { .. }, b'/') => State::StartTag { slash: true },
                (State::StartTag { slash }, b' ' | b'\t' | b'\r' | b'\n') => {
                    State::StartTag { slash }
                }
                (State::StartTag { .. }, _) => State::StartTag { slash: false },
                (State::Quoted(q), b) if b == q => State::StartTag { slash: false },
                (State::Quoted(q), _) => State::Quoted(q),
                (State::EndTag, b'>') => {
                    self.depth = self.depth.saturating_sub(1);
                    State::Text
                }
                (State::EndTag, _) => State::EndTag,
                (State::Instruction, b'>') => State::Text,
                (State::Instruction, _) => State::Instruction,
            };
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = buf.filled()[before..].to_vec();
                match self.scan(&new) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(why) => {
                        buf.set_filled(before);
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)))
                    }
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &str, max_bytes: usize, max_depth: usize) -> Result<usize, &'static str> {
        let guard = Guard::new(max_bytes, max_depth);
        let mut l = Limited::new((), guard.clone());
        l.scan(input.as_bytes())?;
        Ok(l.depth)
    }

    const HEADER: &str =
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' id='x'>";

    #[test]
    fn ordinary_stanzas_pass_and_depth_returns() {
        let s = format!(
            "{HEADER}<message from='a@b' to='c@d' type='chat'><body>1 &lt; 2 &amp; x/y</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        );
        assert_eq!(scan_all(&s, 1 << 20, 8), Ok(1), "back at the stream root");
    }

    #[test]
    fn quoted_angle_brackets_and_slashes_do_not_confuse() {
        let s = format!("{HEADER}<message a='x/>y' b=\"<z>\"><body/></message>");
        assert_eq!(scan_all(&s, 1 << 20, 8), Ok(1));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{HEADER}{}", "<a>".repeat(100));
        assert!(scan_all(&deep, 1 << 20, 32).is_err());
        let ok = format!("{HEADER}{}{}", "<a>".repeat(20), "</a>".repeat(20));
        assert_eq!(scan_all(&ok, 1 << 20, 32), Ok(1));
    }

    #[test]
    fn doctype_and_entities_are_refused() {
        assert!(
            scan_all(
                "<?xml version='1.0'?><!DOCTYPE lol [<!ENTITY lol 'lol'>]>",
                1 << 20,
                32
            )
            .is_err()
        );
        assert!(
            scan_all(
                &format!("{HEADER}<message><!-- hi --></message>"),
                1 << 20,
                32
            )
            .is_err()
        );
    }

    #[test]
    fn size_cap_counts_since_the_last_stanza() {
        let guard = Guard::new(100, 32);
        let mut l = Limited::new((), guard.clone());
        assert!(l.scan(&[b'x'; 80]).is_ok());
        guard.stanza_done();
        assert!(l.scan(&[b'x'; 80]).is_ok(), "the counter was reset");
        assert!(l.scan(&[b'x'; 30]).is_err());
    }
}
