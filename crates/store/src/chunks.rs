//! Large OpenMLS values kept as content-addressed chunks, so that rewriting a value
//! writes only the parts that changed.
//!
//! OpenMLS stores some of its state as whole values that grow with the channel and
//! are rewritten on every message: the message secrets keep the member list of each
//! past epoch (with X-Wing keys, ~1.3 KiB per member and epoch), the tree keeps
//! every leaf. A value larger than [`INLINE_MAX`] is cut where its content says
//! (a gear hash over the last 64 bytes, as in FastCDC, so an insertion moves only
//! the cuts near it), each chunk is stored once in `mls_chunk` under its
//! [`chunk_id`] with a count of the references to it, and the value's row holds
//! [`CHUNKED`] followed by the ids in order. A rewrite adds the chunks it did not
//! have and drops the ones no value refers to any more; member lists repeated
//! across epochs share their chunks. Dropped chunks go with `secure_delete`, as
//! every other row: nothing of an old secret stays once no value holds it.
//!
//! Chunking changes nothing of what is stored, only where: reading a chunked value
//! gives back exactly the bytes that were written.

use std::collections::HashMap;

use rusqlite::{OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};

use crate::{Store, StoreError};

/// First byte of a chunked value; then 32-byte chunk ids.
pub(crate) const CHUNKED: u8 = 0xB2;

/// Values up to this size stay in their row.
pub(crate) const INLINE_MAX: usize = 32 * 1024;

const MIN_CHUNK: usize = 2 * 1024;
const MAX_CHUNK: usize = 32 * 1024;
/// A cut where the top 13 bits of the gear hash are zero: one in 8 KiB on average
/// past the minimum.
const CUT_BITS: u32 = 13;

/// Domain separation of chunk ids.
const CHUNK_LABEL: &[u8] = b"backchannel/v1/mls-chunk";

/// A chunk's id: SHA-256 over [`CHUNK_LABEL`] and the chunk.
pub(crate) fn chunk_id(chunk: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(CHUNK_LABEL)
        .chain_update(chunk)
        .finalize()
        .into()
}

/// The gear table: 256 fixed pseudo-random words (SplitMix64 from a fixed seed).
/// Not a secret and not a security property: it only decides where cuts fall.
static GEAR: [u64; 256] = gear_table();

#[allow(clippy::indexing_slicing)] // i < 256, in a constant
const fn gear_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x6261_636b_6368_616e; // "backchan"
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

