//! Invite links: invitations that do not need the inviter online.
//!
//! A link names a relay, a mailbox there that only the inviter reads, the channel's
//! ciphersuite, the inviter's signature key in the channel (so that both sides can
//! compare a safety number before anyone is admitted) and an ephemeral
//! post-quantum public key (X-Wing) that join requests are sealed to.
//!
//! ```text
//! text:  "bcj1" || lowercase base32 of the bytes below (no padding)
//! bytes: u8 version (1) || u8 len, relay address || [16] mailbox send id
//!        || u16 suite || u64 expires at (ms since the epoch)
//!        || [32] inviter signature key || u16 len, public key
//! ```
//!
//! A join request is a sequence of blobs in the link's mailbox: first the HPKE
//! encapsulation padded to a blob, then the key package sealed as fragments of kind
//! `JoinRequest`. The answer goes to the mailbox in the key package as fragments of
//! kind `JoinReply` holding a [`JoinReply`].

use std::fmt;
use std::str::FromStr;

use crate::DecodeError;
use crate::addr::{MailboxId, RelayAddr, base32_decode, base32_encode};
use crate::codec::{Reader, Writer};

/// The prefix of a link's text.
pub const LINK_PREFIX: &str = "bcj1";
/// Most bytes of the public key.
pub const MAX_PUBLIC_KEY: usize = 2048;

/// A parsed invite link.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteLink {
    /// Where the link's mailbox is.
    pub relay: RelayAddr,
    /// The mailbox join requests go to.
    pub mailbox: MailboxId,
    /// The channel's MLS ciphersuite.
    pub suite: u16,
    /// When the inviter stops taking requests (milliseconds since the Unix epoch).
    pub expires_at: u64,
    /// The inviter's signature key in the channel.
    pub inviter_key: [u8; 32],
    /// The HPKE public key requests are sealed to.
    pub public_key: Vec<u8>,
}

impl fmt::Debug for InviteLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InviteLink({})", self.relay)
    }
}

impl InviteLink {
    /// The binary form.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(1);
        w.bytes8(self.relay.to_string().as_bytes());
        w.put(&self.mailbox.0);
        w.u16(self.suite);
        w.u64(self.expires_at);
        w.put(&self.inviter_key);
        w.u16(self.public_key.len().min(MAX_PUBLIC_KEY) as u16);
        w.put(
            self.public_key
                .get(..MAX_PUBLIC_KEY)
                .unwrap_or(&self.public_key),
        );
        w.bytes
    }

    /// Decodes the binary form strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != 1 {
            return Err(DecodeError::UnknownVersion(version));
        }
        let text = r.str8(255)?;
        let relay = text
            .parse::<RelayAddr>()
            .map_err(|_| DecodeError::InvalidValue("relay address"))?;
        // One encoding per link: the relay address in its canonical form only
        // (lowercase, no leading or trailing space).
        if relay.to_string() != text {
            return Err(DecodeError::InvalidValue(
                "relay address not in canonical form",
            ));
        }
        let mailbox = MailboxId(r.array()?);
        let suite = r.u16()?;
        let expires_at = r.u64()?;
        let inviter_key = r.array()?;
        let len = usize::from(r.u16()?);
        if len > MAX_PUBLIC_KEY {
            return Err(DecodeError::TooLong);
        }
        let public_key = r.take(len)?.to_vec();
        r.finish()?;
        Ok(Self {
            relay,
            mailbox,
            suite,
            expires_at,
            inviter_key,
            public_key,
        })
    }
}

impl fmt::Display for InviteLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{LINK_PREFIX}{}", base32_encode(&self.encode()))
    }
}

/// Why a link could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// It does not start like a link.
    #[error("an invite link starts with '{LINK_PREFIX}'")]
    Prefix,
    /// It is damaged (cut short, or a character changed).
    #[error("the link is damaged or incomplete ({0}); copy it again")]
    Damaged(String),
}

impl FromStr for InviteLink {
    type Err = LinkError;

