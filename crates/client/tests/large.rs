//! A channel of 250 post-quantum members is joinable by a code said aloud and by an
//! invite link: the welcome (the whole ratchet tree, several hundred KB) travels
//! through a relay's rendezvous and through an answer mailbox.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use backchannel_client::LinkAnswer;
use backchannel_core::mls::Suite;

use support::{LIMIT, client, relay};

const MEMBERS: usize = 250;

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_of_250_is_joinable_by_code_and_by_link() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(tmp.path()).await;
    let (mut alice, mut crowd) = (client(tmp.path(), "alice"), client(tmp.path(), "crowd"));
    alice
        .create_channel("big", "alice", Suite::XWing.into(), &relay.address)
        .await
        .unwrap();
    // 249 others, added in one commit while alice is alone (so it goes to nobody):
    // the crowd's key packages share one real mailbox nobody reads.
    let mut kps = Vec::new();
    for i in 1..MEMBERS {
        kps.push(
            crowd
                .key_package(&format!("member {i}"), Suite::XWing, &relay.address)
                .await
                .unwrap(),
        );
    }
    let refs: Vec<&[u8]> = kps.iter().map(Vec::as_slice).collect();
    alice.add_members("big", &refs).unwrap();
    assert_eq!(
        alice.engine().channel("big").unwrap().members.len(),
        MEMBERS
    );

    // Bob joins with a code.
    let mut bob = client(tmp.path(), "bob");
    let invitation = alice.open_invitation(&relay.address).await.unwrap();
    let code = invitation.code;
    let (admitted, joined) = tokio::join!(
        alice.admit("big", invitation, Duration::from_secs(120)),
        bob.join_with_code(&relay.address, &relay.address, &code, "bob", None)
    );
    assert_eq!(admitted.unwrap(), "bob");
    joined.unwrap();
    assert_eq!(
        bob.engine().channel("big").unwrap().members.len(),
        MEMBERS + 1
    );

    // Carol joins with a link.
    let mut carol = client(tmp.path(), "carol");
    let link = alice
        .create_invite_link("big", &relay.address, true, Duration::from_secs(3600))
        .await
        .unwrap();
    let request = carol
        .request_to_join(&link, "carol", None, &relay.address)
        .await
        .unwrap();
    carol.flush(LIMIT).await.unwrap();
    alice.sync(Duration::from_secs(120)).await.unwrap();
    alice.flush(Duration::from_secs(120)).await.unwrap();
    let answer = carol
        .wait_for_answer(&request.answer_mailbox, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(matches!(answer, Some(LinkAnswer::Joined(_))), "{answer:?}");
    assert_eq!(
        carol.engine().channel("big").unwrap().members.len(),
        MEMBERS + 2
    );

    // And they talk.
    carol.send_text("big", "hello from the 252nd").unwrap();
    carol.flush(Duration::from_secs(120)).await.unwrap();
    bob.sync(Duration::from_secs(120)).await.unwrap();
    assert_eq!(support::texts(&mut bob), vec!["hello from the 252nd"]);
}
