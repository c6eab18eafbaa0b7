//! Credentials at rest: sealed with AES-256-GCM under a master key that lives only in a file
//! (`--secrets-key-file`), never in the database.
//!
//! A sealed value is `v1.<key id>.<base64 nonce ‖ ciphertext ‖ tag>`. The key id is a short
//! fingerprint of the master key, so a value sealed under an older key is recognised and opened
//! with it while the master key is rotated (`--previous-secrets-key-file`, then `connections
//! rekey`). The record's id is bound in as associated data: a sealed credential copied onto
//! another connection's row does not open.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use sha2::{Digest as _, Sha256};

use crate::secret::Secret;

const VERSION: &str = "v1";

/// One master key.
pub struct MasterKey {
    id: String,
    key: LessSafeKey,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// A key from 32 bytes, written as 64 hex digits or as base64 (surrounding whitespace is
    /// ignored). `openssl rand -hex 32` makes one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| e.to_string())?
        } else {
            B64.decode(text)
                .map_err(|_| "expected 32 bytes as 64 hex digits or base64".to_owned())?
        };
        if bytes.len() != 32 {
            return Err(format!(
                "expected 32 bytes (64 hex digits or base64), got {}",
                bytes.len()
            ));
        }
        let digest = Sha256::digest(&bytes);
        let id = hex::encode(&digest[..4]);
        let key =
            UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "not an AES-256 key".to_owned())?;
        Ok(Self {
            id,
            key: LessSafeKey::new(key),
        })
    }

    /// Reads a key file; errors name the file, never its content.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The key's fingerprint, as stored with every value sealed under it.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The current master key, and the previous one while rotating.
#[derive(Debug)]
pub struct Vault {
    current: MasterKey,
    previous: Option<MasterKey>,
}

/// Why a sealed value does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed under master key {0}, which is not configured")]
    UnknownKey(String),
    #[error("the sealed value is damaged or belongs to another record")]
    Damaged,
}

impl Vault {
    pub fn new(current: MasterKey, previous: Option<MasterKey>) -> Self {
        Self { current, previous }
    }

    pub fn current_key_id(&self) -> &str {
        self.current.id()
    }

    /// Seals `plain` for the record `record_id`.
    pub fn seal(&self, record_id: &str, plain: &Secret) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        // The system's random source failing is not something to carry on after.
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random source works");
        let mut data = plain.expose().as_bytes().to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(record_id.as_bytes()),
                &mut data,
            )
            .expect("AES-GCM seals any length we store");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{VERSION}.{}.{}", self.current.id, B64.encode(out))
    }

    /// Opens a value sealed for `record_id` under the current or the previous key.
    pub fn open(&self, record_id: &str, sealed: &str) -> Result<Secret, OpenError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(VERSION), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(OpenError::Damaged);
        };
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == key_id)
            .ok_or_else(|| OpenError::UnknownKey(key_id.to_owned()))?;
        let raw = B64.decode(body).map_err(|_| OpenError::Damaged)?;
        if raw.len() < NONCE_LEN {
            return Err(OpenError::Damaged);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Damaged)?;
        let mut data = rest.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(record_id.as_bytes()), &mut data)
            .map_err(|_| OpenError::Damaged)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| OpenError::Damaged)?;
        Ok(Secret::opaque(text))
    }

    /// Whether `sealed` is under the current key (else `connections rekey` reseals it).
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed
            .split('.')
            .nth(1)
            .is_some_and(|id| id == self.current.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn key(hex: &str) -> MasterKey {
        MasterKey::parse(hex).expect("key")
    }

    #[test]
    fn seals_and_opens_without_showing_the_value() {
        let vault = Vault::new(key(A), None);
        let sealed = vault.seal("conn_1", &Secret::opaque("sk_test_abc".into()));
        assert!(!sealed.contains("sk_test_abc"));
        assert!(sealed.starts_with(&format!("v1.{}.", vault.current_key_id())));
        assert_eq!(
            vault.open("conn_1", &sealed).expect("opens").expose(),
            "sk_test_abc"
        );
        // Two seals of one value differ (fresh nonce).
        assert_ne!(
            sealed,
            vault.seal("conn_1", &Secret::opaque("sk_test_abc".into()))
        );
    }

    #[test]
    fn a_value_moved_to_another_record_or_tampered_with_does_not_open() {
        let vault = Vault::new(key(A), None);
        let sealed = vault.seal("conn_1", &Secret::opaque("sk_test_abc".into()));
        assert_eq!(
            vault.open("conn_2", &sealed).err(),
            Some(OpenError::Damaged)
        );
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(
            vault.open("conn_1", &tampered).err(),
            Some(OpenError::Damaged)
        );
        assert_eq!(
            vault.open("conn_1", "garbage").err(),
            Some(OpenError::Damaged)
        );
    }

    #[test]
    fn rotation_opens_old_values_with_the_previous_key() {
        let old = Vault::new(key(A), None);
        let sealed = old.seal("conn_1", &Secret::opaque("sk".into()));
        let rotating = Vault::new(key(B), Some(key(A)));
        assert!(!rotating.is_current(&sealed));
        assert_eq!(
            rotating.open("conn_1", &sealed).expect("opens").expose(),
            "sk"
        );
        let resealed = rotating.seal("conn_1", &Secret::opaque("sk".into()));
        assert!(rotating.is_current(&resealed));
        let after = Vault::new(key(B), None);
        assert!(matches!(
            after.open("conn_1", &sealed),
            Err(OpenError::UnknownKey(_))
        ));
        assert_eq!(
            after.open("conn_1", &resealed).expect("opens").expose(),
            "sk"
        );
    }

    #[test]
    fn key_files_are_32_bytes() {
        assert!(MasterKey::parse(A).is_ok());
        assert!(MasterKey::parse(&B64.encode([7u8; 32])).is_ok());
        let short = MasterKey::parse("abcd").expect_err("short");
        assert!(short.contains("32 bytes"), "{short}");
        assert!(MasterKey::parse(&B64.encode([7u8; 16])).is_err());
    }
}
