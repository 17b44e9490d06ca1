//! Sealing the pieces of an attachment into relay blobs (XChaCha20-Poly1305).
//!
//! ```text
//! blob = nonce[24] || seal(u64 index || piece[PIECE_LEN])[.. + 16]
//! ```
//!
//! Each file has a fresh random key; the nonce is random, so a blob looks like
//! any other to a relay. The piece's place is inside the sealed part (pieces may
//! reach the relay in any order over several connections), and the associated
//! data binds the format and the number of pieces: a relay cannot move, swap or
//! cut the series without the opening or the count failing (and the file's
//! SHA-256 in the descriptor checks the whole).

use backchannel_proto::attachment::PIECE_LEN;
use backchannel_proto::envelope::{BLOB_LEN, BLOB_NONCE_LEN};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Domain-separation label of attachment blobs.
const LABEL: &[u8] = b"backchannel/v1/attachment-piece";
/// Bytes of the sealed index.
const INDEX_LEN: usize = 8;
/// Bytes sealed per blob.
const SEALED_LEN: usize = INDEX_LEN + PIECE_LEN;

fn aad(count: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(LABEL.len() + 8);
    aad.extend_from_slice(LABEL);
    aad.extend_from_slice(&count.to_be_bytes());
    aad
}

/// Seals piece `index` of `count` (the file's bytes, zero-filled past its end)
/// with `nonce` (random, never reused under one key). `None` only if the AEAD
/// refuses, which it does not for this size.
pub fn seal_piece(
    key: &[u8; 32],
    nonce: [u8; BLOB_NONCE_LEN],
    index: u64,
    count: u64,
    piece: &[u8; PIECE_LEN],
) -> Option<Box<[u8; BLOB_LEN]>> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut blob = Box::new([0u8; BLOB_LEN]);
    let (head, rest) = blob.split_at_mut(BLOB_NONCE_LEN);
    head.copy_from_slice(&nonce);
    let (body, tag_out) = rest.split_at_mut(SEALED_LEN);
    let (index_out, piece_out) = body.split_at_mut(INDEX_LEN);
    index_out.copy_from_slice(&index.to_be_bytes());
    piece_out.copy_from_slice(piece);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad(count), body)
        .ok()?;
    tag_out.copy_from_slice(&tag);
    Some(blob)
}

/// Opens a blob of a file of `count` pieces: its index and piece. `None` if the
/// key is wrong, the blob was altered, or the index is out of range.
pub fn open_piece(
    key: &[u8; 32],
    count: u64,
    blob: &[u8; BLOB_LEN],
) -> Option<(u64, Box<[u8; PIECE_LEN]>)> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let (nonce, rest) = blob.split_at(BLOB_NONCE_LEN);
    let (sealed, tag) = rest.split_at(SEALED_LEN);
    let mut body = sealed.to_vec();
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            &aad(count),
            &mut body,
            chacha20poly1305::Tag::from_slice(tag),
        )
        .ok()?;
    let (index, data) = body.split_at(INDEX_LEN);
    let index = u64::from_be_bytes(index.try_into().ok()?);
    if index >= count {
        return None;
    }
    let mut piece = Box::new([0u8; PIECE_LEN]);
    piece.copy_from_slice(data);
    Some((index, piece))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use sha2::{Digest as _, Sha256};

    #[test]
    fn known_answer() {
        // Computed independently with libsodium's
        // crypto_aead_xchacha20poly1305_ietf_encrypt (PyNaCl): the same key, nonce,
        // associated data and index || piece, prefixed with the nonce.
        let key = [0x42; 32];
        let mut piece = [0u8; PIECE_LEN];
        piece[..5].copy_from_slice(b"hello");
        let blob = seal_piece(&key, [0x24; 24], 3, 7, &piece).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&blob[..])),
            "5659a26a33d876495aca9af9ee1c3f2db2ce9cd7191ec3ba6d62ce9ad2760acd"
        );
        let (index, opened) = open_piece(&key, 7, &blob).unwrap();
        assert_eq!((index, &opened[..]), (3, &piece[..]));
    }

    #[test]
    fn a_piece_opens_only_under_its_key_in_its_series() {
        let key = [9; 32];
        let piece = [0x5a; PIECE_LEN];
        let blob = seal_piece(&key, [1; 24], 1, 4, &piece).unwrap();
        assert_eq!(open_piece(&key, 4, &blob).unwrap().0, 1);
        assert!(open_piece(&key, 3, &blob).is_none(), "series cut");
        assert!(open_piece(&[8; 32], 4, &blob).is_none(), "other key");
        for byte in [0, 30, 100, BLOB_LEN - 1] {
            let mut altered = blob.clone();
            altered[byte] ^= 1;
            assert!(open_piece(&key, 4, &altered).is_none(), "byte {byte}");
        }
        // An index past the count is refused even when sealed properly.
        let beyond = seal_piece(&key, [2; 24], 9, 4, &piece).unwrap();
        assert!(open_piece(&key, 4, &beyond).is_none());
    }
}
