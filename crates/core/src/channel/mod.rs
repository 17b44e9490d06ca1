//! A channel held in memory: its record, its MLS group and what it is waiting for.
//! The engine finds the channel an input concerns and hands it over; sending lives in
//! [`send`], receiving in [`receive`], the MLS policy checks in [`crate::rules`].

mod receive;
mod send;

use std::collections::BTreeMap;

use backchannel_proto::addr::MailboxAddr;
use backchannel_proto::member::{
    CHANNEL_POLICY_EXTENSION, ChannelPolicy, MEMBER_INFO_EXTENSION, MemberInfo, names_clash,
};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use tls_codec::Deserialize as _;

use crate::context::{CommandError, Ctx, Storage, internal, store_err};
use crate::derive::{MemberId, member_id};
use crate::mls::{self, Backend};
use crate::rules::check_leaf;
use crate::store::{
    ChannelRecord, ChannelStatus, KeyPackageRecord, MemberRecord, PendingItem, SenderState,
};
use crate::{ChannelId, Timestamp};

/// Content is accepted under the envelope keys of this many recent epochs: the
/// current one and the [`crate::mls::MAX_PAST_EPOCHS`] whose MLS secrets OpenMLS
/// keeps. A message sealed under an older key (a removed member's, a replay) is
/// rejected as soon as it arrives, never parked or processed.
pub const ENVELOPE_KEY_EPOCHS: usize = 1 + crate::mls::MAX_PAST_EPOCHS;

/// Keys of this many epochs are kept, only to read epoch announcements: each is
/// sealed under the key of the epoch before the one it announces, and in a burst of
/// updates (an administrator adding people one after another) it may arrive after
/// several more. Anything else under these older keys is rejected.
pub const ANNOUNCEMENT_KEY_EPOCHS: usize = 16;

/// How many messages sealed to us alone are remembered, to recognise copies.
pub(crate) const SEEN_TARGETED: usize = 64;

/// A channel as held in memory.
pub(crate) struct Channel {
    pub(crate) record: ChannelRecord,
    /// `None` once the channel is closed and its keys erased.
    pub(crate) live: Option<Live>,
    pub(crate) members: Vec<MemberRecord>,
    pub(crate) senders: BTreeMap<MemberId, SenderState>,
    pub(crate) pending: Vec<(u64, PendingItem)>,
    /// Erased during the current input: the engine forgets it when the input ends.
    pub(crate) erased: bool,
    /// When the oldest message in the history arrived.
    pub(crate) oldest: Option<Timestamp>,
    /// The epochs whose envelope keys every parked sealed blob has been tried with:
    /// a blob no key opened is tried again only with a key that came since, so a
    /// mailbox full of junk costs nothing per later input.
    pub(crate) sealed_tried: Vec<u64>,
}

pub(crate) struct Live {
    pub(crate) group: MlsGroup,
    pub(crate) signer: SignatureKeyPair,
}

impl Channel {
    /// A channel just created or joined: no members known yet (its first epoch
    /// brings them), nothing received.
    pub(crate) fn fresh(record: ChannelRecord, live: Live) -> Self {
        Self {
            record,
            live: Some(live),
            members: Vec::new(),
            senders: BTreeMap::new(),
            pending: Vec::new(),
            erased: false,
            oldest: None,
            sealed_tried: Vec::new(),
        }
    }

    pub(crate) fn live(&self) -> Result<&Live, CommandError> {
        match (&self.live, self.record.status) {
            (Some(live), ChannelStatus::Active) => Ok(live),
            _ => Err(CommandError::NotActive),
        }
    }

    pub(crate) fn live_mut(&mut self) -> Result<&mut Live, CommandError> {
        match (&mut self.live, self.record.status) {
            (Some(live), ChannelStatus::Active) => Ok(live),
            _ => Err(CommandError::NotActive),
        }
    }

    pub(crate) fn is_admin(&self) -> bool {
        self.members.iter().any(|m| m.is_self && m.admin)
    }

