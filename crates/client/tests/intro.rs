//! Introductions end to end: three real clients and a real relay; the introducer
//! passes the steps between two channels, and a member who is not the one
//! introduced cannot slip its own key package in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use backchannel_client::{Client, IntroProgress};
use backchannel_core::Event;
use backchannel_core::introduction::{IntroEvent, short_id};
use backchannel_core::mls::Suite;
use backchannel_proto::addr::RelayAddr;
use backchannel_proto::control::{Intro, IntroStep};

use support::{LIMIT, client, relay, texts};

/// Where introductions have come, as `client` was told since last asked.
fn intro_events(client: &mut Client) -> Vec<IntroEvent> {
    client
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Introduction(i) => Some(i),
            _ => None,
        })
        .collect()
}

/// The member of `channel`, as `client` sees it, that `which` picks.
fn member(
    client: &Client,
    channel: &str,
    which: impl Fn(&backchannel_core::store::MemberRecord) -> bool,
) -> backchannel_core::store::MemberRecord {
    client
        .engine()
        .channel(channel)
        .unwrap()
        .members
        .into_iter()
        .find(which)
        .unwrap()
}

/// `admin` makes `channel` and adds each of `others`.
async fn channel(
    admin: (&mut Client, &str),
    others: &mut [(&mut Client, &str)],
    name: &str,
    relay: &RelayAddr,
) {
    let (admin, admin_name) = admin;
    admin
        .create_channel(name, admin_name, Suite::XWing.into(), relay)
        .await
        .unwrap();
    for (other, other_name) in others.iter_mut() {
        let kp = other
            .key_package(other_name, Suite::XWing, relay)
            .await
            .unwrap();
        let welcome = admin.add_members(name, &[&kp]).unwrap();
        other.join(Some(name), &welcome).unwrap();
        other.flush(LIMIT).await.unwrap();
    }
    admin.flush(LIMIT).await.unwrap();
    for (other, _) in others.iter_mut() {
        other.sync(LIMIT).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_introduction_gives_two_strangers_a_channel_vouched_for_by_the_introducer() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(tmp.path()).await;
    let (mut carol, mut alice, mut bob, mut dave) = (
        client(tmp.path(), "carol"),
        client(tmp.path(), "alice"),
        client(tmp.path(), "bob"),
        client(tmp.path(), "dave"),
    );
    channel(
        (&mut carol, "carol"),
        &mut [(&mut alice, "alice")],
        "work",
        &relay.address,
    )
    .await;
    channel(
        (&mut carol, "carol"),
        &mut [(&mut bob, "bob"), (&mut dave, "dave")],
        "press",
        &relay.address,
    )
    .await;

    let id = carol.introduce("work", "alice", "press", "bob").unwrap();
    carol.flush(LIMIT).await.unwrap();
    assert_eq!(carol.introduction_progress(&id), Some(IntroProgress::Asked));

    // Dave, in the same channel as bob, tries to be the one introduced.
    let dave_kp = dave
        .key_package("bob", Suite::XWing, &relay.address)
        .await
        .unwrap();
    let carol_in_press = member(&dave, "press", |m| m.name == "carol").member;
    let press = dave.engine().channel_id("press").unwrap();
    dave.send_intro_step(
        &press,
        Intro {
            id,
            to: carol_in_press.0,
            step: IntroStep::Offer {
                key_package: dave_kp,
            },
        },
    )
    .unwrap();
    dave.flush(LIMIT).await.unwrap();
    carol.sync(LIMIT).await.unwrap();
    let told = intro_events(&mut carol);
    assert!(
        told.iter()
            .any(|e| matches!(e, IntroEvent::Refused { reason, .. }
            if reason.contains("did not come from the person we introduced"))),
        "{told:?}"
    );
    assert_eq!(carol.introduction_progress(&id), Some(IntroProgress::Asked));

    // Nothing happens until bob says yes.
    carol.sync(LIMIT).await.unwrap();
    dave.sync(LIMIT).await.unwrap();
    dave.drain_events();
    bob.sync(LIMIT).await.unwrap();
    assert!(intro_events(&mut bob).iter().any(|e| matches!(e,
        IntroEvent::Asked { by, peer, .. } if by == "carol" && peer == "alice")));
    let waiting = bob.pending_introductions();
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        (
            waiting[0].introducer.name.as_str(),
            waiting[0].peer.as_str()
        ),
        ("carol", "alice")
    );
    assert!(!waiting[0].hosting);
    bob.accept_introduction(&short_id(&waiting[0].id))
        .await
        .unwrap();
    bob.flush(LIMIT).await.unwrap();
    assert!(bob.pending_introductions().is_empty());

    // Bob's offer (his new key package) is sealed to carol alone and goes to her
    // mailbox only. A relay that copies it into dave's mailbox gives dave nothing:
    // he holds the channel's keys, but not carol's leaf key.
    let carol_mailbox = member(&dave, "press", |m| m.name == "carol").mailbox;
    let dave_mailbox = member(&dave, "press", |m| m.is_self).mailbox;
    let offer: Vec<Vec<u8>> = {
        let db = rusqlite::Connection::open(
            tmp.path()
                .join("relay")
                .join(backchannel_relay::DATABASE_FILE),
        )
        .unwrap();
        let mut stmt = db
            .prepare(
                "SELECT blob FROM messages WHERE mailbox = \
                 (SELECT key FROM mailboxes WHERE send_id = ?1) ORDER BY id",
            )
            .unwrap();
        stmt.query_map([&carol_mailbox.send_id.0[..]], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(!offer.is_empty());
    dave.sync(LIMIT).await.unwrap();
    assert!(
        dave.drain_events().is_empty(),
        "the offer reached a bystander's mailbox"
    );
    let raw = backchannel_client::relay::RelayClient::connect(&dave_mailbox.relay, LIMIT)
        .await
        .unwrap();
    for blob in offer {
        let blob: Box<[u8; backchannel_proto::envelope::BLOB_LEN]> =
            blob.into_boxed_slice().try_into().unwrap();
        raw.send(dave_mailbox.send_id, 0, blob).await.unwrap();
    }
    dave.sync(LIMIT).await.unwrap();
    let seen = dave.drain_events();
    assert!(
        seen.iter().any(|e| matches!(
            e,
            backchannel_core::Event::Alert {
                alert: backchannel_core::Alert::Undecryptable { detail, .. },
                ..
            } if detail.contains("sealed to us alone")
        )),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, backchannel_core::Event::Introduction(_))),
        "{seen:?}"
    );
    assert!(dave.pending_introductions().is_empty());
    assert!(dave.take_notices().is_empty());

    // Carol passes bob's key package on; alice says yes too and makes the channel;
    // carol passes the welcome back; bob joins.
    carol.sync(LIMIT).await.unwrap();
    carol.flush(LIMIT).await.unwrap();
    assert_eq!(carol.introduction_progress(&id), Some(IntroProgress::Added));
    alice.sync(LIMIT).await.unwrap();
    assert!(
        alice.engine().channel("bob").is_err(),
        "not before she says yes"
    );
    let waiting = alice.pending_introductions();
    assert_eq!(waiting.len(), 1);
    assert!(waiting[0].hosting);
    assert_eq!(waiting[0].peer, "bob");
    alice
        .accept_introduction(&short_id(&waiting[0].id))
        .await
        .unwrap();
    alice.flush(LIMIT).await.unwrap();
    carol.sync(LIMIT).await.unwrap();
    carol.flush(LIMIT).await.unwrap();
    bob.sync(LIMIT).await.unwrap();
    assert_eq!(carol.introduction_progress(&id), Some(IntroProgress::Done));
    let at_alice = alice.engine().channel("bob").unwrap();
    let at_bob = bob.engine().channel("alice").unwrap();
    assert_eq!(at_alice.id, at_bob.id);
    assert_eq!(at_alice.members.len(), 2);
    let bob_there = at_alice.members.iter().find(|m| !m.is_self).unwrap();
    let alice_there = at_bob.members.iter().find(|m| !m.is_self).unwrap();
    assert_eq!(
        alice
            .introduced_by(&at_alice.id, &bob_there.member)
            .as_deref(),
        Some("carol")
    );
    assert_eq!(
        bob.introduced_by(&at_bob.id, &alice_there.member)
            .as_deref(),
        Some("carol")
    );
    // New identities: not the keys they use with carol.
    let bob_with_carol = carol.engine().channel("press").unwrap();
    assert!(
        bob_with_carol
            .members
            .iter()
            .all(|m| m.signature_key != bob_there.signature_key)
    );
    assert!(carol.engine().channel("bob").is_err() && carol.engine().channel("alice").is_err());
    assert!(dave.engine().channels().iter().all(|c| c.name == "press"));

    // The same step again (a replaying or confused introducer) makes no second channel.
    let alice_in_work = member(&carol, "work", |m| m.name == "alice").member;
    let again = bob
        .key_package("bob", Suite::XWing, &relay.address)
        .await
        .unwrap();
    let work = carol.engine().channel_id("work").unwrap();
    carol
        .send_intro_step(
            &work,
            Intro {
                id,
                to: alice_in_work.0,
                step: IntroStep::Add {
                    peer: "bob".into(),
                    key_package: again,
                },
            },
        )
        .unwrap();
    carol.flush(LIMIT).await.unwrap();
    alice.sync(LIMIT).await.unwrap();
    assert!(intro_events(&mut alice).iter().any(|e| matches!(e,
        IntroEvent::Refused { reason, .. } if reason.contains("asked already"))));
    assert!(alice.engine().channel("bob-2").is_err());

    // Dave says no: carol is told, nobody gets a channel.
    let declined = carol.introduce("work", "alice", "press", "dave").unwrap();
    carol.flush(LIMIT).await.unwrap();
    dave.sync(LIMIT).await.unwrap();
    let waiting = dave.pending_introductions();
    dave.decline_introduction(&short_id(&waiting[0].id))
        .unwrap();
    dave.flush(LIMIT).await.unwrap();
    carol.sync(LIMIT).await.unwrap();
    assert_eq!(
        carol.introduction_progress(&declined),
        Some(IntroProgress::Declined)
    );
    assert!(intro_events(&mut carol).iter().any(|e| matches!(e,
        IntroEvent::Declined { by, .. } if by == "dave")));
    assert!(
        dave.accept_introduction(&short_id(&waiting[0].id))
            .await
            .is_err(),
        "answered"
    );
    alice.sync(LIMIT).await.unwrap();
    assert!(alice.pending_introductions().is_empty());

    alice.send_text("bob", "hello bob, carol says hi").unwrap();
    alice.flush(LIMIT).await.unwrap();
    bob.sync(LIMIT).await.unwrap();
    assert_eq!(texts(&mut bob), vec!["hello bob, carol says hi"]);
    assert_eq!(
        alice.engine().safety_number("bob", "bob").unwrap(),
        bob.engine().safety_number("alice", "alice").unwrap()
    );
}
