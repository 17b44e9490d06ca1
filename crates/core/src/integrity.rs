//! Group-wide integrity: what one member cannot see alone.
//!
//! - **Heads**: every payload carries how far its sender has received from the other
//!   senders, so a message withheld from some members shows as a gap at those members
//!   even if its sender says nothing more.
//! - **Status** (a control message, periodically and on demand): a member's epoch,
//!   authenticator, and for every sender how far it has received with the chain hash
//!   there. A differing hash means a sender showed different members different
//!   messages; a report about our own messages beyond what we have sent means this
//!   profile was restored from an old copy or cloned.
//! - **Announcements**: after every epoch change each member announces the new epoch's
//!   authenticator, sealed under the previous epoch's key and signed. A member in the
//!   same epoch with another authenticator has been shown a different history (a
//!   fork); a member still behind knows an update is being withheld from it.
//! - **Re-adding**: a member whose view forked from the administrator's asks, under the
//!   last common epoch's key, to be re-added; the administrator commits the removal of
//!   the forked leaf and the addition of a fresh one, and sends the welcome back the
//!   same way.

use backchannel_proto::control::{Control, Status, StatusEntry};
use backchannel_proto::envelope::ContentKind;
use backchannel_proto::integrity::{Announcement, Rejoin};
use backchannel_proto::member::MemberInfo;
use backchannel_proto::payload::Head;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::signatures::Signer;
use tls_codec::{Deserialize as _, Serialize as _};

use crate::channel::{Channel, Live, credential_for, leaf_extensions, new_signer};
use crate::context::{CommandError, Ctx, Storage, internal, store_err};
use crate::derive::{MemberId, member_id};
use crate::event::{Alert, Event};
use crate::mls;
use crate::rules::{MAX_SEQ_JUMP, PROPOSALS_PER_WINDOW, check_leaf};
use crate::store::{Claim, ExpectedEpoch, KeyPackageRecord, MemberRecord, PeerView, Spent};

/// Most heads a payload carries.
pub(crate) const MAX_HEADS: usize = 32;

/// The window members' budgets of proposals and re-add requests refill over.
/// (Per epoch they are one each by construction: the administrator commits the
/// first at once, which ends the epoch; the window bounds the churn a member can
/// cause by asking again in every new epoch.)
pub(crate) const BUDGET_WINDOW_MS: u64 = 60 * 60 * 1000;

/// Re-add requests one member may send per window.
pub(crate) const REJOINS_PER_WINDOW: u32 = 3;

/// How many members each member announces a new epoch to.
pub(crate) const ANNOUNCE_TO: usize = 2;

/// Status is sent with a message at most this often (milliseconds).
pub(crate) const STATUS_INTERVAL_MS: u64 = 60 * 60 * 1000;

/// A status request is answered at most this often (milliseconds).
const STATUS_REPLY_INTERVAL_MS: u64 = 30 * 1000;

impl Channel {
    /// The member with this short identifier, among present and past senders.
    fn resolve(&self, short: &[u8; 8]) -> Option<(MemberId, String)> {
        self.members
            .iter()
            .map(|m| (m.member, m.name.clone()))
            .chain(self.senders.values().map(|s| (s.member, s.name.clone())))
            .find(|(id, _)| &id.short() == short)
    }

    fn epoch(&self) -> u64 {
        self.live
            .as_ref()
            .map(|l| l.group.epoch().as_u64())
            .unwrap_or(0)
    }

    fn authenticator_at(&self, epoch: u64) -> Option<&[u8]> {
        self.record
            .integrity
            .authenticators
            .iter()
            .find(|a| a.epoch == epoch)
            .map(|a| a.authenticator.as_slice())
    }

    fn key_at(&self, epoch: u64) -> Option<[u8; 32]> {
        self.record
            .inbound
            .epoch_keys
            .iter()
            .find(|k| k.epoch == epoch)
            .map(|k| k.key)
    }

    fn note_peer(
        &mut self,
        member: MemberId,
        name: String,
        epoch: u64,
        agrees: bool,
        now: crate::Timestamp,
    ) {
        self.record.integrity.peers.retain(|p| p.member != member);
        self.record.integrity.peers.push(PeerView {
            member,
            name,
            epoch,
            agrees,
            at: now,
        });
    }

    fn sign(&self, bytes: &[u8]) -> Result<Vec<u8>, CommandError> {
        let live = self.live.as_ref().ok_or(CommandError::NotActive)?;
        live.signer
            .sign(bytes)
            .map_err(|e| internal(format!("{e:?}")))
    }

