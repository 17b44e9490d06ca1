//! What every storage must do, written once and run against each (SQLite
//! always; PostgreSQL when `BACKCHANNEL_TEST_POSTGRES` names a server).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use backchannel_proto::addr::MailboxId;
use backchannel_proto::envelope::BLOB_LEN;
use backchannel_proto::frame::Blob;

use super::{Append, AppendOutcome, Quota, RelayStorage};

/// Generates one test per conformance check. `$open` evaluates to
/// `Option<(guard, storage)>`: a fresh, empty store and what keeps it alive, or
/// `None` to skip (the expression says why).
macro_rules! conformance_tests {
    ($open:expr) => {
        #[test]
        fn conformance_append_fetch_delete_expire() {
            let Some((_guard, mut s)) = $open else { return };
            crate::storage::conformance::append_fetch_delete_expire(&mut s);
        }
        #[test]
        fn conformance_numbers_per_mailbox() {
            let Some((_guard, mut s)) = $open else { return };
            crate::storage::conformance::numbers_per_mailbox(&mut s);
        }
        #[test]
        fn conformance_retransmission_stored_once() {
            let Some((_guard, mut s)) = $open else { return };
            crate::storage::conformance::retransmission_stored_once(&mut s);
        }
        #[test]
        fn conformance_expiry_in_batches() {
            let Some((_guard, mut s)) = $open else { return };
            crate::storage::conformance::expiry_in_batches(&mut s);
        }
        #[test]
        fn conformance_mailbox_deletion() {
            let Some((_guard, mut s)) = $open else { return };
            crate::storage::conformance::mailbox_deletion(&mut s);
        }
        #[test]
        fn conformance_unused_mailboxes() {
            let Some((_guard, mut s)) = $open else { return };
            crate::storage::conformance::unused_mailboxes(&mut s);
        }
    };
}
pub(crate) use conformance_tests;

pub(crate) fn blob(b: u8) -> Blob {
    Box::new([b; BLOB_LEN])
}

/// A blob told apart from others by a number.
pub(crate) fn numbered(n: u32) -> Blob {
    let mut b = blob(0);
    b[..4].copy_from_slice(&n.to_be_bytes());
    b
}

const QUOTA: Quota = Quota {
    messages: 3,
    bytes: u64::MAX,
};

const ROOMY: Quota = Quota {
    messages: u64::MAX,
    bytes: u64::MAX,
};

fn append(send_id: MailboxId, blob: Blob, expires_at: u64) -> Append {
    Append {
        send_id,
        blob,
        expires_at,
        replay: false,
    }
}

pub(crate) fn stored(out: &[AppendOutcome]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            AppendOutcome::Stored { message_id, .. } => Some(*message_id),
            _ => None,
        })
        .collect()
}

pub(crate) fn append_fetch_delete_expire(s: &mut impl RelayStorage) {
    let (send, read) = (MailboxId([1; 16]), MailboxId([2; 16]));
    s.create_mailbox(&send, &read, &[3; 32], 0).unwrap();
    let mb = s.mailbox_by_read(&read).unwrap().unwrap();
    assert_eq!(mb.auth_key, [3; 32]);
    assert!(
        s.mailbox_by_read(&send).unwrap().is_none(),
        "send id does not read"
    );
    let batch: Vec<Append> = (0..4)
        .map(|i| append(send, blob(i), 100 + u64::from(i)))
        .chain([append(MailboxId([9; 16]), blob(9), 0)])
        .collect();
    let out = s.append_batch(&batch, QUOTA).unwrap();
    assert!(matches!(out[0], AppendOutcome::Stored { .. }));
    assert!(matches!(out[2], AppendOutcome::Stored { .. }));
    assert_eq!(out[3], AppendOutcome::QuotaExceeded);
    assert_eq!(out[4], AppendOutcome::UnknownMailbox);

    let msgs = s.fetch(mb.key, 0, 10).unwrap().messages;
    assert_eq!(msgs.len(), 3);
    assert!(msgs.windows(2).all(|w| w[0].0 < w[1].0), "in order");
    assert_eq!(msgs[1].1[0], 1);
    assert_eq!(
        s.fetch(mb.key, msgs[0].0, 1).unwrap().messages[0].0,
        msgs[1].0
    );
    s.delete_messages(&[(mb.key, msgs[0].0), (mb.key, msgs[0].0)])
        .unwrap();
    assert_eq!(s.fetch(mb.key, 0, 10).unwrap().messages.len(), 2);
    assert_eq!(s.counts().unwrap().messages, 2);
    assert_eq!(s.mailbox_by_read(&read).unwrap().unwrap().count, 2);
    assert_eq!(s.expire(101).unwrap(), 1);
    assert_eq!(s.counts().unwrap().messages, 1);
    s.delete_mailbox(mb.key).unwrap();
    assert!(s.mailbox_by_read(&read).unwrap().is_none());
    assert_eq!(s.counts().unwrap().messages, 0);
}

