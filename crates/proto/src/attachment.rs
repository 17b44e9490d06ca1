//! Attachments: a file sent once to a relay, and the descriptor that a channel
//! message carries to its members.
//!
//! The file is padded to a size class ([`padded_len`]), cut into pieces of
//! [`PIECE_LEN`] bytes, each sealed into one relay blob (see
//! `backchannel_core::attachment`), and stored in fresh mailboxes of at most
//! [`SEGMENT_BLOBS`] blobs each (under relays' per-mailbox quotas). Members read
//! those mailboxes without deleting anything, with the read capability the
//! descriptor carries.
//!
//! ```text
//! descriptor = u8 version (1) || u16 len, relay address (UTF-8)
//!              || key[32] || digest[32] (SHA-256 of the file)
//!              || u64 size || u16 len, name (UTF-8) || u64 expires_at (ms)
//!              || u16 count, count × segment
//! segment    = read_id[16] || auth_seed[32] || u32 blobs
//! ```

use crate::DecodeError;
use crate::addr::MailboxId;
use crate::codec::{Reader, Writer};
use crate::envelope::{BLOB_LEN, BLOB_NONCE_LEN, BLOB_TAG_LEN};

/// File bytes one blob carries (besides its nonce, sealed index and tag).
pub const PIECE_LEN: usize = BLOB_LEN - BLOB_NONCE_LEN - 8 - BLOB_TAG_LEN;
/// The largest file, in bytes (100 MiB).
pub const MAX_SIZE: u64 = 100 * 1024 * 1024;
/// Most blobs in one mailbox (about 7.5 MiB of file).
pub const SEGMENT_BLOBS: u32 = 2048;
/// The longest file name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// The longest relay address, in bytes.
const MAX_RELAY_LEN: usize = 2048;
const VERSION: u8 = 1;

/// The length a file of `size` bytes is padded to: Padmé (Nikitin et al., "Reducing
/// Metadata Leakage from Encrypted Files and Communication with PURBs", 2019),
/// which leaks O(log log size) bits of the size for at most 12% of overhead.
pub fn padded_len(size: u64) -> u64 {
    if size < 2 {
        return size;
    }
    let e = 63 - u64::from(size.leading_zeros()); // floor(log2 size)
    let s = 64 - u64::from(e.leading_zeros()); // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    (size + mask) & !mask
}

/// The blobs a file of `size` bytes takes (one at least, for an empty file).
pub fn blobs_for(size: u64) -> u64 {
    padded_len(size).div_ceil(PIECE_LEN as u64).max(1)
}

/// One mailbox holding part of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where members read it.
    pub read_id: MailboxId,
    /// The seed of the mailbox's Ed25519 key: the capability to read it.
    pub auth_seed: [u8; 32],
    /// Blobs in it.
    pub blobs: u32,
}

/// What members need to fetch, open and check a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// The relay holding it (`bcr://...`).
    pub relay: String,
    /// The key its blobs are sealed under (fresh for this file).
    pub key: [u8; 32],
    /// SHA-256 of the file.
    pub digest: [u8; 32],
    /// Its size in bytes.
    pub size: u64,
    /// Its name, as the sender gave it (receivers make it safe before use).
    pub name: String,
    /// When the relay drops it, in milliseconds since the Unix epoch.
    pub expires_at: u64,
    /// The mailboxes, in order.
    pub segments: Vec<Segment>,
}

