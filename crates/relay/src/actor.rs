//! The storage thread: one writer that owns the database and batches appends
//! into group commits.
//!
//! Requests arrive over a channel. The thread takes everything queued (up to a
//! batch limit), stores all appends of the batch in one transaction, and answers
//! each sender only after that transaction is durable. While the disk is slow,
//! requests queue up and the next batch is larger: throughput comes from batching,
//! never from skipping the fsync.

use std::sync::Arc;
use std::time::Instant;

use backchannel_proto::addr::MailboxId;
use tokio::sync::{mpsc, oneshot};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::storage::{
    Append, AppendOutcome, Fetched, Mailbox, MailboxKey, Quota, RelayStorage, StorageError,
};

/// What the storage thread does for the rest of the relay.
pub(crate) enum Command {
    Create {
        send_id: MailboxId,
        read_id: MailboxId,
        auth_key: [u8; 32],
        now: u64,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    Lookup {
        read_id: MailboxId,
        reply: oneshot::Sender<Result<Option<Mailbox>, StorageError>>,
    },
    Append {
        append: Append,
        reply: oneshot::Sender<Result<AppendOutcome, ()>>,
    },
    Fetch {
        mailbox: MailboxKey,
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Fetched, StorageError>>,
    },
    Delete {
        mailbox: MailboxKey,
        message_id: u64,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    DeleteMailbox {
        mailbox: MailboxKey,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    Expire {
        now: u64,
        /// Empty mailboxes unused since then go too.
        unused_before: u64,
    },
    Touch {
        mailbox: MailboxKey,
        now: u64,
    },
}

/// A handle to the storage threads: one writer (group commit) and one reader (on
/// its own connection, so that fetches never wait behind an fsync).
#[derive(Clone)]
pub(crate) struct StorageHandle {
    tx: mpsc::Sender<Command>,
    read_tx: mpsc::Sender<Command>,
}

/// The storage thread is gone (it only stops at shutdown).
#[derive(Debug)]
pub(crate) struct Gone;

impl From<oneshot::error::RecvError> for Gone {
    fn from(_: oneshot::error::RecvError) -> Self {
        Gone
    }
}

impl StorageHandle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Gone> {
        let (reply, rx) = oneshot::channel();
        let cmd = make(reply);
        let tx = match cmd {
            Command::Lookup { .. } | Command::Fetch { .. } => &self.read_tx,
            _ => &self.tx,
        };
        tx.send(cmd).await.map_err(|_| Gone)?;
        Ok(rx.await?)
    }

    pub(crate) async fn create(
        &self,
        send_id: MailboxId,
        read_id: MailboxId,
        auth_key: [u8; 32],
        now: u64,
    ) -> Result<Result<(), StorageError>, Gone> {
        self.call(|reply| Command::Create {
            send_id,
            read_id,
            auth_key,
            now,
            reply,
        })
        .await
    }

    pub(crate) async fn lookup(
        &self,
        read_id: MailboxId,
    ) -> Result<Result<Option<Mailbox>, StorageError>, Gone> {
        self.call(|reply| Command::Lookup { read_id, reply }).await
    }

    /// Resolves once the blob is durable (or refused).
    pub(crate) async fn append(&self, append: Append) -> Result<Result<AppendOutcome, ()>, Gone> {
        self.call(|reply| Command::Append { append, reply }).await
    }

    pub(crate) async fn fetch(
        &self,
        mailbox: MailboxKey,
        after: u64,
        limit: usize,
    ) -> Result<Result<Fetched, StorageError>, Gone> {
        self.call(|reply| Command::Fetch {
            mailbox,
            after,
            limit,
            reply,
        })
        .await
    }

    pub(crate) async fn delete(
        &self,
        mailbox: MailboxKey,
        message_id: u64,
    ) -> Result<Result<(), StorageError>, Gone> {
        self.call(|reply| Command::Delete {
            mailbox,
            message_id,
            reply,
        })
        .await
    }

    pub(crate) async fn delete_mailbox(
        &self,
        mailbox: MailboxKey,
    ) -> Result<Result<(), StorageError>, Gone> {
        self.call(|reply| Command::DeleteMailbox { mailbox, reply })
            .await
    }

    pub(crate) async fn expire(&self, now: u64, unused_before: u64) {
        let _ = self.tx.send(Command::Expire { now, unused_before }).await;
    }

    /// Notes a subscription (no answer: a lost note only shortens a lifetime).
    pub(crate) fn touch(&self, mailbox: MailboxKey, now: u64) {
        let _ = self.tx.try_send(Command::Touch { mailbox, now });
    }
}

/// Starts the storage threads over two connections to one store. They end when
/// every handle is dropped, after finishing what was queued.
pub(crate) fn spawn<S: RelayStorage>(
    mut storage: S,
    mut reader: S,
    quota: Quota,
    batch_max: usize,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
) -> std::io::Result<(StorageHandle, std::thread::JoinHandle<()>)> {
    let (read_tx, mut read_rx) = mpsc::channel::<Command>(65_536);
    std::thread::Builder::new()
        .name("relay-reader".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(1);
            while let Some(cmd) = read_rx.blocking_recv() {
                batch.push(cmd);
                run_reads(&mut reader, &mut batch);
            }
        })?;
    let (tx, mut rx) = mpsc::channel::<Command>(65_536);
    let thread = std::thread::Builder::new()
        .name("relay-storage".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(batch_max);
            while let Some(first) = rx.blocking_recv() {
                batch.push(first);
                while batch.len() < batch_max {
                    match rx.try_recv() {
                        Ok(cmd) => batch.push(cmd),
                        Err(_) => break,
                    }
                }
                metrics.queue_depth.set(rx.len() as u64);
                run_batch(&mut storage, &mut batch, quota, &hub, &metrics);
            }
        })?;
    Ok((StorageHandle { tx, read_tx }, thread))
}

