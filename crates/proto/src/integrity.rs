//! Signed statements members exchange outside the MLS epoch they describe, so that
//! members whose views of the channel have diverged can still read them.
//!
//! Both are sealed under the envelope key of the epoch *before* the one they talk
//! about — the last state the members had in common — and signed with the sender's
//! channel signature key.
//!
//! - [`Announcement`]: "I have entered epoch E, whose epoch authenticator is A". A
//!   member in epoch E with another authenticator has been shown a different history
//!   (a fork); a member still before E knows an update is being kept from it.
//! - [`Rejoin`]: "my view forked from the administrator's; re-add me with this key
//!   package".

use crate::DecodeError;
use crate::codec::{Reader, Writer};

/// Label of the bytes an [`Announcement`] signature covers.
pub const ANNOUNCEMENT_LABEL: &[u8] = b"backchannel/v1/epoch-announcement";
/// Label of the bytes a [`Rejoin`] signature covers.
pub const REJOIN_LABEL: &[u8] = b"backchannel/v1/rejoin";

const VERSION: u8 = 1;

/// Most bytes of an epoch authenticator (MLS: the hash length).
pub const MAX_AUTHENTICATOR_LEN: usize = 64;
/// Most bytes of a signature.
pub const MAX_SIGNATURE_LEN: usize = 255;
/// Most bytes of a key package in a rejoin request.
pub const MAX_KEY_PACKAGE_LEN: usize = 65_536;

/// "I have entered `epoch`, with this authenticator."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The epoch entered.
    pub epoch: u64,
    /// Its MLS epoch authenticator.
    pub authenticator: Vec<u8>,
    /// The announcing member's identifier.
    pub member: [u8; 32],
    /// Signature over [`Announcement::signed_bytes`] with the member's key.
    pub signature: Vec<u8>,
}

impl Announcement {
    /// What the signature covers: label, channel, epoch, authenticator, member.
    pub fn signed_bytes(
        channel: &[u8; 16],
        epoch: u64,
        authenticator: &[u8],
        member: &[u8; 32],
    ) -> Vec<u8> {
        let mut w = Writer::default();
        w.put(ANNOUNCEMENT_LABEL);
        w.put(channel);
        w.u64(epoch);
        w.bytes8(authenticator);
        w.put(member);
        w.bytes
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(VERSION);
        w.u64(self.epoch);
        w.bytes8(&self.authenticator);
        w.put(&self.member);
        w.bytes8(&self.signature);
        w.bytes
    }

    /// Decodes strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let epoch = r.u64()?;
        let authenticator = r.bytes8(MAX_AUTHENTICATOR_LEN)?.to_vec();
        let member = r.array()?;
        let signature = r.bytes8(MAX_SIGNATURE_LEN)?.to_vec();
        r.finish()?;
        Ok(Self {
            epoch,
            authenticator,
            member,
            signature,
        })
    }
}

/// "Re-add me with this key package."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejoin {
    /// The member's identifier in the state before the fork.
    pub member: [u8; 32],
    /// The epoch whose authenticator the member holds (the forked one).
    pub epoch: u64,
    /// A fresh key package (MLS encoding).
    pub key_package: Vec<u8>,
    /// Signature over [`Rejoin::signed_bytes`] with the member's old key.
    pub signature: Vec<u8>,
}

impl Rejoin {
    /// What the signature covers.
    pub fn signed_bytes(
        channel: &[u8; 16],
        member: &[u8; 32],
        epoch: u64,
        key_package: &[u8],
    ) -> Vec<u8> {
        let mut w = Writer::default();
        w.put(REJOIN_LABEL);
        w.put(channel);
        w.put(member);
        w.u64(epoch);
        w.bytes32(key_package);
        w.bytes
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(VERSION);
        w.put(&self.member);
        w.u64(self.epoch);
        w.bytes32(&self.key_package);
        w.bytes8(&self.signature);
        w.bytes
    }

    /// Decodes strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let member = r.array()?;
        let epoch = r.u64()?;
        let key_package = r.bytes32(MAX_KEY_PACKAGE_LEN)?.to_vec();
        let signature = r.bytes8(MAX_SIGNATURE_LEN)?.to_vec();
        r.finish()?;
        Ok(Self {
            member,
            epoch,
            key_package,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_known_bytes() {
        let a = Announcement {
            epoch: 7,
            authenticator: vec![1; 32],
            member: [2; 32],
            signature: vec![3; 64],
        };
        let bytes = a.encode();
        assert_eq!(bytes.len(), 1 + 8 + 1 + 32 + 32 + 1 + 64);
        assert_eq!(&bytes[..10], &[1, 0, 0, 0, 0, 0, 0, 0, 7, 32]);
        assert_eq!(Announcement::decode(&bytes).unwrap(), a);
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            Announcement::decode(&extra),
            Err(DecodeError::TrailingBytes)
        );
        let signed = Announcement::signed_bytes(&[9; 16], 7, &[1; 32], &[2; 32]);
        assert!(signed.starts_with(ANNOUNCEMENT_LABEL));
        assert_eq!(signed.len(), ANNOUNCEMENT_LABEL.len() + 16 + 8 + 33 + 32);

        let j = Rejoin {
            member: [4; 32],
            epoch: 3,
            key_package: vec![5; 2000],
            signature: vec![6; 64],
        };
        assert_eq!(Rejoin::decode(&j.encode()).unwrap(), j);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Announcement::decode(&bytes);
            let _ = Rejoin::decode(&bytes);
        }
    }
}
