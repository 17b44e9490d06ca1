//! The life and end of a channel: disappearing messages, an end date, burning.
//!
//! - **Disappearing messages**: the channel's policy (set by the administrator, in
//!   the group context, so every member applies the same one) says how long
//!   messages live. Each client erases older ones from its store; their blobs are
//!   sent with the same lifetime, so relays drop unread copies too.
//! - **End date**: after it, clients refuse to send, erase the channel and delete
//!   its mailboxes.
//! - **Burn**: a member's authenticated control message. Every member's client
//!   confirms with a signed receipt, then erases the channel (messages, keys, MLS
//!   state) and deletes its mailboxes; a member offline at the time does so when it
//!   next connects. The burner erases its history at once and its keys once every
//!   member has confirmed (or after a week). Only a current member, in the current
//!   epoch, can burn: not the relay, not a removed member.

use backchannel_proto::control::{BurnReceipt, Control};
use backchannel_proto::member::ChannelPolicy;
use backchannel_proto::payload::PayloadKind;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::signatures::Signer;

use crate::channel::{Channel, group_extensions, policy_of};
use crate::context::{CommandError, Ctx, Storage, internal, store_err};
use crate::derive::MemberId;
use crate::engine::{Engine, Timer};
use crate::event::{Actor, Alert, Erasure, Event};
use crate::store::BurnState;
use crate::{ChannelRef, Timestamp};

/// How long a burner waits for receipts before erasing its own keys anyway.
pub const BURN_WAIT_MS: u64 = 7 * 24 * 3600 * 1000;

impl<S: Storage> Engine<S> {
    /// Sets how long messages live in a channel we administer (0: forever).
    pub fn set_disappearing<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
        secs: u64,
    ) -> Result<(), CommandError> {
        let id = self.channel_id(channel)?;
        self.transact_on(now, &id, |ch, ctx| {
            ch.live()?;
            if !ch.is_admin() {
                return Err(CommandError::NotAdmin);
            }
            let mut policy = ch.policy().ok_or_else(|| internal("no policy"))?;
            policy.disappearing_secs = secs;
            ch.change_policy(ctx, policy)
        })
    }

    /// Burns a channel: every member erases it and confirms. Our history goes now;
    /// our keys go once every member has confirmed.
    pub fn burn<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
    ) -> Result<(), CommandError> {
        let id = self.channel_id(channel)?;
        self.transact_on(now, &id, |ch, ctx| ch.start_burn(ctx))
    }
}

impl Channel {
    pub(crate) fn policy(&self) -> Option<ChannelPolicy> {
        self.live.as_ref().and_then(|l| policy_of(&l.group))
    }

