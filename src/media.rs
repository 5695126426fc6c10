//! Files between Matrix and the networks, network-neutral.
//!
//! - In: a connector names a file by URL ([`crate::network::Attachment`]); [`Fetcher`]
//!   downloads it with a size cap and a timeout, and refuses loopback, private, link-local and
//!   other non-public addresses (checked for every redirect, and the checked address is the
//!   one connected to, so DNS cannot switch it) unless the host is allowed in the config.
//! - Out: a Matrix file goes to networks as a link to the bridge's own listener,
//!   `{public_url}/_isthmus/media/{server}/{id}/{expires}/{signature}/{name}`, signed with
//!   HMAC-SHA256 and expiring; the bridge serves it from the homeserver's authenticated media.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ring::hmac;

use crate::error::Reason;

/// Why a file was not bridged.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The URL is not one the bridge fetches.
    #[error("{0}")]
    Refused(#[source] Reason),
    /// The file is larger than allowed.
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    /// The download failed.
    #[error("download failed: {0}")]
    Failed(#[source] Reason),
}

/// A downloaded file.
#[derive(Debug)]
pub struct Fetched {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The content type the server gave (without parameters), if any.
    pub mimetype: Option<String>,
}

/// Downloads remote files under the bridge's rules.
#[derive(Clone, Debug)]
pub struct Fetcher {
    allow_hosts: Vec<String>,
    timeout: Duration,
}

impl Fetcher {
    /// A fetcher that lets `allow_hosts` resolve to non-public addresses.
    pub fn new(allow_hosts: &[String]) -> Self {
        Self {
            allow_hosts: allow_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Downloads `url` (http or https), following up to 5 redirects, reading at most
    /// `max_bytes`.
    pub async fn fetch(&self, url: &str, max_bytes: u64) -> Result<Fetched, MediaError> {
        let mut url = reqwest::Url::parse(url)
            .map_err(|e| MediaError::Refused(Reason::because("not a valid URL", e)))?;
        for _ in 0..=5 {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(MediaError::Refused(
                    format!(
                        "only http and https links are fetched, not {}",
                        url.scheme()
                    )
                    .into(),
                ));
            }
            let host = url
                .host_str()
                .ok_or_else(|| MediaError::Refused("the link has no host".into()))?
                .trim_matches(['[', ']'])
                .to_ascii_lowercase();
            let port = url.port_or_known_default().unwrap_or(80);
            let addr = self.resolve(&host, port).await?;
            // The client connects to the address just checked, never to a new lookup.
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(10))
                .timeout(self.timeout)
                .resolve(&host, addr)
                .user_agent(concat!("isthmus/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| MediaError::Failed(Reason::from_error(e)))?;
            let mut resp = client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| MediaError::Failed(Reason::from_error(e.without_url())))?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| MediaError::Failed("a redirect without Location".into()))?;
                url = url
                    .join(location)
                    .map_err(|e| MediaError::Failed(Reason::because("bad redirect", e)))?;
                continue;
            }
            if !status.is_success() {
                return Err(MediaError::Failed(
                    format!("the server answered {status}").into(),
                ));
            }
            if resp.content_length().is_some_and(|n| n > max_bytes) {
                return Err(MediaError::TooLarge(max_bytes));
            }
            let mimetype = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(|v| v.trim().to_ascii_lowercase())
                .filter(|v| !v.is_empty() && v != "application/octet-stream");
            let mut bytes = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| MediaError::Failed(Reason::from_error(e.without_url())))?
            {
                if bytes.len() as u64 + chunk.len() as u64 > max_bytes {
                    return Err(MediaError::TooLarge(max_bytes));
                }
                bytes.extend_from_slice(&chunk);
            }
            return Ok(Fetched { bytes, mimetype });
        }
        Err(MediaError::Failed("too many redirects".into()))
    }

    /// The address to connect to for `host`: the first one it resolves to, when every one is
    /// public or the host is allowed.
    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, MediaError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| MediaError::Failed(Reason::because(format!("cannot resolve {host}"), e)))?
            .collect();
        let first = *addrs
            .first()
            .ok_or_else(|| MediaError::Failed(format!("{host} has no address").into()))?;
        if self.allow_hosts.iter().any(|h| h == host) {
            return Ok(first);
        }
        if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(MediaError::Refused(
                format!(
                    "{host} resolves to a non-public address ({}); not fetched",
                    bad.ip()
                )
                .into(),
            ));
        }
        Ok(first)
    }
}

