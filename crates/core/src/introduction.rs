//! Introductions: a member of two channels introduces two people who have never
//! met, and they get a channel of their own.
//!
//! Carol shares channel A with Alice (the host) and channel B with Bob (the
//! joiner). `introduce A alice B bob`:
//!
//! ```text
//! carol -> bob   (in B)  Ask { peer: "alice" }
//! bob   -> carol (in B)  Offer { key package, fresh identity, mailbox on bob's relay }
//! carol -> alice (in A)  Add { peer: "bob", key package }
//! alice -> carol (in A)  Welcome   (alice made a channel "bob" and added the package)
//! carol -> bob   (in B)  Welcome   (bob joins channel "alice")
//! ```
//!
//! Each step is a message sealed to one member inside a channel the two sides of
//! the step share, and is acted on only if it comes from the member the
//! introduction expects, so each side's new identity is vouched for by the
//! introducer: Alice adds the key package Carol received from Bob; Bob joins the
//! channel whose welcome Carol received from Alice. Both record "introduced by
//! carol" for the other. The introducer cannot read the new channel (the welcome is
//! sealed to Bob's key package), but as the one who vouches, could substitute
//! either side: the new channel's safety number settles that. The other members of
//! A and B can see that an introduction happens, not its channel. Nobody is
//! introduced without saying yes: `Ask` and `Add` wait for the person's consent.
//!
//! This module is the state machine alone, in the manner of rustls's `Expect*`
//! states: [`IntroState`] says what the introduction expects next, and
//! [`on_step`], [`accept`] and [`decline`] decide, from the state and an input,
//! the next state and what to do ([`Act`]). It touches neither MLS nor the store;
//! the engine carries the acts out and keeps each state in its own table.

use backchannel_proto::control::IntroStep;
use serde::{Deserialize, Serialize};

use crate::ChannelId;
use crate::derive::MemberId;

/// An introduction's identifier (random, made by the introducer).
pub type IntroId = [u8; 16];

/// The first 8 hex digits of an introduction's identifier: what people type.
pub fn short_id(id: &IntroId) -> String {
    hex::encode(&id[..4])
}

/// A step that arrived for us, kept until it is carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntroStepRecord {
    /// The channel it came through.
    pub channel: ChannelId,
    /// Who sent it.
    pub from: MemberId,
    /// Their name there.
    pub from_name: String,
    /// The step, as `proto::control::Control::Intro` encodes it.
    #[serde(with = "hex::serde")]
    pub control: Vec<u8>,
}

/// A member of one of our channels, as an introduction knows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// The channel we share with them.
    pub channel: ChannelId,
    /// Their member identifier there.
    pub member: MemberId,
    /// Their name there.
    pub name: String,
}

impl Party {
    /// The same member of the same channel (names aside).
    pub fn is(&self, other: &Party) -> bool {
        self.channel == other.channel && self.member == other.member
    }
}

/// What we are asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Send a key package, then join the channel the host makes.
    Join,
    /// Make a channel and add the owner of this key package.
    Host {
        /// The joiner's key package.
        key_package: Vec<u8>,
    },
}

/// Where an introduction stands on this device, and what it expects next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntroState {
    /// We introduce; we asked the joiner for a key package.
    ExpectOffer {
        /// Who will make the channel.
        host: Party,
        /// Who will join it.
        joiner: Party,
    },
    /// We introduce; we gave the joiner's key package to the host.
    ExpectWelcome {
        /// Who will make the channel.
        host: Party,
        /// Who will join it.
        joiner: Party,
    },
    /// We introduced; the two have their channel.
    Made {
        /// Who made the channel.
        host: Party,
        /// Who joined it.
        joiner: Party,
    },
    /// We introduced; one of the two said no.
    Refused {
        /// Who would have made the channel.
        host: Party,
        /// Who would have joined it.
        joiner: Party,
        /// Who said no.
        by: String,
    },
    /// We are introduced; the introduction waits for our yes or no.
    ExpectConsent {
        /// Who introduces.
        introducer: Party,
        /// Who we are introduced to.
        peer: String,
        /// What we would do.
        role: Role,
    },
    /// We are the joiner and sent our key package; the host's welcome comes back
    /// through the introducer.
    ExpectJoinWelcome {
        /// Who introduces.
        introducer: Party,
        /// Who we are introduced to.
        peer: String,
        /// The signature key of the key package we offered: only its channel is
        /// joined.
        #[serde(with = "hex::serde")]
        offered: Vec<u8>,
    },
    /// We are introduced and have a channel with the peer.
    Connected {
        /// Who introduced us.
        introducer: Party,
        /// Who we were introduced to.
        peer: String,
        /// Our channel with them.
        channel: ChannelId,
        /// Its other members when it was made (the peer's identity there).
        members: Vec<MemberId>,
    },
    /// We said no.
    Declined {
        /// Who introduced.
        introducer: Party,
        /// Who we were introduced to.
        peer: String,
    },
}

