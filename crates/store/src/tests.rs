use super::*;
use backchannel_core::Timestamp;
use backchannel_core::store::EngineStore;
use backchannel_proto::addr::MailboxId;
use client_tables::LINK_BLOBS_KEPT;

const PASS: &[u8] = b"correct horse battery staple";

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn create_then_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    {
        let store = Store::create(&dir, PASS).unwrap();
        store.set_setting("name", "alice").unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    }
    let store = Store::open(&dir, PASS).unwrap();
    assert_eq!(store.setting("name").unwrap().as_deref(), Some("alice"));
    store.set_setting("intro:b", "2").unwrap();
    store.set_setting("intro:a", "1").unwrap();
    store.set_setting("intro:c", "").unwrap();
    store.set_setting("intro", "x").unwrap();
    assert_eq!(
        store.settings_with_prefix("intro:").unwrap(),
        vec![
            ("intro:a".into(), "1".into()),
            ("intro:b".into(), "2".into())
        ]
    );
    assert!(matches!(
        Store::create(&dir, PASS),
        Err(OpenError::AlreadyExists(_))
    ));
    assert!(matches!(
        Store::open(&tmp.path().join("missing"), PASS),
        Err(OpenError::NotFound(_))
    ));
}

#[test]
fn database_is_encrypted() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::create(tmp.path(), PASS).unwrap();
        store
            .set_setting("marker", "plaintext-marker-4242")
            .unwrap();
    }
    let db = fs::read(tmp.path().join(DATABASE_FILE)).unwrap();
    assert!(
        !db.starts_with(b"SQLite format 3"),
        "the file has a plaintext header"
    );
    let needle = b"plaintext-marker-4242";
    assert!(
        !db.windows(needle.len()).any(|w| w == needle),
        "plaintext on disk"
    );
    assert!(
        !db.windows(8).any(|w| w == b"settings"),
        "schema in the clear"
    );
}

#[test]
fn wrong_passphrase_is_reported_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::create(tmp.path(), PASS).unwrap());
    let before = files(tmp.path());
    for attempt in [&b"wrong"[..], b"correct horse battery stapl"] {
        assert!(matches!(
            Store::open(tmp.path(), attempt),
            Err(OpenError::WrongPassphrase)
        ));
    }
    assert_eq!(
        files(tmp.path()),
        before,
        "a failed open touched the profile"
    );
    assert!(Store::open(tmp.path(), PASS).is_ok());
}

#[test]
fn every_flipped_byte_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::create(tmp.path(), PASS).unwrap();
        for i in 0..200 {
            store
                .set_setting(&format!("k{i}"), &"v".repeat(100))
                .unwrap();
        }
    }
    let path = tmp.path().join(DATABASE_FILE);
    let pristine = fs::read(&path).unwrap();
    assert!(pristine.len() >= 4096 * 3, "want several pages");
    // One byte in the first page, one in the middle, one in the last page's
    // reserved HMAC area: each must be caught.
    for offset in [100, pristine.len() / 2, pristine.len() - 10] {
        let mut damaged = pristine.clone();
        damaged[offset] ^= 0x01;
        fs::write(&path, &damaged).unwrap();
        match Store::open(tmp.path(), PASS) {
            Err(OpenError::Damaged(_)) => {}
            Err(other) => panic!("byte {offset}: wrong error {other}"),
            Ok(_) => panic!("byte {offset}: a flipped byte went unnoticed"),
        }
    }
    fs::write(&path, &pristine).unwrap();
    assert!(Store::open(tmp.path(), PASS).is_ok());
}

#[test]
fn tampered_header_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::create(tmp.path(), PASS).unwrap());
    let path = tmp.path().join(HEADER_FILE);
    let original = fs::read_to_string(&path).unwrap();
    let weakened = original.replace("\"memory_kib\": 65536", "\"memory_kib\": 8");
    assert_ne!(weakened, original);
    fs::write(&path, weakened).unwrap();
    assert!(matches!(
        Store::open(tmp.path(), PASS),
        Err(OpenError::HeaderDamaged(_))
    ));
    fs::write(&path, "{not json").unwrap();
    assert!(matches!(
        Store::open(tmp.path(), PASS),
        Err(OpenError::HeaderDamaged(_))
    ));
}

