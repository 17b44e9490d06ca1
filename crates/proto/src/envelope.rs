//! Delivery envelopes: how an end-to-end message becomes fixed-size relay records.
//!
//! A relay stores and forwards *blobs*, every one exactly [`BLOB_LEN`] bytes. A blob
//! is an AEAD-sealed fragment (sealing is done by `core`, with a key only channel
//! members hold):
//!
//! ```text
//! blob     = nonce[24] || seal(fragment)[FRAGMENT_LEN + 16]
//! fragment = u8 version (1) || u8 kind || message_id[16] || u16 index || u16 count
//!            || u32 total_len || chunk[CHUNK_LEN]
//! ```
//!
//! The kind says what the reassembled content is ([`ContentKind`]).
//!
//! A message of `total_len` bytes is cut into `count` chunks, `count` rounded up to
//! a size class — a power of two up to 16, then a multiple of 16 — so the number of
//! blobs reveals only the class. The last chunks are zero-filled; decoding checks
//! the filler is zero.

use crate::DecodeError;
use crate::codec::{Reader, Writer};

/// Size of every record a relay stores and of the blob inside every send or
/// delivery frame.
pub const BLOB_LEN: usize = 3840;

/// Nonce bytes at the start of a blob (XChaCha20-Poly1305).
pub const BLOB_NONCE_LEN: usize = 24;

/// Authentication tag bytes at the end of a blob.
pub const BLOB_TAG_LEN: usize = 16;

/// Plaintext bytes inside one blob.
pub const FRAGMENT_LEN: usize = BLOB_LEN - BLOB_NONCE_LEN - BLOB_TAG_LEN;

const FRAGMENT_HEADER_LEN: usize = 1 + 1 + 16 + 2 + 2 + 4;

/// Message bytes carried by one fragment.
pub const CHUNK_LEN: usize = FRAGMENT_LEN - FRAGMENT_HEADER_LEN;

/// Most fragments one message may have.
pub const MAX_FRAGMENTS: usize = 1024;

/// Longest message an envelope can carry (about 3.7 MiB).
pub const MAX_MESSAGE_LEN: usize = MAX_FRAGMENTS * CHUNK_LEN;

const FRAGMENT_VERSION: u8 = 1;

/// The number of fragments a message needing `needed` of them is sent as: the
/// next power of two up to 16, then the next multiple of 16.
pub fn fragment_class(needed: usize) -> usize {
    if needed <= 16 {
        needed.next_power_of_two()
    } else {
        needed.div_ceil(16) * 16
    }
}

/// What a reassembled envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentKind {
    /// An MLS message of the channel.
    Mls,
    /// An MLS welcome (re-adding a member whose view forked).
    Welcome,
    /// A signed epoch announcement (see `integrity`).
    Announcement,
    /// A signed request to be re-added (see `integrity`).
    Rejoin,
    /// A key package asking to join through an invite link (see `link`).
    JoinRequest,
    /// The inviter's answer to a join request (see `link`).
    JoinReply,
}

impl ContentKind {
    fn code(self) -> u8 {
        match self {
            ContentKind::Mls => 1,
            ContentKind::Welcome => 2,
            ContentKind::Announcement => 3,
            ContentKind::Rejoin => 4,
            ContentKind::JoinRequest => 5,
            ContentKind::JoinReply => 6,
        }
    }

    fn from_code(code: u8) -> Result<Self, DecodeError> {
        Ok(match code {
            1 => ContentKind::Mls,
            2 => ContentKind::Welcome,
            3 => ContentKind::Announcement,
            4 => ContentKind::Rejoin,
            5 => ContentKind::JoinRequest,
            6 => ContentKind::JoinReply,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// One piece of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// What the whole message is.
    pub kind: ContentKind,
    /// Random identifier shared by all fragments of one message.
    pub message_id: [u8; 16],
    /// Position of this fragment, from 0.
    pub index: u16,
    /// Number of fragments of the message ([`fragment_class`] of what it needs).
    pub count: u16,
    /// Length of the whole message.
    pub total_len: u32,
    /// This fragment's share of the message, without filler.
    pub chunk: Vec<u8>,
}

impl Fragment {
    /// Cuts a message into fragments. Fails if the message is longer than
    /// [`MAX_MESSAGE_LEN`].
    pub fn split(
        kind: ContentKind,
        message_id: [u8; 16],
        message: &[u8],
    ) -> Result<Vec<Self>, DecodeError> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLong);
        }
        let count = fragment_class(message.len().div_ceil(CHUNK_LEN).max(1));
        let total_len = message.len() as u32;
        Ok((0..count)
            .map(|index| {
                let start = (index * CHUNK_LEN).min(message.len());
                let end = ((index + 1) * CHUNK_LEN).min(message.len());
                Self {
                    kind,
                    message_id,
                    index: index as u16,
                    count: count as u16,
                    total_len,
                    chunk: message.get(start..end).unwrap_or_default().to_vec(),
                }
            })
            .collect())
    }