pub(crate) fn numbers_per_mailbox(s: &mut impl RelayStorage) {
    let (a, b) = (MailboxId([1; 16]), MailboxId([5; 16]));
    s.create_mailbox(&a, &MailboxId([2; 16]), &[3; 32], 0)
        .unwrap();
    s.create_mailbox(&b, &MailboxId([6; 16]), &[3; 32], 0)
        .unwrap();
    // Mailbox b is busy between a's messages; a's numbers do not show it.
    let first = s.append_batch(&[append(a, blob(1), 1000)], QUOTA).unwrap();
    let busy: Vec<Append> = (10..13).map(|i| append(b, blob(i), 1000)).collect();
    let others = s.append_batch(&busy, QUOTA).unwrap();
    let second = s.append_batch(&[append(a, blob(2), 1000)], QUOTA).unwrap();
    assert_eq!(stored(&first), [1]);
    assert_eq!(stored(&others), [1, 2, 3]);
    assert_eq!(stored(&second), [2]);
    // A retransmission is acknowledged with its number.
    let again = s.append_batch(&[append(a, blob(2), 1000)], QUOTA).unwrap();
    assert!(matches!(
        again[0],
        AppendOutcome::Duplicate { message_id: 2, .. }
    ));
    let key = s.mailbox_by_read(&MailboxId([2; 16])).unwrap().unwrap().key;
    let fetched = s.fetch(key, 1, 10).unwrap().messages;
    assert_eq!(fetched.len(), 1);
    assert_eq!((fetched[0].0, fetched[0].1[0]), (2, 2));
}

pub(crate) fn retransmission_stored_once(s: &mut impl RelayStorage) {
    let (send, read) = (MailboxId([1; 16]), MailboxId([2; 16]));
    s.create_mailbox(&send, &read, &[3; 32], 0).unwrap();
    let again = || append(send, blob(7), 1000);
    let first = s.append_batch(&[again()], ROOMY).unwrap()[0];
    let AppendOutcome::Stored {
        mailbox,
        message_id,
    } = first
    else {
        panic!("{first:?}")
    };
    // Twice in one batch, and again later: one message.
    let out = s.append_batch(&[again(), again()], ROOMY).unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Duplicate {
                mailbox,
                message_id
            };
            2
        ]
    );
    // Still a duplicate after delivery and deletion, until it would have expired.
    s.delete_messages(&[(mailbox, message_id)]).unwrap();
    assert!(matches!(
        s.append_batch(&[again()], ROOMY).unwrap()[0],
        AppendOutcome::Duplicate { .. }
    ));
    assert!(s.fetch(mailbox, 0, 10).unwrap().messages.is_empty());
    s.expire(1000).unwrap();
    assert!(matches!(
        s.append_batch(&[again()], ROOMY).unwrap()[0],
        AppendOutcome::Stored { .. }
    ));
    // A relay that replays on purpose (tests of hostile relays) stores a copy.
    let replay = Append {
        replay: true,
        ..again()
    };
    assert!(matches!(
        s.append_batch(&[replay], ROOMY).unwrap()[0],
        AppendOutcome::Stored { .. }
    ));
    assert_eq!(s.fetch(mailbox, 0, 10).unwrap().messages.len(), 2);
}