    /// Commits a new policy (administrator only).
    fn change_policy<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        policy: ChannelPolicy,
    ) -> Result<(), CommandError> {
        let targets = self.others();
        let extensions = group_extensions(&policy)?;
        let live = self.live_mut()?;
        let (commit, _, _) = live
            .group
            .update_group_context_extensions(ctx.backend, extensions, &live.signer)
            .map_err(internal)?;
        self.commit_and_merge(ctx, &commit, &targets)?;
        ctx.event(Event::PolicyChanged {
            channel: self.record.id,
            by: Actor::Us,
            disappearing_secs: policy.disappearing_secs,
            expires_at: (policy.expires_at > 0).then_some(Timestamp(policy.expires_at)),
        });
        Ok(())
    }

    /// Erases everything of the channel: history, sequence state, MLS state and keys.
    /// The engine forgets the channel when the input ends.
    pub(crate) fn erase<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        why: Erasure,
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let storage = ctx.backend.storage();
        if let Some(mut live) = self.live.take() {
            if let Some(leaf) = live.group.own_leaf_node() {
                storage
                    .delete_encryption_key_pair(leaf.encryption_key())
                    .map_err(internal)?;
            }
            live.group.delete(storage).map_err(internal)?;
            SignatureKeyPair::delete(
                storage,
                live.signer.public(),
                live.signer.signature_scheme(),
            )
            .map_err(internal)?;
        }
        // A key package of ours for this channel (a re-add we asked for) carries
        // its mailbox and a signature key: they go too.
        let scheme = self.record.suite.ciphersuite().signature_algorithm();
        for record in ctx.store().key_package_records().map_err(store_err)? {
            if record.mailbox == self.record.mailbox {
                SignatureKeyPair::delete(storage, &record.signature_key, scheme)
                    .map_err(internal)?;
                ctx.store()
                    .delete_key_package_record(&record.signature_key)
                    .map_err(store_err)?;
            }
        }
        // Whatever else OpenMLS filed under this group.
        let group_key = crate::channel::group_storage_key(&channel);
        ctx.store()
            .erase_mls_residue(&group_key)
            .map_err(store_err)?;
        ctx.store().delete_channel(&channel).map_err(store_err)?;
        self.pending.clear();
        self.senders.clear();
        self.members.clear();
        self.erased = true;
        ctx.event(Event::Erased {
            channel,
            name: self.record.name.clone(),
            why,
        });
        Ok(())
    }

    fn start_burn<S: Storage>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), CommandError> {
        self.live()?;
        let waiting: Vec<(MemberId, String)> = self
            .members
            .iter()
            .filter(|m| !m.is_self)
            .map(|m| (m.member, m.name.clone()))
            .collect();
        if waiting.is_empty() {
            return self.erase(ctx, Erasure::Burned { by: Actor::Us });
        }
        let id: [u8; 16] = ctx.backend.rand().random_array().map_err(internal)?;
        self.send_payload(ctx, PayloadKind::Control, Control::Burn { id }.encode())?;
        // Our history goes now; the keys stay until the receipts are in.
        ctx.store()
            .erase_messages_before(&self.record.id, Timestamp(u64::MAX))
            .map_err(store_err)?;
        self.oldest = None;
        self.record.burn = Some(BurnState {
            id,
            started_at: ctx.now,
            waiting,
            confirmed: Vec::new(),
        });
        self.save(ctx)?;
        self.report_burn(ctx);
        Ok(())
    }

    fn report_burn<S: Storage>(&self, ctx: &mut Ctx<'_, S>) {
        if let Some(burn) = &self.record.burn {
            ctx.event(Event::BurnProgress {
                channel: self.record.id,
                confirmed: burn.confirmed.clone(),
                waiting: burn.waiting.iter().map(|(_, n)| n.clone()).collect(),
            });
        }
    }

    /// A member burns the channel: confirm, then erase.
    pub(crate) fn receive_burn<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        sender: MemberId,
        id: [u8; 16],
        current_epoch: bool,
    ) -> Result<(), CommandError> {
        let by = self.name_of(&sender);
        let member_now = self.members.iter().any(|m| m.member == sender);
        if !member_now || !current_epoch {
            ctx.alert(
                self.record.id,
                Alert::RefusedChange {
                    by,
                    what: "burn the channel from a state it has left".into(),
                },
            );
            return Ok(());
        }
        if self.live().is_ok() {
            let member = self.record.own_member.0;
            let signed = BurnReceipt::signed_bytes(&self.record.id.0, &id, &member);
            let signature = match self.live.as_ref() {
                Some(live) => live
                    .signer
                    .sign(&signed)
                    .map_err(|e| internal(format!("{e:?}")))?,
                None => return Ok(()),
            };
            let receipt = Control::BurnReceipt(BurnReceipt {
                id,
                member,
                signature,
            });
            self.send_payload(ctx, PayloadKind::Control, receipt.encode())?;
        }
        self.erase(
            ctx,
            Erasure::Burned {
                by: Actor::Member(by),
            },
        )
    }

    /// A member confirms our burn.
    pub(crate) fn receive_burn_receipt<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        sender: MemberId,
        receipt: BurnReceipt,
    ) -> Result<(), CommandError> {
        let Some(burn) = self.record.burn.as_mut() else {
            return Ok(());
        };
        let author = self.members.iter().find(|m| m.member == sender);
        let signed = BurnReceipt::signed_bytes(&self.record.id.0, &receipt.id, &receipt.member);
        let valid = receipt.id == burn.id
            && receipt.member == sender.0
            && author.is_some_and(|a| {
                ctx.backend
                    .crypto()
                    .verify_signature(
                        SignatureScheme::ED25519,
                        &signed,
                        &a.signature_key,
                        &receipt.signature,
                    )
                    .is_ok()
            });
        if !valid {
            return Ok(());
        }
        if let Some(pos) = burn.waiting.iter().position(|(m, _)| *m == sender) {
            let (_, name) = burn.waiting.remove(pos);
            burn.confirmed.push(name);
        }
        let done = burn.waiting.is_empty();
        self.save(ctx)?;
        self.report_burn(ctx);
        if done {
            self.erase(ctx, Erasure::Burned { by: Actor::Us })?;
        }
        Ok(())
    }

    /// When this channel next needs the clock: its end, its oldest message's
    /// disappearance, the end of a burn's wait.
    pub(crate) fn lifecycle_deadline(&self) -> Option<(Timestamp, Timer)> {
        let policy = self.policy();
        let end = policy
            .as_ref()
            .filter(|p| p.expires_at > 0)
            .map(|p| (Timestamp(p.expires_at), Timer::ChannelEnd));
        let disappear = policy
            .as_ref()
            .filter(|p| p.disappearing_secs > 0)
            .and_then(|p| {
                self.oldest
                    .map(|t| t.plus_ms(p.disappearing_secs.saturating_mul(1000)))
                    .map(|t| (t, Timer::Disappearing))
            });
        let burn = self
            .record
            .burn
            .as_ref()
            .map(|b| (b.started_at.plus_ms(BURN_WAIT_MS), Timer::BurnWait));
        [end, disappear, burn]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
    }

    /// Applies the end date, disappearing messages and the burn wait.
    pub(crate) fn lifecycle_timeout<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), CommandError> {
        if self.erased {
            return Ok(());
        }
        if let Some(burn) = &self.record.burn
            && ctx.now >= burn.started_at.plus_ms(BURN_WAIT_MS)
        {
            return self.erase(ctx, Erasure::Burned { by: Actor::Us });
        }
        let Some(policy) = self.policy() else {
            return Ok(());
        };
        if policy.expires_at > 0 && ctx.now.0 >= policy.expires_at {
            return self.erase(ctx, Erasure::Expired);
        }
        if policy.disappearing_secs > 0 {
            let cutoff = Timestamp(
                ctx.now
                    .0
                    .saturating_sub(policy.disappearing_secs.saturating_mul(1000)),
            );
            if self.oldest.is_some_and(|t| t <= cutoff) {
                let erased = ctx
                    .store()
                    .erase_messages_before(&self.record.id, Timestamp(cutoff.0.saturating_add(1)))
                    .map_err(store_err)?;
                self.oldest = ctx
                    .store()
                    .oldest_message_at(&self.record.id)
                    .map_err(store_err)?;
                if erased > 0 {
                    ctx.scrub.set(true);
                }
            }
        }
        Ok(())
    }

    /// Refuses to send in a channel past its end or being burned.
    pub(crate) fn check_sendable<S: Storage>(&self, ctx: &Ctx<'_, S>) -> Result<(), CommandError> {
        if self.record.burn.is_some() {
            return Err(CommandError::Burning);
        }
        if self
            .policy()
            .is_some_and(|p| p.expires_at > 0 && ctx.now.0 >= p.expires_at)
        {
            return Err(CommandError::Expired);
        }
        Ok(())
    }

    /// The relay lifetime of a text message's blobs: the disappearing timer.
    pub(crate) fn text_ttl_secs(&self) -> u32 {
        self.policy()
            .map(|p| p.disappearing_secs.min(u64::from(u32::MAX)) as u32)
            .unwrap_or(0)
    }
}
