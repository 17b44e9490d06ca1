//! Every derivation Backchannel defines, each with its own domain-separation label.
//!
//! Known-answer tests below pin each one; the expected values were computed with an
//! independent implementation (Python's hashlib and hmac).

use hkdf::Hkdf;
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

/// Label of [`member_id`].
pub const MEMBER_ID_LABEL: &[u8] = b"backchannel/v1/member-id";
/// Label of [`chain_hash`].
pub const CHAIN_LABEL: &[u8] = b"backchannel/v1/message-chain";
/// MLS exporter label of the per-epoch channel secret all our keys come from.
pub const CHANNEL_EXPORTER_LABEL: &str = "backchannel/v1/channel-secret";
/// HKDF info of [`envelope_key`].
pub const ENVELOPE_KEY_INFO: &[u8] = b"backchannel/v1/envelope-key";
/// HKDF salt of [`invite_keys`]; each key's info is this, `/`, and its purpose.
pub const INVITE_LABEL: &[u8] = b"backchannel/v1/invite";
/// HKDF salt and HPKE info of invite links ([`link_keys`]).
pub const LINK_LABEL: &[u8] = b"backchannel/v1/invite-link";
/// Label of [`safety_number`].
pub const SAFETY_NUMBER_LABEL: &[u8] = b"backchannel/v1/safety-number";

/// A derivation the hash library refused (a key or an output length out of its
/// bounds). None of ours can be refused with the lengths they use, but a refusal
/// is an error, never a key of zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("key derivation failed: {0}")]
pub struct DeriveError(&'static str);

/// A member's identifier in a channel: a hash of its signature public key.
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct MemberId(pub [u8; 32]);

impl MemberId {
    /// The first 8 bytes, as carried in payload heads.
    pub fn short(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(&self.0[..8]);
        out
    }
}

impl std::fmt::Debug for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemberId({})", hex::encode(&self.0[..4]))
    }
}

/// `SHA-256(MEMBER_ID_LABEL || u8 len || signature_key)`.
pub fn member_id(signature_key: &[u8]) -> MemberId {
    let mut h = Sha256::new();
    h.update(MEMBER_ID_LABEL);
    h.update([signature_key.len().min(255) as u8]);
    h.update(signature_key);
    MemberId(h.finalize().into())
}

/// `SHA-256(CHAIN_LABEL || unpadded payload)`: what the next payload of the same
/// sender carries as `prev_hash`.
pub fn chain_hash(unpadded_payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHAIN_LABEL);
    h.update(unpadded_payload);
    h.finalize().into()
}

