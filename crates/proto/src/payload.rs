//! The application payload carried inside an MLS application message.
//!
//! ```text
//! u8   version (1)
//! u8   kind (1 text, 2 control, 3 attachment)
//! u64  seq            per-sender sequence number, from 1
//! [32] prev_hash      chain hash of the sender's previous payload (zeros for seq 1)
//! u64  sent_at        sender's clock, milliseconds since the Unix epoch
//! u32  body length, body (UTF-8 for text)
//! u16  head count, heads: ([8] member, u64 seq)   what the sender has received
//! zero padding up to the next size class
//! ```
//!
//! The encoding before padding is what the chain hash covers. Padding makes every
//! payload exactly one of [`SIZE_CLASSES`] long, and decoding insists on it.

use crate::DecodeError;
use crate::codec::{Reader, Writer};

/// Current payload version.
pub const PAYLOAD_VERSION: u8 = 1;

/// The sizes a padded payload can have. A payload takes the smallest that fits.
pub const SIZE_CLASSES: [usize; 5] = [256, 1024, 3072, 16384, LARGEST_CLASS];

/// The largest size class.
pub const LARGEST_CLASS: usize = 65536;

/// Bytes of a payload besides the body and heads.
const FIXED_LEN: usize = 1 + 1 + 8 + 32 + 8 + 4 + 2;

/// Largest number of heads one payload carries.
pub const MAX_HEADS: usize = 256;

/// Bytes one head takes.
const HEAD_LEN: usize = 8 + 8;

/// Largest body: what fits in the largest size class with no heads.
pub const MAX_BODY_LEN: usize = LARGEST_CLASS - FIXED_LEN;

/// What a payload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadKind {
    /// A message for people; the body is UTF-8 text.
    Text,
    /// A message for the clients (channel life cycle, integrity); see `control`.
    Control,
    /// A file for people: the body is an attachment descriptor (see `attachment`).
    Attachment,
}

/// One sender's received high-water mark for another member, so that
/// others can notice a message withheld from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The first 8 bytes of the member's identifier.
    pub member: [u8; 8],
    /// The highest sequence number received from that member.
    pub seq: u64,
}

/// A decoded application payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Text or control.
    pub kind: PayloadKind,
    /// Per-sender sequence number, starting at 1.
    pub seq: u64,
    /// Chain hash of the sender's previous payload; all zeros when `seq == 1`.
    pub prev_hash: [u8; 32],
    /// Sender's clock when sent, milliseconds since the Unix epoch.
    pub sent_at: u64,
    /// Text (UTF-8) or control body.
    pub body: Vec<u8>,
    /// What the sender had received from other members when sending.
    pub heads: Vec<Head>,
}

/// Why a payload could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The body is larger than [`MAX_BODY_LEN`] (less room taken by heads).
    #[error("the message is too long ({0} bytes); the limit is about 64 KiB")]
    TooLong(usize),
    /// More than [`MAX_HEADS`] heads.
    #[error("too many heads")]
    TooManyHeads,
}

impl Payload {
    /// The encoding without padding; the chain hash is computed over these bytes.
    pub fn encode_unpadded(&self) -> Result<Vec<u8>, EncodeError> {
        if self.heads.len() > MAX_HEADS {
            return Err(EncodeError::TooManyHeads);
        }
        let len = FIXED_LEN + self.body.len() + HEAD_LEN * self.heads.len();
        if len > LARGEST_CLASS {
            return Err(EncodeError::TooLong(self.body.len()));
        }
        let mut w = Writer::with_capacity(len);
        w.u8(PAYLOAD_VERSION);
        w.u8(match self.kind {
            PayloadKind::Text => 1,
            PayloadKind::Control => 2,
            PayloadKind::Attachment => 3,
        });
        w.u64(self.seq);
        w.put(&self.prev_hash);
        w.u64(self.sent_at);
        w.bytes32(&self.body);
        w.u16(self.heads.len() as u16);
        for head in &self.heads {
            w.put(&head.member);
            w.u64(head.seq);
        }
        Ok(w.bytes)
    }

    /// The padded encoding that goes into MLS.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut bytes = self.encode_unpadded()?;
        let class = size_class(bytes.len()).ok_or(EncodeError::TooLong(self.body.len()))?;
        bytes.resize(class, 0);
        Ok(bytes)
    }

    /// Decodes a padded payload. Returns the payload and the length of its unpadded
    /// encoding (the prefix the chain hash covers).
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize), DecodeError> {
        if !SIZE_CLASSES.contains(&bytes.len()) {
            return Err(DecodeError::BadPadding);
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != PAYLOAD_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let kind = match r.u8()? {
            1 => PayloadKind::Text,
            2 => PayloadKind::Control,
            3 => PayloadKind::Attachment,
            other => return Err(DecodeError::UnknownKind(other)),
        };
        let seq = r.u64()?;
        if seq == 0 {
            return Err(DecodeError::InvalidValue("sequence number 0"));
        }
        let prev_hash = r.array()?;
        let sent_at = r.u64()?;
        let body = r.bytes32(MAX_BODY_LEN)?.to_vec();
        if kind == PayloadKind::Text && std::str::from_utf8(&body).is_err() {
            return Err(DecodeError::InvalidUtf8);
        }
        let count = usize::from(r.u16()?);
        if count > MAX_HEADS {
            return Err(DecodeError::TooLong);
        }
        let mut heads = Vec::with_capacity(count);
        for _ in 0..count {
            heads.push(Head {
                member: r.array()?,
                seq: r.u64()?,
            });
        }
        let unpadded = bytes.len() - r.remaining();
        // Only the smallest class that holds the payload is canonical: a larger one would
        // let a sender pick the size on the wire, and the same payload would have two encodings.
        if size_class(unpadded) != Some(bytes.len()) {
            return Err(DecodeError::BadPadding);
        }
        r.zero_padding()?;
        r.finish()?;
        let payload = Self {
            kind,
            seq,
            prev_hash,
            sent_at,
            body,
            heads,
        };
        Ok((payload, unpadded))
    }
}

