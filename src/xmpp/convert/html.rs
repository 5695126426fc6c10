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

    /// The classes of input on which the hand-written reader html5ever replaced was wrong.
    #[test]
    fn html_is_read_as_browsers_read_it() {
        for (html, text) in [
            // A comment ends at `-->`, not at the first `>`.
            ("a<!-- x > y -->b", "ab"),
            // `</br>` is a line break.
            ("a</br>b", "a\nb"),
            // Script content is text: markup inside cannot close elements around it.
            ("<b>x<script>if (a</b>) {}</script>y</b>", "*xy*"),
            // An unquoted attribute value runs to the `>`, a `/` at its end included.
            ("<a href=https://e.org/>x</a>", "x (https://e.org/)"),
            // Every character reference, with or without `;` where HTML allows.
            ("&copy;&eacute &nbsp;&notanentity;", "©é \u{a0}¬anentity;"),
            // `<` not followed by a tag name is text.
            ("a < b <> c", "a < b <> c"),
            // CR and CRLF are line ends; NUL is dropped.
            ("a\r\nb\rc\0d", "a\nb\ncd"),
        ] {
            assert_eq!(html_to_styled_text(html), text, "{html:?}");
        }
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