fn run_reads<S: RelayStorage>(reader: &mut S, batch: &mut Vec<Command>) {
    for cmd in batch.drain(..) {
        match cmd {
            Command::Lookup { read_id, reply } => {
                let _ = reply.send(reader.mailbox_by_read(&read_id));
            }
            Command::Fetch {
                mailbox,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(reader.fetch(mailbox, after, limit));
            }
            // Writes never reach the reader.
            _ => {}
        }
    }
}

fn run_batch<S: RelayStorage>(
    storage: &mut S,
    batch: &mut Vec<Command>,
    quota: Quota,
    hub: &Hub,
    metrics: &Metrics,
) {
    let mut appends = Vec::new();
    let mut replies = Vec::new();
    let mut deletes = Vec::new();
    let mut delete_replies = Vec::new();
    for cmd in batch.drain(..) {
        match cmd {
            Command::Append { append, reply } => {
                appends.push(append);
                replies.push(reply);
            }
            Command::Create {
                send_id,
                read_id,
                auth_key,
                now,
                reply,
            } => {
                let result = storage.create_mailbox(&send_id, &read_id, &auth_key, now);
                note_failure(&result, metrics);
                let _ = reply.send(result);
            }
            Command::Lookup { read_id, reply } => {
                let _ = reply.send(storage.mailbox_by_read(&read_id));
            }
            Command::Fetch {
                mailbox,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(storage.fetch(mailbox, after, limit));
            }
            Command::Delete {
                mailbox,
                message_id,
                reply,
            } => {
                deletes.push((mailbox, message_id));
                delete_replies.push(reply);
            }
            Command::DeleteMailbox { mailbox, reply } => {
                let result = storage.delete_mailbox(mailbox);
                note_failure(&result, metrics);
                let _ = reply.send(result);
            }
            Command::Expire { now, unused_before } => {
                match storage.expire(now) {
                    Ok(n) => metrics.expired.add(n),
                    Err(e) => {
                        tracing::warn!(error = %e, "expiry sweep failed");
                        metrics.storage_failures.inc();
                    }
                }
                if let Err(e) = storage.delete_unused(unused_before) {
                    tracing::warn!(error = %e, "deleting unused mailboxes failed");
                    metrics.storage_failures.inc();
                }
            }
            Command::Touch { mailbox, now } => {
                note_failure(&storage.touch(mailbox, now), metrics);
            }
        }
    }
    if !deletes.is_empty() {
        // Acknowledged messages go in one transaction too.
        let result = storage.delete_messages(&deletes);
        note_failure(&result, metrics);
        let ok = result.is_ok();
        for reply in delete_replies {
            let _ = reply.send(if ok {
                Ok(())
            } else {
                Err(StorageError::BatchFailed)
            });
        }
    }
    if appends.is_empty() {
        return;
    }
    let started = Instant::now();
    match storage.append_batch(&appends, quota) {
        Ok(outcomes) => {
            metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.batch_size.observe(appends.len() as f64);
            metrics.healthy.set(1);
            for (outcome, reply) in outcomes.into_iter().zip(replies) {
                if let AppendOutcome::Stored { mailbox, .. } = outcome {
                    metrics.stored.inc();
                    hub.notify(mailbox);
                }
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            // Nothing of the batch is stored: every sender is told so, and will retry.
            tracing::error!(error = %e, count = appends.len(), "storing a batch failed; refusing it");
            metrics.storage_failures.inc();
            metrics.healthy.set(0);
            for reply in replies {
                let _ = reply.send(Err(()));
            }
        }
    }
}

fn note_failure<T>(result: &Result<T, StorageError>, metrics: &Metrics) {
    if let Err(e) = result {
        tracing::error!(error = %e, "storage operation failed");
        metrics.storage_failures.inc();
    }
}