    /// Length of the chunk this fragment must carry, given its header.
    fn expected_chunk_len(index: u16, total_len: u32) -> usize {
        let start = usize::from(index) * CHUNK_LEN;
        (total_len as usize).saturating_sub(start).min(CHUNK_LEN)
    }

    /// The fixed-size plaintext that gets sealed into a blob.
    pub fn encode(&self) -> [u8; FRAGMENT_LEN] {
        let mut w = Writer::with_capacity(FRAGMENT_LEN);
        w.u8(FRAGMENT_VERSION);
        w.u8(self.kind.code());
        w.put(&self.message_id);
        w.u16(self.index);
        w.u16(self.count);
        w.u32(self.total_len);
        w.put(&self.chunk);
        let mut out = [0u8; FRAGMENT_LEN];
        for (o, b) in out.iter_mut().zip(&w.bytes) {
            *o = *b;
        }
        out
    }

    /// Decodes and checks a fragment plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != FRAGMENT_LEN {
            return Err(DecodeError::WrongSize);
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != FRAGMENT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let kind = ContentKind::from_code(r.u8()?)?;
        let message_id = r.array()?;
        let index = r.u16()?;
        let count = r.u16()?;
        let total_len = r.u32()?;
        // The count must be the one the sender's `split` gives for this length: one
        // definition for both sides, so no length is cut by one and refused by the
        // other, and no sender chooses its count on the wire.
        let needed = (total_len as usize).div_ceil(CHUNK_LEN).max(1);
        if needed > MAX_FRAGMENTS || usize::from(count) != fragment_class(needed) || index >= count
        {
            return Err(DecodeError::InvalidValue("fragment count"));
        }
        let chunk = r.take(Self::expected_chunk_len(index, total_len))?.to_vec();
        r.zero_padding()?;
        r.finish()?;
        Ok(Self {
            kind,
            message_id,
            index,
            count,
            total_len,
            chunk,
        })
    }

    /// Puts complete fragments back together. All must share one message id,
    /// count and length, and every index must appear exactly once.
    pub fn join(fragments: &[Self]) -> Result<Vec<u8>, DecodeError> {
        let first = fragments.first().ok_or(DecodeError::Truncated)?;
        if fragments.len() != usize::from(first.count) {
            return Err(DecodeError::Truncated);
        }
        let mut ordered: Vec<Option<&Self>> = vec![None; fragments.len()];
        for f in fragments {
            let same = f.message_id == first.message_id
                && f.kind == first.kind
                && f.count == first.count
                && f.total_len == first.total_len;
            let slot = ordered.get_mut(usize::from(f.index));
            match (same, slot) {
                (true, Some(slot @ None)) => *slot = Some(f),
                _ => return Err(DecodeError::InvalidValue("fragment set")),
            }
        }
        let mut out = Vec::with_capacity(first.total_len as usize);
        for f in ordered.into_iter().flatten() {
            out.extend_from_slice(&f.chunk);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_are_consistent() {
        assert_eq!(FRAGMENT_LEN, 3800);
        assert_eq!(CHUNK_LEN, 3774);
        assert_eq!(
            Fragment::split(ContentKind::Mls, [0; 16], &[])
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            Fragment::split(ContentKind::Mls, [0; 16], &[1; CHUNK_LEN])
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            Fragment::split(ContentKind::Mls, [0; 16], &[1; CHUNK_LEN + 1])
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            Fragment::split(ContentKind::Mls, [0; 16], &[1; 2 * CHUNK_LEN + 1])
                .unwrap()
                .len(),
            4
        );
        assert!(Fragment::split(ContentKind::Mls, [0; 16], &vec![1; MAX_MESSAGE_LEN + 1]).is_err());
    }

    #[test]
    fn known_encoding() {
        let f = &Fragment::split(ContentKind::Mls, [5; 16], b"abc").unwrap()[0];
        let bytes = f.encode();
        let mut expected = vec![1, 1];
        expected.extend([5; 16]);
        expected.extend([0, 0, 0, 1, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(&bytes[..expected.len()], &expected[..]);
        assert!(bytes[expected.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn rejects_bad_fragments() {
        let good = Fragment::split(ContentKind::Mls, [5; 16], b"abc").unwrap()[0].encode();
        let mut bad = good;
        bad[FRAGMENT_LEN - 1] = 1;
        assert_eq!(Fragment::decode(&bad), Err(DecodeError::BadPadding));
        let mut bad = good;
        bad[21] = 3; // count 3: not a size class
        assert!(Fragment::decode(&bad).is_err());
        let mut bad = good;
        bad[23] = 0x40; // total length that needs more fragments than count
        assert!(Fragment::decode(&bad).is_err());
        assert_eq!(Fragment::decode(&good[..100]), Err(DecodeError::WrongSize));

        let parts = Fragment::split(ContentKind::Mls, [1; 16], &[7; CHUNK_LEN * 2]).unwrap();
        assert!(Fragment::join(&parts[..1]).is_err(), "missing fragment");
        let dup = vec![parts[0].clone(), parts[0].clone()];
        assert!(Fragment::join(&dup).is_err(), "duplicate index");
        let mut other = parts.clone();
        other[1].message_id = [2; 16];
        assert!(Fragment::join(&other).is_err(), "mixed messages");
        let mut other = parts.clone();
        other[1].kind = ContentKind::Welcome;
        assert!(Fragment::join(&other).is_err(), "mixed kinds");
        let mut bad = good;
        bad[1] = 9;
        assert_eq!(Fragment::decode(&bad), Err(DecodeError::UnknownKind(9)));
    }

    /// Every number of fragments a message can need, from 1 to [`MAX_FRAGMENTS`], at
    /// the shortest and longest length that needs it: the sender's split is what
    /// every receiver accepts, and the count on the wire is the size class.
    #[test]
    fn every_fragment_count_is_accepted_as_split() {
        let message = vec![0xa5u8; MAX_MESSAGE_LEN];
        for needed in 1..=MAX_FRAGMENTS {
            let shortest = if needed == 1 {
                0
            } else {
                (needed - 1) * CHUNK_LEN + 1
            };
            for len in [shortest, needed * CHUNK_LEN] {
                let parts = Fragment::split(ContentKind::Mls, [3; 16], &message[..len]).unwrap();
                assert_eq!(parts.len(), fragment_class(needed), "{len} bytes");
                assert!(parts.len() >= needed && parts.len() <= MAX_FRAGMENTS);
                // Every fragment of the first, the last and every 97th count makes the
                // round trip; of the others the first and the last fragment.
                let whole = needed <= 2 || needed == MAX_FRAGMENTS || needed % 97 == 0;
                let checked: Vec<&Fragment> = if whole {
                    parts.iter().collect()
                } else {
                    vec![&parts[0], &parts[parts.len() - 1]]
                };
                let decoded: Vec<Fragment> = checked
                    .iter()
                    .map(|f| {
                        Fragment::decode(&f.encode())
                            .unwrap_or_else(|e| panic!("{len} bytes, {needed} needed: {e}"))
                    })
                    .collect();
                if whole {
                    assert_eq!(Fragment::join(&decoded).unwrap(), &message[..len]);
                }
            }
        }
    }

    /// A count other than the size class of the length is refused.
    #[test]
    fn a_count_other_than_the_class_is_refused() {
        let len = 40 * CHUNK_LEN; // needs 40, sent as 48
        let parts = Fragment::split(ContentKind::Mls, [3; 16], &vec![1; len]).unwrap();
        assert_eq!(parts.len(), 48);
        for count in [40u16, 47, 49, 64, 1024] {
            let mut f = parts[0].clone();
            f.count = count;
            assert_eq!(
                Fragment::decode(&f.encode()),
                Err(DecodeError::InvalidValue("fragment count")),
                "{count}"
            );
        }
    }

    proptest! {
        #[test]
        fn split_join_round_trips(len in 0usize..20_000, seed in any::<u8>()) {
            let message: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let mut fragments: Vec<Fragment> = Fragment::split(ContentKind::Announcement, [seed; 16], &message)
                .unwrap()
                .iter()
                .map(|f| Fragment::decode(&f.encode()).unwrap())
                .collect();
            fragments.reverse();
            prop_assert_eq!(Fragment::join(&fragments).unwrap(), message);
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), FRAGMENT_LEN..=FRAGMENT_LEN)) {
            let _ = Fragment::decode(&bytes);
        }
    }
}
