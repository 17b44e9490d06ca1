//! Knowing who is who: safety numbers, verified members, and the alert when a
//! verified member's key changes.
//!
//! Identities are per channel: each member has one signature key in it. Two members
//! who compare their [`safety_number`](crate::derive::safety_number) (in person, or
//! on a call where they recognise each other) and find it equal hold each other's
//! true key, and every message in the channel is authenticated by those keys. A
//! verified member is remembered by name and key; if a member of that name is later
//! added with another key, that is an alert naming who added it.

use crate::channel::{Channel, find_other};
use crate::context::{CommandError, Storage};
use crate::derive::safety_number;
use crate::engine::Engine;
use crate::event::Alert;
use crate::store::{MemberRecord, Verified};
use crate::{ChannelRef, Timestamp};

impl<S: Storage> Engine<S> {
    /// The safety number between us and `member` in `channel`.
    pub fn safety_number<'a>(
        &self,
        channel: impl Into<ChannelRef<'a>>,
        member: &str,
    ) -> Result<String, CommandError> {
        let summary = self.channel(channel)?;
        let own = summary
            .members
            .iter()
            .find(|m| m.is_self)
            .ok_or(CommandError::NotActive)?;
        let other = find_other(&summary.members, member)?;
        Ok(safety_number(&own.signature_key, &other.signature_key))
    }

    /// Records that we compared safety numbers with `member` and they matched.
    pub fn confirm_verified<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
        member: &str,
    ) -> Result<(), CommandError> {
        let id = self.channel_id(channel)?;
        let member = member.to_owned();
        self.transact_on(now, &id, move |ch, ctx| {
            let key = find_other(&ch.members, &member)?.signature_key.clone();
            ch.record.verified.retain(|v| v.name != member);
            ch.record.verified.push(Verified {
                name: member,
                signature_key: key,
            });
            ch.save(ctx)
        })
    }
}

impl Channel {
    /// Whether this member is one we verified, with this key.
    pub(crate) fn is_verified(&self, m: &MemberRecord) -> bool {
        self.record
            .verified
            .iter()
            .any(|v| v.name == m.name && v.signature_key == m.signature_key)
    }

    /// An alert if `added` has the name of a member we verified but another key.
    pub(crate) fn check_key_change(&self, added: &MemberRecord, by: &str) -> Option<Alert> {
        self.record
            .verified
            .iter()
            .find(|v| v.name == added.name && v.signature_key != added.signature_key)
            .map(|_| Alert::KeyChanged {
                member: added.name.clone(),
                by: by.to_owned(),
            })
    }
}

/// What a key package says about its owner, once checked (its signature, its
/// credential, its member information).
#[derive(Clone, Debug)]
pub struct KeyPackageSummary {
    /// The name it asks to go by.
    pub name: String,
    /// Where its owner receives.
    pub mailbox: backchannel_proto::addr::MailboxAddr,
    /// Its owner's signature key.
    pub signature_key: Vec<u8>,
    /// Its ciphersuite, if one Backchannel uses.
    pub suite: Option<crate::mls::Suite>,
}

impl<S: Storage> Engine<S> {
    /// Checks a key package without using it.
    pub fn inspect_key_package(&self, bytes: &[u8]) -> Result<KeyPackageSummary, CommandError> {
        use openmls::prelude::*;
        use tls_codec::Deserialize as _;
        let bad = |e: &dyn std::fmt::Display| CommandError::InvalidKeyPackage(e.to_string());
        let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| bad(&e))?;
        let MlsMessageBodyIn::KeyPackage(kp) = message.extract() else {
            return Err(CommandError::InvalidKeyPackage(
                "it is not an MLS key package".into(),
            ));
        };
        let kp = kp
            .validate(self.backend.crypto(), ProtocolVersion::Mls10)
            .map_err(|e| bad(&e))?;
        let info = crate::rules::check_leaf(kp.leaf_node()).map_err(|e| bad(&e))?;
        Ok(KeyPackageSummary {
            name: info.name,
            mailbox: info.mailbox,
            signature_key: kp.leaf_node().signature_key().as_slice().to_vec(),
            suite: crate::mls::Suite::ALL
                .into_iter()
                .find(|s| s.ciphersuite() == kp.ciphersuite()),
        })
    }

    /// The safety number between us in `channel` and the owner of `signature_key`
    /// (someone not yet in it: compared before admitting them).
    pub fn safety_number_with<'a>(
        &self,
        channel: impl Into<ChannelRef<'a>>,
        signature_key: &[u8],
    ) -> Result<String, CommandError> {
        let summary = self.channel(channel)?;
        let own = summary
            .members
            .iter()
            .find(|m| m.is_self)
            .ok_or(CommandError::NotActive)?;
        Ok(safety_number(&own.signature_key, signature_key))
    }
}