#[test]
fn newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::create(tmp.path(), PASS).unwrap();
        store
            .connection()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    assert!(
        matches!(Store::open(tmp.path(), PASS), Err(OpenError::TooNew(v)) if v == SCHEMA_VERSION + 1)
    );
}

#[test]
fn migration_from_an_empty_database_reaches_the_current_schema() {
    // A version-0 database (what an interrupted first start leaves) is migrated
    // step by step to the current version, each step in its own transaction.
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::create(tmp.path(), PASS).unwrap();
        let conn = store.connection();
        for table in [
            "settings",
            "mls_kv",
            "mls_chunk",
            "channels",
            "members",
            "senders",
            "messages",
            "pending",
            "key_packages",
            "outbox",
            "mailboxes",
            "alerts",
            "channel_settings",
            "invite_links",
            "link_blobs",
            "join_requests",
            "pending_joins",
            "introductions",
            "intro_steps",
        ] {
            conn.execute_batch(&format!("DROP TABLE {table}")).unwrap();
        }
        conn.pragma_update(None, "user_version", 0).unwrap();
    }
    let store = Store::open(tmp.path(), PASS).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    store.set_setting("after", "migration").unwrap();
}

#[test]
fn deleted_rows_are_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(tmp.path(), PASS).unwrap();
    let secure: i64 = store
        .connection()
        .query_row("PRAGMA secure_delete", [], |r| r.get(0))
        .unwrap();
    assert_eq!(secure, 1);
    // Fill a page with a marker, delete it, and look at every decrypted page of the
    // database through SQLite's page-level view.
    let marker = "erase-me-".repeat(300);
    store.set_setting("secret", &marker).unwrap();
    store
        .connection()
        .execute("DELETE FROM settings WHERE key = 'secret'", [])
        .unwrap();
    store.checkpoint().unwrap();
    let pages: Vec<Vec<u8>> = {
        let mut stmt = store
            .connection()
            .prepare("SELECT data FROM sqlite_dbpage")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(!pages.is_empty());
    let needle = b"erase-me-erase-me-";
    for page in &pages {
        assert!(
            !page.windows(needle.len()).any(|w| w == needle),
            "deleted text remains in a page"
        );
    }
    // And the engine's channel erasure goes through the same path.
    assert!(store.channels().unwrap().is_empty());
}

#[test]
fn version_5_gives_introductions_a_table_and_drops_the_settings_that_held_them() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::create(tmp.path(), PASS).unwrap();
        store
            .connection()
            .execute_batch(
                "DROP TABLE introductions; DROP TABLE intro_steps; DROP TABLE mls_chunk;
                 ALTER TABLE mailboxes DROP COLUMN purpose; PRAGMA user_version = 4;",
            )
            .unwrap();
        for key in [
            "intro:00",
            "intro-join:01",
            "intro-host:02",
            "intro-pending:03",
        ] {
            store.set_setting(key, "state of an older build").unwrap();
        }
        store.set_setting("relay", "kept").unwrap();
    }
    let store = Store::open(tmp.path(), PASS).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert!(store.settings_with_prefix("intro").unwrap().is_empty());
    assert_eq!(store.setting("relay").unwrap().as_deref(), Some("kept"));
    assert!(store.introductions().unwrap().is_empty());
}