/// Whether an address is on the public internet (not loopback, private, link-local,
/// carrier-grade NAT, multicast, documentation or otherwise reserved).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || seg[0] == 0x2001 && seg[1] == 0x0db8
                || seg[0] == 0x0064 && seg[1] == 0xff9b)
        }
    }
}

/// A file name from the last path segment of a URL (percent-decoding undone, control
/// characters and path separators removed); `file` when there is none.
pub fn name_from_url(url: &str) -> String {
    let last = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .unwrap_or("");
    let bytes = last.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            last.get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    let name: String = String::from_utf8_lossy(&out)
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '/' | '\\'))
        .take(120)
        .collect();
    if name.trim().is_empty() || name == "." || name == ".." {
        "file".into()
    } else {
        name
    }
}

/// The Matrix message type for a content type.
pub fn msgtype(mimetype: &str) -> &'static str {
    match mimetype.split('/').next().unwrap_or("") {
        "image" => "m.image",
        "video" => "m.video",
        "audio" => "m.audio",
        _ => "m.file",
    }
}

/// A content type guessed from the first bytes, for files served without one.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    let b = bytes;
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if b.starts_with(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if b.len() > 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some("image/webp")
    } else if b.starts_with(b"%PDF-") {
        Some("application/pdf")
    } else {
        None
    }
}

/// Width and height of a PNG, GIF or JPEG image, read from its header.
pub fn image_size(b: &[u8]) -> Option<(u32, u32)> {
    let be32 = |i: usize| Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?));
    let be16 = |i: usize| {
        Some(u32::from(u16::from_be_bytes(
            b.get(i..i + 2)?.try_into().ok()?,
        )))
    };
    let le16 = |i: usize| {
        Some(u32::from(u16::from_le_bytes(
            b.get(i..i + 2)?.try_into().ok()?,
        )))
    };
    if b.starts_with(b"\x89PNG\r\n\x1a\n") && b.get(12..16) == Some(b"IHDR") {
        return Some((be32(16)?, be32(20)?));
    }
    if b.starts_with(b"GIF8") {
        return Some((le16(6)?, le16(8)?));
    }
    if b.starts_with(b"\xff\xd8") {
        // Walk the segments to the first start-of-frame.
        let mut i = 2;
        while i + 9 < b.len() {
            if b[i] != 0xff {
                return None;
            }
            let marker = b[i + 1];
            let len = be16(i + 2)? as usize;
            if matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc) {
                return Some((be16(i + 7)?, be16(i + 5)?));
            }
            i += 2 + len;
        }
    }
    None
}

/// Signs and checks links to Matrix files.
#[derive(Clone)]
pub struct Links {
    key: hmac::Key,
    base: String,
    lifetime_s: u64,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").field("base", &self.base).finish()
    }
}

/// The path prefix of file links on the bridge's listener.
pub const LINK_PATH: &str = "/_isthmus/media";