impl IntroState {
    /// Every channel the state names: it goes when any of them is erased.
    pub fn channels(&self) -> Vec<ChannelId> {
        match self {
            IntroState::ExpectOffer { host, joiner }
            | IntroState::ExpectWelcome { host, joiner }
            | IntroState::Made { host, joiner }
            | IntroState::Refused { host, joiner, .. } => vec![host.channel, joiner.channel],
            IntroState::ExpectConsent { introducer, .. }
            | IntroState::ExpectJoinWelcome { introducer, .. }
            | IntroState::Declined { introducer, .. } => vec![introducer.channel],
            IntroState::Connected {
                introducer,
                channel,
                ..
            } => vec![introducer.channel, *channel],
        }
    }

    /// How far an introduction we made has come (None if we did not make it).
    pub fn progress(&self) -> Option<IntroProgress> {
        match self {
            IntroState::ExpectOffer { .. } => Some(IntroProgress::Asked),
            IntroState::ExpectWelcome { .. } => Some(IntroProgress::Added),
            IntroState::Made { .. } => Some(IntroProgress::Done),
            IntroState::Refused { .. } => Some(IntroProgress::Declined),
            _ => None,
        }
    }
}

/// How far an introduction we made has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntroProgress {
    /// Waiting for the joiner's key package.
    Asked,
    /// Waiting for the host's welcome.
    Added,
    /// The two have their channel.
    Done,
    /// One of them said no.
    Declined,
}

/// An introduction waiting for our answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingIntroduction {
    /// Its identifier.
    pub id: IntroId,
    /// Who introduces, and through which channel.
    pub introducer: Party,
    /// The person we are introduced to.
    pub peer: String,
    /// We would make the channel (else we would join it).
    pub hosting: bool,
}

/// Where an introduction has come, for the person.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntroEvent {
    /// `by` would introduce us to `peer`; it waits for our yes or no.
    Asked {
        /// The introduction.
        id: IntroId,
        /// Who introduces.
        by: String,
        /// The channel it came through.
        channel: ChannelId,
        /// Who we would meet.
        peer: String,
        /// We would make the channel (else join it).
        hosting: bool,
    },
    /// We said yes as the joiner: our key package is on its way.
    Accepted {
        /// Who introduces.
        by: String,
        /// Who we will meet.
        peer: String,
    },
    /// We have a channel with `peer`, introduced by `by`.
    Connected {
        /// Who introduced us.
        by: String,
        /// Who we met.
        peer: String,
        /// The new channel.
        channel: ChannelId,
    },
    /// An introduction we made is complete.
    Made {
        /// The introduction.
        id: IntroId,
        /// Who made the channel.
        host: String,
    },
    /// One of the two we introduced said no.
    Declined {
        /// The introduction.
        id: IntroId,
        /// Who.
        by: String,
    },
    /// A step was not carried out (nothing else changed).
    Refused {
        /// Who sent it.
        from: String,
        /// Why.
        reason: String,
    },
}

/// What the engine does to carry out a transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Act {
    /// Send `step` to one member, sealed to them in the channel we share.
    Send {
        /// The channel.
        channel: ChannelId,
        /// The member.
        to: MemberId,
        /// The step.
        step: IntroStep,
    },
    /// Join the channel of this welcome (named after the peer); the state becomes
    /// [`IntroState::Connected`].
    Join {
        /// The welcome.
        welcome: Vec<u8>,
    },
    /// Tell the person.
    Tell(IntroEvent),
}

/// Why a step or an answer was not carried out.
pub type Refusal = &'static str;

/// Introductions waiting for our answer from one member, at most: more are refused
/// (a member could otherwise fill the profile with questions).
pub const MAX_WAITING_FROM_ONE: usize = 3;
/// Introductions waiting for our answer, at most.
pub const MAX_WAITING: usize = 32;

/// How many introductions wait for our answer: from the sender of a step, and in all.
#[derive(Clone, Copy, Debug, Default)]
pub struct Waiting {
    /// From the step's sender (same member, same channel).
    pub from_sender: usize,
    /// From everyone.
    pub total: usize,
}

