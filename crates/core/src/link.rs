//! Invite links: join requests sealed to the link's post-quantum key, and found
//! again among the blobs of the link's mailbox.
//!
//! The joiner runs HPKE (RFC 9180, the X-Wing KEM of ciphersuite `0x004D`, through
//! the OpenMLS crypto provider) to the link's public key in export-only mode, and
//! derives a request key and a reply key ([`crate::derive::link_keys`]). The request
//! is the encapsulation, padded to a blob, followed by the key package sealed as
//! `JoinRequest` fragments under the request key. Anyone may write to the link's
//! mailbox, so the inviter treats every blob that no known request key opens as a
//! possible encapsulation, and keeps only requests that assemble completely. The
//! answer is sealed under the reply key, which only the joiner also holds.

use backchannel_proto::envelope::{BLOB_LEN, ContentKind, Fragment};
use backchannel_proto::link::JoinReply;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{HpkeConfig, HpkeKeyPair};
use zeroize::Zeroizing;

use openmls_traits::OpenMlsProvider as _;

use crate::context::Storage;
use crate::derive::{LINK_LABEL, link_keys};
use crate::engine::Engine;
use crate::mls::Suite;
use crate::seal;

/// HPKE exporter context of a join request.
const EXPORT_CONTEXT: &[u8] = b"backchannel/v1/invite-link/export";

/// Length of an X-Wing encapsulation.
pub const ENC_LEN: usize = 1120;

fn config() -> HpkeConfig {
    Suite::XWing.ciphersuite().hpke_config()
}

/// Why link cryptography failed.
#[derive(Debug, thiserror::Error)]
#[error("invite link: {0}")]
pub struct LinkCryptoError(String);

fn err(e: impl std::fmt::Debug) -> LinkCryptoError {
    LinkCryptoError(format!("{e:?}"))
}

/// The link's key pair, from a 32-byte seed kept by the inviter.
pub fn link_keypair(
    crypto: &impl OpenMlsCrypto,
    seed: &[u8; 32],
) -> Result<HpkeKeyPair, LinkCryptoError> {
    crypto.derive_hpke_keypair(config(), seed).map_err(err)
}

/// A sealed request and the key its answer will come under.
pub struct SealedRequest {
    /// The blobs to put into the link's mailbox, in order.
    pub blobs: Vec<Vec<u8>>,
    /// Opens the answer.
    pub reply_key: Zeroizing<[u8; 32]>,
}

fn seal_content(
    rand: &impl OpenMlsRand,
    key: &[u8; 32],
    kind: ContentKind,
    content: &[u8],
) -> Result<Vec<Vec<u8>>, LinkCryptoError> {
    let id: [u8; 16] = rand.random_array().map_err(err)?;
    let fragments = Fragment::split(kind, id, content).map_err(err)?;
    fragments
        .iter()
        .map(|f| {
            let nonce: [u8; 24] = rand.random_array().map_err(err)?;
            seal::seal(key, nonce, &f.encode())
                .ok_or_else(|| LinkCryptoError("sealing failed".into()))
        })
        .collect()
}

/// Seals `key_package` to the link's public key.
pub fn seal_request(
    crypto: &impl OpenMlsCrypto,
    rand: &impl OpenMlsRand,
    public_key: &[u8],
    key_package: &[u8],
) -> Result<SealedRequest, LinkCryptoError> {
    let (enc, secret) = crypto
        .hpke_setup_sender_and_export(config(), public_key, LINK_LABEL, EXPORT_CONTEXT, 32)
        .map_err(err)?;
    // `ExporterSecret` zeroizes itself when dropped.
    if enc.len() != ENC_LEN {
        return Err(LinkCryptoError(format!(
            "an encapsulation of {} bytes",
            enc.len()
        )));
    }
    let (request_key, reply_key) = link_keys(&secret).map_err(err)?;
    let mut header = enc;
    let padding = rand.random_vec(BLOB_LEN - ENC_LEN).map_err(err)?;
    header.extend_from_slice(&padding);
    let mut blobs = vec![header];
    blobs.extend(seal_content(
        rand,
        &request_key,
        ContentKind::JoinRequest,
        key_package,
    )?);
    Ok(SealedRequest { blobs, reply_key })
}

/// Seals the answer to a request.
pub fn seal_reply(
    rand: &impl OpenMlsRand,
    reply_key: &[u8; 32],
    reply: &JoinReply,
) -> Result<Vec<Vec<u8>>, LinkCryptoError> {
    seal_content(rand, reply_key, ContentKind::JoinReply, &reply.encode())
}

