//! A SIP dialog kept by hand: small and serialisable, so presence subscriptions survive a
//! restart of the bridge.

use rsipstack::sip::Header;
use serde::{Deserialize, Serialize};

/// One side of a SIP dialog, kept by hand: enough to send in-dialog requests and to match
/// incoming ones, and serialisable so it survives a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our URI (From of our requests).
    pub local_uri: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's URI (To of our requests).
    pub remote_uri: String,
    /// The peer's tag; empty until the dialog is confirmed.
    pub remote_tag: String,
    /// Where in-dialog requests go (the peer's Contact).
    pub remote_target: String,
    /// Route set, in the order of the Route headers to send.
    pub routes: Vec<String>,
    /// Our last CSeq.
    pub cseq: u32,
    /// When the subscription ends, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// The lifetime the other side granted, in seconds (0 until known).
    #[serde(default)]
    pub granted_s: u64,
}

impl Dialog {
    /// From header value for our requests.
    pub fn local_header(&self) -> String {
        format!("<{}>;tag={}", self.local_uri, self.local_tag)
    }

    /// To header value for our requests.
    pub fn remote_header(&self) -> String {
        if self.remote_tag.is_empty() {
            format!("<{}>", self.remote_uri)
        } else {
            format!("<{}>;tag={}", self.remote_uri, self.remote_tag)
        }
    }

    /// The next CSeq.
    pub fn next_cseq(&mut self) -> u32 {
        self.cseq += 1;
        self.cseq
    }

    /// Route headers for an in-dialog request.
    pub fn route_headers(&self) -> Vec<Header> {
        self.routes
            .iter()
            .map(|r| Header::Route(format!("<{r}>").into()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialog_headers() {
        let mut d = Dialog {
            call_id: "c".into(),
            local_uri: "sip:a@gw".into(),
            local_tag: "1".into(),
            remote_uri: "sip:b@x".into(),
            remote_tag: String::new(),
            remote_target: "sip:b@1.2.3.4".into(),
            routes: vec!["sip:proxy;lr".into()],
            cseq: 1,
            expires_at_ms: 0,
            granted_s: 0,
        };
        assert_eq!(d.remote_header(), "<sip:b@x>");
        d.remote_tag = "2".into();
        assert_eq!(d.remote_header(), "<sip:b@x>;tag=2");
        assert_eq!(d.local_header(), "<sip:a@gw>;tag=1");
        assert_eq!(d.next_cseq(), 2);
        assert_eq!(d.route_headers().len(), 1);
    }
}
