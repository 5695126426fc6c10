//! Inbound limits on an XMPP stream, enforced on the bytes before the XML parser sees them.
//!
//! Limits hold **per stanza**, not per link: a stanza (a child of the stream root) larger
//! than the size cap or nested deeper than the depth limit is *skipped*: none of its bytes
//! reach the parser, it is never buffered beyond the cap, and a [`Skipped`] record naming
//! the stanza (element name and the `from`, `to`, `id` and `type` of its start tag) is
//! published through the [`Guard`] so that the link can answer its sender with a stanza
//! error. The stream stays well-formed for the parser and every other stanza goes through
//! byte for byte.
//!
//! Only what breaks the stream itself fails the read with an I/O error (the link then
//! reconnects): DTDs, entity declarations, comments and CDATA (`<!`), processing
//! instructions after the stream header, a stanza's start tag too large to read its
//! attributes, or more than the size cap of text between stanzas.
//!
//! Each stanza is held until its end tag arrives and then released to the parser whole; the
//! parser could not hand it on before that anyway, and holding it is what lets a stanza that
//! goes over a limit half-way be taken back.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// At most this many skip records wait for the link; beyond, the oldest are dropped (the
/// stanzas are still skipped, only their answers are lost).
const MAX_PENDING: usize = 256;

/// The longest attribute value kept from a skipped stanza's start tag (a JID is at most
/// 3071 bytes).
const MAX_ATTR: usize = 3071;

/// Which limit a skipped stanza broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// Larger than the size cap.
    Size,
    /// Nested deeper than the depth limit.
    Depth,
}

/// A stanza skipped for breaking a limit: what its start tag said, for the error answer.
/// Values are decoded from the markup; a value longer than a JID can be is left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Element name as written (`message`, `presence`, `iq`, or anything else).
    pub name: String,
    /// The `from` attribute.
    pub from: Option<String>,
    /// The `to` attribute.
    pub to: Option<String>,
    /// The `id` attribute.
    pub id: Option<String>,
    /// The `type` attribute.
    pub kind: Option<String>,
    /// The limit it broke.
    pub broken: Broken,
}

impl Skipped {
    /// The text of the stanza error that answers it.
    pub fn reason(&self) -> &'static str {
        match self.broken {
            Broken::Size => "stanza too large for this gateway; nothing of it was delivered",
            Broken::Depth => {
                "stanza nested too deeply for this gateway; nothing of it was delivered"
            }
        }
    }

    /// Logs the skip, once, where the link that read it handles it; `link` names that link.
    pub fn log(&self, link: &'static str) {
        tracing::warn!(
            element = %self.name,
            from = self.from.as_deref().unwrap_or(""),
            id = self.id.as_deref().unwrap_or(""),
            reason = self.reason(),
            link,
            "skipped an inbound stanza over the limits"
        );
    }
}

#[derive(Debug, Default)]
struct Shared {
    skipped: Mutex<VecDeque<Skipped>>,
    notify: Notify,
    /// Set before a stream restart (after SASL): the next read starts a new document.
    restart: AtomicBool,
}

/// The limits of a stream, and the records of the stanzas it skipped.
#[derive(Clone, Debug)]
pub struct Guard {
    shared: Arc<Shared>,
    max_bytes: usize,
    max_depth: usize,
}

impl Guard {
    /// Limits of `max_bytes` per stanza and `max_depth` nesting (the stream root counts as 1,
    /// a stanza as 2).
    pub fn new(max_bytes: usize, max_depth: usize) -> Self {
        Self {
            shared: Arc::default(),
            max_bytes,
            max_depth: max_depth.max(2),
        }
    }

    /// Takes the records of the stanzas skipped so far, oldest first.
    pub fn take_skipped(&self) -> Vec<Skipped> {
        self.shared
            .skipped
            .lock()
            .expect("skipped lock")
            .drain(..)
            .collect()
    }

    /// Resolves once a stanza was skipped since the last call (or a record is waiting).
    pub async fn skipped(&self) {
        self.shared.notify.notified().await;
    }

    /// Announces a stream restart (RFC 6120 §6.4.6): the server's next bytes open a new
    /// stream, so the scanner starts again at the document's start. Call it before sending
    /// the new stream header.
    pub fn restart(&self) {
        self.shared.restart.store(true, Ordering::Release);
    }

    fn publish(&self, record: Skipped) {
        {
            let mut queue = self.shared.skipped.lock().expect("skipped lock");
            if queue.len() >= MAX_PENDING {
                queue.pop_front();
            }
            queue.push_back(record);
        }
        self.shared.notify.notify_one();
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
    /// Inside `<? ... ?>` (the XML declaration).
    Instruction,
}

/// What happens to the bytes of the current stanza.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Between stanzas: bytes go to the parser.
    Pass,
    /// A `<` at the stream root: a stanza or the stream's end tag, held until known.
    Maybe,
    /// Inside a stanza: held until its end.
    Hold,
    /// Inside a stanza over a limit: discarded until its end.
    Skip,
}

/// A byte stream with the limits applied to what is read.
#[derive(Debug)]
pub struct Limited<S> {
    inner: S,
    guard: Guard,
    state: State,
    depth: usize,
    mode: Mode,
    /// The current stanza's bytes while it is held.
    held: Vec<u8>,
    /// Where the current stanza's start tag ends in `held` (0 while it is open).
    tag_end: usize,
    /// The record of the stanza being skipped.
    skipping: Option<Skipped>,
    /// Bytes of text at the stream root since the last stanza.
    gap: usize,
    /// Released bytes not yet handed to the reader, and how many of them were.
    out: Vec<u8>,
    out_pos: usize,
    scratch: Box<[u8]>,
}

