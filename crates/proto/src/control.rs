//! Control messages: application payloads of kind `Control`, for the clients and not
//! for people. They travel inside MLS like any message, with sequence numbers and the
//! chain, so they are as authentic and as ordered as text.
//!
//! ```text
//! u8 version (1) || u8 type || body
//! type 1 Status: u8 flags (1 = please answer) || u64 epoch || u8 len, authenticator
//!                || u16 count || count x ([8] member, u64 seq, [32] chain hash)
//! type 2 Burn:   [16] burn id
//! type 3 BurnReceipt: [16] burn id || [32] member || u8 len, signature
//! type 4 Intro:  [16] introduction id || [32] member it is for || u8 step || step body
//!        step 1 Ask:     u8 len, peer name
//!        step 2 Offer:   u32 len, key package
//!        step 3 Add:     u8 len, peer name || u32 len, key package
//!        step 4 Welcome: u32 len, welcome
//!        step 5 Declined (empty)
//! ```

use crate::DecodeError;
use crate::codec::{Reader, Writer};

const VERSION: u8 = 1;

/// Most entries in a status.
pub const MAX_STATUS_ENTRIES: usize = 1024;

/// A control message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// What the sender has: its epoch and, for every sender, how far it has received
    /// and the chain hash there.
    Status(Status),
    /// Erase this channel everywhere, then confirm.
    Burn {
        /// Identifies this burn in the receipts.
        id: [u8; 16],
    },
    /// "I have erased the channel."
    BurnReceipt(BurnReceipt),
    /// One step of an introduction, for one member.
    Intro(Intro),
}

/// Most bytes of a key package or welcome carried by an introduction.
pub const MAX_INTRO_BLOB: usize = 60_000;

/// One step of an introduction, addressed to one member of the channel it is sent
/// in (the others ignore it).
///
/// The introducer asks the joiner for a key package (`Ask`), which comes back
/// (`Offer`); the introducer gives it to the host (`Add`), who makes a channel with
/// the joiner and sends back the welcome (`Welcome`), which the introducer passes
/// on to the joiner (`Welcome`). Every step travels inside a channel the two sides
/// of that step share, so each is authenticated by MLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intro {
    /// Identifies the introduction.
    pub id: [u8; 16],
    /// The member identifier it is for.
    pub to: [u8; 32],
    /// The step.
    pub step: IntroStep,
}

/// The steps of an introduction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntroStep {
    /// Introducer to joiner: "I introduce you to `peer`; send me a key package."
    Ask {
        /// The name of the person the joiner is introduced to.
        peer: String,
    },
    /// Joiner to introducer: the key package.
    Offer {
        /// An MLS key package.
        key_package: Vec<u8>,
    },
    /// Introducer to host: "make a channel with `peer`, whose key package this is."
    Add {
        /// The joiner's name as the introducer knows it.
        peer: String,
        /// The joiner's key package.
        key_package: Vec<u8>,
    },
    /// Host to introducer, then introducer to joiner: the welcome.
    Welcome {
        /// An MLS welcome.
        welcome: Vec<u8>,
    },
    /// Joiner or host to introducer: "no, thank you."
    Declined,
}

/// Label of the bytes a burn receipt's signature covers.
pub const BURN_RECEIPT_LABEL: &[u8] = b"backchannel/v1/burn-receipt";

/// A member's signed confirmation that it erased a burned channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BurnReceipt {
    /// The burn confirmed.
    pub id: [u8; 16],
    /// The confirming member.
    pub member: [u8; 32],
    /// Signature over [`BurnReceipt::signed_bytes`] with the member's key.
    pub signature: Vec<u8>,
}

impl BurnReceipt {
    /// What the signature covers: label, channel, burn id, member.
    pub fn signed_bytes(channel: &[u8; 16], id: &[u8; 16], member: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer::default();
        w.put(BURN_RECEIPT_LABEL);
        w.put(channel);
        w.put(id);
        w.put(member);
        w.bytes
    }
}

/// A member's view of the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The sender asks every member to answer with its own status.
    pub request: bool,
    /// The sender's epoch.
    pub epoch: u64,
    /// Its epoch authenticator.
    pub authenticator: Vec<u8>,
    /// For each sender: how far the status's author has received, contiguously.
    pub entries: Vec<StatusEntry>,
}

/// One sender in a [`Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusEntry {
    /// The first 8 bytes of the sender's member identifier.
    pub member: [u8; 8],
    /// Every message up to this one was received (or reported missing).
    pub seq: u64,
    /// The chain hash of message `seq` (zeros if it never arrived).
    pub hash: [u8; 32],
}

