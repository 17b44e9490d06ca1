//! The engine's side of introductions: it carries out what the state machine in
//! [`crate::introduction`] decides (sealed steps, a key package, a channel, a
//! join), and keeps each introduction's state in its own table.

use backchannel_proto::addr::{MailboxAddr, RelayAddr};
use backchannel_proto::control::{Control, Intro, IntroStep};
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::random::OpenMlsRand as _;

use super::Engine;
use crate::context::{ChannelOptions, CommandError, Output, StepIn, Storage, internal, store_err};
use crate::derive::MemberId;
use crate::event::Event;
use crate::introduction::{
    self, Act, Consent, IntroEvent, IntroId, IntroProgress, IntroState, Party, PendingIntroduction,
    Role,
};
use crate::mls::Suite;
use crate::{ChannelId, ChannelRef, Timestamp};

fn refused(reason: impl Into<String>) -> CommandError {
    CommandError::Introduction(reason.into())
}

impl<S: Storage> Engine<S> {
    /// Introduces `host`, a member of channel `host_channel`, and `joiner`, a member
    /// of `joiner_channel`: once each says yes, the host makes a channel and the
    /// joiner joins it. Returns the introduction's identifier; it completes as their
    /// clients answer and ours passes the answers on.
    pub fn introduce<'a, 'b>(
        &mut self,
        now: Timestamp,
        host_channel: impl Into<ChannelRef<'a>>,
        host: &MemberId,
        joiner_channel: impl Into<ChannelRef<'b>>,
        joiner: &MemberId,
    ) -> Result<IntroId, CommandError> {
        let host = self.party(&self.channel_id(host_channel)?, host)?;
        let joiner = self.party(&self.channel_id(joiner_channel)?, joiner)?;
        let (state, acts) = introduction::introduce(host, joiner).map_err(refused)?;
        let id: IntroId = self.backend.rand().random_array().map_err(internal)?;
        self.transact(now, |engine| {
            engine.enter(id, state)?;
            engine.act(now, id, acts)
        })?;
        Ok(id)
    }

    /// How far introduction `id` (one we made) has come.
    pub fn introduction_progress(&self, id: &IntroId) -> Option<IntroProgress> {
        self.intros.get(id)?.progress()
    }

    /// Introductions waiting for our yes or no.
    pub fn pending_introductions(&self) -> Vec<PendingIntroduction> {
        self.intros
            .iter()
            .filter_map(|(id, state)| match state {
                IntroState::ExpectConsent {
                    introducer,
                    peer,
                    role,
                } => Some(PendingIntroduction {
                    id: *id,
                    introducer: introducer.clone(),
                    peer: peer.clone(),
                    hosting: matches!(role, Role::Host { .. }),
                }),
                _ => None,
            })
            .collect()
    }

    /// The introduction waiting for our answer whose identifier starts with
    /// `prefix` (at least 4 hex digits, and only one may match).
    pub fn pending_introduction(&self, prefix: &str) -> Result<PendingIntroduction, CommandError> {
        let prefix = prefix.trim().to_ascii_lowercase();
        let mut found: Vec<PendingIntroduction> = self
            .pending_introductions()
            .into_iter()
            .filter(|p| prefix.len() >= 4 && hex::encode(p.id).starts_with(&prefix))
            .collect();
        match (found.pop(), found.is_empty()) {
            (Some(one), true) => Ok(one),
            _ => Err(refused(format!("no introduction waits under '{prefix}'"))),
        }
    }

    /// Where saying yes to `id` makes its new mailbox: our relay in the channel
    /// the introduction came through.
    pub fn introduction_relay(&self, id: &IntroId) -> Result<RelayAddr, CommandError> {
        let Some(IntroState::ExpectConsent {
            introducer, role, ..
        }) = self.intros.get(id)
        else {
            return Err(refused("the introduction does not wait for an answer"));
        };
        // Nothing is made for an answer that cannot go anywhere.
        self.live(&introducer.channel)?;
        self.party(&introducer.channel, &introducer.member)?;
        let ch = self
            .channels
            .get(&introducer.channel)
            .ok_or(CommandError::NotActive)?;
        if let Role::Host { key_package } = role
            && self.inspect_key_package(key_package)?.suite != Some(ch.record.suite)
        {
            return Err(refused("the key package is for another ciphersuite"));
        }
        Ok(ch.record.mailbox.relay.clone())
    }

