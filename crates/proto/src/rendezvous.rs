//! What the two sides of a one-time code say to each other through a relay's
//! rendezvous ([`crate::frame::Request::RendezvousSend`]).
//!
//! ```text
//! u8 type || body
//! type 1 Pake:    u8 len, PAKE message
//! type 2 Confirm: [32] key confirmation
//! type 3 Part:    u16 index, u16 count, u16 len, bytes   (a piece of a sealed message)
//! type 4 Abort:   u8 reason
//! ```
//!
//! A sealed message larger than one rendezvous frame travels as `count` parts;
//! [`Reassembly`] puts them back together, in any order, at most [`MAX_PARTS`].
//! The [`Offer`] is the inviter's first sealed message: which channel, which suite.

use crate::DecodeError;
use crate::codec::{Reader, Writer};
use crate::frame::RENDEZVOUS_DATA_MAX;

/// Most bytes of one part.
pub const PART_MAX: usize = RENDEZVOUS_DATA_MAX - 8;
/// Most parts of one message (so at most about 4 MB: a welcome to a channel of
/// hundreds of post-quantum members is several hundred KB).
pub const MAX_PARTS: u16 = 1024;

/// Why a side gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbortReason {
    /// The key confirmation did not match: the codes differ.
    WrongCode,
    /// The inviter did not admit the joiner.
    Refused,
    /// Something else failed.
    Failed,
}

/// One rendezvous message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wire {
    /// A PAKE message.
    Pake(Vec<u8>),
    /// Proof of holding the PAKE's key.
    Confirm([u8; 32]),
    /// A piece of a sealed message.
    Part {
        /// Which piece, from 0.
        index: u16,
        /// How many pieces.
        count: u16,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The sender gives up.
    Abort(AbortReason),
}

impl Wire {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Wire::Pake(m) => {
                w.u8(1);
                w.bytes8(m);
            }
            Wire::Confirm(c) => {
                w.u8(2);
                w.put(c);
            }
            Wire::Part {
                index,
                count,
                bytes,
            } => {
                w.u8(3);
                w.u16(*index);
                w.u16(*count);
                w.u16(bytes.len().min(PART_MAX) as u16);
                w.put(bytes.get(..PART_MAX).unwrap_or(bytes));
            }
            Wire::Abort(reason) => {
                w.u8(4);
                w.u8(match reason {
                    AbortReason::WrongCode => 1,
                    AbortReason::Refused => 2,
                    AbortReason::Failed => 3,
                });
            }
        }
        w.bytes
    }

    /// Decodes strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let wire = match r.u8()? {
            1 => Wire::Pake(r.bytes8(64)?.to_vec()),
            2 => Wire::Confirm(r.array()?),
            3 => {
                let index = r.u16()?;
                let count = r.u16()?;
                let len = usize::from(r.u16()?);
                if len > PART_MAX || count == 0 || count > MAX_PARTS || index >= count {
                    return Err(DecodeError::TooLong);
                }
                Wire::Part {
                    index,
                    count,
                    bytes: r.take(len)?.to_vec(),
                }
            }
            4 => Wire::Abort(match r.u8()? {
                1 => AbortReason::WrongCode,
                2 => AbortReason::Refused,
                3 => AbortReason::Failed,
                other => return Err(DecodeError::UnknownKind(other)),
            }),
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(wire)
    }

    /// Splits a sealed message into parts; `None` if it needs more than
    /// [`MAX_PARTS`].
    pub fn split(message: &[u8]) -> Option<Vec<Wire>> {
        let chunks: Vec<&[u8]> = if message.is_empty() {
            vec![&[][..]]
        } else {
            message.chunks(PART_MAX).collect()
        };
        let count = u16::try_from(chunks.len())
            .ok()
            .filter(|&c| c <= MAX_PARTS)?;
        Some(
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, c)| Wire::Part {
                    index: i as u16,
                    count,
                    bytes: c.to_vec(),
                })
                .collect(),
        )
    }
}

/// Collects the parts of one message.
#[derive(Debug, Default)]
pub struct Reassembly {
    parts: Vec<Option<Vec<u8>>>,
}

