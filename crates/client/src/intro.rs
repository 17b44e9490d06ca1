//! Introductions, as the person drives them: by channel and member names, with the
//! mailbox a yes needs made on a relay. What each step means and who may send it
//! is decided by the engine's state machine (`backchannel_core::introduction`).

use backchannel_core::CommandError;
use backchannel_core::introduction::{IntroId, IntroProgress, PendingIntroduction};
use backchannel_proto::control::Intro;

use crate::driver::{Client, ClientError, now};

/// Channel setting prefix under which profiles made before introductions had a
/// table of their own recorded who introduced a member (read, never written).
const LEGACY_INTRODUCED_BY: &str = "introduced-by:";

impl Client {
    /// Introduces `host` (a member of channel `host_channel`) and `joiner` (a
    /// member of `joiner_channel`): `host` will make a channel and `joiner` join it,
    /// once each says yes. Returns the introduction's identifier; it completes as
    /// the others' clients answer and ours passes their answers on.
    pub fn introduce(
        &mut self,
        host_channel: &str,
        host: &str,
        joiner_channel: &str,
        joiner: &str,
    ) -> Result<IntroId, ClientError> {
        let member = |channel: &str, name: &str| -> Result<_, ClientError> {
            let c = self.engine().channel(channel)?;
            let m = c
                .members
                .iter()
                .find(|m| m.name == name && !m.is_self)
                .ok_or_else(|| CommandError::UnknownMember(name.to_owned()))?;
            Ok((c.id, m.member))
        };
        let (a, host) = member(host_channel, host)?;
        let (b, joiner) = member(joiner_channel, joiner)?;
        let id = self.engine_mut().introduce(now(), a, &host, b, &joiner)?;
        self.pump();
        Ok(id)
    }

    /// How far introduction `id` (ours) has come.
    pub fn introduction_progress(&self, id: &IntroId) -> Option<IntroProgress> {
        self.engine().introduction_progress(id)
    }

    /// Sends one introduction step as it is, in `channel` (tests use it to play a
    /// member who lies).
    pub fn send_intro_step(
        &mut self,
        channel: &backchannel_core::ChannelId,
        intro: Intro,
    ) -> Result<(), ClientError> {
        self.engine_mut().send_introduction(now(), channel, intro)?;
        self.pump();
        Ok(())
    }

    /// Introductions waiting for our answer.
    pub fn pending_introductions(&self) -> Vec<PendingIntroduction> {
        self.engine().pending_introductions()
    }

    /// Says yes to an introduction waiting for us (by the start of its id): as the
    /// joiner, a key package goes to the introducer; as the host, the channel is
    /// made at once.
    pub async fn accept_introduction(&mut self, short: &str) -> Result<(), ClientError> {
        let id = self.engine().pending_introduction(short)?.id;
        let relay = self.engine().introduction_relay(&id)?;
        let mailbox = self.create_mailbox(&relay).await?;
        let made = self
            .engine_mut()
            .accept_introduction(now(), &id, mailbox.clone())?;
        if let Some(channel) = made {
            self.bind(&mailbox, channel)?;
        }
        self.pump();
        Ok(())
    }

    /// Says no to an introduction waiting for us; the introducer is told.
    pub fn decline_introduction(&mut self, short: &str) -> Result<(), ClientError> {
        let id = self.engine().pending_introduction(short)?.id;
        self.engine_mut().decline_introduction(now(), &id)?;
        self.pump();
        Ok(())
    }

    /// Who introduced `member` of `channel` to us, if someone did.
    pub fn introduced_by(
        &self,
        channel: &backchannel_core::ChannelId,
        member: &backchannel_core::derive::MemberId,
    ) -> Option<String> {
        if let Some(by) = self.engine().introduced_by(channel, member) {
            return Some(by.to_owned());
        }
        let key = format!("{LEGACY_INTRODUCED_BY}{}", hex::encode(member.0));
        self.store().channel_setting(channel, &key).ok().flatten()
    }
}
