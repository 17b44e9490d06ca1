//! Tests of the PostgreSQL store against a real server (`BACKCHANNEL_TEST_POSTGRES`).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::storage::conformance::{conformance_tests, numbered, stored};
use test_server as server;

fn open() -> Option<((), PostgresStorage)> {
    let url = scratch_database(&server()?).unwrap();
    Some(((), PostgresStorage::open(&url).unwrap()))
}

conformance_tests!(open());

#[test]
fn migrations_run_from_an_empty_database_once_even_when_nodes_start_together() {
    let Some(server) = server() else { return };
    let url = scratch_database(&server).unwrap();
    assert!(
        schema_version(&url).is_err(),
        "an empty database has no schema"
    );
    let nodes: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStorage::open(&url).map(|_| ()))
        })
        .collect();
    for node in nodes {
        node.join().unwrap().unwrap();
    }
    assert_eq!(schema_version(&url).unwrap(), Some(latest_schema_version()));
    let mut client = connect(&Database::new(&url, None).unwrap()).unwrap();
    let applied: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .unwrap()
        .get(0);
    assert_eq!(applied, MIGRATIONS.len() as i64);
    // A database from a newer relay is refused, not written.
    client
        .execute(
            "INSERT INTO schema_migrations VALUES ($1, 0)",
            &[&(latest_schema_version() + 1)],
        )
        .unwrap();
    let error = PostgresStorage::open(&url).unwrap_err().to_string();
    assert!(error.contains("upgrade the relay"), "{error}");
}

#[test]
fn two_nodes_filling_one_mailbox_never_pass_its_quota() {
    let Some(server) = server() else { return };
    let url = scratch_database(&server).unwrap();
    let mut first = PostgresStorage::open(&url).unwrap();
    let send = MailboxId([1; 16]);
    first
        .create_mailbox(&send, &MailboxId([2; 16]), &[3; 32], 0)
        .unwrap();
    let quota = Quota {
        messages: 50,
        bytes: u64::MAX,
    };
    let nodes: Vec<_> = (0..2u32)
        .map(|node| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut s = PostgresStorage::open(&url).unwrap();
                let mut stored_here = 0;
                for round in 0..10u32 {
                    let batch: Vec<Append> = (0..4u32)
                        .map(|i| Append {
                            send_id: send,
                            blob: numbered(node * 1000 + round * 10 + i),
                            expires_at: u64::MAX / 2,
                            replay: false,
                        })
                        .collect();
                    stored_here += stored(&s.append_batch(&batch, quota).unwrap()).len();
                }
                stored_here
            })
        })
        .collect();
    let total: usize = nodes.into_iter().map(|n| n.join().unwrap()).sum();
    assert_eq!(total, 50, "80 offered, a quota of 50");
    let mailbox = first.mailbox_by_read(&MailboxId([2; 16])).unwrap().unwrap();
    assert_eq!(mailbox.count, 50);
    let held = first.fetch(mailbox.key, 0, 1000).unwrap().messages;
    let numbers: Vec<u64> = held.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=50).collect::<Vec<u64>>(), "no gap, no repeat");
}

#[test]
fn a_store_that_lost_its_server_connects_again_and_loses_nothing() {
    let Some(server) = server() else { return };
    let url = scratch_database(&server).unwrap();
    let mut s = PostgresStorage::open(&url).unwrap();
    let send = MailboxId([1; 16]);
    s.create_mailbox(&send, &MailboxId([2; 16]), &[3; 32], 0)
        .unwrap();
    // The server ends this node's session (as a restart would).
    let mut admin = connect(&Database::new(&url, None).unwrap()).unwrap();
    let batch = |n: u32| Append {
        send_id: send,
        blob: numbered(n),
        expires_at: u64::MAX / 2,
        replay: false,
    };
    let quota = Quota {
        messages: 100,
        bytes: u64::MAX,
    };
    assert_eq!(stored(&s.append_batch(&[batch(1)], quota).unwrap()), [1]);
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    // Termination is asynchronous: wait until the session is gone.
    while admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The call in flight fails, or the store reconnects first; never both a
    // failure and a stored message.
    let retried = match s.append_batch(&[batch(2)], quota) {
        Ok(out) => out,
        Err(_) => s.append_batch(&[batch(2)], quota).unwrap(),
    };
    assert_eq!(stored(&retried), [2]);
    let key = s.mailbox_by_read(&MailboxId([2; 16])).unwrap().unwrap().key;
    assert_eq!(s.fetch(key, 0, 10).unwrap().messages.len(), 2);
}

#[test]
fn with_a_certificate_authority_the_database_is_reached_over_checked_tls() {
    let Some(server) = server() else { return };
    let Some(ca) = test_ca() else { return };
    let url = scratch_database(&server).unwrap();
    let ssl = |s: &mut PostgresStorage| -> bool {
        s.client()
            .unwrap()
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let mut tls = PostgresStorage::open_database(Database::new(&url, Some(&ca)).unwrap()).unwrap();
    assert!(ssl(&mut tls), "TLS with the authority given");
    assert!(tls.counts().is_ok());
    // Without one: no TLS (nothing to check the server against) ...
    let mut plain = PostgresStorage::open(&url).unwrap();
    assert!(!ssl(&mut plain));
    // ... and a string asking for TLS is refused rather than half-done.
    let error = Database::new(&format!("{url}?sslmode=require"), None).unwrap_err();
    assert!(error.to_string().contains("--postgres-ca"), "{error}");
    // A server whose certificate another authority signed is refused.
    let tmp = tempfile::tempdir().unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let other_ca = tmp.path().join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let refused = PostgresStorage::open_database(Database::new(&url, Some(&other_ca)).unwrap());
    assert!(
        refused.is_err(),
        "a certificate from another authority was accepted"
    );
    // And a file with no certificate is a clear error.
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    let error = Database::new(&url, Some(&empty)).unwrap_err().to_string();
    assert!(error.contains("no certificate"), "{error}");
}

#[test]
fn notifications_name_the_mailboxes_and_stay_under_the_limit() {
    let keys: Vec<MailboxKey> = (1_000_000_000..1_000_002_000).collect();
    let payloads = mailbox_news("n1", &keys);
    assert!(payloads.len() > 1);
    assert!(
        payloads
            .iter()
            .all(|p| p.len() < 8_000 && p.starts_with("m n1 "))
    );
    let parsed: Vec<MailboxKey> = payloads
        .iter()
        .flat_map(|p| p.split(' ').skip(2).map(|k| k.parse().unwrap()))
        .collect();
    assert_eq!(parsed, keys);
    assert!(mailbox_news("n1", &[]).is_empty());
}
