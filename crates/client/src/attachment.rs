//! Attachments: a file sealed under a fresh key and sent **once** to the sender's
//! relay, in fresh mailboxes; the channel message carries only its descriptor
//! (`backchannel_proto::attachment`). Members read those mailboxes without
//! deleting anything, so the relay stores the file once whatever the number of
//! members, until it expires.
//!
//! Uploads go over several connections at once, each paced under the relay's
//! per-connection request rate; downloads fetch each mailbox in pages. A file is
//! checked piece by piece (each opens only in its place) and whole (its SHA-256),
//! and written under a temporary name that becomes its (made safe) name only
//! once it checks out.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backchannel_core::attachment::{open_piece, seal_piece};
use backchannel_proto::addr::{MailboxId, RelayAddr};
use backchannel_proto::attachment::{
    Descriptor, MAX_SIZE, PIECE_LEN, SEGMENT_BLOBS, Segment, blobs_for, segment_sizes,
};
use backchannel_proto::frame::{Blob, ErrorCode};
use ed25519_dalek::SigningKey;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::relay::{RelayClient, RelayClientError};

/// How long an attachment stays on the relay unless the sender says otherwise.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(48 * 3600);
/// Connections an upload uses at most.
const UPLOAD_CONNECTIONS: usize = 8;
/// Sends in flight per upload connection.
const UPLOAD_IN_FLIGHT: usize = 32;
/// Time between two sends on one connection: under a relay's default limit of
/// 500 requests a second per connection.
const UPLOAD_PACE: Duration = Duration::from_micros(2_100);
/// Mailboxes fetched at once by a download.
const DOWNLOAD_CONNECTIONS: usize = 4;
/// Blobs asked for per fetch (a relay gives at most its window).
const FETCH_PAGE: u16 = 256;
/// The longest a download may take in all (100 MiB at a slow 1 Mbit/s is about 15
/// minutes).
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Connecting and each request.
const RELAY_LIMIT: Duration = Duration::from_secs(20);

/// Called with the number of file bytes just sent or received.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Why an attachment could not be sent or fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Over the limit.
    #[error("the file is {0} bytes; attachments are at most 100 MiB")]
    TooLarge(u64),
    /// It changed size while it was being read.
    #[error("the file changed while it was being sent; nothing was sent")]
    Changed,
    /// A relay failed.
    #[error("relay: {0}")]
    Relay(#[from] RelayClientError),
    /// The relay no longer has it: expired, or deleted.
    #[error("the file is no longer on the relay (it expired)")]
    Gone,
    /// What came is not what the sender sent: altered, withheld or swapped.
    #[error("the file was altered or withheld on the way: {0}")]
    Tampered(String),
    /// It could not be written.
    #[error("cannot save it: {0}")]
    Write(std::io::Error),
    /// The descriptor names a relay that cannot be read.
    #[error("the attachment names no valid relay: {0}")]
    Address(String),
}