impl<S> Limited<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, guard: Guard) -> Self {
        Self {
            inner,
            guard,
            state: State::Text,
            depth: 0,
            mode: Mode::Pass,
            held: Vec::new(),
            tag_end: 0,
            skipping: None,
            gap: 0,
            out: Vec::new(),
            out_pos: 0,
            scratch: vec![0; 8192].into_boxed_slice(),
        }
    }

    /// The wrapped stream (to secure it with TLS, say). Bytes read but not yet handed on
    /// are dropped: call it only when the peer waits for us (after `<proceed/>`).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Feeds bytes to the scanner, appending what the parser may see to `out`; an error
    /// names the broken stream-level rule.
    fn scan(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        for &b in bytes {
            let was = self.state;
            self.state = self.step(b)?;
            match self.mode {
                Mode::Pass => {
                    if self.depth == 1 && self.state == State::Open {
                        self.mode = Mode::Maybe;
                        self.held.clear();
                        self.held.push(b);
                        continue;
                    }
                    if self.depth <= 1 && self.state == State::Text {
                        self.gap += 1;
                        if self.gap > self.guard.max_bytes {
                            return Err(
                                "more text between stanzas than networks.xmpp.max_stanza_bytes",
                            );
                        }
                    }
                    self.out.push(b);
                }
                Mode::Maybe => {
                    self.held.push(b);
                    match self.state {
                        State::StartTag { .. } => {
                            self.mode = Mode::Hold;
                            self.tag_end = 0;
                            self.gap = 0;
                        }
                        _ => {
                            // The stream's end tag.
                            self.out.append(&mut self.held);
                            self.mode = Mode::Pass;
                        }
                    }
                }
                Mode::Hold => {
                    self.held.push(b);
                    if self.tag_end == 0 && self.depth >= 2 && self.state == State::Text {
                        self.tag_end = self.held.len();
                    }
                    if self.depth == 1 && self.state == State::Text {
                        // The stanza ended (end tag, or a self-closing start tag).
                        self.out.append(&mut self.held);
                        self.mode = Mode::Pass;
                        continue;
                    }
                    let broken = if self.depth > self.guard.max_depth {
                        Some(Broken::Depth)
                    } else if self.held.len() > self.guard.max_bytes {
                        Some(Broken::Size)
                    } else {
                        None
                    };
                    if let Some(broken) = broken {
                        if self.tag_end == 0 {
                            return Err(
                                "a stanza start tag larger than networks.xmpp.max_stanza_bytes",
                            );
                        }
                        self.skipping = Some(record(&self.held[..self.tag_end], broken));
                        self.held = Vec::new();
                        self.mode = Mode::Skip;
                    }
                }
                Mode::Skip => {
                    if self.depth == 1 && self.state == State::Text && was != State::Text {
                        self.mode = Mode::Pass;
                        if let Some(r) = self.skipping.take() {
                            self.guard.publish(r);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One byte of the markup state machine, with the depth.
    fn step(&mut self, b: u8) -> Result<State, &'static str> {
        Ok(match (self.state, b) {
            (State::Text, b'<') => State::Open,
            (State::Text, _) => State::Text,
            (State::Open, b'/') => State::EndTag,
            (State::Open, b'?') if self.depth == 0 => State::Instruction,
            (State::Open, b'?') => return Err("processing instructions are refused"),
            (State::Open, b'!') => return Err("DTDs, entities, comments and CDATA are refused"),
            (State::Open, _) => {
                // The limit is checked by `scan`, which skips the stanza.
                self.depth += 1;
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
            (State::StartTag { slash }, b' ' | b'\t' | b'\r' | b'\n') => State::StartTag { slash },
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
        })
    }
}

/// The record of a skipped stanza from its start tag (`<name attr='v' ...>`).
fn record(tag: &[u8], broken: Broken) -> Skipped {
    let text = String::from_utf8_lossy(tag);
    let inner = text
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim_end_matches('/');
    let name_end = inner
        .find(|c: char| c.is_ascii_whitespace())
        .unwrap_or(inner.len());
    let mut skipped = Skipped {
        name: inner[..name_end].chars().take(64).collect(),
        from: None,
        to: None,
        id: None,
        kind: None,
        broken,
    };
    let mut rest = &inner[name_end..];
    loop {
        rest = rest.trim_start();
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let Some(q) = after.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            break;
        };
        let Some(close) = after[1..].find(q) else {
            break;
        };
        let raw = &after[1..1 + close];
        rest = &after[close + 2..];
        if raw.len() > MAX_ATTR {
            continue;
        }
        let value = Some(crate::text::decode_entities(raw));
        match key {
            "from" => skipped.from = value,
            "to" => skipped.to = value,
            "id" => skipped.id = value,
            "type" => skipped.kind = value,
            _ => {}
        }
    }
    skipped
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.guard.shared.restart.swap(false, Ordering::AcqRel) {
            this.state = State::Text;
            this.depth = 0;
            this.mode = Mode::Pass;
            this.held = Vec::new();
            this.skipping = None;
            this.gap = 0;
        }
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            // Nothing released yet: read more. A read that releases nothing (a stanza
            // still held, or skipped) reads again rather than report 0 bytes, which is EOF.
            let mut scratch = std::mem::take(&mut this.scratch);
            let mut rb = ReadBuf::new(&mut scratch);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let filled = rb.filled().len();
            let result = match polled {
                Poll::Ready(Ok(())) if filled == 0 => Some(Poll::Ready(Ok(()))),
                Poll::Ready(Ok(())) => match this.scan(&scratch[..filled]) {
                    Ok(()) => None,
                    Err(why) => Some(Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        why,
                    )))),
                },
                other => Some(other),
            };
            this.scratch = scratch;
            if let Some(r) = result {
                return r;
            }
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
mod tests;
