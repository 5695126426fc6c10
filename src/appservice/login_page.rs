//! The login page, `/_isthmus/login/{token}`: where a user types the values of a login step
//! that asks for a secret, so that the secret never enters Matrix (see `bridge/login_page.rs`).
//!
//! Plain server-rendered HTML that works without JavaScript; every value written into it is
//! escaped. It forbids everything it does not use (`default-src 'none'`, its one inline style
//! allowed by hash, forms posting only to itself, no framing), is never cached and sends no
//! referrer. The token in the address is what the form posts back, so a page from elsewhere
//! cannot post a login without knowing it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::AppState;
use crate::bridge::{LINK_LIFETIME, PageView};
use crate::network::LoginField;
use crate::text::escape_markup as esc;

/// The largest form accepted, in bytes.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// The page's only style, allowed by its hash in the Content-Security-Policy.
const STYLE: &str = "body{font-family:sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem;line-height:1.4}label{display:block;margin:1rem 0 .25rem}input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}button{margin-top:1.5rem;padding:.5rem 1.5rem;font-size:1rem}.error{color:#a00;font-weight:bold}.note{color:#555;font-size:.9rem}";

/// `GET`: the form for the current step.
pub async fn show(State(state): State<Arc<AppState>>, Path(token): Path<String>) -> Response {
    page(state.bridge.login_page(&token).await)
}

/// `POST`: the values of the current step (`application/x-www-form-urlencoded`).
pub async fn submit(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    form: Result<axum::Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let Ok(axum::Form(pairs)) = form else {
        return page(PageView::Closed(
            "The form could not be read. Open the link again and submit the form.".into(),
        ));
    };
    let mut values = BTreeMap::new();
    for (k, v) in pairs {
        values.entry(k).or_insert(v);
    }
    page(state.bridge.submit_login_page(&token, values).await)
}

/// The Content-Security-Policy of the page.
pub fn content_security_policy() -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(hash.as_ref());
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
}

fn page(view: PageView) -> Response {
    let status = match view {
        PageView::Closed(_) => StatusCode::GONE,
        _ => StatusCode::OK,
    };
    let mut response = (status, render(&view)).into_response();
    let headers = response.headers_mut();
    let fixed: [(header::HeaderName, &'static str); 6] = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::PRAGMA, "no-cache"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy()) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// The HTML of a view; every value from elsewhere is escaped.
pub fn render(view: &PageView) -> String {
    let (title, body) = match view {
        PageView::Form {
            network,
            instructions,
            fields,
            error,
        } => {
            let mut body = format!("<h1>Log in to {}</h1>\n", esc(network));
            if let Some(e) = error {
                body.push_str(&format!(
                    "<p class=\"error\" role=\"alert\">{}</p>\n",
                    esc(e)
                ));
            }
            if !instructions.is_empty() {
                body.push_str(&format!("<p>{}</p>\n", esc(instructions)));
            }
            // No action: the form posts back to this very address, token included.
            body.push_str("<form method=\"post\">\n");
            let has_secret = fields.iter().any(|f| f.secret);
            let first_plain = fields.iter().position(|f| !f.secret);
            for (i, f) in fields.iter().enumerate() {
                body.push_str(&field_html(i, f, has_secret && first_plain == Some(i)));
            }
            body.push_str("<button type=\"submit\">Log in</button>\n</form>\n");
            body.push_str(&format!(
                "<p class=\"note\">This page goes straight to the bridge; what you type here never passes through Matrix. The link works for {} minutes, until you are logged in.</p>\n",
                LINK_LIFETIME.as_secs() / 60
            ));
            (format!("Log in to {network}"), body)
        }
        PageView::Done(name) => (
            "Logged in".to_owned(),
            format!(
                "<h1>Logged in</h1>\n<p role=\"status\">Logged in as {}. You can close this page.</p>\n",
                esc(name)
            ),
        ),
        PageView::Closed(why) => (
            "Login link closed".to_owned(),
            format!(
                "<h1>Login link closed</h1>\n<p class=\"error\" role=\"alert\">{}</p>\n",
                esc(why)
            ),
        ),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<meta name=\"referrer\" content=\"no-referrer\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n",
        esc(&title)
    )
}

fn field_html(index: usize, field: &LoginField, is_account: bool) -> String {
    let (kind, autocomplete) = if field.secret {
        ("password", "current-password")
    } else if is_account {
        ("text", "username")
    } else {
        ("text", "off")
    };
    let id = format!("f{index}");
    format!(
        "<label for=\"{id}\">{}</label>\n<input id=\"{id}\" name=\"{}\" type=\"{kind}\" autocomplete=\"{autocomplete}\" autocapitalize=\"none\" spellcheck=\"false\">\n",
        esc(&field.name),
        esc(&field.id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn form(network: &str, name: &str, error: Option<&str>) -> PageView {
        PageView::Form {
            network: network.into(),
            instructions: "Log in.".into(),
            fields: vec![
                LoginField::new("username", name, false),
                LoginField::new("password", "password", true),
            ],
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn the_password_field_is_a_password_for_the_password_manager() {
        let html = render(&form("Loopback", "username", None));
        assert!(
            html.contains("name=\"password\" type=\"password\" autocomplete=\"current-password\"")
        );
        assert!(html.contains("name=\"username\" type=\"text\" autocomplete=\"username\""));
        assert!(html.contains("<form method=\"post\">"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn the_inline_style_is_the_one_the_policy_allows() {
        let html = render(&PageView::Done("bob".into()));
        assert!(html.contains(&format!("<style>{STYLE}</style>")));
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none'; style-src 'sha256-"));
        assert!(csp.contains("form-action 'self'"));
        // The hash of the style, as a browser computes it (base64 of SHA-256).
        let hash = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(hash.as_ref());
        assert!(csp.contains(&b64));
    }

    proptest! {
        /// Whatever the network, a field label or an error says, it stays text: no tag,
        /// attribute or character reference of its own reaches the page.
        #[test]
        fn outside_text_never_becomes_markup(s in "\\PC*") {
            let html = render(&form(&s, &s, Some(&s)));
            let clean = render(&form("N", "L", Some("E")));
            let strip = |h: &str| h.matches(['<', '>', '"']).count();
            prop_assert_eq!(strip(&html), strip(&clean));
            prop_assert_eq!(
                strip(&render(&PageView::Done(s.clone()))),
                strip(&render(&PageView::Done("x".into())))
            );
            prop_assert_eq!(
                strip(&render(&PageView::Closed(s.clone()))),
                strip(&render(&PageView::Closed("x".into())))
            );
        }
    }
}
