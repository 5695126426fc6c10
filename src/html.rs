//! HTML as senders write it, read into a small tree: html5ever's tokenizer (the WHATWG
//! tokenization algorithm: character references, attribute quoting, comments, raw text in
//! `script` and `style`) feeds a tree kept here, so that nesting is capped while reading.
//!
//! The tree is deliberately not the HTML tree-construction algorithm's: the bridge renders a
//! fragment of formatting, not a document, so it needs no implied `html`/`body`, no foster
//! parenting and no reordering of misnested formatting. An end tag closes the nearest open
//! element of its name (and any opened inside it); an end tag with no open element is ignored
//! (`</br>` is a line break, as in browsers); `<x/>` is empty; what is still open at the end is
//! closed.

use std::cell::RefCell;

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, Tag, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};

/// A node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Text, character references decoded.
    Text(String),
    /// An element: lower-case name, attributes (lower-case names, decoded values) in the order
    /// written, children.
    Elem {
        /// The element's name.
        name: String,
        /// Its attributes.
        attrs: Vec<(String, String)>,
        /// Its children.
        children: Vec<Node>,
    },
}

/// Elements that never have content.
const VOID: [&str; 4] = ["br", "hr", "img", "input"];

/// Deepest element nesting kept: deeper tags are dropped, their text kept (rendering recurses
/// over the tree, so its depth is bounded whatever the sender wrote).
pub const MAX_DEPTH: usize = 32;

/// An element still open while reading: name, attributes, children so far.
type Open = (String, Vec<(String, String)>, Vec<Node>);

/// Builds the tree from tokens; the bottom of the stack collects the top-level nodes.
struct Builder {
    stack: RefCell<Vec<Open>>,
}

impl Builder {
    fn push(&self, node: Node) {
        let mut stack = self.stack.borrow_mut();
        let top = stack.last_mut().expect("the root is never popped");
        match (top.2.last_mut(), node) {
            (Some(Node::Text(prev)), Node::Text(t)) => prev.push_str(&t),
            (_, node) => top.2.push(node),
        }
    }

    /// Closes the open elements down to the one at `pos` (which is closed too).
    fn close_to(stack: &mut Vec<Open>, pos: usize) {
        while stack.len() > pos {
            let (name, attrs, children) = stack.pop().expect("open element");
            stack
                .last_mut()
                .expect("the root is never popped")
                .2
                .push(Node::Elem {
                    name,
                    attrs,
                    children,
                });
        }
    }

    fn tag(&self, tag: Tag) -> TokenSinkResult<()> {
        let name = tag.name.to_string();
        // `</br>` is read as `<br>` (HTML's tree construction does so, as browsers did).
        if tag.kind == TagKind::EndTag && name != "br" {
            let mut stack = self.stack.borrow_mut();
            if let Some(pos) = stack.iter().rposition(|(n, _, _)| *n == name)
                && pos > 0
            {
                Self::close_to(&mut stack, pos);
            }
            return TokenSinkResult::Continue;
        }
        // The content of these is text to the tokenizer, whatever it holds.
        let raw = match &*name {
            _ if tag.self_closing => None,
            "script" => Some(RawKind::ScriptData),
            "style" | "xmp" | "iframe" | "noembed" | "noframes" => Some(RawKind::Rawtext),
            "title" | "textarea" => Some(RawKind::Rcdata),
            _ => None,
        };
        let mut stack = self.stack.borrow_mut();
        if stack.len() <= MAX_DEPTH {
            let attrs = tag
                .attrs
                .into_iter()
                .map(|a| (a.name.local.to_string(), a.value.to_string()))
                .collect();
            if VOID.contains(&&*name) || tag.self_closing {
                drop(stack);
                self.push(Node::Elem {
                    name,
                    attrs,
                    children: Vec::new(),
                });
            } else {
                stack.push((name, attrs, Vec::new()));
            }
        }
        raw.map_or(TokenSinkResult::Continue, TokenSinkResult::RawData)
    }

    fn text(&self, text: StrTendril) {
        self.push(Node::Text(text.to_string()));
    }
}

impl TokenSink for Builder {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        match token {
            Token::TagToken(tag) => return self.tag(tag),
            Token::CharacterTokens(text) => self.text(text),
            // A NUL, a comment, a doctype, a parse error: nothing to show.
            Token::NullCharacterToken
            | Token::CommentToken(_)
            | Token::DoctypeToken(_)
            | Token::ParseError(_)
            | Token::EOFToken => {}
        }
        TokenSinkResult::Continue
    }
}

/// Reads `html` into a tree (see the module's documentation for its shape).
pub fn parse(html: &str) -> Vec<Node> {
    let builder = Builder {
        stack: RefCell::new(vec![(String::new(), Vec::new(), Vec::new())]),
    };
    let tokenizer = Tokenizer::new(builder, TokenizerOpts::default());
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(html));
    // The builder never asks to stop for a script, so one feed reads everything.
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    let mut stack = tokenizer.sink.stack.into_inner();
    Builder::close_to(&mut stack, 1);
    stack.pop().map(|(_, _, c)| c).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(name: &str, children: Vec<Node>) -> Node {
        Node::Elem {
            name: name.into(),
            attrs: Vec::new(),
            children,
        }
    }

    fn text(t: &str) -> Node {
        Node::Text(t.into())
    }

    #[test]
    fn tree_shape() {
        assert_eq!(
            parse("a<B>b<i>c</b>d"),
            vec![
                text("a"),
                el("b", vec![text("b"), el("i", vec![text("c")])]),
                text("d")
            ]
        );
        assert_eq!(parse("</p>x<br>y<p/>"), {
            vec![text("x"), el("br", vec![]), text("y"), el("p", vec![])]
        });
        assert_eq!(
            parse("<a href=\"x&amp;y\" TITLE=z>t</a>"),
            vec![Node::Elem {
                name: "a".into(),
                attrs: vec![("href".into(), "x&y".into()), ("title".into(), "z".into())],
                children: vec![text("t")]
            }]
        );
        assert_eq!(
            parse("<script>if (a<b) x='</p>'</script>z"),
            vec![el("script", vec![text("if (a<b) x='</p>'")]), text("z")]
        );
        assert_eq!(parse("x<!-- <b> -->y&lt;&amp"), vec![text("xy<&")]);
    }

    #[test]
    fn nesting_is_capped() {
        let html = format!("{}deep{}", "<b>".repeat(50_000), "</b>".repeat(50_000));
        let mut nodes = parse(&html);
        let mut depth = 0;
        while let Some(Node::Elem { children, .. }) = nodes.pop() {
            depth += 1;
            nodes = children;
        }
        assert_eq!(depth, MAX_DEPTH);
    }
}