#[test]
fn version_3_moves_read_cursors_into_the_channel_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let channel = ChannelId([0xab; 16]);
    {
        let store = Store::create(tmp.path(), PASS).unwrap();
        // Back to version 2, with a cursor kept the old way.
        store
            .connection()
            .execute_batch(
                "DROP INDEX messages_by_arrival;
                 ALTER TABLE messages DROP COLUMN received_at;
                 ALTER TABLE outbox DROP COLUMN ttl_secs;
                 DROP TABLE channel_settings;
                 DROP TABLE invite_links;
                 DROP TABLE link_blobs;
                 DROP TABLE join_requests;
                 DROP TABLE pending_joins;
                 DROP TABLE introductions;
                 DROP TABLE intro_steps;
                 DROP TABLE mls_chunk;
                 ALTER TABLE mailboxes DROP COLUMN purpose;
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        store
            .set_setting(&format!("read-cursor:{channel}"), "17")
            .unwrap();
        store.set_setting("read-cursor:not-hex", "3").unwrap();
    }
    let store = Store::open(tmp.path(), PASS).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(
        store.channel_setting(&channel, "read-cursor").unwrap(),
        Some("17".into())
    );
    assert_eq!(
        store.setting(&format!("read-cursor:{channel}")).unwrap(),
        None
    );
    // Erasing the channel erases its settings.
    store.delete_channel(&channel).unwrap();
    assert_eq!(
        store.channel_setting(&channel, "read-cursor").unwrap(),
        None
    );
}

#[test]
fn an_erased_channel_leaves_no_row_that_names_it() {
    use backchannel_proto::addr::{Fingerprint, MailboxAddr, RelayAddr};
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(tmp.path(), PASS).unwrap();
    let channel = ChannelId([0x5a; 16]);
    let other = ChannelId([0x3c; 16]);
    let relay = RelayAddr {
        fingerprint: Fingerprint([9; 32]),
        host: "127.0.0.1".into(),
        port: 4000,
        alternates: Vec::new(),
    };
    for (i, ch) in [(1u8, channel), (2, other)] {
        store
            .save_mailbox(&client_tables::MailboxRecord {
                read_id: MailboxId([i; 16]),
                send_id: MailboxId([i + 100; 16]),
                relay: relay.clone(),
                auth_seed: Zeroizing::new([i; 32]),
                channel: Some(ch),
                last_processed: 0,
                created_at: Timestamp(1),
                purpose: client_tables::MailboxPurpose::Channel,
            })
            .unwrap();
        store
            .enqueue_transmit(&backchannel_core::Transmit {
                id: 0,
                channel: ch,
                to: MailboxAddr {
                    relay: relay.clone(),
                    send_id: MailboxId([i + 50; 16]),
                },
                ttl_secs: 0,
                blob: vec![i; 64],
            })
            .unwrap();
    }
    // Introductions through it are kept in settings, by hex identifier.
    let hex_id = hex::encode(channel.0);
    store
        .set_setting("intro-host:0011", &format!("{hex_id} ready"))
        .unwrap();
    store
        .set_setting(&format!("intro-pending:{hex_id}"), "")
        .unwrap();
    store
        .set_setting("intro:2233", &hex::encode(other.0))
        .unwrap();

    // Introductions: one through it, one between two other channels.
    use backchannel_core::derive::MemberId;
    use backchannel_core::introduction::{IntroState, Party};
    let party = |channel, name: &str| Party {
        channel,
        member: MemberId([7; 32]),
        name: name.into(),
    };
    let through = IntroState::ExpectConsent {
        introducer: party(channel, "carol"),
        peer: "alice".into(),
        role: backchannel_core::introduction::Role::Join,
    };
    let elsewhere = IntroState::ExpectOffer {
        host: party(other, "alice"),
        joiner: party(ChannelId([0x11; 16]), "bob"),
    };
    store.save_introduction(&[1; 16], &through).unwrap();
    store.save_introduction(&[2; 16], &elsewhere).unwrap();

    store.delete_channel(&channel).unwrap();
    store.checkpoint().unwrap();
    assert_eq!(store.introductions().unwrap(), vec![([2; 16], elsewhere)]);

    // What waits for a relay is still there, under no name; the other channel's
    // rows are untouched.
    let outbox = store.outbox().unwrap();
    assert_eq!(
        outbox.iter().map(|t| t.channel).collect::<Vec<_>>(),
        [ChannelId::ERASED, other]
    );
    let mailboxes = store.mailboxes().unwrap();
    assert_eq!(
        mailboxes.iter().map(|m| m.channel).collect::<Vec<_>>(),
        [Some(ChannelId::ERASED), Some(other)]
    );
    assert_eq!(store.settings_with_prefix("intro").unwrap().len(), 1);
    // And no page of the database holds the identifier, raw or in hex.
    let pages = store.decrypted_pages().unwrap();
    for needle in [&channel.0[..], hex_id.as_bytes()] {
        assert!(
            !pages
                .iter()
                .any(|p| p.windows(needle.len()).any(|w| w == needle)),
            "the erased channel's identifier survives"
        );
    }
}