    pub(crate) fn name_of(&self, member: &MemberId) -> String {
        self.members
            .iter()
            .find(|m| &m.member == member)
            .map(|m| m.name.clone())
            .or_else(|| self.senders.get(member).map(|s| s.name.clone()))
            .unwrap_or_else(|| "a former member".to_owned())
    }

    /// Mailboxes of every member but us.
    pub(crate) fn others(&self) -> Vec<MailboxAddr> {
        self.members
            .iter()
            .filter(|m| !m.is_self)
            .map(|m| m.mailbox.clone())
            .collect()
    }

    pub(crate) fn current_key(&self) -> Result<[u8; 32], CommandError> {
        self.record
            .inbound
            .epoch_keys
            .last()
            .map(|k| k.key)
            .ok_or_else(|| internal("no envelope key"))
    }

    pub(crate) fn save<S: Storage>(&self, ctx: &Ctx<'_, S>) -> Result<(), CommandError> {
        if self.erased {
            return Ok(());
        }
        ctx.store().save_channel(&self.record).map_err(store_err)
    }
}

// ----- Helpers over OpenMLS types ----------------------------------------------------

/// Checks a welcome made for one of our key packages and builds the group from it:
/// the channel's policy must be present, the welcome must come from the
/// administrator, and every member must be a valid Backchannel member with a unique
/// name. Stores the group (inside the caller's transaction).
#[allow(clippy::type_complexity)]
pub(crate) fn accept_welcome<S: Storage>(
    provider: &Backend<S>,
    welcome: &[u8],
    replace: bool,
) -> Result<
    (
        MlsGroup,
        SignatureKeyPair,
        KeyPackageRecord,
        ChannelPolicy,
        String,
    ),
    CommandError,
> {
    let invalid = |e: &dyn std::fmt::Display| CommandError::InvalidWelcome(e.to_string());
    let message = MlsMessageIn::tls_deserialize_exact(welcome).map_err(|e| invalid(&e))?;
    let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
        return Err(CommandError::InvalidWelcome(
            "it is not an MLS welcome".into(),
        ));
    };
    let builder = StagedWelcome::build_from_welcome(provider, &mls::join_config(), welcome);
    let staged = builder
        .and_then(|b| if replace { b.replace_old_group() } else { b }.build())
        .map_err(|e| match e {
            WelcomeError::NoMatchingKeyPackage | WelcomeError::NoMatchingEncryptionKey => {
                CommandError::NotForUs
            }
            other => invalid(&other),
        })?;
    if staged.group_context().group_id().as_slice().len() != 16 {
        return Err(CommandError::InvalidWelcome(
            "unexpected channel identifier".into(),
        ));
    }
    let policy = staged
        .group_context()
        .extensions()
        .unknown(CHANNEL_POLICY_EXTENSION)
        .ok_or_else(|| CommandError::InvalidWelcome("it has no Backchannel policy".into()))
        .and_then(|ext| ChannelPolicy::decode(&ext.0).map_err(|e| invalid(&e)))?;
    let inviter = staged.welcome_sender().map_err(internal)?;
    if inviter.signature_key().as_slice() != policy.admin.as_slice() {
        return Err(CommandError::InvalidWelcome(
            "it was made by someone who does not administer the channel".into(),
        ));
    }
    let inviter_name = check_leaf(inviter).map(|i| i.name).unwrap_or_default();
    let own_key = staged
        .own_leaf_node()
        .ok_or_else(|| internal("welcome without own leaf"))?
        .signature_key()
        .as_slice()
        .to_vec();
    let kp = provider
        .store()
        .key_package_records()
        .map_err(store_err)?
        .into_iter()
        .find(|kp| kp.signature_key == own_key)
        .ok_or(CommandError::NotForUs)?;
    let signer = SignatureKeyPair::read(
        provider.storage(),
        &own_key,
        kp.suite.ciphersuite().signature_algorithm(),
    )
    .ok_or(CommandError::NotForUs)?;
    let group = staged.into_group(provider).map_err(|e| invalid(&e))?;
    let mut names = Vec::new();
    for member in group.members() {
        let leaf = group
            .public_group()
            .leaf(member.index)
            .ok_or_else(|| CommandError::InvalidWelcome("a member has no leaf".into()))?;
        let info = check_leaf(leaf).map_err(|e| invalid(&e))?;
        if names.iter().any(|n: &String| names_clash(n, &info.name)) {
            return Err(CommandError::InvalidWelcome(format!(
                "two members are called '{}' or alike",
                info.name
            )));
        }
        names.push(info.name);
    }
    Ok((group, signer, kp, policy, inviter_name))
}

