//! Invite links: invitations that do not need the inviter online.
//!
//! The inviter makes a mailbox on a relay, a key pair for the link, and gives the
//! link (relay, mailbox, ciphersuite, its own signature key in the channel, the
//! link's public key) to the joiner by any means: a chat, a QR code, paper. The
//! joiner seals a key package to the link's key and drops it in the mailbox, and
//! tells its safety number with the inviter; the inviter finds the request, compares
//! the safety number with the joiner (unless the link admits without asking), then
//! admits or refuses. The answer, sealed under a key only the two sides hold, goes
//! to the mailbox the joiner's key package names.
//!
//! A link admits one person: once someone is admitted through it, the other
//! requests it brought are refused and it takes no more.

use std::time::{Duration, Instant};

use backchannel_core::derive::safety_number;
use backchannel_core::link::{LinkCryptoError, open_reply};
use backchannel_core::mls::Suite;
use backchannel_core::store::EngineStore as _;
use backchannel_core::{ChannelId, CommandError, Timestamp, Transmit};
use backchannel_proto::addr::{MailboxAddr, MailboxId, RelayAddr};
use backchannel_proto::link::{InviteLink, JoinReply};
use backchannel_store::{
    InviteLinkRecord, JoinRequestRecord, MailboxPurpose, MailboxRecord, PendingJoinRecord,
};
use rand::RngCore as _;
use zeroize::Zeroizing;

pub use crate::arrived::LinkAnswer;
use crate::arrived::Notice;
use crate::driver::{Client, ClientError, now};

/// A request found in a link's mailbox: its number and the name it asks for, or
/// why it is not valid.
type FoundRequest = Result<(u64, String), String>;

/// Why an invite-link operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkJoinError {
    /// The link names a ciphersuite this build does not support.
    #[error("the link is for ciphersuite {0:#06x}, which this version does not support")]
    Suite(u16),
    /// Sealing or opening failed.
    #[error(transparent)]
    Crypto(#[from] LinkCryptoError),
    /// There is no request with this number.
    #[error("there is no request to join with number {0}; see `backchannel requests`")]
    NoSuchRequest(u64),
    /// The link's time is up.
    #[error("this invite link has expired; ask for a new one")]
    Expired,
    /// The request's key package does not hold up.
    #[error("the request is not valid: {0}")]
    Invalid(String),
}

impl From<LinkJoinError> for ClientError {
    fn from(e: LinkJoinError) -> Self {
        ClientError::Link(e.to_string())
    }
}

impl From<LinkCryptoError> for ClientError {
    fn from(e: LinkCryptoError) -> Self {
        ClientError::Link(e.to_string())
    }
}

/// A request to join, as shown to the person who decides.
#[derive(Clone, Debug)]
pub struct JoinRequestView {
    /// Its number, for `admit` and `refuse`.
    pub id: u64,
    /// The channel's local name.
    pub channel: String,
    /// The name the joiner asks to go by.
    pub name: String,
    /// The safety number between us and the joiner in this channel.
    pub safety_number: String,
    /// When it arrived.
    pub received_at: Timestamp,
}

/// Our request to join through a link.
#[derive(Clone, Debug)]
pub struct LinkRequest {
    /// The mailbox the answer comes to.
    pub answer_mailbox: MailboxId,
    /// The safety number to compare with the inviter.
    pub safety_number: String,
}