const DURESS: &[u8] = b"tell them nothing";

#[cfg(unix)]
fn header_inode(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(dir.join(HEADER_FILE)).unwrap().ino()
}

#[cfg(not(unix))]
fn header_inode(_dir: &Path) -> u64 {
    0
}

#[test]
fn the_duress_passphrase_erases_the_profile_and_looks_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::create(tmp.path(), PASS).unwrap();
        store.set_setting("secret", "the source's name").unwrap();
        store.set_duress(DURESS).unwrap();
    }
    let before = files(tmp.path());
    let inode_before = header_inode(tmp.path());
    // A wrong passphrase changes nothing, even with a duress passphrase set.
    assert!(matches!(
        Store::open(tmp.path(), b"wrong"),
        Err(OpenError::WrongPassphrase)
    ));
    assert_eq!(files(tmp.path()), before);

    assert!(matches!(
        Store::open(tmp.path(), DURESS),
        Err(OpenError::WrongPassphrase)
    ));
    // The same two files are there, of the same sizes: it still looks like a profile.
    let after = files(tmp.path());
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before));
    let db = |f: &[(String, Vec<u8>)]| {
        f.iter()
            .find(|(n, _)| n == DATABASE_FILE)
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(db(&after).len(), db(&before).len());
    // The header was written over in place (same file, same length): the old salt
    // and key check, the only way from a passphrase to the database key, are gone.
    let header_len = |f: &[(String, Vec<u8>)]| {
        f.iter()
            .find(|(n, _)| n == HEADER_FILE)
            .map(|(_, b)| b.len())
    };
    assert_eq!(header_len(&after), header_len(&before));
    assert_eq!(header_inode(tmp.path()), inode_before);
    let old_header_bytes = &before.iter().find(|(n, _)| n == HEADER_FILE).unwrap().1;
    let old: Header = serde_json::from_slice(old_header_bytes).unwrap();
    let header_text = fs::read(tmp.path().join(HEADER_FILE)).unwrap();
    for secret in [&old.kdf.salt, &old.key_check] {
        let hex = hex::encode(secret).into_bytes();
        assert!(!header_text.windows(hex.len()).any(|w| w == hex));
    }
    for attempt in [PASS, DURESS] {
        assert!(matches!(
            Store::open(tmp.path(), attempt),
            Err(OpenError::WrongPassphrase)
        ));
    }
}

#[test]
fn the_header_does_not_tell_whether_a_duress_passphrase_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(tmp.path(), PASS).unwrap();
    let shape = || {
        let header: serde_json::Value =
            serde_json::from_slice(&fs::read(tmp.path().join(HEADER_FILE)).unwrap()).unwrap();
        let duress = header["duress"].clone();
        (
            duress["salt"].as_str().unwrap().len(),
            duress["check"].as_str().unwrap().len(),
            header.as_object().unwrap().len(),
        )
    };
    let unset = shape();
    store.set_duress(DURESS).unwrap();
    assert_eq!(shape(), unset);
    store.clear_duress().unwrap();
    assert_eq!(shape(), unset);
    drop(store);
    // Cleared: the old duress passphrase is now just wrong.
    assert!(matches!(
        Store::open(tmp.path(), DURESS),
        Err(OpenError::WrongPassphrase)
    ));
    let store = Store::open(tmp.path(), PASS).unwrap();
    assert!(matches!(
        store.set_duress(PASS),
        Err(OpenError::DuressIsPassphrase)
    ));
}

