//! What the engine tells the person: events and integrity alerts.

use std::fmt;

use crate::derive::MemberId;
use crate::{ChannelId, Timestamp};

/// Something the person should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A text message arrived.
    Message(ReceivedMessage),
    /// We joined a channel.
    Joined {
        /// The channel.
        channel: ChannelId,
        /// The channel's title, as its creator named it.
        title: String,
        /// Who added us.
        by: String,
    },
    /// Someone joined the channel.
    MemberAdded {
        /// The channel.
        channel: ChannelId,
        /// Who joined.
        member: String,
        /// Who added them.
        by: String,
    },
    /// Someone left or was removed.
    MemberRemoved {
        /// The channel.
        channel: ChannelId,
        /// Who is gone.
        member: String,
        /// Who committed the removal.
        by: String,
    },
    /// A member replaced their keys (post-compromise security).
    KeysUpdated {
        /// The channel.
        channel: ChannelId,
        /// Whose keys changed.
        member: String,
    },
    /// A member whose view had forked was re-added (we are the administrator).
    Rejoined {
        /// The channel.
        channel: ChannelId,
        /// Who.
        member: String,
        /// Messages lost on the way (when known).
        lost: usize,
    },
    /// The channel's rules changed.
    PolicyChanged {
        /// The channel.
        channel: ChannelId,
        /// Who changed them.
        by: Actor,
        /// Messages now disappear after this many seconds (0: never).
        disappearing_secs: u64,
        /// The channel ends then (None: never).
        expires_at: Option<Timestamp>,
    },
    /// Members confirmed our burn of the channel.
    BurnProgress {
        /// The channel.
        channel: ChannelId,
        /// Who has erased it.
        confirmed: Vec<String>,
        /// Who has not yet.
        waiting: Vec<String>,
    },
    /// The channel was erased from this device, and should go from its relays.
    Erased {
        /// The channel (now gone).
        channel: ChannelId,
        /// Its local name (which no longer finds it).
        name: String,
        /// Why.
        why: Erasure,
    },
    /// We are no longer a member: removed, or our leave was committed.
    Closed {
        /// The channel.
        channel: ChannelId,
        /// Who committed it.
        by: Actor,
    },
    /// Something is wrong: see [`Alert`].
    Alert {
        /// The channel.
        channel: ChannelId,
        /// What happened.
        alert: Alert,
    },
    /// Where an introduction has come (see [`crate::introduction`]).
    Introduction(crate::introduction::IntroEvent),
}

/// Who did something: we did, or a member (by their name in the channel). A
/// member may call themselves anything, "you" included, so the two are told apart
/// by type, never by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// We did.
    Us,
    /// The member of this name did.
    Member(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Us => f.write_str("you"),
            Actor::Member(name) => f.write_str(name),
        }
    }
}

/// Why a channel was erased.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Erasure {
    /// Someone burned it.
    Burned {
        /// Who.
        by: Actor,
    },
    /// Its end date passed.
    Expired,
}

/// A text message as delivered to the person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The channel.
    pub channel: ChannelId,
    /// The sender's identifier.
    pub member: MemberId,
    /// The sender's name.
    pub from: String,
    /// The sender's sequence number.
    pub seq: u64,
    /// The text.
    pub text: String,
    /// The sender's clock.
    pub sent_at: Timestamp,
    /// Our clock on arrival.
    pub received_at: Timestamp,
    /// It arrived after it had been reported missing.
    pub late: bool,
}

/// What a channel is still waiting for, shown from the first moment (an alert
/// follows only when the grace period ends): see [`crate::Engine::pending`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Messages known to exist that have not arrived, per sender.
    pub gaps: Vec<Gap>,
    /// Inputs kept because they cannot be read yet (an update that has not come,
    /// pieces of a message whose other pieces have not come, blobs no key opens).
    pub parked: usize,
    /// An update another member reached that has not reached us.
    pub update: Option<crate::store::ExpectedEpoch>,
}

impl Pending {
    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.gaps.is_empty() && self.parked == 0 && self.update.is_none()
    }
}

/// Messages of one sender that are known to exist and have not arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The sender.
    pub from: String,
    /// Their numbers (at most 10,000 listed).
    pub missing: Vec<u64>,
    /// Since when we wait for them (our clock).
    pub since: Timestamp,
    /// The member whose report alone says some of them exist.
    pub reported_by: Option<String>,
}

impl fmt::Display for Gap {
    /// "2 messages from alice (#3-4)", with "by bob's report" when only a report
    /// says they exist.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.missing.len();
        let plural = if n == 1 { "" } else { "s" };
        write!(
            f,
            "{n} message{plural} from {} ({})",
            self.from,
            describe_numbers(&self.missing)
        )?;
        if let Some(by) = &self.reported_by {
            write!(f, " by {by}'s report")?;
        }
        Ok(())
    }
}