    /// Says yes to introduction `id`, with a new mailbox of ours (on
    /// [`Engine::introduction_relay`]). The joiner sends a key package; the host
    /// makes the channel at once and returns it.
    pub fn accept_introduction(
        &mut self,
        now: Timestamp,
        id: &IntroId,
        mailbox: MailboxAddr,
    ) -> Result<Option<ChannelId>, CommandError> {
        let state = self
            .intros
            .get(id)
            .ok_or_else(|| refused("no such introduction"))?;
        let consent = introduction::accept(state).map_err(refused)?;
        let id = *id;
        let (introducer, peer, key_package) = match consent {
            Consent::Offer { introducer, peer } => (introducer, peer, None),
            Consent::Host {
                introducer,
                peer,
                key_package,
            } => (introducer, peer, Some(key_package)),
        };
        self.transact(now, |engine| {
            let (suite, own_name) = engine.own_place(&introducer.channel)?;
            let by = introducer.name.clone();
            let (state, step, tell, made) = match key_package {
                // The joiner: a key package for the host, through the introducer.
                None => {
                    let mut ctx = engine.ctx(now);
                    let (signer, key_package) =
                        crate::integrity::build_key_package(&mut ctx, &own_name, suite, mailbox)?;
                    let state = IntroState::ExpectJoinWelcome {
                        introducer: introducer.clone(),
                        peer: peer.clone(),
                        offered: signer.public().to_vec(),
                    };
                    let tell = IntroEvent::Accepted { by, peer };
                    (state, IntroStep::Offer { key_package }, tell, None)
                }
                // The host: the channel, with the joiner in it; the welcome goes back.
                Some(key_package) => {
                    let name = engine.free_channel_name(&peer);
                    let options = ChannelOptions::from(suite);
                    let channel =
                        engine.create_channel_in(now, &name, &own_name, options, mailbox)?;
                    let welcome = {
                        let (ch, mut ctx) = engine.channel_ctx(&channel, now)?;
                        ch.add_members(&mut ctx, &[&key_package])?
                    };
                    let state = IntroState::Connected {
                        introducer: introducer.clone(),
                        peer: peer.clone(),
                        channel,
                        members: engine.others(&channel),
                    };
                    let tell = IntroEvent::Connected { by, peer, channel };
                    (state, IntroStep::Welcome { welcome }, tell, Some(channel))
                }
            };
            engine.enter(id, state)?;
            let answer = Act::Send {
                channel: introducer.channel,
                to: introducer.member,
                step,
            };
            engine.act(now, id, vec![answer, Act::Tell(tell)])?;
            Ok(made)
        })
    }

    /// Says no to introduction `id`; the introducer is told.
    pub fn decline_introduction(
        &mut self,
        now: Timestamp,
        id: &IntroId,
    ) -> Result<(), CommandError> {
        let state = self
            .intros
            .get(id)
            .ok_or_else(|| refused("no such introduction"))?;
        let (state, acts) = introduction::decline(state).map_err(refused)?;
        let id = *id;
        self.transact(now, |engine| {
            engine.enter(id, state)?;
            match engine.act(now, id, acts) {
                // The introducer left, or the channel closed: no is no all the same.
                Err(CommandError::NotActive | CommandError::UnknownChannel(_)) => Ok(()),
                other => other,
            }
        })
    }

    /// Who introduced `member` of `channel` to us, if someone did.
    pub fn introduced_by(&self, channel: &ChannelId, member: &MemberId) -> Option<&str> {
        self.intros.values().find_map(|state| match state {
            IntroState::Connected {
                introducer,
                channel: c,
                members,
                ..
            } if c == channel && members.contains(member) => Some(introducer.name.as_str()),
            _ => None,
        })
    }