    fn verify<S: Storage>(ctx: &Ctx<'_, S>, key: &[u8], data: &[u8], signature: &[u8]) -> bool {
        ctx.backend
            .crypto()
            .verify_signature(SignatureScheme::ED25519, data, key, signature)
            .is_ok()
    }

    // ----- Heads ----------------------------------------------------------------

    /// What we have received from each other sender, for our next payload.
    pub(crate) fn heads(&self) -> Vec<Head> {
        let mut heads: Vec<Head> = self
            .senders
            .values()
            .filter(|s| s.contiguous > 0 && s.member != self.record.own_member)
            .map(|s| Head {
                member: s.member.short(),
                seq: s.contiguous,
            })
            .collect();
        heads.truncate(MAX_HEADS);
        heads
    }

    /// Takes note of `claim`'s report that `member`'s messages go up to `seq`.
    fn reported<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        short: &[u8; 8],
        seq: u64,
        claim: &Claim,
    ) -> Result<(), CommandError> {
        if short == &self.record.own_member.short() {
            // Remembered per claimer: one member's wild claim must not silence
            // what the others report later.
            let alerted = self
                .record
                .integrity
                .rollback_claims
                .iter()
                .find(|(by, _)| *by == claim.member)
                .map_or(0, |(_, s)| *s);
            if seq > self.record.chain.own_seq && seq > alerted {
                self.record
                    .integrity
                    .rollback_claims
                    .retain(|(by, _)| *by != claim.member);
                self.record
                    .integrity
                    .rollback_claims
                    .push((claim.member, seq));
                self.save(ctx)?;
                ctx.alert(
                    self.record.id,
                    Alert::Rollback {
                        reported: seq,
                        own: self.record.chain.own_seq,
                        by: claim.name.clone(),
                    },
                );
            }
            return Ok(());
        }
        let Some((member, name)) = self.resolve(short) else {
            return Ok(());
        };
        // A member's report of its own numbers is its own signed word, not a claim
        // about someone else.
        let own_word = member == claim.member;
        let channel = self.record.id;
        let state = self
            .senders
            .entry(member)
            .or_insert_with(|| crate::store::SenderState {
                member,
                name,
                ..Default::default()
            });
        if seq > state.contiguous.max(state.announced) {
            state.announce(
                seq.min(state.contiguous + MAX_SEQ_JUMP),
                ctx.now,
                claim.clone(),
            );
            if own_word {
                state.claimed_by = None;
            }
            ctx.store()
                .save_sender(&channel, state)
                .map_err(store_err)?;
        }
        Ok(())
    }

    /// Heads that came with `sender`'s payload numbered `seq`: its reports of how
    /// far it has received from the others. First, what `sender`'s own number says
    /// of earlier reports about it.
    pub(crate) fn receive_heads<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        sender: MemberId,
        seq: u64,
        heads: &[Head],
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        if let Some(state) = self.senders.get_mut(&sender) {
            let heard = |claim: &Claim| {
                heads
                    .iter()
                    .any(|h| h.member == claim.member.short() && h.seq >= claim.at_seq)
            };
            if let Some((claim, claimed)) = state.contradicts(seq, heard, ctx.now) {
                ctx.store()
                    .save_sender(&channel, state)
                    .map_err(store_err)?;
                ctx.alert(
                    channel,
                    Alert::FalseReport {
                        by: claim.name,
                        about: state.name.clone(),
                        claimed,
                        own: seq,
                    },
                );
            }
        }
        let claim = Claim {
            member: sender,
            name: self.name_of(&sender),
            at_seq: seq,
        };
        for head in heads {
            self.reported(ctx, &head.member, head.seq, &claim)?;
        }
        Ok(())
    }

    // ----- Budgets ----------------------------------------------------------------

    /// Takes one of `member`'s proposals (`rejoin`: re-add requests) from its budget
    /// of the current window. `Ok(())` if within it; otherwise whether this is the
    /// first refusal of the window (worth an alert; the rest are dropped quietly).
    pub(crate) fn spend(
        &mut self,
        member: MemberId,
        rejoin: bool,
        now: crate::Timestamp,
    ) -> Result<(), bool> {
        self.record
            .integrity
            .spent
            .retain(|s| now.0 < s.since.0.saturating_add(BUDGET_WINDOW_MS));
        let index = match self
            .record
            .integrity
            .spent
            .iter()
            .position(|s| s.member == member)
        {
            Some(i) => i,
            None => {
                self.record.integrity.spent.push(Spent {
                    member,
                    since: now,
                    proposals: 0,
                    rejoins: 0,
                });
                self.record.integrity.spent.len() - 1
            }
        };
        let Some(spent) = self.record.integrity.spent.get_mut(index) else {
            return Err(false);
        };
        let (used, limit) = if rejoin {
            (&mut spent.rejoins, REJOINS_PER_WINDOW)
        } else {
            (&mut spent.proposals, PROPOSALS_PER_WINDOW)
        };
        *used = used.saturating_add(1);
        if *used <= limit {
            Ok(())
        } else {
            Err(*used == limit + 1)
        }
    }

    // ----- Status ---------------------------------------------------------------

    fn status<S: Storage>(&self, ctx: &Ctx<'_, S>, request: bool) -> Result<Status, CommandError> {
        let mut entries = vec![StatusEntry {
            member: self.record.own_member.short(),
            seq: self.record.chain.own_seq,
            hash: self.record.chain.own_last_hash,
        }];
        for s in self.senders.values().filter(|s| s.contiguous > 0) {
            let hash = ctx
                .store()
                .message(&self.record.id, &s.member, s.contiguous)
                .map_err(store_err)?
                .map(|m| m.hash)
                .unwrap_or([0; 32]);
            entries.push(StatusEntry {
                member: s.member.short(),
                seq: s.contiguous,
                hash,
            });
        }
        Ok(Status {
            request,
            epoch: self.epoch(),
            authenticator: self
                .authenticator_at(self.epoch())
                .unwrap_or_default()
                .to_vec(),
            entries,
        })
    }

    /// Sends our status to every member; with `request`, asks for theirs.
    pub(crate) fn send_status<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        request: bool,
    ) -> Result<(), CommandError> {
        let status = self.status(ctx, request)?;
        self.record.integrity.last_status_at = Some(ctx.now);
        self.send_payload(
            ctx,
            backchannel_proto::payload::PayloadKind::Control,
            Control::Status(status).encode(),
        )?;
        Ok(())
    }

    /// A control message from `sender`.
    pub(crate) fn receive_control<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        sender: MemberId,
        seq: u64,
        body: &[u8],
        current_epoch: bool,
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let from = self.name_of(&sender);
        let claim = Claim {
            member: sender,
            name: from.clone(),
            at_seq: seq,
        };
        let status = match Control::decode(body) {
            Ok(Control::Status(s)) => s,
            Ok(Control::Burn { id }) => return self.receive_burn(ctx, sender, id, current_epoch),
            Ok(Control::BurnReceipt(r)) => return self.receive_burn_receipt(ctx, sender, r),
            Ok(Control::Intro(_)) => {
                // Steps travel sealed to their one recipient (`receive_targeted`);
                // one sent to everyone shows the joiner's key package to all and
                // is not acted on.
                ctx.alert(
                    channel,
                    Alert::Undecryptable {
                        count: 1,
                        detail: format!(
                            "an introduction step {from} sent to every member; ignored"
                        ),
                    },
                );
                return Ok(());
            }
            Ok(_) | Err(_) => {
                ctx.alert(
                    channel,
                    Alert::Undecryptable {
                        count: 1,
                        detail: format!("a malformed control message from {from}"),
                    },
                );
                return Ok(());
            }
        };
        let mut agrees = true;
        if status.epoch == self.epoch()
            && self.authenticator_at(status.epoch) != Some(status.authenticator.as_slice())
        {
            agrees = false;
            ctx.alert(
                channel,
                Alert::Fork {
                    by: from.clone(),
                    epoch: status.epoch,
                },
            );
        }
        for entry in &status.entries {
            if entry.member == self.record.own_member.short() {
                self.reported(ctx, &entry.member, entry.seq, &claim)?;
                continue;
            }
            let Some((member, name)) = self.resolve(&entry.member) else {
                continue;
            };
            let ours = ctx
                .store()
                .message(&channel, &member, entry.seq)
                .map_err(store_err)?;
            match ours {
                Some(m) if m.hash != entry.hash => {
                    agrees = false;
                    ctx.alert(
                        channel,
                        Alert::Equivocation {
                            from: name,
                            seq: entry.seq,
                            witness: from.clone(),
                        },
                    );
                }
                Some(_) => {}
                None => self.reported(ctx, &entry.member, entry.seq, &claim)?,
            }
        }
        self.note_peer(sender, from, status.epoch, agrees, ctx.now);
        let answered_recently = self
            .record
            .integrity
            .last_reply_at
            .is_some_and(|t| ctx.now.0 < t.0.saturating_add(STATUS_REPLY_INTERVAL_MS));
        if status.request && !answered_recently && self.live().is_ok() {
            self.record.integrity.last_reply_at = Some(ctx.now);
            self.send_status(ctx, false)?;
        }
        self.save(ctx)
    }

    // ----- Announcements ---------------------------------------------------------

    /// Announces our new epoch, under the previous epoch's key, to the next
    /// [`ANNOUNCE_TO`] members after us (by tree position) among those we shared the
    /// previous epoch with: every member hears from others besides the committer,
    /// and an update costs each member a constant number of blobs, not one per
    /// member (which made a channel of hundreds send hundreds of thousands).
    pub(crate) fn announce<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        before: &[MemberRecord],
        previous_key: &[u8; 32],
    ) -> Result<(), CommandError> {
        let epoch = self.epoch();
        let authenticator = self.authenticator_at(epoch).unwrap_or_default().to_vec();
        let member = self.record.own_member.0;
        let signed = Announcement::signed_bytes(&self.record.id.0, epoch, &authenticator, &member);
        let signature = self.sign(&signed)?;
        let announcement = Announcement {
            epoch,
            authenticator,
            member,
            signature,
        };
        let mut ring: Vec<&MemberRecord> = before
            .iter()
            .filter(|b| b.is_self || self.members.iter().any(|m| m.member == b.member))
            .collect();
        ring.sort_by_key(|m| m.leaf);
        let me = ring.iter().position(|m| m.is_self).unwrap_or(0);
        let targets: Vec<_> = (1..ring.len())
            .filter_map(|step| ring.get((me + step) % ring.len()))
            .filter(|m| !m.is_self)
            .take(ANNOUNCE_TO)
            .map(|m| m.mailbox.clone())
            .collect();
        self.transmit_content(
            ctx,
            ContentKind::Announcement,
            &announcement.encode(),
            &targets,
            previous_key,
            0,
        )
    }

    pub(crate) fn receive_announcement<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        bytes: &[u8],
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let unreadable = |detail: &str| Alert::Undecryptable {
            count: 1,
            detail: detail.to_owned(),
        };
        let Ok(ann) = Announcement::decode(bytes) else {
            ctx.alert(
                channel,
                unreadable("a malformed channel-state announcement"),
            );
            return Ok(());
        };
        if ann.member == self.record.own_member.0 {
            ctx.alert(channel, Alert::Reflected);
            return Ok(());
        }
        let Some(author) = self
            .members
            .iter()
            .find(|m| m.member.0 == ann.member)
            .cloned()
        else {
            ctx.alert(
                channel,
                unreadable("a channel-state announcement from someone not in the channel"),
            );
            return Ok(());
        };
        let signed =
            Announcement::signed_bytes(&channel.0, ann.epoch, &ann.authenticator, &ann.member);
        if !Self::verify(ctx, &author.signature_key, &signed, &ann.signature) {
            ctx.alert(channel, unreadable("a forged channel-state announcement"));
            return Ok(());
        }
        let ours = self.epoch();
        if ann.epoch > ours {
            // Someone is ahead of us: an update has not reached us (yet).
            let newer = self
                .record
                .integrity
                .expected
                .as_ref()
                .is_none_or(|e| e.epoch < ann.epoch);
            if newer {
                self.record.integrity.expected = Some(ExpectedEpoch {
                    epoch: ann.epoch,
                    by: author.name.clone(),
                    since: ctx.now,
                });
            }
            self.note_peer(author.member, author.name, ann.epoch, true, ctx.now);
            return self.save(ctx);
        }
        let agrees = match self.authenticator_at(ann.epoch) {
            Some(mine) => mine == ann.authenticator.as_slice(),
            // Too old for us to compare.
            None => true,
        };
        self.note_peer(
            author.member,
            author.name.clone(),
            ann.epoch,
            agrees,
            ctx.now,
        );
        if !agrees {
            ctx.alert(
                channel,
                Alert::Fork {
                    by: author.name.clone(),
                    epoch: ann.epoch,
                },
            );
            if author.admin && !self.is_admin() && self.record.integrity.rejoining.is_none() {
                self.request_rejoin(ctx, ann.epoch, &author)?;
            }
        }
        self.save(ctx)
    }

    // ----- Re-adding after a fork ------------------------------------------------

    /// Asks the administrator, under the last common epoch's key, to re-add us.
    fn request_rejoin<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        forked_epoch: u64,
        admin: &MemberRecord,
    ) -> Result<(), CommandError> {
        let Some(common_key) = forked_epoch.checked_sub(1).and_then(|e| self.key_at(e)) else {
            return Ok(());
        };
        let own_name = self
            .members
            .iter()
            .find(|m| m.is_self)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| "me".to_owned());
        let (signer, key_package) = build_key_package(
            ctx,
            &own_name,
            self.record.suite,
            self.record.mailbox.clone(),
        )?;
        let member = self.record.own_member.0;
        let signed = Rejoin::signed_bytes(&self.record.id.0, &member, forked_epoch, &key_package);
        let signature = self.sign(&signed)?;
        let request = Rejoin {
            member,
            epoch: forked_epoch,
            key_package,
            signature,
        };
        self.record.integrity.rejoining = Some(signer.public().to_vec());
        self.transmit_content(
            ctx,
            ContentKind::Rejoin,
            &request.encode(),
            std::slice::from_ref(&admin.mailbox),
            &common_key,
            0,
        )?;
        self.save(ctx)
    }

    /// The administrator receives a re-add request.
    pub(crate) fn receive_rejoin<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        bytes: &[u8],
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let refuse = |ctx: &mut Ctx<'_, S>, by: String, what: &str| {
            ctx.alert(
                channel,
                Alert::RefusedChange {
                    by,
                    what: what.to_owned(),
                },
            );
        };
        let Ok(request) = Rejoin::decode(bytes) else {
            refuse(ctx, "someone".into(), "send a malformed re-add request");
            return Ok(());
        };
        if !self.is_admin() || self.live().is_err() {
            return Ok(());
        }
        let Some(old) = self
            .members
            .iter()
            .find(|m| m.member.0 == request.member)
            .cloned()
        else {
            refuse(ctx, "someone".into(), "be re-added although not a member");
            return Ok(());
        };
        let signed = Rejoin::signed_bytes(
            &channel.0,
            &request.member,
            request.epoch,
            &request.key_package,
        );
        if !Self::verify(ctx, &old.signature_key, &signed, &request.signature) {
            refuse(
                ctx,
                old.name.clone(),
                "be re-added with a request that is not signed by them",
            );
            return Ok(());
        }
        if let Err(first) = self.spend(old.member, true, ctx.now) {
            self.save(ctx)?;
            if first {
                refuse(
                    ctx,
                    old.name.clone(),
                    "be re-added more often than the channel allows (3 times an hour)",
                );
            }
            return Ok(());
        }
        let Some(common_key) = request.epoch.checked_sub(1).and_then(|e| self.key_at(e)) else {
            refuse(
                ctx,
                old.name.clone(),
                "be re-added from a state too old to reach them",
            );
            return Ok(());
        };
        let kp = match MlsMessageIn::tls_deserialize_exact(request.key_package.as_slice())
            .ok()
            .map(|m| m.extract())
        {
            Some(MlsMessageBodyIn::KeyPackage(kp)) => kp
                .validate(ctx.backend.crypto(), ProtocolVersion::Mls10)
                .ok(),
            _ => None,
        };
        let valid = kp.filter(|kp| {
            kp.ciphersuite() == self.record.suite.ciphersuite()
                && check_leaf(kp.leaf_node()).is_ok_and(|info| info.name == old.name)
        });
        let Some(kp) = valid else {
            refuse(
                ctx,
                old.name.clone(),
                "be re-added with an invalid key package",
            );
            return Ok(());
        };
        let Ok(info) = check_leaf(kp.leaf_node()) else {
            return Ok(());
        };
        let new_member = crate::derive::member_id(kp.leaf_node().signature_key().as_slice());
        let targets: Vec<_> = self
            .others()
            .into_iter()
            .filter(|m| *m != old.mailbox)
            .collect();
        let live = self.live_mut()?;
        let bundle = live
            .group
            .commit_builder()
            .propose_removals([LeafNodeIndex::new(old.leaf)])
            .propose_adds([kp])
            .load_psks(ctx.backend.storage())
            .map_err(internal)?
            .build(
                ctx.backend.rand(),
                ctx.backend.crypto(),
                &live.signer,
                |_| true,
            )
            .map_err(internal)?
            .stage_commit(ctx.backend)
            .map_err(internal)?;
        let (commit, welcome, _) = bundle.into_messages();
        let welcome = welcome.ok_or_else(|| internal("a commit with an add has a welcome"))?;
        self.commit_and_merge(ctx, &commit, &targets)?;
        // The budget follows the person to the new key: a re-add does not reset it.
        for spent in &mut self.record.integrity.spent {
            if spent.member == old.member {
                spent.member = new_member;
            }
        }
        self.save(ctx)?;
        let welcome = welcome.tls_serialize_detached().map_err(internal)?;
        self.transmit_content(
            ctx,
            ContentKind::Welcome,
            &welcome,
            &[info.mailbox],
            &common_key,
            0,
        )?;
        ctx.event(Event::Rejoined {
            channel,
            member: old.name,
            lost: 0,
        });
        Ok(())
    }

    /// A forked member receives the welcome that re-adds it.
    pub(crate) fn receive_readd<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        bytes: &[u8],
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let Some(new_key) = self.record.integrity.rejoining.clone() else {
            ctx.alert(
                channel,
                Alert::Undecryptable {
                    count: 1,
                    detail: "an invitation that was not asked for".into(),
                },
            );
            return Ok(());
        };
        let accepted = crate::channel::accept_welcome(ctx.backend, bytes, true);
        let (group, signer, kp, _policy, _inviter) = match accepted {
            Ok(ok) => ok,
            Err(e) => {
                ctx.alert(
                    channel,
                    Alert::Undecryptable {
                        count: 1,
                        detail: format!("an invalid re-add: {e}"),
                    },
                );
                return Ok(());
            }
        };
        if signer.public() != new_key.as_slice() || group.group_id().as_slice() != channel.0 {
            ctx.alert(
                channel,
                Alert::Undecryptable {
                    count: 1,
                    detail: "a re-add for another identity or channel".into(),
                },
            );
            return Ok(());
        }
        // Out with the forked state, in with the administrator's.
        if let Some(mut old) = self.live.take() {
            old.group.delete(ctx.backend.storage()).map_err(internal)?;
            SignatureKeyPair::delete(
                ctx.backend.storage(),
                old.signer.public(),
                old.signer.signature_scheme(),
            )
            .map_err(internal)?;
        }
        ctx.store()
            .delete_key_package_record(&kp.signature_key)
            .map_err(store_err)?;
        let lost = self.pending.len();
        for (id, _) in std::mem::take(&mut self.pending) {
            ctx.store()
                .remove_pending(&channel, id)
                .map_err(store_err)?;
        }
        self.record.signature_key = signer.public().to_vec();
        self.record.own_member = member_id(signer.public());
        self.record.chain.own_seq = 0;
        self.record.chain.own_last_hash = [0; 32];
        self.record.integrity.rejoining = None;
        self.record.integrity.expected = None;
        self.record.inbound.epoch_keys.clear();
        self.sealed_tried.clear();
        self.record.integrity.authenticators.clear();
        self.live = Some(Live { group, signer });
        self.enter_epoch(ctx)?;
        ctx.alert(channel, Alert::ForkRecovered { lost });
        Ok(())
    }
}

/// A fresh identity and key package for `name`, reachable at `mailbox`.
pub(crate) fn build_key_package<S: Storage>(
    ctx: &mut Ctx<'_, S>,
    name: &str,
    suite: mls::Suite,
    mailbox: backchannel_proto::addr::MailboxAddr,
) -> Result<(SignatureKeyPair, Vec<u8>), CommandError> {
    let provider = ctx.backend;
    let signer = new_signer(provider)?;
    let info = MemberInfo {
        name: name.to_owned(),
        mailbox: mailbox.clone(),
    };
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(mls::capabilities(suite))
        .leaf_node_extensions(leaf_extensions(&info)?)
        .build(
            suite.ciphersuite(),
            provider,
            &signer,
            credential_for(&signer),
        )
        .map_err(internal)?;
    ctx.store()
        .save_key_package_record(&KeyPackageRecord {
            signature_key: signer.public().to_vec(),
            name: name.to_owned(),
            mailbox,
            suite,
            created_at: ctx.now,
        })
        .map_err(store_err)?;
    let bytes = MlsMessageOut::from(bundle.key_package().clone())
        .tls_serialize_detached()
        .map_err(internal)?;
    Ok((signer, bytes))
}
