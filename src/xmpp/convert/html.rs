//! Matrix HTML → XEP-0393 styled text, and XHTML-IM → Matrix HTML (sanitised).

use xmpp_parsers::minidom::{Element, Node as XmlNode};

use super::escape_html;
use crate::html::{Node, parse};

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn render(nodes: &[Node], out: &mut String, in_pre: bool, list: Option<(&str, &mut usize)>) {
    let mut list = list;
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Elem {
                name,
                attrs,
                children,
            } => {
                let wrap = |out: &mut String, mark: &str, children: &[Node]| {
                    let mut inner = String::new();
                    render(children, &mut inner, in_pre, None);
                    let trimmed = inner.trim();
                    if trimmed.is_empty() {
                        out.push_str(&inner);
                    } else {
                        out.push_str(mark);
                        out.push_str(trimmed);
                        out.push_str(mark);
                    }
                };
                match name.as_str() {
                    "mx-reply" | "script" | "style" | "head" => {}
                    "br" => out.push('\n'),
                    "hr" => out.push_str("\n---\n"),
                    "strong" | "b" => wrap(out, "*", children),
                    "em" | "i" => wrap(out, "_", children),
                    "del" | "s" | "strike" => wrap(out, "~", children),
                    "code" if !in_pre => wrap(out, "`", children),
                    "pre" => {
                        let mut inner = String::new();
                        render(children, &mut inner, true, None);
                        if !out.is_empty() && !out.ends_with('\n') {
                            out.push('\n');
                        }
                        out.push_str("```\n");
                        out.push_str(inner.trim_end_matches('\n'));
                        out.push_str("\n```\n");
                    }
                    "blockquote" => {
                        let mut inner = String::new();
                        render(children, &mut inner, in_pre, None);
                        if !out.is_empty() && !out.ends_with('\n') {
                            out.push('\n');
                        }
                        for line in inner.trim().lines() {
                            out.push_str("> ");
                            out.push_str(line);
                            out.push('\n');
                        }
                    }
                    "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                        if !out.is_empty() && !out.ends_with('\n') {
                            out.push('\n');
                        }
                        if name.starts_with('h') {
                            wrap(out, "*", children);
                        } else {
                            render(children, out, in_pre, None);
                        }
                        out.push('\n');
                    }
                    "ul" | "ol" => {
                        let mut n = 0usize;
                        let kind = if name == "ol" { "ol" } else { "ul" };
                        render(children, out, in_pre, Some((kind, &mut n)));
                        if !out.ends_with('\n') {
                            out.push('\n');
                        }
                    }
                    "li" => {
                        if !out.is_empty() && !out.ends_with('\n') {
                            out.push('\n');
                        }
                        match list.as_mut() {
                            Some((kind, n)) if *kind == "ol" => {
                                **n += 1;
                                out.push_str(&format!("{}. ", **n));
                            }
                            _ => out.push_str("• "),
                        }
                        let mut inner = String::new();
                        render(children, &mut inner, in_pre, None);
                        out.push_str(inner.trim());
                    }
                    "a" => {
                        let mut text = String::new();
                        render(children, &mut text, in_pre, None);
                        match attr(attrs, "href") {
                            // A pill: the name it shows is what XMPP users see.
                            Some(h) if h.starts_with("https://matrix.to/#/") => out.push_str(&text),
                            Some(h) if h != text.trim() && !h.is_empty() => {
                                out.push_str(&format!("{text} ({h})"));
                            }
                            _ => out.push_str(&text),
                        }
                    }
                    _ => render(children, out, in_pre, None),
                }
            }
        }
    }
}

/// Matrix HTML → plain text with XEP-0393 styling.
pub fn html_to_styled_text(html: &str) -> String {
    let mut out = String::new();
    render(&parse(html), &mut out, false, None);
    out.trim_end_matches('\n').to_owned()
}

/// Tags kept from XHTML-IM, and the attributes kept on them.
const ALLOWED: [&str; 18] = [
    "b",
    "strong",
    "i",
    "em",
    "u",
    "s",
    "del",
    "code",
    "pre",
    "blockquote",
    "p",
    "br",
    "ul",
    "ol",
    "li",
    "a",
    "span",
    "h3",
];

fn safe_href(href: &str) -> bool {
    let lower = href.trim().to_ascii_lowercase();
    lower.starts_with("https://")
        || lower.starts_with("http://")
        || lower.starts_with("mailto:")
        || lower.starts_with("xmpp:")
}