fn send(to: &Party, step: IntroStep) -> Act {
    Act::Send {
        channel: to.channel,
        to: to.member,
        step,
    }
}

/// We introduce `host` and `joiner`: the first state and the first step.
pub fn introduce(host: Party, joiner: Party) -> Result<(IntroState, Vec<Act>), Refusal> {
    if host.channel == joiner.channel {
        return Err("they share that channel already: introduce people from two channels");
    }
    let ask = send(
        &joiner,
        IntroStep::Ask {
            peer: host.name.clone(),
        },
    );
    Ok((IntroState::ExpectOffer { host, joiner }, vec![ask]))
}

/// A step of introduction `id` arrived from `from`; `state` is what we hold for
/// `id`, if anything. Returns the next state and what to do, or why the step is
/// refused (the state then stays as it was).
pub fn on_step(
    id: IntroId,
    state: Option<&IntroState>,
    from: &Party,
    step: IntroStep,
    waiting: Waiting,
) -> Result<(IntroState, Vec<Act>), Refusal> {
    if state.is_none()
        && matches!(step, IntroStep::Ask { .. } | IntroStep::Add { .. })
        && (waiting.from_sender >= MAX_WAITING_FROM_ONE || waiting.total >= MAX_WAITING)
    {
        return Err("too many introductions wait for an answer already; answer those first");
    }
    match (state, step) {
        (None, IntroStep::Ask { peer }) => asked(id, from, peer, Role::Join),
        (None, IntroStep::Add { peer, key_package }) => {
            asked(id, from, peer, Role::Host { key_package })
        }
        (Some(_), IntroStep::Ask { .. } | IntroStep::Add { .. }) => Err("it was asked already"),
        (Some(IntroState::ExpectOffer { host, joiner }), IntroStep::Offer { key_package }) => {
            if !joiner.is(from) {
                return Err("the key package did not come from the person we introduced");
            }
            let add = send(
                host,
                IntroStep::Add {
                    peer: joiner.name.clone(),
                    key_package,
                },
            );
            Ok((
                IntroState::ExpectWelcome {
                    host: host.clone(),
                    joiner: joiner.clone(),
                },
                vec![add],
            ))
        }
        (Some(IntroState::ExpectWelcome { host, joiner }), IntroStep::Welcome { welcome }) => {
            if !host.is(from) {
                return Err("the welcome did not come from the person we introduced");
            }
            Ok((
                IntroState::Made {
                    host: host.clone(),
                    joiner: joiner.clone(),
                },
                vec![
                    send(joiner, IntroStep::Welcome { welcome }),
                    Act::Tell(IntroEvent::Made {
                        id,
                        host: host.name.clone(),
                    }),
                ],
            ))
        }
        (
            Some(state @ IntroState::ExpectJoinWelcome { introducer, .. }),
            IntroStep::Welcome { welcome },
        ) => {
            if !introducer.is(from) {
                return Err("the welcome did not come from the person introducing us");
            }
            Ok((state.clone(), vec![Act::Join { welcome }]))
        }
        (
            Some(
                IntroState::ExpectOffer { host, joiner }
                | IntroState::ExpectWelcome { host, joiner },
            ),
            IntroStep::Declined,
        ) => {
            let asked = matches!(state, Some(IntroState::ExpectOffer { .. })) && joiner.is(from);
            let added = matches!(state, Some(IntroState::ExpectWelcome { .. })) && host.is(from);
            if !asked && !added {
                return Err("the answer did not come from the person we introduced");
            }
            Ok((
                IntroState::Refused {
                    host: host.clone(),
                    joiner: joiner.clone(),
                    by: from.name.clone(),
                },
                vec![Act::Tell(IntroEvent::Declined {
                    id,
                    by: from.name.clone(),
                })],
            ))
        }
        (None, _) => Err("it is not an introduction we know"),
        (Some(_), _) => Err("the introduction does not expect that step now"),
    }
}

fn asked(
    id: IntroId,
    from: &Party,
    peer: String,
    role: Role,
) -> Result<(IntroState, Vec<Act>), Refusal> {
    backchannel_proto::member::check_name(&peer)?;
    let tell = Act::Tell(IntroEvent::Asked {
        id,
        by: from.name.clone(),
        channel: from.channel,
        peer: peer.clone(),
        hosting: matches!(role, Role::Host { .. }),
    });
    Ok((
        IntroState::ExpectConsent {
            introducer: from.clone(),
            peer,
            role,
        },
        vec![tell],
    ))
}