impl Client {
    /// Makes an invite link to `channel` with a new mailbox on `relay`, taking
    /// requests for `valid_for`. Unless `auto_admit`, each request waits for
    /// [`Client::admit_request`].
    pub async fn create_invite_link(
        &mut self,
        channel: &str,
        relay: &RelayAddr,
        auto_admit: bool,
        valid_for: Duration,
    ) -> Result<InviteLink, ClientError> {
        let expires_at = Timestamp(now().0.saturating_add(valid_for.as_millis() as u64));
        let summary = self.engine().channel(channel)?;
        if !summary.admin {
            return Err(CommandError::NotAdmin.into());
        }
        let own = summary
            .members
            .iter()
            .find(|m| m.is_self)
            .ok_or(CommandError::NotActive)?;
        let inviter_key: [u8; 32] = own
            .signature_key
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Link("our signature key is not Ed25519".into()))?;
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(seed.as_mut());
        let public_key = self.engine().link_public_key(&seed)?;
        let mailbox = self.create_mailbox(relay).await?;
        let read_id = self.read_id_of(&mailbox)?;
        self.store().save_invite_link(
            &InviteLinkRecord {
                read_id,
                channel: summary.id,
                seed,
                auto_admit,
                used: false,
                expires_at,
            },
            now(),
        )?;
        self.set_purpose(&read_id, MailboxPurpose::InviteLink);
        self.bind(&mailbox, summary.id)?;
        Ok(InviteLink {
            relay: relay.clone(),
            mailbox: mailbox.send_id,
            suite: summary.suite.code(),
            expires_at: expires_at.0,
            inviter_key,
            public_key,
        })
    }

    fn read_id_of(&self, mailbox: &MailboxAddr) -> Result<MailboxId, ClientError> {
        self.mailboxes()
            .find(|m| m.send_id == mailbox.send_id)
            .map(|m| m.read_id)
            .ok_or_else(|| ClientError::Link("a mailbox we made is missing".into()))
    }

    /// Asks to join through `link` as `own_name`, with a mailbox on `mailbox_relay`;
    /// `name` is our local name for the channel. Returns the safety number to compare
    /// with the inviter; the answer comes later ([`Client::link_answer`]).
    pub async fn request_to_join(
        &mut self,
        link: &InviteLink,
        own_name: &str,
        name: Option<&str>,
        mailbox_relay: &RelayAddr,
    ) -> Result<LinkRequest, ClientError> {
        if let Some(name) = name
            && self.engine().channel_id(name).is_ok()
        {
            return Err(CommandError::NameTaken(name.into()).into());
        }
        if now().0 >= link.expires_at {
            return Err(LinkJoinError::Expired.into());
        }
        let suite = Suite::from_code(link.suite).ok_or(LinkJoinError::Suite(link.suite))?;
        let key_package = self.key_package(own_name, suite, mailbox_relay).await?;
        let ours = self.engine().inspect_key_package(&key_package)?;
        let sealed = self
            .engine()
            .seal_join_request(&link.public_key, &key_package)?;
        let answer_mailbox = self.read_id_of(&ours.mailbox)?;
        self.store().save_pending_join(
            &PendingJoinRecord {
                read_id: answer_mailbox,
                reply_key: sealed.reply_key,
                inviter_key: link.inviter_key,
                name: name.map(str::to_owned),
            },
            now(),
        )?;
        self.set_purpose(&answer_mailbox, MailboxPurpose::JoinAnswer);
        let to = MailboxAddr {
            relay: link.relay.clone(),
            send_id: link.mailbox,
        };
        self.send_blobs(ChannelId([0; 16]), &to, sealed.blobs)?;
        self.subscribe_all();
        Ok(LinkRequest {
            answer_mailbox,
            safety_number: safety_number(&link.inviter_key, &ours.signature_key),
        })
    }

    /// Puts blobs in the outbox and hands them to their relay.
    fn send_blobs(
        &mut self,
        channel: ChannelId,
        to: &MailboxAddr,
        blobs: Vec<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let mut queued = Vec::with_capacity(blobs.len());
        for blob in blobs {
            let mut t = Transmit {
                id: 0,
                channel,
                to: to.clone(),
                ttl_secs: 0,
                blob,
            };
            t.id = self.store().enqueue_transmit(&t)?;
            queued.push(t);
        }
        for t in queued {
            self.dispatch(t);
        }
        Ok(())
    }

    /// The answer to our request waiting in `answer_mailbox`, once it came.
    pub fn link_answer(&self, answer_mailbox: &MailboxId) -> Option<LinkAnswer> {
        self.link_answers.get(answer_mailbox).cloned()
    }

    /// Waits up to `limit` for the answer to our request.
    pub async fn wait_for_answer(
        &mut self,
        answer_mailbox: &MailboxId,
        limit: Duration,
    ) -> Result<Option<LinkAnswer>, ClientError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(answer) = self.link_answer(answer_mailbox) {
                return Ok(Some(answer));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.step(left.min(Duration::from_millis(500))).await?;
        }
    }

    /// Takes a blob that arrived in an invite link's mailbox or in the mailbox the
    /// answer to our request comes to (and records it processed); false if it is
    /// the channel's after all (our request was answered already).
    pub(crate) fn take_invite_blob(
        &mut self,
        mailbox: &MailboxRecord,
        message_id: u64,
        blob: &[u8],
    ) -> Result<bool, ClientError> {
        let read_id = &mailbox.read_id;
        match mailbox.purpose {
            MailboxPurpose::InviteLink => {
                // A link already forgotten takes nothing.
                if let Some(link) = self.store().invite_link(read_id)? {
                    self.take_link_blob(&link, message_id, blob)?;
                }
                Ok(true)
            }
            MailboxPurpose::JoinAnswer => match self.store().pending_join(read_id)? {
                Some(pending) => {
                    self.take_answer_blob(&pending, message_id, blob)?;
                    Ok(true)
                }
                None => {
                    self.set_purpose(read_id, MailboxPurpose::Channel);
                    Ok(false)
                }
            },
            MailboxPurpose::Channel => Ok(false),
        }
    }

    /// A blob in one of our links' mailboxes: a piece of a request, or noise.
    fn take_link_blob(
        &mut self,
        link: &InviteLinkRecord,
        message_id: u64,
        blob: &[u8],
    ) -> Result<(), ClientError> {
        let store = self.store();
        store.begin()?;
        let result = (|| -> Result<Vec<FoundRequest>, ClientError> {
            let mut added = Vec::new();
            // A used or expired link takes nothing more (its mailbox is deleted
            // at the next sync).
            if !link.closed(now()) {
                let kept = store.add_link_blob(&link.read_id, blob)?;
                let blobs: Vec<Vec<u8>> = kept.iter().map(|(_, b)| b.clone()).collect();
                for found in self.engine().find_join_requests(&link.seed, &blobs)? {
                    let ids: Vec<i64> = found
                        .used
                        .iter()
                        .filter_map(|&i| kept.get(i).map(|(id, _)| *id))
                        .collect();
                    store.remove_link_blobs(&ids)?;
                    // A request that does not hold up is dropped here: nobody is
                    // asked to decide on it.
                    let who = match self.check_request(&link.channel, &found.key_package) {
                        Ok(name) => name,
                        Err(reason) => {
                            added.push(Err(reason));
                            continue;
                        }
                    };
                    let id = store.add_join_request(
                        &link.read_id,
                        &link.channel,
                        &found.key_package,
                        &found.reply_key,
                        now(),
                    )?;
                    added.push(Ok((id, who)));
                }
            }
            store.set_last_processed(&link.read_id, message_id)?;
            Ok(added)
        })();
        let added = match result {
            Ok(added) => {
                store.commit()?;
                added
            }
            Err(e) => {
                let _ = store.rollback();
                return Err(e);
            }
        };
        let channel = self.channel_name(&link.channel);
        for request in added {
            let (id, who) = match request {
                Ok(request) => request,
                Err(reason) => {
                    self.notices.push(Notice::InvalidRequest { reason });
                    continue;
                }
            };
            let channel = channel.clone();
            if link.auto_admit {
                let notice = match self.admit_request(id) {
                    Ok(who) => Notice::AutoAdmitted { channel, who },
                    Err(e) => Notice::AdmitFailed {
                        channel,
                        who,
                        reason: e.to_string(),
                    },
                };
                self.notices.push(notice);
            } else {
                self.notices.push(Notice::JoinRequest { channel, id, who });
            }
        }
        Ok(())
    }

    /// Checks a requested key package against the channel; the name it asks for.
    fn check_request(&self, channel: &ChannelId, key_package: &[u8]) -> Result<String, String> {
        let summary = self
            .engine()
            .inspect_key_package(key_package)
            .map_err(|e| e.to_string())?;
        let ch = self
            .engine()
            .channel(channel)
            .map_err(|_| "the channel is gone")?;
        if summary.suite != Some(ch.suite) {
            return Err("it is for another ciphersuite".into());
        }
        Ok(summary.name)
    }

    fn channel_name(&self, channel: &ChannelId) -> String {
        self.engine()
            .channel(channel)
            .map(|c| c.name)
            .unwrap_or_else(|_| channel.to_string())
    }

    /// A blob in the mailbox our request's answer comes to.
    fn take_answer_blob(
        &mut self,
        pending: &PendingJoinRecord,
        message_id: u64,
        blob: &[u8],
    ) -> Result<(), ClientError> {
        let read_id = pending.read_id;
        // Kept first (once, however often it is delivered), recorded processed only
        // once it has been dealt with: a crash in between delivers it again.
        let kept = self.store().add_answer_blob(&read_id, blob)?;
        let blobs: Vec<Vec<u8>> = kept.into_iter().map(|(_, b)| b).collect();
        if let Some((reply, used)) = open_reply(&pending.reply_key, &blobs) {
            let answer = match reply {
                JoinReply::Refused => LinkAnswer::Refused,
                JoinReply::Welcome(welcome) => self.join_from_link(pending, &welcome),
                _ => LinkAnswer::Failed("an answer this version does not understand".into()),
            };
            if let LinkAnswer::Joined(channel) = answer {
                // Whatever the channel sent here before the answer was complete.
                for (i, early) in blobs.iter().enumerate() {
                    if !used.contains(&i) {
                        match self.engine_mut().handle_incoming(now(), &channel, early) {
                            Ok(()) | Err(CommandError::UnknownChannel(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                self.pump();
            }
            self.notices.push(Notice::Answered(answer.clone()));
            self.store().remove_pending_join(&read_id)?;
            self.set_purpose(&read_id, MailboxPurpose::Channel);
            self.link_answers.insert(read_id, answer);
        }
        self.store().set_last_processed(&read_id, message_id)?;
        Ok(())
    }

    fn join_from_link(&mut self, pending: &PendingJoinRecord, welcome: &[u8]) -> LinkAnswer {
        // Joined already (a crash came before the request was forgotten)?
        if let Some(channel) = self
            .mailboxes()
            .find(|m| m.read_id == pending.read_id)
            .and_then(|m| m.channel)
        {
            return LinkAnswer::Joined(channel);
        }
        let channel = match self.join(pending.name.as_deref(), welcome) {
            Ok(channel) => channel,
            Err(e) => return LinkAnswer::Failed(e.to_string()),
        };
        // The link named the inviter's key; the channel must hold it.
        let inviter_there = self.engine().channel(channel).is_ok_and(|c| {
            c.members
                .iter()
                .any(|m| !m.is_self && m.signature_key == pending.inviter_key)
        });
        if !inviter_there {
            self.notices.push(Notice::InviterMissing { channel });
        }
        LinkAnswer::Joined(channel)
    }

    /// Requests to join awaiting a decision, of one channel or all.
    pub fn join_requests(
        &self,
        channel: Option<&str>,
    ) -> Result<Vec<JoinRequestView>, ClientError> {
        let id = channel.map(|c| self.engine().channel_id(c)).transpose()?;
        let mut out = Vec::new();
        for r in self.store().join_requests(id.as_ref())? {
            let channel = self.channel_name(&r.channel);
            let Ok(kp) = self.engine().inspect_key_package(&r.key_package) else {
                continue;
            };
            let safety_number = self
                .engine()
                .safety_number_with(&channel, &kp.signature_key)
                .unwrap_or_default();
            out.push(JoinRequestView {
                id: r.id,
                channel,
                name: kp.name,
                safety_number,
                received_at: r.received_at,
            });
        }
        Ok(out)
    }

    fn join_request(&self, id: u64) -> Result<JoinRequestRecord, ClientError> {
        self.store()
            .join_requests(None)?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| LinkJoinError::NoSuchRequest(id).into())
    }

    /// Admits the joiner of request `id`; returns the name it joined as. The link it
    /// came through is used up: its other requests are refused.
    pub fn admit_request(&mut self, id: u64) -> Result<String, ClientError> {
        let request = self.join_request(id)?;
        let kp = self
            .engine()
            .inspect_key_package(&request.key_package)
            .map_err(|e| LinkJoinError::Invalid(e.to_string()))?;
        let channel = self.channel_name(&request.channel);
        let welcome = self.add_members(&channel, &[&request.key_package])?;
        let blobs = self
            .engine()
            .seal_join_reply(&request.reply_key, &JoinReply::Welcome(welcome))?;
        self.send_blobs(request.channel, &kp.mailbox, blobs)?;
        self.store().remove_join_request(id)?;
        self.store().use_invite_link(&request.link)?;
        for other in self.store().join_requests(None)? {
            if other.link == request.link {
                self.refuse_request(other.id)?;
            }
        }
        Ok(kp.name)
    }

    /// Refuses request `id`: the joiner is told.
    pub fn refuse_request(&mut self, id: u64) -> Result<(), ClientError> {
        let request = self.join_request(id)?;
        if let Ok(kp) = self.engine().inspect_key_package(&request.key_package) {
            let blobs = self
                .engine()
                .seal_join_reply(&request.reply_key, &JoinReply::Refused)?;
            self.send_blobs(request.channel, &kp.mailbox, blobs)?;
        }
        self.store().remove_join_request(id)?;
        Ok(())
    }
}