fn sanitize_into(el: &Element, out: &mut String, depth: usize, budget: &mut usize) {
    for node in el.nodes() {
        if *budget == 0 {
            return;
        }
        match node {
            XmlNode::Text(t) => {
                let take: String = t.chars().take(*budget).collect();
                *budget -= take.chars().count();
                out.push_str(&escape_html(&take));
            }
            XmlNode::Element(child) => {
                let name = child.name().to_ascii_lowercase();
                if matches!(name.as_str(), "script" | "style" | "object" | "iframe") {
                    continue;
                }
                if depth > 20 || !ALLOWED.contains(&name.as_str()) {
                    sanitize_into(child, out, depth + 1, budget);
                    continue;
                }
                if name == "br" {
                    out.push_str("<br>");
                    continue;
                }
                out.push('<');
                out.push_str(&name);
                if name == "a"
                    && let Some(href) = child.attr("href").filter(|h| safe_href(h))
                {
                    out.push_str(&format!(" href=\"{}\"", escape_html(href)));
                }
                out.push('>');
                sanitize_into(child, out, depth + 1, budget);
                out.push_str(&format!("</{name}>"));
            }
        }
    }
}

/// XHTML-IM `<html>` payload → HTML on the Matrix allow-list: only simple formatting tags,
/// only `href` with safe schemes, no scripts or styles, at most 64 KiB of text.
pub fn sanitize_xhtml(html: &Element) -> Option<String> {
    let body = html.children().find(|c| c.name() == "body")?;
    let mut out = String::new();
    let mut budget = 64 * 1024;
    sanitize_into(body, &mut out, 0, &mut budget);
    let trimmed = out.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// The hand-written reader [`crate::html::parse`] replaced, kept until the comparison tests
/// and the benchmark have had their say.
#[doc(hidden)]
pub mod legacy {
    use crate::html::Node;
    use crate::text::decode_entities;

    const VOID: [&str; 4] = ["br", "hr", "img", "input"];

    /// Deepest element nesting kept when parsing Matrix HTML.
    const MAX_DEPTH: usize = 32;

    /// An element still open while parsing: name, attributes, children so far.
    type Open = (String, Vec<(String, String)>, Vec<Node>);

    fn parse_attrs(s: &str) -> Vec<(String, String)> {
        let mut attrs = Vec::new();
        let chars: Vec<char> = s.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            while i < chars.len() && (chars[i].is_whitespace() || chars[i] == '/') {
                i += 1;
            }
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '=' {
                i += 1;
            }
            let name: String = chars[start..i]
                .iter()
                .collect::<String>()
                .to_ascii_lowercase();
            if name.is_empty() {
                break;
            }
            let mut value = String::new();
            if i < chars.len() && chars[i] == '=' {
                i += 1;
                if i < chars.len() && (chars[i] == '"' || chars[i] == '\'') {
                    let q = chars[i];
                    i += 1;
                    let vs = i;
                    while i < chars.len() && chars[i] != q {
                        i += 1;
                    }
                    value = chars[vs..i].iter().collect();
                    i += 1;
                } else {
                    let vs = i;
                    while i < chars.len() && !chars[i].is_whitespace() {
                        i += 1;
                    }
                    value = chars[vs..i].iter().collect();
                }
            }
            attrs.push((name, decode_entities(&value)));
        }
        attrs
    }

    pub fn parse(html: &str) -> Vec<Node> {
        // A stack of open elements; the bottom one collects the top-level nodes.
        let mut stack: Vec<Open> = vec![(String::new(), Vec::new(), Vec::new())];
        let mut rest = html;
        while !rest.is_empty() {
            let Some(lt) = rest.find('<') else {
                stack
                    .last_mut()
                    .expect("root")
                    .2
                    .push(Node::Text(decode_entities(rest)));
                break;
            };
            if lt > 0 {
                stack
                    .last_mut()
                    .expect("root")
                    .2
                    .push(Node::Text(decode_entities(&rest[..lt])));
            }
            let tail = &rest[lt..];
            // Find the end of the tag, outside quotes.
            let mut quote = None;
            let end = tail.char_indices().skip(1).find(|&(_, c)| match quote {
                Some(q) if c == q => {
                    quote = None;
                    false
                }
                Some(_) => false,
                None if c == '"' || c == '\'' => {
                    quote = Some(c);
                    false
                }
                None => c == '>',
            });
            let Some((end, _)) = end else {
                stack
                    .last_mut()
                    .expect("root")
                    .2
                    .push(Node::Text(decode_entities(tail)));
                break;
            };
            let inner = &tail[1..end];
            rest = &tail[end + 1..];
            if inner.starts_with('!') || inner.starts_with('?') {
                continue;
            }
            if let Some(close) = inner.strip_prefix('/') {
                let name = close.trim().to_ascii_lowercase();
                if let Some(pos) = stack.iter().rposition(|(n, _, _)| *n == name)
                    && pos > 0
                {
                    while stack.len() > pos {
                        let (n, a, c) = stack.pop().expect("open element");
                        stack.last_mut().expect("root").2.push(Node::Elem {
                            name: n,
                            attrs: a,
                            children: c,
                        });
                    }
                }
                continue;
            }
            let (name, attrs) = match inner.find(|c: char| c.is_whitespace() || c == '/') {
                Some(p) => (&inner[..p], parse_attrs(&inner[p..])),
                None => (inner, Vec::new()),
            };
            let name = name.to_ascii_lowercase();
            if stack.len() > MAX_DEPTH {
                // Deeper nesting is flattened: the text stays, the tags go (bounded recursion
                // when rendering, whatever the sender wrote).
                continue;
            }
            if VOID.contains(&name.as_str()) || inner.ends_with('/') {
                stack.last_mut().expect("root").2.push(Node::Elem {
                    name,
                    attrs,
                    children: Vec::new(),
                });
            } else {
                stack.push((name, attrs, Vec::new()));
            }
        }
        while stack.len() > 1 {
            let (n, a, c) = stack.pop().expect("open element");
            stack.last_mut().expect("root").2.push(Node::Elem {
                name: n,
                attrs: a,
                children: c,
            });
        }
        stack.pop().map(|(_, _, c)| c).unwrap_or_default()
    }

    /// Matrix HTML → plain text with XEP-0393 styling, read by the old reader.
    pub fn html_to_styled_text(html: &str) -> String {
        let mut out = String::new();
        super::render(&parse(html), &mut out, false, None);
        out.trim_end_matches('\n').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn matrix_html_becomes_styling() {
        assert_eq!(
            html_to_styled_text(
                "<strong>bold</strong> and <em>it</em> <del>x</del> <code>a&lt;b</code>"
            ),
            "*bold* and _it_ ~x~ `a<b`"
        );
        assert_eq!(
            html_to_styled_text("<pre><code>line 1\nline 2\n</code></pre>"),
            "```\nline 1\nline 2\n```"
        );
        assert_eq!(
            html_to_styled_text("<blockquote><p>quoted</p></blockquote><p>reply</p>"),
            "> quoted\nreply"
        );
        assert_eq!(
            html_to_styled_text("<ul><li>one</li><li>two</li></ul>"),
            "• one\n• two"
        );
        assert_eq!(
            html_to_styled_text("<ol><li>one</li><li>two</li></ol>"),
            "1. one\n2. two"
        );
    }

    #[test]
    fn pills_become_names_and_links_keep_targets() {
        assert_eq!(
            html_to_styled_text(
                "hi <a href=\"https://matrix.to/#/@alice:hs\">Alice</a>, see <a href=\"https://example.org/x\">this</a>"
            ),
            "hi Alice, see this (https://example.org/x)"
        );
        assert_eq!(
            html_to_styled_text("<a href='https://e.org'>https://e.org</a>"),
            "https://e.org"
        );
    }

    #[test]
    fn reply_fallback_and_scripts_are_dropped() {
        assert_eq!(
            html_to_styled_text("<mx-reply><blockquote>old</blockquote></mx-reply>new"),
            "new"
        );
        assert_eq!(html_to_styled_text("a<script>alert(1)</script>b"), "ab");
        assert_eq!(html_to_styled_text("unclosed <b>bold"), "unclosed *bold*");
    }

    #[test]
    fn deep_nesting_is_flattened_not_recursed() {
        let html = format!("{}deep{}", "<b>".repeat(50_000), "</b>".repeat(50_000));
        let text = html_to_styled_text(&html);
        assert!(text.contains("deep"), "{}", &text[..text.len().min(200)]);
    }

    #[test]
    fn xhtml_im_is_sanitised() {
        let el = Element::from_str(
            "<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>\
             <p style='color:red' onclick='evil()'>Hi <strong>there</strong> <a href='javascript:alert(1)'>x</a> \
             <a href='https://ok.example'>ok</a><script>alert(2)</script><img src='https://t.example/p.png'/></p></body></html>",
        )
        .unwrap();
        let html = sanitize_xhtml(&el).unwrap();
        assert_eq!(
            html,
            "<p>Hi <strong>there</strong> <a>x</a> <a href=\"https://ok.example\">ok</a></p>"
        );
    }
}
