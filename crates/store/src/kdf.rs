//! Turning a passphrase into the database key, and recognising a wrong passphrase.
//!
//! The key is Argon2id (RFC 9106) over the passphrase with a random 16-byte salt:
//! 64 MiB of memory, 3 passes, 1 lane, 32 bytes of output ([`KdfParams::DEFAULT`];
//! RFC 9106's second recommended option with one lane, since the client opens its
//! profile on one thread). The profile header keeps the parameters, the salt and a
//! key-check value, `HMAC-SHA256(key, "backchannel/v1/key-check")`, which tells a
//! wrong passphrase apart from a damaged database before the database is touched.

use argon2::{Algorithm, Argon2, Params, Version};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Label of the key-check value.
pub const KEY_CHECK_LABEL: &[u8] = b"backchannel/v1/key-check";

/// Label of the duress-check value: a key derived (with its own salt) from the
/// duress passphrase, if one is set, matches it.
pub const DURESS_CHECK_LABEL: &[u8] = b"backchannel/v1/duress-check";

/// Argon2id parameters, as stored in the profile header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// What new profiles use.
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// Parameters read from a header must be within these bounds, so that a
    /// tampered header cannot make opening take hours or all memory, nor weaken the
    /// key below what Backchannel ever wrote.
    pub fn check(&self) -> Result<(), &'static str> {
        if !(19 * 1024..=4 * 1024 * 1024).contains(&self.memory_kib) {
            return Err("memory");
        }
        if !(2..=64).contains(&self.iterations) {
            return Err("iterations");
        }
        if !(1..=16).contains(&self.parallelism) {
            return Err("parallelism");
        }
        Ok(())
    }
}

/// Derives the 32-byte database key.
pub(crate) fn derive_key(
    passphrase: &[u8],
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, argon2::Error> {
    let params = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon.hash_password_into(passphrase, salt, key.as_mut())?;
    Ok(key)
}

/// `HMAC-SHA256(key, KEY_CHECK_LABEL)`.
pub(crate) fn key_check(key: &[u8; 32]) -> Result<[u8; 32], hmac::digest::InvalidLength> {
    check_value(key, KEY_CHECK_LABEL)
}

/// `HMAC-SHA256(key, DURESS_CHECK_LABEL)`.
pub(crate) fn duress_check(key: &[u8; 32]) -> Result<[u8; 32], hmac::digest::InvalidLength> {
    check_value(key, DURESS_CHECK_LABEL)
}

fn check_value(key: &[u8; 32], label: &[u8]) -> Result<[u8; 32], hmac::digest::InvalidLength> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)?;
    mac.update(label);
    Ok(mac.finalize().into_bytes().into())
}

/// Compares a key check in constant time.
pub(crate) fn key_check_matches(key: &[u8; 32], expected: &[u8]) -> bool {
    check_matches(key, KEY_CHECK_LABEL, expected)
}

/// Compares a duress check in constant time.
pub(crate) fn duress_check_matches(key: &[u8; 32], expected: &[u8]) -> bool {
    check_matches(key, DURESS_CHECK_LABEL, expected)
}

fn check_matches(key: &[u8; 32], label: &[u8], expected: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(label);
    mac.verify_slice(expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed with argon2-cffi (the reference C implementation)
    // and Python's hmac module.

    #[test]
    fn argon2id_known_answer_default_params() {
        let key = derive_key(
            b"correct horse battery staple",
            &(0..16).collect::<Vec<u8>>(),
            KdfParams::DEFAULT,
        )
        .unwrap();
        assert_eq!(
            hex::encode(key.as_ref()),
            "0d1a3c6523c8f06e4e0af9c515aa5b5448cfebd6838f2d52c3d8b6ef8ddc3c2e"
        );
    }

    #[test]
    fn key_check_known_answer() -> Result<(), hmac::digest::InvalidLength> {
        assert_eq!(
            hex::encode(key_check(&[0x11; 32])?),
            "ca03a9a8d5ebe0de340365570d94ec87e7db48175c1af3ca973656df0cea812c"
        );
        assert!(key_check_matches(&[0x11; 32], &key_check(&[0x11; 32])?));
        assert!(!key_check_matches(&[0x12; 32], &key_check(&[0x11; 32])?));
        Ok(())
    }

    #[test]
    fn duress_check_known_answer() -> Result<(), hmac::digest::InvalidLength> {
        assert_eq!(
            hex::encode(duress_check(&[0x11; 32])?),
            "e165334221e2e9d5630ce9a72481ea2768cae1e1282f557e5c8e953c5329b31b"
        );
        assert!(duress_check_matches(
            &[0x11; 32],
            &duress_check(&[0x11; 32])?
        ));
        // Domain separation: a key check never passes as a duress check.
        assert!(!duress_check_matches(&[0x11; 32], &key_check(&[0x11; 32])?));
        Ok(())
    }

    #[test]
    fn header_bounds() {
        assert!(KdfParams::DEFAULT.check().is_ok());
        let weak = KdfParams {
            memory_kib: 1024,
            ..KdfParams::DEFAULT
        };
        assert!(weak.check().is_err());
        let huge = KdfParams {
            iterations: 1_000_000,
            ..KdfParams::DEFAULT
        };
        assert!(huge.check().is_err());
    }
}