    /// Sends a step of an introduction as it is, in channel `id` (tests use it to
    /// play a member who lies; the engine's own steps go through the state machine).
    pub fn send_introduction<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
        intro: Intro,
    ) -> Result<(), CommandError> {
        let id = &self.channel_id(channel)?;
        let to = MemberId(intro.to);
        let body = Control::Intro(intro).encode();
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(id, now)?;
            ch.send_targeted(&mut ctx, &to, &body)
        })
    }

    /// Carries out a step that arrived, in its own transaction, once the input
    /// that brought it has committed; the step leaves the store in the same
    /// transaction. A step that cannot be carried out changes nothing, is forgotten
    /// and reported; it never stops the rest. Returns false if the store failed:
    /// the step stays, for the next input.
    pub(crate) fn carry_out(&mut self, now: Timestamp, step: StepIn) -> bool {
        let from = Party {
            channel: step.channel,
            member: step.from,
            name: step.from_name,
        };
        let (row, id) = (step.row, step.intro.id);
        let result = self.transact(now, |engine| {
            engine.store().remove_intro_step(row).map_err(store_err)?;
            let pending = engine.pending_introductions();
            let waiting = introduction::Waiting {
                from_sender: pending.iter().filter(|p| p.introducer.is(&from)).count(),
                total: pending.len(),
            };
            let (state, acts) =
                introduction::on_step(id, engine.intros.get(&id), &from, step.intro.step, waiting)
                    .map_err(refused)?;
            engine.enter(id, state)?;
            engine.act(now, id, acts)
        });
        match result {
            Ok(()) => true,
            Err(CommandError::Store(_)) => false,
            Err(e) => {
                // The rollback put it back in the queue: it goes for good.
                self.steps.retain(|s| s.row != row);
                let forgotten = self.transact(now, |engine| {
                    engine.store().remove_intro_step(row).map_err(store_err)
                });
                self.outputs
                    .push_back(Output::Event(Event::Introduction(IntroEvent::Refused {
                        from: from.name,
                        reason: e.to_string(),
                    })));
                forgotten.is_ok()
            }
        }
    }

    /// A member of one of our channels (not ourselves), as an introduction names them.
    fn party(&self, channel: &ChannelId, member: &MemberId) -> Result<Party, CommandError> {
        let ch = self
            .channels
            .get(channel)
            .ok_or_else(|| CommandError::UnknownChannel(channel.to_string()))?;
        let m = ch
            .members
            .iter()
            .find(|m| m.member == *member && !m.is_self)
            .ok_or_else(|| CommandError::UnknownMember(hex::encode(&member.0[..4])))?;
        Ok(Party {
            channel: *channel,
            member: *member,
            name: m.name.clone(),
        })
    }

    /// Our suite and name in a channel: a new identity for an introduction
    /// through it goes the same way.
    fn own_place(&self, channel: &ChannelId) -> Result<(Suite, String), CommandError> {
        let ch = self.channels.get(channel).ok_or(CommandError::NotActive)?;
        let me = ch
            .members
            .iter()
            .find(|m| m.is_self)
            .ok_or(CommandError::NotActive)?;
        Ok((ch.record.suite, me.name.clone()))
    }

    /// A name for a new channel: the peer's, made unique.
    fn free_channel_name(&self, peer: &str) -> String {
        let taken = |name: &str| self.channels.values().any(|c| c.record.name == name);
        let mut name = peer.to_owned();
        let mut n = 2;
        while taken(&name) {
            name = format!("{peer}-{n}");
            n += 1;
        }
        name
    }

    /// The other members of a channel.
    fn others(&self, channel: &ChannelId) -> Vec<MemberId> {
        self.channels
            .get(channel)
            .map(|c| {
                c.members
                    .iter()
                    .filter(|m| !m.is_self)
                    .map(|m| m.member)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Moves introduction `id` to `state`, in the store and in memory.
    fn enter(&mut self, id: IntroId, state: IntroState) -> Result<(), CommandError> {
        self.store()
            .save_introduction(&id, &state)
            .map_err(store_err)?;
        self.intros.insert(id, state);
        Ok(())
    }

    /// Carries out what a transition of introduction `id` decided.
    fn act(&mut self, now: Timestamp, id: IntroId, acts: Vec<Act>) -> Result<(), CommandError> {
        for act in acts {
            match act {
                Act::Send { channel, to, step } => {
                    let body = Control::Intro(Intro { id, to: to.0, step }).encode();
                    let (ch, mut ctx) = self.channel_ctx(&channel, now)?;
                    ch.send_targeted(&mut ctx, &to, &body)?;
                }
                Act::Tell(event) => self.staged.push(Output::Event(Event::Introduction(event))),
                Act::Join { welcome } => {
                    let Some(IntroState::ExpectJoinWelcome {
                        introducer,
                        peer,
                        offered,
                    }) = self.intros.get(&id).cloned()
                    else {
                        return Err(refused("the introduction does not expect a welcome"));
                    };
                    let name = self.free_channel_name(&peer);
                    let channel = self.join_in(now, Some(&name), &welcome)?;
                    // Only the channel made for the key package we offered: a welcome
                    // for another of ours (an invite link's) is refused, and the join
                    // rolls back with the step.
                    if self
                        .channels
                        .get(&channel)
                        .is_none_or(|c| c.record.signature_key != offered)
                    {
                        return Err(refused("the welcome is not for the key package we offered"));
                    }
                    let members = self.others(&channel);
                    self.enter(
                        id,
                        IntroState::Connected {
                            introducer: introducer.clone(),
                            peer: peer.clone(),
                            channel,
                            members,
                        },
                    )?;
                    self.staged
                        .push(Output::Event(Event::Introduction(IntroEvent::Connected {
                            by: introducer.name,
                            peer,
                            channel,
                        })));
                }
            }
        }
        Ok(())
    }
}
