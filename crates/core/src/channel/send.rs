//! Sending: sealing, fragmenting and fanning out what the channel sends.

use backchannel_proto::addr::MailboxAddr;
use backchannel_proto::envelope::{ContentKind, Fragment};
use backchannel_proto::member::names_clash;
use backchannel_proto::payload::{Payload, PayloadKind};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use openmls_traits::random::OpenMlsRand;
use tls_codec::{Deserialize as _, Serialize as _};

use crate::context::{CommandError, Ctx, Output, Storage, Transmit, internal, store_err};
use crate::derive::{self, MemberId, chain_hash};
use crate::event::Event;
use crate::rules::check_leaf;
use crate::seal;
use crate::store::{
    ChannelStatus, EpochKey, Intent, MemberRecord, MessageKind, MessageRecord, SenderState,
};

use super::{ANNOUNCEMENT_KEY_EPOCHS, Channel, group_extensions, members_of, policy_of};

impl Channel {
    // ----- Sending ----------------------------------------------------------------

    /// Serializes an MLS message, fragments it, and seals a copy for each target
    /// with a fresh nonce (so that no two mailboxes hold the same bytes).
    pub(crate) fn transmit<S: Storage>(
        &self,
        ctx: &mut Ctx<'_, S>,
        message: &MlsMessageOut,
        targets: &[MailboxAddr],
        key: &[u8; 32],
    ) -> Result<(), CommandError> {
        let bytes = message.tls_serialize_detached().map_err(internal)?;
        self.transmit_content(ctx, ContentKind::Mls, &bytes, targets, key, 0)
    }

    /// Fragments any content, and seals a copy for each target with a fresh nonce.
    /// `ttl_secs` asks relays to delete the blobs if unread by then (0: their limit).
    pub(crate) fn transmit_content<S: Storage>(
        &self,
        ctx: &mut Ctx<'_, S>,
        kind: ContentKind,
        bytes: &[u8],
        targets: &[MailboxAddr],
        key: &[u8; 32],
        ttl_secs: u32,
    ) -> Result<(), CommandError> {
        let rand = ctx.backend.rand();
        let message_id: [u8; 16] = rand.random_array().map_err(internal)?;
        let fragments = Fragment::split(kind, message_id, bytes).map_err(internal)?;
        for to in targets {
            for fragment in &fragments {
                let nonce = rand.random_array().map_err(internal)?;
                let blob = seal::seal(key, nonce, &fragment.encode())
                    .ok_or_else(|| internal("sealing failed"))?;
                ctx.staged.push(Output::Transmit(Transmit {
                    id: 0,
                    channel: self.record.id,
                    to: to.clone(),
                    ttl_secs,
                    blob,
                }));
            }
        }
        Ok(())
    }

