//! Login data sealed at rest: the `data` of every stored login (where connectors keep
//! passwords) is encrypted with ChaCha20-Poly1305 under a key the store never writes down.
//!
//! The sealed form replaces `data` with `{"sealed": "<hex of nonce ‖ ciphertext>"}`; the
//! login's ID, remote user and name stay readable so `logins` and `export` work without the
//! key. The key is bound to the login's place (user, network, login ID) as associated data,
//! so sealed data copied to another login does not open.
//!
//! The same key seals every inbox item (see `inbox.rs`): a Matrix message in a management
//! room may be the answer to a password prompt, so no event is written in clear.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::StoreError;

/// Why a login key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The configured secret is too short to be a key.
    #[error("must be at least 32 characters long")]
    TooShort,
    /// The system gave no random bytes (ring says no more).
    #[error("no randomness available")]
    NoRandomness,
    /// The cipher refused the key (ring says no more).
    #[error("cannot make a key")]
    Unusable,
}

/// The key that seals login data.
pub struct LoginKey(LessSafeKey);

impl std::fmt::Debug for LoginKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginKey(..)")
    }
}

impl LoginKey {
    /// A key derived from a secret string (at least 32 characters) with SHA-256.
    pub fn from_secret(secret: &str) -> Result<Self, KeyError> {
        if secret.chars().count() < 32 {
            return Err(KeyError::TooShort);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let key =
            UnboundKey::new(&CHACHA20_POLY1305, digest.as_ref()).map_err(|_| KeyError::Unusable)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// A new random secret, hex-encoded (for a generated key file).
    pub fn generate_secret() -> Result<String, KeyError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::NoRandomness)?;
        Ok(hex(&bytes))
    }

    /// Seals `plain` for `place` (associated data): nonce ‖ ciphertext ‖ tag.
    pub(super) fn seal_bytes(&self, place: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| StoreError::Sealed("no randomness available".into()))?;
        let mut buf = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place),
                &mut buf,
            )
            .map_err(|_| StoreError::Sealed("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens what [`LoginKey::seal_bytes`] made for the same `place`.
    pub(super) fn open_bytes(&self, place: &[u8], bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        if bytes.len() < NONCE_LEN + 16 {
            return Err(StoreError::Sealed("sealed data is damaged".into()));
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| StoreError::Sealed("sealed data is damaged".into()))?;
        let mut buf = ct.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(place), &mut buf)
            .map_err(|_| {
                StoreError::Sealed(
                    "sealed data does not open with this key (was bridge.login_key or login.key changed?)".into(),
                )
            })?;
        Ok(plain.to_vec())
    }

    /// Seals `plain` for the login at `place`, hex-encoded.
    pub fn seal(&self, place: &[u8], plain: &[u8]) -> Result<String, StoreError> {
        Ok(hex(&self.seal_bytes(place, plain)?))
    }

    /// Opens what [`LoginKey::seal`] made for the same `place`.
    pub fn open(&self, place: &[u8], sealed: &str) -> Result<Vec<u8>, StoreError> {
        let bytes = unhex(sealed)
            .ok_or_else(|| StoreError::Sealed("sealed login data is damaged".into()))?;
        self.open_bytes(place, &bytes)
    }

    /// A random key that lives only as long as this process (for stores that vanish with it).
    pub fn ephemeral() -> Result<Self, KeyError> {
        Self::from_secret(&Self::generate_secret()?)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_in_place() {
        let k = LoginKey::from_secret(&"k".repeat(32)).unwrap();
        let s = k.seal(b"place", b"{\"password\":\"pw\"}").unwrap();
        assert!(!s.contains("pw"));
        assert_eq!(k.open(b"place", &s).unwrap(), b"{\"password\":\"pw\"}");
        assert!(k.open(b"other", &s).is_err());
        let other = LoginKey::from_secret(&"j".repeat(32)).unwrap();
        assert!(other.open(b"place", &s).is_err());
        assert!(k.open(b"place", "zz").is_err());
        assert!(LoginKey::from_secret("short").is_err());
        assert_eq!(LoginKey::generate_secret().unwrap().len(), 64);
    }
}