/// The key that seals this epoch's blobs:
/// `HKDF-Expand-SHA256(channel_secret, ENVELOPE_KEY_INFO, 32)`, where the channel
/// secret is the MLS exporter output for [`CHANNEL_EXPORTER_LABEL`].
pub fn envelope_key(channel_secret: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, DeriveError> {
    let mut out = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::from_prk(channel_secret)
        .map_err(|_| DeriveError("envelope key PRK"))?
        .expand(ENVELOPE_KEY_INFO, out.as_mut())
        .map_err(|_| DeriveError("envelope key length"))?;
    Ok(out)
}

/// The number two members compare to know they hold each other's true key: 60
/// digits in 12 groups of 5, from `SHA-512(SAFETY_NUMBER_LABEL || u8 len || key ||
/// u8 len || key)` with the two signature keys in ascending order (so both sides get
/// the same), each group the big-endian value of 5 bytes modulo 100000.
///
/// Keys are per channel, so the number is too; a substituted key changes it.
pub fn safety_number(key_a: &[u8], key_b: &[u8]) -> String {
    let (lo, hi) = if key_a <= key_b {
        (key_a, key_b)
    } else {
        (key_b, key_a)
    };
    let mut h = Sha512::new();
    h.update(SAFETY_NUMBER_LABEL);
    for key in [lo, hi] {
        h.update([key.len().min(255) as u8]);
        h.update(key);
    }
    let digest = h.finalize();
    digest
        .chunks_exact(5)
        .take(12)
        .map(|c| {
            let value = c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            format!("{:05}", value % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the two sides of a one-time code derive from the PAKE's shared key.
pub struct InviteKeys {
    /// Sent by the inviter to prove it holds the key.
    pub confirm_inviter: [u8; 32],
    /// Sent by the joiner to prove it holds the key.
    pub confirm_joiner: [u8; 32],
    /// Seals what the inviter sends.
    pub seal_inviter: Zeroizing<[u8; 32]>,
    /// Seals what the joiner sends.
    pub seal_joiner: Zeroizing<[u8; 32]>,
}

/// `HKDF-SHA256(salt = INVITE_LABEL, ikm = pake_key)`, expanded with info
/// `INVITE_LABEL || "/" || purpose` for each purpose: `confirm-inviter`,
/// `confirm-joiner`, `seal-inviter`, `seal-joiner`.
pub fn invite_keys(pake_key: &[u8]) -> Result<InviteKeys, DeriveError> {
    let hk = Hkdf::<Sha256>::new(Some(INVITE_LABEL), pake_key);
    let expand = |purpose: &str| {
        let mut info = INVITE_LABEL.to_vec();
        info.push(b'/');
        info.extend_from_slice(purpose.as_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        hk.expand(&info, out.as_mut())
            .map_err(|_| DeriveError("invite key length"))?;
        Ok(out)
    };
    Ok(InviteKeys {
        confirm_inviter: *expand("confirm-inviter")?,
        confirm_joiner: *expand("confirm-joiner")?,
        seal_inviter: expand("seal-inviter")?,
        seal_joiner: expand("seal-joiner")?,
    })
}

/// The keys of one join request through an invite link, from the secret both
/// sides export from HPKE: `HKDF-SHA256(salt = LINK_LABEL, ikm = secret)` expanded
/// with info `LINK_LABEL || "/request"` (seals the request) and `... "/reply"`
/// (seals the answer).
pub fn link_keys(exported: &[u8]) -> Result<LinkKeys, DeriveError> {
    let hk = Hkdf::<Sha256>::new(Some(LINK_LABEL), exported);
    let expand = |purpose: &[u8]| {
        let mut info = LINK_LABEL.to_vec();
        info.extend_from_slice(purpose);
        let mut out = Zeroizing::new([0u8; 32]);
        hk.expand(&info, out.as_mut())
            .map_err(|_| DeriveError("link key length"))?;
        Ok(out)
    };
    Ok((expand(b"/request")?, expand(b"/reply")?))
}

/// The request key and the reply key of [`link_keys`].
pub type LinkKeys = (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_id_known_answer() {
        let key: Vec<u8> = (0..32).collect();
        assert_eq!(
            hex::encode(member_id(&key).0),
            "26d5b6acad66f53241a4ee302a317a6a6c2167691c934635fc6dad5d230203f5"
        );
    }

    #[test]
    fn chain_hash_known_answer() {
        assert_eq!(
            hex::encode(chain_hash(b"abc")),
            "d6ab4f0162c4541bbac94421f7d68ca42387abb294ae74c6342c65dbaa135443"
        );
    }

    #[test]
    fn safety_number_known_answer() {
        let a: Vec<u8> = (0..32).collect();
        let b: Vec<u8> = (32..64).collect();
        let expected = "94117 77997 94715 62141 99883 73780 29399 59790 69983 36645 30310 50142";
        assert_eq!(safety_number(&a, &b), expected);
        // The same from either side; different for any other key.
        assert_eq!(safety_number(&b, &a), expected);
        let other: Vec<u8> = (1..33).collect();
        assert_eq!(
            safety_number(&a, &other),
            "64029 65358 27176 03539 01583 20370 91756 43338 78384 26919 51316 31140"
        );
    }

    #[test]
    fn invite_keys_known_answer() -> Result<(), DeriveError> {
        let keys = invite_keys(&[0x42; 32])?;
        assert_eq!(
            hex::encode(keys.confirm_inviter),
            "50cfda4f198c16e418780303961de37ce5827daf3e4dfe73c38d98f6fc30c0df"
        );
        assert_eq!(
            hex::encode(keys.confirm_joiner),
            "ceda5940811bac7349915c404f88a12f269a9ff19780eccf110a4cc0bc06c397"
        );
        assert_eq!(
            hex::encode(keys.seal_inviter.as_ref()),
            "55d2b84881092c04ff7a794ff1194742f8f56c2158885e3d5cde462b116a96de"
        );
        assert_eq!(
            hex::encode(keys.seal_joiner.as_ref()),
            "9be09b2011fbaa8d6d9526ac42bd9ace5bededd7eecc05b5f5b8d85fc42cff01"
        );
        Ok(())
    }

    #[test]
    fn link_keys_known_answer() -> Result<(), DeriveError> {
        let (request, reply) = link_keys(&[0x42; 32])?;
        assert_eq!(
            hex::encode(request.as_ref()),
            "5bde24aaeb18809152aaa5c84dc408693b3ea916a316f50f2a5fda9dc643a53c"
        );
        assert_eq!(
            hex::encode(reply.as_ref()),
            "83390aea4d36bb956e485569531c372d30066150bca1d649a4cb85d0bac4f9b9"
        );
        Ok(())
    }

    #[test]
    fn envelope_key_known_answer() -> Result<(), DeriveError> {
        assert_eq!(
            hex::encode(envelope_key(&[0x42; 32])?.as_ref()),
            "4cc24d38f51843ca88dcc2bb8c08a28f27e5a36fbd40f7963dd4dc5455238246"
        );
        Ok(())
    }
}
