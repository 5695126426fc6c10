//! Conversion benchmark: the cost of one conversion of the formats the bridge reads, for a
//! few typical inputs. Run with:
//!
//!     cargo bench --bench convert
//!
//! Each case runs for about `CONVERT_MS` milliseconds (default 500) after a warm-up and
//! prints the mean nanoseconds per conversion. The inputs: Matrix HTML → XEP-0393 text (a
//! short formatted message, a reply with its fallback, a long formatted text, very deep
//! nesting), HTML → plain text for SIP, and PIDF documents (the bridge's own, and one as
//! another client writes it).

#[path = "support/env.rs"]
mod env;

use std::hint::black_box;
use std::time::{Duration, Instant};

use isthmus::fuzz;
use isthmus::network::{Presence, PresenceState};
use isthmus::xmpp::convert::html_to_styled_text;

/// Runs `f` on `input` for about `budget`, and returns the mean time per call.
fn measure(input: &str, budget: Duration, f: fn(&str) -> usize) -> Duration {
    // Warm-up, and a first estimate of how many calls fit in the budget.
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < budget / 10 || calls == 0 {
        black_box(f(black_box(input)));
        calls += 1;
    }
    let batch = calls.max(1);
    let start = Instant::now();
    let mut total = 0u32;
    while start.elapsed() < budget {
        for _ in 0..batch {
            black_box(f(black_box(input)));
        }
        total += batch;
    }
    start.elapsed() / total
}

fn short() -> String {
    "<strong>Hi</strong> <em>there</em>, see <a href=\"https://example.org/x\">this</a> \
     and <code>a &lt; b</code> &amp; more"
        .to_owned()
}

fn reply() -> String {
    "<mx-reply><blockquote><a href=\"https://matrix.to/#/!r:hs/$e\">In reply to</a> \
     <a href=\"https://matrix.to/#/@alice:hs\">@alice:hs</a><br>What about tomorrow?\
     </blockquote></mx-reply>Fine by me:<ul><li>10:00 at <b>the office</b></li>\
     <li>lunch after</li></ul><pre><code>let x = 1;\nlet y = x &lt;&lt; 2;\n</code></pre>"
        .to_owned()
}

fn long() -> String {
    let para = "<p>Lorem <b>ipsum</b> dolor sit amet, <i>consectetur</i> adipiscing elit, \
                <a href=\"https://example.org/a?b=c&amp;d=e\">sed do</a> eiusmod tempor \
                &lt;incididunt&gt; ut labore et dolore magna aliqua.</p>";
    para.repeat(16 * 1024 / para.len())
}

fn deep() -> String {
    format!("{}deep{}", "<b>".repeat(5_000), "</b>".repeat(5_000))
}

fn own_pidf() -> String {
    let p = Presence {
        state: PresenceState::Unavailable,
        status: Some("In a meeting until 3 & then out".into()),
    };
    String::from_utf8(fuzz::pidf("sip:alice@example.org", &p)).expect("UTF-8")
}

fn other_pidf() -> String {
    r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
  xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" xmlns:c="urn:ietf:params:xml:ns:pidf:cipid"
  entity="sip:bob@example.org">
  <!-- a desk phone and a softphone -->
  <tuple id="t1"><status><basic>closed</basic></status><contact priority="0.8">sip:bob@10.0.0.1</contact></tuple>
  <tuple id="t2"><status><basic>open</basic></status><note xml:lang="en">At my desk</note></tuple>
  <dm:person id="p1"><rpid:activities><rpid:on-the-phone/></rpid:activities>
    <c:homepage>https://example.org/bob</c:homepage></dm:person>
</presence>"#
        .to_owned()
}

fn main() {
    let smoke = env::smoke();
    let budget = Duration::from_millis(if smoke {
        1
    } else {
        env::num("CONVERT_MS", 500) as u64
    });
    type Case = (&'static str, fn() -> String, fn(&str) -> usize);
    let cases: [Case; 9] = [
        ("html → XMPP text, short", short, |h| {
            html_to_styled_text(h).len()
        }),
        ("html → XMPP text, reply", reply, |h| {
            html_to_styled_text(h).len()
        }),
        ("html → XMPP text, 16 KiB", long, |h| {
            html_to_styled_text(h).len()
        }),
        ("html → XMPP text, 5,000 deep", deep, |h| {
            html_to_styled_text(h).len()
        }),
        ("html → SIP text, short", short, |h| {
            fuzz::html_to_text(h).len()
        }),
        ("html → SIP text, reply", reply, |h| {
            fuzz::html_to_text(h).len()
        }),
        ("html → SIP text, 16 KiB", long, |h| {
            fuzz::html_to_text(h).len()
        }),
        ("PIDF, the bridge's own", own_pidf, |x| {
            usize::from(fuzz::parse_pidf(x.as_bytes()).is_ok())
        }),
        ("PIDF, another client's", other_pidf, |x| {
            usize::from(fuzz::parse_pidf(x.as_bytes()).is_ok())
        }),
    ];
    println!("{:<40} {:>8} {:>12}", "conversion", "bytes", "ns/conv");
    for (name, input, f) in cases {
        let input = input();
        let per = measure(&input, budget, f);
        println!("{name:<40} {:>8} {:>12}", input.len(), per.as_nanos());
    }
}