/// An integrity alert: an attack or a fault that the person must see.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Alert {
    /// Messages of a sender never arrived although later ones did.
    Withheld {
        /// The sender.
        from: String,
        /// The missing sequence numbers (may be long; see `Display`).
        missing: Vec<u64>,
        /// The member whose report alone says some of them exist (None when the
        /// sender's own later messages show it).
        reported_by: Option<String>,
    },
    /// A message arrived again.
    Replayed {
        /// The sender, if the copy could be attributed.
        from: Option<String>,
        /// Its sequence number, if known.
        seq: Option<u64>,
    },
    /// A sender sent two different messages under one sequence number.
    Conflicting {
        /// The sender.
        from: String,
        /// The sequence number.
        seq: u64,
    },
    /// A message does not chain to the sender's previous one.
    BrokenChain {
        /// The sender.
        from: String,
        /// The message's sequence number.
        seq: u64,
    },
    /// Our own message came back to us.
    Reflected,
    /// Data arrived that could not be decrypted or made sense of.
    Undecryptable {
        /// How many inputs.
        count: usize,
        /// What was wrong, for the curious.
        detail: String,
    },
    /// A change to the channel was refused by our policy.
    RefusedChange {
        /// Who tried.
        by: String,
        /// What was refused.
        what: String,
    },
    /// A message of another of our channels arrived in this channel's mailbox.
    Moved,
    /// A member we verified was replaced by one of the same name with another key.
    KeyChanged {
        /// The name.
        member: String,
        /// Who added the new key.
        by: String,
    },
    /// Others received messages from us that this profile never sent: it was
    /// restored from an old copy, or cloned.
    Rollback {
        /// The highest number reported.
        reported: u64,
        /// The highest number this profile has sent.
        own: u64,
        /// Who reported it.
        by: String,
    },
    /// A message numbered far beyond the sender's previous ones; it was rejected.
    SequenceJump {
        /// The sender.
        from: String,
        /// Its number.
        seq: u64,
        /// The highest number known before.
        last: u64,
    },
    /// A message in the name of a removed member, after the removal; it was rejected.
    FromRemoved {
        /// The removed member.
        from: String,
    },
    /// Another member holds a different state of the channel at the same update.
    Fork {
        /// The member whose state differs.
        by: String,
        /// The update (MLS epoch).
        epoch: u64,
    },
    /// Another member reached a newer state of the channel, whose update never
    /// reached us.
    UpdateWithheld {
        /// Who reached it.
        by: String,
        /// The update (MLS epoch).
        epoch: u64,
    },
    /// Another member received a different message under the same number.
    Equivocation {
        /// The sender of the messages.
        from: String,
        /// The number.
        seq: u64,
        /// Who reported the other version.
        witness: String,
    },
    /// A member reported that another's messages go up to a number, and that
    /// member's own later message (sent after it had received the report) shows
    /// fewer: the report was false. It is withdrawn.
    FalseReport {
        /// Who made the report.
        by: String,
        /// Whom it was about.
        about: String,
        /// The number it claimed.
        claimed: u64,
        /// The number the member's own message carries.
        own: u64,
    },
    /// After a fork, we were re-added on the administrator's history.
    ForkRecovered {
        /// Messages that were waiting and could not be read.
        lost: usize,
    },
}

