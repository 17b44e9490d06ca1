//! The MLS policy of a channel: what a leaf must carry, what a commit may do.

use backchannel_proto::member::{
    CHANNEL_POLICY_EXTENSION, ChannelPolicy, MEMBER_INFO_EXTENSION, MemberInfo, names_clash,
};
use openmls::prelude::*;

use crate::derive::{MemberId, member_id};
use crate::store::MemberRecord;

/// A leaf is acceptable if its credential names the member identifier of its
/// signature key and it carries a valid [`MemberInfo`].
pub(crate) fn check_leaf(leaf: &LeafNode) -> Result<MemberInfo, String> {
    let expected = member_id(leaf.signature_key().as_slice());
    if credential_member(leaf.credential()) != Some(expected) {
        return Err("its credential does not match its signature key".into());
    }
    let ext = leaf
        .extensions()
        .unknown(MEMBER_INFO_EXTENSION)
        .ok_or("it carries no Backchannel member information")?;
    MemberInfo::decode(&ext.0).map_err(|e| format!("its member information is malformed: {e}"))
}

/// Our policy for a commit by the administrator: every new or changed leaf must be
/// valid, names stay unique, and only the proposal types we use appear.
pub(crate) fn check_commit(
    commit: &StagedCommit,
    members: &[MemberRecord],
    committer: &MemberId,
) -> Result<(), String> {
    // Names stay unique among those who remain and those who arrive (a re-added
    // member keeps its name).
    let removed: Vec<u32> = commit
        .remove_proposals()
        .map(|r| r.remove_proposal().removed().u32())
        .collect();
    let mut names: Vec<String> = members
        .iter()
        .filter(|m| !removed.contains(&m.leaf))
        .map(|m| m.name.clone())
        .collect();
    for queued in commit.queued_proposals() {
        match queued.proposal() {
            Proposal::Add(add) => {
                let info = check_leaf(add.key_package().leaf_node())
                    .map_err(|e| format!("add a member whose key package is invalid ({e})"))?;
                if names.iter().any(|n: &String| names_clash(n, &info.name)) {
                    return Err(format!(
                        "add a member called '{}', a name too like another's",
                        info.name
                    ));
                }
                names.push(info.name);
            }
            Proposal::Update(update) => {
                let info = check_leaf(update.leaf_node())
                    .map_err(|e| format!("accept an invalid key update ({e})"))?;
                let leaf = match queued.sender() {
                    Sender::Member(leaf) => Some(leaf.u32()),
                    _ => None,
                };
                let current = members.iter().find(|m| Some(m.leaf) == leaf);
                if let Some(what) = renaming(current, &info.name) {
                    return Err(format!("accept a key update that would {what}"));
                }
            }
            Proposal::Remove(_) => {}
            Proposal::GroupContextExtensions(gce) => {
                let ext = gce
                    .extensions()
                    .unknown(CHANNEL_POLICY_EXTENSION)
                    .ok_or("remove the channel's rules")?;
                ChannelPolicy::decode(&ext.0).map_err(|_| "set malformed channel rules")?;
            }
            _ => return Err("make a kind of change Backchannel does not use".into()),
        }
    }
    if let Some(leaf) = commit.update_path_leaf_node() {
        let info = check_leaf(leaf)
            .map_err(|e| format!("update their keys with an invalid leaf ({e})"))?;
        let current = members.iter().find(|m| m.member == *committer);
        if let Some(what) = renaming(current, &info.name) {
            return Err(what);
        }
    }
    Ok(())
}

/// What a key update that brings `new_name` would do to `current`'s name, if it is
/// not the same: names are chosen when a member joins and never change, so no one
/// can take another's name (or a look-alike) by updating their keys.
pub(crate) fn renaming(current: Option<&MemberRecord>, new_name: &str) -> Option<String> {
    match current {
        Some(m) if m.name == new_name => None,
        Some(m) => Some(format!("change the name '{}' to '{new_name}'", m.name)),
        None => Some(format!("take the name '{new_name}' for an unknown member")),
    }
}

/// Proposals (key updates, a leave) one member may send per window.
pub(crate) const PROPOSALS_PER_WINDOW: u32 = 12;

/// How far beyond what came before a sequence number may jump.
pub(crate) const MAX_SEQ_JUMP: u64 = 10_000;

/// The member identifier a credential names (a Backchannel credential is a basic
/// credential whose identity is the member identifier).
pub(crate) fn credential_member(credential: &Credential) -> Option<MemberId> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    let bytes: [u8; 32] = basic.identity().try_into().ok()?;
    Some(MemberId(bytes))
}
