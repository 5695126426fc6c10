//! SASL SCRAM (RFC 5802, RFC 7677) for own-account logins, client side, without channel
//! binding: SCRAM-SHA-256 when the server offers it, else SCRAM-SHA-1. The server's final
//! message is checked, so a server that does not know the password cannot fake a success.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2};

/// The hash a SCRAM mechanism uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    /// The SASL mechanism name.
    pub fn mechanism(self) -> &'static str {
        match self {
            Hash::Sha1 => "SCRAM-SHA-1",
            Hash::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// The best mechanism of those offered.
    pub fn choose<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Hash> {
        let offered: Vec<&str> = offered.into_iter().collect();
        [Hash::Sha256, Hash::Sha1]
            .into_iter()
            .find(|h| offered.contains(&h.mechanism()))
    }

    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            Hash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => hmac::HMAC_SHA256,
        }
    }

    fn pbkdf2_alg(self) -> pbkdf2::Algorithm {
        match self {
            Hash::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
            Hash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        }
    }

    fn digest_alg(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => &digest::SHA256,
        }
    }

    fn len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
        }
    }
}

/// Why a SCRAM exchange failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum ScramError {
    /// The server's message does not follow RFC 5802.
    #[error("malformed SCRAM message from the server: {0}")]
    Malformed(&'static str),
    /// The server's nonce does not extend ours.
    #[error("the server's SCRAM nonce does not start with ours")]
    Nonce,
    /// The iteration count is out of the accepted range.
    #[error("the server asks for {0} SCRAM iterations (accepted: 4096 to 1000000)")]
    Iterations(u32),
    /// The server's proof is wrong: it does not know the password.
    #[error("the server's SCRAM signature is wrong")]
    ServerSignature,
    /// The server reported an error.
    #[error("the server refused the SCRAM exchange: {0}")]
    Refused(String),
}

/// One SCRAM exchange.
pub(super) struct Scram {
    hash: Hash,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
}

/// SASLprep-lite: user names escape `=` and `,` (RFC 5802 §5.1).
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

impl Scram {
    /// Starts an exchange for `user` with a fresh random nonce.
    pub fn new(hash: Hash, user: &str, password: &str) -> Self {
        let bytes: [u8; 18] = rand::random();
        Self::with_nonce(hash, user, password, B64.encode(bytes))
    }

    fn with_nonce(hash: Hash, user: &str, password: &str, nonce: String) -> Self {
        Self {
            hash,
            password: password.to_owned(),
            client_first_bare: format!("n={},r={nonce}", saslname(user)),
            client_nonce: nonce,
            server_signature: None,
        }
    }

    /// The client's first message (the `auth` payload, before base64).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answers the server's first message with the client's final message.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, ScramError> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                Some(("m", _)) => return Err(ScramError::Malformed("mandatory extension")),
                Some(("e", v)) => return Err(ScramError::Refused(v.to_owned())),
                _ => {}
            }
        }
        let nonce = nonce.ok_or(ScramError::Malformed("no nonce"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salt = B64
            .decode(salt.ok_or(ScramError::Malformed("no salt"))?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = iterations
            .ok_or(ScramError::Malformed("no iteration count"))?
            .parse()
            .map_err(|_| ScramError::Malformed("iteration count is not a number"))?;
        if !(4096..=1_000_000).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let h = self.hash;
        let mut salted = vec![0u8; h.len()];
        pbkdf2::derive(
            h.pbkdf2_alg(),
            std::num::NonZeroU32::new(iterations).expect("checked above"),
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let salted_key = hmac::Key::new(h.hmac_alg(), &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(h.digest_alg(), client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac::sign(
            &hmac::Key::new(h.hmac_alg(), stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac::sign(&salted_key, b"Server Key");
        self.server_signature = Some(
            hmac::sign(
                &hmac::Key::new(h.hmac_alg(), server_key.as_ref()),
                auth_message.as_bytes(),
            )
            .as_ref()
            .to_vec(),
        );
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server's final message (the `success` payload).
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let expected = self
            .server_signature
            .as_ref()
            .ok_or(ScramError::Malformed("success before the challenge"))?;
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(ScramError::Refused(e.to_owned()));
        }
        let v = server_final
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or(ScramError::Malformed("no server signature"))?;
        let got = B64
            .decode(v)
            .map_err(|_| ScramError::Malformed("server signature is not base64"))?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            got.as_slice(),
            expected.as_slice(),
        )) {
            return Err(ScramError::ServerSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5802_sha1_example() {
        let mut s = Scram::with_nonce(
            Hash::Sha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL".into(),
        );
        assert_eq!(s.client_first(), "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let fin = s
            .client_final("r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        s.verify("v=rmF9pqV8S7suAoZWja4dJRkFsKQ=").unwrap();
        assert_eq!(
            s.verify("v=AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::ServerSignature)
        );
    }

    #[test]
    fn rfc7677_sha256_example() {
        let mut s = Scram::with_nonce(
            Hash::Sha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        let fin = s
            .client_final("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        s.verify("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn hostile_server_messages_are_refused() {
        let mut s = Scram::with_nonce(Hash::Sha1, "a,b=c", "pw", "abc".into());
        assert_eq!(s.client_first(), "n,,n=a=2Cb=3Dc,r=abc");
        assert_eq!(
            s.client_final("r=xyz123,s=QSXCR+Q6sek8bf92,i=4096"),
            Err(ScramError::Nonce)
        );
        assert_eq!(
            s.client_final("r=abc,s=QSXCR+Q6sek8bf92,i=4096"),
            Err(ScramError::Nonce)
        );
        assert_eq!(
            s.client_final("r=abcd,s=QSXCR+Q6sek8bf92,i=1"),
            Err(ScramError::Iterations(1))
        );
        assert_eq!(
            s.client_final("r=abcd,s=QSXCR+Q6sek8bf92,i=4294967295"),
            Err(ScramError::Iterations(u32::MAX))
        );
        assert!(matches!(
            s.client_final("r=abcd,i=4096"),
            Err(ScramError::Malformed(_))
        ));
        // A success before any challenge proves nothing.
        assert!(s.verify("v=rmF9pqV8S7suAoZWja4dJRkFsKQ=").is_err());
        assert_eq!(Hash::choose(["PLAIN", "SCRAM-SHA-1"]), Some(Hash::Sha1));
        assert_eq!(
            Hash::choose(["SCRAM-SHA-1", "SCRAM-SHA-256"]),
            Some(Hash::Sha256)
        );
        assert_eq!(Hash::choose(["PLAIN"]), None);
    }
}