impl Descriptor {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256 + self.segments.len() * 52);
        w.u8(VERSION);
        put_text(&mut w, &self.relay, MAX_RELAY_LEN);
        w.put(&self.key);
        w.put(&self.digest);
        w.u64(self.size);
        put_text(&mut w, &self.name, MAX_NAME_LEN);
        w.u64(self.expires_at);
        w.u16(u16::try_from(self.segments.len()).unwrap_or(u16::MAX));
        for s in &self.segments {
            w.put(&s.read_id.0);
            w.put(&s.auth_seed);
            w.u32(s.blobs);
        }
        w.bytes
    }

    /// Decodes strictly: the segments must hold exactly the blobs the size takes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let relay = read_text(&mut r, MAX_RELAY_LEN)?;
        let key = r.array()?;
        let digest = r.array()?;
        let size = r.u64()?;
        if size > MAX_SIZE {
            return Err(DecodeError::InvalidValue("attachment size"));
        }
        let name = read_text(&mut r, MAX_NAME_LEN)?;
        let expires_at = r.u64()?;
        let count = usize::from(r.u16()?);
        let needed = blobs_for(size);
        if count as u64 != needed.div_ceil(u64::from(SEGMENT_BLOBS)) {
            return Err(DecodeError::InvalidValue("segment count"));
        }
        let mut segments = Vec::with_capacity(count);
        let mut total = 0u64;
        for _ in 0..count {
            let segment = Segment {
                read_id: MailboxId(r.array()?),
                auth_seed: r.array()?,
                blobs: r.u32()?,
            };
            if segment.blobs == 0 || segment.blobs > SEGMENT_BLOBS {
                return Err(DecodeError::InvalidValue("segment size"));
            }
            total += u64::from(segment.blobs);
            segments.push(segment);
        }
        if total != needed {
            return Err(DecodeError::InvalidValue("blob count"));
        }
        r.finish()?;
        Ok(Self {
            relay,
            key,
            digest,
            size,
            name,
            expires_at,
            segments,
        })
    }

    /// The blobs of the whole file.
    pub fn blobs(&self) -> u64 {
        self.segments.iter().map(|s| u64::from(s.blobs)).sum()
    }
}

/// The segments' sizes for a file of `size` bytes: full ones, then the rest.
pub fn segment_sizes(size: u64) -> Vec<u32> {
    let mut left = blobs_for(size);
    let mut sizes = Vec::new();
    while left > 0 {
        let n = left.min(u64::from(SEGMENT_BLOBS));
        sizes.push(n as u32);
        left -= n;
    }
    sizes
}

fn put_text(w: &mut Writer, text: &str, max: usize) {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = text.get(..end).unwrap_or_default();
    w.u16(text.len() as u16);
    w.put(text.as_bytes());
}

fn read_text(r: &mut Reader<'_>, max: usize) -> Result<String, DecodeError> {
    let len = usize::from(r.u16()?);
    if len > max {
        return Err(DecodeError::TooLong);
    }
    let bytes = r.take(len)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn padme_leaks_little_and_costs_at_most_an_eighth() {
        // Values from the paper's definition, worked by hand.
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 1);
        assert_eq!(padded_len(9), 10);
        assert_eq!(padded_len(1000), 1024);
        assert_eq!(padded_len(1_000_000), 1_015_808);
        assert_eq!(padded_len(MAX_SIZE), MAX_SIZE);
        let mut classes = std::collections::BTreeSet::new();
        for size in (1u64..=MAX_SIZE).step_by(99_991) {
            let p = padded_len(size);
            assert!(p >= size && p - size <= size / 8 + 1, "{size} -> {p}");
            assert_eq!(padded_len(p), p, "a class is its own class");
            classes.insert(p);
        }
        assert!(classes.len() < 1049 / 2, "{} classes", classes.len());
    }

    fn descriptor(size: u64) -> Descriptor {
        let segments = segment_sizes(size)
            .into_iter()
            .enumerate()
            .map(|(i, blobs)| Segment {
                read_id: MailboxId([i as u8; 16]),
                auth_seed: [7; 32],
                blobs,
            })
            .collect();
        Descriptor {
            relay: "bcr://abc@relay.example:7443".into(),
            key: [1; 32],
            digest: [2; 32],
            size,
            name: "report ü.pdf".into(),
            expires_at: 1_800_000_000_000,
            segments,
        }
    }

    #[test]
    fn descriptors_round_trip_and_must_add_up() {
        for size in [0, 1, 3792, 3793, 10 << 20, MAX_SIZE] {
            let d = descriptor(size);
            assert_eq!(d.blobs(), blobs_for(size));
            assert_eq!(Descriptor::decode(&d.encode()).unwrap(), d);
        }
        assert_eq!(segment_sizes(MAX_SIZE).len(), 14);
        // A segment short of a blob, one too many, a size over the limit.
        let mut d = descriptor(10 << 20);
        d.segments[1].blobs -= 1;
        assert!(Descriptor::decode(&d.encode()).is_err());
        let mut d = descriptor(10 << 20);
        d.segments.pop();
        assert!(Descriptor::decode(&d.encode()).is_err());
        let mut d = descriptor(MAX_SIZE);
        d.size = MAX_SIZE + 1;
        assert!(Descriptor::decode(&d.encode()).is_err());
        // Truncated or trailing bytes.
        let bytes = descriptor(5).encode();
        for cut in 0..bytes.len() {
            assert!(Descriptor::decode(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Descriptor::decode(&longer).is_err());
    }
}