#[test]
fn duress_changes_rewrite_the_header_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(tmp.path(), PASS).unwrap();
    let inode = header_inode(tmp.path());
    let random_salt = Header::read(tmp.path()).unwrap().duress.unwrap().salt;
    store.set_duress(DURESS).unwrap();
    let set_salt = Header::read(tmp.path()).unwrap().duress.unwrap().salt;
    store.clear_duress().unwrap();
    // The same file each time, never a renamed copy (which would leave the old
    // salt in a freed block), and no journal left behind.
    assert_eq!(header_inode(tmp.path()), inode);
    assert!(!tmp.path().join(HEADER_JOURNAL).exists());
    let text = fs::read(tmp.path().join(HEADER_FILE)).unwrap();
    for old in [random_salt, set_salt] {
        let hex = hex::encode(old).into_bytes();
        assert!(!text.windows(hex.len()).any(|w| w == hex));
    }
}

#[test]
fn a_header_rewrite_cut_short_is_finished_from_its_journal() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::create(tmp.path(), PASS).unwrap();
        store.set_setting("kept", "yes").unwrap();
    }
    // A crash while writing over the header: the journal holds the new header
    // (here the same keys with a duress passphrase), the header is torn.
    let mut header = Header::read(tmp.path()).unwrap();
    let salt = vec![7u8; 16];
    let key = kdf::derive_key(DURESS, &salt, header.kdf.params).unwrap();
    header.duress = Some(DuressHeader {
        salt,
        check: kdf::duress_check(&key).unwrap().to_vec(),
    });
    fs::write(tmp.path().join(HEADER_JOURNAL), header.bytes().unwrap()).unwrap();
    let torn = fs::read(tmp.path().join(HEADER_FILE)).unwrap();
    fs::write(tmp.path().join(HEADER_FILE), &torn[..torn.len() / 2]).unwrap();

    let store = Store::open(tmp.path(), PASS).unwrap();
    assert_eq!(store.setting("kept").unwrap().as_deref(), Some("yes"));
    assert!(!tmp.path().join(HEADER_JOURNAL).exists());
    drop(store);
    // The journal's header is the one in force: its duress passphrase works.
    assert!(matches!(
        Store::open(tmp.path(), DURESS),
        Err(OpenError::WrongPassphrase)
    ));
    assert!(matches!(
        Store::open(tmp.path(), PASS),
        Err(OpenError::WrongPassphrase)
    ));
}

#[test]
fn empty_passphrases_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        Store::create(&tmp.path().join("p"), b""),
        Err(OpenError::EmptyPassphrase)
    ));
    assert!(!Store::exists(&tmp.path().join("p")));
    let store = Store::create(tmp.path(), PASS).unwrap();
    assert!(matches!(
        store.set_duress(b""),
        Err(OpenError::EmptyPassphrase)
    ));
    drop(store);
    assert!(matches!(
        Store::open(tmp.path(), b""),
        Err(OpenError::EmptyPassphrase)
    ));
    assert!(Store::open(tmp.path(), PASS).is_ok());
}

#[test]
fn erase_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("profile");
    {
        let store = Store::create(&dir, PASS).unwrap();
        store.set_setting("secret", "x").unwrap();
    }
    Store::erase(&dir).unwrap();
    assert!(!dir.exists());
    assert!(matches!(
        Store::open(&dir, PASS),
        Err(OpenError::NotFound(_))
    ));
}

