//! Join tokens: `MFT1-<sha256 of the CA's SubjectPublicKeyInfo, hex>-<id>.<secret>`.
//!
//! The pin lets a joining node check the cluster's CA before it sends anything (kubeadm
//! and k3s pin the same way); the id names the token in logs and in etcd; the secret is
//! never stored, only its SHA-256. A token has a TTL, a number of uses and the roles it
//! may join as; `rotate` revokes every outstanding token at once.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::hex;
use crate::config::model::Role;

pub const PREFIX: &str = "MFT1";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 32;
/// Lower-case letters and 2-7: 32 symbols, so random bytes map onto them without bias.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A parsed token. Its Debug and Display never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The CA pin as hex (without `sha256:`).
    pub ca_hash: String,
    pub id: String,
    secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the join token is garbled: {0} (expected {PREFIX}-<64 hex digits>-<6-character id>.<32-character secret>)")]
    Garbled(&'static str),
    #[error(
        "join token {0}: unknown to this cluster (never issued, or removed long after it expired)"
    )]
    Unknown(String),
    #[error("join token {id}: expired at {expired} (unix time); create a new one with `milvus-fleet token create`")]
    Expired { id: String, expired: u64 },
    #[error("join token {id}: used up (it allowed {uses} join(s)); create a new one with `milvus-fleet token create`")]
    UsedUp { id: String, uses: u32 },
    #[error("join token {0}: revoked")]
    Revoked(String),
    #[error("join token {0}: the secret does not match")]
    WrongSecret(String),
    #[error("join token {id}: used by {node} already; a token's use is final: a node joins again with a new token from an operator (`milvus-fleet token create`)")]
    Spent { id: String, node: String },
    #[error("node {node} was removed from this cluster; only a token made to re-admit it lets it back (`milvus-fleet token create --readmit {node}`)")]
    Removed { id: String, node: String },
    #[error("join token {id}: allows joining as {allowed}, not as {asked}")]
    WrongRole {
        id: String,
        allowed: String,
        asked: String,
    },
}

impl JoinToken {
    /// A new random token for the CA with pin `ca_pin` (`sha256:<hex>`).
    pub fn generate(ca_pin: &str) -> std::io::Result<Self> {
        Ok(Self {
            ca_hash: ca_pin.trim_start_matches("sha256:").to_owned(),
            id: random_string(ID_LEN)?,
            secret: random_string(SECRET_LEN)?,
        })
    }

    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        let rest = text
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('-'))
            .ok_or(TokenError::Garbled("it does not start with MFT1-"))?;
        let (ca_hash, rest) = rest
            .split_once('-')
            .ok_or(TokenError::Garbled("no '-' after the CA hash"))?;
        if ca_hash.len() != 64 || !ca_hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(TokenError::Garbled("the CA hash is not 64 hex digits"));
        }
        let (id, secret) = rest
            .split_once('.')
            .ok_or(TokenError::Garbled("no '.' between the id and the secret"))?;
        let plain = |s: &str, len| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
        if !plain(id, ID_LEN) {
            return Err(TokenError::Garbled(
                "the id is not 6 characters of a-z, 2-7",
            ));
        }
        if !plain(secret, SECRET_LEN) {
            return Err(TokenError::Garbled(
                "the secret is not 32 characters of a-z, 2-7",
            ));
        }
        Ok(Self {
            ca_hash: ca_hash.to_ascii_lowercase(),
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The pin in the form the PKI module prints: `sha256:<hex>`.
    pub fn ca_pin(&self) -> String {
        format!("sha256:{}", self.ca_hash)
    }

    /// `id.secret`: what the joining node presents over the pinned channel.
    pub fn credential(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The whole token, secret included: for the operator's eyes and 0600 files only.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}-{}-{}.{}", self.ca_hash, self.id, self.secret)
    }

    pub fn secret_hash(&self) -> String {
        secret_hash(&self.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({})", self.id)
    }
}

/// Splits the `id.secret` a joining node presents.
pub fn split_credential(credential: &str) -> Result<(String, String), TokenError> {
    let (id, secret) = credential
        .split_once('.')
        .ok_or(TokenError::Garbled("no '.' between the id and the secret"))?;
    Ok((id.to_owned(), secret_hash(secret)))
}

fn secret_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// A token as etcd keeps it: no secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    /// The roles a node may join as with it.
    pub roles: Vec<Role>,
    pub created_unix: u64,
    pub expires_unix: u64,
    /// Joins allowed in all.
    pub uses: u32,
    /// The nodes that joined with it.
    pub used_by: Vec<String>,
    pub revoked: bool,
    /// node -> the pin (`sha256:` of the public key) its join's certificate request carried:
    /// the same node asking again with the same key (its answer was lost) is no new use.
    #[serde(default)]
    pub keys: std::collections::BTreeMap<String, String>,
    /// Removed nodes it lets back in; any other removed node stays out.
    #[serde(default)]
    pub readmit: Vec<String>,
}

/// What `token list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenState {
    Valid,
    Expired,
    UsedUp,
    Revoked,
}