/// A complete request found in a link's mailbox.
pub struct FoundRequest {
    /// The joiner's key package.
    pub key_package: Vec<u8>,
    /// Seals our answer.
    pub reply_key: Zeroizing<[u8; 32]>,
    /// Which of the blobs it was made of.
    pub used: Vec<usize>,
}

struct Candidate {
    header: usize,
    request_key: Zeroizing<[u8; 32]>,
    reply_key: Zeroizing<[u8; 32]>,
    fragments: Vec<(usize, Fragment)>,
}

/// Opens `blob` as a fragment of `kind` under `key`.
fn open_fragment(key: &[u8; 32], blob: &[u8], kind: ContentKind) -> Option<Fragment> {
    let plain = seal::open(key, blob)?;
    Fragment::decode(&plain).ok().filter(|f| f.kind == kind)
}

/// Adds a fragment; the whole content once every fragment of its message is in.
fn complete(fragments: &[(usize, Fragment)]) -> Option<Vec<u8>> {
    let first = &fragments.first()?.1;
    let same: Vec<Fragment> = fragments
        .iter()
        .filter(|(_, f)| f.message_id == first.message_id)
        .map(|(_, f)| f.clone())
        .collect();
    (same.len() == usize::from(first.count))
        .then(|| Fragment::join(&same).ok())
        .flatten()
}

/// Takes the request out of `candidates[pos]` if all its fragments are in.
fn take_complete(candidates: &mut Vec<Candidate>, pos: usize) -> Option<FoundRequest> {
    let key_package = complete(&candidates.get(pos)?.fragments)?;
    let c = candidates.swap_remove(pos);
    let mut used = vec![c.header];
    used.extend(c.fragments.iter().map(|(i, _)| *i));
    used.sort_unstable();
    Some(FoundRequest {
        key_package,
        reply_key: c.reply_key,
        used,
    })
}

/// Every complete join request among a link mailbox's blobs, in the order they
/// completed. The relay may deliver a request's blobs in any order: a fragment
/// seen before its header waits among the orphans until the header comes.
pub fn find_requests(
    crypto: &impl OpenMlsCrypto,
    private_key: &[u8],
    blobs: &[Vec<u8>],
) -> Vec<FoundRequest> {
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut orphans: Vec<usize> = Vec::new();
    let mut found = Vec::new();
    for (i, blob) in blobs.iter().enumerate() {
        let opened = candidates.iter_mut().enumerate().find_map(|(pos, c)| {
            let f = open_fragment(&c.request_key, blob, ContentKind::JoinRequest)?;
            c.fragments.push((i, f));
            Some(pos)
        });
        if let Some(pos) = opened {
            found.extend(take_complete(&mut candidates, pos));
            continue;
        }
        // Anything may be an encapsulation: ML-KEM decapsulates every input (to a
        // useless key when it is not one), so only what follows tells.
        let secret = blob.get(..ENC_LEN).and_then(|enc| {
            crypto
                .hpke_setup_receiver_and_export(
                    config(),
                    enc,
                    private_key,
                    LINK_LABEL,
                    EXPORT_CONTEXT,
                    32,
                )
                .ok()
        });
        if let Some((request_key, reply_key)) = secret.and_then(|s| link_keys(&s).ok()) {
            let mut c = Candidate {
                header: i,
                request_key,
                reply_key,
                fragments: Vec::new(),
            };
            orphans.retain(|&j| {
                let Some(f) = blobs
                    .get(j)
                    .and_then(|b| open_fragment(&c.request_key, b, ContentKind::JoinRequest))
                else {
                    return true;
                };
                c.fragments.push((j, f));
                false
            });
            candidates.push(c);
            let pos = candidates.len() - 1;
            found.extend(take_complete(&mut candidates, pos));
        }
        // It may also be a fragment whose header comes later.
        orphans.push(i);
    }
    found
}

/// The answer, once all its blobs are among `blobs`, and which blobs it was made of.
pub fn open_reply(reply_key: &[u8; 32], blobs: &[Vec<u8>]) -> Option<(JoinReply, Vec<usize>)> {
    let fragments: Vec<(usize, Fragment)> = blobs
        .iter()
        .enumerate()
        .filter_map(|(i, b)| open_fragment(reply_key, b, ContentKind::JoinReply).map(|f| (i, f)))
        .collect();
    let reply = JoinReply::decode(&complete(&fragments)?).ok()?;
    Some((reply, fragments.iter().map(|(i, _)| *i).collect()))
}