/// Cuts `data` into chunks of [`MIN_CHUNK`] to [`MAX_CHUNK`] bytes (the last may be
/// shorter), at places that depend only on the 64 bytes before them.
pub(crate) fn cut(data: &[u8]) -> Vec<&[u8]> {
    let mut chunks = Vec::with_capacity(data.len() / (MIN_CHUNK + (1 << CUT_BITS)) + 1);
    let mut rest = data;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(boundary(rest));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

#[allow(clippy::indexing_slicing)] // a byte indexes a table of 256
fn gear(hash: u64, byte: u8) -> u64 {
    (hash << 1).wrapping_add(GEAR[usize::from(byte)])
}

fn boundary(data: &[u8]) -> usize {
    let end = data.len().min(MAX_CHUNK);
    let (Some(warm), Some(body)) = (
        data.get(MIN_CHUNK - 64..MIN_CHUNK),
        data.get(MIN_CHUNK..end),
    ) else {
        return end;
    };
    // The hash of the 64 bytes before the minimum, so that a cut right after it
    // depends on content, as every other.
    let mut hash = warm.iter().fold(0, |h, &b| gear(h, b));
    for (i, &b) in body.iter().enumerate() {
        hash = gear(hash, b);
        if hash >> (64 - CUT_BITS) == 0 {
            return MIN_CHUNK + i + 1;
        }
    }
    end
}

/// The chunk ids a stored value refers to (none if it is not chunked).
fn ids_of(stored: &[u8]) -> Result<Vec<[u8; 32]>, StoreError> {
    match stored.split_first() {
        Some((&CHUNKED, ids)) => {
            let (ids, rest) = ids.as_chunks::<32>();
            if !rest.is_empty() {
                return Err(StoreError::Missing("whole chunk id"));
            }
            Ok(ids.to_vec())
        }
        _ => Ok(Vec::new()),
    }
}

impl Store {
    /// Writes an encoded value to `mls_kv`, chunked if it is large, and adjusts the
    /// chunks that the old and the new value refer to. All of it or nothing: the
    /// row and the reference counts change together.
    pub(crate) fn put_value(
        &self,
        label: &str,
        key: &[u8],
        encoded: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.atomically(move || {
            let old = self.stored_ids(label, key)?;
            let (row, new) = if encoded.len() > INLINE_MAX {
                let chunks = cut(&encoded);
                let mut row = Vec::with_capacity(1 + 32 * chunks.len());
                row.push(CHUNKED);
                let mut new = Vec::with_capacity(chunks.len());
                for chunk in chunks {
                    let id = chunk_id(chunk);
                    row.extend_from_slice(&id);
                    new.push((id, chunk));
                }
                (row, new)
            } else {
                (encoded, Vec::new())
            };
            self.adjust_chunks(&new, &old)?;
            self.conn
                .prepare_cached(
                    "INSERT INTO mls_kv (label, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (label, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![label, key, row])?;
            Ok(())
        })
    }

    /// Reads an encoded value from `mls_kv`, joining its chunks.
    pub(crate) fn get_value(&self, label: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(stored) = self.stored_row(label, key)? else {
            return Ok(None);
        };
        if stored.first() != Some(&CHUNKED) {
            return Ok(Some(stored));
        }
        let mut value = Vec::new();
        let mut select = self
            .conn
            .prepare_cached("SELECT data FROM mls_chunk WHERE id = ?1")?;
        for id in ids_of(&stored)? {
            let data: Vec<u8> = select
                .query_row([&id[..]], |r| r.get(0))
                .optional()?
                .ok_or(StoreError::Missing("chunk of an MLS value"))?;
            value.extend_from_slice(&data);
        }
        Ok(Some(value))
    }

    /// Deletes a value from `mls_kv` and drops the chunks no other value refers to.
    pub(crate) fn delete_value(&self, label: &str, key: &[u8]) -> Result<(), StoreError> {
        self.atomically(|| {
            let old = self.stored_ids(label, key)?;
            self.adjust_chunks(&[], &old)?;
            self.conn
                .prepare_cached("DELETE FROM mls_kv WHERE label = ?1 AND key = ?2")?
                .execute(params![label, key])?;
            Ok(())
        })
    }

    /// Recounts the references to every chunk from the rows that hold them, fixes
    /// any count that is off and deletes chunks no row refers to. Nothing should
    /// ever need it; a leaked count would keep old secrets on disk unseen, so the
    /// store's scrub makes sure.
    pub(crate) fn repair_chunks(&self) -> Result<usize, StoreError> {
        let mut counts: HashMap<[u8; 32], i64> = HashMap::new();
        {
            let mut rows = self
                .conn
                .prepare("SELECT value FROM mls_kv WHERE substr(value, 1, 1) = ?1")?;
            let mut rows = rows.query([&[CHUNKED][..]])?;
            while let Some(row) = rows.next()? {
                for id in ids_of(&row.get::<_, Vec<u8>>(0)?)? {
                    *counts.entry(id).or_default() += 1;
                }
            }
        }
        let stored: Vec<(Vec<u8>, i64)> = self
            .conn
            .prepare("SELECT id, refs FROM mls_chunk")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut fixed = 0;
        self.atomically(|| {
            for (id, refs) in stored {
                let want = <[u8; 32]>::try_from(id.as_slice())
                    .ok()
                    .and_then(|id| counts.get(&id).copied())
                    .unwrap_or(0);
                if want == refs {
                    continue;
                }
                fixed += 1;
                if want == 0 {
                    self.conn
                        .execute("DELETE FROM mls_chunk WHERE id = ?1", [&id])?;
                } else {
                    self.conn.execute(
                        "UPDATE mls_chunk SET refs = ?2 WHERE id = ?1",
                        params![&id, want],
                    )?;
                }
            }
            Ok(())
        })?;
        Ok(fixed)
    }

    /// A value's row as stored: the value, or [`CHUNKED`] and its chunk ids.
    fn stored_row(&self, label: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM mls_kv WHERE label = ?1 AND key = ?2")?
            .query_row(params![label, key], |r| r.get(0))
            .optional()?)
    }

    fn stored_ids(&self, label: &str, key: &[u8]) -> Result<Vec<[u8; 32]>, StoreError> {
        self.stored_row(label, key)?
            .map_or(Ok(Vec::new()), |row| ids_of(&row))
    }

    /// Counts references: +1 for each id of `new`, -1 for each of `old`. Chunks
    /// that gain their first reference are inserted, those left without one go.
    fn adjust_chunks(&self, new: &[([u8; 32], &[u8])], old: &[[u8; 32]]) -> Result<(), StoreError> {
        let mut delta: HashMap<[u8; 32], (i64, Option<&[u8]>)> = HashMap::new();
        for (id, data) in new {
            let entry = delta.entry(*id).or_insert((0, None));
            entry.0 += 1;
            entry.1 = Some(data);
        }
        for id in old {
            delta.entry(*id).or_insert((0, None)).0 -= 1;
        }
        for (id, (change, data)) in delta {
            match (change, data) {
                (0, _) => {}
                (n, Some(data)) if n > 0 => {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO mls_chunk (id, refs, data) VALUES (?1, ?2, ?3)
                         ON CONFLICT (id) DO UPDATE SET refs = refs + excluded.refs",
                        )?
                        .execute(params![&id[..], n, data])?;
                }
                (n, _) => {
                    self.conn
                        .prepare_cached("UPDATE mls_chunk SET refs = refs + ?2 WHERE id = ?1")?
                        .execute(params![&id[..], n])?;
                    self.conn
                        .prepare_cached("DELETE FROM mls_chunk WHERE id = ?1 AND refs <= 0")?
                        .execute([&id[..]])?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Store::create(dir.path(), b"chunks").unwrap(), dir)
    }

    /// Deterministic bytes that do not repeat (an LCG).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 56) as u8
            })
            .collect()
    }

    fn chunk_rows(store: &Store) -> Vec<(Vec<u8>, i64)> {
        let mut stmt = store
            .conn
            .prepare("SELECT id, refs FROM mls_chunk ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn chunk_ids_known_answer() {
        // sha256(b"backchannel/v1/mls-chunk" + b"abc"), computed with Python's hashlib.
        assert_eq!(
            hex::encode(chunk_id(b"abc")),
            "e3f6ff6c5656bd5ee29ffcffb5cc2be04d72d50556b003775fc902e8c86124fa"
        );
    }

    #[test]
    fn cuts_are_bounded_cover_everything_and_follow_content() {
        let data = noise(400_000, 7);
        let chunks = cut(&data);
        assert_eq!(chunks.concat(), data);
        let (last, body) = chunks.split_last().unwrap();
        assert!(
            body.iter()
                .all(|c| (MIN_CHUNK..=MAX_CHUNK).contains(&c.len()))
        );
        assert!(last.len() <= MAX_CHUNK);
        // About one cut per MIN + 8 KiB: not all at the maximum, not all at the minimum.
        assert!((20..=80).contains(&chunks.len()), "{}", chunks.len());
        // Bytes inserted near the front move only the cuts near them.
        let mut edited = data.clone();
        edited.splice(1000..1000, noise(100, 9));
        let before: std::collections::HashSet<_> = chunks.iter().map(|c| chunk_id(c)).collect();
        let after = cut(&edited);
        let shared = after
            .iter()
            .filter(|c| before.contains(&chunk_id(c)))
            .count();
        assert!(shared + 2 >= after.len(), "{shared} of {}", after.len());
        // Small and empty inputs.
        assert!(cut(&[]).is_empty());
        assert_eq!(cut(&data[..100]), [&data[..100]]);
    }

    #[test]
    fn a_large_value_round_trips_shares_repeats_and_leaves_nothing_behind() {
        let (store, _dir) = store();
        let part = noise(100_000, 1);
        // The same 100 kB three times, as past epochs repeat a member list.
        let value = [part.clone(), part.clone(), part.clone(), noise(5, 2)].concat();
        store.put_value("tree", b"k", value.clone()).unwrap();
        assert_eq!(store.get_value("tree", b"k").unwrap().unwrap(), value);
        let rows = chunk_rows(&store);
        let stored: usize = store
            .conn
            .query_row("SELECT sum(length(data)) FROM mls_chunk", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap() as usize;
        assert!(stored < 2 * part.len(), "{stored} bytes for 3 copies");
        assert!(rows.iter().any(|(_, refs)| *refs >= 2));

        // A rewrite that changes the end keeps the chunks of the start.
        let mut changed = value.clone();
        let n = changed.len();
        changed[n - 3] ^= 0xff;
        store.put_value("tree", b"k", changed.clone()).unwrap();
        assert_eq!(store.get_value("tree", b"k").unwrap().unwrap(), changed);
        let after = chunk_rows(&store);
        let kept = after
            .iter()
            .filter(|(id, _)| rows.iter().any(|(o, _)| o == id))
            .count();
        assert!(kept + 2 >= after.len());

        // A second value sharing chunks; deleting one leaves the other whole.
        store.put_value("other", b"k", value.clone()).unwrap();
        store.delete_value("tree", b"k").unwrap();
        assert_eq!(store.get_value("other", b"k").unwrap().unwrap(), value);
        assert_eq!(store.get_value("tree", b"k").unwrap(), None);
        // Shrinking to a small value, then deleting: no chunk is left.
        store.put_value("other", b"k", vec![1, 2, 3]).unwrap();
        assert_eq!(store.get_value("other", b"k").unwrap().unwrap(), [1, 2, 3]);
        assert!(chunk_rows(&store).is_empty());
        store.put_value("other", b"k", value.clone()).unwrap();
        store.delete_value("other", b"k").unwrap();
        assert!(chunk_rows(&store).is_empty());
    }

    #[test]
    fn erasing_a_channel_s_mls_state_drops_its_chunks() {
        use backchannel_core::store::EngineStore as _;
        let (store, _dir) = store();
        let group = b"\"group-of-the-channel\"";
        store.put_value("tree", group, noise(100_000, 4)).unwrap();
        store
            .put_value("tree", b"another", noise(100_000, 5))
            .unwrap();
        let before = chunk_rows(&store).len();
        store.erase_mls_residue(b"group-of-the-channel").unwrap();
        assert_eq!(store.get_value("tree", group).unwrap(), None);
        let left = chunk_rows(&store).len();
        assert!(left > 0 && left < before, "{left} of {before}");
        assert_eq!(
            store.get_value("tree", b"another").unwrap().unwrap(),
            noise(100_000, 5)
        );
    }

    /// A chunk no value refers to, as a leaked count would leave.
    fn stray_chunk(store: &Store, id: u8, refs: i64, data: &[u8]) {
        store
            .conn
            .execute(
                "INSERT INTO mls_chunk (id, refs, data) VALUES (?1, ?2, ?3)",
                params![&[id; 32][..], refs, data],
            )
            .unwrap();
    }

    #[test]
    fn scrubbing_repairs_counts_and_drops_orphan_chunks() {
        use backchannel_core::store::EngineStore as _;
        let (store, dir) = store();
        let value = [noise(50_000, 6), noise(50_000, 6)].concat();
        store.put_value("tree", b"k", value.clone()).unwrap();
        let good = chunk_rows(&store);
        // An orphan (as a leaked count would leave) and a count set wrong.
        stray_chunk(&store, 7, 1, b"an old secret");
        store
            .conn
            .execute(
                "UPDATE mls_chunk SET refs = refs + 5 WHERE id = ?1",
                [&good[0].0],
            )
            .unwrap();
        store.scrub().unwrap();
        assert_eq!(chunk_rows(&store), good);
        assert_eq!(store.repair_chunks().unwrap(), 0);
        assert_eq!(store.get_value("tree", b"k").unwrap().unwrap(), value);
        // Opening the store repairs too.
        stray_chunk(&store, 8, 2, b"another old secret");
        drop(store);
        let store = Store::open(dir.path(), b"chunks").unwrap();
        assert_eq!(chunk_rows(&store), good);
    }

    #[test]
    fn a_failed_write_undoes_itself_and_leaves_no_transaction_open() {
        let (store, dir) = store();
        let result = store.atomically(|| {
            store.put_value("tree", b"k", noise(100_000, 8))?;
            Err(StoreError::Missing("a failure half-way"))
        });
        assert!(result.is_err());
        assert_eq!(store.get_value("tree", b"k").unwrap(), None);
        assert!(chunk_rows(&store).is_empty());
        assert!(store.conn.is_autocommit());
        // What comes next is committed: it is there after reopening.
        store.put_value("tree", b"k", noise(100_000, 8)).unwrap();
        drop(store);
        let store = Store::open(dir.path(), b"chunks").unwrap();
        assert_eq!(
            store.get_value("tree", b"k").unwrap().unwrap(),
            noise(100_000, 8)
        );
    }

    #[test]
    fn a_missing_or_cut_chunk_list_is_an_error() {
        let (store, _dir) = store();
        store.put_value("tree", b"k", noise(100_000, 3)).unwrap();
        store
            .conn
            .execute(
                "DELETE FROM mls_chunk WHERE rowid IN (SELECT rowid FROM mls_chunk LIMIT 1)",
                [],
            )
            .unwrap();
        assert!(matches!(
            store.get_value("tree", b"k"),
            Err(StoreError::Missing(_))
        ));
        store
            .conn
            .execute("UPDATE mls_kv SET value = ?1", [&[CHUNKED, 1, 2, 3][..]])
            .unwrap();
        assert!(store.get_value("tree", b"k").is_err());
    }
}
