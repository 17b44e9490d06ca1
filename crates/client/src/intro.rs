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
//! Each step is a control message inside a channel the two sides of the step
//! share, addressed to one member and acted on only if it comes from the member the
//! introduction expects, so each side's new identity is vouched for by the
//! introducer: Alice adds the key package Carol received from Bob; Bob joins the
//! channel whose welcome Carol received from Alice. Both record "introduced by
//! carol" for the other. The introducer cannot read the new channel (the welcome is
//! sealed to Bob's key package), but as the one who vouches, could substitute
//! either side: the new channel's safety number settles that. The other members of
//! A and B can see that an introduction happens, not its channel.
//!
//! The introducer's client passes the steps on whenever it runs; the state of each
//! introduction is kept in the profile.

use backchannel_core::derive::MemberId;
use backchannel_core::{ChannelId, ChannelOptions, ChannelSummary, CommandError};
use backchannel_proto::control::{Intro, IntroStep};
use rand::RngCore as _;

use crate::arrived::IntroStepIn;
use crate::driver::{Client, ClientError, now};

/// Profile setting prefix: introductions we made.
const MADE: &str = "intro:";
/// Profile setting prefix: introductions we are the joiner of.
const JOINING: &str = "intro-join:";
/// Profile setting prefix: introductions we hosted (the channel made for them).
const HOSTED: &str = "intro-host:";
/// Profile setting prefix: steps waiting for our consent (empty once answered).
const PENDING: &str = "intro-pending:";

/// The first 8 hex digits of an introduction's id: what people type.
fn short_id(id: &[u8; 16]) -> String {
    hex(&id[..4])
}

fn parse_pending(text: &str) -> Option<IntroStepIn> {
    let mut parts = text.splitn(4, ' ');
    let channel = ChannelId(unhex(parts.next()?)?);
    let from = MemberId(unhex(parts.next()?)?);
    let control = hex::decode(parts.next()?).ok()?;
    let from_name = parts.next()?.to_owned();
    let backchannel_proto::control::Control::Intro(intro) =
        backchannel_proto::control::Control::decode(&control).ok()?
    else {
        return None;
    };
    Some(IntroStepIn {
        channel,
        from,
        from_name,
        intro,
    })
}

/// An introduction waiting for our answer.
#[derive(Clone, Debug)]
pub struct PendingIntroduction {
    /// What to type to answer it.
    pub id: String,
    /// Who introduces.
    pub by: String,
    /// The channel it came through.
    pub channel: String,
    /// The person we are introduced to.
    pub peer: String,
    /// We would make the channel (else we would join it).
    pub hosting: bool,
}
/// Channel setting prefix: who introduced a member (by member identifier).
pub const INTRODUCED_BY: &str = "introduced-by:";

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Exactly `N` bytes of hex.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// An introduction we made, as kept in the profile.
struct Made {
    host_channel: ChannelId,
    host: MemberId,
    joiner_channel: ChannelId,
    joiner: MemberId,
    state: IntroProgress,
}

