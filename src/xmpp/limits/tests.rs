//! Tests of the inbound limits: what passes byte for byte, what is skipped and reported,
//! what ends the stream; property tests on generated streams.

use super::*;
use proptest::prelude::*;
use tokio::io::AsyncReadExt;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' id='x'>";

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