/// What saying yes asks of the engine: besides the acts, a key package
/// (joiner) or a channel (host), which need a new mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Consent {
    /// Make a key package for the channel we share with `introducer`, send it as
    /// an `Offer`; the state becomes `ExpectJoinWelcome`.
    Offer {
        /// Who introduces.
        introducer: Party,
        /// Who we will meet.
        peer: String,
    },
    /// Make a channel named after `peer`, add `key_package`, send the welcome to
    /// `introducer`; the state becomes `Connected`.
    Host {
        /// Who introduces.
        introducer: Party,
        /// Who we will meet.
        peer: String,
        /// Their key package.
        key_package: Vec<u8>,
    },
}

/// We say yes to an introduction waiting for us.
pub fn accept(state: &IntroState) -> Result<Consent, Refusal> {
    match state {
        IntroState::ExpectConsent {
            introducer,
            peer,
            role: Role::Join,
        } => Ok(Consent::Offer {
            introducer: introducer.clone(),
            peer: peer.clone(),
        }),
        IntroState::ExpectConsent {
            introducer,
            peer,
            role: Role::Host { key_package },
        } => Ok(Consent::Host {
            introducer: introducer.clone(),
            peer: peer.clone(),
            key_package: key_package.clone(),
        }),
        _ => Err("the introduction does not wait for an answer"),
    }
}