#[test]
fn invite_link_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(tmp.path(), PASS).unwrap();
    let channel = ChannelId([3; 16]);
    let link_box = MailboxId([1; 16]);
    store
        .save_invite_link(
            &InviteLinkRecord {
                read_id: link_box,
                channel,
                seed: Zeroizing::new([9; 32]),
                auto_admit: false,
                used: false,
                expires_at: Timestamp(1_000),
            },
            Timestamp(5),
        )
        .unwrap();
    let link = store.invite_link(&link_box).unwrap().unwrap();
    assert_eq!(
        (link.channel, *link.seed, link.auto_admit),
        (channel, [9; 32], false)
    );
    assert!(store.invite_link(&MailboxId([2; 16])).unwrap().is_none());
    // Open until it expires.
    assert!(!link.closed(Timestamp(999)) && link.closed(Timestamp(1_000)));
    assert!(
        store
            .closed_invite_links(Timestamp(999))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.closed_invite_links(Timestamp(1_000)).unwrap(),
        vec![link_box]
    );

    // A blob delivered twice is kept once; at most LINK_BLOBS_KEPT are kept.
    store.add_link_blob(&link_box, b"a").unwrap();
    let kept = store.add_link_blob(&link_box, b"a").unwrap();
    assert_eq!(kept.len(), 1);
    for i in 0..300u32 {
        store.add_link_blob(&link_box, &i.to_be_bytes()).unwrap();
    }
    let kept = store.add_link_blob(&link_box, b"last").unwrap();
    assert_eq!(kept.len() as i64, LINK_BLOBS_KEPT);
    assert_eq!(kept.last().unwrap().1, b"last");
    store
        .remove_link_blobs(&kept.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(store.add_link_blob(&link_box, b"b").unwrap().len(), 1);
    store.use_invite_link(&link_box).unwrap();
    assert!(store.invite_link(&link_box).unwrap().unwrap().used);
    assert_eq!(
        store.closed_invite_links(Timestamp(10)).unwrap(),
        vec![link_box]
    );
    assert_eq!(
        store.add_link_blob(&link_box, b"c").unwrap().len(),
        1,
        "its blobs went"
    );

    let id = store
        .add_join_request(&link_box, &channel, b"kp", &[4; 32], Timestamp(6))
        .unwrap();
    let other = ChannelId([8; 16]);
    store
        .add_join_request(&link_box, &other, b"kp2", &[5; 32], Timestamp(7))
        .unwrap();
    let requests = store.join_requests(Some(&channel)).unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (requests[0].id, &requests[0].key_package[..]),
        (id, &b"kp"[..])
    );
    assert_eq!(store.join_requests(None).unwrap().len(), 2);
    store.remove_join_request(id).unwrap();
    assert!(store.join_requests(Some(&channel)).unwrap().is_empty());
    store.forget_invite_link(&link_box).unwrap();
    assert!(store.invite_link(&link_box).unwrap().is_none());
    assert!(store.closed_invite_links(Timestamp(10)).unwrap().is_empty());

    let answer_box = MailboxId([6; 16]);
    store
        .save_pending_join(
            &PendingJoinRecord {
                read_id: answer_box,
                reply_key: Zeroizing::new([7; 32]),
                inviter_key: [2; 32],
                name: Some("ops".into()),
            },
            Timestamp(8),
        )
        .unwrap();
    assert_eq!(store.pending_join_mailboxes().unwrap(), vec![answer_box]);
    let pending = store.pending_join(&answer_box).unwrap().unwrap();
    assert_eq!(
        (*pending.reply_key, pending.inviter_key),
        ([7; 32], [2; 32])
    );
    store.add_link_blob(&answer_box, b"reply").unwrap();
    store.remove_pending_join(&answer_box).unwrap();
    assert!(store.pending_join(&answer_box).unwrap().is_none());
    assert_eq!(
        store.add_link_blob(&answer_box, b"x").unwrap().len(),
        1,
        "its blobs went too"
    );
}

