//! Receiving: opening blobs, reassembling, applying MLS messages and commits, and
//! what waits for a later epoch.

use backchannel_proto::envelope::{BLOB_LEN, ContentKind, Fragment};
use backchannel_proto::payload::{Payload, PayloadKind};
use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;
use tls_codec::Deserialize as _;

use crate::Timestamp;
use crate::context::{CommandError, Ctx, Storage, internal, store_err};
use crate::derive::{MemberId, chain_hash};
use crate::event::{Alert, Event, ReceivedMessage};
use crate::rules::{check_commit, check_leaf, credential_member, renaming};
use crate::seal;
use crate::sequence::Arrival;
use crate::store::{
    ChannelStatus, EpochKey, Intent, MessageKind, MessageRecord, PendingItem, SenderState,
};

use super::{Channel, ENVELOPE_KEY_EPOCHS, SEEN_TARGETED};

impl Channel {
    // ----- Receiving --------------------------------------------------------------

    /// The fragment inside a blob, if one of this channel's keys opens it, and
    /// whether that key is within the content window ([`ENVELOPE_KEY_EPOCHS`]).
    pub(crate) fn open(&self, blob: &[u8]) -> Option<(Vec<u8>, bool)> {
        self.open_with(self.record.inbound.epoch_keys.iter().rev(), blob)
    }

