//! Invite links end to end: real clients, real relays, requests sealed to the
//! link's X-Wing key, the inviter deciding before anyone is admitted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use backchannel_client::{LinkAnswer, Notice};
use backchannel_core::mls::Suite;
use backchannel_proto::link::InviteLink;

use support::{LIMIT, client, relay, texts};

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// The link as it travels: through its text form.
fn passed_on(link: &InviteLink) -> InviteLink {
    link.to_string().to_uppercase().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_join_waits_for_approval_and_safety_numbers_match() {
    let tmp = tempfile::tempdir().unwrap();
    let (relay_a, relay_b) = (
        relay(&tmp.path().join("a")).await,
        relay(&tmp.path().join("b")).await,
    );
    let (mut alice, mut bob, mut eve) = (
        client(tmp.path(), "alice"),
        client(tmp.path(), "bob"),
        client(tmp.path(), "eve"),
    );
    alice
        .create_channel("ops", "alice", Suite::XWing.into(), &relay_a.address)
        .await
        .unwrap();
    let link = alice
        .create_invite_link("ops", &relay_a.address, false, WEEK)
        .await
        .unwrap();

    // Eve knows where the mailbox is but not the link's key: what she drops there is
    // sealed to another key, noise to alice.
    let mut forged = link.clone();
    forged.public_key = alice.engine().link_public_key(&[0x11; 32]).unwrap();
    let eves = eve
        .request_to_join(&forged, "eve", None, &relay_b.address)
        .await
        .unwrap();
    eve.flush(LIMIT).await.unwrap();

    let request = bob
        .request_to_join(&passed_on(&link), "bob", Some("work"), &relay_b.address)
        .await
        .unwrap();
    bob.flush(LIMIT).await.unwrap();

    // Alice sees one request, bob's, and is told about it; nobody is in yet.
    alice.sync(LIMIT).await.unwrap();
    let requests = alice.join_requests(Some("ops")).unwrap();
    assert_eq!(
        requests.len(),
        1,
        "eve's noise makes no request; {:?}",
        alice.take_notices()
    );
    assert_eq!(requests[0].name, "bob");
    assert_eq!(requests[0].safety_number, request.safety_number);
    let notices = alice.take_notices();
    assert!(
        notices.iter().any(|n| matches!(n,
            Notice::JoinRequest { channel, who, .. } if channel == "ops" && who == "bob")),
        "{notices:?}"
    );
    assert_eq!(alice.engine().channel("ops").unwrap().members.len(), 1);
    bob.sync(LIMIT).await.unwrap();
    assert_eq!(bob.link_answer(&request.answer_mailbox), None);

    // Admitted after comparing: bob is in, with the key alice saw.
    let name = alice.admit_request(requests[0].id).unwrap();
    assert_eq!(name, "bob");
    alice.send_text("ops", "welcome bob").unwrap();
    alice.flush(LIMIT).await.unwrap();
    let answer = bob
        .wait_for_answer(&request.answer_mailbox, LIMIT)
        .await
        .unwrap();
    let Some(LinkAnswer::Joined(channel)) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(bob.engine().channel_id("work").unwrap(), channel);
    assert_eq!(
        bob.engine().safety_number("work", "alice").unwrap(),
        request.safety_number
    );
    assert_eq!(
        alice.engine().safety_number("ops", "bob").unwrap(),
        request.safety_number
    );
    bob.sync(LIMIT).await.unwrap();
    assert_eq!(texts(&mut bob), vec!["welcome bob"]);
    bob.send_text("work", "thanks").unwrap();
    bob.flush(LIMIT).await.unwrap();
    alice.sync(LIMIT).await.unwrap();
    assert_eq!(texts(&mut alice), vec!["thanks"]);

    // Eve never hears back.
    eve.sync(LIMIT).await.unwrap();
    assert_eq!(eve.link_answer(&eves.answer_mailbox), None);
    assert!(eve.engine().channels().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_joiner_is_told_and_a_link_admits_one_person() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(tmp.path()).await;
    let (mut alice, mut bob, mut carol, mut dave) = (
        client(tmp.path(), "alice"),
        client(tmp.path(), "bob"),
        client(tmp.path(), "carol"),
        client(tmp.path(), "dave"),
    );
    alice
        .create_channel("ops", "alice", Suite::Classic.into(), &relay.address)
        .await
        .unwrap();
    let link = alice
        .create_invite_link("ops", &relay.address, false, WEEK)
        .await
        .unwrap();
    let mut asked = Vec::new();
    for (joiner, name) in [(&mut bob, "bob"), (&mut carol, "carol")] {
        let r = joiner
            .request_to_join(&link, name, None, &relay.address)
            .await
            .unwrap();
        joiner.flush(LIMIT).await.unwrap();
        asked.push(r);
    }
    alice.sync(LIMIT).await.unwrap();
    let requests = alice.join_requests(None).unwrap();
    let names: Vec<&str> = requests.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["bob", "carol"]);

    // Bob is refused.
    alice.refuse_request(requests[0].id).unwrap();
    alice.flush(LIMIT).await.unwrap();
    let answer = bob
        .wait_for_answer(&asked[0].answer_mailbox, LIMIT)
        .await
        .unwrap();
    assert_eq!(answer, Some(LinkAnswer::Refused));
    assert!(bob.engine().channels().is_empty());
    assert!(
        bob.take_notices()
            .contains(&Notice::Answered(LinkAnswer::Refused))
    );

    // Carol is admitted; the link is used up.
    let mailboxes = alice.mailboxes().count();
    alice.admit_request(requests[1].id).unwrap();
    alice.flush(LIMIT).await.unwrap();
    let answer = carol
        .wait_for_answer(&asked[1].answer_mailbox, LIMIT)
        .await
        .unwrap();
    assert!(matches!(answer, Some(LinkAnswer::Joined(_))), "{answer:?}");
    assert!(
        alice.refuse_request(requests[0].id).is_err(),
        "decided already"
    );

    // Dave comes too late: no request appears.
    dave.request_to_join(&link, "dave", None, &relay.address)
        .await
        .unwrap();
    dave.flush(LIMIT).await.unwrap();
    alice.sync(LIMIT).await.unwrap();
    assert!(alice.join_requests(None).unwrap().is_empty());
    // Its mailbox is deleted at the relay.
    assert_eq!(alice.mailboxes().count(), mailboxes - 1);
    let members: Vec<String> = alice
        .engine()
        .channel("ops")
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(members.len(), 2);
    assert!(members.contains(&"carol".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_told_to_admit_without_asking_does() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(tmp.path()).await;
    let (mut alice, mut bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    alice
        .create_channel("ops", "alice", Suite::XWing.into(), &relay.address)
        .await
        .unwrap();
    let link = alice
        .create_invite_link("ops", &relay.address, true, WEEK)
        .await
        .unwrap();
    let request = bob
        .request_to_join(&link, "bob", None, &relay.address)
        .await
        .unwrap();
    bob.flush(LIMIT).await.unwrap();
    alice.sync(LIMIT).await.unwrap();
    alice.flush(LIMIT).await.unwrap();
    assert!(alice.join_requests(None).unwrap().is_empty());
    assert!(alice.take_notices().iter().any(|n| matches!(n,
                Notice::AutoAdmitted { channel, who } if channel == "ops" && who == "bob")));
    let answer = bob
        .wait_for_answer(&request.answer_mailbox, LIMIT)
        .await
        .unwrap();
    assert!(matches!(answer, Some(LinkAnswer::Joined(_))), "{answer:?}");
    assert_eq!(bob.engine().channel("ops").unwrap().members.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_link_takes_no_requests_even_if_its_date_is_altered() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(tmp.path()).await;
    let (mut alice, mut bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    alice
        .create_channel("ops", "alice", Suite::Classic.into(), &relay.address)
        .await
        .unwrap();
    let mailboxes = alice.mailboxes().count();
    let link = alice
        .create_invite_link("ops", &relay.address, true, Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = bob
        .request_to_join(&link, "bob", None, &relay.address)
        .await
        .unwrap_err();
    assert!(late.to_string().contains("expired"), "{late}");

    // A joiner who moves the date on is still turned away by the inviter.
    let mut altered = link.clone();
    altered.expires_at = u64::MAX;
    let request = bob
        .request_to_join(&altered, "bob", None, &relay.address)
        .await
        .unwrap();
    bob.flush(LIMIT).await.unwrap();
    alice.sync(LIMIT).await.unwrap();
    assert!(alice.join_requests(None).unwrap().is_empty());
    assert_eq!(alice.engine().channel("ops").unwrap().members.len(), 1);
    // The expired link's mailbox is deleted at the relay.
    assert_eq!(alice.mailboxes().count(), mailboxes);
    bob.sync(LIMIT).await.unwrap();
    assert_eq!(bob.link_answer(&request.answer_mailbox), None);
}