impl Links {
    /// Links under `public_url`, signed with a key derived from `secret`.
    pub fn new(public_url: &str, secret: &str, lifetime_s: u64) -> Self {
        let derived = ring::digest::digest(
            &ring::digest::SHA256,
            format!("isthmus media links\u{1f}{secret}").as_bytes(),
        );
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            base: public_url.trim_end_matches('/').to_owned(),
            lifetime_s,
        }
    }

    fn signature(&self, server: &str, id: &str, expires: u64) -> String {
        let tag = hmac::sign(
            &self.key,
            format!("{server}\u{1f}{id}\u{1f}{expires}").as_bytes(),
        );
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A link to `mxc://server/id` valid for the configured lifetime from `now_s`.
    pub fn link(&self, mxc: &str, name: &str, now_s: u64) -> Option<String> {
        let (server, id) = mxc.strip_prefix("mxc://")?.split_once('/')?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:[]".contains(&b))
        };
        if !ok(server) || !ok(id) {
            return None;
        }
        let expires = now_s + self.lifetime_s;
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(80)
            .collect();
        let name = if name.is_empty() { "file".into() } else { name };
        Some(format!(
            "{}{LINK_PATH}/{server}/{id}/{expires}/{}/{name}",
            self.base,
            self.signature(server, id, expires)
        ))
    }

    /// Checks a link's parts; `Err` says why it is refused.
    pub fn check(
        &self,
        server: &str,
        id: &str,
        expires: u64,
        signature: &str,
        now_s: u64,
    ) -> Result<(), &'static str> {
        let expected = self.signature(server, id, expires);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            signature.as_bytes(),
        )) {
            return Err("bad signature");
        }
        if expires < now_s {
            return Err("expired");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_recognised() {
        for bad in [
            "127.0.0.1",
            "127.0.0.2",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in ["93.184.216.34", "2606:2800:220:1::1", "::ffff:8.8.8.8"] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let f = Fetcher::new(&[]);
        let err = f.fetch("http://127.0.0.1:9/x.png", 10).await.unwrap_err();
        assert!(matches!(err, MediaError::Refused(_)), "{err}");
        let err = f.fetch("file:///etc/passwd", 10).await.unwrap_err();
        assert!(matches!(err, MediaError::Refused(_)), "{err}");
        let err = f.fetch("http://[::1]:9/", 10).await.unwrap_err();
        assert!(matches!(err, MediaError::Refused(_)), "{err}");
        // Allowed: the refusal is gone, the (closed) port fails the download instead.
        let f = Fetcher::new(&["127.0.0.1".into()]);
        let err = f.fetch("http://127.0.0.1:9/x.png", 10).await.unwrap_err();
        assert!(matches!(err, MediaError::Failed(_)), "{err}");
    }

    #[test]
    fn image_headers() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&3u32.to_be_bytes());
        png.extend_from_slice(&2u32.to_be_bytes());
        assert_eq!(image_size(&png), Some((3, 2)));
        assert_eq!(sniff(&png), Some("image/png"));
        let gif = b"GIF89a\x05\x00\x07\x00";
        assert_eq!(image_size(gif), Some((5, 7)));
        let jpeg = [
            0xff, 0xd8, 0xff, 0xe0, 0x00, 0x04, 0x00, 0x00, 0xff, 0xc0, 0x00, 0x11, 0x08, 0x00,
            0x20, 0x00, 0x40, 0x03, 0, 0, 0,
        ];
        assert_eq!(image_size(&jpeg), Some((64, 32)));
        assert_eq!(image_size(b"\xff\xd8\xff"), None);
        assert_eq!(image_size(b"nothing"), None);
        assert_eq!(msgtype("image/png"), "m.image");
        assert_eq!(msgtype("application/pdf"), "m.file");
        assert_eq!(name_from_url("https://x/up/a%20b.png?sig=1"), "a b.png");
        assert_eq!(name_from_url("https://x/"), "file");
        assert_eq!(name_from_url("https://x/%2e%2e"), "file");
        assert_eq!(name_from_url("https://x/a%2Fb"), "ab");
    }

    #[test]
    fn links_are_signed_and_expire() {
        let l = Links::new("https://b.example/", "secret", 100);
        let link = l
            .link("mxc://hs.example/abcDEF", "my photo.png", 1000)
            .unwrap();
        assert!(link.starts_with("https://b.example/_isthmus/media/hs.example/abcDEF/1100/"));
        assert!(link.ends_with("/my_photo.png"));
        let sig = link.split('/').nth(8).unwrap();
        assert!(l.check("hs.example", "abcDEF", 1100, sig, 1000).is_ok());
        assert_eq!(
            l.check("hs.example", "abcDEF", 1100, sig, 1101),
            Err("expired")
        );
        assert_eq!(
            l.check("hs.example", "abcDEG", 1100, sig, 1000),
            Err("bad signature")
        );
        assert_eq!(
            l.check("hs.example", "abcDEF", 9999, sig, 1000),
            Err("bad signature")
        );
        let other = Links::new("https://b.example/", "other", 100);
        assert!(
            other
                .check("hs.example", "abcDEF", 1100, sig, 1000)
                .is_err()
        );
        assert!(l.link("mxc://hs/../etc", "x", 0).is_none());
        assert!(l.link("https://x/y", "x", 0).is_none());
    }
}