impl<S: Storage> Engine<S> {
    /// The public key of the link whose key pair comes from `seed`.
    pub fn link_public_key(&self, seed: &[u8; 32]) -> Result<Vec<u8>, LinkCryptoError> {
        Ok(link_keypair(self.backend.crypto(), seed)?.public)
    }

    /// Seals our key package to a link's public key.
    pub fn seal_join_request(
        &self,
        public_key: &[u8],
        key_package: &[u8],
    ) -> Result<SealedRequest, LinkCryptoError> {
        seal_request(
            self.backend.crypto(),
            self.backend.rand(),
            public_key,
            key_package,
        )
    }

    /// Every complete request among the blobs of the link whose key pair comes from
    /// `seed`.
    pub fn find_join_requests(
        &self,
        seed: &[u8; 32],
        blobs: &[Vec<u8>],
    ) -> Result<Vec<FoundRequest>, LinkCryptoError> {
        let keys = link_keypair(self.backend.crypto(), seed)?;
        Ok(find_requests(self.backend.crypto(), &keys.private, blobs))
    }

    /// Seals the answer to a request.
    pub fn seal_join_reply(
        &self,
        reply_key: &[u8; 32],
        reply: &JoinReply,
    ) -> Result<Vec<Vec<u8>>, LinkCryptoError> {
        seal_reply(self.backend.rand(), reply_key, reply)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use openmls_libcrux_crypto::Provider;
    use openmls_traits::OpenMlsProvider;

    #[test]
    fn a_request_is_found_among_noise_and_answered() {
        let provider = Provider::default();
        let (crypto, rand) = (provider.crypto(), provider.rand());
        let keys = link_keypair(crypto, &[7; 32]).unwrap();
        for _ in 0..20 {
            let again = link_keypair(crypto, &[7; 32]).unwrap();
            assert_eq!(again.public, keys.public);
            assert_eq!(again.private.as_ref(), keys.private.as_ref());
        }
        for size in [400, 2748, 3500, 5000].repeat(50) {
            let kp = vec![0x5a; size];
            let r = seal_request(crypto, rand, &keys.public, &kp).unwrap();
            let found = find_requests(crypto, &keys.private, &r.blobs);
            assert_eq!(found.len(), 1, "size {size}, {} blobs", r.blobs.len());
        }
        let key_package = vec![0x5a; 5000];
        let request = seal_request(crypto, rand, &keys.public, &key_package).unwrap();
        assert_eq!(request.blobs.len(), 3, "a header and two fragments");
        assert!(request.blobs.iter().all(|b| b.len() == BLOB_LEN));

        // Noise before, between and after; another request interleaved.
        let other = seal_request(crypto, rand, &keys.public, b"other kp").unwrap();
        let noise = || rand.random_vec(BLOB_LEN).unwrap();
        let mailbox = vec![
            noise(),
            request.blobs[0].clone(),
            other.blobs[0].clone(),
            noise(),
            request.blobs[2].clone(),
            other.blobs[1].clone(),
            request.blobs[1].clone(),
            noise(),
        ];
        let found = find_requests(crypto, &keys.private, &mailbox);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].key_package, b"other kp");
        assert_eq!(found[1].key_package, key_package);
        assert_eq!(found[1].used, vec![1, 4, 6]);
        assert_eq!(*found[1].reply_key, *request.reply_key);

        // Delivered in any order, it is still found.
        let mut reversed = mailbox.clone();
        reversed.reverse();
        let found_reversed = find_requests(crypto, &keys.private, &reversed);
        assert_eq!(found_reversed.len(), 2);
        assert!(found_reversed.iter().any(|f| f.key_package == key_package));

        // Another link's key finds nothing.
        let stranger = link_keypair(crypto, &[8; 32]).unwrap();
        assert!(find_requests(crypto, &stranger.private, &mailbox).is_empty());

        let reply = seal_reply(
            rand,
            &found[1].reply_key,
            &JoinReply::Welcome(vec![1; 9000]),
        )
        .unwrap();
        let (opened, used) = open_reply(&request.reply_key, &reply).unwrap();
        assert_eq!(opened, JoinReply::Welcome(vec![1; 9000]));
        assert_eq!(used, (0..reply.len()).collect::<Vec<_>>());
        assert!(open_reply(&other.reply_key, &reply).is_none());
        assert!(
            open_reply(&request.reply_key, &reply[..1]).is_none(),
            "incomplete"
        );
    }
}
