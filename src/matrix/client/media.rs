//! Media: the upload limit, uploads and (authenticated) downloads.

use ruma::UserId;
use ruma::api::client::authenticated_media::{get_content as get_media, get_media_config};
use ruma::api::client::media::create_content;

use super::send::Token;
use super::{HomeserverClient, MatrixError};
use crate::error::Reason;

impl HomeserverClient {
    /// `GET /_matrix/client/v1/media/config`: the largest upload the homeserver accepts.
    pub async fn media_upload_limit(&self) -> Result<Option<u64>, MatrixError> {
        let req = get_media_config::v1::Request::new();
        let resp = self.call("media_config", None, Token::Always, req).await?;
        Ok(Some(resp.upload_size.into()))
    }

    /// `POST /_matrix/media/v3/upload` as `as_user`: stores a file, returns its `mxc://` URI.
    pub async fn upload(
        &self,
        as_user: Option<&UserId>,
        bytes: Vec<u8>,
        content_type: &str,
        filename: &str,
    ) -> Result<String, MatrixError> {
        let mut req = create_content::v3::Request::new(bytes);
        req.content_type = Some(content_type.to_owned());
        req.filename = Some(filename.to_owned());
        let resp = self
            .call("media_upload", as_user, Token::Always, req)
            .await?;
        Ok(resp.content_uri.to_string())
    }

    /// `GET /_matrix/client/v1/media/download/{server}/{id}` (authenticated media): the file
    /// and its content type.
    pub async fn download(
        &self,
        server: &str,
        media_id: &str,
    ) -> Result<(Vec<u8>, Option<String>), MatrixError> {
        let server = ruma::OwnedServerName::try_from(server)
            .map_err(|e| MatrixError::InvalidId(Reason::because("media server name", e)))?;
        let req = get_media::v1::Request::new(media_id.to_owned(), server);
        let resp = self
            .call("media_download", None, Token::Always, req)
            .await?;
        Ok((resp.file, resp.content_type))
    }
}