    fn from_str(text: &str) -> Result<Self, LinkError> {
        // Links travel through chat windows and QR readers: forgive case and
        // whitespace, nothing else.
        let compact: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        let body = compact.strip_prefix(LINK_PREFIX).ok_or(LinkError::Prefix)?;
        let bytes = base32_decode(body).ok_or_else(|| LinkError::Damaged("not base32".into()))?;
        Self::decode(&bytes).map_err(|e| LinkError::Damaged(e.to_string()))
    }
}

/// The inviter's answer to a join request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinReply {
    /// Admitted: the MLS welcome.
    Welcome(Vec<u8>),
    /// Refused.
    Refused,
}

impl JoinReply {
    /// `u8 type (1 welcome, 2 refused) || welcome bytes`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            JoinReply::Welcome(w) => {
                let mut out = vec![1];
                out.extend_from_slice(w);
                out
            }
            JoinReply::Refused => vec![2],
        }
    }

    /// Decodes strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.split_first() {
            Some((1, rest)) if !rest.is_empty() => Ok(JoinReply::Welcome(rest.to_vec())),
            Some((2, [])) => Ok(JoinReply::Refused),
            Some((kind, _)) => Err(DecodeError::UnknownKind(*kind)),
            None => Err(DecodeError::Truncated),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::addr::Fingerprint;
    use proptest::prelude::*;

    fn link() -> InviteLink {
        InviteLink {
            relay: RelayAddr::new(Fingerprint([7; 32]), "relay.example", 7443).unwrap(),
            mailbox: MailboxId([9; 16]),
            suite: 0x004d,
            expires_at: 1_800_000_000_000,
            inviter_key: [3; 32],
            public_key: vec![5; 1216],
        }
    }

    #[test]
    fn a_relay_address_not_in_canonical_form_is_refused() {
        // Found by the fuzzer: an upper-case fingerprint parsed, and encoded back
        // as lower case, so one link had two encodings.
        let canonical = link().encode();
        let relay = link().relay.to_string();
        let mut upper = relay.clone();
        upper.replace_range(6..7, &relay[6..7].to_ascii_uppercase());
        assert_ne!(upper, relay);
        let mut bytes = canonical.clone();
        let at = bytes
            .windows(relay.len())
            .position(|w| w == relay.as_bytes())
            .unwrap();
        bytes[at..at + relay.len()].copy_from_slice(upper.as_bytes());
        assert_eq!(
            InviteLink::decode(&bytes),
            Err(DecodeError::InvalidValue(
                "relay address not in canonical form"
            ))
        );
        assert_eq!(InviteLink::decode(&canonical).unwrap(), link());
    }

    #[test]
    fn links_round_trip_through_text_that_survives_chat_and_qr() {
        let l = link();
        let text = l.to_string();
        assert!(text.starts_with("bcj1"));
        assert!(
            text.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_eq!(text.parse::<InviteLink>().unwrap(), l);
        // Upper-cased by a QR reader, wrapped by a chat window.
        let mangled = text
            .to_uppercase()
            .chars()
            .collect::<Vec<_>>()
            .chunks(60)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(mangled.parse::<InviteLink>().unwrap(), l);
    }

    #[test]
    fn damaged_links_are_refused_clearly() {
        let text = link().to_string();
        assert_eq!(
            "http://x".parse::<InviteLink>().unwrap_err(),
            LinkError::Prefix
        );
        let cut = &text[..text.len() - 10];
        assert!(matches!(
            cut.parse::<InviteLink>().unwrap_err(),
            LinkError::Damaged(_)
        ));
        let mut bytes = link().encode();
        bytes.push(0);
        assert!(InviteLink::decode(&bytes).is_err(), "trailing bytes");
    }

    #[test]
    fn replies_round_trip() {
        for r in [JoinReply::Welcome(vec![1, 2, 3]), JoinReply::Refused] {
            assert_eq!(JoinReply::decode(&r.encode()).unwrap(), r);
        }
        assert!(JoinReply::decode(&[1]).is_err());
        assert!(JoinReply::decode(&[2, 0]).is_err());
        assert!(JoinReply::decode(&[]).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = InviteLink::decode(&bytes);
            let _ = JoinReply::decode(&bytes);
        }

        #[test]
        fn text_parsing_never_panics(s in "\\PC{0,200}") {
            let _ = s.parse::<InviteLink>();
        }
    }
}
