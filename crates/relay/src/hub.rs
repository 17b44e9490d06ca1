//! Wake-ups for subscribed connections: when a message is stored, every
//! connection subscribed to its mailbox is told to look for new messages.
//! A wake-up is a hint, not the message; the connection fetches from storage.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::storage::MailboxKey;

/// A connection's inbox of wake-ups.
#[derive(Default)]
pub(crate) struct Waker {
    dirty: Mutex<HashSet<MailboxKey>>,
    notify: Notify,
}

impl Waker {
    /// Marks a mailbox as having news and wakes the connection.
    pub(crate) fn wake(&self, mailbox: MailboxKey) {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(mailbox);
        self.notify.notify_one();
    }

    /// Waits for a wake-up.
    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }

    /// The mailboxes with news since the last call.
    pub(crate) fn take(&self) -> HashSet<MailboxKey> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Subscriptions of every connection, by mailbox.
#[derive(Default)]
pub(crate) struct Hub {
    subs: Mutex<HashMap<MailboxKey, Vec<Arc<Waker>>>>,
}

impl Hub {
    pub(crate) fn subscribe(&self, mailbox: MailboxKey, waker: &Arc<Waker>) {
        let mut subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        let list = subs.entry(mailbox).or_default();
        if !list.iter().any(|w| Arc::ptr_eq(w, waker)) {
            list.push(waker.clone());
        }
    }

    pub(crate) fn unsubscribe(&self, mailbox: MailboxKey, waker: &Arc<Waker>) {
        let mut subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = subs.get_mut(&mailbox) {
            list.retain(|w| !Arc::ptr_eq(w, waker));
            if list.is_empty() {
                subs.remove(&mailbox);
            }
        }
    }

    /// Every mailbox some connection of this node follows.
    pub(crate) fn subscribed(&self) -> Vec<MailboxKey> {
        let subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        subs.keys().copied().collect()
    }

    pub(crate) fn notify(&self, mailbox: MailboxKey) {
        let subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = subs.get(&mailbox) {
            for waker in list {
                waker.wake(mailbox);
            }
        }
    }
}