#[test]
fn a_mailbox_says_what_it_is_for_as_its_link_or_request_comes_and_goes() {
    use backchannel_proto::addr::{Fingerprint, RelayAddr};
    use client_tables::{MailboxPurpose, MailboxRecord};
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(tmp.path(), PASS).unwrap();
    let relay = RelayAddr {
        fingerprint: Fingerprint([9; 32]),
        host: "127.0.0.1".into(),
        port: 4000,
        alternates: Vec::new(),
    };
    let purpose_of = |read_id: MailboxId| {
        store
            .mailboxes()
            .unwrap()
            .into_iter()
            .find(|m| m.read_id == read_id)
            .map(|m| m.purpose)
    };
    for i in [1u8, 2] {
        store
            .save_mailbox(&MailboxRecord {
                read_id: MailboxId([i; 16]),
                send_id: MailboxId([i + 100; 16]),
                relay: relay.clone(),
                auth_seed: Zeroizing::new([i; 32]),
                channel: None,
                last_processed: 0,
                created_at: Timestamp(1),
                purpose: MailboxPurpose::Channel,
            })
            .unwrap();
    }
    let (link_box, answer_box) = (MailboxId([1; 16]), MailboxId([2; 16]));
    store
        .save_invite_link(
            &InviteLinkRecord {
                read_id: link_box,
                channel: ChannelId([3; 16]),
                seed: Zeroizing::new([4; 32]),
                auto_admit: false,
                used: false,
                expires_at: Timestamp(100),
            },
            Timestamp(1),
        )
        .unwrap();
    store
        .save_pending_join(
            &PendingJoinRecord {
                read_id: answer_box,
                reply_key: Zeroizing::new([7; 32]),
                inviter_key: [2; 32],
                name: None,
            },
            Timestamp(1),
        )
        .unwrap();
    assert_eq!(purpose_of(link_box), Some(MailboxPurpose::InviteLink));
    assert_eq!(purpose_of(answer_box), Some(MailboxPurpose::JoinAnswer));
    // Answered: from now on the channel's messages come there.
    store.remove_pending_join(&answer_box).unwrap();
    assert_eq!(purpose_of(answer_box), Some(MailboxPurpose::Channel));
    // The same link twice is refused; the mailbox keeps its purpose.
    let again = InviteLinkRecord {
        read_id: answer_box,
        channel: ChannelId([3; 16]),
        seed: Zeroizing::new([4; 32]),
        auto_admit: false,
        used: false,
        expires_at: Timestamp(100),
    };
    store.save_invite_link(&again, Timestamp(1)).unwrap();
    assert!(store.save_invite_link(&again, Timestamp(1)).is_err());
    assert_eq!(purpose_of(answer_box), Some(MailboxPurpose::InviteLink));
}

#[test]
fn a_flood_of_alerts_cannot_push_out_a_rarer_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(tmp.path(), PASS).unwrap();
    let channel = ChannelId([4; 16]);
    let limit = ALERTS_KEPT as usize;
    store
        .add_alert(&channel, Timestamp(0), "fork", "the view forked")
        .unwrap();
    for i in 1..limit + 5 {
        store
            .add_alert(
                &channel,
                Timestamp(i as u64),
                "undecryptable",
                &format!("junk {i}"),
            )
            .unwrap();
    }
    let unseen = store.unshown_alerts(&channel).unwrap();
    assert_eq!(unseen.len(), limit + 1);
    // The fork, first of all and alone of its kind, is still there word for word.
    assert_eq!(
        (unseen[0].kind.as_str(), unseen[0].text.as_str()),
        ("fork", "the view forked")
    );
    // The oldest junk went; the newest is kept; one alert counts what was dropped.
    assert!(!unseen.iter().any(|a| a.text == "junk 1"));
    assert!(
        unseen
            .iter()
            .any(|a| a.text == format!("junk {}", limit + 4))
    );
    let counted: Vec<_> = unseen.iter().filter(|a| a.kind == OVERFLOW_KIND).collect();
    assert_eq!(counted.len(), 1);
    assert!(
        counted[0].text.starts_with("5 older alerts"),
        "{}",
        counted[0].text
    );
    // Once seen, they make room for new ones; the log stays bounded.
    let ids: Vec<u64> = unseen.iter().map(|a| a.id).collect();
    store.mark_alerts_shown(&ids).unwrap();
    store
        .add_alert(&channel, Timestamp(9_999), "replay", "new")
        .unwrap();
    let unseen = store.unshown_alerts(&channel).unwrap();
    assert_eq!(unseen.len(), 1);
    assert_eq!(unseen[0].text, "new");
    let rows: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM alerts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, ALERTS_KEPT);
}
