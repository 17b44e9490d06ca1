//! What arrived and waits for the person: answers to our requests to join through
//! a link, and notices. The driver keeps them; `invite_link` fills them.

use backchannel_core::ChannelId;

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

/// Something to tell the person that is not a channel event (those are
/// [`backchannel_core::Event`]s). The binary puts it into words.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// A request to join arrived through one of our invite links and waits for
    /// `admit` or `refuse`.
    JoinRequest {
        /// The channel's local name.
        channel: String,
        /// The request's number.
        id: u64,
        /// The name the requester asks for.
        who: String,
    },
    /// Someone joined through one of our links that admits without asking.
    AutoAdmitted {
        /// The channel's local name.
        channel: String,
        /// Their name.
        who: String,
    },
    /// A request through a link that admits without asking could not be admitted.
    AdmitFailed {
        /// The channel's local name.
        channel: String,
        /// The name the requester asked for.
        who: String,
        /// Why.
        reason: String,
    },
    /// A request to join was not valid and was dropped (nobody is asked about it).
    InvalidRequest {
        /// Why.
        reason: String,
    },
    /// Our request to join through a link was answered.
    Answered(LinkAnswer),
    /// We were admitted to a channel the maker of the link is not in: not to be
    /// trusted before comparing safety numbers.
    InviterMissing {
        /// The channel.
        channel: ChannelId,
    },
}
