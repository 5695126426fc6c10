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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;

    const HEADER: &str =
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' id='x'>";

    /// Scans `input` in one piece: what the parser sees, and what was skipped.
    fn scan_all(
        input: &str,
        max_bytes: usize,
        max_depth: usize,
    ) -> Result<(String, Vec<Skipped>), &'static str> {
        let guard = Guard::new(max_bytes, max_depth);
        let mut l = Limited::new((), guard.clone());
        l.scan(input.as_bytes())?;
        Ok((String::from_utf8(l.out).unwrap(), guard.take_skipped()))
    }

    /// A reader handing out `chunks` one per read, then EOF.
    struct Chunks(VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut c) = self.0.pop_front() {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c[..n]);
                if n < c.len() {
                    self.0.push_front(c.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn read_through(chunks: Vec<Vec<u8>>, guard: &Guard) -> io::Result<Vec<u8>> {
        let mut l = Limited::new(Chunks(chunks.into()), guard.clone());
        let mut out = Vec::new();
        l.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[test]
    fn ordinary_stanzas_pass_unchanged() {
        let s = format!(
            "{HEADER}<message from='a@b' to='c@d' type='chat'><body>1 &lt; 2 &amp; x/y</body><active xmlns='http://jabber.org/protocol/chatstates'/></message> <presence/></stream:stream>"
        );
        assert_eq!(scan_all(&s, 1 << 20, 8), Ok((s.clone(), vec![])));
    }

    #[test]
    fn quoted_angle_brackets_and_slashes_do_not_confuse() {
        let s = format!("{HEADER}<message a='x/>y' b=\"<z>\"><body/></message>");
        assert_eq!(scan_all(&s, 1 << 20, 8), Ok((s.clone(), vec![])));
    }

    #[test]
    fn a_deep_stanza_is_skipped_and_reported_and_the_next_one_passes() {
        let deep = format!(
            "<message from='u@h/r' to='x@gw' id='d1' type='chat'>{}{}</message>",
            "<a>".repeat(100),
            "</a>".repeat(100)
        );
        let good = "<message from='u@h/r' to='x@gw' id='ok'><body>hi</body></message>";
        let (out, skipped) = scan_all(&format!("{HEADER}{deep}{good}"), 1 << 20, 32).unwrap();
        assert_eq!(out, format!("{HEADER}{good}"));
        assert_eq!(
            skipped,
            vec![Skipped {
                name: "message".into(),
                from: Some("u@h/r".into()),
                to: Some("x@gw".into()),
                id: Some("d1".into()),
                kind: Some("chat".into()),
                broken: Broken::Depth,
            }]
        );
        let ok = format!("{HEADER}<m>{}{}</m>", "<a>".repeat(20), "</a>".repeat(20));
        assert_eq!(scan_all(&ok, 1 << 20, 32).unwrap().1, vec![]);
    }

    #[test]
    fn a_large_stanza_is_skipped_and_reported_with_decoded_attributes() {
        let big = format!(
            "<iq from=\"a&amp;b@h\" id='q&apos;1' type='set'><x>{}</x></iq>",
            "y".repeat(10_000)
        );
        let (out, skipped) = scan_all(&format!("{HEADER}{big}<presence/>"), 4096, 32).unwrap();
        assert_eq!(out, format!("{HEADER}<presence/>"));
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].name, "iq");
        assert_eq!(skipped[0].from.as_deref(), Some("a&b@h"));
        assert_eq!(skipped[0].id.as_deref(), Some("q'1"));
        assert_eq!(skipped[0].to, None);
        assert_eq!(skipped[0].broken, Broken::Size);
    }

    #[test]
    fn stream_level_violations_end_the_stream() {
        assert!(
            scan_all(
                "<?xml version='1.0'?><!DOCTYPE lol [<!ENTITY lol 'lol'>]>",
                1 << 20,
                32
            )
            .is_err()
        );
        for bad in [
            "<message><!-- hi --></message>",
            "<message><![CDATA[x]]></message>",
            "<?evil?>",
            "<message><?evil?></message>",
        ] {
            assert!(
                scan_all(&format!("{HEADER}{bad}"), 1 << 20, 32).is_err(),
                "{bad}"
            );
        }
        // A start tag too large to read its attributes.
        let tag = format!("{HEADER}<message a='{}'>", "x".repeat(5000));
        assert!(scan_all(&tag, 4096, 32).is_err());
        // Endless text between stanzas.
        assert!(scan_all(&format!("{HEADER}{}", " ".repeat(5000)), 4096, 32).is_err());
    }

    #[test]
    fn size_counts_per_stanza() {
        let one = format!("<message>{}</message>", "x".repeat(3000));
        let s = format!("{HEADER}{}", one.repeat(10));
        let (out, skipped) = scan_all(&s, 4096, 32).unwrap();
        assert_eq!(out, s);
        assert!(skipped.is_empty());
    }

    #[test]
    fn a_restart_begins_a_new_document() {
        let guard = Guard::new(4096, 8);
        let first = format!("{HEADER}<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut l = Limited::new(
                Chunks(vec![first.clone().into_bytes()].into()),
                guard.clone(),
            );
            let mut buf = vec![0; 4096];
            let n = l.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], first.as_bytes());
            guard.restart();
            l.inner
                .0
                .push_back(format!("{HEADER}<features/>").into_bytes());
            let mut out = Vec::new();
            l.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, format!("{HEADER}<features/>").into_bytes());
        });
    }

    #[tokio::test]
    async fn a_skipped_stanza_is_never_a_zero_byte_read() {
        // The only stanza is skipped: the reader must see the rest, not an early EOF.
        let guard = Guard::new(4096, 4);
        let deep = format!(
            "<message id='1'>{}{}</message>",
            "<a>".repeat(9),
            "</a>".repeat(9)
        );
        let chunks = vec![
            HEADER.as_bytes().to_vec(),
            deep.into_bytes(),
            b"<iq id='2'/>".to_vec(),
        ];
        let out = read_through(chunks, &guard).await.unwrap();
        assert_eq!(out, format!("{HEADER}<iq id='2'/>").into_bytes());
        assert_eq!(guard.take_skipped().len(), 1);
    }

    /// One stanza of a generated stream.
    #[derive(Clone, Debug)]
    struct Gen {
        name: &'static str,
        id: u32,
        /// Nesting levels below the stanza.
        depth: usize,
        /// Text bytes in the innermost element.
        text: usize,
        self_closing: bool,
    }

    fn stanza_text(g: &Gen) -> String {
        let attrs = format!(
            "from='u{0}@h/r' to=\"g@gw\" id='s{0}' odd='a>b/c' other=\"x'/>\"",
            g.id
        );
        if g.self_closing {
            return format!("<{} {attrs}/>", g.name);
        }
        let mut s = format!("<{} {attrs}>", g.name);
        for i in 0..g.depth {
            s.push_str(&format!("<e{i} k='v/>'>"));
        }
        s.push_str("<empty/>");
        s.push_str(&"t&amp;>".repeat(g.text / 7));
        for i in (0..g.depth).rev() {
            s.push_str(&format!("</e{i}>"));
        }
        s.push_str(&format!("</{}>", g.name));
        s
    }

    fn any_stanza() -> impl Strategy<Value = Gen> {
        (
            prop::sample::select(vec!["message", "presence", "iq", "x:other"]),
            0usize..40,
            prop::sample::select(vec![0usize, 10, 600, 3000, 6000]),
            any::<bool>(),
        )
            .prop_map(|(name, depth, text, self_closing)| Gen {
                name,
                id: 0,
                depth,
                text,
                self_closing,
            })
    }

    proptest! {
        #[test]
        fn good_stanzas_pass_byte_identical_and_each_bad_one_is_reported_once(
            mut stanzas in prop::collection::vec(any_stanza(), 1..25),
            cuts in prop::collection::vec(1usize..700, 1..40),
        ) {
            const MAX_BYTES: usize = 4096;
            const MAX_DEPTH: usize = 16;
            let mut input = HEADER.to_owned();
            let mut expected = HEADER.to_owned();
            let mut bad = Vec::new();
            for (i, g) in stanzas.iter_mut().enumerate() {
                g.id = i as u32;
                let text = stanza_text(g);
                // The stanza is depth 2; its deepest element is `<empty/>` below `depth` levels.
                let too_deep = !g.self_closing && g.depth + 3 > MAX_DEPTH;
                let too_big = text.len() > MAX_BYTES;
                input.push_str(&text);
                input.push(' ');
                if too_deep || too_big {
                    bad.push((g.name.to_owned(), format!("s{i}")));
                } else {
                    expected.push_str(&text);
                }
                expected.push(' ');
            }
            input.push_str("</stream:stream>");
            expected.push_str("</stream:stream>");
            // Cut the input into reads of random sizes.
            let bytes = input.into_bytes();
            let mut chunks = Vec::new();
            let mut at = 0;
            let mut k = 0;
            while at < bytes.len() {
                let n = cuts[k % cuts.len()].min(bytes.len() - at);
                chunks.push(bytes[at..at + n].to_vec());
                at += n;
                k += 1;
            }
            let guard = Guard::new(MAX_BYTES, MAX_DEPTH);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let out = rt.block_on(read_through(chunks, &guard)).unwrap();
            prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
            let skipped: Vec<(String, String)> = guard
                .take_skipped()
                .into_iter()
                .map(|s| (s.name, s.id.unwrap_or_default()))
                .collect();
            prop_assert_eq!(skipped, bad);
        }
    }
}
