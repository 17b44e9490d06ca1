//! The cryptography of a one-time code: SPAKE2 over the code, key confirmation,
//! and sealing what the two sides then exchange.
//!
//! The inviter is SPAKE2's side A, the joiner side B, each with its role as
//! identity. From the shared key come two confirmation values and two sealing keys
//! ([`crate::derive::invite_keys`]). Each side sends its confirmation and checks the
//! other's: with different codes the keys differ and the check fails, so someone
//! guessing learns only that one guess was wrong (and the relay lets them make one
//! per code). Sealed messages use XChaCha20-Poly1305 with a random nonce; the
//! associated data binds the label, the sender's role and the message's number, so
//! nothing can be reflected, reordered or replayed within the exchange.

use backchannel_proto::code::InviteCode;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::Zeroizing;

use crate::derive::{INVITE_LABEL, InviteKeys, invite_keys};

/// Which side of the code we are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Made the code, admits the joiner.
    Inviter,
    /// Typed the code in.
    Joiner,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Inviter => 1,
            Role::Joiner => 2,
        }
    }

    fn other(self) -> Self {
        match self {
            Role::Inviter => Role::Joiner,
            Role::Joiner => Role::Inviter,
        }
    }
}

const ID_INVITER: &[u8] = b"backchannel/v1/invite/inviter";
const ID_JOINER: &[u8] = b"backchannel/v1/invite/joiner";

/// The PAKE, between our message and theirs.
pub struct Pake {
    role: Role,
    state: Spake2<Ed25519Group>,
}

impl Pake {
    /// Starts; returns the message to send.
    pub fn start(role: Role, code: &InviteCode) -> (Self, Vec<u8>) {
        let password = Password::new(code.password().into_bytes());
        let (a, b) = (Identity::new(ID_INVITER), Identity::new(ID_JOINER));
        let (state, message) = match role {
            Role::Inviter => Spake2::<Ed25519Group>::start_a(&password, &a, &b),
            Role::Joiner => Spake2::<Ed25519Group>::start_b(&password, &a, &b),
        };
        (Self { role, state }, message)
    }

    /// Finishes with the other side's message. `None` if it is malformed (a
    /// different code does not fail here: it gives a different key).
    pub fn finish(self, theirs: &[u8]) -> Option<Session> {
        let key = Zeroizing::new(self.state.finish(theirs).ok()?);
        Some(Session {
            role: self.role,
            keys: invite_keys(&key).ok()?,
            sent: 0,
            received: 0,
        })
    }
}

/// What the PAKE established.
pub struct Session {
    role: Role,
    keys: InviteKeys,
    sent: u64,
    received: u64,
}

impl Session {
    /// Our confirmation, to send.
    pub fn confirmation(&self) -> [u8; 32] {
        match self.role {
            Role::Inviter => self.keys.confirm_inviter,
            Role::Joiner => self.keys.confirm_joiner,
        }
    }

    /// Whether the other side's confirmation proves it holds the same key
    /// (compared in constant time).
    pub fn confirms(&self, theirs: &[u8; 32]) -> bool {
        let expected = match self.role {
            Role::Inviter => &self.keys.confirm_joiner,
            Role::Joiner => &self.keys.confirm_inviter,
        };
        expected
            .iter()
            .zip(theirs)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    fn aad(role: Role, number: u64) -> Vec<u8> {
        let mut aad = INVITE_LABEL.to_vec();
        aad.push(role.byte());
        aad.extend_from_slice(&number.to_be_bytes());
        aad
    }

    /// Seals our next message: nonce || ciphertext.
    pub fn seal(&mut self, plaintext: &[u8], nonce: [u8; 24]) -> Option<Vec<u8>> {
        let key = match self.role {
            Role::Inviter => &self.keys.seal_inviter,
            Role::Joiner => &self.keys.seal_joiner,
        };
        let sealed =
            crate::seal::seal_message(key, &Self::aad(self.role, self.sent), nonce, plaintext)?;
        self.sent += 1;
        Some(sealed)
    }

    /// Opens the other side's next message.
    pub fn open(&mut self, sealed: &[u8]) -> Option<Vec<u8>> {
        let theirs = self.role.other();
        let key = match theirs {
            Role::Inviter => &self.keys.seal_inviter,
            Role::Joiner => &self.keys.seal_joiner,
        };
        let plain = crate::seal::open_message(key, &Self::aad(theirs, self.received), sealed)?;
        self.received += 1;
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn code(words: [u8; 3]) -> InviteCode {
        InviteCode::new(17, words)
    }

    #[test]
    fn the_same_code_gives_the_same_keys_and_messages_open() {
        let (inviter, to_joiner) = Pake::start(Role::Inviter, &code([1, 2, 3]));
        let (joiner, to_inviter) = Pake::start(Role::Joiner, &code([1, 2, 3]));
        let mut i = inviter.finish(&to_inviter).unwrap();
        let mut j = joiner.finish(&to_joiner).unwrap();
        assert!(j.confirms(&i.confirmation()));
        assert!(i.confirms(&j.confirmation()));
        assert_ne!(i.confirmation(), j.confirmation());

        let sealed = j.seal(b"key package", [9; 24]).unwrap();
        assert_eq!(i.open(&sealed).unwrap(), b"key package");
        // Not twice (the message number moved on), and not back to its sender.
        assert!(i.open(&sealed).is_none());
        assert!(j.open(&sealed).is_none());
        let reply = i.seal(b"welcome", [8; 24]).unwrap();
        assert_eq!(j.open(&reply).unwrap(), b"welcome");
    }

    #[test]
    fn a_different_code_fails_the_confirmation_on_both_sides() {
        let (inviter, to_joiner) = Pake::start(Role::Inviter, &code([1, 2, 3]));
        let (joiner, to_inviter) = Pake::start(Role::Joiner, &code([1, 2, 7]));
        let mut i = inviter.finish(&to_inviter).unwrap();
        let j = joiner.finish(&to_joiner).unwrap();
        assert!(!j.confirms(&i.confirmation()));
        assert!(!i.confirms(&j.confirmation()));
        let sealed = i.seal(b"offer", [1; 24]).unwrap();
        let mut j = j;
        assert!(j.open(&sealed).is_none());
    }

    #[test]
    fn two_inviters_or_garbage_do_not_agree() {
        let (a, _) = Pake::start(Role::Inviter, &code([1, 2, 3]));
        let (_, also_a) = Pake::start(Role::Inviter, &code([1, 2, 3]));
        // A reflected side-A message is refused by SPAKE2 itself.
        assert!(a.finish(&also_a).is_none());
        let (b, _) = Pake::start(Role::Joiner, &code([1, 2, 3]));
        assert!(b.finish(&[0u8; 5]).is_none());
    }
}