    pub(crate) fn open_with<'k>(
        &self,
        mut keys: impl Iterator<Item = &'k EpochKey>,
        blob: &[u8],
    ) -> Option<(Vec<u8>, bool)> {
        let newest = self.record.inbound.epoch_keys.last().map(|k| k.epoch)?;
        keys.find_map(|k| {
            seal::open(&k.key, blob).map(|f| {
                let recent = k.epoch.saturating_add(ENVELOPE_KEY_EPOCHS as u64) > newest;
                (f, recent)
            })
        })
    }

    /// A fragment opened under a key `recent` or not: only announcements are read
    /// under keys older than the content window.
    pub(crate) fn receive_opened<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        fragment: Vec<u8>,
        recent: bool,
    ) -> Result<(), CommandError> {
        let announcement =
            Fragment::decode(&fragment).is_ok_and(|f| f.kind == ContentKind::Announcement);
        if recent || announcement {
            return self.receive_fragment(ctx, fragment);
        }
        // Too old to read: a replay, or a removed member using keys it kept.
        ctx.alert(
            self.record.id,
            Alert::Replayed {
                from: None,
                seq: None,
            },
        );
        Ok(())
    }

    pub(crate) fn receive_blob<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        blob: Vec<u8>,
        elsewhere: bool,
    ) -> Result<(), CommandError> {
        if self.live.is_none() {
            return Ok(());
        }
        if blob.len() != BLOB_LEN {
            ctx.alert(
                self.record.id,
                Alert::Undecryptable {
                    count: 1,
                    detail: format!("a record of {} bytes instead of {BLOB_LEN}", blob.len()),
                },
            );
            return Ok(());
        }
        match self.open(&blob) {
            Some((fragment, recent)) => self.receive_opened(ctx, fragment, recent),
            // It belongs to another of our channels: the relay moved it here.
            None if elsewhere => {
                ctx.alert(self.record.id, Alert::Moved);
                Ok(())
            }
            None => self.park(
                ctx,
                PendingItem::Sealed {
                    received_at: ctx.now,
                    blob,
                },
            ),
        }
    }

    pub(crate) fn receive_fragment<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        bytes: Vec<u8>,
    ) -> Result<(), CommandError> {
        let fragment = match Fragment::decode(&bytes) {
            Ok(f) => f,
            Err(e) => {
                ctx.alert(
                    self.record.id,
                    Alert::Undecryptable {
                        count: 1,
                        detail: format!("malformed envelope: {e}"),
                    },
                );
                return Ok(());
            }
        };
        if fragment.count == 1 {
            return self.receive_content(ctx, fragment.kind, &fragment.chunk);
        }
        if self
            .record
            .inbound
            .recent_fragmented
            .contains(&fragment.message_id)
        {
            ctx.alert(
                self.record.id,
                Alert::Replayed {
                    from: None,
                    seq: None,
                },
            );
            return Ok(());
        }
        let mut siblings = vec![fragment.clone()];
        let mut ids = Vec::new();
        for (id, item) in &self.pending {
            if let PendingItem::Fragment {
                fragment: other, ..
            } = item
            {
                let Ok(other) = Fragment::decode(other) else {
                    continue;
                };
                if other.message_id == fragment.message_id {
                    if other.index == fragment.index {
                        ctx.alert(
                            self.record.id,
                            Alert::Replayed {
                                from: None,
                                seq: None,
                            },
                        );
                        return Ok(());
                    }
                    siblings.push(other);
                    ids.push(*id);
                }
            }
        }
        if siblings.len() < usize::from(fragment.count) {
            return self.park(
                ctx,
                PendingItem::Fragment {
                    received_at: ctx.now,
                    fragment: bytes,
                },
            );
        }
        for id in ids {
            self.unpark(ctx, id)?;
        }
        self.record
            .inbound
            .recent_fragmented
            .push(fragment.message_id);
        let excess = self
            .record
            .inbound
            .recent_fragmented
            .len()
            .saturating_sub(1024);
        self.record.inbound.recent_fragmented.drain(..excess);
        match Fragment::join(&siblings) {
            Ok(message) => self.receive_content(ctx, fragment.kind, &message),
            Err(e) => {
                ctx.alert(
                    self.record.id,
                    Alert::Undecryptable {
                        count: siblings.len(),
                        detail: format!("inconsistent fragments: {e}"),
                    },
                );
                Ok(())
            }
        }
    }

    /// A whole envelope content arrived.
    pub(crate) fn receive_content<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        kind: ContentKind,
        bytes: &[u8],
    ) -> Result<(), CommandError> {
        match kind {
            ContentKind::Mls => self.receive_mls(ctx, bytes),
            ContentKind::Announcement => self.receive_announcement(ctx, bytes),
            ContentKind::Rejoin => self.receive_rejoin(ctx, bytes),
            ContentKind::Welcome => self.receive_readd(ctx, bytes),
            _ => {
                ctx.alert(
                    self.record.id,
                    Alert::Undecryptable {
                        count: 1,
                        detail: "an unknown kind of content".into(),
                    },
                );
                Ok(())
            }
        }
    }

    pub(crate) fn park<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        item: PendingItem,
    ) -> Result<(), CommandError> {
        // Full: what no key opens yet (anyone holding the mailbox's address can
        // write such blobs) makes room first, the oldest of it; what a key of ours
        // opened is only ever pushed out by more of its own kind.
        while self.pending.len() >= ctx.config.max_pending {
            let unopened = |p: &PendingItem| matches!(p, PendingItem::Sealed { .. });
            let (victim, detail) = match self.pending.iter().position(|(_, p)| unopened(p)) {
                Some(i) => (i, "the oldest unreadable one was dropped"),
                None if unopened(&item) => {
                    ctx.alert(
                        self.record.id,
                        Alert::Undecryptable {
                            count: 1,
                            detail: "too many messages were waiting; an unreadable one was \
                                     dropped"
                                .into(),
                        },
                    );
                    return Ok(());
                }
                None => (0, "the oldest was dropped"),
            };
            let (id, _) = self.pending.remove(victim);
            ctx.store()
                .remove_pending(&self.record.id, id)
                .map_err(store_err)?;
            ctx.alert(
                self.record.id,
                Alert::Undecryptable {
                    count: 1,
                    detail: format!("too many messages were waiting; {detail}"),
                },
            );
        }
        let id = ctx
            .store()
            .push_pending(&self.record.id, &item)
            .map_err(store_err)?;
        self.pending.push((id, item));
        Ok(())
    }

    pub(crate) fn unpark<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        id: u64,
    ) -> Result<(), CommandError> {
        self.pending.retain(|(i, _)| *i != id);
        ctx.store()
            .remove_pending(&self.record.id, id)
            .map_err(store_err)
    }

    /// Retries waiting inputs until none makes progress. A parked sealed blob is
    /// tried only with envelope keys it has not met yet, and each pass collects every
    /// input that became ready before processing them, so the cost per input stays
    /// linear in what is parked, however much junk a mailbox holds.
    pub(crate) fn drain_pending<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), CommandError> {
        loop {
            let Some(live) = self.live.as_ref() else {
                return Ok(());
            };
            let epoch = live.group.epoch().as_u64();
            let new_keys: Vec<&EpochKey> = self
                .record
                .inbound
                .epoch_keys
                .iter()
                .rev()
                .filter(|k| !self.sealed_tried.contains(&k.epoch))
                .collect();
            let ready: Vec<(u64, Ready)> = self
                .pending
                .iter()
                .filter_map(|(id, item)| match item {
                    PendingItem::Sealed { blob, .. } if !new_keys.is_empty() => self
                        .open_with(new_keys.iter().copied(), blob)
                        .map(|(f, recent)| (*id, Ready::Fragment(f, recent))),
                    PendingItem::Message {
                        epoch: e, message, ..
                    } if *e <= epoch => Some((*id, Ready::Message(message.clone()))),
                    _ => None,
                })
                .collect();
            self.sealed_tried = self
                .record
                .inbound
                .epoch_keys
                .iter()
                .map(|k| k.epoch)
                .collect();
            if ready.is_empty() {
                return Ok(());
            }
            for (id, ready) in ready {
                // An input processed before it may have closed the channel or
                // consumed it.
                if self.live.is_none() || !self.pending.iter().any(|(i, _)| *i == id) {
                    continue;
                }
                self.unpark(ctx, id)?;
                match ready {
                    Ready::Fragment(f, recent) => self.receive_opened(ctx, f, recent)?,
                    Ready::Message(m) => self.receive_mls(ctx, &m)?,
                }
            }
        }
    }

    pub(crate) fn receive_mls<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        bytes: &[u8],
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let undecryptable = |detail: String| Alert::Undecryptable { count: 1, detail };
        let message = match MlsMessageIn::tls_deserialize_exact(bytes) {
            Ok(m) => m,
            Err(e) => {
                ctx.alert(
                    channel,
                    undecryptable(format!("malformed MLS message: {e:?}")),
                );
                return Ok(());
            }
        };
        if message.wire_format() == WireFormat::TargetedMessage {
            return match message.extract() {
                MlsMessageBodyIn::TargetedMessage(targeted) => {
                    self.receive_targeted(ctx, bytes, targeted)
                }
                _ => Ok(()),
            };
        }
        let protocol = match message.try_into_protocol_message() {
            Ok(p) if p.wire_format() == WireFormat::PrivateMessage => p,
            _ => {
                ctx.alert(
                    channel,
                    undecryptable("not an encrypted group message".into()),
                );
                return Ok(());
            }
        };
        if protocol.group_id().as_slice() != channel.0 {
            ctx.alert(
                channel,
                undecryptable("a message of another channel".into()),
            );
            return Ok(());
        }
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let epoch = protocol.epoch().as_u64();
        if epoch > live.group.epoch().as_u64() {
            return self.park(
                ctx,
                PendingItem::Message {
                    received_at: ctx.now,
                    epoch,
                    message: bytes.to_vec(),
                },
            );
        }
        let processed = match live.group.process_message(ctx.backend, protocol) {
            Ok(p) => p,
            Err(e) => {
                let alert = classify_failure(&e, epoch < live.group.epoch().as_u64());
                ctx.alert(channel, alert);
                return Ok(());
            }
        };
        let sender_leaf = match processed.sender() {
            Sender::Member(leaf) => *leaf,
            _ => {
                ctx.alert(
                    channel,
                    undecryptable("a message from outside the channel".into()),
                );
                return Ok(());
            }
        };
        if Some(sender_leaf) == self.live.as_ref().map(|l| l.group.own_leaf_index()) {
            // Our own message, sent back to us.
            ctx.alert(channel, Alert::Reflected);
            return Ok(());
        }
        let Some(sender) = credential_member(processed.credential()) else {
            ctx.alert(
                channel,
                undecryptable("a sender without a Backchannel identity".into()),
            );
            return Ok(());
        };
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                // Past epochs' keys are kept for late messages; a member removed since
                // may not use them to speak after the removal.
                let member_now = self.members.iter().any(|m| m.member == sender);
                let removed_recently = self
                    .senders
                    .get(&sender)
                    .and_then(|s| s.removed_at)
                    .is_some_and(|t| ctx.now <= t.plus_ms(ctx.config.gap_grace_ms));
                if !member_now && !removed_recently {
                    let from = self.name_of(&sender);
                    ctx.alert(channel, Alert::FromRemoved { from });
                    return Ok(());
                }
                let current = Some(epoch) == self.live.as_ref().map(|l| l.group.epoch().as_u64());
                self.receive_payload(ctx, sender, &app.into_bytes(), current)
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                self.receive_proposal(ctx, sender, sender_leaf, *proposal)
            }
            ProcessedMessageContent::StagedCommitMessage(commit) => {
                self.receive_commit(ctx, sender, *commit)
            }
            _ => {
                ctx.alert(
                    channel,
                    undecryptable("an unsupported kind of message".into()),
                );
                Ok(())
            }
        }
    }

    /// A message sealed to us alone: only introduction steps travel so.
    pub(crate) fn receive_targeted<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        bytes: &[u8],
        targeted: openmls::targeted_messages::TargetedMessageIn,
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let undecryptable = |detail: &str| Alert::Undecryptable {
            count: 1,
            detail: detail.to_owned(),
        };
        if targeted.group_id().as_slice() != channel.0 {
            ctx.alert(channel, undecryptable("a message of another channel"));
            return Ok(());
        }
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let epoch = targeted.epoch().as_u64();
        let current = live.group.epoch().as_u64();
        if epoch > current {
            return self.park(
                ctx,
                PendingItem::Message {
                    received_at: ctx.now,
                    epoch,
                    message: bytes.to_vec(),
                },
            );
        }
        if epoch < current {
            // Its key is the recipient's leaf key of that epoch, gone since.
            ctx.alert(
                channel,
                undecryptable(
                    "a message sealed to us alone in an earlier epoch (an introduction \
                     step); the introduction has to be made again",
                ),
            );
            return Ok(());
        }
        let processed = match live.group.process_targeted_message(ctx.backend, &targeted) {
            Ok(p) => p,
            Err(e) => {
                ctx.alert(
                    channel,
                    undecryptable(&format!(
                        "a message sealed to us alone that does not open: {e}"
                    )),
                );
                return Ok(());
            }
        };
        let sender = live
            .group
            .member(processed.sender_leaf_index())
            .and_then(credential_member);
        let Some(sender) = sender else {
            ctx.alert(
                channel,
                undecryptable("a sender without a Backchannel identity"),
            );
            return Ok(());
        };
        let from = self.name_of(&sender);
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(bytes).into();
        if self.record.inbound.seen_targeted.contains(&digest) {
            ctx.alert(
                channel,
                Alert::Replayed {
                    from: Some(from),
                    seq: None,
                },
            );
            return Ok(());
        }
        self.record.inbound.seen_targeted.push(digest);
        let excess = self
            .record
            .inbound
            .seen_targeted
            .len()
            .saturating_sub(SEEN_TARGETED);
        self.record.inbound.seen_targeted.drain(..excess);
        self.save(ctx)?;
        let control = processed.application_data();
        match backchannel_proto::control::Control::decode(control) {
            Ok(backchannel_proto::control::Control::Intro(intro))
                if intro.to == self.record.own_member.0 =>
            {
                // Kept in the same transaction as the blob's receipt: carried out
                // once it commits, and again after a crash if it was not.
                let record = crate::introduction::IntroStepRecord {
                    channel,
                    from: sender,
                    from_name: from,
                    control: control.to_vec(),
                };
                let row = ctx.store().push_intro_step(&record).map_err(store_err)?;
                ctx.steps.push_back(crate::context::StepIn {
                    row,
                    channel,
                    from: sender,
                    from_name: record.from_name,
                    intro,
                });
            }
            _ => ctx.alert(
                channel,
                undecryptable(&format!("a malformed message sealed to us alone by {from}")),
            ),
        }
        Ok(())
    }

    pub(crate) fn receive_payload<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        sender: MemberId,
        bytes: &[u8],
        current_epoch: bool,
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let from = self.name_of(&sender);
        let (payload, unpadded) = match Payload::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                ctx.alert(
                    channel,
                    Alert::Undecryptable {
                        count: 1,
                        detail: format!("a malformed message from {from}: {e}"),
                    },
                );
                return Ok(());
            }
        };
        let hash = chain_hash(bytes.get(..unpadded).unwrap_or_default());
        let backend = ctx.backend;
        let store = backend.store();
        if let Some(existing) = store
            .message(&channel, &sender, payload.seq)
            .map_err(store_err)?
        {
            let alert = if existing.hash == hash {
                Alert::Replayed {
                    from: Some(from),
                    seq: Some(payload.seq),
                }
            } else {
                Alert::Conflicting {
                    from,
                    seq: payload.seq,
                }
            };
            ctx.alert(channel, alert);
            return Ok(());
        }
        let state = self.senders.entry(sender).or_insert_with(|| SenderState {
            member: sender,
            ..SenderState::default()
        });
        state.name = from.clone();
        let last = state.contiguous.max(state.announced);
        if payload.seq > last.saturating_add(crate::rules::MAX_SEQ_JUMP) {
            ctx.alert(
                channel,
                Alert::SequenceJump {
                    from,
                    seq: payload.seq,
                    last,
                },
            );
            return Ok(());
        }
        let arrival = state.record(payload.seq, ctx.now);
        if arrival == Arrival::Duplicate {
            // The state says we have it but the store does not: the store is the truth.
            return Err(internal("sequence state and history disagree"));
        }
        store.save_sender(&channel, state).map_err(store_err)?;

        // The chain: this message must follow the previous one, and the next one (if
        // it came first) must follow this one.
        let chained_back = if payload.seq == 1 {
            Some(payload.prev_hash == [0; 32])
        } else {
            store
                .message(&channel, &sender, payload.seq - 1)
                .map_err(store_err)?
                .map(|prev| prev.hash == payload.prev_hash)
        };
        let chained_forward = store
            .message(&channel, &sender, payload.seq + 1)
            .map_err(store_err)?
            .map(|next| next.prev_hash == hash);
        if chained_back == Some(false) {
            ctx.alert(
                channel,
                Alert::BrokenChain {
                    from: from.clone(),
                    seq: payload.seq,
                },
            );
        }
        if chained_forward == Some(false) {
            ctx.alert(
                channel,
                Alert::BrokenChain {
                    from: from.clone(),
                    seq: payload.seq + 1,
                },
            );
        }
        let kind = match payload.kind {
            PayloadKind::Control => MessageKind::Control,
            PayloadKind::Attachment => MessageKind::Attachment,
            _ => MessageKind::Text,
        };
        let record = MessageRecord {
            position: 0,
            channel,
            sender,
            sender_name: from.clone(),
            seq: payload.seq,
            kind,
            sent_at: Timestamp(payload.sent_at),
            received_at: ctx.now,
            body: payload.body,
            prev_hash: payload.prev_hash,
            hash,
            late: arrival == Arrival::Late,
        };
        store.append_message(&record).map_err(store_err)?;
        let heads = payload.heads;
        if kind == MessageKind::Text {
            ctx.event(Event::Message(ReceivedMessage {
                channel,
                member: sender,
                from,
                seq: record.seq,
                text: String::from_utf8_lossy(&record.body).into_owned(),
                sent_at: record.sent_at,
                received_at: record.received_at,
                late: record.late,
            }));
        }
        if self.oldest.is_none() {
            self.oldest = Some(record.received_at);
        }
        self.receive_heads(ctx, sender, record.seq, &heads)?;
        if kind == MessageKind::Control {
            self.receive_control(ctx, sender, record.seq, &record.body, current_epoch)?;
        }
        Ok(())
    }

    pub(crate) fn receive_proposal<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        sender: MemberId,
        sender_leaf: LeafNodeIndex,
        proposal: QueuedProposal,
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let by = self.name_of(&sender);
        let refused = match proposal.proposal() {
            Proposal::Update(update) => match check_leaf(update.leaf_node()) {
                Err(e) => Some(format!("update their keys with an invalid leaf ({e})")),
                Ok(info) => {
                    let current = self.members.iter().find(|m| m.leaf == sender_leaf.u32());
                    renaming(current, &info.name)
                }
            },
            Proposal::Remove(remove) if remove.removed() == sender_leaf => None,
            Proposal::Remove(_) => Some("remove another member".to_owned()),
            Proposal::Add(_) => Some("add a member".to_owned()),
            _ => Some("make an unsupported change to the channel".to_owned()),
        };
        if let Some(what) = refused {
            ctx.alert(channel, Alert::RefusedChange { by, what });
            return Ok(());
        }
        // The budget is the administrator's to keep: it alone commits proposals.
        // Members keep every valid one, or a commit the administrator made of a
        // proposal a member counted differently (it read in a burst what arrived
        // over hours) would be missing one and fork that member off.
        let committing = self.is_admin() && self.record.status == ChannelStatus::Active;
        if committing && let Err(first) = self.spend(sender, false, ctx.now) {
            self.save(ctx)?;
            if first {
                ctx.alert(
                    channel,
                    Alert::RefusedChange {
                        by,
                        what: format!(
                            "change their keys or membership more than {} times in an hour",
                            crate::rules::PROPOSALS_PER_WINDOW
                        ),
                    },
                );
            }
            return Ok(());
        }
        let is_update = matches!(proposal.proposal(), Proposal::Update(_));
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        live.group
            .store_pending_proposal(ctx.backend.storage(), proposal)
            .map_err(internal)?;
        if !committing {
            return Ok(());
        }
        // The administrator carries out members' proposals at once.
        let targets = self.others();
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let (commit, _, _) = live
            .group
            .commit_to_pending_proposals(ctx.backend, &live.signer)
            .map_err(internal)?;
        self.commit_and_merge(ctx, &commit, &targets)?;
        if is_update {
            ctx.event(Event::KeysUpdated {
                channel,
                member: self.name_of(&sender),
            });
        }
        Ok(())
    }

    pub(crate) fn receive_commit<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        committer: MemberId,
        commit: StagedCommit,
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let by = self.name_of(&committer);
        let admin = self.members.iter().find(|m| m.admin).map(|m| m.member);
        if admin != Some(committer) {
            ctx.alert(
                channel,
                Alert::RefusedChange {
                    by,
                    what: "change the channel although only its administrator may".into(),
                },
            );
            return Ok(());
        }
        if let Err(what) = check_commit(&commit, &self.members, &committer) {
            ctx.alert(channel, Alert::RefusedChange { by, what });
            return Ok(());
        }
        let mut updated: Vec<MemberId> = commit
            .update_proposals()
            .filter_map(|u| credential_member(u.update_proposal().leaf_node().credential()))
            .collect();
        if commit.queued_proposals().next().is_none() && commit.update_path_leaf_node().is_some() {
            // A commit with nothing but a path: the committer's own key update.
            updated.push(committer);
        }
        let self_removed = commit.self_removed();
        let before = self.members.clone();
        let previous_key = self.current_key()?;
        let old_policy = self.policy();
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        live.group
            .merge_staged_commit(ctx.backend, commit)
            .map_err(internal)?;
        if self_removed {
            self.members.retain(|m| !m.is_self);
            return self.close(ctx, Some(by));
        }
        self.enter_epoch(ctx)?;
        self.report_membership(ctx, &before, &committer)?;
        self.announce(ctx, &before, &previous_key)?;
        if let Some(policy) = self.policy()
            && old_policy.as_ref().is_some_and(|old| {
                old.disappearing_secs != policy.disappearing_secs
                    || old.expires_at != policy.expires_at
            })
        {
            ctx.event(Event::PolicyChanged {
                channel,
                by: crate::event::Actor::Member(by.clone()),
                disappearing_secs: policy.disappearing_secs,
                expires_at: (policy.expires_at > 0).then_some(Timestamp(policy.expires_at)),
            });
        }
        for member in updated {
            if member == self.record.own_member && self.record.intent == Some(Intent::Update) {
                self.record.intent = None;
                self.save(ctx)?;
            }
            ctx.event(Event::KeysUpdated {
                channel,
                member: self.name_of(&member),
            });
        }
        // Anything we asked for that this commit did not carry out is asked again.
        self.propose_intent(ctx)
    }

    pub(crate) fn expire<S: Storage>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), CommandError> {
        let channel = self.record.id;
        if let Some(expected) = self.record.integrity.expected.clone()
            && ctx.now >= expected.since.plus_ms(ctx.config.gap_grace_ms)
        {
            self.record.integrity.expected = None;
            self.save(ctx)?;
            ctx.alert(
                channel,
                Alert::UpdateWithheld {
                    by: expected.by,
                    epoch: expected.epoch,
                },
            );
        }
        for state in self.senders.values_mut() {
            if let Some((missing, claim)) = state.expire(ctx.now, ctx.config.gap_grace_ms) {
                ctx.store()
                    .save_sender(&channel, state)
                    .map_err(store_err)?;
                ctx.event(Event::Alert {
                    channel,
                    alert: Alert::Withheld {
                        from: state.name.clone(),
                        missing,
                        reported_by: claim.map(|c| c.name),
                    },
                });
            }
        }
        let deadline = ctx.now.0.saturating_sub(ctx.config.pending_grace_ms);
        let expired: Vec<(u64, PendingItem)> = self
            .pending
            .iter()
            .filter(|(_, item)| item.received_at().0 <= deadline)
            .cloned()
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        let mut sealed = 0;
        let mut fragments = 0;
        let mut future = 0;
        for (id, item) in &expired {
            self.unpark(ctx, *id)?;
            match item {
                PendingItem::Sealed { .. } => sealed += 1,
                PendingItem::Fragment { .. } => fragments += 1,
                PendingItem::Message { .. } => future += 1,
            }
        }
        let mut details = Vec::new();
        if sealed > 0 {
            details.push(format!("{sealed} that no key of this channel opens"));
        }
        if fragments > 0 {
            details.push(format!(
                "{fragments} pieces of messages whose other pieces never came"
            ));
        }
        if future > 0 {
            details.push(format!("{future} from a channel update that never arrived"));
        }
        ctx.alert(
            channel,
            Alert::Undecryptable {
                count: expired.len(),
                detail: details.join(", "),
            },
        );
        Ok(())
    }
}

enum Ready {
    Fragment(Vec<u8>, bool),
    Message(Vec<u8>),
}

/// Turns an OpenMLS processing failure into what it means for the person.
pub(crate) fn classify_failure<E: std::fmt::Debug>(
    error: &ProcessMessageError<E>,
    old_epoch: bool,
) -> Alert {
    use ProcessMessageError as P;
    use ValidationError as V;
    match error {
        P::ValidationError(V::UnableToDecrypt(MessageDecryptionError::SecretTreeError(
            SecretTreeError::SecretReuseError | SecretTreeError::TooDistantInThePast,
        ))) => Alert::Replayed {
            from: None,
            seq: None,
        },
        P::ValidationError(V::UnableToDecrypt(MessageDecryptionError::SecretTreeError(
            SecretTreeError::RatchetTypeError,
        ))) => Alert::Reflected,
        P::ValidationError(V::WrongEpoch) | P::ValidationError(V::NoPastEpochData) if old_epoch => {
            Alert::Replayed {
                from: None,
                seq: None,
            }
        }
        other => Alert::Undecryptable {
            count: 1,
            detail: format!("{other:?}"),
        },
    }
}