impl Reassembly {
    /// Adds a part; returns the whole message once every part is in. A part that
    /// contradicts earlier ones (another count) is an error.
    pub fn add(
        &mut self,
        index: u16,
        count: u16,
        bytes: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, DecodeError> {
        if count == 0 || count > MAX_PARTS || index >= count {
            return Err(DecodeError::TooLong);
        }
        if self.parts.is_empty() {
            self.parts = vec![None; usize::from(count)];
        }
        if self.parts.len() != usize::from(count) {
            return Err(DecodeError::TooLong);
        }
        if let Some(slot) = self.parts.get_mut(usize::from(index)) {
            *slot = Some(bytes);
        }
        if self.parts.iter().all(Option::is_some) {
            let whole = self.parts.drain(..).flatten().flatten().collect();
            return Ok(Some(whole));
        }
        Ok(None)
    }
}

/// The inviter's offer: what the joiner is being invited into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The MLS ciphersuite of the channel (the joiner's key package must match).
    pub suite: u16,
    /// The channel's title.
    pub channel: String,
    /// The inviter's name in it.
    pub inviter: String,
}

impl Offer {
    /// Encodes: `u8 version (1) || u16 suite || u8 len, channel || u8 len, inviter`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(1);
        w.u16(self.suite);
        w.bytes8(self.channel.as_bytes());
        w.bytes8(self.inviter.as_bytes());
        w.bytes
    }

    /// Decodes strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != 1 {
            return Err(DecodeError::UnknownVersion(version));
        }
        let offer = Offer {
            suite: r.u16()?,
            channel: r.str8(255)?.to_owned(),
            inviter: r.str8(255)?.to_owned(),
        };
        r.finish()?;
        Ok(offer)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wire_round_trips() {
        for wire in [
            Wire::Pake(vec![1; 33]),
            Wire::Confirm([2; 32]),
            Wire::Part {
                index: 1,
                count: 3,
                bytes: vec![3; PART_MAX],
            },
            Wire::Abort(AbortReason::WrongCode),
            Wire::Abort(AbortReason::Refused),
            Wire::Abort(AbortReason::Failed),
        ] {
            let bytes = wire.encode();
            assert!(bytes.len() <= RENDEZVOUS_DATA_MAX);
            assert_eq!(Wire::decode(&bytes).unwrap(), wire);
        }
        assert_eq!(
            Wire::Confirm([2; 32]).encode(),
            [&[2u8][..], &[2; 32]].concat()
        );
        assert!(
            Wire::decode(&[3, 0, 3, 0, 3, 0, 0]).is_err(),
            "index beyond count"
        );
        assert!(Wire::decode(&[2; 34]).is_err(), "trailing bytes");
    }

    #[test]
    fn messages_split_and_reassemble_in_any_order() {
        let message: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut parts = Wire::split(&message).unwrap();
        assert_eq!(parts.len(), 10_000usize.div_ceil(PART_MAX));
        parts.reverse();
        let mut r = Reassembly::default();
        let mut whole = None;
        for p in parts {
            let Wire::Part {
                index,
                count,
                bytes,
            } = p
            else {
                panic!()
            };
            whole = r.add(index, count, bytes).unwrap();
        }
        assert_eq!(whole.unwrap(), message);
        assert!(Wire::split(&vec![0; PART_MAX * (usize::from(MAX_PARTS) + 1)]).is_none());
        assert!(Wire::split(&vec![0; PART_MAX * usize::from(MAX_PARTS)]).is_some());
        let mut r = Reassembly::default();
        r.add(0, 2, vec![1]).unwrap();
        assert!(r.add(1, 3, vec![2]).is_err(), "a contradicting count");
    }

    #[test]
    fn offers_round_trip() {
        let offer = Offer {
            suite: 0x004d,
            channel: "ops".into(),
            inviter: "alice".into(),
        };
        assert_eq!(Offer::decode(&offer.encode()).unwrap(), offer);
        assert!(Offer::decode(&[2, 0, 0, 0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Wire::decode(&bytes);
            let _ = Offer::decode(&bytes);
        }
    }
}