/// The smallest size class that holds `len` bytes.
pub fn size_class(len: usize) -> Option<usize> {
    SIZE_CLASSES.iter().copied().find(|&c| c >= len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(body: &[u8]) -> Payload {
        Payload {
            kind: PayloadKind::Text,
            seq: 3,
            prev_hash: [9; 32],
            sent_at: 1_700_000_000_000,
            body: body.to_vec(),
            heads: vec![Head {
                member: [1; 8],
                seq: 12,
            }],
        }
    }

    #[test]
    fn known_encoding() {
        let bytes = sample(b"hi").encode().unwrap();
        assert_eq!(bytes.len(), 256);
        let mut expected = vec![1, 1, 0, 0, 0, 0, 0, 0, 0, 3];
        expected.extend([9; 32]);
        expected.extend(1_700_000_000_000u64.to_be_bytes());
        expected.extend([0, 0, 0, 2, b'h', b'i', 0, 1]);
        expected.extend([1; 8]);
        expected.extend(12u64.to_be_bytes());
        assert_eq!(&bytes[..expected.len()], &expected[..]);
        assert!(bytes[expected.len()..].iter().all(|&b| b == 0));
        let (decoded, unpadded) = Payload::decode(&bytes).unwrap();
        assert_eq!(decoded, sample(b"hi"));
        assert_eq!(unpadded, expected.len());
    }

    #[test]
    fn sizes_fall_into_classes() {
        for (body_len, class) in [
            (0, 256),
            (180, 256),
            (300, 1024),
            (3000, 3072),
            (20_000, 65536),
        ] {
            let len = sample(&vec![b'a'; body_len]).encode().unwrap().len();
            assert_eq!(len, class, "body of {body_len} bytes");
        }
        let too_long = sample(&vec![b'a'; MAX_BODY_LEN]).encode();
        assert!(matches!(too_long, Err(EncodeError::TooLong(_))));
    }

    #[test]
    fn strict_decoding() {
        let good = sample(b"hi").encode().unwrap();
        let mut bad = good.clone();
        bad[255] = 1;
        assert_eq!(Payload::decode(&bad), Err(DecodeError::BadPadding));
        assert_eq!(Payload::decode(&good[..255]), Err(DecodeError::BadPadding));
        // A short payload padded to a larger class than it needs is not canonical.
        let mut oversized = good.clone();
        oversized.resize(1024, 0);
        assert_eq!(Payload::decode(&oversized), Err(DecodeError::BadPadding));
        let mut bad = good.clone();
        bad[0] = 2;
        assert_eq!(Payload::decode(&bad), Err(DecodeError::UnknownVersion(2)));
        let mut bad = good.clone();
        bad[1] = 9;
        assert_eq!(Payload::decode(&bad), Err(DecodeError::UnknownKind(9)));
        let mut bad = good.clone();
        bad[9] = 0;
        assert!(Payload::decode(&bad).is_err(), "sequence 0");
        let mut bad = good.clone();
        bad[54] = 0xff; // body length far past the buffer
        assert!(Payload::decode(&bad).is_err());
        let mut bad = sample(&[0xff, 0xfe]).encode().unwrap();
        assert_eq!(Payload::decode(&bad), Err(DecodeError::InvalidUtf8));
        bad[1] = 2; // a control body need not be text
        assert!(Payload::decode(&bad).is_ok());
    }

    proptest! {
        #[test]
        fn round_trips(
            seq in 1u64..,
            sent_at in any::<u64>(),
            prev_hash in any::<[u8; 32]>(),
            body in proptest::collection::vec(any::<u8>(), 0..5000),
            heads in proptest::collection::vec((any::<[u8; 8]>(), any::<u64>()), 0..20),
        ) {
            let payload = Payload {
                kind: PayloadKind::Control,
                seq,
                prev_hash,
                sent_at,
                body,
                heads: heads.into_iter().map(|(member, seq)| Head { member, seq }).collect(),
            };
            let bytes = payload.encode().unwrap();
            prop_assert!(SIZE_CLASSES.contains(&bytes.len()));
            let (decoded, unpadded) = Payload::decode(&bytes).unwrap();
            prop_assert_eq!(&decoded, &payload);
            prop_assert_eq!(&bytes[..unpadded], &payload.encode_unpadded().unwrap()[..]);
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = Payload::decode(&bytes);
        }
    }
}