    pub(crate) fn send_payload<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        kind: PayloadKind,
        body: Vec<u8>,
    ) -> Result<MessageRecord, CommandError> {
        self.live()?;
        let ttl_secs = if kind != PayloadKind::Control {
            self.check_sendable(ctx)?;
            self.text_ttl_secs()
        } else {
            0
        };
        let payload = Payload {
            kind,
            seq: self.record.chain.own_seq + 1,
            prev_hash: self.record.chain.own_last_hash,
            sent_at: ctx.now.0,
            body,
            heads: self.heads(),
        };
        let unpadded = payload
            .encode_unpadded()
            .map_err(|_| CommandError::TooLong(payload.body.len()))?;
        let padded = payload
            .encode()
            .map_err(|_| CommandError::TooLong(payload.body.len()))?;
        let key = self.current_key()?;
        let targets = self.others();
        let live = self.live_mut()?;
        let message = live
            .group
            .create_message(ctx.backend, &live.signer, &padded)
            .map_err(internal)?;
        let bytes = message.tls_serialize_detached().map_err(internal)?;
        self.transmit_content(ctx, ContentKind::Mls, &bytes, &targets, &key, ttl_secs)?;
        if self.oldest.is_none() {
            self.oldest = Some(ctx.now);
        }
        let hash = chain_hash(&unpadded);
        self.record.chain.own_seq = payload.seq;
        self.record.chain.own_last_hash = hash;
        self.save(ctx)?;
        let mut record = MessageRecord {
            position: 0,
            channel: self.record.id,
            sender: self.record.own_member,
            sender_name: self.name_of(&self.record.own_member),
            seq: payload.seq,
            kind: match kind {
                PayloadKind::Control => MessageKind::Control,
                PayloadKind::Attachment => MessageKind::Attachment,
                _ => MessageKind::Text,
            },
            sent_at: ctx.now,
            received_at: ctx.now,
            body: payload.body,
            prev_hash: payload.prev_hash,
            hash,
            late: false,
        };
        ctx.store().append_message(&record).map_err(store_err)?;
        record.position = 0;
        Ok(record)
    }

    /// Sends `body` to one member alone, as an MLS targeted message
    /// (draft-ietf-mls-targeted-messages): sealed with HPKE to that member's leaf
    /// key and signed by us, delivered to its mailbox only. No other member can
    /// read it, even if a relay hands it over. It is outside our sequence: the
    /// receiver recognises a copy by its hash.
    pub(crate) fn send_targeted<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        to: &MemberId,
        body: &[u8],
    ) -> Result<(), CommandError> {
        let key = self.current_key()?;
        let target = self
            .members
            .iter()
            .find(|m| m.member == *to && !m.is_self)
            .ok_or_else(|| CommandError::UnknownMember(hex::encode(&to.0[..4])))?;
        let (leaf, mailbox) = (target.leaf, target.mailbox.clone());
        let live = self.live_mut()?;
        let message = live
            .group
            .create_targeted_message(ctx.backend, &live.signer, LeafNodeIndex::new(leaf), body)
            .map_err(internal)?;
        let bytes = message.tls_serialize_detached().map_err(internal)?;
        self.transmit_content(ctx, ContentKind::Mls, &bytes, &[mailbox], &key, 0)
    }

    /// Sends one of our commits to `targets` under the current epoch's key, merges
    /// it, and enters the new epoch.
    pub(crate) fn commit_and_merge<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        commit: &MlsMessageOut,
        targets: &[MailboxAddr],
    ) -> Result<(), CommandError> {
        let key = self.current_key()?;
        self.transmit(ctx, commit, targets, &key)?;
        let before = self.members.clone();
        let own = self.record.own_member;
        let live = self.live_mut()?;
        live.group
            .merge_pending_commit(ctx.backend)
            .map_err(internal)?;
        self.enter_epoch(ctx)?;
        self.report_membership(ctx, &before, &own)?;
        self.announce(ctx, &before, &key)
    }

    pub(crate) fn add_members<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        key_packages: &[&[u8]],
    ) -> Result<Vec<u8>, CommandError> {
        self.live()?;
        if !self.is_admin() {
            return Err(CommandError::NotAdmin);
        }
        if key_packages.is_empty() {
            return Err(CommandError::InvalidKeyPackage("none given".into()));
        }
        let bad = |e: &dyn std::fmt::Display| CommandError::InvalidKeyPackage(e.to_string());
        let mut names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        let mut valid = Vec::with_capacity(key_packages.len());
        for bytes in key_packages {
            let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| bad(&e))?;
            let MlsMessageBodyIn::KeyPackage(kp) = message.extract() else {
                return Err(CommandError::InvalidKeyPackage(
                    "it is not an MLS key package".into(),
                ));
            };
            let kp = kp
                .validate(ctx.backend.crypto(), ProtocolVersion::Mls10)
                .map_err(|e| bad(&e))?;
            if kp.ciphersuite() != self.record.suite.ciphersuite() {
                return Err(CommandError::SuiteMismatch(
                    format!("{:?}", kp.ciphersuite()),
                    self.record.suite.name(),
                ));
            }
            let info = check_leaf(kp.leaf_node()).map_err(|e| bad(&e))?;
            if names.iter().any(|n| names_clash(n, &info.name)) {
                return Err(CommandError::MemberNameTaken(info.name));
            }
            names.push(info.name);
            valid.push(kp);
        }
        let targets = self.others();
        let live = self.live_mut()?;
        // Adds carry no path (RFC 9420 §12.4: a commit of only Add proposals needs
        // none): the commit stays the size of the key packages whatever the size of
        // the channel. Our keys are refreshed by self-updates on their own schedule.
        let (commit, welcome, _) = live
            .group
            .add_members_without_update(ctx.backend, &live.signer, &valid)
            .map_err(internal)?;
        self.commit_and_merge(ctx, &commit, &targets)?;
        welcome.tls_serialize_detached().map_err(internal)
    }

    pub(crate) fn remove_member<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        member: &str,
    ) -> Result<(), CommandError> {
        self.live()?;
        if !self.is_admin() {
            return Err(CommandError::NotAdmin);
        }
        if self.members.iter().any(|m| m.is_self && m.name == member) {
            return Err(CommandError::IsSelf);
        }
        let target = super::find_other(&self.members, member)?;
        let leaf = LeafNodeIndex::new(target.leaf);
        // The removed member gets the commit too, so that it learns of its removal.
        let targets = self.others();
        let live = self.live_mut()?;
        let (commit, _, _) = live
            .group
            .remove_members(ctx.backend, &live.signer, &[leaf])
            .map_err(internal)?;
        self.commit_and_merge(ctx, &commit, &targets)
    }

    pub(crate) fn self_update<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), CommandError> {
        self.live()?;
        let targets = self.others();
        if self.is_admin() {
            let live = self.live_mut()?;
            let bundle = live
                .group
                .self_update(ctx.backend, &live.signer, LeafNodeParameters::default())
                .map_err(internal)?;
            self.commit_and_merge(ctx, bundle.commit(), &targets)
        } else {
            self.record.intent = Some(Intent::Update);
            self.propose_intent(ctx)
        }
    }

    pub(crate) fn leave<S: Storage>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), CommandError> {
        self.live()?;
        let targets = self.others();
        if targets.is_empty() {
            // Alone: nobody to tell.
            return self.close(ctx, None);
        }
        if self.is_admin() {
            // Hand the administrator role to the longest-standing other member.
            let successor = self
                .members
                .iter()
                .filter(|m| !m.is_self)
                .min_by_key(|m| m.leaf)
                .map(|m| m.signature_key.clone())
                .ok_or_else(|| internal("no successor"))?;
            let live = self.live_mut()?;
            let mut policy = policy_of(&live.group).ok_or_else(|| internal("no policy"))?;
            policy.admin = successor;
            let extensions = group_extensions(&policy)?;
            let (commit, _, _) = live
                .group
                .update_group_context_extensions(ctx.backend, extensions, &live.signer)
                .map_err(internal)?;
            self.commit_and_merge(ctx, &commit, &targets)?;
        }
        self.record.intent = Some(Intent::Leave);
        self.propose_intent(ctx)?;
        self.record.status = ChannelStatus::Leaving;
        self.save(ctx)
    }

    /// Sends the proposal for our outstanding intent (in the current epoch).
    pub(crate) fn propose_intent<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), CommandError> {
        let Some(intent) = self.record.intent else {
            return Ok(());
        };
        let key = self.current_key()?;
        let targets = self.others();
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let proposal = match intent {
            Intent::Update => {
                live.group
                    .propose_self_update(ctx.backend, &live.signer, LeafNodeParameters::default())
                    .map_err(internal)?
                    .0
            }
            Intent::Leave => live
                .group
                .leave_group(ctx.backend, &live.signer)
                .map_err(internal)?,
        };
        self.transmit(ctx, &proposal, &targets, &key)?;
        self.save(ctx)
    }

    /// After creating, joining or merging: refresh members, derive this epoch's
    /// envelope key, persist.
    pub(crate) fn enter_epoch<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), CommandError> {
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let epoch = live.group.epoch().as_u64();
        let secret = live
            .group
            .export_secret(
                ctx.backend.crypto(),
                derive::CHANNEL_EXPORTER_LABEL,
                &[],
                32,
            )
            .map_err(internal)?;
        let secret = zeroize::Zeroizing::new(secret);
        let secret: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(
            secret
                .as_slice()
                .try_into()
                .map_err(|_| internal("exporter length"))?,
        );
        let key = derive::envelope_key(&secret).map_err(internal)?;
        self.record.inbound.epoch_keys.retain(|k| k.epoch != epoch);
        self.record
            .inbound
            .epoch_keys
            .push(EpochKey { epoch, key: *key });
        self.sealed_tried.retain(|e| *e != epoch);
        let authenticator = live.group.epoch_authenticator().as_slice().to_vec();
        self.record
            .integrity
            .authenticators
            .retain(|a| a.epoch != epoch);
        self.record
            .integrity
            .authenticators
            .push(crate::store::EpochAuthenticator {
                epoch,
                authenticator,
            });
        let excess = self
            .record
            .integrity
            .authenticators
            .len()
            .saturating_sub(16);
        self.record.integrity.authenticators.drain(..excess);
        if self
            .record
            .integrity
            .expected
            .as_ref()
            .is_some_and(|e| e.epoch <= epoch)
        {
            self.record.integrity.expected = None;
        }
        let excess = self
            .record
            .inbound
            .epoch_keys
            .len()
            .saturating_sub(ANNOUNCEMENT_KEY_EPOCHS);
        self.record.inbound.epoch_keys.drain(..excess);
        self.members = members_of(&live.group, &self.record.signature_key);
        ctx.store()
            .save_members(&self.record.id, &self.members)
            .map_err(store_err)?;
        self.save(ctx)
    }

    pub(crate) fn report_membership<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        before: &[MemberRecord],
        by: &MemberId,
    ) -> Result<(), CommandError> {
        let by = before
            .iter()
            .find(|m| &m.member == by)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let channel = self.record.id;
        for m in &self.members {
            if !before.iter().any(|b| b.member == m.member) {
                ctx.event(Event::MemberAdded {
                    channel,
                    member: m.name.clone(),
                    by: by.clone(),
                });
                if let Some(alert) = self.check_key_change(m, &by) {
                    ctx.alert(channel, alert);
                }
            }
        }
        for b in before {
            if !self.members.iter().any(|m| m.member == b.member) {
                let state = self.senders.entry(b.member).or_insert_with(|| SenderState {
                    member: b.member,
                    name: b.name.clone(),
                    ..SenderState::default()
                });
                state.removed_at = Some(ctx.now);
                ctx.store()
                    .save_sender(&channel, state)
                    .map_err(store_err)?;
                ctx.event(Event::MemberRemoved {
                    channel,
                    member: b.name.clone(),
                    by: by.clone(),
                });
            }
        }
        Ok(())
    }

    /// We are no longer a member: erase the MLS state and keys, keep the history.
    pub(crate) fn close<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        by: Option<String>,
    ) -> Result<(), CommandError> {
        if let Some(mut live) = self.live.take() {
            live.group.delete(ctx.backend.storage()).map_err(internal)?;
            SignatureKeyPair::delete(
                ctx.backend.storage(),
                live.signer.public(),
                live.signer.signature_scheme(),
            )
            .map_err(internal)?;
        }
        self.record.status = ChannelStatus::Closed;
        self.record.intent = None;
        self.record.inbound.epoch_keys.clear();
        for (id, _) in self.pending.drain(..) {
            ctx.store()
                .remove_pending(&self.record.id, id)
                .map_err(store_err)?;
        }
        self.save(ctx)?;
        ctx.event(Event::Closed {
            channel: self.record.id,
            by: by.map_or(crate::event::Actor::Us, crate::event::Actor::Member),
        });
        Ok(())
    }
}