impl AttachmentError {
    /// Whether someone on the way interfered (worth a security alert).
    pub fn is_tampering(&self) -> bool {
        matches!(self, Self::Tampered(_))
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// Seals the file at `path` and stores it on `relay`, expiring after
/// `expires_in`. Returns the descriptor for the channel message; `now_ms` is the
/// time it is measured from.
pub async fn upload(
    relay: &RelayAddr,
    path: &Path,
    name: &str,
    expires_in: Duration,
    now_ms: u64,
    progress: Progress,
) -> Result<Descriptor, AttachmentError> {
    let unreadable = |e| AttachmentError::Read(path.to_owned(), e);
    // A regular file only (opening a pipe would wait for a writer forever).
    if !std::fs::metadata(path).map_err(unreadable)?.is_file() {
        return Err(unreadable(std::io::Error::other("not a regular file")));
    }
    let mut file = File::open(path).map_err(unreadable)?;
    let size = file.metadata().map_err(unreadable)?.len();
    if size > MAX_SIZE {
        return Err(AttachmentError::TooLarge(size));
    }
    let count = blobs_for(size);
    let key: [u8; 32] = random();
    let workers = usize::try_from(count.div_ceil(128))
        .unwrap_or(UPLOAD_CONNECTIONS)
        .clamp(1, UPLOAD_CONNECTIONS);
    let mut clients = Vec::with_capacity(workers);
    for _ in 0..workers {
        clients.push(RelayClient::connect(relay, RELAY_LIMIT).await?);
    }
    let mut segments = Vec::new();
    let mut send_ids = Vec::new();
    for (i, blobs) in segment_sizes(size).into_iter().enumerate() {
        let seed: [u8; 32] = random();
        let client = clients
            .get(i % workers)
            .ok_or(AttachmentError::Relay(RelayClientError::Closed))?;
        let (send_id, read_id) = client
            .create_mailbox(&SigningKey::from_bytes(&seed))
            .await?;
        send_ids.push(send_id);
        segments.push(Segment {
            read_id,
            auth_seed: seed,
            blobs,
        });
    }
    let ttl_secs = u32::try_from(expires_in.as_secs().max(1)).unwrap_or(u32::MAX);
    let mut feeds = Vec::with_capacity(workers);
    let mut tasks = Vec::with_capacity(workers);
    for client in clients {
        let (tx, rx) = mpsc::channel(UPLOAD_IN_FLIGHT * 2);
        feeds.push(tx);
        tasks.push(tokio::spawn(send_all(
            client,
            rx,
            ttl_secs,
            progress.clone(),
        )));
    }
    // Read, seal and hand out the pieces; the workers send them meanwhile.
    let mut digest = Sha256::new();
    let mut read_total = 0u64;
    for index in 0..count {
        let mut piece = [0u8; PIECE_LEN];
        let got = read_full(&mut file, &mut piece).map_err(unreadable)?;
        read_total += got as u64;
        digest.update(piece.get(..got).unwrap_or_default());
        let blob = seal_piece(&key, random(), index, count, &piece)
            .ok_or_else(|| AttachmentError::Tampered("sealing failed".into()))?;
        let segment = usize::try_from(index / u64::from(SEGMENT_BLOBS)).unwrap_or(usize::MAX);
        let send_id = *send_ids.get(segment).ok_or(AttachmentError::Changed)?;
        let worker = usize::try_from(index % workers as u64).unwrap_or(0);
        let Some(feed) = feeds.get(worker) else {
            return Err(AttachmentError::Relay(RelayClientError::Closed));
        };
        if feed.send((send_id, blob)).await.is_err() {
            break;
        }
    }
    let mut rest = [0u8; 1];
    if read_total != size || read_full(&mut file, &mut rest).map_err(unreadable)? != 0 {
        return Err(AttachmentError::Changed);
    }
    drop(feeds);
    let mut stored = 0u64;
    for task in tasks {
        stored += task
            .await
            .map_err(|_| AttachmentError::Relay(RelayClientError::Closed))??;
    }
    if stored != count {
        return Err(AttachmentError::Relay(RelayClientError::Closed));
    }
    Ok(Descriptor {
        relay: relay.to_string(),
        key,
        digest: digest.finalize().into(),
        size,
        name: name.to_owned(),
        expires_at: now_ms
            .saturating_add(u64::try_from(expires_in.as_millis()).unwrap_or(u64::MAX)),
        segments,
    })
}

/// Reads until `buf` is full or the file ends; returns how much was read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
        match file.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// One upload connection: sends what it is handed, a few in flight, paced, and
/// sends again what the relay asked to slow down for. Returns how many it stored.
async fn send_all(
    client: RelayClient,
    mut feed: mpsc::Receiver<(MailboxId, Blob)>,
    ttl_secs: u32,
    progress: Progress,
) -> Result<u64, AttachmentError> {
    let mut pace = tokio::time::interval(UPLOAD_PACE);
    let mut in_flight = FuturesUnordered::new();
    let mut stored = 0u64;
    let mut open = true;
    let send = |send_id: MailboxId, blob: Blob| {
        let client = &client;
        async move {
            let copy = blob.clone();
            (send_id, copy, client.send(send_id, ttl_secs, blob).await)
        }
    };
    while open || !in_flight.is_empty() {
        tokio::select! {
            next = feed.recv(), if open && in_flight.len() < UPLOAD_IN_FLIGHT => match next {
                Some((send_id, blob)) => {
                    pace.tick().await;
                    in_flight.push(send(send_id, blob));
                }
                None => open = false,
            },
            Some((send_id, blob, result)) = in_flight.next() => match result {
                Ok(()) => {
                    stored += 1;
                    progress(PIECE_LEN as u64);
                }
                Err(RelayClientError::Refused(ErrorCode::RateLimited)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    in_flight.push(send(send_id, blob));
                }
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(stored)
}

/// Fetches the file a descriptor names into `dir`, checks it, and saves it under
/// its name made safe (and unique in `dir`). Returns where it is.
pub async fn download(
    descriptor: &Descriptor,
    dir: &Path,
    progress: Progress,
) -> Result<PathBuf, AttachmentError> {
    let relay: RelayAddr = descriptor
        .relay
        .parse()
        .map_err(|e| AttachmentError::Address(format!("{e}")))?;
    if now_ms() >= descriptor.expires_at {
        return Err(AttachmentError::Gone);
    }
    let count = descriptor.blobs();
    let partial = dir.join(format!(".{}.part", hex::encode(random::<8>())));
    let file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(AttachmentError::Write)?
    };
    let file = Arc::new(file);
    // A removal guard: whatever ends the download early (an error, a dropped
    // future), the partial file goes.
    let guard = Partial(partial.clone());
    let fetched = fetch_into(descriptor, &relay, count, &file, progress);
    let result = match tokio::time::timeout(DOWNLOAD_LIMIT, fetched).await {
        Ok(result) => result,
        Err(_) => Err(AttachmentError::Relay(RelayClientError::Timeout)),
    };
    let result = match result {
        Ok(()) => finish(descriptor, &file, &partial, dir),
        Err(e) => Err(e),
    };
    drop(guard);
    result
}

/// Removes a partial download when dropped.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn fetch_into(
    descriptor: &Descriptor,
    relay: &RelayAddr,
    count: u64,
    file: &Arc<File>,
    progress: Progress,
) -> Result<(), AttachmentError> {
    let mut starts = Vec::with_capacity(descriptor.segments.len());
    let mut first = 0u64;
    for s in &descriptor.segments {
        starts.push(first);
        first += u64::from(s.blobs);
    }
    let mut running = FuturesUnordered::new();
    let mut jobs = descriptor.segments.iter().zip(starts);
    loop {
        while running.len() < DOWNLOAD_CONNECTIONS {
            let Some((segment, start)) = jobs.next() else {
                break;
            };
            let job = Job {
                relay,
                expires_at: descriptor.expires_at,
                key: &descriptor.key,
                size: descriptor.size,
                count,
                file,
                progress: &progress,
            };
            running.push(job.fetch(segment, start));
        }
        match running.next().await {
            Some(result) => result?,
            None => return Ok(()),
        }
    }
}

/// What fetching one segment needs.
struct Job<'a> {
    relay: &'a RelayAddr,
    expires_at: u64,
    key: &'a [u8; 32],
    size: u64,
    count: u64,
    file: &'a File,
    progress: &'a Progress,
}

impl Job<'_> {
    async fn fetch(self, segment: &Segment, start: u64) -> Result<(), AttachmentError> {
        let mut client = RelayClient::connect(self.relay, RELAY_LIMIT).await?;
        let key = SigningKey::from_bytes(&segment.auth_seed);
        let mut after = 0u64;
        let mut got = 0u64;
        let mut have = vec![false; usize::try_from(segment.blobs).unwrap_or(0)];
        // Every page must bring pieces: a relay that answers with empty pages
        // (or moves on without delivering) is done, not waited for.
        while got < u64::from(segment.blobs) {
            let (blobs, last) = match client.fetch(segment.read_id, &key, after, FETCH_PAGE).await {
                Ok(page) => page,
                Err(RelayClientError::Refused(ErrorCode::UnknownMailbox)) => {
                    // Gone before its time: someone deleted it (any member could).
                    return Err(if now_ms() < self.expires_at {
                        AttachmentError::Tampered("it was deleted before it expired".into())
                    } else {
                        AttachmentError::Gone
                    });
                }
                // A relay that answers a fetch with something else than it asked
                // for is not to be believed about the file either.
                Err(RelayClientError::Protocol(e)) => return Err(AttachmentError::Tampered(e)),
                Err(e) => return Err(e.into()),
            };
            if blobs.is_empty() || last <= after {
                break;
            }
            for (_, blob) in &blobs {
                let (index, piece) = open_piece(self.key, self.count, blob)
                    .ok_or_else(|| AttachmentError::Tampered("a piece does not open".into()))?;
                // Each piece once, and in the mailbox it was sent to (the
                // pieces of one mailbox may have come in any order).
                let place = index
                    .checked_sub(start)
                    .filter(|p| *p < u64::from(segment.blobs))
                    .and_then(|p| usize::try_from(p).ok());
                let Some(seen) = place.and_then(|p| have.get_mut(p)) else {
                    return Err(AttachmentError::Tampered(format!(
                        "piece {index} is in another piece's place"
                    )));
                };
                if std::mem::replace(seen, true) {
                    return Err(AttachmentError::Tampered(format!(
                        "piece {index} came twice"
                    )));
                }
                let offset = index * PIECE_LEN as u64;
                // Past the file's end a piece holds only zeros.
                let inside = usize::try_from(self.size.saturating_sub(offset))
                    .unwrap_or(usize::MAX)
                    .min(PIECE_LEN);
                let (data, filler) = piece.split_at(inside);
                if filler.iter().any(|&b| b != 0) {
                    return Err(AttachmentError::Tampered(
                        "bytes past the end of the file".into(),
                    ));
                }
                self.file
                    .write_all_at(data, offset)
                    .map_err(AttachmentError::Write)?;
                got += 1;
                (self.progress)(data.len() as u64);
            }
            after = last;
        }
        if got < u64::from(segment.blobs) {
            return Err(AttachmentError::Tampered(format!(
                "{} of its {} pieces are missing at the relay",
                u64::from(segment.blobs) - got,
                self.count
            )));
        }
        Ok(())
    }
}

/// Checks the whole file and gives it its name.
fn finish(
    descriptor: &Descriptor,
    file: &File,
    partial: &Path,
    dir: &Path,
) -> Result<PathBuf, AttachmentError> {
    file.set_len(descriptor.size)
        .map_err(AttachmentError::Write)?;
    file.sync_all().map_err(AttachmentError::Write)?;
    let mut digest = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    while offset < descriptor.size {
        let n = file
            .read_at(&mut buf, offset)
            .map_err(AttachmentError::Write)?;
        if n == 0 {
            break;
        }
        digest.update(buf.get(..n).unwrap_or_default());
        offset += n as u64;
    }
    if <[u8; 32]>::from(digest.finalize()) != descriptor.digest {
        return Err(AttachmentError::Tampered(
            "its SHA-256 is not the one the sender sent".into(),
        ));
    }
    let name = safe_name(&descriptor.name);
    for n in 0..1000u32 {
        let target = dir.join(numbered(&name, n));
        // A hard link never replaces what is there.
        match std::fs::hard_link(partial, &target) {
            Ok(()) => {
                let _ = std::fs::remove_file(partial);
                return Ok(target);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(AttachmentError::Write(e)),
        }
    }
    Err(AttachmentError::Write(std::io::Error::other(
        "a thousand files of that name are there already",
    )))
}

/// `name`, or `name (n)` before its extension.
fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem} ({n}).{ext}"),
        _ => format!("{name} ({n})"),
    }
}

