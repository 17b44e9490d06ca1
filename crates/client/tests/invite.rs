//! One-time codes end to end: real clients, a real relay, the PAKE through its
//! rendezvous.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use backchannel_client::InviteError;
use backchannel_core::mls::Suite;
use backchannel_proto::code::InviteCode;
use backchannel_proto::frame::ErrorCode;

use support::{LIMIT, client, relay_with};

/// The same code with other words.
fn mistyped(code: &InviteCode) -> InviteCode {
    let text = code.to_string();
    let (number, _) = text.split_once('-').unwrap();
    let other = if text.ends_with("-zoo-zoo") {
        "abandon-abandon"
    } else {
        "zoo-zoo"
    };
    format!("{number}-{other}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_said_aloud_brings_the_joiner_in() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    // Bob keeps his mailbox on a relay of his own.
    let bobs_relay = relay_with(&tmp.path().join("b"), |_| {}).await;
    let (mut alice, mut bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    alice
        .create_channel("ops", "alice", Suite::Classic.into(), &relay.address)
        .await
        .unwrap();
    let invitation = alice.open_invitation(&relay.address).await.unwrap();
    let code = invitation.code;
    assert!(invitation.expires_in >= Duration::from_secs(60));
    let said_aloud = code.to_string().to_uppercase().replace('-', " ");
    let heard: InviteCode = said_aloud.parse().unwrap();
    let (admitted, joined) = tokio::join!(
        alice.admit("ops", invitation, LIMIT),
        bob.join_with_code(&relay.address, &bobs_relay.address, &heard, "bob", None)
    );
    assert_eq!(admitted.unwrap(), "bob");
    let (_, inviter) = joined.unwrap();
    assert_eq!(inviter, "alice");
    // The channel is the one alice made, in its suite, and works.
    let at_bob = bob.engine().channel("ops").unwrap();
    assert_eq!(at_bob.suite, Suite::Classic);
    assert_eq!(at_bob.members.len(), 2);
    let bob_record = at_bob.members.iter().find(|m| m.is_self).unwrap();
    assert_eq!(bob_record.mailbox.relay, bobs_relay.address);
    alice.flush(LIMIT).await.unwrap();
    bob.send_text("ops", "hello alice").unwrap();
    bob.flush(LIMIT).await.unwrap();
    alice.sync(LIMIT).await.unwrap();
    let texts: Vec<String> = std::iter::from_fn(|| alice.take_event())
        .filter_map(|e| match e {
            backchannel_core::Event::Message(m) => Some(m.text),
            _ => None,
        })
        .collect();
    assert_eq!(texts, vec!["hello alice"]);
    assert_eq!(
        alice.engine().safety_number("ops", "bob").unwrap(),
        bob.engine().safety_number("ops", "alice").unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_code_fails_on_both_sides_and_burns_the_code() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    let (mut alice, mut mallory, mut bob) = (
        client(tmp.path(), "alice"),
        client(tmp.path(), "mallory"),
        client(tmp.path(), "bob"),
    );
    alice
        .create_channel("ops", "alice", Suite::XWing.into(), &relay.address)
        .await
        .unwrap();
    let invitation = alice.open_invitation(&relay.address).await.unwrap();
    let code = invitation.code;
    let guess = mistyped(&code);
    let (admitted, joined) = tokio::join!(
        alice.admit("ops", invitation, LIMIT),
        mallory.join_with_code(&relay.address, &relay.address, &guess, "mallory", None)
    );
    assert!(
        matches!(admitted, Err(InviteError::WrongCode)),
        "{admitted:?}"
    );
    assert!(matches!(joined, Err(InviteError::WrongCode)), "{joined:?}");
    assert_eq!(alice.engine().channel("ops").unwrap().members.len(), 1);
    assert!(mallory.engine().channels().is_empty());
    // The right code no longer works: it is burnt.
    let late = bob
        .join_with_code(&relay.address, &relay.address, &code, "bob", None)
        .await;
    assert!(
        matches!(late, Err(InviteError::UnknownCode(_) | InviteError::Used)),
        "{late:?}"
    );
    // And the relay did not mistake the typo for a different number.
    assert!(
        InviteError::UnknownCode(code.nameplate)
            .to_string()
            .contains(&code.nameplate.to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn codes_expire_and_guessing_is_rate_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |c| {
        c.rendezvous_ttl = Duration::from_secs(1);
        c.limits.rendezvous_per_minute = 3;
    })
    .await;
    let (mut alice, mut bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    alice
        .create_channel("ops", "alice", Suite::Classic.into(), &relay.address)
        .await
        .unwrap();
    let invitation = alice.open_invitation(&relay.address).await.unwrap();
    let code = invitation.code;
    let waited = alice.admit("ops", invitation, LIMIT).await;
    assert!(matches!(waited, Err(InviteError::Expired)), "{waited:?}");
    let late = bob
        .join_with_code(&relay.address, &relay.address, &code, "bob", None)
        .await;
    assert!(matches!(late, Err(InviteError::UnknownCode(_))), "{late:?}");

    // One connection sweeping through numbers is cut off after a few tries.
    let guesser = backchannel_client::relay::RelayClient::connect(&relay.address, LIMIT)
        .await
        .unwrap();
    let mut refused = Vec::new();
    for n in 1..=6 {
        if let Err(backchannel_client::relay::RelayClientError::Refused(code)) =
            guesser.join_rendezvous(n).await
        {
            refused.push(code);
        }
    }
    assert!(refused.contains(&ErrorCode::UnknownRendezvous));
    assert!(
        refused
            .iter()
            .filter(|c| **c == ErrorCode::RateLimited)
            .count()
            >= 3,
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_flooding_address_cannot_burn_other_peoples_codes() {
    use backchannel_client::relay::{RelayClient, RelayClientError};
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    // Honest inviters hold codes open (from 127.0.0.1).
    let mut inviters = Vec::new();
    let mut open = Vec::new();
    for _ in 0..5 {
        let inviter = RelayClient::connect(&relay.address, LIMIT).await.unwrap();
        let (nameplate, _) = inviter.open_rendezvous().await.unwrap();
        open.push(nameplate);
        inviters.push(inviter);
    }
    // A flooding host (127.0.0.2) opens many connections (a fresh one for every
    // guess, so per-connection limits never bite) and sweeps every short number.
    let attacker = std::net::IpAddr::from([127, 0, 0, 2]);
    let (mut joined, mut limited, mut missed) = (Vec::new(), 0, 0);
    for n in 1..=99u32 {
        let conn = RelayClient::connect_from(&relay.address, Some(attacker), LIMIT)
            .await
            .unwrap();
        match conn.join_rendezvous(n).await {
            Ok(()) => joined.push(n),
            Err(RelayClientError::Refused(ErrorCode::RateLimited)) => limited += 1,
            Err(RelayClientError::Refused(_)) => missed += 1,
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!(
        "flooding address: {} codes joined, {missed} misses, {limited} refused of 99 guesses",
        joined.len()
    );
    // Three guesses per address, then one every 200 s: at most 3 reached the
    // registry, and at most those 3 codes are burned.
    assert!(joined.len() + missed <= 3, "{joined:?} + {missed}");
    assert!(limited >= 96);
    // Every code it did not hit still works for the person it was given to, and
    // a code made now cannot be reached by the flooding host at all.
    // (each friend on an address of its own, as people are)
    let friend_at = |i: u8| Some(std::net::IpAddr::from([127, 0, 1, i]));
    for (i, nameplate) in open.iter().enumerate() {
        let friend = RelayClient::connect_from(&relay.address, friend_at(i as u8), LIMIT)
            .await
            .unwrap();
        let result = friend.join_rendezvous(*nameplate).await;
        if joined.contains(nameplate) {
            // Burned: refused as used, or gone (the flooding connection that
            // joined it has left, which closes the rendezvous), depending on
            // whether the relay has seen that connection close yet.
            assert!(
                matches!(
                    result,
                    Err(RelayClientError::Refused(
                        ErrorCode::RendezvousUsed | ErrorCode::UnknownRendezvous
                    ))
                ),
                "{result:?}"
            );
        } else {
            result.unwrap_or_else(|e| panic!("code {i} ({nameplate}) was burned: {e}"));
        }
    }
    let (fresh, _) = inviters[0].open_rendezvous().await.unwrap();
    let conn = RelayClient::connect_from(&relay.address, Some(attacker), LIMIT)
        .await
        .unwrap();
    assert!(matches!(
        conn.join_rendezvous(fresh).await,
        Err(RelayClientError::Refused(ErrorCode::RateLimited))
    ));
    let friend = RelayClient::connect_from(&relay.address, friend_at(200), LIMIT)
        .await
        .unwrap();
    friend.join_rendezvous(fresh).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joiner_who_cannot_use_the_welcome_is_taken_out_again() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    let (mut alice, mut bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    alice
        .create_channel("ops", "alice", Suite::Classic.into(), &relay.address)
        .await
        .unwrap();
    // Bob has a channel called "ops" already: the welcome arrives, and his client
    // cannot take it under that name.
    bob.create_channel("ops", "bob", Suite::Classic.into(), &relay.address)
        .await
        .unwrap();
    let invitation = alice.open_invitation(&relay.address).await.unwrap();
    let code = invitation.code;
    let (admitted, joined) = tokio::join!(
        alice.admit("ops", invitation, LIMIT),
        bob.join_with_code(&relay.address, &relay.address, &code, "bob", Some("ops"))
    );
    assert!(joined.is_err());
    assert!(admitted.is_err(), "{admitted:?}");
    // No member is left whose keys nobody holds.
    let members: Vec<String> = alice
        .engine()
        .channel("ops")
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(members, vec!["alice"]);
    alice.flush(LIMIT).await.unwrap();
}

/// An administrator's fan-out larger than the relay's rate allows is paced, not
/// refused: the link slows down when the relay says so and everything is stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_beyond_the_relays_rate_limit_is_paced_not_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |c| {
        c.limits.requests_per_second = 20;
    })
    .await;
    let (mut alice, mut bob) = (client(tmp.path(), "alice"), client(tmp.path(), "bob"));
    alice
        .create_channel("ops", "alice", Suite::Classic.into(), &relay.address)
        .await
        .unwrap();
    let kp = bob
        .key_package("bob", Suite::Classic, &relay.address)
        .await
        .unwrap();
    let welcome = alice.add_members("ops", &[&kp]).unwrap();
    bob.join(None, &welcome).unwrap();
    // 150 blobs at once: three times what 20 requests a second (burst 40) admit
    // in the first two seconds.
    for i in 0..150 {
        alice.send_text("ops", &format!("m{i}")).unwrap();
    }
    // Within the time a command gives its relays (the old shared backoff grew to
    // 30 s between tries and failed here).
    alice.flush(Duration::from_secs(20)).await.unwrap();
    assert_eq!(alice.unsent(), 0);
    bob.sync(Duration::from_secs(60)).await.unwrap();
    let texts = support::texts(&mut bob);
    assert_eq!(texts.len(), 150, "{texts:?}");
}
