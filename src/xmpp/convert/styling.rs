//! XEP-0393 message styling → HTML.

use super::escape_html;

/// Converts styled plain text to HTML; `None` when the text has no styling (then no
/// formatted body is sent).
pub fn styled_text_to_html(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut styled = false;
    let lines: Vec<&str> = text.split('\n').collect();
    let mut i = 0;
    let mut first = true;
    while i < lines.len() {
        let line = lines[i];
        if !first {
            out.push_str("<br>");
        }
        first = false;
        if line.starts_with("```") {
            // A preformatted block runs to the closing ``` (or the end of the message).
            let mut block = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].starts_with("```") {
                block.push(lines[i]);
                i += 1;
            }
            out.push_str("<pre><code>");
            out.push_str(&escape_html(&block.join("\n")));
            out.push_str("</code></pre>");
            styled = true;
            i += 1;
            first = true;
            continue;
        }
        if let Some(quoted) = line.strip_prefix('>') {
            let mut block = vec![quoted.strip_prefix(' ').unwrap_or(quoted)];
            while i + 1 < lines.len() && lines[i + 1].starts_with('>') {
                i += 1;
                let q = &lines[i][1..];
                block.push(q.strip_prefix(' ').unwrap_or(q));
            }
            out.push_str("<blockquote>");
            let inner: Vec<String> = block.iter().map(|l| spans(l).0).collect();
            out.push_str(&inner.join("<br>"));
            out.push_str("</blockquote>");
            styled = true;
            first = true;
            i += 1;
            continue;
        }
        let (html, had) = spans(line);
        styled |= had;
        out.push_str(&html);
        i += 1;
    }
    styled.then_some(out)
}

/// Longest line (bytes) whose inline spans are parsed.
const MAX_STYLED_LINE: usize = 2048;

/// Inline spans of one line: `*strong*`, `_emphasis_`, `~strike~`, `` `pre` ``. A span opens
/// on a directive not followed by whitespace and closes on the same directive not preceded by
/// whitespace; spans are never empty.
fn spans(line: &str) -> (String, bool) {
    // Long lines are not styled: finding closers is quadratic in the worst case.
    if line.len() > MAX_STYLED_LINE {
        return (escape_html(line), false);
    }
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut styled = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let tag = match c {
            '*' => Some("strong"),
            '_' => Some("em"),
            '~' => Some("del"),
            '`' => Some("code"),
            _ => None,
        };
        let opens = tag.is_some()
            && (i == 0 || chars[i - 1].is_whitespace() || "*_~`".contains(chars[i - 1]))
            && chars
                .get(i + 1)
                .is_some_and(|n| !n.is_whitespace() && *n != c);
        if let (true, Some(tag)) = (opens, tag)
            && let Some(end) =
                (i + 2..chars.len()).find(|&j| chars[j] == c && !chars[j - 1].is_whitespace())
        {
            let inner: String = chars[i + 1..end].iter().collect();
            let inner_html = if tag == "code" {
                escape_html(&inner)
            } else {
                spans(&inner).0
            };
            out.push_str(&format!("<{tag}>{inner_html}</{tag}>"));
            styled = true;
            i = end + 1;
            continue;
        }
        out.push_str(&escape_html(&c.to_string()));
        i += 1;
    }
    (out, styled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_has_no_html() {
        assert_eq!(styled_text_to_html("just words, 2 * 3 = 6"), None);
        assert_eq!(styled_text_to_html("snake_case_name"), None);
    }

    #[test]
    fn spans_become_tags() {
        assert_eq!(
            styled_text_to_html("a *bold* and _it_ and ~gone~ and `x<y`").unwrap(),
            "a <strong>bold</strong> and <em>it</em> and <del>gone</del> and <code>x&lt;y</code>"
        );
        assert_eq!(
            styled_text_to_html("*_both_*").unwrap(),
            "<strong><em>both</em></strong>"
        );
    }

    #[test]
    fn blocks_and_quotes() {
        assert_eq!(
            styled_text_to_html("see:\n```\nfn main() {}\n```\ndone").unwrap(),
            "see:<br><pre><code>fn main() {}</code></pre>done"
        );
        assert_eq!(
            styled_text_to_html("> quoted *line*\n> two\nreply").unwrap(),
            "<blockquote>quoted <strong>line</strong><br>two</blockquote>reply"
        );
    }

    #[test]
    fn hostile_lines_stay_cheap() {
        let line = " *a".repeat(80_000);
        let started = std::time::Instant::now();
        assert!(styled_text_to_html(&line).is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn html_in_text_is_escaped() {
        let html = styled_text_to_html("*<script>alert(1)</script>*").unwrap();
        assert!(!html.contains("<script>"), "{html}");
    }
}