/// A sender's file name made safe to create: its last path component, without
/// control or invisible characters, not hidden (no leading dot), at most 200
/// bytes; "attachment" when nothing is left.
pub fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let kept: String = base
        .chars()
        .filter(|&c| !c.is_control() && !backchannel_proto::member::is_hidden(c))
        .collect();
    let mut trimmed = kept.as_str();
    loop {
        let next = trimmed.trim().trim_start_matches('.');
        if next == trimmed {
            break;
        }
        trimmed = next;
    }
    let mut end = trimmed.len().min(200);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    match trimmed.get(..end) {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => "attachment".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_the_directory_or_hide() {
        for (given, kept) in [
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "passwd"),
            ("..\\..\\win.ini", "win.ini"),
            ("/abs/path/x.txt", "x.txt"),
            (".bashrc", "bashrc"),
            (". .bashrc", "bashrc"),
            (" . . .profile", "profile"),
            ("..", "attachment"),
            ("", "attachment"),
            ("dir/", "attachment"),
            ("a\u{202e}fdp.exe", "afdp.exe"),
            ("tab\there\n.txt", "tabhere.txt"),
            ("Zoë 東京.txt", "Zoë 東京.txt"),
        ] {
            assert_eq!(safe_name(given), kept, "{given:?}");
        }
        let long = "é".repeat(300);
        assert!(safe_name(&long).len() <= 200);
        assert_eq!(numbered("a.pdf", 2), "a (2).pdf");
        assert_eq!(numbered("README", 1), "README (1)");
    }
}