impl Control {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(VERSION);
        match self {
            Control::Status(s) => {
                w.u8(1);
                w.u8(u8::from(s.request));
                w.u64(s.epoch);
                w.bytes8(&s.authenticator);
                let n = s.entries.len().min(MAX_STATUS_ENTRIES);
                w.u16(n as u16);
                for e in s.entries.iter().take(n) {
                    w.put(&e.member);
                    w.u64(e.seq);
                    w.put(&e.hash);
                }
            }
            Control::Burn { id } => {
                w.u8(2);
                w.put(id);
            }
            Control::BurnReceipt(r) => {
                w.u8(3);
                w.put(&r.id);
                w.put(&r.member);
                w.bytes8(&r.signature);
            }
            Control::Intro(i) => {
                w.u8(4);
                w.put(&i.id);
                w.put(&i.to);
                match &i.step {
                    IntroStep::Ask { peer } => {
                        w.u8(1);
                        w.bytes8(peer.as_bytes());
                    }
                    IntroStep::Offer { key_package } => {
                        w.u8(2);
                        w.bytes32(key_package);
                    }
                    IntroStep::Add { peer, key_package } => {
                        w.u8(3);
                        w.bytes8(peer.as_bytes());
                        w.bytes32(key_package);
                    }
                    IntroStep::Welcome { welcome } => {
                        w.u8(4);
                        w.bytes32(welcome);
                    }
                    IntroStep::Declined => w.u8(5),
                }
            }
        }
        w.bytes
    }

    /// Decodes strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let control = match r.u8()? {
            1 => {
                let request = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::InvalidValue("status flags")),
                };
                let epoch = r.u64()?;
                let authenticator = r.bytes8(64)?.to_vec();
                let n = usize::from(r.u16()?);
                if n > MAX_STATUS_ENTRIES {
                    return Err(DecodeError::TooLong);
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(StatusEntry {
                        member: r.array()?,
                        seq: r.u64()?,
                        hash: r.array()?,
                    });
                }
                Control::Status(Status {
                    request,
                    epoch,
                    authenticator,
                    entries,
                })
            }
            2 => Control::Burn { id: r.array()? },
            3 => Control::BurnReceipt(BurnReceipt {
                id: r.array()?,
                member: r.array()?,
                signature: r.bytes8(255)?.to_vec(),
            }),
            4 => {
                let id = r.array()?;
                let to = r.array()?;
                let step = match r.u8()? {
                    1 => IntroStep::Ask {
                        peer: r.str8(255)?.to_owned(),
                    },
                    2 => IntroStep::Offer {
                        key_package: r.bytes32(MAX_INTRO_BLOB)?.to_vec(),
                    },
                    3 => IntroStep::Add {
                        peer: r.str8(255)?.to_owned(),
                        key_package: r.bytes32(MAX_INTRO_BLOB)?.to_vec(),
                    },
                    4 => IntroStep::Welcome {
                        welcome: r.bytes32(MAX_INTRO_BLOB)?.to_vec(),
                    },
                    5 => IntroStep::Declined,
                    other => return Err(DecodeError::UnknownKind(other)),
                };
                Control::Intro(Intro { id, to, step })
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(control)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn status_round_trip_and_known_bytes() {
        let s = Control::Status(Status {
            request: true,
            epoch: 2,
            authenticator: vec![7; 32],
            entries: vec![StatusEntry {
                member: [1; 8],
                seq: 5,
                hash: [2; 32],
            }],
        });
        let bytes = s.encode();
        assert_eq!(&bytes[..12], &[1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 2, 32]);
        assert_eq!(bytes.len(), 3 + 8 + 33 + 2 + 48);
        assert_eq!(Control::decode(&bytes).unwrap(), s);
        let mut bad = bytes.clone();
        bad[2] = 2;
        assert!(Control::decode(&bad).is_err());
    }

    #[test]
    fn burn_messages_round_trip() {
        let burn = Control::Burn { id: [3; 16] };
        assert_eq!(burn.encode(), [&[1u8, 2][..], &[3; 16]].concat());
        assert_eq!(Control::decode(&burn.encode()).unwrap(), burn);
        let receipt = Control::BurnReceipt(BurnReceipt {
            id: [3; 16],
            member: [4; 32],
            signature: vec![5; 64],
        });
        assert_eq!(Control::decode(&receipt.encode()).unwrap(), receipt);
        let signed = BurnReceipt::signed_bytes(&[1; 16], &[3; 16], &[4; 32]);
        assert!(signed.starts_with(BURN_RECEIPT_LABEL));
        assert_eq!(signed.len(), BURN_RECEIPT_LABEL.len() + 64);
    }

    #[test]
    fn introduction_steps_round_trip() {
        let steps = [
            IntroStep::Ask {
                peer: "alice".into(),
            },
            IntroStep::Offer {
                key_package: vec![1; 3000],
            },
            IntroStep::Add {
                peer: "bob".into(),
                key_package: vec![2; 10],
            },
            IntroStep::Welcome {
                welcome: vec![3; 5000],
            },
            IntroStep::Declined,
        ];
        for (n, step) in steps.into_iter().enumerate() {
            let intro = Control::Intro(Intro {
                id: [5; 16],
                to: [6; 32],
                step,
            });
            let bytes = intro.encode();
            assert_eq!(&bytes[..2], &[1, 4]);
            assert_eq!(usize::from(bytes[50]), n + 1);
            assert_eq!(Control::decode(&bytes).unwrap(), intro);
            assert!(Control::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Control::decode(&longer).is_err(), "trailing bytes");
        }
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Control::decode(&bytes);
        }
    }
}