pub(crate) fn expiry_in_batches(s: &mut impl RelayStorage) {
    let send = MailboxId([1; 16]);
    s.create_mailbox(&send, &MailboxId([2; 16]), &[3; 32], 0)
        .unwrap();
    let keep = MailboxId([4; 16]);
    s.create_mailbox(&keep, &MailboxId([5; 16]), &[3; 32], 0)
        .unwrap();
    // More than one expiry transaction deletes, in more than one commit.
    for chunk in 0..5u32 {
        let batch: Vec<Append> = (0..500)
            .map(|i| append(send, numbered(chunk * 500 + i), 50))
            .collect();
        assert_eq!(stored(&s.append_batch(&batch, ROOMY).unwrap()).len(), 500);
    }
    s.append_batch(&[append(keep, blob(1), 10_000)], ROOMY)
        .unwrap();
    assert_eq!(s.counts().unwrap().messages, 2_501);
    assert_eq!(s.expire(49).unwrap(), 0);
    assert_eq!(s.expire(50).unwrap(), 2_500);
    assert_eq!(s.counts().unwrap().messages, 1);
    let key = s.mailbox_by_read(&MailboxId([2; 16])).unwrap().unwrap();
    assert_eq!(key.count, 0);
    assert!(s.fetch(key.key, 0, 10).unwrap().messages.is_empty());
}

pub(crate) fn mailbox_deletion(s: &mut impl RelayStorage) {
    let (a, b) = (MailboxId([1; 16]), MailboxId([3; 16]));
    s.create_mailbox(&a, &MailboxId([2; 16]), &[3; 32], 0)
        .unwrap();
    s.create_mailbox(&b, &MailboxId([4; 16]), &[3; 32], 0)
        .unwrap();
    let batch: Vec<Append> = (0..3)
        .flat_map(|i| [append(a, blob(i), 1000), append(b, blob(i), 1000)])
        .collect();
    s.append_batch(&batch, ROOMY).unwrap();
    let ka = s.mailbox_by_read(&MailboxId([2; 16])).unwrap().unwrap().key;
    let kb = s.mailbox_by_read(&MailboxId([4; 16])).unwrap().unwrap().key;
    s.delete_mailbox(ka).unwrap();
    assert!(s.mailbox_by_read(&MailboxId([2; 16])).unwrap().is_none());
    assert!(s.fetch(ka, 0, 10).unwrap().messages.is_empty());
    assert_eq!(s.fetch(kb, 0, 10).unwrap().messages.len(), 3);
    assert_eq!(
        s.append_batch(&[append(a, blob(9), 1000)], ROOMY).unwrap()[0],
        AppendOutcome::UnknownMailbox
    );
    // Deleting again, or a mailbox that never was, is no error.
    s.delete_mailbox(ka).unwrap();
    s.delete_mailbox(9_999_999).unwrap();
    assert_eq!(s.counts().unwrap().mailboxes, 1);
}

pub(crate) fn unused_mailboxes(s: &mut impl RelayStorage) {
    s.create_mailbox(&MailboxId([1; 16]), &MailboxId([2; 16]), &[9; 32], 100)
        .unwrap();
    s.create_mailbox(&MailboxId([3; 16]), &MailboxId([4; 16]), &[9; 32], 100)
        .unwrap();
    s.create_mailbox(&MailboxId([5; 16]), &MailboxId([6; 16]), &[9; 32], 100)
        .unwrap();
    let key = |s: &mut dyn RelayStorage, r: u8| {
        s.mailbox_by_read(&MailboxId([r; 16]))
            .unwrap()
            .map(|m| m.key)
    };
    // One is read (subscribed) later; one holds a message (whatever its age).
    let read_key = key(s, 4).unwrap();
    s.touch(read_key, 500).unwrap();
    let out = s
        .append_batch(&[append(MailboxId([5; 16]), blob(1), u64::MAX / 2)], QUOTA)
        .unwrap();
    assert_eq!(stored(&out), [1]);
    assert_eq!(s.delete_unused(300).unwrap(), 1);
    assert!(key(s, 2).is_none());
    assert!(key(s, 4).is_some() && key(s, 6).is_some());
    assert_eq!(s.delete_unused(600).unwrap(), 1);
    assert!(key(s, 4).is_none());
    assert!(key(s, 6).is_some());
}
