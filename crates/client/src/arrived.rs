//! What arrived and waits for the client to act on it: introduction steps, and
//! answers to our requests to join through a link. The driver keeps them; the
//! modules that act on them (`intro`, `invite_link`) take them from here.

use backchannel_core::ChannelId;
use backchannel_core::derive::MemberId;
use backchannel_proto::control::Intro;

/// A step that arrived, waiting for the client to carry it out.
pub(crate) struct IntroStepIn {
    pub(crate) channel: ChannelId,
    pub(crate) from: MemberId,
    pub(crate) from_name: String,
    pub(crate) intro: Intro,
}

/// How a request of ours was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkAnswer {
    /// We are in the channel.
    Joined(ChannelId),
    /// The inviter declined.
    Refused,
    /// The answer came but could not be used.
    Failed(String),
}