/// How OpenMLS's storage keys entries of a group (serde JSON of the group id), to
/// find anything filed under a channel.
pub(crate) fn group_storage_key(channel: &ChannelId) -> Vec<u8> {
    serde_json::to_vec(&GroupId::from_slice(&channel.0)).unwrap_or_default()
}

pub(crate) fn new_signer<S: Storage>(
    provider: &Backend<S>,
) -> Result<SignatureKeyPair, CommandError> {
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(internal)?;
    signer.store(provider.storage()).map_err(internal)?;
    Ok(signer)
}

/// The credential binds the member identifier to the signature key.
pub(crate) fn credential_for(signer: &SignatureKeyPair) -> CredentialWithKey {
    let id = member_id(signer.public());
    CredentialWithKey {
        credential: BasicCredential::new(id.0.to_vec()).into(),
        signature_key: signer.public().into(),
    }
}

pub(crate) fn leaf_extensions(info: &MemberInfo) -> Result<Extensions<LeafNode>, CommandError> {
    Extensions::single(Extension::Unknown(
        MEMBER_INFO_EXTENSION,
        UnknownExtension(info.encode()),
    ))
    .map_err(internal)
}

pub(crate) fn group_extensions(
    policy: &ChannelPolicy,
) -> Result<Extensions<GroupContext>, CommandError> {
    let required =
        RequiredCapabilitiesExtension::new(&mls::extension_types(), &[], &[CredentialType::Basic]);
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(required),
        Extension::Unknown(CHANNEL_POLICY_EXTENSION, UnknownExtension(policy.encode())),
    ])
    .map_err(internal)
}

pub(crate) fn policy_of(group: &MlsGroup) -> Option<ChannelPolicy> {
    let ext = group.extensions().unknown(CHANNEL_POLICY_EXTENSION)?;
    ChannelPolicy::decode(&ext.0).ok()
}

pub(crate) fn group_id_bytes(group: &MlsGroup) -> Result<[u8; 16], CommandError> {
    group
        .group_id()
        .as_slice()
        .try_into()
        .map_err(|_| internal("group identifier length"))
}

pub(crate) fn members_of(group: &MlsGroup, own_key: &[u8]) -> Vec<MemberRecord> {
    let admin = policy_of(group).map(|p| p.admin).unwrap_or_default();
    group
        .members()
        .filter_map(|m| {
            let leaf = group.public_group().leaf(m.index)?;
            let info = check_leaf(leaf).ok()?;
            Some(MemberRecord {
                member: member_id(&m.signature_key),
                signature_key: m.signature_key.clone(),
                name: info.name,
                mailbox: info.mailbox,
                leaf: m.index.u32(),
                admin: m.signature_key == admin,
                is_self: m.signature_key == own_key,
            })
        })
        .collect()
}

/// The other member called `name`: by exact name, or else by the name's confusable
/// key ([`backchannel_proto::member::name_key`]). Two candidates either way make
/// the name ambiguous, and nothing is done to either.
pub(crate) fn find_other<'a>(
    members: &'a [MemberRecord],
    name: &str,
) -> Result<&'a MemberRecord, CommandError> {
    let others = || members.iter().filter(|m| !m.is_self);
    let exact: Vec<&MemberRecord> = others().filter(|m| m.name == name).collect();
    let candidates = if exact.is_empty() {
        others()
            .filter(|m| backchannel_proto::member::names_clash(&m.name, name))
            .collect()
    } else {
        exact
    };
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(CommandError::UnknownMember(name.to_owned())),
        _ => Err(CommandError::AmbiguousMember(name.to_owned())),
    }
}