/// We say no to an introduction waiting for us; the introducer is told.
pub fn decline(state: &IntroState) -> Result<(IntroState, Vec<Act>), Refusal> {
    let IntroState::ExpectConsent {
        introducer, peer, ..
    } = state
    else {
        return Err("the introduction does not wait for an answer");
    };
    Ok((
        IntroState::Declined {
            introducer: introducer.clone(),
            peer: peer.clone(),
        },
        vec![send(introducer, IntroStep::Declined)],
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn party(channel: u8, member: u8, name: &str) -> Party {
        Party {
            channel: ChannelId([channel; 16]),
            member: MemberId([member; 32]),
            name: name.into(),
        }
    }

    const ID: IntroId = [7; 16];

    #[test]
    fn the_introducer_passes_each_answer_to_the_other_side() {
        let (alice, bob) = (party(1, 1, "alice"), party(2, 2, "bob"));
        let (state, acts) = introduce(alice.clone(), bob.clone()).unwrap();
        assert_eq!(
            acts,
            vec![send(
                &bob,
                IntroStep::Ask {
                    peer: "alice".into()
                }
            )]
        );
        let offer = IntroStep::Offer {
            key_package: vec![9],
        };
        let (state, acts) = on_step(ID, Some(&state), &bob, offer, Waiting::default()).unwrap();
        assert_eq!(state.progress(), Some(IntroProgress::Added));
        let add = IntroStep::Add {
            peer: "bob".into(),
            key_package: vec![9],
        };
        assert_eq!(acts, vec![send(&alice, add)]);
        let welcome = IntroStep::Welcome { welcome: vec![5] };
        let (state, acts) = on_step(
            ID,
            Some(&state),
            &alice,
            welcome.clone(),
            Waiting::default(),
        )
        .unwrap();
        assert_eq!(state.progress(), Some(IntroProgress::Done));
        assert_eq!(acts[0], send(&bob, welcome));
    }

    #[test]
    fn a_step_from_anyone_but_the_expected_member_is_refused() {
        let (alice, bob) = (party(1, 1, "alice"), party(2, 2, "bob"));
        let mallory_in_b = party(2, 3, "bob");
        let alice_in_b = party(2, 1, "alice");
        let (state, _) = introduce(alice.clone(), bob.clone()).unwrap();
        let offer = || IntroStep::Offer {
            key_package: vec![9],
        };
        assert!(on_step(ID, Some(&state), &mallory_in_b, offer(), Waiting::default()).is_err());
        assert!(on_step(ID, Some(&state), &alice_in_b, offer(), Waiting::default()).is_err());
        // The host's welcome before the key package went to the host.
        let welcome = IntroStep::Welcome { welcome: vec![5] };
        assert!(
            on_step(
                ID,
                Some(&state),
                &alice,
                welcome.clone(),
                Waiting::default()
            )
            .is_err()
        );
        let (added, _) = on_step(ID, Some(&state), &bob, offer(), Waiting::default()).unwrap();
        // Only the host declines or welcomes now.
        assert!(
            on_step(
                ID,
                Some(&added),
                &bob,
                IntroStep::Declined,
                Waiting::default()
            )
            .is_err()
        );
        assert!(on_step(ID, Some(&added), &bob, welcome, Waiting::default()).is_err());
        let (refused, acts) = on_step(
            ID,
            Some(&added),
            &alice,
            IntroStep::Declined,
            Waiting::default(),
        )
        .unwrap();
        assert_eq!(refused.progress(), Some(IntroProgress::Declined));
        assert_eq!(
            acts,
            vec![Act::Tell(IntroEvent::Declined {
                id: ID,
                by: "alice".into()
            })]
        );
        // Steps for an introduction nobody asked us about.
        assert!(on_step(ID, None, &bob, offer(), Waiting::default()).is_err());
        assert!(introduce(alice.clone(), party(1, 2, "bob")).is_err());
    }

    #[test]
    fn nobody_is_introduced_without_saying_yes() {
        let carol = party(3, 3, "carol");
        let ask = IntroStep::Ask {
            peer: "alice".into(),
        };
        let (waiting, acts) = on_step(ID, None, &carol, ask.clone(), Waiting::default()).unwrap();
        assert!(matches!(
            acts.as_slice(),
            [Act::Tell(IntroEvent::Asked { hosting: false, .. })]
        ));
        // Asked again, or a welcome before we said yes: refused.
        assert!(on_step(ID, Some(&waiting), &carol, ask, Waiting::default()).is_err());
        let welcome = IntroStep::Welcome { welcome: vec![5] };
        assert!(on_step(ID, Some(&waiting), &carol, welcome, Waiting::default()).is_err());
        assert_eq!(
            accept(&waiting).unwrap(),
            Consent::Offer {
                introducer: carol.clone(),
                peer: "alice".into()
            }
        );
        let (declined, acts) = decline(&waiting).unwrap();
        assert_eq!(acts, vec![send(&carol, IntroStep::Declined)]);
        assert!(accept(&declined).is_err());
        assert!(decline(&declined).is_err());
        let bad = IntroStep::Ask {
            peer: "a\u{202e}b".into(),
        };
        assert!(on_step(ID, None, &carol, bad, Waiting::default()).is_err());
    }

    #[test]
    fn the_joiner_joins_only_the_welcome_its_introducer_passes_on() {
        let carol = party(3, 3, "carol");
        let waiting = IntroState::ExpectJoinWelcome {
            introducer: carol.clone(),
            peer: "alice".into(),
            offered: vec![1; 32],
        };
        let welcome = IntroStep::Welcome { welcome: vec![5] };
        assert!(
            on_step(
                ID,
                Some(&waiting),
                &party(3, 4, "carol"),
                welcome.clone(),
                Waiting::default()
            )
            .is_err()
        );
        let (_, acts) = on_step(ID, Some(&waiting), &carol, welcome, Waiting::default()).unwrap();
        assert_eq!(acts, vec![Act::Join { welcome: vec![5] }]);
    }

    #[test]
    fn a_member_cannot_fill_the_profile_with_questions() {
        let carol = party(3, 3, "carol");
        let ask = || IntroStep::Ask {
            peer: "alice".into(),
        };
        let from = |from_sender, total| Waiting { from_sender, total };
        assert!(on_step(ID, None, &carol, ask(), from(2, 10)).is_ok());
        assert!(on_step(ID, None, &carol, ask(), from(MAX_WAITING_FROM_ONE, 3)).is_err());
        assert!(on_step(ID, None, &carol, ask(), from(0, MAX_WAITING)).is_err());
        // Steps of introductions under way are not questions: they go on.
        let mine = IntroState::ExpectOffer {
            host: party(1, 1, "alice"),
            joiner: carol.clone(),
        };
        let offer = IntroStep::Offer {
            key_package: vec![9],
        };
        assert!(on_step(ID, Some(&mine), &carol, offer, from(99, 99)).is_ok());
    }

    #[test]
    fn state_round_trips_through_the_store_format() {
        let state = IntroState::Connected {
            introducer: party(1, 2, "carol"),
            peer: "bob".into(),
            channel: ChannelId([4; 16]),
            members: vec![MemberId([5; 32])],
        };
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<IntroState>(&text).unwrap(), state);
        assert_eq!(
            state.channels(),
            vec![ChannelId([1; 16]), ChannelId([4; 16])]
        );
        assert_eq!(short_id(&[0xab; 16]), "abababab");
    }
}
