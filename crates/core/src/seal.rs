//! Sealing fragments into blobs and opening them (XChaCha20-Poly1305).
//!
//! The key is the epoch's envelope key ([`crate::derive::envelope_key`]); the nonce is
//! random and travels at the front of the blob. A relay sees only random-looking
//! records of one size, with nothing tying the blobs of one channel together.

use backchannel_proto::envelope::{BLOB_LEN, BLOB_NONCE_LEN, FRAGMENT_LEN};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Associated data of every blob: binds the format version.
const BLOB_AAD: &[u8] = b"backchannel/v1/blob";

/// Seals one encoded fragment. `None` only if the AEAD refuses, which it does not
/// for inputs of this size.
pub fn seal(
    key: &[u8; 32],
    nonce: [u8; BLOB_NONCE_LEN],
    fragment: &[u8; FRAGMENT_LEN],
) -> Option<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: fragment,
                aad: BLOB_AAD,
            },
        )
        .ok()?;
    let mut blob = Vec::with_capacity(BLOB_LEN);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&sealed);
    (blob.len() == BLOB_LEN).then_some(blob)
}

/// Opens a blob with one key; `None` if the key is wrong or the blob was altered.
pub fn open(key: &[u8; 32], blob: &[u8]) -> Option<Vec<u8>> {
    if blob.len() != BLOB_LEN {
        return None;
    }
    let (nonce, sealed) = blob.split_at(BLOB_NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: BLOB_AAD,
            },
        )
        .ok()
}

/// Seals a message of any length under `key`, binding `aad`: nonce || ciphertext.
pub fn seal_message(
    key: &[u8; 32],
    aad: &[u8],
    nonce: [u8; 24],
    plaintext: &[u8],
) -> Option<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .ok()?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Some(out)
}

/// Opens [`seal_message`] output; `None` if the key or `aad` is wrong or it was
/// altered.
pub fn open_message(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 24 {
        return None;
    }
    let (nonce, body) = sealed.split_at(24);
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let fragment = [7u8; FRAGMENT_LEN];
        let blob = seal(&[1; 32], [2; BLOB_NONCE_LEN], &fragment).unwrap();
        assert_eq!(blob.len(), BLOB_LEN);
        assert_eq!(open(&[1; 32], &blob).unwrap(), fragment.to_vec());
        assert!(open(&[9; 32], &blob).is_none(), "wrong key");
        for i in [0, 30, BLOB_LEN - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(open(&[1; 32], &bad).is_none(), "flipped byte {i}");
        }
        assert!(open(&[1; 32], &blob[1..]).is_none(), "short");
    }
}