impl Alert {
    /// A short machine-readable name: `withheld`, `replayed`, `conflicting`,
    /// `broken-chain`, `reflected`, `undecryptable`, `refused-change`.
    pub fn kind(&self) -> &'static str {
        match self {
            Alert::Withheld { .. } => "withheld",
            Alert::Replayed { .. } => "replayed",
            Alert::Conflicting { .. } => "conflicting",
            Alert::BrokenChain { .. } => "broken-chain",
            Alert::Reflected => "reflected",
            Alert::Undecryptable { .. } => "undecryptable",
            Alert::RefusedChange { .. } => "refused-change",
            Alert::Moved => "moved",
            Alert::KeyChanged { .. } => "key-changed",
            Alert::Rollback { .. } => "rollback",
            Alert::SequenceJump { .. } => "sequence-jump",
            Alert::FromRemoved { .. } => "from-removed-member",
            Alert::Fork { .. } => "fork",
            Alert::UpdateWithheld { .. } => "update-withheld",
            Alert::Equivocation { .. } | Alert::FalseReport { .. } => "equivocation",
            Alert::ForkRecovered { .. } => "fork-recovered",
        }
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alert::Withheld {
                from,
                missing,
                reported_by: None,
            } => {
                let n = missing.len();
                let list = describe_numbers(missing);
                let plural = if n == 1 { "" } else { "s" };
                write!(
                    f,
                    "{n} message{plural} from {from} never arrived ({list}) although later ones did: \
                     the relay or the network may be withholding them"
                )
            }
            Alert::Withheld {
                from,
                missing,
                reported_by: Some(by),
            } => {
                let n = missing.len();
                let list = describe_numbers(missing);
                let plural = if n == 1 { "" } else { "s" };
                write!(
                    f,
                    "{by} reports having received messages from {from} that never reached you: \
                     {n} message{plural} ({list}); the relay or the network may be withholding \
                     them (or {by}'s report is false)"
                )
            }
            Alert::Replayed { from, seq } => {
                let who = from.as_deref().unwrap_or("an unknown sender");
                match seq {
                    Some(seq) => write!(
                        f,
                        "message #{seq} from {who} arrived a second time and was not shown again: \
                         someone is replaying old messages"
                    ),
                    None => write!(
                        f,
                        "a message from {who} that was already read (or is too old to read) \
                         arrived again and was not shown: someone is replaying old messages"
                    ),
                }
            }
            Alert::Conflicting { from, seq } => write!(
                f,
                "{from} sent two different messages numbered #{seq}: {from}'s device may have been \
                 cloned or restored from an old copy; only the first is shown"
            ),
            Alert::BrokenChain { from, seq } => write!(
                f,
                "message #{seq} from {from} does not follow from {from}'s previous message: \
                 {from}'s history has been altered or forked"
            ),
            Alert::Reflected => f.write_str(
                "one of your own messages was sent back to you: the relay is reflecting messages",
            ),
            Alert::Undecryptable { count, detail } => {
                let plural = if *count == 1 { "" } else { "s" };
                write!(
                    f,
                    "{count} message{plural} could not be read and {}: they may have been \
                     tampered with or injected ({detail})",
                    if *count == 1 {
                        "was dropped"
                    } else {
                        "were dropped"
                    }
                )
            }
            Alert::RefusedChange { by, what } => write!(
                f,
                "{by} tried to {what}, which the channel's rules do not allow; the change was refused"
            ),
            Alert::KeyChanged { member, by } => write!(
                f,
                "{by} added a member called {member} whose key is not the one you verified: it \
                 may not be the same person; compare safety numbers again before trusting them"
            ),
            Alert::Moved => f.write_str(
                "a message of another of your channels was put into this channel's mailbox and \
                 was not shown here: the relay is moving messages between channels",
            ),
            Alert::Rollback { reported, own, by } => write!(
                f,
                "{by} reports having received message #{reported} from you, but this profile has \
                 sent only up to #{own}: it was restored from an old copy or cloned (or {by}'s \
                 report is false); messages that arrive now may be old ones replayed"
            ),
            Alert::SequenceJump { from, seq, last } => write!(
                f,
                "a message from {from} is numbered #{seq}, far beyond #{last}, the last known one; \
                 it was rejected: {from}'s client is broken or misbehaving"
            ),
            Alert::FromRemoved { from } => write!(
                f,
                "a message in the name of {from}, who was removed from the channel, arrived after \
                 the removal and was rejected"
            ),
            Alert::Fork { by, epoch } => write!(
                f,
                "{by} reports a different state of the channel than yours at update {epoch}: \
                 someone has shown the two of you different histories (the channel has forked), \
                 or {by}'s report is false"
            ),
            Alert::UpdateWithheld { by, epoch } => write!(
                f,
                "{by} reports having moved to update {epoch} of the channel, but that update never \
                 reached you: it is being withheld (you may be missing members' changes and \
                 messages), or {by}'s report is false"
            ),
            Alert::Equivocation { from, seq, witness } => write!(
                f,
                "{witness} reports receiving a different message #{seq} from {from} than you did: \
                 {from} (or a clone of {from}'s device) sent different members different messages, \
                 or {witness}'s report is false"
            ),
            Alert::FalseReport {
                by,
                about,
                claimed,
                own,
            } => write!(
                f,
                "{by} reported messages from {about} up to #{claimed}, but {about}'s own later \
                 message is #{own}: {by}'s report was false and is ignored; {by}'s client is \
                 broken or misbehaving"
            ),
            Alert::ForkRecovered { lost } => write!(
                f,
                "your view of the channel had forked from the administrator's; you have been \
                 re-added and follow the administrator's history from now on; {lost} message(s) \
                 sent on the other branch could not be read"
            ),
        }
    }
}

/// "#3", "#3-5", "#3, #7-9" — at most a few ranges, then "and N more".
fn describe_numbers(numbers: &[u64]) -> String {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &n in numbers {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => ranges.push((n, n)),
        }
    }
    let shown: Vec<String> = ranges
        .iter()
        .take(4)
        .map(|&(a, b)| {
            if a == b {
                format!("#{a}")
            } else {
                format!("#{a}-{b}")
            }
        })
        .collect();
    let mut out = shown.join(", ");
    if ranges.len() > 4 {
        out.push_str(&format!(" and {} more ranges", ranges.len() - 4));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_read_plainly() {
        let a = Alert::Withheld {
            from: "bob".into(),
            missing: vec![3, 4, 5, 9],
            reported_by: None,
        };
        assert_eq!(
            a.to_string(),
            "4 messages from bob never arrived (#3-5, #9) although later ones did: \
             the relay or the network may be withholding them"
        );
        let r = Alert::Replayed {
            from: Some("ann".into()),
            seq: Some(2),
        };
        assert!(
            r.to_string()
                .starts_with("message #2 from ann arrived a second time")
        );
        let many: Vec<u64> = (0..20).map(|i| i * 3).collect();
        assert!(describe_numbers(&many).ends_with("and 16 more ranges"));
    }
}
