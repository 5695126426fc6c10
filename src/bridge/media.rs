//! Files in messages, both ways (the rules are in `crate::media`).

use ruma::events::room::MediaSource;
use ruma::events::room::message::MessageType;
use ruma::{UInt, UserId};
use serde_json::{Value, json};
use tracing::{debug, info};

use super::Bridge;
use super::matrix_events::message_content;
use crate::media::{MediaError, msgtype};
use crate::network::{Attachment, MessageContent, MessageKind};

impl Bridge {
    /// The largest file bridged: the configured cap, lowered to the homeserver's limit.
    async fn max_media_bytes(&self) -> u64 {
        let cap = self.config.bridge.media.max_bytes;
        match self.sender.upload_limit().await {
            Some(limit) => cap.min(limit),
            None => cap,
        }
    }

    /// The Matrix content for a remote message with a file: the file downloaded, stored on
    /// the homeserver as `ghost`, and described (type, size, image dimensions). When the file
    /// cannot be bridged, a text message with the link and the reason, so nothing is lost.
    pub(super) async fn media_content(
        &self,
        ghost: &UserId,
        content: &MessageContent,
        att: &Attachment,
    ) -> Value {
        let max = self.max_media_bytes().await;
        let fetched = match self.fetcher.fetch(&att.url, max).await {
            Ok(f) => f,
            Err(e) => {
                let result = match e {
                    MediaError::Refused(_) => "refused",
                    MediaError::TooLarge(_) => "too_large",
                    MediaError::Failed(_) => "failed",
                };
                info!(error = %crate::error::chain(&e), result, "remote file not bridged");
                self.metrics.event("to_matrix", "file", result);
                let mut text = format!("📎 {} ({}) — not bridged: {e}", att.name, att.url);
                if !content.body.is_empty() {
                    text = format!("{}\n{text}", content.body);
                }
                return json!({"msgtype": "m.text", "body": text});
            }
        };
        let mimetype = att
            .mimetype
            .clone()
            .or(fetched.mimetype)
            .or_else(|| crate::media::sniff(&fetched.bytes).map(str::to_owned))
            .unwrap_or_else(|| "application/octet-stream".into());
        let size = fetched.bytes.len();
        let dims = crate::media::image_size(&fetched.bytes);
        let mxc = match self
            .sender
            .upload(ghost, fetched.bytes, &mimetype, &att.name)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %crate::error::chain(&e), "upload to the homeserver failed");
                self.metrics.event("to_matrix", "file", "upload_failed");
                return json!({"msgtype": "m.text", "body": format!("📎 {} ({}) — not bridged: the homeserver refused the upload ({e})", att.name, att.url)});
            }
        };
        let mut info = json!({"mimetype": mimetype, "size": size});
        if let Some((w, h)) = dims {
            info["w"] = json!(w);
            info["h"] = json!(h);
        }
        let caption = content.body.trim();
        let body = if caption.is_empty() {
            att.name.as_str()
        } else {
            caption
        };
        self.metrics.event("to_matrix", "file", "ok");
        json!({
            "msgtype": msgtype(&mimetype),
            "body": body,
            "filename": att.name,
            "url": mxc,
            "info": info,
        })
    }

    /// A Matrix message as networks get it. Files (`m.image`, `m.file`, `m.video`,
    /// `m.audio`) become a signed link to the bridge, when links are configured; `None` for
    /// what cannot be bridged.
    pub fn outgoing_content(&self, content: &MessageType) -> Option<MessageContent> {
        if let Some(c) = message_content(content) {
            return Some(c);
        }
        let file = file_of(content)?;
        let links = self.links.get()?;
        // Encrypted files (`file` instead of `url`) cannot be served.
        let MediaSource::Plain(mxc) = file.source else {
            return None;
        };
        let name = file.filename.unwrap_or(if file.body.is_empty() {
            "file"
        } else {
            file.body
        });
        let url = links.link(mxc.as_str(), name, super::now_ms() / 1000)?;
        Some(MessageContent {
            kind: MessageKind::Text,
            body: file.body.to_owned(),
            html: None,
            mentions: Vec::new(),
            attachment: Some(Attachment {
                url,
                name: name.to_owned(),
                mimetype: file.mimetype.map(str::to_owned),
                size: file.size.map(u64::from),
            }),
        })
    }
}

/// What the bridge reads of a file message, whatever its kind.
struct FileMessage<'a> {
    body: &'a str,
    filename: Option<&'a str>,
    source: &'a MediaSource,
    mimetype: Option<&'a str>,
    size: Option<UInt>,
}

/// The file of an `m.image`, `m.file`, `m.video` or `m.audio` message.
fn file_of(content: &MessageType) -> Option<FileMessage<'_>> {
    // The four contents are different types with the same file fields.
    macro_rules! fields {
        ($c:expr) => {{
            let info = $c.info.as_deref();
            (
                &$c.body,
                &$c.filename,
                &$c.source,
                info.and_then(|i| i.mimetype.as_deref()),
                info.and_then(|i| i.size),
            )
        }};
    }
    let (body, filename, source, mimetype, size) = match content {
        MessageType::Image(c) => fields!(c),
        MessageType::File(c) => fields!(c),
        MessageType::Video(c) => fields!(c),
        MessageType::Audio(c) => fields!(c),
        _ => return None,
    };
    Some(FileMessage {
        body,
        filename: filename.as_deref(),
        source,
        mimetype,
        size,
    })
}