impl Made {
    fn encode(&self) -> String {
        format!(
            "{} {} {} {} {}",
            hex(&self.host_channel.0),
            hex(&self.host.0),
            hex(&self.joiner_channel.0),
            hex(&self.joiner.0),
            self.state.label()
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let host_channel = ChannelId(unhex(parts.next()?)?);
        let host = MemberId(unhex(parts.next()?)?);
        let joiner_channel = ChannelId(unhex(parts.next()?)?);
        let joiner = MemberId(unhex(parts.next()?)?);
        let state = IntroProgress::from_label(parts.next()?)?;
        Some(Self {
            host_channel,
            host,
            joiner_channel,
            joiner,
            state,
        })
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

impl IntroProgress {
    /// How it is kept in the profile.
    fn label(self) -> &'static str {
        match self {
            IntroProgress::Asked => "asked",
            IntroProgress::Added => "added",
            IntroProgress::Done => "done",
            IntroProgress::Declined => "declined",
        }
    }

    fn from_label(text: &str) -> Option<Self> {
        [Self::Asked, Self::Added, Self::Done, Self::Declined]
            .into_iter()
            .find(|p| p.label() == text)
    }
}

impl Client {
    /// Introduces `host` (a member of `host_channel`) and `joiner` (a member of
    /// `joiner_channel`): `host` will make a channel and `joiner` join it. Returns the
    /// introduction's identifier; it completes as the others' clients answer and ours
    /// passes their answers on.
    pub fn introduce(
        &mut self,
        host_channel: &str,
        host: &str,
        joiner_channel: &str,
        joiner: &str,
    ) -> Result<[u8; 16], ClientError> {
        let a = self.engine().channel(host_channel)?;
        let b = self.engine().channel(joiner_channel)?;
        let member = |c: &ChannelSummary, name: &str| {
            c.members
                .iter()
                .find(|m| m.name == name && !m.is_self)
                .map(|m| m.member)
                .ok_or_else(|| ClientError::from(CommandError::UnknownMember(name.to_owned())))
        };
        let (host_id, joiner_id) = (member(&a, host)?, member(&b, joiner)?);
        if a.id == b.id {
            return Err(ClientError::Introduction(
                "they share that channel already: introduce people from two channels".into(),
            ));
        }
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let made = Made {
            host_channel: a.id,
            host: host_id,
            joiner_channel: b.id,
            joiner: joiner_id,
            state: IntroProgress::Asked,
        };
        self.store()
            .set_setting(&format!("{MADE}{}", hex(&id)), &made.encode())?;
        self.send_step(
            &b.id,
            id,
            joiner_id,
            IntroStep::Ask {
                peer: host.to_owned(),
            },
        )?;
        Ok(id)
    }

    /// How far introduction `id` (ours) has come.
    pub fn introduction_progress(&self, id: &[u8; 16]) -> Option<IntroProgress> {
        let text = self.store().setting(&format!("{MADE}{}", hex(id))).ok()??;
        Some(Made::decode(&text)?.state)
    }

    fn send_step(
        &mut self,
        channel: &ChannelId,
        id: [u8; 16],
        to: MemberId,
        step: IntroStep,
    ) -> Result<(), ClientError> {
        self.send_intro_step(channel, Intro { id, to: to.0, step })
    }

    /// Sends one introduction step as it is, in `channel` (the steps above use it;
    /// tests use it to play a member who lies).
    pub fn send_intro_step(
        &mut self,
        channel: &ChannelId,
        intro: Intro,
    ) -> Result<(), ClientError> {
        self.engine_mut().send_introduction(now(), channel, intro)?;
        self.pump();
        Ok(())
    }

    /// Carries out the introduction steps that arrived. A step that cannot be
    /// carried out is dropped with a notice; it never stops the rest.
    pub(crate) async fn run_introductions(&mut self) {
        while let Some(step) = self.intro_steps.pop_front() {
            let from = step.from_name.clone();
            if let Err(e) = self.run_step(step).await {
                self.notices
                    .push(format!("an introduction from {from} failed: {e}"));
            }
        }
    }

    async fn run_step(&mut self, s: IntroStepIn) -> Result<(), ClientError> {
        let id = s.intro.id;
        match s.intro.step {
            // Nobody is introduced without saying yes: these wait for `accept`.
            IntroStep::Ask { .. } | IntroStep::Add { .. } => self.hold(s),
            IntroStep::Offer { key_package } => self.on_offer(&s.channel, s.from, id, key_package),
            IntroStep::Welcome { welcome } => {
                self.on_welcome(&s.channel, s.from, &s.from_name, id, &welcome)
            }
            IntroStep::Declined => self.on_declined(&s.channel, s.from, &s.from_name, id),
        }
    }

    /// Keeps a step that needs our consent, and tells the person.
    fn hold(&mut self, s: IntroStepIn) -> Result<(), ClientError> {
        let key = format!("{PENDING}{}", hex(&s.intro.id));
        if self.store().setting(&key)?.is_some()
            || self
                .store()
                .setting(&format!("{JOINING}{}", hex(&s.intro.id)))?
                .is_some()
            || self
                .store()
                .setting(&format!("{HOSTED}{}", hex(&s.intro.id)))?
                .is_some()
        {
            return Err(ClientError::Introduction("it was asked already".into()));
        }
        let (IntroStep::Ask { peer } | IntroStep::Add { peer, .. }) = &s.intro.step else {
            return Ok(());
        };
        backchannel_proto::member::check_name(peer).map_err(CommandError::InvalidName)?;
        let channel = self.engine().channel_by_id(&s.channel)?.name;
        let short = short_id(&s.intro.id);
        self.notices.push(format!(
            "{} wants to introduce you to {peer} (through '{channel}'): `backchannel accept {short}` \
             gives you a channel with them, `backchannel decline {short}` says no",
            s.from_name
        ));
        let control = backchannel_proto::control::Control::Intro(s.intro).encode();
        self.store().set_setting(
            &key,
            &format!(
                "{} {} {} {}",
                hex(&s.channel.0),
                hex(&s.from.0),
                hex(&control),
                s.from_name
            ),
        )?;
        Ok(())
    }

    /// Introductions waiting for our answer.
    pub fn pending_introductions(&self) -> Result<Vec<PendingIntroduction>, ClientError> {
        let mut out = Vec::new();
        for (key, value) in self.store().settings_with_prefix(PENDING)? {
            let Some(step) = parse_pending(&value) else {
                continue;
            };
            let Some(id) = key.strip_prefix(PENDING).and_then(unhex::<16>) else {
                continue;
            };
            let (peer, hosting) = match &step.intro.step {
                IntroStep::Ask { peer } => (peer.clone(), false),
                IntroStep::Add { peer, .. } => (peer.clone(), true),
                _ => continue,
            };
            out.push(PendingIntroduction {
                id: short_id(&id),
                by: step.from_name.clone(),
                channel: self
                    .engine()
                    .channel_by_id(&step.channel)
                    .map(|c| c.name)
                    .unwrap_or_default(),
                peer,
                hosting,
            });
        }
        Ok(out)
    }

    fn take_pending(&self, short: &str) -> Result<(String, IntroStepIn), ClientError> {
        let short = short.trim().to_ascii_lowercase();
        let matches: Vec<(String, String)> = self
            .store()
            .settings_with_prefix(PENDING)?
            .into_iter()
            .filter(|(k, _)| {
                short.len() >= 4
                    && k.strip_prefix(PENDING)
                        .is_some_and(|id| id.starts_with(&short))
            })
            .collect();
        let [(key, value)] = matches.as_slice() else {
            return Err(ClientError::Introduction(format!(
                "no introduction waits under '{short}'; see `backchannel introductions`"
            )));
        };
        let step = parse_pending(value).ok_or_else(|| {
            ClientError::Introduction("the stored introduction is damaged".into())
        })?;
        Ok((key.clone(), step))
    }

    /// Says yes to an introduction waiting for us (by the start of its id).
    pub async fn accept_introduction(&mut self, short: &str) -> Result<(), ClientError> {
        let (key, s) = self.take_pending(short)?;
        let id = s.intro.id;
        match s.intro.step {
            IntroStep::Ask { peer } => {
                self.on_ask(&s.channel, s.from, &s.from_name, id, peer)
                    .await?
            }
            IntroStep::Add { peer, key_package } => {
                self.on_add(&s.channel, s.from, &s.from_name, id, &peer, &key_package)
                    .await?
            }
            _ => {}
        }
        self.store().set_setting(&key, "")?;
        Ok(())
    }

    /// Says no to an introduction waiting for us; the introducer is told.
    pub fn decline_introduction(&mut self, short: &str) -> Result<(), ClientError> {
        let (key, s) = self.take_pending(short)?;
        self.send_step(&s.channel, s.intro.id, s.from, IntroStep::Declined)?;
        self.store().set_setting(&key, "")?;
        Ok(())
    }

    /// One of the two said no.
    fn on_declined(
        &mut self,
        channel: &ChannelId,
        from: MemberId,
        from_name: &str,
        id: [u8; 16],
    ) -> Result<(), ClientError> {
        let Some(mut made) = self.made(&id)? else {
            return Err(ClientError::Introduction("it is not one we made".into()));
        };
        let asked = made.state == IntroProgress::Asked
            && made.joiner_channel == *channel
            && made.joiner == from;
        let added = made.state == IntroProgress::Added
            && made.host_channel == *channel
            && made.host == from;
        if !asked && !added {
            return Err(ClientError::Introduction(
                "the answer did not come from the person we introduced".into(),
            ));
        }
        made.state = IntroProgress::Declined;
        self.save_made(&id, &made)?;
        self.notices
            .push(format!("{from_name} declined the introduction"));
        Ok(())
    }

    /// Our name, relay and suite in a channel: a new identity for the introduction
    /// goes the same way.
    fn own_place(
        &self,
        channel: &ChannelId,
    ) -> Result<(ChannelSummary, String, backchannel_proto::addr::RelayAddr), ClientError> {
        let summary = self.engine().channel_by_id(channel)?;
        let me = summary
            .members
            .iter()
            .find(|m| m.is_self)
            .ok_or(CommandError::NotActive)?;
        let (name, relay) = (me.name.clone(), me.mailbox.relay.clone());
        Ok((summary, name, relay))
    }

    /// A name for the new channel: the peer's, made unique.
    fn free_channel_name(&self, peer: &str) -> String {
        let mut name = peer.to_owned();
        let mut n = 2;
        while self.engine().channel_id(&name).is_ok() {
            name = format!("{peer}-{n}");
            n += 1;
        }
        name
    }

    /// We are the joiner: make a key package and send it to the introducer.
    async fn on_ask(
        &mut self,
        channel: &ChannelId,
        introducer: MemberId,
        introducer_name: &str,
        id: [u8; 16],
        peer: String,
    ) -> Result<(), ClientError> {
        let key = format!("{JOINING}{}", hex(&id));
        if self.store().setting(&key)?.is_some() {
            return Ok(()); // asked again: answered already
        }
        backchannel_proto::member::check_name(&peer).map_err(CommandError::InvalidName)?;
        let (summary, own_name, relay) = self.own_place(channel)?;
        let key_package = self.key_package(&own_name, summary.suite, &relay).await?;
        self.store().set_setting(
            &key,
            &format!("{} {} {peer}", hex(&channel.0), hex(&introducer.0)),
        )?;
        self.send_step(channel, id, introducer, IntroStep::Offer { key_package })?;
        self.notices.push(format!(
            "{introducer_name} is introducing you to {peer} (from '{}')",
            summary.name
        ));
        Ok(())
    }

    fn made(&self, id: &[u8; 16]) -> Result<Option<Made>, ClientError> {
        Ok(self
            .store()
            .setting(&format!("{MADE}{}", hex(id)))?
            .and_then(|t| Made::decode(&t)))
    }

    fn save_made(&self, id: &[u8; 16], made: &Made) -> Result<(), ClientError> {
        self.store()
            .set_setting(&format!("{MADE}{}", hex(id)), &made.encode())?;
        Ok(())
    }

    /// We introduced: pass the joiner's key package to the host.
    fn on_offer(
        &mut self,
        channel: &ChannelId,
        from: MemberId,
        id: [u8; 16],
        key_package: Vec<u8>,
    ) -> Result<(), ClientError> {
        let Some(mut made) = self.made(&id)? else {
            return Err(ClientError::Introduction("it is not one we made".into()));
        };
        if made.state != IntroProgress::Asked
            || made.joiner_channel != *channel
            || made.joiner != from
        {
            return Err(ClientError::Introduction(
                "the key package did not come from the person we introduced".into(),
            ));
        }
        let joiner = self.engine().channel_by_id(channel)?;
        let peer = joiner
            .members
            .iter()
            .find(|m| m.member == from)
            .map(|m| m.name.clone())
            .ok_or(CommandError::NotActive)?;
        let host_channel = made.host_channel;
        self.send_step(
            &host_channel,
            id,
            made.host,
            IntroStep::Add { peer, key_package },
        )?;
        made.state = IntroProgress::Added;
        self.save_made(&id, &made)
    }

    /// We are the host: make a channel with the joiner, send the welcome back.
    async fn on_add(
        &mut self,
        channel: &ChannelId,
        introducer: MemberId,
        introducer_name: &str,
        id: [u8; 16],
        peer: &str,
        key_package: &[u8],
    ) -> Result<(), ClientError> {
        let hosted = format!("{HOSTED}{}", hex(&id));
        if self.store().setting(&hosted)?.is_some() {
            return Err(ClientError::Introduction(
                "it asked again for a channel we made already".into(),
            ));
        }
        let kp = self.engine().inspect_key_package(key_package)?;
        let (summary, own_name, relay) = self.own_place(channel)?;
        if kp.suite != Some(summary.suite) {
            return Err(ClientError::Introduction(
                "the key package is for another ciphersuite".into(),
            ));
        }
        backchannel_proto::member::check_name(peer).map_err(CommandError::InvalidName)?;
        let name = self.free_channel_name(peer);
        let new = self
            .create_channel(
                &name,
                &own_name,
                ChannelOptions::from(summary.suite),
                &relay,
            )
            .await?;
        self.store().set_setting(&hosted, &hex(&new.0))?;
        let welcome = self.add_members(&name, &[key_package])?;
        for m in self
            .engine()
            .channel_by_id(&new)?
            .members
            .iter()
            .filter(|m| !m.is_self)
        {
            self.store().set_channel_setting(
                &new,
                &format!("{INTRODUCED_BY}{}", hex(&m.member.0)),
                introducer_name,
            )?;
        }
        self.send_step(channel, id, introducer, IntroStep::Welcome { welcome })?;
        self.notices.push(format!(
            "{introducer_name} introduced you to {peer}: your channel with them is '{name}'"
        ));
        Ok(())
    }

    /// A welcome: passed on if we introduced, joined if we are the joiner.
    fn on_welcome(
        &mut self,
        channel: &ChannelId,
        from: MemberId,
        from_name: &str,
        id: [u8; 16],
        welcome: &[u8],
    ) -> Result<(), ClientError> {
        if let Some(mut made) = self.made(&id)? {
            if made.state != IntroProgress::Added
                || made.host_channel != *channel
                || made.host != from
            {
                return Err(ClientError::Introduction(
                    "the welcome did not come from the person we introduced".into(),
                ));
            }
            let joiner_channel = made.joiner_channel;
            self.send_step(
                &joiner_channel,
                id,
                made.joiner,
                IntroStep::Welcome {
                    welcome: welcome.to_vec(),
                },
            )?;
            made.state = IntroProgress::Done;
            self.save_made(&id, &made)?;
            self.notices.push(format!(
                "the introduction is made: {from_name} has a channel with the other"
            ));
            return Ok(());
        }
        let key = format!("{JOINING}{}", hex(&id));
        let Some(text) = self.store().setting(&key)? else {
            return Err(ClientError::Introduction(
                "no introduction of ours has this welcome".into(),
            ));
        };
        let mut parts = text.splitn(3, ' ');
        let expected_channel = parts.next().and_then(unhex::<16>).map(ChannelId);
        let expected_from = parts.next().and_then(unhex::<32>).map(MemberId);
        let peer = parts.next().unwrap_or("introduced").to_owned();
        if expected_channel != Some(*channel) || expected_from != Some(from) {
            return Err(ClientError::Introduction(
                "the welcome did not come from the person introducing us".into(),
            ));
        }
        let name = self.free_channel_name(&peer);
        let new = self.join(Some(&name), welcome)?;
        for m in self
            .engine()
            .channel_by_id(&new)?
            .members
            .iter()
            .filter(|m| !m.is_self)
        {
            self.store().set_channel_setting(
                &new,
                &format!("{INTRODUCED_BY}{}", hex(&m.member.0)),
                from_name,
            )?;
        }
        self.store().set_setting(&key, "done")?;
        self.notices.push(format!(
            "{from_name} introduced you to {peer}: your channel with them is '{name}'"
        ));
        Ok(())
    }

    /// Who introduced `member` of `channel` to us, if someone did.
    pub fn introduced_by(&self, channel: &ChannelId, member: &MemberId) -> Option<String> {
        self.store()
            .channel_setting(channel, &format!("{INTRODUCED_BY}{}", hex(&member.0)))
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn state_round_trips() {
        let made = Made {
            host_channel: ChannelId([1; 16]),
            host: MemberId([2; 32]),
            joiner_channel: ChannelId([3; 16]),
            joiner: MemberId([4; 32]),
            state: IntroProgress::Added,
        };
        let back = Made::decode(&made.encode()).unwrap();
        assert_eq!(back.host_channel, made.host_channel);
        assert_eq!(back.joiner, made.joiner);
        assert_eq!(back.state, IntroProgress::Added);
        assert!(Made::decode("zz").is_none());
        assert_eq!(unhex::<2>("0aff"), Some([10, 255]));
        assert_eq!(unhex::<2>("0aff0"), None);
        assert_eq!(unhex::<1>("g0"), None);
    }
}