impl TokenRecord {
    pub fn state(&self, now_unix: u64) -> TokenState {
        if self.revoked {
            TokenState::Revoked
        } else if now_unix >= self.expires_unix {
            TokenState::Expired
        } else if self.used_by.len() as u64 >= u64::from(self.uses) {
            TokenState::UsedUp
        } else {
            TokenState::Valid
        }
    }

    /// Whether node `node` may join as `roles` with the secret hashing to `secret_sha256`
    /// and a certificate request for the key pinned `key_pin`. A token's use is final: the
    /// node that used it may ask again only with the same key (its first answer was lost,
    /// and its request proves it holds that key), never with another.
    pub fn admit(
        &self,
        secret_sha256: &str,
        node: &str,
        roles: &[Role],
        now_unix: u64,
        key_pin: &str,
    ) -> Result<(), TokenError> {
        let id = self.id.clone();
        // Compare hashes in constant time: the hash of a guess leaks nothing useful, but
        // there is no reason to hand out timing either.
        let same = self.secret_sha256.len() == secret_sha256.len()
            && self
                .secret_sha256
                .bytes()
                .zip(secret_sha256.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(TokenError::WrongSecret(id));
        }
        if self.revoked {
            return Err(TokenError::Revoked(id));
        }
        if now_unix >= self.expires_unix {
            return Err(TokenError::Expired {
                id,
                expired: self.expires_unix,
            });
        }
        let repeat = self.used_by.iter().any(|n| n == node);
        if repeat && self.keys.get(node).map(String::as_str) != Some(key_pin) {
            return Err(TokenError::Spent {
                id,
                node: node.to_owned(),
            });
        }
        if !repeat && self.used_by.len() as u64 >= u64::from(self.uses) {
            return Err(TokenError::UsedUp {
                id,
                uses: self.uses,
            });
        }
        if let Some(role) = roles.iter().find(|r| !self.roles.contains(r)) {
            return Err(TokenError::WrongRole {
                id,
                allowed: role_list(&self.roles),
                asked: format!("{role:?}").to_lowercase(),
            });
        }
        Ok(())
    }
}

pub fn role_list(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| format!("{r:?}").to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// `len` characters of [`ALPHABET`] from the kernel's random source.
pub(crate) fn random_string(len: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), len - filled, 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        filled += n as usize;
    }
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_survives_its_text_form_and_never_shows_its_secret() {
        let token = JoinToken::generate(PIN).unwrap();
        let parsed = JoinToken::parse(&token.reveal()).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.ca_pin(), PIN);
        assert!(!format!("{parsed:?}").contains(&token.secret));
        assert_ne!(JoinToken::generate(PIN).unwrap(), token);
    }

    #[test]
    fn garbled_tokens_say_what_is_wrong() {
        let good = JoinToken::generate(PIN).unwrap().reveal();
        for (text, says) in [
            ("", "does not start"),
            ("K10abc::server:x", "does not start"),
            (&good.replace("MFT1-0123", "MFT1-0x23"), "64 hex"),
            (&good[..good.len() - 1], "secret is not 32"),
            (&good.replace('.', ":"), "no '.'"),
        ] {
            let error = JoinToken::parse(text).unwrap_err().to_string();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }

    #[test]
    fn admission_checks_secret_revocation_expiry_uses_and_role() {
        let token = JoinToken::generate(PIN).unwrap();
        let record = TokenRecord {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            roles: vec![Role::Compute],
            created_unix: 100,
            expires_unix: 200,
            uses: 1,
            used_by: vec![],
            revoked: false,
            keys: Default::default(),
            readmit: vec![],
        };
        let (_, hash) = split_credential(&token.credential()).unwrap();
        assert_eq!(
            record.admit(&hash, "n1", &[Role::Compute], 150, "k1"),
            Ok(())
        );
        assert!(matches!(
            record.admit("00", "n1", &[Role::Compute], 150, "k1"),
            Err(TokenError::WrongSecret(_))
        ));
        assert!(matches!(
            record.admit(&hash, "n1", &[Role::Compute], 200, "k1"),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            record.admit(&hash, "n1", &[Role::Storage], 150, "k1"),
            Err(TokenError::WrongRole { .. })
        ));
        let used = TokenRecord {
            used_by: vec!["n1".into()],
            keys: [("n1".to_owned(), "k1".to_owned())].into(),
            ..record.clone()
        };
        // The same node and key again (a lost answer): no new use. Another key, the same
        // name: spent, the use is final.
        assert_eq!(used.admit(&hash, "n1", &[Role::Compute], 150, "k1"), Ok(()));
        assert!(matches!(
            used.admit(&hash, "n1", &[Role::Compute], 150, "k2"),
            Err(TokenError::Spent { .. })
        ));
        assert!(matches!(
            used.admit(&hash, "n2", &[Role::Compute], 150, "k1"),
            Err(TokenError::UsedUp { .. })
        ));
        assert_eq!(used.state(150), TokenState::UsedUp);
        let revoked = TokenRecord {
            revoked: true,
            ..record
        };
        assert!(matches!(
            revoked.admit(&hash, "n1", &[Role::Compute], 150, "k1"),
            Err(TokenError::Revoked(_))
        ));
    }
}
